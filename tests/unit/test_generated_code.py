"""The committed protobuf/gRPC code must equal what `make proto` generates now."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    """protos/generate.py, the build tool behind `make proto` (not a runtime module)."""
    spec = importlib.util.spec_from_file_location("generate", REPO / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = load_generator().generate


def sources(root: Path) -> dict[Path, bytes]:
    return {
        p.relative_to(root): p.read_bytes()
        for p in (root / "agentgw").rglob("*")
        if p.suffix in {".py", ".pyi"} and "__pycache__" not in p.parts
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    generate(tmp_path, tmp_path)
    fresh = sources(tmp_path)
    committed = sources(REPO)
    assert sorted(fresh) == sorted(committed), "files differ: run `make proto`"
    stale = [str(name) for name, data in fresh.items() if committed[name] != data]
    assert not stale, f"stale generated code (run `make proto`): {stale}"
