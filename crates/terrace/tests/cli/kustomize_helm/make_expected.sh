#!/usr/bin/env bash
# Writes each case's expected.yaml with the reference: kubectl's built-in
# kustomize (v5.5.0) with --enable-helm, rendering through the real helm.
# kubectl's kustomize asks `helm version -c --short` and wants Helm v3;
# Helm v4 takes neither flag, so a wrapper answers the version question
# and hands every other command to the real helm unchanged.
#   HELM_BIN=/path/to/helm bash make_expected.sh
set -euo pipefail
cd "$(dirname "$0")"
helm_real="${HELM_BIN:-$(command -v helm)}"
wrap="$(mktemp -d)"
trap 'rm -rf "$wrap"' EXIT
cat > "$wrap/helm" <<WRAP
#!/bin/sh
if [ "\$1" = version ]; then echo "v3.99.0+reference"; exit 0; fi
exec "$helm_real" "\$@"
WRAP
chmod +x "$wrap/helm"
for case in */; do
  case="${case%/}"
  dir="$case"
  [ -f "$case/kustomization.yaml" ] || dir="$case/prod"
  kubectl kustomize --enable-helm --helm-command "$wrap/helm" "$dir" > "$case/expected.yaml"
  echo "$case: $(grep -c '^kind:' "$case/expected.yaml") objects"
done
