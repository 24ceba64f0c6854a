#!/usr/bin/env python3
"""A no-op plan of 100 unchanged helm units against one `helm template`
per unit (what Flux's helm-controller and Argo CD's repo-server do on each
reconcile). Goal: at least 20x.

Generates a project of 100 helm units (layer `apps`, one local chart of
the app-template kind: Deployment, Service, ConfigMap, ServiceAccount,
Ingress; values per unit), applies it once to the embedded cluster target
(rendered files), then times:
- terrace plan, nothing changed (each unit's render comes from the
  render cache, `.terrace/cache/<env>/helm/`: chart digest, values and
  flags unchanged, so Helm does not run);
- terrace plan with the render cache removed (every unit runs helm
  template: the first render);
- helm template of the same chart and values, 100 times one after the
  other (the reference).
Prints medians and the ratio. Needs helm (TERRACE_HELM or on the PATH)
and a release build (`cargo build --release`), or TERRACE=path.
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = int(os.environ.get("UNITS", "100"))
RUNS = int(os.environ.get("RUNS", "7"))
TERRACE = os.environ.get("TERRACE", os.path.join(ROOT, "target/release/terrace"))
HELM = os.environ.get("TERRACE_HELM") or shutil.which("helm") or os.path.expanduser(
    "~/.cache/terrace-tools/bin/helm")

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: app\nversion: 1.0.0\n",
    "values.yaml": "image: {repository: nginx, tag: \"1.27\"}\nreplicas: 1\nport: 8080\nhost: \"\"\nenv: {}\n",
    "templates/_helpers.tpl": "{{- define \"app.labels\" -}}\napp.kubernetes.io/name: {{ .Release.Name }}\napp.kubernetes.io/version: {{ .Chart.Version | quote }}\n{{- end }}\n",
    "templates/deployment.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n  labels: {{- include \"app.labels\" . | nindent 4 }}\nspec:\n  replicas: {{ .Values.replicas }}\n  selector:\n    matchLabels: {app.kubernetes.io/name: {{ .Release.Name }}}\n  template:\n    metadata:\n      labels: {{- include \"app.labels\" . | nindent 8 }}\n    spec:\n      serviceAccountName: {{ .Release.Name }}\n      containers:\n      - name: app\n        image: \"{{ .Values.image.repository }}:{{ .Values.image.tag }}\"\n        ports: [{containerPort: {{ .Values.port }}}]\n        env:\n        {{- range $k, $v := .Values.env }}\n        - {name: {{ $k }}, value: {{ $v | quote }}}\n        {{- end }}\n",
    "templates/service.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\n  labels: {{- include \"app.labels\" . | nindent 4 }}\nspec:\n  selector: {app.kubernetes.io/name: {{ .Release.Name }}}\n  ports: [{port: 80, targetPort: {{ .Values.port }}}]\n",
    "templates/config.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\ndata:\n  {{- toYaml .Values.env | nindent 2 }}\n",
    "templates/sa.yaml": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {{ .Release.Name }}\n",
    "templates/ingress.yaml": "{{- if .Values.host }}\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  rules:\n  - host: {{ .Values.host }}\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: {{ .Release.Name }}, port: {number: 80}}}}\n{{- end }}\n",
}


def generate(dst):
    with open(os.path.join(dst, "terrace.yaml"), "w") as f:
        f.write("name: bench\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n")
    for path, text in CHART.items():
        p = os.path.join(dst, "charts/app", path)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").write(text)
    for i in range(UNITS):
        d = os.path.join(dst, "apps", f"a{i:03d}")
        os.makedirs(d)
        open(os.path.join(d, "unit.yaml"), "w").write(
            "layer: apps\nkind: helm\nhelm:\n  chart: ../../charts/app\n  namespace: apps\n"
            f"  values:\n    replicas: {1 + i % 3}\n    host: a{i:03d}.example.org\n"
            f"    env: {{MODE: fast, INDEX: \"{i}\"}}\n")


def timed(cmd, cwd, env):
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if r.returncode not in (0, 2):
        sys.exit(f"{cmd} failed: {r.stderr.decode()}")
    return dt


def main():
    if not os.path.exists(TERRACE):
        sys.exit(f"no terrace at {TERRACE}: cargo build --release, or set TERRACE")
    if not HELM or not os.path.exists(HELM):
        sys.exit("no helm: set TERRACE_HELM, or run scripts/setup-tools.sh")
    env = dict(os.environ, TERRACE_HELM=HELM)
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp)
        timed([TERRACE, "apply"], tmp, env)
        noop = [timed([TERRACE, "plan"], tmp, env) for _ in range(RUNS)]
        first = []
        for _ in range(max(3, RUNS // 2)):
            shutil.rmtree(os.path.join(tmp, ".terrace/cache"), ignore_errors=True)
            first.append(timed([TERRACE, "plan"], tmp, env))
        homes = os.path.join(tmp, "helmhome")
        henv = dict(env, HELM_CACHE_HOME=homes, HELM_CONFIG_HOME=homes, HELM_DATA_HOME=homes)
        values = os.path.join(tmp, "values.yaml")
        helm_runs = []
        for _ in range(max(3, RUNS // 2)):
            t = time.perf_counter()
            for i in range(UNITS):
                open(values, "w").write(
                    f"replicas: {1 + i % 3}\nhost: a{i:03d}.example.org\nenv: {{MODE: fast, INDEX: \"{i}\"}}\n")
                subprocess.run([HELM, "template", f"a{i:03d}", os.path.join(tmp, "charts/app"),
                                "--namespace", "apps", "--skip-tests", "--include-crds", "-f", values],
                               env=henv, stdout=subprocess.DEVNULL, check=True)
            helm_runs.append(time.perf_counter() - t)
    n, f, h = statistics.median(noop), statistics.median(first), statistics.median(helm_runs)
    print(f"units: {UNITS} helm units, one local chart (5 templates)")
    print(f"terrace no-op plan (render cache):      {n * 1000:8.0f} ms")
    print(f"terrace first plan (helm template each): {f * 1000:8.0f} ms")
    print(f"helm template x{UNITS} (reference):         {h * 1000:8.0f} ms")
    print(f"ratio reference / no-op plan: {h / n:.1f}x (goal: at least 20x)")


if __name__ == "__main__":
    main()
