#!/usr/bin/env python3
"""Applying 1,000 objects (400 ConfigMaps, 300 Services, 300 Deployments)
to a real cluster: terrace against `kubectl apply --server-side` on the
same objects, side by side:

(a) first apply (everything created);
(b) re-apply with nothing changed (terrace: plan + apply, which finds
    nothing to send; kubectl: the same command again), the median of
    RUNS (default 3) runs each, after the cluster has had SETTLE seconds
    (default 5) to finish what the first apply started (the
    controller-manager creating ReplicaSets and Pods), so both tools
    re-apply against the same quiet cluster.

The cluster is the one the kubeconfig in TERRACE_TEST_KUBECONFIG names;
without it the benchmark says so and exits 0. Each tool gets its own
namespace (`terrace-bench`, `terrace-bench-kubectl`), deleted afterwards.
Workloads are not waited for (`TERRACE_KUBE_WAIT=false`), as kubectl does
not wait: the figures compare the API traffic, not rollouts.

Prints both times with the ratio (kubectl / terrace; above 1 means terrace
is faster).
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = {"configmap": 400, "service": 300, "deployment": 300}
RUNS = int(os.environ.get("RUNS", "3"))
SETTLE = float(os.environ.get("SETTLE", "5"))


def objects(ns):
    docs = [f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"]
    for i in range(COUNTS["configmap"]):
        docs.append(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  namespace: {ns}\n"
                    f"data:\n  index: \"{i}\"\n  text: value number {i}\n")
    for i in range(COUNTS["service"]):
        docs.append(f"apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: {ns}\n"
                    f"spec:\n  selector:\n    app: app-{i}\n  ports:\n  - port: 80\n    targetPort: 8080\n")
    for i in range(COUNTS["deployment"]):
        docs.append(f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i}\n  namespace: {ns}\n"
                    f"spec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: app-{i}\n"
                    f"  template:\n    metadata:\n      labels:\n        app: app-{i}\n    spec:\n"
                    f"      containers:\n      - name: app\n        image: registry.example/app:{i}\n")
    return docs


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def timed(cmd, env=None):
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode not in (0, 2):
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return time.perf_counter() - t


def main():
    kubeconfig = os.environ.get("TERRACE_TEST_KUBECONFIG")
    if not kubeconfig:
        print("skipped: TERRACE_TEST_KUBECONFIG does not name a kubeconfig; "
              "set it to a cluster to compare terrace with kubectl apply --server-side")
        return
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "terrace"], cwd=ROOT, check=True)
    terrace = os.path.join(ROOT, "target/release/terrace")
    kubectl = shutil.which("kubectl") or sys.exit("kubectl is not on the PATH")

    with tempfile.TemporaryDirectory() as tmp:
        project = os.path.join(tmp, "project")
        write(os.path.join(project, "terrace.yaml"),
              "name: bench\nlayers: [apps]\ntargets:\n  k3s:\n    type: cluster\n")
        write(os.path.join(project, "bench/unit.yaml"), "layer: apps\nkind: manifests\n")
        # The same objects, one file per object, for both tools.
        for i, doc in enumerate(objects("terrace-bench")):
            write(os.path.join(project, f"bench/{i:04}.yaml"), doc)
        plain = os.path.join(tmp, "kubectl")
        for i, doc in enumerate(objects("terrace-bench-kubectl")):
            write(os.path.join(plain, f"{i:04}.yaml"), doc)

        env = dict(os.environ, TERRACE_KUBE_WAIT="false", NO_COLOR="1")
        t_cmd = [terrace, "-C", project, "--cluster", f"k3s={kubeconfig}", "apply"]
        k_cmd = [kubectl, "--kubeconfig", kubeconfig, "apply", "--server-side",
                 "--field-manager", "kubectl-bench", "-f", plain]
        try:
            # The Namespace must exist before kubectl's objects: apply it first,
            # outside the timing, as terrace orders it itself.
            subprocess.run([kubectl, "--kubeconfig", kubeconfig, "apply", "--server-side",
                            "-f", os.path.join(plain, "0000.yaml")], check=True,
                           stdout=subprocess.DEVNULL)
            rows = []
            rows.append(("(a) first apply, 1,000 objects", timed(t_cmd, env), timed(k_cmd)))
            time.sleep(SETTLE)
            rows.append(("(b) re-apply, nothing changed",
                         statistics.median(timed(t_cmd, env) for _ in range(RUNS)),
                         statistics.median(timed(k_cmd) for _ in range(RUNS))))
        finally:
            for ns in ("terrace-bench", "terrace-bench-kubectl"):
                subprocess.run([kubectl, "--kubeconfig", kubeconfig, "delete", "namespace", ns,
                                "--wait=false", "--ignore-not-found"], stdout=subprocess.DEVNULL)

    print(f"{'workload':34} {'terrace':>10} {'kubectl':>10} {'ratio':>8}")
    for name, t, k in rows:
        print(f"{name:34} {t:9.3f}s {k:9.3f}s {k / t:7.1f}x")


if __name__ == "__main__":
    main()
