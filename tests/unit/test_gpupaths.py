"""The GPU device predicate and its agreement with the kernel prefix filter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import gpupaths
from agent.gpupaths import GPU_PATH_PREFIXES, is_gpu_device_path

GPU_PATHS = [
    "/dev/nvidia0",
    "/dev/nvidia7",
    "/dev/nvidia15",
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
    "/dev/nvidia-nvswitch0",
    "/dev/nvidia-nvswitchctl",
    "/dev/nvidia-caps/nvidia-cap1",
    "/dev/nvidia-caps/nvidia-cap2049",
    "/dev/nvidia-caps-imex-channels/channel0",
    "/dev/dri/renderD128",
    "/dev/dri/renderD129",
]

NOT_GPU_PATHS = [
    "",
    "/dev/nvidia",
    "/dev/nvidia-caps",
    "/dev/nvidia-caps/",
    "/dev/nvidia-caps/a/b",
    "/dev/nvidiactl2",
    "/dev/nvidia0a",
    "/dev/nvidia-uvmx",
    "/dev/nvidia-fs0",  # GPUDirect Storage: not a GPU device
    "/dev/dri/card0",  # display (KMS) node, not render/compute
    "/dev/dri/renderD",
    "/dev/dri/renderDx",
    "/dev/null",
    "/dev//nvidia0",  # not normalised on purpose: the kernel filter would not pass it
    "nvidia0",
    "/tmp/dev/nvidia0",
    "/dev/nvidia0/",
    "/dev/nvidia0\n",
    "socket:[123]",
]


@pytest.mark.parametrize("path", GPU_PATHS)
def test_gpu_paths_match(path):
    assert is_gpu_device_path(path) is True


@pytest.mark.parametrize("path", NOT_GPU_PATHS)
def test_other_paths_do_not_match(path):
    assert is_gpu_device_path(path) is False


@pytest.mark.parametrize("path", GPU_PATHS)
def test_every_gpu_path_passes_the_kernel_prefix_filter(path):
    assert path.startswith(GPU_PATH_PREFIXES)


def test_prefixes_are_the_documented_pair():
    assert GPU_PATH_PREFIXES == ("/dev/nvidia", "/dev/dri/renderD")


@given(st.from_regex(gpupaths._GPU_PATH_RE, fullmatch=True))
def test_predicate_implies_prefix(path):
    # whatever user space would accept, the prefix-only BPF filter lets through
    assert is_gpu_device_path(path)
    assert path.startswith(GPU_PATH_PREFIXES)


@given(st.text(alphabet="/devnidarcl-0123456789Dtsuxm", max_size=40))
def test_no_match_without_prefix(path):
    if not path.startswith(GPU_PATH_PREFIXES):
        assert not is_gpu_device_path(path)
