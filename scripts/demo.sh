#!/usr/bin/env bash
# The main job: build terrace, then validate, plan and apply the example
# homelab repository with the embedded defaults (rendered files under
# examples/homelab/.terrace/), and show that a second plan has no changes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-deps.sh
cargo build --release -p terrace
# The example's helm units need helm (and its secrets sops' format):
# installed when missing, as for the tests.
bash scripts/setup-tools.sh
export PATH="$PATH:${TERRACE_TOOLS:-$HOME/.cache/terrace-tools}/bin"
T="$PWD/target/release/terrace"
cd examples/homelab
# The example's secrets are encrypted to a demo age key kept beside them.
export SOPS_AGE_KEY_FILE="${SOPS_AGE_KEY_FILE:-$PWD/keys/demo.agekey}"
"$T" validate
"$T" graph
set +e
"$T" plan; code=$?
set -e
echo "plan exit code: $code (0 no changes, 2 changes)"
"$T" apply -j 2
"$T" plan
echo "second plan exit code: $? (no changes)"
echo "rendered manifests and generated files are under examples/homelab/.terrace/"
