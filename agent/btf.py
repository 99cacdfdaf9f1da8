"""Member offsets of kernel structs, from the RUNNING kernel's BTF.

The eBPF sensors never take struct layouts from the headers bcc compiles
against: those are a distribution's headers, possibly of another kernel
version, so their offsets can be wrong here. The kernel's own BTF
(/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF) describes the layout of the
kernel that runs, so an offset read from it is the true one. This module
reads it through libbpf.so.1 (Debian package libbpf1, which libbpfcc, and so
bcc, depends on) with ctypes; nothing is compiled.

    offset_of("task_struct", "thread_info", "status")
    -> MemberOffset(offset=16, size=4, reason="")

Only whole, byte-aligned members are answered: a bitfield, an absent member,
a missing BTF or libbpf gives ``offset=None`` and the reason.
"""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass

LIBBPF = "libbpf.so.1"

# include/uapi/linux/btf.h
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)
_SIZED = (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64)
_POINTER_SIZE = ct.sizeof(ct.c_void_p)


class _BtfType(ct.Structure):
    """struct btf_type; ``size_type`` is its size (sized kinds) or a type id."""

    _fields_ = (("name_off", ct.c_uint32), ("info", ct.c_uint32), ("size_type", ct.c_uint32))


class _BtfMember(ct.Structure):
    """struct btf_member; ``offset`` in bits (with kflag: low 24 bits, bitfield size above)."""

    _fields_ = (("name_off", ct.c_uint32), ("type", ct.c_uint32), ("offset", ct.c_uint32))


@dataclass(frozen=True)
class MemberOffset:
    """Where a member is: byte offset from the struct's start and its size, or why not."""

    offset: int | None  # bytes; None when not found (see reason)
    size: int | None = None  # bytes, when the member's type has a size (None: unknown)
    reason: str = ""  # why offset is None; "" when found


class BtfError(Exception):
    """The lookup cannot be answered (message: why); turned into MemberOffset.reason."""


class _NoMember(BtfError):
    """The struct or union has no member of that name."""


def offset_of(struct: str, *path: str, btf_file: str | None = None,
              libbpf: str = LIBBPF) -> MemberOffset:
    """Byte offset of ``struct.path[0].path[1]...``, each step into the member's type.

    ``btf_file`` None reads the running kernel's BTF; a path reads that file
    (raw BTF or an ELF with .BTF) instead. Members of anonymous structs and
    unions are found as the C compiler finds them.
    """
    if not path:
        raise ValueError("offset_of needs at least one member name")
    try:
        with _Btf(libbpf, btf_file) as btf:
            return btf.member(struct, path)
    except BtfError as err:
        return MemberOffset(None, None, str(err))


