#!/usr/bin/env python3
"""Helm conformance corpus: expected outputs from the real `helm` binary.

The objects terrace renders for a `kind: helm` unit must equal what
`helm template` prints for the same chart, release name, namespace and
values. Each case under cases/<NN-name>/ holds:

  chart/         a small chart (apiVersion v2) written for the case
  case.yaml      the render settings, in JSON syntax (valid YAML, read here
                 with json.load):
                   releaseName  string (required)
                   namespace    string (required)
                   includeCRDs  bool, default true   -> --include-crds
                   kubeVersion  string, e.g. "1.33.0" -> --kube-version
                   apiVersions  list of strings       -> --api-versions (one each)
                   values       mapping given on top of the chart's values.yaml
                                                      -> -f <temp file>
                   skipTests    bool, default true    -> --skip-tests
  expected.yaml  `helm template` stdout, written by this script (never by hand)

Usage:

    HELM_BIN=/path/to/helm python3 make_cases.py [--check] [CASE ...]

CASE is a case directory name (e.g. 03-tpl-values) or path; without any, every
case is rendered. With --check nothing is written: each case is re-rendered
and the cases whose expected.yaml differs (or is missing) are listed; the exit
status is 1 if any differ.

helm runs with private HELM_CACHE_HOME/HELM_CONFIG_HOME/HELM_DATA_HOME in a
temporary directory, a KUBECONFIG that does not exist, and no network use
(`helm template` renders client-side; `lookup` returns an empty map).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "cases")

KNOWN_KEYS = {
    "releaseName", "namespace", "includeCRDs", "kubeVersion", "apiVersions",
    "values", "skipTests",
}


def die(msg):
    print(f"make_cases.py: {msg}", file=sys.stderr)
    sys.exit(1)


def find_helm():
    helm = os.environ.get("HELM_BIN") or shutil.which("helm")
    if not helm:
        die("no helm: set HELM_BIN or put helm on PATH")
    if not os.access(helm, os.X_OK):
        die(f"HELM_BIN={helm} is not an executable file")
    return os.path.abspath(helm)


def helm_env(home):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "HELM_CACHE_HOME": os.path.join(home, "cache"),
        "HELM_CONFIG_HOME": os.path.join(home, "config"),
        "HELM_DATA_HOME": os.path.join(home, "data"),
        # Never a real cluster: `helm template` does not need one.
        "KUBECONFIG": os.path.join(home, "no-kubeconfig"),
        "LANG": "C.UTF-8",
    }
    for d in ("cache", "config", "data"):
        os.makedirs(os.path.join(home, d), exist_ok=True)
    return env


def load_case(case_dir):
    path = os.path.join(case_dir, "case.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
    except (OSError, ValueError) as e:
        die(f"{os.path.basename(case_dir)}: cannot read case.yaml: {e}")
    if not isinstance(case, dict):
        die(f"{os.path.basename(case_dir)}: case.yaml is not a mapping")
    unknown = set(case) - KNOWN_KEYS
    if unknown:
        die(f"{os.path.basename(case_dir)}: unknown keys in case.yaml: {sorted(unknown)}")
    for key in ("releaseName", "namespace"):
        if not isinstance(case.get(key), str) or not case[key]:
            die(f"{os.path.basename(case_dir)}: case.yaml needs a string `{key}`")
    return case


def render(helm, env, tmp, case_dir):
    name = os.path.basename(case_dir)
    case = load_case(case_dir)
    chart = os.path.join(case_dir, "chart")
    if not os.path.isfile(os.path.join(chart, "Chart.yaml")):
        die(f"{name}: no chart/Chart.yaml")
    args = [helm, "template", case["releaseName"], chart,
            "--namespace", case["namespace"]]
    if case.get("includeCRDs", True):
        args.append("--include-crds")
    if "kubeVersion" in case:
        args += ["--kube-version", case["kubeVersion"]]
    for api in case.get("apiVersions", []):
        args += ["--api-versions", api]
    if case.get("skipTests", True):
        args.append("--skip-tests")
    if "values" in case:
        if not isinstance(case["values"], dict):
            die(f"{name}: `values` in case.yaml is not a mapping")
        values_file = os.path.join(tmp, f"{name}.values.yaml")
        with open(values_file, "w", encoding="utf-8") as f:
            # JSON is YAML; helm reads it like any values file.
            json.dump(case["values"], f, indent=2)
        args += ["-f", values_file]
    proc = subprocess.run(args, env=env, cwd=tmp, capture_output=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode("utf-8", "replace"))
        die(f"{name}: helm template failed (exit {proc.returncode}): "
            + " ".join(args))
    return proc.stdout


def main(argv):
    check = False
    names = []
    for arg in argv:
        if arg == "--check":
            check = True
        elif arg in ("-h", "--help"):
            print(__doc__)
            return 0
        elif arg.startswith("-"):
            die(f"unknown flag {arg}")
        else:
            names.append(arg)

    if names:
        case_dirs = []
        for n in names:
            d = n if os.path.isdir(os.path.join(n, "chart")) else os.path.join(CASES, os.path.basename(n.rstrip("/")))
            if not os.path.isdir(d):
                die(f"no case {n}")
            case_dirs.append(os.path.abspath(d))
    else:
        case_dirs = [os.path.join(CASES, n) for n in sorted(os.listdir(CASES))
                     if os.path.isdir(os.path.join(CASES, n))]

    helm = find_helm()
    with tempfile.TemporaryDirectory(prefix="terrace-helm-cases-") as tmp:
        env = helm_env(tmp)
        version = subprocess.run([helm, "version", "--short"], env=env,
                                 capture_output=True, text=True)
        if version.returncode != 0:
            die(f"{helm} version failed: {version.stderr.strip()}")
        print(f"helm: {helm} ({version.stdout.strip()})")

        differ = []
        for case_dir in case_dirs:
            name = os.path.basename(case_dir)
            out = render(helm, env, tmp, case_dir)
            expected = os.path.join(case_dir, "expected.yaml")
            if check:
                try:
                    with open(expected, "rb") as f:
                        same = f.read() == out
                except FileNotFoundError:
                    same = False
                print(f"{'ok     ' if same else 'DIFFERS'} {name}")
                if not same:
                    differ.append(name)
            else:
                with open(expected, "wb") as f:
                    f.write(out)
                print(f"wrote   {name}/expected.yaml")

    if check and differ:
        print(f"{len(differ)} case(s) differ: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
