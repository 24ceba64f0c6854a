#!/usr/bin/env python3
"""terrace serve: from a signed webhook to "applied" on a real API server,
with a 1,000-unit repository (manifests and kustomize units, one
ConfigMap each), one unit changed per commit; and the daemon's resident
memory with those 1,000 units.

Goals (issue 16): p50 under 200 ms, p95 under 1 s; under 100 MiB.
Printed beside Flux's published figures (polling every minute by
default; 1,000 Kustomizations applied in 4m16s; kustomize-controller
at 175 MiB), which are not measured here.

Needs: a release build (cargo build --release -p terrace, or TERRACE),
git, and a kubeconfig of a real API server in TERRACE_TEST_KUBECONFIG
(bash ../shared/kube/up.sh start prints one). COMMITS (default 30).
"""
import hashlib, hmac, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TERRACE = os.environ.get("TERRACE", os.path.join(ROOT, "target/release/terrace"))
KUBECONFIG = os.environ.get("TERRACE_TEST_KUBECONFIG")
UNITS = int(os.environ.get("UNITS", "1000"))
COMMITS = int(os.environ.get("COMMITS", "30"))
NS = "terrace-bench-serve"
SECRET = b"bench-secret"


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.email=b@b", "-c", "user.name=b", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cm(name, value):
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {NS}\ndata:\n  v: \"{value}\"\n"


def generate(work):
    with open(os.path.join(work, "terrace.yaml"), "w") as f:
        f.write(f"name: bench\nlayers: [ns, apps]\ndefaultEnvironment: bench\n"
                f"environments:\n  bench:\n    targets:\n      k8s: {{kubeconfig: {KUBECONFIG}}}\n"
                "targets:\n  k8s: { type: cluster }\n")
    os.makedirs(os.path.join(work, "ns/ns"))
    open(os.path.join(work, "ns/ns/unit.yaml"), "w").write("layer: ns\nkind: manifests\n")
    open(os.path.join(work, "ns/ns/ns.yaml"), "w").write(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n")
    for i in range(UNITS):
        d = os.path.join(work, "apps", f"u{i:04d}")
        os.makedirs(d)
        if i % 2:
            open(os.path.join(d, "unit.yaml"), "w").write("layer: apps\nkind: kustomize\ndependsOn: [ns]\n")
            open(os.path.join(d, "kustomization.yaml"), "w").write("resources: [cm.yaml]\n")
        else:
            open(os.path.join(d, "unit.yaml"), "w").write("layer: apps\nkind: manifests\ndependsOn: [ns]\n")
        open(os.path.join(d, "cm.yaml"), "w").write(cm(f"u{i:04d}", 0))


def http(port, method, path, body=b"", headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body if method == "POST" else None,
                                 method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read().decode()


def main():
    if not KUBECONFIG:
        sys.exit("set TERRACE_TEST_KUBECONFIG (bash ../shared/kube/up.sh start prints one)")
    if not os.path.exists(TERRACE):
        sys.exit(f"no terrace at {TERRACE}: cargo build --release -p terrace")
    tmp = tempfile.mkdtemp(prefix="terrace-bench-serve-")
    work, remote, wd = (os.path.join(tmp, x) for x in ("work", "remote.git", "serve"))
    os.makedirs(work)
    git(work, "init", "-q", "-b", "main")
    generate(work)
    git(work, "add", "-A")
    git(work, "commit", "-qm", "first")
    git(tmp, "clone", "-q", "--bare", "work", "remote.git")
    git(work, "remote", "add", "origin", remote)
    open(os.path.join(tmp, "secret"), "wb").write(SECRET)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TERRACE_KUBE_WAIT="false")
    daemon = subprocess.Popen([TERRACE, "serve", "--repo", f"file://{remote}", "--interval", "1h", "-j", "8",
                               "--listen", f"127.0.0.1:{port}", "--webhook-secret-file", os.path.join(tmp, "secret"),
                               "--workdir", wd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t = time.perf_counter()
        while True:
            try:
                if http(port, "GET", "/readyz")[0] == 200:
                    break
            except Exception:
                pass
            if daemon.poll() is not None:
                sys.exit("the daemon stopped: " + daemon.stderr.read().decode()[-2000:])
            time.sleep(0.2)
        first = time.perf_counter() - t
        latencies = []
        for n in range(COMMITS):
            unit = f"u{(n * 37) % UNITS:04d}"
            open(os.path.join(work, "apps", unit, "cm.yaml"), "w").write(cm(unit, n + 1))
            git(work, "commit", "-qam", f"change {unit}")
            git(work, "push", "-q", "origin", "main")
            rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
            body = json.dumps({"ref": "refs/heads/main", "after": rev}).encode()
            sig = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            t0 = time.perf_counter()
            http(port, "POST", "/hooks/github", body, {"X-Hub-Signature-256": sig, "X-GitHub-Delivery": rev})
            while json.loads(http(port, "GET", "/api/v1/status")[1]).get("applied") != rev:
                if time.perf_counter() - t0 > 60:
                    sys.exit(f"commit {n} not applied within 60 s")
                time.sleep(0.005)
            latencies.append(time.perf_counter() - t0)
        rss_kib = int(next(l.split()[1] for l in open(f"/proc/{daemon.pid}/status") if l.startswith("VmHWM:")))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, "delete", "namespace", NS, "--wait=false",
                        "--ignore-not-found"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[max(0, int(round(0.95 * len(latencies))) - 1)]
    print(f"units: {UNITS} (manifests and kustomize, one ConfigMap each) on a real API server; {COMMITS} commits")
    print(f"first revision (every unit applied):     {first:8.1f} s    Flux (published): 4m16s = 256 s for 1,000 Kustomizations")
    print(f"webhook -> applied, p50:                 {p50 * 1000:8.0f} ms   goal < 200 ms; Flux polls every 60 s by default")
    print(f"webhook -> applied, p95:                 {p95 * 1000:8.0f} ms   goal < 1,000 ms")
    print(f"daemon peak resident memory:             {rss_kib / 1024:8.1f} MiB  goal < 100 MiB; Flux kustomize-controller 175 MiB (published)")


if __name__ == "__main__":
    main()
