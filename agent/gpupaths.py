"""Which paths are GPU device nodes: /dev/nvidia* and /dev/dri/renderD*.

This is the public contract of `gpu.open` ("any open of /dev/nvidia*, ...,
/dev/dri/renderD*"), and the kernel filter in agent/bpf/gpu_open.c applies the
same prefixes byte for byte, so eBPF mode and the procfs poller/inventory
report the same set of devices. "/dev/nvidia" covers nvidia0.., nvidiactl,
nvidia-uvm*, nvidia-modeset, nvidia-nvswitch*, nvidia-caps/*, the IMEX
channels and GPUDirect Storage's nvidia-fs*: an unfamiliar node under that
prefix (someone's mknod) is exactly what an auditor should show, not hide.
"""

from __future__ import annotations

GPU_PATH_PREFIXES: tuple[str, ...] = ("/dev/nvidia", "/dev/dri/renderD")


def is_gpu_device_path(path: str) -> bool:
    """True when ``path`` names a GPU device node.

    Compared as given: not normalised, symlinks not followed (``/dev//nvidia0``
    does not match), exactly like the kernel filter; fd links read from /proc
    are already canonical.
    """
    return path.startswith(GPU_PATH_PREFIXES)