class _Btf:
    """One loaded BTF (libbpf's struct btf *), freed on exit."""

    def __init__(self, libbpf: str, btf_file: str | None) -> None:
        self.lib = _load_libbpf(libbpf)
        self.btf_file = btf_file
        self.ptr: int | None = None

    def __enter__(self) -> _Btf:
        if self.btf_file is None:
            self.ptr = self.lib.btf__load_vmlinux_btf()
            where = "the kernel's BTF (/sys/kernel/btf/vmlinux)"
        else:
            self.ptr = self.lib.btf__parse(self.btf_file.encode(), None)
            where = f"BTF file {self.btf_file}"
        if not self.ptr:
            raise BtfError(f"cannot load {where}: errno {ct.get_errno()}")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.ptr:
            self.lib.btf__free(self.ptr)

    def member(self, struct: str, path: tuple[str, ...]) -> MemberOffset:
        """Follow ``path`` from ``struct``; bits are summed, bytes returned."""
        type_id = self.lib.btf__find_by_name_kind(self.ptr, struct.encode(), KIND_STRUCT)
        if type_id < 0:
            raise BtfError(f"struct {struct} not in the BTF")
        bits = 0
        where = f"struct {struct}"
        for name in path:
            found = self._find(type_id, name, where)
            bits += found[0]
            type_id = found[1]
            where = f"{where}.{name}"
        if bits % 8:
            raise BtfError(f"{where} is not byte-aligned (bit {bits})")
        size = self._size(type_id)
        if self._is_bitfield_int(type_id, size):
            raise BtfError(f"{where} is a bitfield")
        return MemberOffset(bits // 8, size)

    def _find(self, type_id: int, name: str, where: str) -> tuple[int, int]:
        """(bit offset, type id) of member ``name`` of the struct/union ``type_id``."""
        t = self._type(self._resolve(type_id))
        kind = (t.info >> 24) & 0x1F
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BtfError(f"{where} is not a struct or union: no member {name}")
        for bit, bitfield_size, member_name, member_type in self._members(t):
            if member_name == name:
                if bitfield_size:
                    raise BtfError(f"{where}.{name} is a bitfield")
                return bit, member_type
            if member_name == "":  # anonymous struct/union: its members are ours
                try:
                    inner_bit, inner_type = self._find(member_type, name, where)
                except _NoMember:
                    continue
                return bit + inner_bit, inner_type
        raise _NoMember(f"{where} has no member {name}")

    def _members(self, t: _BtfType) -> list[tuple[int, int, str, int]]:
        """(bit offset, bitfield bits or 0, name, type id) of each member of ``t``."""
        vlen = t.info & 0xFFFF
        kflag = t.info >> 31
        members = ct.cast(ct.addressof(t) + ct.sizeof(_BtfType), ct.POINTER(_BtfMember))
        out = []
        for i in range(vlen):
            m = members[i]
            bit, bitfield = (m.offset & 0xFFFFFF, m.offset >> 24) if kflag else (m.offset, 0)
            out.append((bit, bitfield, self._name(m.name_off), m.type))
        return out

    def _resolve(self, type_id: int) -> int:
        """Through typedefs and qualifiers to the type that has the layout."""
        for _ in range(32):  # a chain longer than this is a corrupt BTF
            t = self._type(type_id)
            if (t.info >> 24) & 0x1F not in _MODIFIERS:
                return type_id
            type_id = t.size_type
        raise BtfError(f"type {type_id}: qualifier chain too long")

    def _size(self, type_id: int) -> int | None:
        t = self._type(self._resolve(type_id))
        kind = (t.info >> 24) & 0x1F
        if kind in _SIZED:
            return int(t.size_type)
        if kind == KIND_ARRAY:  # struct btf_array {u32 type; u32 index_type; u32 nelems}
            elem, _index, nelems = (ct.c_uint32 * 3).from_address(
                ct.addressof(t) + ct.sizeof(_BtfType))
            elem_size = self._size(elem)
            return None if elem_size is None else elem_size * nelems
        return _POINTER_SIZE if kind == KIND_PTR else None

    def _is_bitfield_int(self, type_id: int, size: int | None) -> bool:
        """An INT whose encoding has fewer bits than its size (old-style bitfield)."""
        t = self._type(self._resolve(type_id))
        if (t.info >> 24) & 0x1F != KIND_INT or size is None:
            return False
        encoding = ct.c_uint32.from_address(ct.addressof(t) + ct.sizeof(_BtfType)).value
        return encoding & 0xFF != size * 8 or (encoding >> 16) & 0xFF != 0

    def _type(self, type_id: int) -> _BtfType:
        ptr = self.lib.btf__type_by_id(self.ptr, type_id)
        if not ptr:
            raise BtfError(f"BTF type id {type_id} does not exist")
        return _BtfType.from_address(ptr)

    def _name(self, name_off: int) -> str:
        raw = self.lib.btf__name_by_offset(self.ptr, name_off)
        return raw.decode() if raw else ""


def _load_libbpf(name: str) -> ct.CDLL:
    """libbpf with the prototypes used here declared (pointers are not ints to ctypes)."""
    try:
        lib = ct.CDLL(name, use_errno=True)
    except OSError as err:
        raise BtfError(f"{name} not loadable ({err}): install libbpf1") from err
    try:
        lib.btf__load_vmlinux_btf.restype = ct.c_void_p
        lib.btf__load_vmlinux_btf.argtypes = ()
        lib.btf__parse.restype = ct.c_void_p
        lib.btf__parse.argtypes = (ct.c_char_p, ct.c_void_p)
        lib.btf__free.restype = None
        lib.btf__free.argtypes = (ct.c_void_p,)
        lib.btf__find_by_name_kind.restype = ct.c_int32
        lib.btf__find_by_name_kind.argtypes = (ct.c_void_p, ct.c_char_p, ct.c_uint32)
        lib.btf__type_by_id.restype = ct.c_void_p
        lib.btf__type_by_id.argtypes = (ct.c_void_p, ct.c_uint32)
        lib.btf__name_by_offset.restype = ct.c_char_p
        lib.btf__name_by_offset.argtypes = (ct.c_void_p, ct.c_uint32)
    except AttributeError as err:  # a libbpf older than 0.6 has no btf__load_vmlinux_btf
        raise BtfError(f"{name} lacks a BTF function: {err}") from err
    return lib
