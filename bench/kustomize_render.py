#!/usr/bin/env python3
"""Kustomize rendering, terrace against `kubectl kustomize`, in one run:

(a) 200 overlays of 5-10 resources each over a shared base: one
    `kubectl kustomize` process per overlay (as Flux and Argo CD run it)
    against one `terrace kustomize build` of all 200;
(b) one kustomization of 4,000 resources with patches;
(c) one tiny overlay (start-up cost).

Prints both times side by side with the ratio (kubectl / terrace). Goals:
(a) >= 20x, (b) >= 5x, (c) terrace under 10 ms.
"""
import os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "3"))


def deployment(name, image="nginx:1.0"):
    return (f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n"
            f"  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n"
            f"    spec:\n      containers:\n      - name: {name}\n        image: {image}\n")


def service(name):
    return f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80}}]\n"


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def same_output(cmd_a, cmd_b):
    """Whether two commands print the same objects (needs PyYAML; None without)."""
    try:
        import yaml
    except ImportError:
        return None
    a = list(yaml.safe_load_all(subprocess.run(cmd_a, check=True, capture_output=True, text=True).stdout))
    b = list(yaml.safe_load_all(subprocess.run(cmd_b, check=True, capture_output=True, text=True).stdout))
    return a == b


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "terrace"], cwd=ROOT, check=True)
    terrace = os.path.join(ROOT, "target", "release", "terrace")
    work = tempfile.mkdtemp(prefix="terrace-bench-kustomize-")

    # (a) 200 overlays.
    write(f"{work}/a/base/kustomization.yaml", "resources: [d.yaml, s.yaml]\nconfigMapGenerator:\n- name: cfg\n  literals: [A=1]\n")
    write(f"{work}/a/base/d.yaml", deployment("web"))
    write(f"{work}/a/base/s.yaml", service("web"))
    overlays = []
    for i in range(200):
        d = f"{work}/a/o{i:03d}"
        extra = [f"x{j}.yaml" for j in range(3 + i % 6)]
        for j, e in enumerate(extra):
            write(f"{d}/{e}", f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra-{j}\ndata:\n  k: \"{i}\"\n")
        write(f"{d}/kustomization.yaml",
              f"resources: [../base, {', '.join(extra)}]\nnamespace: ns{i}\nnamePrefix: o{i}-\n"
              f"commonLabels: {{overlay: \"{i}\"}}\nimages:\n- name: nginx\n  newTag: \"{i}\"\n"
              f"configMapGenerator:\n- name: cfg\n  behavior: merge\n  literals: [B={i}]\n")
        overlays.append(d)
    ours_a = statistics.median(timed([terrace, "kustomize", "build", *overlays]) for _ in range(RUNS))
    t = time.perf_counter()
    for d in overlays:
        subprocess.run(["kubectl", "kustomize", d], check=True, stdout=subprocess.DEVNULL)
    theirs_a = time.perf_counter() - t

    # (b) 4,000 resources with patches.
    b = f"{work}/b"
    os.makedirs(b)
    with open(f"{b}/all.yaml", "w") as f:
        for i in range(2000):
            f.write(deployment(f"app{i:04d}") + "---\n" + service(f"app{i:04d}") + "---\n")
    write(f"{b}/kustomization.yaml",
          "resources: [all.yaml]\nnamespace: big\ncommonLabels: {team: big}\n"
          "patches:\n- target: {kind: Deployment}\n  patch: |-\n    - op: replace\n      path: /spec/replicas\n      value: 2\n"
          "- target: {kind: Service, name: app00.*}\n  patch: |-\n    apiVersion: v1\n    kind: Service\n    metadata:\n      name: any\n      annotations: {patched: \"yes\"}\n")
    ours_b = statistics.median(timed([terrace, "kustomize", "build", b]) for _ in range(RUNS))
    theirs_b = statistics.median(timed(["kubectl", "kustomize", b]) for _ in range(RUNS))

    # (c) a tiny overlay.
    c = f"{work}/c"
    write(f"{c}/kustomization.yaml", "resources: [d.yaml]\nnamePrefix: t-\n")
    write(f"{c}/d.yaml", deployment("tiny"))
    ours_c = statistics.median(timed([terrace, "kustomize", "build", c]) for _ in range(max(RUNS, 10)))
    theirs_c = statistics.median(timed(["kubectl", "kustomize", c]) for _ in range(RUNS))

    checks = {
        "(a) overlay 0": same_output([terrace, "kustomize", "build", overlays[0]], ["kubectl", "kustomize", overlays[0]]),
        "(c)": same_output([terrace, "kustomize", "build", c], ["kubectl", "kustomize", c]),
    }
    print()
    for name, same in checks.items():
        print(f"output of {name}: " + {True: "same objects as kubectl", False: "DIFFERS from kubectl", None: "not compared (no PyYAML)"}[same])
    print(f"{'workload':<50} {'terrace':>10} {'kubectl':>10} {'ratio':>8}  goal")
    print(f"{'(a) 200 overlays (kubectl: one process each)':<50} {ours_a:>9.3f}s {theirs_a:>9.3f}s {theirs_a / ours_a:>7.1f}x  >= 20x")
    print(f"{'(b) 4,000 resources with patches':<50} {ours_b:>9.3f}s {theirs_b:>9.3f}s {theirs_b / ours_b:>7.1f}x  >= 5x")
    print(f"{'(c) one tiny overlay (start-up)':<50} {ours_c * 1000:>8.1f}ms {theirs_c * 1000:>8.1f}ms {theirs_c / ours_c:>7.1f}x  terrace < 10 ms")
    subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
