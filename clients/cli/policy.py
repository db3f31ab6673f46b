"""`agentgw policy check FILE`: lints a policy file offline (docs/policy.md, "Checking a
policy").

It loads the file as the gateway does and lists the rules that can never decide an
action (`gateway/domain/policy/lint.py` finds them), as a table or one JSON object; the
exit code says whether to deploy it. It calls no gateway: the policy modules are
imported lazily, in `run_policy_check` only, so the other commands never load them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clients.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Commands,
    add_output_options,
    is_json,
    one_line,
)


def add_commands(sub: Commands) -> None:
    """Adds `agentgw policy check`."""
    group = sub.add_parser(
        "policy",
        help="check a policy file before deploying it",
        description="Work with policy files offline (docs/policy.md).",
    )
    group.set_defaults(run=lambda _: _print_help(group))
    commands = group.add_subparsers(metavar="ACTION")
    check = commands.add_parser(
        "check",
        help="load a policy file as the gateway would and report rules that never match",
        description="Load FILE as the gateway would and report the rules that can never "
        "decide an action: contradictory conditions, rules shadowed by an earlier rule, "
        "rules after a catch-all. Exit 0: no errors (warnings allowed); 1: errors (or, "
        "with --strict, warnings); 2: the file does not load.",
    )
    check.add_argument("file", type=Path, metavar="FILE", help="the policy file (YAML)")
    check.add_argument(
        "--strict", action="store_true", help="fail (exit 1) on warnings too, not only errors"
    )
    add_output_options(check)
    check.set_defaults(run=run_policy_check)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def run_policy_check(args: argparse.Namespace) -> int:
    # Lazily: only this command needs the policy modules (tests/unit/test_architecture.py).
    from gateway.domain.policy.lint import Severity, lint_policy
    from gateway.domain.policy.loader import load_policy_file
    from gateway.errors import ConfigError

    path: Path = args.file
    try:
        policy = load_policy_file(path)
    except ConfigError as e:
        # It names the file, the line and the key; main prints it and exits 2.
        raise CliError(one_line(str(e))) from None
    try:
        text: str | None = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = None  # gone since it loaded: the findings just have no lines
    findings = lint_policy(policy, text)
    document = {
        "file": str(path),
        "rules": len(policy.rules),
        "digest": policy.digest,
        "findings": [finding.document() for finding in findings],
    }
    if is_json(args):
        print(json.dumps(document, ensure_ascii=False))
    else:
        print_report(document)
    errors = sum(finding.severity is Severity.ERROR for finding in findings)
    failed = errors > 0 or (args.strict and len(findings) > 0)
    return EXIT_FAILED if failed else EXIT_OK


def print_report(document: dict[str, Any]) -> None:
    """The findings as a table (the message last and whole: it says what to do), then
    a summary line."""
    findings: Sequence[dict[str, Any]] = document["findings"]
    if findings:
        rule_width = max(len("RULE"), *(len(f["rule"]) for f in findings))
        kind_width = max(len(f["kind"]) for f in findings)
        print(f"{'LINE':<5} {'RULE':<{rule_width}} {'SEVERITY':<8} {'KIND':<{kind_width}} MESSAGE")
        for f in findings:
            at = str(f["line"]) if f["line"] is not None else "-"
            print(
                f"{at:<5} {f['rule']:<{rule_width}} {f['severity']:<8} "
                f"{f['kind']:<{kind_width}} {f['message']}"
            )
    print(f"{document['file']}: {_summary(document)} (sha256 {document['digest']})")


def _summary(document: dict[str, Any]) -> str:
    rules = document["rules"]
    counts = {"error": 0, "warning": 0}
    for f in document["findings"]:
        counts[f["severity"]] += 1
    said = [f"{rules} rule" + ("" if rules == 1 else "s")]
    if not document["findings"]:
        said.append("no findings")
    for severity, count in counts.items():
        if count:
            said.append(f"{count} {severity}" + ("" if count == 1 else "s"))
    return ", ".join(said)
