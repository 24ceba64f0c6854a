#!/usr/bin/env python3
"""terrace's kustomize engine against `kubectl kustomize` on whole
repositories: every directory holding a kustomization file is built by
both, and the outputs are compared as data (PyYAML, null documents
dropped, same documents in the same order with equal values).

    python3 bench/kustomize_sweep.py [--terrace BIN] [--sample N] TREE...

TREE is a checked-out repository (e.g. a homelab monorepo). Prints, per
tree and in total: the cases, those kubectl cannot build (and whether
terrace refuses them too), those skipped (`helmCharts`, which terrace
does not build yet), and terrace's passes among the cases kubectl
builds; then every mismatch with its first difference.
"""
import argparse, os, random, subprocess, sys

try:
    import yaml
except ImportError:
    sys.exit("PyYAML is needed (pip install pyyaml)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class Loader(yaml.SafeLoader):
    """YAML 1.1 reads a bare `=` as a special tag; kubectl prints
    `matchType: =` unquoted. Both sides read it as the string."""


Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def run(cmd, cwd):
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return -1, "", "timed out after 60 s"


def docs(text):
    return [d for d in yaml.load_all(text, Loader=Loader) if d is not None]


def first_difference(a, b, path=""):
    if type(a) is not type(b):
        return f"{path or '.'}: {a!r:.60} vs {b!r:.60}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'terrace' if k in a else 'kubectl'}"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path or '.'}: {a!r:.60} vs {b!r:.60}"


def sweep(tree, terrace, sample):
    dirs = []
    for root, subdirs, files in os.walk(tree):
        subdirs[:] = [d for d in subdirs if d != ".git"]
        if any(n in files for n in NAMES):
            dirs.append(os.path.relpath(root, tree))
    dirs.sort()
    if sample and len(dirs) > sample:
        random.Random(42).shuffle(dirs)
        dirs = sorted(dirs[:sample])
    counts = {"cases": len(dirs), "kubectl fails": 0, "both fail": 0, "skipped": 0, "built": 0, "pass": 0}
    mismatches = []
    for d in dirs:
        kfile = next(os.path.join(tree, d, n) for n in NAMES if os.path.exists(os.path.join(tree, d, n)))
        if "helmCharts" in open(kfile, errors="replace").read():
            counts["skipped"] += 1
            continue
        kc, kout, _ = run(["kubectl", "kustomize", d], tree)
        tc, tout, terr = run([terrace, "kustomize", "build", d], tree)
        if kc != 0:
            counts["kubectl fails"] += 1
            counts["both fail"] += tc != 0
            continue
        counts["built"] += 1
        if tc != 0:
            mismatches.append((d, "terrace failed: " + (terr.strip().splitlines() or [""])[0][:160]))
            continue
        want, got = docs(kout), docs(tout)
        if want == got:
            counts["pass"] += 1
        elif len(want) != len(got):
            mismatches.append((d, f"{len(got)} documents, kubectl {len(want)}"))
        else:
            i = next(i for i, (x, y) in enumerate(zip(got, want)) if x != y)
            mismatches.append((d, f"doc {i}: {first_difference(got[i], want[i])}"))
    return counts, mismatches


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+")
    ap.add_argument("--terrace", default=os.path.join(ROOT, "target", "release", "terrace"))
    ap.add_argument("--sample", type=int, default=0, help="at most N directories per tree (0: all)")
    a = ap.parse_args()
    if not os.path.exists(a.terrace):
        sys.exit(f"no terrace binary at {a.terrace}: cargo build --release -p terrace")
    total = {}
    all_mismatches = []
    print(f"{'tree':40} {'cases':>6} {'kubectl fails (terrace too)':>28} {'skipped':>8} {'pass':>12}")
    for tree in a.trees:
        counts, mismatches = sweep(os.path.abspath(tree), a.terrace, a.sample)
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        all_mismatches += [(f"{os.path.basename(tree.rstrip('/'))}:{d}", why) for d, why in mismatches]
        fails = f"{counts['kubectl fails']} ({counts['both fail']})"
        print(f"{os.path.basename(tree.rstrip('/')):40} {counts['cases']:>6} {fails:>28} {counts['skipped']:>8} {counts['pass']:>5}/{counts['built']:<6}")
    rate = 100.0 * total["pass"] / total["built"] if total.get("built") else 0.0
    fails = f"{total['kubectl fails']} ({total['both fail']})"
    print(f"{'total':40} {total['cases']:>6} {fails:>28} {total['skipped']:>8} {total['pass']:>5}/{total['built']:<6} = {rate:.1f}%")
    for d, why in all_mismatches:
        print(f"  {d}  {why}")


if __name__ == "__main__":
    main()
