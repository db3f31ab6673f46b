"""`agentgw policy check FILE` as a script in CI runs it: a real process, its exit codes
(0 clean or warnings only, 1 errors or --strict warnings, 2 a file that does not
load), the table, the JSON object, and the shipped policies linting clean."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from clients.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from tests.unit.test_policy_loader import doc_example

ROOT = Path(__file__).resolve().parents[2]

CLEAN = """\
version: 1
default_verdict: allow
rules:
  - name: hold-payments
    verdict: hold
    match:
      action_type: "payment.*"
"""

# b: shadowed by a, same verdict (a warning); c: shadowed by a, another verdict (an
# error); d: contradictory (an error).
FINDINGS = """\
version: 1
default_verdict: allow
rules:
  - name: a
    verdict: hold
    match:
      action_type: "payment.*"
  - name: b
    verdict: hold
    match:
      action_type: payment.refund
  - name: c
    verdict: deny
    match:
      action_type: PAYMENT.CREATE
  - name: d
    verdict: deny
    match:
      parameters:
        - {path: amount, op: gt, value: 10}
        - {path: amount, op: lt, value: 5}
"""

WARNING_ONLY = """\
version: 1
default_verdict: deny
rules:
  - name: allow-search
    verdict: allow
    match:
      action_type: [search, web.search]
  - name: allow-web-search
    verdict: allow
    match:
      action_type: WEB.SEARCH
