"""agent/btf.py: member offsets from BTF, through the real libbpf.so.1.

Two sources: a small raw BTF file written here (every shape the lookup
handles, independent of the kernel), and the running kernel's own BTF, whose
answer the compat sensor relies on (and proves again at start, see
tests/integration/test_compat.py).
"""

from __future__ import annotations

import ctypes as ct
import platform
import struct
from pathlib import Path

import pytest

from agent import btf
from agent.btf import MemberOffset, offset_of
from tests.capabilities import require

VMLINUX = Path("/sys/kernel/btf/vmlinux")


def _libbpf_loads() -> bool:
    try:
        ct.CDLL(btf.LIBBPF)
    except OSError:
        return False
    return True


@pytest.fixture(autouse=True)
def _libbpf() -> None:
    require(_libbpf_loads(), f"{btf.LIBBPF} is not installed (Debian: libbpf1, needed by bcc)")


class RawBtf:
    """Writes a raw BTF blob (include/uapi/linux/btf.h), type ids from 1."""

    def __init__(self) -> None:
        self.types: list[bytes] = []
        self.strings = bytearray(b"\0")

    def name(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def _add(self, name: str, kind: int, vlen: int, size_type: int, tail: bytes = b"",
             kflag: int = 0) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types.append(struct.pack("<III", self.name(name), info, size_type) + tail)
        return len(self.types)

    def int_(self, name: str, size: int, bits: int | None = None) -> int:
        return self._add(name, btf.KIND_INT, 0, size, struct.pack("<I", bits or size * 8))

    def typedef(self, name: str, of: int) -> int:
        return self._add(name, btf.KIND_TYPEDEF, 0, of)

    def const(self, of: int) -> int:
        return self._add("", btf.KIND_CONST, 0, of)

    def ptr(self, of: int) -> int:
        return self._add("", btf.KIND_PTR, 0, of)

    def array(self, of: int, index: int, n: int) -> int:
        return self._add("", btf.KIND_ARRAY, 0, 0, struct.pack("<III", of, index, n))

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]],
               kind: int = btf.KIND_STRUCT, kflag: int = 0) -> int:
        tail = b"".join(struct.pack("<III", self.name(n), t, off) for n, t, off in members)
        return self._add(name, kind, len(members), size, tail, kflag)

    def write(self, path: Path) -> str:
        types = b"".join(self.types)
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                             len(self.strings))
        path.write_bytes(header + types + bytes(self.strings))
        return str(path)


@pytest.fixture(scope="module")
def fixture_btf(tmp_path_factory: pytest.TempPathFactory) -> str:
    """struct inner {u32 a; u32 status;};
    struct outer {
        long x;                               // byte 0
        struct inner in;                      // byte 8
        union { u32 anon_a; const u32 anon_b; };  // byte 16 (anonymous)
        u32 flag:1;                           // bit 160 (kflag bitfield)
        u32 odd;                              // bit 164: not byte-aligned
        char name[16];                        // byte 24
        struct inner *p;                      // byte 40
        int3 old;                             // byte 48: pre-kflag bitfield (INT of 3 bits)
    };"""
    b = RawBtf()
    uint = b.int_("unsigned int", 4)
    u32 = b.typedef("u32", uint)
    long_ = b.int_("long", 8)
    char = b.int_("char", 1)
    int3 = b.int_("int", 4, bits=3)
    inner = b.struct("inner", 8, [("a", u32, 0), ("status", u32, 32)])
    anon = b.struct("", 4, [("anon_a", u32, 0), ("anon_b", b.const(u32), 0)],
                    kind=btf.KIND_UNION)
    b.struct("outer", 56, [
        ("x", long_, 0), ("in", inner, 64), ("", anon, 128), ("flag", u32, (1 << 24) | 160),
        ("odd", u32, 164), ("name", b.array(char, uint, 16), 192), ("p", b.ptr(inner), 320),
        ("old", int3, 384)], kflag=1)
    return b.write(tmp_path_factory.mktemp("btf") / "fixture.btf")


