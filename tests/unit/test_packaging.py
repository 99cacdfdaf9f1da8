"""pyproject.toml lists every package: an installed (non-editable) gpuaudit must not
miss a module the source tree has."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_listed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("agent", "collector") for p in (ROOT / top).rglob("__init__.py")}
    found |= {"gpuaudit." + ".".join(p.parent.relative_to(ROOT / "proto/gpuaudit").parts)
              for p in (ROOT / "proto/gpuaudit").rglob("__init__.py")}
    found = {f.rstrip(".") for f in found}
    assert found <= listed, f"not in pyproject.toml packages: {sorted(found - listed)}"
