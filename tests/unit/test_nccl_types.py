"""NCCL tables, the communicator id, library names and /proc parsing of the
nccl sensor (no root, no kernel)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from agent.nccl import attach
from agent.nccl.records import MIRRORS
from agent.nccl.types import (
    DATATYPES,
    DTYPE_NONE,
    OPS,
    comm_id,
    datatype_name,
    datatype_size,
    is_nccl_library,
    nccl_env,
    shrink_id,
    split_id,
)

NCCL_H = Path(__file__).resolve().parents[1] / "fixtures/fakenccl/nccl.h"


def nccl_h_datatypes() -> dict[str, int]:
    """ncclDataType_t's primary names (ncclFloat16, ...) -> value, from the header."""
    body = re.search(r"typedef enum \{([^}]*)\} ncclDataType_t;", NCCL_H.read_text())
    assert body is not None
    pairs = re.findall(r"ncclc?(\w+?)\s*=\s*(\d+)", body.group(1), flags=re.I)
    return {name.lower(): int(v) for name, v in pairs}


def test_datatype_table_matches_nccl_h() -> None:
    in_header = nccl_h_datatypes()
    for value, (name, _) in DATATYPES.items():
        assert in_header[name] == value
    assert in_header["numtypes"] == len(DATATYPES)


@pytest.mark.parametrize(("dtype", "name", "size"), [
    (0, "int8", 1), (1, "uint8", 1), (2, "int32", 4), (3, "uint32", 4), (4, "int64", 8),
    (5, "uint64", 8), (6, "float16", 2), (7, "float32", 4), (8, "float64", 8),
    (9, "bfloat16", 2), (10, "float8e4m3", 1), (11, "float8e5m2", 1),
])
def test_every_datatype_has_its_exact_size(dtype: int, name: str, size: int) -> None:
    assert (datatype_name(dtype), datatype_size(dtype)) == (name, size)


def test_unknown_datatype_is_named_by_number_and_counts_no_bytes() -> None:
    assert (datatype_name(12), datatype_size(12)) == ("type12", 0)
    assert (datatype_name(DTYPE_NONE), datatype_size(DTYPE_NONE)) == ("", 0)


def test_ops_cover_the_collectives_and_groups() -> None:
    assert sorted(OPS.values()) == sorted([
        "AllReduce", "Broadcast", "Reduce", "AllGather", "ReduceScatter", "Send", "Recv",
        "GroupStart", "GroupEnd", "AlltoAll", "Gather", "Scatter", "PutSignal", "Signal",
        "WaitSignal"])


def test_comm_id_is_a_stable_hash_of_the_whole_unique_id() -> None:
    uid = bytes(range(128))
    assert comm_id(uid) == hashlib.sha256(uid).hexdigest()[:32]
    assert comm_id(uid) == comm_id(bytes(uid))
    assert comm_id(uid) != comm_id(uid[:-1] + b"\xff")  # the last byte counts too


def test_comm_id_refuses_a_wrong_length() -> None:
    with pytest.raises(ValueError, match="128 bytes"):
        comm_id(b"\0" * 64)


@pytest.mark.parametrize(("path", "is_nccl"), [
    ("/usr/lib/x86_64-linux-gnu/libnccl.so.2", True),
    ("/venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2", True),
    ("/opt/nccl/lib/libnccl.so.2.27.3", True),
    ("/opt/nccl/lib/libnccl.so", True),
    ("/tmp/x/libnccl.so.2 (deleted)", True),
    ("/opt/nccl/lib/libnccl-net-ofi.so", False),
    ("/opt/nccl/lib/libnccl_static.a", False),
    ("/usr/lib/libcudart.so.12", False),
])
def test_library_names(path: str, is_nccl: bool) -> None:
    assert is_nccl_library(path) is is_nccl


def test_nccl_env_keeps_only_nccl_variables() -> None:
    blob = b"PATH=/bin\0NCCL_DEBUG=INFO\0NCCL_IB_HCA=mlx5_0:1,mlx5_1:1\0XNCCL_A=1\0NCCL_EMPTY=\0"
    assert nccl_env(blob) == {"NCCL_DEBUG": "INFO", "NCCL_IB_HCA": "mlx5_0:1,mlx5_1:1",
                              "NCCL_EMPTY": ""}


def test_mirrors_hold_the_whole_unique_id() -> None:
    from agent.nccl.records import ID_LEN
    assert ID_LEN == 128
    assert MIRRORS["nccl_init_rec"].id.size == 128  # type: ignore[attr-defined]


def _fake_proc(root: Path, pid: int, maps: str) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "maps").write_text(maps)


MAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 1311 /usr/bin/python3
7f0000000000-7f0000100000 r--p 00000000 08:01 4242 /v/nvidia/nccl/lib/libnccl.so.2
7f0000100000-7f0000900000 r-xp 00100000 08:01 4242 /v/nvidia/nccl/lib/libnccl.so.2
7f0000900000-7f0000a00000 r--p 00900000 08:01 4242 /v/nvidia/nccl/lib/libnccl.so.2
7f1000000000-7f1000100000 r-xp 00000000 00:2a 77 /tmp/old/libnccl.so.2 (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
"""


def test_scan_finds_executable_nccl_mappings(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 10, MAPS)
    _fake_proc(tmp_path, 11, "55d0c0000000-55d0c0001000 r-xp 00000000 08:01 1311 /bin/sh\n")
    found = list(attach.scan(str(tmp_path)))
    assert [(m.pid, m.path, m.dev, m.inode) for m in found] == [
        (10, "/v/nvidia/nccl/lib/libnccl.so.2", os.makedev(8, 1), 4242),
        (10, "/tmp/old/libnccl.so.2 (deleted)", os.makedev(0, 0x2a), 77)]
    assert found[0].map_path == f"{tmp_path}/10/map_files/7f0000100000-7f0000900000"


def test_mapping_at_names_the_file_under_an_address(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 10, MAPS)
    assert attach.mapping_at(10, 0x7F0000123456, str(tmp_path)) == (
        "/v/nvidia/nccl/lib/libnccl.so.2", os.makedev(8, 1), 4242)
    assert attach.mapping_at(10, 0x1000, str(tmp_path)) is None
    assert attach.mapping_at(99, 0x7F0000123456, str(tmp_path)) is None  # gone


def test_parse_maps_line_skips_anonymous_and_bad_lines() -> None:
    assert attach.parse_maps_line("7f00-7f01 rw-p 00000000 00:00 0\n") is None
    assert attach.parse_maps_line("zz-7f01 r-xp 00000000 08:01 5 /x\n") is None


def test_sha256_file_of_missing_file_is_empty(tmp_path: Path) -> None:
    f = tmp_path / "lib"
    f.write_bytes(b"abc")
    assert attach.sha256_file(str(f)) == hashlib.sha256(b"abc").hexdigest()
    assert attach.sha256_file(str(tmp_path / "nope")) == ""


def test_header_enums_are_read_from_the_record_header() -> None:
    text = "enum a { X = 0, Y = 7 };\nenum b {\n    Z = 255,\n};\n#define W 3\n"
    from agent.nccl.types import header_enums
    assert header_enums(text) == {"X": 0, "Y": 7, "Z": 255}
    assert len(set(OPS)) == len(OPS) == 15 and DTYPE_NONE == 255


def test_split_id_is_deterministic_and_depends_on_parent_and_color() -> None:
    uid = bytes(range(128))
    child = split_id(uid, 3)
    assert len(child) == 128 and child == split_id(bytes(uid), 3)
    assert len({child, split_id(uid, 4), split_id(uid, -1), uid,
                split_id(uid[:-1] + b"\xff", 3)}) == 5
    assert split_id(child, 3) not in (uid, child)  # a split of a split is another child


def test_split_id_words_are_the_kernel_mix() -> None:
    """One word worked by hand: mix64(word ^ tag ^ color * golden ^ i << 56)."""
    m = (1 << 64) - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    salt = 0x54494C5053434E4E ^ ((7 * 0x9E3779B97F4A7C15) & m)
    got = split_id(bytes(128), 7)
    assert got[:8] == mix(salt).to_bytes(8, "little")
    assert got[8:16] == mix(salt ^ (1 << 56)).to_bytes(8, "little")


def test_split_id_refuses_a_wrong_length() -> None:
    with pytest.raises(ValueError, match="128 bytes"):
        split_id(b"\0" * 8, 1)


def test_shrink_id_depends_on_the_excluded_ranks_and_their_order() -> None:
    uid = bytes(range(128))
    child = shrink_id(uid, [3, 1])
    assert child == shrink_id(bytes(uid), [3, 1]) and len(child) == 128
    others = {shrink_id(uid, [1, 3]), shrink_id(uid, [3]), shrink_id(uid, []),
              shrink_id(uid, [3, 1, 0]), split_id(uid, 3), uid}
    assert child not in others and len(others) == 6
    # past the 16 ranks read, only the count tells lists apart
    assert shrink_id(uid, [*range(16), 20]) == shrink_id(uid, [*range(16), 21])
    assert shrink_id(uid, [*range(16), 20]) != shrink_id(uid, list(range(16)))
