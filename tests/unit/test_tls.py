"""gpuaudit.tls: TlsFiles.check() diagnoses, PeerIdentity, and real mutual-TLS gRPC on loopback."""

from __future__ import annotations

import datetime
import shutil
import socket
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from collector import certs
from gpuaudit.tls import (
    NODE_OU,
    READER_OU,
    PeerIdentity,
    TlsConfigError,
    TlsFiles,
    identity_from_pem,
    peer_identity,
)

DAY = datetime.timedelta(days=1)
NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return certs.init_pki(tmp_path_factory.mktemp("pki"), nodes=["gpu01"], readers=["ops"],
                          extra_collector_names=["collector.example", "10.1.2.3"])


@pytest.fixture(scope="module")
def ca(pki):
    return certs.load_ca(pki.ca_dir)


def pem(files: TlsFiles) -> bytes:
    return files.cert.read_bytes()


# -- check()


def test_minted_files_pass_check(pki):
    for files in [pki.collector, *pki.nodes.values(), *pki.readers.values()]:
        files.check()


def test_check_names_a_key_that_does_not_belong_to_the_cert(pki, tmp_path):
    mixed = TlsFiles(pki.nodes["gpu01"].ca, pki.nodes["gpu01"].cert, pki.readers["ops"].key)
    with pytest.raises(TlsConfigError) as caught:
        mixed.check()
    message = str(caught.value)
    assert f"{pki.readers['ops'].key} is not the private key of {pki.nodes['gpu01'].cert}" \
        in message
    assert "gpuaudit certs node|reader NAME --pki DIR" in message


def test_check_names_a_cert_from_another_ca(pki, tmp_path):
    other = certs.issue_node(certs.new_ca("other CA"), "gpu01", tmp_path / "other")
    wrong_ca = TlsFiles(pki.nodes["gpu01"].ca, other.cert, other.key)
    with pytest.raises(TlsConfigError) as caught:
        wrong_ca.check()
    assert f"{other.cert} was not issued by the CA in {pki.nodes['gpu01'].ca}" in str(caught.value)
    assert "CN=other CA" in str(caught.value)


def test_check_names_an_expired_cert(ca, tmp_path):
    files = certs.issue_node(ca, "old", tmp_path / "old",
                             certs.Validity(NOW - 30 * DAY, NOW - DAY))
    with pytest.raises(TlsConfigError) as caught:
        files.check()
    assert f"{files.cert}: certificate 'CN=old,OU={NODE_OU},O=gpuaudit' expired on" \
        in str(caught.value)


def test_check_names_a_not_yet_valid_cert(ca, tmp_path):
    files = certs.issue_reader(ca, "soon", tmp_path / "soon",
                               certs.Validity(NOW + DAY, NOW + 30 * DAY))
    with pytest.raises(TlsConfigError, match=r"is not valid until .*check this host's clock"):
        files.check()


def test_check_at_a_given_moment(pki):
    # The same files, checked three years on, have expired (825-day leaves).
    with pytest.raises(TlsConfigError, match="expired"):
        pki.nodes["gpu01"].check(now=NOW + 3 * 365 * DAY)


