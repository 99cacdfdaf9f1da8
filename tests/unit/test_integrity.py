"""Batch manifests and signatures (gpuaudit/integrity.py, agent/signing.py):
what a node signs is exactly what goes over the wire, and any change to it --
an event's bytes, its seq, the node, the run -- breaks the signature."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.ship import encode_batch
from agent.signing import BatchSigner
from collector.certs import init_pki
from gpuaudit import integrity
from gpuaudit.tls import TlsFiles
from gpuaudit.v1 import collector_pb2, events_pb2


def event(seq: int, preload: dict[str, str] | None = None) -> bytes:
    ev = events_pb2.Event(type="process.exec", node="n1", boot_id="b1", seq=seq)
    ev.process.pid = 1000 + seq
    for k, v in (preload or {}).items():
        ev.process_exec.preload[k] = v
    return ev.SerializeToString()


def test_event_bodies_are_the_bytes_sent_signature_and_all() -> None:
    bodies = [event(1), event(2, {"LD_PRELOAD": "/tmp/x.so", "PYTHONPATH": "/a"}), event(3)]
    raw = encode_batch(7, bodies, signature=b"\x0a\x03sig")
    assert integrity.event_bodies(raw) == bodies
    parsed = collector_pb2.EventBatch.FromString(raw)
    assert parsed.batch_id == 7 and len(parsed.events) == 3
    assert parsed.signature.signature == b"sig"


@pytest.mark.parametrize("raw", [b"\x12\x05abc", b"\x08\xff", b"\x0b"])
def test_malformed_batches_are_refused_not_misread(raw: bytes) -> None:
    with pytest.raises(integrity.WireError):
        integrity.event_bodies(raw)


@pytest.mark.parametrize("make_key", [lambda: ec.generate_private_key(ec.SECP256R1()),
                                      ed25519.Ed25519PrivateKey.generate])
def test_signature_covers_every_part_of_the_manifest(make_key) -> None:
    key = make_key()
    bodies = [event(1), event(2)]
    leaves = integrity.leaves_of([1, 2], bodies)
    signed = integrity.manifest_bytes("n1", "b1", leaves)
    sig = integrity.sign(key, signed)
    pub = key.public_key()
    assert integrity.signature_valid(pub, sig, signed)
    altered = [
        integrity.manifest_bytes("n2", "b1", leaves),                           # node
        integrity.manifest_bytes("n1", "b2", leaves),                           # run
        integrity.manifest_bytes("n1", "b1", integrity.leaves_of([1, 3], bodies)),  # seq
        integrity.manifest_bytes("n1", "b1", integrity.leaves_of([1, 2], [bodies[0], event(9)])),
        integrity.manifest_bytes("n1", "b1", integrity.leaves_of([1], bodies[:1])),  # dropped
    ]
    assert not any(integrity.signature_valid(pub, sig, m) for m in altered)


def test_leaves_round_trip() -> None:
    bodies = [event(5), event(6)]
    got = list(integrity.iter_leaves(integrity.leaves_of([5, 6], bodies)))
    assert got == [(5, hashlib.sha256(bodies[0]).digest()), (6, hashlib.sha256(bodies[1]).digest())]
    with pytest.raises(ValueError):
        list(integrity.iter_leaves(b"x" * 41))


def test_node_signs_with_its_certificate_key(tmp_path) -> None:
    pki = init_pki(tmp_path, nodes=["gpu-1"])
    files = TlsFiles.from_dir(tmp_path / "nodes" / "gpu-1")
    signer = BatchSigner.from_tls("gpu-1", files)
    bodies = [event(1), event(2)]
    sig = collector_pb2.BatchSignature.FromString(signer.sign("b1", [1, 2], bodies))

    cert = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
    der = cert.public_bytes(serialization.Encoding.DER)
    assert sig.cert_sha256 == hashlib.sha256(der).digest()
    manifest = integrity.manifest_bytes("gpu-1", "b1", integrity.leaves_of([1, 2], bodies))
    assert integrity.signature_valid(cert.public_key(), sig.signature, manifest)
    assert pki.nodes  # the node certificate the signer used came from this PKI
