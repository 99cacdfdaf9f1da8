#!/usr/bin/env bash
# What the test suite needs from the host beyond the agent's own setup
# (agent/host-setup.sh): a C compiler for the fake NVML/NCCL libraries,
# iproute2 for the network-namespace tests, a headless Chromium to look at the
# HTML report, and PostgreSQL's server binaries (the tests start their own
# cluster). Idempotent; as a non-root user it only says what is missing (those
# tests then skip, or fail under CI=true).
set -euo pipefail
say() { echo "tests/host-setup: $*" >&2; }

need=()
command -v cc >/dev/null || need+=(gcc)
command -v ip >/dev/null || need+=(iproute2)
command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null \
  || need+=(chromium-headless-shell)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  say "missing ${need[*]} (install them, or the tests that need them skip)"
  exit 0
fi
say "installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
