"""Where an entry uprobe goes in a function, and whether it is on the fast path.

A uprobe replaces the first byte of an instruction with int3. When it has
run its handler, the kernel must execute the instruction it displaced. x86
kernels EMULATE a few instructions (arch/x86/kernel/uprobes.c: push of a
register, nop, call/jmp/jcc with a relative target; on 6.18 a 5-byte nop
is even turned into a call into a trampoline) and SINGLE-STEP every other
one out of line, which takes a second trap. Measured on kernel 6.18 with
an empty BPF program: ~0.3-0.55 us for an emulated instruction, ~5-6 us for
a single-stepped one (``mov $imm,%eax``: 5.0 us, ``endbr64``: 6.4 us).

Distributions build with -fcf-protection (Ubuntu, Fedora), so most exported
functions start with ``endbr64`` (f3 0f 1e fa): a hint that changes no
register, flag, memory or the stack pointer. Probing 4 bytes further, at
the instruction after it, therefore sees exactly the same arguments
(registers and [sp+8...]) as probing the entry, and is usually a
``push %rbp`` (emulated) instead of a single-stepped endbr64. Nothing else
is ever skipped: general instructions are not decoded here, and skipping
one would change what the probe reads. An indirect call or jump still lands
on the endbr64 itself, which runs before the probe: nothing is bypassed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ENDBR64 = b"\xf3\x0f\x1e\xfa"
NOP5 = b"\x0f\x1f\x44\x00\x00"
SITE_BYTES = 16  # read at the symbol: endbr64 + the longest x86 instruction is more than enough

FAST_KINDS = frozenset({"push", "nop", "nop5", "branch"})


def classify(code: bytes) -> str:
    """What the kernel does with the instruction starting at ``code[0]``:
    "push", "nop", "nop5" or "branch" (emulated: fast) or "other"
    (single-stepped out of line: slow, or an instruction we do not know).

    Mirrors arch/x86/kernel/uprobes.c (6.x): push_setup_xol_ops takes
    50+r and REX.B 41 50+r only; branch_setup_xol_ops takes e8, e9, eb,
    70-7f, 0f 80-8f without prefixes, and 90 after any prefixes. Other
    multi-byte nops are "other": conservative, never claimed fast.
    """
    if not code:
        return "other"
    b0 = code[0]
    if 0x50 <= b0 <= 0x57:
        return "push"
    if b0 == 0x41 and len(code) > 1 and 0x50 <= code[1] <= 0x57:
        return "push"
    if code.startswith(NOP5):
        return "nop5"
    i = 0
    while i < len(code) and code[i] == 0x66:  # operand-size prefixes before a nop: 66 90
        i += 1
    if i < len(code) and code[i] == 0x90:
        return "nop"
    if b0 in (0xE8, 0xE9, 0xEB) or 0x70 <= b0 <= 0x7F:
        return "branch"
    if b0 == 0x0F and len(code) > 1 and 0x80 <= code[1] <= 0x8F:
        return "branch"
    return "other"


def probe_skip(code: bytes) -> int:
    """Bytes to skip at a function's start: 4 past an endbr64, else 0."""
    return len(ENDBR64) if code.startswith(ENDBR64) else 0


@dataclass(frozen=True)
class Site:
    """Where the entry probe of one function goes."""

    symbol: str
    offset: int  # file offset of the symbol (its first byte)
    vaddr: int  # its address in the ELF file (what bcc's attach addr= takes)
    skip: int  # 0, or 4 past an endbr64
    head: bytes  # bytes from the probe site on
    kind: str  # classify(head)

    @property
    def fast(self) -> bool:
        """Whether the kernel emulates the probed instruction (no single-step)."""
        return self.kind in FAST_KINDS


def offset_to_vaddr(path: str, offset: int) -> int:
    """The ELF virtual address of file offset ``offset`` (through the PT_LOAD
    segment holding it); ValueError if none does or the file is no ELF64 LE."""
    with open(path, "rb") as f:
        eh = f.read(64)
        if eh[:4] != b"\x7fELF" or eh[4] != 2 or eh[5] != 1:
            raise ValueError(f"{path}: not a little-endian ELF64 file")
        phoff, = struct.unpack_from("<Q", eh, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", eh, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", table, i * phentsize)
        if p_type == 1 and p_offset <= offset < p_offset + p_filesz:  # PT_LOAD
            return offset - p_offset + p_vaddr
    raise ValueError(f"{path}: offset {offset:#x} is in no loadable segment")


def read_site(path: str, symbol: str) -> Site:
    """The probe site of ``symbol`` in the ELF file ``path`` (raises if the
    symbol is absent, as bcc's attach would).

    bcc's symbol resolution (bcc_resolve_symname, what attach_uprobe uses)
    returns the FILE offset of the symbol: the bytes are read from there.
    """
    from bcc import BPF

    _, offset = BPF._check_path_symbol(path.encode(), symbol.encode(), 0, -1)
    with open(path, "rb") as f:
        f.seek(offset)
        code = f.read(SITE_BYTES)
    skip = probe_skip(code)
    return Site(symbol, offset, offset_to_vaddr(path, offset), skip, code[skip:],
                classify(code[skip:]))


def slow_summary(sites: list[Site]) -> str:
    """"2 of 19 entry uprobes single-stepped (slow): ncclX (mov), ..." or ""."""
    slow = [s for s in sites if not s.fast]
    if not slow:
        return ""
    names = ", ".join(f"{s.symbol} ({s.head[:4].hex(' ')})" for s in slow)
    return f"{len(slow)} of {len(sites)} entry uprobes single-stepped (slow path): {names}"
