"""collector.certs and `gpuaudit certs`: what is minted, where, with which modes and extensions."""

from __future__ import annotations

import ipaddress
import socket
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector import certs, cli
from gpuaudit.tls import NODE_OU, READER_OU, TlsFiles


def load(files: TlsFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files.cert.read_bytes())


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName) + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return certs.init_pki(tmp_path_factory.mktemp("pki") / "pki", nodes=["gpu01", "gpu02"],
                          readers=["ops"], extra_collector_names=["col.example", "10.0.0.5"])


def test_layout_and_key_modes(pki):
    root = pki.root
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "ca/ca.crt", "ca/ca.key", "collector/ca.crt", "collector/tls.crt", "collector/tls.key",
        "nodes/gpu01/ca.crt", "nodes/gpu01/tls.crt", "nodes/gpu01/tls.key",
        "nodes/gpu02/ca.crt", "nodes/gpu02/tls.crt", "nodes/gpu02/tls.key",
        "readers/ops/ca.crt", "readers/ops/tls.crt", "readers/ops/tls.key",
    ]  # fmt: skip
    keys = [root / "ca/ca.key", *root.rglob("tls.key")]
    assert {mode(k) for k in keys} == {0o600}
    assert mode(root / "ca") == 0o700


def test_every_leaf_chains_to_the_ca(pki):
    ca = certs.load_ca(pki.ca_dir).cert
    for files in [pki.collector, *pki.nodes.values(), *pki.readers.values()]:
        load(files).verify_directly_issued_by(ca)
        assert files.ca.read_bytes() == (pki.ca_dir / "ca.crt").read_bytes()
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0


def test_collector_cert_is_a_server_cert_with_loopback_and_host_names(pki):
    cert = load(pki.collector)
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert sans(cert) == ["localhost", socket.gethostname(), "col.example",
                          "127.0.0.1", "::1", "10.0.0.5"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("::1") in san.get_values_for_type(x509.IPAddress)


def test_node_and_reader_certs(pki):
    node = load(pki.nodes["gpu01"])
    assert eku(node) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert node.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value \
        == NODE_OU
    assert node.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gpu01"
    assert sans(node) == ["gpu01"]
    reader = load(pki.readers["ops"])
    assert eku(reader) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert reader.subject.rfc4514_string() == f"CN=ops,OU={READER_OU},O=gpuaudit"
    with pytest.raises(x509.ExtensionNotFound):
        reader.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_validity_window_is_what_was_asked(tmp_path):
    ca = certs.new_ca()
    window = certs.Validity.days(2)
    cert = load(certs.issue_reader(ca, "r", tmp_path / "r", window))
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (
        window.not_before.replace(microsecond=0), window.not_after.replace(microsecond=0))


def test_init_refuses_to_replace_a_ca_unless_forced(pki):
    before = (pki.ca_dir / "ca.key").read_bytes()
    with pytest.raises(certs.PkiError, match="already holds a CA"):
        certs.init_pki(pki.root)
    assert (pki.ca_dir / "ca.key").read_bytes() == before


@pytest.mark.parametrize("name", ["", "..", "a/b", "with space", "nödé"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="not a usable node/reader name"):
        certs.issue_node(certs.new_ca(), name, tmp_path / "x")


# -- the command


def test_certs_init_then_add_a_node_and_a_reader(capsys, tmp_path):
    out = tmp_path / "pki"
    code = cli.main(["certs", "init", "--out", str(out), "--node", "gpu01",
                     "--reader", "ops", "--collector-name", "col.example", "--days", "30"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"wrote node gpu01: {out / 'nodes/gpu01'}" in printed
    assert f"gpuaudit agent --node gpu01 --tls-dir {out / 'nodes/gpu01'}" in printed
    assert f"gpuaudit events --tls-dir {out / 'readers/ops'}" in printed
    assert "col.example" in printed

    assert cli.main(["certs", "node", "gpu02", "--pki", str(out)]) == 0
    assert cli.main(["certs", "reader", "audit", "--pki", str(out)]) == 0
    assert f"--tls-dir {out / 'readers/audit'}" in capsys.readouterr().out
    for d in ("collector", "nodes/gpu01", "nodes/gpu02", "readers/ops", "readers/audit"):
        TlsFiles.from_dir(out / d).check()
    node = load(TlsFiles.from_dir(out / "nodes/gpu02"))
    node.verify_directly_issued_by(certs.load_ca(out / "ca").cert)


def test_certs_init_twice_exits_2_and_keeps_the_ca(capsys, tmp_path):
    assert cli.main(["certs", "init", "--out", str(tmp_path)]) == 0
    key = (tmp_path / "ca/ca.key").read_bytes()
    assert cli.main(["certs", "init", "--out", str(tmp_path)]) == 2
    assert "already holds a CA" in capsys.readouterr().err
    assert (tmp_path / "ca/ca.key").read_bytes() == key
    assert cli.main(["certs", "init", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca/ca.key").read_bytes() != key


def test_certs_node_without_a_ca_exits_2(capsys, tmp_path):
    assert cli.main(["certs", "node", "gpu01", "--pki", str(tmp_path)]) == 2
    assert "make one with `gpuaudit certs init --out DIR`" in capsys.readouterr().err
