#!/usr/bin/env bash
# Prepare a Debian/Ubuntu host for the gpuaudit agent's eBPF sensors:
#   - Debian's bcc (python3-bpfcc) and kernel headers for bcc to compile against
#   - /lib/modules/$(uname -r)/{build,source} pointing at headers when the running
#     kernel has none of its own (custom/cloud kernels). The headers then do not
#     match the kernel exactly, which is why the BPF code never dereferences
#     kernel structs (see agent/bpf/events.h).
#   - tracefs mounted (tracepoints are attached through it)
# Idempotent; does nothing that is already done. Needs root for apt/mount; as a
# non-root user it only reports what is missing (the agent then runs degraded).
set -euo pipefail
kver=$(uname -r)
say() { echo "host-setup: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "not root: skipping apt/headers/tracefs (the agent will run in procfs mode)"
  exit 0
fi

need=()
/usr/bin/python3 -c 'import bcc' 2>/dev/null || need+=(python3-bpfcc)
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ! -e "/lib/modules/$kver/build/include" ]; then
  if apt-cache policy "linux-headers-$kver" 2>/dev/null | grep -q Candidate:.[0-9]; then
    need+=("linux-headers-$kver")
  elif ! ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1; then
    need+=(linux-headers-amd64)
  fi
fi
command -v gcc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -e "/lib/modules/$kver/build/include" ]; then
  arch=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$arch" ] && [ -n "$common" ]; then
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$arch" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
    say "linked $arch as headers for $kver (not an exact match; BPF code avoids struct reads)"
  else
    say "no kernel headers found: eBPF sensors will be off"
  fi
fi

if [ ! -e /sys/kernel/tracing/events ] && [ -d /sys/kernel/tracing ]; then
  mount -t tracefs nodev /sys/kernel/tracing && say "mounted tracefs"
fi
exit 0