@pytest.mark.parametrize(("path", "found"), [
    (("x",), MemberOffset(0, 8)),
    (("in",), MemberOffset(8, 8)),
    (("in", "status"), MemberOffset(12, 4)),  # through the member's type, typedef resolved
    (("anon_a",), MemberOffset(16, 4)),  # a member of an anonymous union
    (("anon_b",), MemberOffset(16, 4)),  # const u32: through the qualifier
    (("name",), MemberOffset(24, 16)),
    (("p",), MemberOffset(40, 8)),
])
def test_offsets_in_a_known_layout(fixture_btf: str, path: tuple[str, ...],
                                   found: MemberOffset) -> None:
    assert offset_of("outer", *path, btf_file=fixture_btf) == found


@pytest.mark.parametrize(("path", "reason"), [
    (("nope",), "struct outer has no member nope"),
    (("in", "nope"), "struct outer.in has no member nope"),
    (("flag",), "struct outer.flag is a bitfield"),
    (("old",), "struct outer.old is a bitfield"),
    (("odd",), "struct outer.odd is not byte-aligned (bit 164)"),
    (("x", "y"), "struct outer.x is not a struct or union: no member y"),
    (("p", "a"), "struct outer.p is not a struct or union: no member a"),  # no deref
])
def test_what_cannot_be_answered_says_why(fixture_btf: str, path: tuple[str, ...],
                                          reason: str) -> None:
    assert offset_of("outer", *path, btf_file=fixture_btf) == MemberOffset(None, None, reason)


def test_absent_struct(fixture_btf: str) -> None:
    where = offset_of("no_such_struct", "x", btf_file=fixture_btf)
    assert where == MemberOffset(None, None, "struct no_such_struct not in the BTF")


def test_unreadable_btf_file(tmp_path: Path) -> None:
    where = offset_of("task_struct", "pid", btf_file=str(tmp_path / "absent"))
    assert where.offset is None and where.reason.startswith(f"cannot load BTF file {tmp_path}")


def test_missing_libbpf_is_a_reason_not_an_error() -> None:
    where = offset_of("task_struct", "pid", libbpf="libbpf-absent.so.9")
    assert where.offset is None
    assert where.reason.startswith("libbpf-absent.so.9 not loadable") and "libbpf1" in where.reason


def test_a_member_path_is_required() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        offset_of("task_struct")


# -- the running kernel --------------------------------------------------------
def _need_vmlinux() -> None:
    require(VMLINUX.exists(), "the kernel has no BTF (/sys/kernel/btf/vmlinux, "
                              "CONFIG_DEBUG_INFO_BTF)")


def test_thread_info_status_in_the_running_kernel() -> None:
    _need_vmlinux()
    where = offset_of("task_struct", "thread_info", "status")
    assert where.offset is not None and where.size == 4, where.reason
    if platform.machine() == "x86_64":
        # x86-64 since 5.11: thread_info {unsigned long flags, syscall_work; u32 status; ...}
        # embedded first in task_struct (THREAD_INFO_IN_TASK)
        assert where == MemberOffset(16, 4)
        assert offset_of("task_struct", "thread_info") == MemberOffset(0, 24)


def test_absent_member_of_the_running_kernel() -> None:
    _need_vmlinux()
    where = offset_of("task_struct", "thread_info", "no_such_member")
    assert where == MemberOffset(None, None,
                                 "struct task_struct.thread_info has no member no_such_member")


def test_kernel_members_inside_anonymous_unions_are_found() -> None:
    _need_vmlinux()
    # sk_buff: next/prev/dev sit in an anonymous union of anonymous structs
    assert offset_of("sk_buff", "next") == MemberOffset(0, 8)
    assert offset_of("sk_buff", "cloned").reason == "struct sk_buff.cloned is a bitfield"
