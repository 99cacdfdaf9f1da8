"""Where the NCCL entry uprobes go (agent/nccl/prologue.py): the instruction
classifier on byte strings, the endbr64 skip, ELF offset -> address."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agent.nccl.prologue import (
    ENDBR64,
    Site,
    classify,
    offset_to_vaddr,
    probe_skip,
    slow_summary,
)


@pytest.mark.parametrize(("code", "kind"), [
    (b"\x55\x48\x89\xe5", "push"),            # push %rbp; mov %rsp,%rbp
    (b"\x53", "push"),                         # push %rbx
    (b"\x57", "push"),                         # push %rdi
    (b"\x41\x57\x41\x56", "push"),            # push %r15
    (b"\x41\x54", "push"),                    # push %r12
    (b"\x90", "nop"),
    (b"\x66\x90", "nop"),                     # xchg %ax,%ax
    (b"\x0f\x1f\x44\x00\x00", "nop5"),        # nopl 0x0(%rax,%rax,1)
    (b"\xe8\x00\x00\x00\x00", "branch"),      # call rel32
    (b"\xe9\x10\x00\x00\x00", "branch"),      # jmp rel32
    (b"\xeb\x05", "branch"),                  # jmp rel8
    (b"\x74\x05", "branch"),                  # je rel8
    (b"\x0f\x84\x00\x01\x00\x00", "branch"),  # je rel32
    (b"\xb8\x04\x00\x00\x00", "other"),       # mov $4,%eax: single-stepped (5 us)
    (ENDBR64 + b"\x55", "other"),             # endbr64 itself: single-stepped (6.4 us)
    (b"\x48\x83\xec\x08", "other"),           # sub $8,%rsp
    (b"\x48\xb8\xef\xbe\xfe\xca", "other"),   # movabs (ncclCommInitRankConfig in 2.32)
    (b"\x48\x50", "other"),                   # REX.W push: not what the kernel emulates
    (b"\x42\x50", "other"),                   # REX.X push: neither
    (b"\x0f\x1f\x40\x00", "other"),           # nop4: not claimed fast
    (b"\x66\xe8\x00\x00", "other"),           # 0x66-prefixed call: refused by the kernel
    (b"\xff\x25\x00\x00\x00\x00", "other"),   # jmp *rel(%rip): indirect
    (b"", "other"),
    (b"\x41", "other"),                       # cut short
])
def test_classify(code: bytes, kind: str) -> None:
    assert classify(code) == kind


@pytest.mark.parametrize(("code", "skip"), [
    (ENDBR64 + b"\x55", 4),
    (ENDBR64, 4),
    (b"\x55" + ENDBR64, 0),       # endbr64 elsewhere than first: nothing skipped
    (b"\xf3\x0f\x1e\xfb", 0),     # endbr32: not on x86-64 code, never skipped
    (b"\xb8\x04\x00\x00\x00", 0),  # nothing else is ever skipped
    (b"", 0),
])
def test_only_a_leading_endbr64_is_skipped(code: bytes, skip: int) -> None:
    assert probe_skip(code) == skip


def _elf(path: Path, loads: list[tuple[int, int, int]]) -> None:
    """A minimal ELF64 LE header + program headers: PT_LOAD (offset, vaddr, filesz)."""
    phoff, phentsize = 64, 56
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", head, 0x20, phoff)
    struct.pack_into("<HH", head, 0x36, phentsize, len(loads) + 1)
    table = struct.pack("<IIQQQQQQ", 6, 4, 64, 64, 64, 0, 0, 8)  # a PT_PHDR first
    for off, vaddr, size in loads:
        table += struct.pack("<IIQQQQQQ", 1, 5, off, vaddr, vaddr, size, size, 0x1000)
    path.write_bytes(bytes(head) + table)


def test_offset_to_vaddr_goes_through_the_load_segment(tmp_path: Path) -> None:
    lib = tmp_path / "lib.so"
    _elf(lib, [(0, 0x400000, 0x1000), (0x1000, 0x401000, 0x200)])
    assert offset_to_vaddr(str(lib), 0x1100) == 0x401100
    assert offset_to_vaddr(str(lib), 0x10) == 0x400010
    with pytest.raises(ValueError, match="no loadable segment"):
        offset_to_vaddr(str(lib), 0x5000)


def test_offset_to_vaddr_refuses_a_non_elf_file(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"#!/bin/sh\n" + bytes(64))
    with pytest.raises(ValueError, match="not a little-endian ELF64"):
        offset_to_vaddr(str(f), 0)


def _site(sym: str, head: bytes, skip: int = 0) -> Site:
    return Site(sym, 0x1000, 0x1000, skip, head, classify(head))


def test_slow_summary_names_the_single_stepped_functions() -> None:
    sites = [_site("ncclAllReduce", b"\x55\x48"), _site("ncclSend", b"\xb8\x04\x00\x00\x00"),
             _site("ncclRecv", b"\x41\x57", skip=4)]
    assert [s.fast for s in sites] == [True, False, True]
    assert slow_summary(sites) == (
        "1 of 3 entry uprobes single-stepped (slow path): ncclSend (b8 04 00 00)")
    assert slow_summary(sites[:1]) == ""
