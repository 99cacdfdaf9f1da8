"""The checkpoint scanner on a generated corpus of real pickles, and its bounds.

Nothing here unpickles anything: the malicious samples would run commands.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import pytest

from agent.checkpoint.bounded import BoundedReader
from agent.checkpoint.scanner import DEFAULT_LIMITS, Limits, Outcome, denied, scan
from tests.fixtures.pickles import corpus

MALICIOUS_P0 = corpus.proto0_call("os", "system", "true")


class CountingFile(io.RawIOBase):
    """A real file that counts the bytes handed out (what "not read" means here)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(b)
        self.bytes_read += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        super().close()


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[corpus.Sample]:
    return corpus.build(tmp_path_factory.mktemp("corpus"))


def _scan_path(path: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[Outcome, int]:
    with io.BufferedReader(CountingFile(path)) as f:
        outcome = scan(f, path.name, limits)
        return outcome, f.raw.bytes_read


def test_every_dangerous_sample_is_malicious_with_its_globals(samples: list[corpus.Sample]) -> None:
    dangerous = [s for s in samples if s.dangerous]
    assert len(dangerous) >= 60  # 8 payloads x protocols 0-5 and torch zip, + variants
    for s in dangerous:
        with open(s.path, "rb") as f:
            o = scan(f, s.name)
        assert o.verdict == "malicious", (s.name, o)
        assert s.globals <= set(o.globals), (s.name, o.globals)
        assert o.format == s.format, s.name


def test_every_benign_sample_is_safe(samples: list[corpus.Sample]) -> None:
    benign = [s for s in samples if not s.dangerous]
    assert {s.format for s in benign} == {"pickle", "torch_zip", "torch_legacy", "numpy", "npz",
                                          "pickle+zlib"}
    for s in benign:
        with open(s.path, "rb") as f:
            o = scan(f, s.name)
        assert (o.verdict, o.globals, o.error, o.format) == ("safe", [], "", s.format), s.name


def test_deny_list_covers_what_picklescan_only_calls_suspicious() -> None:
    # picklescan 1.0.5 rates these "suspicious"; the issue says: never safe,
    # and both lead straight to code execution
    assert denied("importlib", "import_module") and denied("marshal", "loads")
    assert denied("importlib.util", "spec_from_file_location")
    # protocol < 3 names, read back with fix_imports
    assert denied("commands", "Popen") and denied("__builtin__", "exec")
    assert not denied("collections", "OrderedDict") and not denied("builtins", "set")
    assert not denied("torch._utils", "_rebuild_tensor_v2")


def test_unknown_global_is_suspicious_not_safe(tmp_path: Path) -> None:
    p = tmp_path / "model.pkl"
    p.write_bytes(b"cmylib.layers\nDense\n)R.")
    o, _ = _scan_path(p)
    assert (o.verdict, o.globals) == ("suspicious", ["mylib.layers.Dense"])


def test_truncated_pickle_after_a_dangerous_import_is_still_malicious(tmp_path: Path) -> None:
    p = tmp_path / "cut.pkl"
    p.write_bytes(MALICIOUS_P0[:-3])  # no REDUCE/STOP: the GLOBAL alone is reported
    o, _ = _scan_path(p)
    assert o.verdict == "malicious" and "os.system" in o.globals


def test_ten_gb_tensor_blob_in_a_torch_zip_is_not_read(tmp_path: Path) -> None:
    data = corpus.torch_pickle(corpus.benign_state)
    p = corpus.write_sparse_zip(tmp_path / "big.pt", [
        ("archive/data.pkl", data, len(data)), ("archive/data/0", b"", 10 << 30),
        ("archive/version", b"3\n", 2)])
    o, read = _scan_path(p)
    assert (o.verdict, o.format) == ("safe", "torch_zip")
    assert read < 1 << 20  # central directory, data.pkl twice, 8 bytes of the blob


def test_blob_posing_as_a_huge_pickle_stops_at_the_byte_bound(tmp_path: Path) -> None:
    # PROTO 5, then BINBYTES8 announcing 10 GiB: pickletools would read it all
    head = b"\x80\x05\x8e" + struct.pack("<Q", 10 << 30)
    p = corpus.write_sparse_zip(tmp_path / "evil.pt", [("archive/data/0", head, 10 << 30)])
    limits = Limits(pickle_max_bytes=1 << 20)
    o, read = _scan_path(p, limits)
    assert o.verdict == "error" and "over 1048576 bytes" in o.error
    assert read < 3 << 20


def test_plain_pickle_over_the_byte_bound_is_error_not_safe(tmp_path: Path) -> None:
    p = tmp_path / "big.pkl"
    p.write_bytes(pickle.dumps(b"\0" * (2 << 20), protocol=4))
    o, read = _scan_path(p, Limits(pickle_max_bytes=1 << 20))
    assert o.verdict == "error" and "over 1048576 bytes" in o.error
    assert read <= (1 << 20) + 64 * 1024


def test_malicious_pickle_padded_past_the_bound_is_not_safe(tmp_path: Path) -> None:
    p = tmp_path / "padded.pkl"
    p.write_bytes(b"\x80\x04" + b"N0" * (64 << 10) + MALICIOUS_P0)  # None, POP, ... then os.system
    o, _ = _scan_path(p, Limits(pickle_max_bytes=64 << 10))
    assert o.verdict == "error"


def test_opcode_bound_keeps_picklescan_list_small(tmp_path: Path) -> None:
    p = tmp_path / "many.pkl"
    p.write_bytes(pickle.dumps(list(range(5000)), protocol=4))
    o, _ = _scan_path(p, Limits(pickle_max_ops=1000))
    assert o.verdict == "error" and "over 1000 opcodes" in o.error


def test_protocol0_line_without_newline_is_bounded(tmp_path: Path) -> None:
    p = tmp_path / "line.pkl"
    with open(p, "wb") as f:  # GLOBAL whose module line never ends: 4 GiB of hole
        f.write(b"c")
        f.truncate(4 << 30)
    o, read = _scan_path(p, Limits(pickle_max_bytes=1 << 20))
    assert o.verdict == "error"
    assert read < 3 << 20


def test_legacy_torch_raw_storage_after_five_pickles_is_not_parsed(tmp_path: Path) -> None:
    p = tmp_path / "old.pth"
    with open(p, "wb") as f:
        f.write(corpus.legacy_torch(corpus.torch_pickle(corpus.benign_state)))
        f.truncate(3 << 30)  # 3 GiB of "storage" after the pickles
    o, read = _scan_path(p)
    assert (o.verdict, o.format) == ("safe", "torch_legacy")
    assert read < 1 << 20


def test_numeric_npy_body_is_not_read(tmp_path: Path) -> None:
    p = tmp_path / "big.npy"
    with open(p, "wb") as f:
        f.write(corpus.npy("<f4", (1 << 30,), b""))
        f.truncate(4 << 30)
    o, read = _scan_path(p)
    assert (o.verdict, o.format) == ("safe", "numpy")
    assert read < 1 << 20


def test_not_a_model_file_at_all(tmp_path: Path) -> None:
    p = tmp_path / "weights.bin"
    p.write_bytes(b"\xff" * 100)
    o, _ = _scan_path(p)
    assert o.verdict == "safe"  # pickle.load fails at once


def test_corrupt_zip_is_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.pt"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    o, _ = _scan_path(p)
    assert (o.verdict, o.format) == ("error", "zip")
    assert "BadZipFile" in o.error


def test_bounded_reader_clamps_reads_lines_and_seeks() -> None:
    r = BoundedReader(io.BytesIO(b"abc\ndefghij"), 6)
    assert r.readline() == b"abc\n"
    assert r.read(100) == b"" and r.exceeded  # 7 bytes left, budget had 2
    r = BoundedReader(io.BytesIO(b"abcdef"), 6)
    assert r.read(6) == b"abcdef" and not r.exceeded
    r.seek(-1, io.SEEK_CUR)
    assert r.read(1) == b"f"
    assert r.read(1) == b"" and not r.exceeded  # end of data, not of budget


def test_compression_bomb_is_bounded_by_decompressed_bytes(tmp_path: Path) -> None:
    p = tmp_path / "bomb.joblib"
    # BINBYTES8 announcing 1 GiB, then 16 MiB of zeros: about 16 KiB of gzip
    body = b"\x80\x05\x8e" + struct.pack("<Q", 1 << 30)
    p.write_bytes(corpus.gzip.compress(body + b"\0" * (16 << 20)))
    o, _ = _scan_path(p, Limits(pickle_max_bytes=1 << 20))
    assert (o.verdict, o.format) == ("error", "pickle+gzip")
    assert "over 1048576 bytes" in o.error


def test_lz4_compressed_is_error_not_safe(tmp_path: Path) -> None:
    p = tmp_path / "m.joblib"
    p.write_bytes(b"\x04\x22\x4d\x18" + b"\0" * 32)
    o, _ = _scan_path(p)
    assert (o.verdict, o.format, o.error) == ("error", "pickle+lz4", "lz4-compressed: not scanned")
