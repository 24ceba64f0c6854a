#!/usr/bin/env bash
# Runs one fuzz target for a while, starting from the committed seeds.
#   bash fuzz/run.sh secrets_file 300     # target, seconds (default 120)
# Targets: kustomize (kustomization parsing and patches), expr (the ${...} language and locating values in YAML), secrets_file (SOPS files in every format, full decryption with a
# fixed key), enc_value (ENC[...] values), yaml_tree (the comment-keeping
# YAML tree must read back what it writes), records (state records of
# both formats and saved plans read, or are refused, and read back what
# is written), substitute (Flux-style ${VAR} substitution), import (the importers'
# own parsing, and whole imports of one hostile file), compose (compose
# files, interpolation, shell words), docker (docker target addresses and
# the archives engines send), host_output (what a host prints back to a
# script unit: probe reports and ::outputs:: lines). Needs a
# nightly toolchain (or RUSTC_BOOTSTRAP=1 with stable) and
# `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")"
target="${1:?target: secrets_file, enc_value or yaml_tree}"
seconds="${2:-120}"
mkdir -p "corpus/$target"
cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true
cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096
