"""``gpuaudit verify``: recompute chains, signatures and hashes; name every discrepancy.

For each node, in order:

1. **Chain**: recompute the chain over the node's manifests in store order;
   the first stored chain value that differs marks where a manifest was
   inserted, removed or edited (``chain_broken``).
2. **Checkpoints**: every checkpoint (in the database and, with
   ``--checkpoints DIR``, the copies kept elsewhere) must be signed by a
   trusted collector key and match the recomputed chain at the manifest it
   names (``checkpoint_mismatch``); a copy missing from the database is
   ``checkpoint_missing``.
3. **Signatures**: a node's manifest must verify with the certificate it names,
   and that certificate must come from the CA (``--ca``) and name the node
   (``bad_signature``, ``untrusted_signer``); the collector's own events are
   signed by the collector's key. Unsigned manifests (agents run with
   ``--insecure``) are counted, not failed: the chain still covers them.
4. **Events**: each stored event is matched with the manifest leaves of its
   (boot_id, seq): a different hash is ``modified``; no manifest at all is
   ``inserted``; a manifest entry with no stored event is ``deleted``.
5. **Missing**: seq ranges of an agent run that no manifest and no stored event
   hold were never received (agent losses; they also appear as agent.gap
   events). Reported, not failed: losing is not tampering.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from collector.integrity.chain import chain_seed, next_chain
from collector.integrity.checkpoint import Checkpoint, Head
from collector.integrity.keys import public_key
from collector.integrity.readers import StoredManifest, StoreReader
from collector.storage.own import BOOT_ID_PREFIX
from gpuaudit import integrity

TAMPERING = ("modified", "deleted", "inserted", "chain_broken", "bad_signature",
             "untrusted_signer", "checkpoint_mismatch", "checkpoint_bad_signature",
             "checkpoint_missing")
"""Problem kinds that mean the store was changed after the fact."""


@dataclass(frozen=True)
class Problem:
    kind: str
    node: str
    boot_id: str = ""
    first_seq: int = 0
    last_seq: int = 0
    detail: str = ""

    def line(self) -> str:
        where = f" {self.boot_id}" if self.boot_id else ""
        if self.first_seq:
            span = (f" seq {self.first_seq}" if self.first_seq == self.last_seq
                    else f" seq {self.first_seq}-{self.last_seq}")
            where += span
        return f"{self.kind}: node {self.node}{where}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Trust:
    """What the verifier trusts beyond the database itself."""

    ca_certs: list[x509.Certificate] = field(default_factory=list)  # empty: not anchored
    collector_keys: set[bytes] = field(default_factory=set)  # raw Ed25519; empty: any
    checkpoint_copies: list[Checkpoint] = field(default_factory=list)


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    events_checked: int = 0
    manifests_checked: int = 0
    unsigned_events: int = 0
    checkpoints_checked: int = 0
    anchored: bool = False  # node signatures checked against a CA

    @property
    def ok(self) -> bool:
        return not any(p.kind in TAMPERING for p in self.problems)

    def summary(self) -> str:
        bad = sum(p.kind in TAMPERING for p in self.problems)
        missing = sum(p.last_seq - p.first_seq + 1 for p in self.problems if p.kind == "missing")
        return (f"{'intact' if self.ok else 'TAMPERED'}: {self.events_checked} events, "
                f"{self.manifests_checked} manifests, {self.checkpoints_checked} checkpoints "
                f"checked; {bad} tampering problems; {missing} events never received; "
                f"{self.unsigned_events} events from unsigned batches"
                + ("" if self.anchored else "; node signatures NOT anchored to a CA (--ca)"))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "summary": self.summary(), "events_checked": self.events_checked,
                "manifests_checked": self.manifests_checked,
                "checkpoints_checked": self.checkpoints_checked,
                "unsigned_events": self.unsigned_events, "anchored": self.anchored,
                "problems": [asdict(p) for p in self.problems]}


def verify(reader: StoreReader, trust: Trust, since_ns: int = 0) -> Report:
    report = Report(anchored=bool(trust.ca_certs))
    signers = reader.signers()
    stored_cps = reader.checkpoints()
    trusted = _trusted_keys(trust)
    # an unvouched base is reported once; the chain after it is still checked from it
    bases = reader.chain_bases()
    _check_bases(bases, [*stored_cps, *trust.checkpoint_copies], trusted, report)
    chains: dict[str, dict[int, bytes]] = {}
    for node in reader.nodes():
        manifests = reader.manifests(node)
        chains[node] = _check_chain(node, manifests, bases.get(node), report)
        valid = [m for m in manifests if _check_signature(m, signers, trust, report)]
        report.manifests_checked += len(manifests)
        _check_events(node, valid, reader, since_ns, node in bases, report)
    _check_checkpoints(stored_cps, trust, trusted, chains, bases, report)
    return report


def _trusted_keys(trust: Trust) -> set[bytes] | None:
    """Collector keys to trust: given, else those of the copies kept elsewhere, else any."""
    return trust.collector_keys or {c.signed_by() for c in trust.checkpoint_copies} or None


def _check_bases(bases: dict[str, Head], checkpoints: Sequence[Checkpoint],
                 trusted: set[bytes] | None, report: Report) -> None:
    """Every chain base retention left must be vouched for by a valid checkpoint."""
    vouched: set[tuple[str, int, bytes]] = set()
    for cp in checkpoints:
        if cp.valid(trusted):
            vouched |= {(n, h.manifest_id, h.chain) for n, h in cp.bases().items()}
    for node, head in sorted(bases.items()):
        if (node, head.manifest_id, head.chain) not in vouched:
            report.problems.append(Problem("chain_broken", node, detail=(
                f"chain base (manifest id {head.manifest_id}) is vouched for by no "
                "checkpoint: history before it was removed outside retention")))


# -- 1. chain -------------------------------------------------------------------


def _check_chain(node: str, manifests: Sequence[StoredManifest], base: Head | None,
                 report: Report) -> dict[int, bytes]:
    """Recomputed chain value after each manifest id; reports the first break."""
    value = base.chain if base is not None else chain_seed(node)
    out: dict[int, bytes] = {}
    broken = False
    for m in manifests:
        value = next_chain(value, m.manifest)
        out[m.id] = value
        if not broken and value != m.chain:
            broken = True
            report.problems.append(Problem(
                "chain_broken", node, m.manifest.boot_id, m.manifest.first_seq,
                m.manifest.last_seq, f"manifest id {m.id}: a manifest at or before it was "
                "inserted, removed or edited"))
    return out


# -- 2. checkpoints -------------------------------------------------------------


def _check_checkpoints(stored: list[Checkpoint], trust: Trust, trusted: set[bytes] | None,
                       chains: dict[str, dict[int, bytes]], bases: dict[str, Head],
                       report: Report) -> None:
    in_db = {c.body for c in stored}
    for cp in trust.checkpoint_copies:
        if cp.body not in in_db:
            report.problems.append(Problem("checkpoint_missing", "-", detail=(
                f"checkpoint of time_ns {cp.time_ns} is in the copies, not in the database")))
    seen: set[bytes] = set()
    for cp in [*stored, *trust.checkpoint_copies]:
        if cp.body in seen:
            continue
        seen.add(cp.body)
        report.checkpoints_checked += 1
        if not cp.valid(trusted):
            report.problems.append(Problem("checkpoint_bad_signature", "-", detail=(
                f"checkpoint of time_ns {cp.time_ns}: signature invalid or key not trusted")))
            continue
        for node, head in cp.heads().items():
            base = bases.get(node)
            if base is not None and head.manifest_id <= base.manifest_id:
                continue  # vouched for history that retention has since removed
            recomputed = chains.get(node, {}).get(head.manifest_id)
            if recomputed != head.chain:
                report.problems.append(Problem("checkpoint_mismatch", node, detail=(
                    f"checkpoint of time_ns {cp.time_ns} vouches for manifest id "
                    f"{head.manifest_id} with another chain value: manifests up to it changed"
                    if recomputed else
                    f"checkpoint of time_ns {cp.time_ns} names manifest id {head.manifest_id}, "
                    "which is gone")))


# -- 3. signatures ----------------------------------------------------------------


def _check_signature(m: StoredManifest, signers: dict[bytes, tuple[str, bytes]], trust: Trust,
                     report: Report) -> bool:
    """Whether the manifest can be used to judge events (signed validly, or unsigned)."""
    man = m.manifest
    if not man.signature:
        return True  # unsigned: the chain covers it; its events are counted as unsigned
    kind, data = signers.get(man.signer, ("", b""))
    signed = integrity.manifest_bytes(man.node, man.boot_id, man.leaves)
    problem = ""
    if kind == "node_cert":
        cert = x509.load_der_x509_certificate(data)
        if not integrity.signature_valid(cert.public_key(), man.signature, signed):
            problem = "bad_signature"
        elif trust.ca_certs and not _cert_trusted(cert, man.node, trust.ca_certs):
            problem = "untrusted_signer"
    elif kind == "collector":
        if not integrity.signature_valid(public_key(data), man.signature, signed):
            problem = "bad_signature"
        elif trust.collector_keys and data not in trust.collector_keys:
            problem = "untrusted_signer"
    else:
        problem = "untrusted_signer"
    if problem:
        report.problems.append(Problem(problem, man.node, man.boot_id, man.first_seq,
                                       man.last_seq, f"manifest id {m.id}"))
        return False
    return True


def _cert_trusted(cert: x509.Certificate, node: str, cas: list[x509.Certificate]) -> bool:
    issued = any(_issued_by(cert, ca) for ca in cas)
    names = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names |= set(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    return issued and node in names


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # ValueError/TypeError (other issuer or key type), InvalidSignature
        return False
    return True


# -- 4 and 5. events ----------------------------------------------------------------


def _check_events(node: str, manifests: Sequence[StoredManifest], reader: StoreReader,
                  since_ns: int, pruned: bool, report: Report) -> None:
    expected: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    unsigned: set[tuple[str, int]] = set()
    for m in manifests:
        for seq, digest in integrity.iter_leaves(m.manifest.leaves):
            key = (m.manifest.boot_id, seq)
            expected[key].add(digest)
            if not m.manifest.signature:
                unsigned.add(key)
    stored: set[tuple[str, int]] = set()
    for ev in reader.events(node):
        key = (ev.boot_id, ev.seq)
        stored.add(key)
        if ev.time_ns < since_ns:
            continue
        report.events_checked += 1
        digests = expected.get(key)
        if digests is None:
            report.problems.append(Problem("inserted", node, ev.boot_id, ev.seq, ev.seq,
                                           f"{ev.where}: no manifest holds it"))
        elif hashlib.sha256(ev.body).digest() not in digests:
            report.problems.append(Problem("modified", node, ev.boot_id, ev.seq, ev.seq,
                                           f"{ev.where}: its bytes differ from what was sent"))
        elif key in unsigned:
            report.unsigned_events += 1
    deleted = sorted(k for k in expected if k not in stored)
    report.problems += [Problem("deleted", node, b, lo, hi, "in a manifest, not in the store")
                        for b, lo, hi in _ranges(deleted)]
    report.problems += [Problem("missing", node, b, lo, hi, "never received")
                        for b, lo, hi in _holes(set(expected) | stored, pruned)]


def _holes(held: Iterable[tuple[str, int]], pruned: bool) -> list[tuple[str, int, int]]:
    """(run, first, last) of the seqs below each agent run's highest that nothing holds.

    After retention (``pruned``) a run's oldest seqs are gone by design: holes
    are counted from its lowest seq still held.
    """
    by_run: dict[str, list[int]] = defaultdict(list)
    for boot, seq in held:
        by_run[boot].append(seq)
    out = []
    for boot, seqs in sorted(by_run.items()):
        if boot.startswith(BOOT_ID_PREFIX):
            continue  # the collector's own stream: gap-free by construction
        ordered = sorted(seqs)
        prev = ordered[0] - 1 if pruned else 0
        for seq in ordered:
            if seq > prev + 1:
                out.append((boot, prev + 1, seq - 1))
            prev = seq
    return out


def _ranges(keys: Iterable[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """Consecutive seqs of one run merged: [(boot, first, last)]."""
    out: list[tuple[str, int, int]] = []
    for boot, seq in sorted(keys):
        if out and out[-1][0] == boot and out[-1][2] == seq - 1:
            out[-1] = (boot, out[-1][1], seq)
        else:
            out.append((boot, seq, seq))
    return out
