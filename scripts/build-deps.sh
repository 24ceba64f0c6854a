#!/usr/bin/env bash
# Installs what building terrace needs beyond a Rust toolchain, when
# missing: protoc (Debian protobuf-compiler), which etcd-client's build
# script runs to generate etcd's gRPC API. Called by demo.sh, test.sh and
# CI before the first cargo build.
set -euo pipefail
if [ -z "${PROTOC:-}" ] && ! command -v protoc >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq protobuf-compiler >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq protobuf-compiler >/dev/null; }
fi
