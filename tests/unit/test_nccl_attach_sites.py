"""Where Attacher._attach_all puts each probe (no kernel: a recording stand-in
for bcc, and probe sites given by hand)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.nccl import attach
from agent.nccl.prologue import Site, classify


class RecordingBpf:
    """attach_uprobe/attach_uretprobe as bcc's, recording their arguments."""

    def __init__(self) -> None:
        self.uprobe_fds: dict[bytes, int] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def attach_uprobe(self, **kw: Any) -> None:
        self.calls.append(("entry", kw))
        self.uprobe_fds[b"p%d" % len(self.calls)] = 1

    def attach_uretprobe(self, **kw: Any) -> None:
        self.calls.append(("return", kw))
        self.uprobe_fds[b"r%d" % len(self.calls)] = 1


def _sites(aliases: dict[str, str]) -> dict[str, Site]:
    """A site per probed symbol: endbr64 + push; ``aliases`` share an address."""
    syms = sorted({s for s, _, _ in attach.PROBES})
    out = {s: Site(s, 0x1000 + 0x40 * i, 0x401000 + 0x40 * i, 4, b"\x55", classify(b"\x55"))
           for i, s in enumerate(syms)}
    for alias, of in aliases.items():
        out[alias] = Site(alias, out[of].offset, out[of].vaddr, 4, b"\x55", "push")
    return out


def _attach(monkeypatch: pytest.MonkeyPatch, sites: dict[str, Site]) -> RecordingBpf:
    monkeypatch.setattr(attach, "read_site", lambda _path, sym: sites[sym])
    bpf = RecordingBpf()
    probes, placed = attach.Attacher(bpf, lambda pid: None)._attach_all("/lib/libnccl.so.2")
    assert probes == len(bpf.calls) and all(s.skip == 4 for s in placed)
    return bpf


def test_entry_and_return_probes_go_past_the_endbr64(monkeypatch: pytest.MonkeyPatch) -> None:
    sites = _sites({})
    bpf = _attach(monkeypatch, sites)
    assert len(bpf.calls) == len(attach.PROBES)
    for kind, kw in bpf.calls:
        if kind == "entry":
            assert kw["sym_off"] == 4 and sites[kw["sym"].decode()].skip == 4
        else:  # bcc's attach_uretprobe has no sym_off: the ELF address + 4
            assert kw["addr"] in {s.vaddr + 4 for s in sites.values()}
    rets = {kw["addr"] for kind, kw in bpf.calls if kind == "return"}
    assert rets == {sites[s].vaddr + 4 for s, _, ret in attach.PROBES if ret}


def test_a_folded_alias_is_probed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two entry points at one address (a build folding identical bodies):
    one probe, or every call would count twice."""
    bpf = _attach(monkeypatch, _sites({"ncclScatter": "ncclGather"}))
    entries = [kw["fn_name"] for kind, kw in bpf.calls if kind == "entry"]
    assert b"nccl_up_gather" in entries and entries.count(b"nccl_up_scatter") == 1  # Config
    assert len(bpf.calls) == len(attach.PROBES) - 1
