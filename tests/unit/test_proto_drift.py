"""The checked-in generated code is exactly what proto/gen.sh produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "proto" / "gpuaudit" / "v1"


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "proto" / "gen.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    fresh = sorted((tmp_path / "gpuaudit" / "v1").glob("*_pb2*"))
    assert [p.name for p in fresh] == sorted(p.name for p in GEN.glob("*_pb2*"))
    for p in fresh:
        assert p.read_text() == (GEN / p.name).read_text(), (
            f"{p.name} is stale: run `make proto` and commit the result")
