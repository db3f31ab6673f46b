"""The CLI will not send a bearer token in cleartext off loopback unless told to
(--insecure, AGENTGW_INSECURE=1), as the gateway will not serve so: it says why, in
one line, and exits 2 before it connects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.cli import main
from clients.transport import is_local

REFUSED = "refusing to send the token in cleartext off loopback"


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("::1", True),
        ("localhost", True),
        ("unix:/run/agentgw.sock", True),
        ("10.0.0.5:50051", False),
        ("[2001:db8::1]:50051", False),
        ("gateway.example.internal:50051", False),
        ("localhost.example.com:50051", False),
        ("0.0.0.0:50051", False),
    ],
)
def test_which_targets_stay_on_this_host(target: str, local: bool) -> None:
    assert is_local(target) is local


@pytest.mark.parametrize(
    "argv",
    [
        ["holds", "list", "--server", "10.0.0.5:50051", "--token", "t"],
        ["submit", "search", "--server", "gateway.example:50051", "--token", "t"],
        ["audit", "export", "--server", "[2001:db8::1]:50051", "--token", "t"],
        ["audit", "verify", "--url", "http://tiles.example:8443/", "--keys", "k", "--token", "t"],
    ],
)
def test_a_token_is_not_sent_in_cleartext_off_loopback(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("AGENTGW_INSECURE", raising=False)
    vectors = json.loads((Path(__file__).parents[1] / "vectors" / "audit-v1.json").read_text())
    (tmp_path / "k").write_text(json.dumps(vectors["key_set"]), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert REFUSED in err and "--insecure" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_insecure_lets_it_through(
    how: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Then the call is made: here to 0.0.0.0 (not loopback, but this host on Linux),
    port 1, where nothing listens, so it fails to connect."""
    argv = ["holds", "list", "--server", "0.0.0.0:1", "--token", "t", "--timeout", "5"]
    if how == "flag":
        argv.append("--insecure")
    else:
        monkeypatch.setenv("AGENTGW_INSECURE", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert REFUSED not in err and "cannot reach the gateway" in err
