"""The GPU device predicate: the contract's prefixes, same as the kernel filter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.gpupaths import GPU_PATH_PREFIXES, is_gpu_device_path

GPU_PATHS = [
    "/dev/nvidia0", "/dev/nvidia15", "/dev/nvidiactl", "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset", "/dev/nvidia-nvswitch0",
    "/dev/nvidia-caps/nvidia-cap1", "/dev/nvidia-caps-imex-channels/channel0",
    "/dev/nvidia-fs0", "/dev/nvidia-gpuaudit-test", "/dev/dri/renderD128",
]

NOT_GPU_PATHS = [
    "", "/dev/dri/card0", "/dev/null", "/dev//nvidia0", "nvidia0", "/tmp/dev/nvidia0",
    "socket:[123]", "/dev/nvidi", "/dev/dri/render",
]


@pytest.mark.parametrize("path", GPU_PATHS)
def test_gpu_paths_match(path):
    assert is_gpu_device_path(path) is True


@pytest.mark.parametrize("path", NOT_GPU_PATHS)
def test_other_paths_do_not_match(path):
    assert is_gpu_device_path(path) is False


def test_prefixes_are_the_ones_the_kernel_filter_compares():
    # agent/bpf/gpu_open.c spells the prefixes out as character compares;
    # rebuild the strings from that code so the two cannot drift apart.
    src = (Path(__file__).parents[2] / "agent/bpf/gpu_open.c").read_text()
    start = src.index("static __always_inline int is_gpu_prefix")
    body = src[start:src.index("static __always_inline", start + 1)]
    pairs = [(int(i), c) for i, c in re.findall(r"p\[(\d+)\] [!=]= '(.)'", body)]
    # in source order: "/dev/" (0-4), "nvidia" (5-10), "dri/renderD" (5-15)
    assert [i for i, _ in pairs] == [*range(5), *range(5, 11), *range(5, 16)]
    chars = [c for _, c in pairs]
    prefix, nvidia, render = "".join(chars[:5]), "".join(chars[5:11]), "".join(chars[11:])
    assert (prefix + nvidia, prefix + render) == GPU_PATH_PREFIXES


@given(st.text(alphabet="/devnidarcl-0123456789Dtsuxm", max_size=40))
def test_predicate_is_the_prefix_rule(path):
    assert is_gpu_device_path(path) == path.startswith(GPU_PATH_PREFIXES)