def test_check_names_missing_and_non_pem_files(pki, tmp_path):
    missing = TlsFiles.from_dir(tmp_path / "nowhere")
    with pytest.raises(TlsConfigError, match=f"cannot read {missing.ca}: No such file"):
        missing.check()
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for f in (pki.readers["ops"].ca, pki.readers["ops"].cert):
        shutil.copy(f, garbage / f.name)
    (garbage / "tls.key").write_text("not a key\n")
    with pytest.raises(TlsConfigError, match=r"tls\.key is not an unencrypted PEM private key"):
        TlsFiles.from_dir(garbage).check()
    (garbage / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\nxx\n")
    with pytest.raises(TlsConfigError, match=r"tls\.crt holds no PEM certificate"):
        TlsFiles.from_dir(garbage).check()


# -- PeerIdentity


def test_identity_of_each_role(pki):
    node = identity_from_pem(pem(pki.nodes["gpu01"]))
    assert node == PeerIdentity(names=("gpu01",), role="node")
    assert identity_from_pem(pem(pki.readers["ops"])) == PeerIdentity(("ops",), "reader")
    server = identity_from_pem(pem(pki.collector))
    assert server.role == ""
    # CN first, then DNS SANs, then IP SANs.
    host = socket.gethostname()
    assert server.names == ("gpuaudit collector", "localhost", host, "collector.example",
                            "127.0.0.1", "::1", "10.1.2.3")


def test_may_claim_only_own_name_and_only_as_node(pki):
    node = identity_from_pem(pem(pki.nodes["gpu01"]))
    assert node.may_claim("gpu01")
    assert not node.may_claim("gpu02")
    assert not node.may_claim("")
    assert not identity_from_pem(pem(pki.readers["ops"])).may_claim("ops")


def test_a_cert_with_both_ous_gets_no_role(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, NODE_OU),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, READER_OU),
        x509.NameAttribute(NameOID.COMMON_NAME, "both"),
    ])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
            .sign(ca.key, hashes.SHA256()))
    ident = identity_from_pem(cert.public_bytes(Encoding.PEM))
    assert ident == PeerIdentity(("both",), "")
    assert not ident.may_claim("both")


# -- over real gRPC


class RecordingHealth(health.HealthServicer):
    """Health service that records who called."""

    def __init__(self):
        super().__init__()
        self.peers = []

    def Check(self, request, context):
        self.peers.append(peer_identity(context))
        return super().Check(request, context)


def serve(credentials):
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = RecordingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials
            else server.add_insecure_port("127.0.0.1:0"))
    server.start()
    return server, servicer, f"127.0.0.1:{port}"


def check(address, credentials=None):
    channel = (grpc.secure_channel(address, credentials) if credentials
               else grpc.insecure_channel(address))
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10)


@pytest.fixture
def tls_server(pki):
    server, servicer, address = serve(pki.collector.server_credentials())
    yield servicer, address
    server.stop(None)


def test_peer_identity_over_mutual_tls(pki, tls_server):
    servicer, address = tls_server
    check(address, pki.nodes["gpu01"].channel_credentials())
    check(address, pki.readers["ops"].channel_credentials())
    assert servicer.peers == [PeerIdentity(("gpu01",), "node"), PeerIdentity(("ops",), "reader")]


@pytest.mark.parametrize("client", ["unknown_ca", "expired", "no_cert", "plaintext"])
def test_server_refuses_clients_without_a_valid_cert(pki, ca, tls_server, tmp_path, client):
    servicer, address = tls_server
    if client == "unknown_ca":
        creds = certs.issue_node(certs.new_ca(), "gpu01", tmp_path / "u").channel_credentials()
    elif client == "expired":
        creds = certs.issue_node(ca, "gpu01", tmp_path / "e",
                                 certs.Validity(NOW - 9 * DAY, NOW - DAY)).channel_credentials()
    elif client == "no_cert":
        creds = grpc.ssl_channel_credentials(root_certificates=pki.collector.ca.read_bytes())
    else:
        creds = None
    with pytest.raises(grpc.RpcError) as caught:
        check(address, creds)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.peers == []


def test_client_refuses_a_server_from_another_ca(pki, tmp_path):
    other = certs.issue_collector(certs.new_ca(), tmp_path / "c")
    server, servicer, address = serve(other.server_credentials())
    try:
        with pytest.raises(grpc.RpcError) as caught:
            check(address, pki.nodes["gpu01"].channel_credentials())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servicer.peers == []
    finally:
        server.stop(None)


def test_plaintext_connection_has_no_identity():
    server, servicer, address = serve(None)
    try:
        check(address)
        assert servicer.peers == [None]
    finally:
        server.stop(None)
