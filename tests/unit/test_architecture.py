"""The rings of docs/architecture.md, checked: what each ring may import, module
sizes, and that every file the architecture page names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"
MAX_MODULE_LINES = 750

# ring -> module prefixes it must not import
FORBIDDEN = {
    "domain": (
        "grpc",
        "redis",
        "gateway.store",
        "gateway.services",
        "gateway.api",
        "gateway.app",
        "gateway.config",
    ),
    "services": ("grpc", "gateway.api", "gateway.app"),
    "store": ("grpc", "gateway.api", "gateway.services", "gateway.app"),
}


def modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("ring", sorted(FORBIDDEN))
def test_each_ring_imports_only_inward(ring: str) -> None:
    bad = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(GATEWAY / ring)
        for name in imported(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[ring])
    }
    assert not bad, sorted(bad)


def test_the_top_of_the_package_is_wiring_and_errors_only() -> None:
    top = {p.name for p in GATEWAY.glob("*.py")}
    assert top == {"__init__.py", "app.py", "config.py", "errors.py", "logs.py"}


def test_no_module_grows_past_the_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules(GATEWAY)
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long


def test_every_path_the_architecture_page_names_exists() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:gateway|clients|protos|tests|bench)/[\w/.-]+)`", page))
    assert named, "the page names no paths"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing
