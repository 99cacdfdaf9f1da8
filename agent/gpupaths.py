"""Which paths are GPU device nodes.

Two layers agree on this module:

* the kernel filter (agent/bpf) is prefix-only -- a bounded byte compare is all
  a BPF program can afford -- and uses :data:`GPU_PATH_PREFIXES`;
* user space then applies the exact predicate :func:`is_gpu_device_path` to
  every path the kernel let through, and the procfs poller applies it to the
  targets of ``/proc/<pid>/fd/*``.

Every path the predicate accepts starts with one of the prefixes (a unit test
checks this), so the kernel filter never hides a device the predicate wants.
"""

from __future__ import annotations

import re

# Kernel-side filter. "/dev/nvidia" covers nvidia0.., nvidiactl, nvidia-uvm,
# nvidia-uvm-tools, nvidia-modeset, nvidia-nvswitch*, and /dev/nvidia-caps/*.
GPU_PATH_PREFIXES: tuple[str, ...] = ("/dev/nvidia", "/dev/dri/renderD")

# The exact set, written as one anchored regex so a lookup is a single C call.
_GPU_PATH_RE = re.compile(
    r"/dev/(?:"
    r"nvidia(?:"
    r"\d+"  # per-GPU nodes: nvidia0, nvidia1, ...
    r"|ctl|-uvm|-uvm-tools|-modeset"  # control, unified memory, modesetting
    r"|-nvswitch[A-Za-z0-9]*"  # nvidia-nvswitch0.., nvidia-nvswitchctl
    r"|-caps/[^/]+"  # MIG / fabric capability nodes, e.g. nvidia-caps/nvidia-cap1
    r"|-caps-imex-channels/channel\d+"  # IMEX channels (multi-node NVLink, driver >= 550)
    r")"
    r"|dri/renderD\d+"  # DRM render nodes (any vendor's compute/render access)
    r")"
)


def is_gpu_device_path(path: str) -> bool:
    """True when ``path`` names a GPU device node.

    The path is compared as given: it is not normalised and symlinks are not
    followed (``/dev//nvidia0`` is not a match). The kernel filter compares raw
    bytes too, so both layers see the same thing; the procfs poller reads fd
    links, which the kernel already gives in canonical form.
    """
    return _GPU_PATH_RE.fullmatch(path) is not None
