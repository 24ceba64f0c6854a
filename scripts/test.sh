#!/usr/bin/env bash
# Runs the whole test suite. Installs nothing by hand: the tools the tests
# run against (sops, age, ssh-keygen) come from scripts/setup-tools.sh;
# cargo-nextest is used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-deps.sh
bash scripts/setup-tools.sh
# Where setup-tools.sh puts what no package carries (helm).
export PATH="$PATH:${TERRACE_TOOLS:-$HOME/.cache/terrace-tools}/bin"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Snapshot tests must match what is committed, never rewrite it.
export INSTA_UPDATE=no
if [ -z "${TERRACE_TEST_KUBECONFIG:-}" ]; then
  echo "note: the real-cluster tests (cli cluster::real_cluster_*) are skipped: TERRACE_TEST_KUBECONFIG does not name a kubeconfig"
else
  echo "note: the real-cluster tests run against the cluster of $TERRACE_TEST_KUBECONFIG"
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -j 2
else
  cargo test --workspace -j 2
fi