"""


def check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`agentgw policy check ARGS` as a process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGW_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "clients.cli", "policy", "check", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_clean_policy_exits_0_and_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, CLEAN)
    done = check(str(path))
    assert done.returncode == EXIT_OK, done.stderr
    digest = hashlib.sha256(CLEAN.encode()).hexdigest()
    assert done.stdout == f"{path}: 1 rule, no findings (sha256 {digest})\n"
    assert done.stderr == ""


def test_errors_exit_1_with_a_row_per_finding(tmp_path: Path) -> None:
    done = check(str(write(tmp_path, FINDINGS)))
    assert done.returncode == EXIT_FAILED, done.stderr
    header, *rows, summary = done.stdout.splitlines()
    assert header.split() == ["LINE", "RULE", "SEVERITY", "KIND", "MESSAGE"]
    cells = [row.split(maxsplit=4) for row in rows]
    assert [cell[:4] for cell in cells] == [
        ["8", "b", "warning", "redundant"],
        ["12", "c", "error", "never-matches"],
        ["16", "d", "error", "never-matches"],
    ]
    assert cells[1][4].startswith("rule 'c' never matches: rule 'a' (line 4) comes first")
    assert summary.startswith(f"{tmp_path / 'policy.yaml'}: 4 rules, 2 errors, 1 warning (sha256 ")


def test_warnings_alone_exit_0_and_1_with_strict(tmp_path: Path) -> None:
    path = str(write(tmp_path, WARNING_ONLY))
    done = check(path)
    assert done.returncode == EXIT_OK, done.stdout
    assert "redundant" in done.stdout and "2 rules, 1 warning" in done.stdout
    assert check(path, "--strict").returncode == EXIT_FAILED
    assert check(str(write(tmp_path, CLEAN, "clean.yaml")), "--strict").returncode == EXIT_OK


def test_json_is_one_object_with_every_finding(tmp_path: Path) -> None:
    path = write(tmp_path, FINDINGS)
    done = check(str(path), "-o", "json")
    assert done.returncode == EXIT_FAILED
    document = json.loads(done.stdout)
    assert document["file"] == str(path)
    assert document["rules"] == 4
    assert document["digest"] == hashlib.sha256(FINDINGS.encode()).hexdigest()
    assert [(f["rule"], f["line"], f["kind"], f["severity"]) for f in document["findings"]] == [
        ("b", 8, "redundant", "warning"),
        ("c", 12, "never-matches", "error"),
        ("d", 16, "never-matches", "error"),
    ]
    assert all(
        set(f) == {"rule", "line", "kind", "severity", "message"} for f in document["findings"]
    )
    # --json and -o jsonl print the same object, on one line.
    for flags in (["--json"], ["-o", "jsonl"]):
        again = check(str(path), *flags)
        assert again.stdout.count("\n") == 1 and json.loads(again.stdout) == document


def test_a_policy_that_does_not_load_exits_2_with_the_loader_error(tmp_path: Path) -> None:
    bad = CLEAN.replace("verdict: hold", "verdict: maybe")
    path = write(tmp_path, bad)
    for flags in ([], ["-o", "json"]):
        done = check(str(path), *flags)
        assert done.returncode == EXIT_USAGE
        assert done.stdout == ""
        assert done.stderr == (
            f"agentgw: {path}:5: rules[0].verdict: unknown verdict 'maybe' "
            "(expected one of allow, hold, deny)\n"
        )


def test_invalid_yaml_and_a_missing_file_exit_2(tmp_path: Path) -> None:
    done = check(str(write(tmp_path, "version: 1\nrules: [\n")))
    assert done.returncode == EXIT_USAGE
    assert (
        done.stderr.startswith(f"agentgw: {tmp_path / 'policy.yaml'}:")
        and "invalid YAML" in done.stderr
    )
    assert done.stderr.count("\n") == 1
    missing = check(str(tmp_path / "nope.yaml"))
    assert missing.returncode == EXIT_USAGE
    assert missing.stderr.startswith(f"agentgw: {tmp_path / 'nope.yaml'}: cannot read policy")


def test_the_built_in_default_policy_lints_clean() -> None:
    done = check("gateway/domain/policy/default.yaml", "-o", "json")
    assert done.returncode == EXIT_OK, done.stdout
    assert json.loads(done.stdout)["findings"] == []


def test_the_complete_example_in_the_policy_docs_lints_clean(tmp_path: Path) -> None:
    done = check(str(write(tmp_path, doc_example())), "--strict")
    assert done.returncode == EXIT_OK, done.stdout
    assert "7 rules, no findings" in done.stdout


def checking_section() -> str:
    page = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
    return page.split("## Checking a policy", 1)[1].split("\n## ", 1)[0]


def block(section: str, language: str) -> str:
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_example_in_the_policy_docs_prints_what_it_shows(tmp_path: Path) -> None:
    section = checking_section()
    write(tmp_path, block(section, "yaml"))
    command, *shown = block(section, "text").splitlines()
    assert command == "$ agentgw policy check policy.yaml"
    done = check("policy.yaml", cwd=tmp_path)
    assert done.returncode == EXIT_FAILED
    assert done.stdout.splitlines() == shown
    document = json.loads(check("policy.yaml", "-o", "json", cwd=tmp_path).stdout)
    shown_document = json.loads(block(section, "json"))
    assert document["digest"].startswith(shown_document["digest"].rstrip("…"))
    assert [{**f, "message": ""} for f in document["findings"]] == [
        {**f, "message": ""} for f in shown_document["findings"]
    ]


def test_the_ci_example_in_the_policy_docs_fails_the_job_on_findings(tmp_path: Path) -> None:
    script = block(checking_section(), "sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    expected = [(CLEAN, EXIT_OK), (WARNING_ONLY, EXIT_FAILED), (FINDINGS, EXIT_FAILED)]
    expected.append(("version: 2\n", EXIT_USAGE))
    for text, code in expected:
        write(tmp_path, text)
        done = subprocess.run(
            ["sh", "-ec", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == code, (text, done.stdout, done.stderr)


def test_bash_completion_offers_policy_check() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGW_")}
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", "completion", "bash"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_OK
    assert "|policy|policy check|" in done.stdout
    assert "'policy check') choices='--help --strict --output --json'" in done.stdout


def test_policy_alone_prints_its_help_and_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGW_")}
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", "policy"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_USAGE
    assert "check" in done.stderr and done.stdout == ""


def test_line_numbers_follow_the_file(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        # comments and blank lines count
        version: 1
        default_verdict: allow

        rules:
          - name: all
            verdict: hold
          - name: late
            verdict: deny
    """)
    document = json.loads(check(str(write(tmp_path, text)), "-o", "json").stdout)
    assert [(f["rule"], f["line"], f["kind"]) for f in document["findings"]] == [
        ("late", 8, "unreachable-after-catch-all")
    ]
