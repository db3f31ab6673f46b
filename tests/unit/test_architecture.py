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
    assert top == {"__init__.py", "app.py", "config.py", "errors.py", "logs.py", "serve.py"}


def test_no_module_grows_past_the_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*modules(GATEWAY), *modules(ROOT / "clients")]
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long


def test_every_path_the_architecture_page_names_exists() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:gateway|clients|protos|tests|bench)/[\w/.-]+)`", page))
    assert named, "the page names no paths"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing


# What clients/ may import from the gateway package: the pure audit format, and the
# error types it raises (gateway/errors.py imports nothing).
CLIENTS_MAY_IMPORT = ("gateway.domain.audit", "gateway.errors")
# The commands that run on the gateway's own host, offline, import the gateway in one
# function each, lazily: `agentgw serve` runs the server in-process; `agentgw tokens`
# edits the config file; `agentgw policy check` loads a policy as the gateway would.
LOCAL_FUNCTIONS = {
    ("clients/cli/admin.py", "run_serve"): {"gateway.serve", "gateway.config", "gateway.errors"},
    ("clients/cli/tokens.py", "edit_config"): {
        "gateway.config",
        "gateway.domain.principal_file",
        "gateway.domain.principals",
        "gateway.errors",
    },
    ("clients/cli/tokens.py", "run_tokens_list"): {"gateway.config", "gateway.errors"},
    ("clients/cli/policy.py", "run_policy_check"): {
        "gateway.domain.policy.lint",
        "gateway.domain.policy.loader",
        "gateway.errors",
    },
}


def test_clients_import_only_the_pure_audit_format_and_the_stubs() -> None:
    bad = set()
    local_imports: dict[tuple[str, str], set[str]] = {}
    for path in modules(ROOT / "clients"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = (str(path.relative_to(ROOT)), getattr(node, "name", ""))
            if isinstance(node, ast.FunctionDef) and where in LOCAL_FUNCTIONS:
                local_imports[where] = {
                    name for inner in ast.walk(node) for name in _names_imported(inner)
                }
                node.body = []  # its imports are checked below, not with the rest
        for node in ast.walk(tree):
            for name in _names_imported(node):
                top = name.split(".")[0]
                allowed = any(name == m or name.startswith(m + ".") for m in CLIENTS_MAY_IMPORT)
                if top == "gateway" and not allowed:
                    bad.add(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, sorted(bad)
    for where, allowed in LOCAL_FUNCTIONS.items():
        assert local_imports.get(where, set()) <= allowed, where
    assert (
        local_imports[("clients/cli/admin.py", "run_serve")]
        == LOCAL_FUNCTIONS[("clients/cli/admin.py", "run_serve")]
    )


def _names_imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module]
    return []


def test_every_error_of_the_audit_library_is_an_audit_error() -> None:
    """One hierarchy (gateway/domain/audit/errors.py), mapped in one place. Private
    exceptions that never leave their module (fast-path signals) are not errors."""
    import inspect

    import gateway.domain.audit as audit_package
    from gateway.domain.audit.errors import AuditError

    stray = []
    for path in modules(GATEWAY / "domain" / "audit"):
        module_name = f"{audit_package.__name__}.{path.stem}"
        module = __import__(module_name, fromlist=["_"])
        for name, value in vars(module).items():
            if (
                not name.startswith("_")
                and inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__ == module_name
                and not issubclass(value, AuditError)
            ):
                stray.append(f"{module_name}.{name}")
    assert not stray, stray
