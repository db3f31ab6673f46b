"""`agentgw tokens issue|rotate|revoke|list`: the principals' tokens in the config file.

These run on the gateway's host and edit its config file directly (the file of
`agentgw serve`: --config, AGENTGW_CONFIG, or <data dir>/agentgw.yaml), so they need
no running gateway and no token. A new token is printed once and only its SHA-256
is written. Each edit changes that one principal's lines and nothing else, under a
lock (`<config>.lock`), is checked by parsing the result as the gateway would, and
replaces the file atomically (a new file fsynced, then renamed over it, same mode
and owner). A running gateway takes the change up within a second (it watches the
file; SIGHUP reloads at once): a rotated or revoked token stops working then.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clients.cli.common import (
    EXIT_OK,
    CliError,
    Commands,
    add_output_options,
    is_json,
    print_records,
)

ROLES = ("agent", "approver", "auditor", "admin")


def add_commands(sub: Commands) -> None:
    """Adds `agentgw tokens`."""
    tokens = sub.add_parser(
        "tokens", help="issue, rotate and revoke principals' tokens in the config file"
    ).add_subparsers(metavar="ACTION")
    issue = _with_config_options(
        tokens.add_parser("issue", help="add a principal with a new token (printed once)")
    )
    issue.add_argument("name", help="the principal's name (an agent's is its agent_id)")
    issue.add_argument("--role", required=True, choices=ROLES)
    issue.set_defaults(run=run_tokens_issue)
    rotate = _with_config_options(
        tokens.add_parser("rotate", help="give a principal a new token; the old one stops working")
    )
    rotate.add_argument("name")
    rotate.set_defaults(run=run_tokens_rotate)
    revoke = _with_config_options(
        tokens.add_parser("revoke", help="remove a principal; its token stops working")
    )
    revoke.add_argument("name")
    revoke.set_defaults(run=run_tokens_revoke)
    listing = _with_config_options(
        tokens.add_parser("list", help="the principals in the config (never their tokens)")
    )
    listing.set_defaults(run=run_tokens_list)


def _with_config_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--config", type=Path, help="the gateway's config file (env AGENTGW_CONFIG)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="the gateway's data dir, whose agentgw.yaml is the config (env AGENTGW_DATA_DIR)",
    )
    add_output_options(parser)
    return parser


def new_token() -> str:
    return f"agw_{secrets.token_urlsafe(32)}"


def run_tokens_issue(args: argparse.Namespace) -> int:
    token = new_token()
    path = edit_config(args, "add", args.name, args.role, token)
    _print_token(args, "issued", args.name, args.role, token, path)
    return EXIT_OK


def run_tokens_rotate(args: argparse.Namespace) -> int:
    token = new_token()
    path = edit_config(args, "replace", args.name, "", token)
    _print_token(args, "rotated", args.name, "", token, path)
    return EXIT_OK


def run_tokens_revoke(args: argparse.Namespace) -> int:
    path = edit_config(args, "remove", args.name, "", "")
    if is_json(args):
        print(json.dumps({"name": args.name, "revoked": True, "config": str(path)}))
    else:
        print(f"revoked {args.name} in {path}: its token stops working once the gateway")
        print("has read the file (within a second; SIGHUP reloads at once)")
    return EXIT_OK


def edit_config(args: argparse.Namespace, change: str, name: str, role: str, token: str) -> Path:
    """Applies one change to the principals of the config file, under its lock, and
    replaces the file atomically once the result parses. Returns the file's path."""
    from gateway.config import Overrides, config_path, parse_config
    from gateway.domain.principal_file import add_principal, remove_principal, replace_token
    from gateway.domain.principals import Role, token_digest
    from gateway.errors import ConfigError

    path, _ = config_path(Overrides(config_file=args.config, data_dir=args.data_dir), os.environ)
    # Through a symlink, the file it names: replacing the link would leave that unchanged.
    path = path.resolve()
    edits: dict[str, Callable[[str], str]] = {
        "add": lambda text: add_principal(text, str(path), name, Role(role), token_digest(token)),
        "replace": lambda text: replace_token(text, str(path), name, token_digest(token)),
        "remove": lambda text: remove_principal(text, str(path), name),
    }
    with _locked(path):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CliError(
                f"{path}: no config file; start the gateway once (it writes one there) "
                "or name the config with --config"
            ) from None
        except OSError as e:
            raise CliError(f"{path}: cannot read the config: {e.strerror}") from None
        try:
            changed = edits[change](text)
            parse_config(changed, str(path), path.parent.resolve())
        except ConfigError as e:
            raise CliError(str(e)) from None
        _replace_file(path, changed)
    return path


def run_tokens_list(args: argparse.Namespace) -> int:
    from gateway.config import Overrides, config_path, parse_config
    from gateway.errors import ConfigError

    path, _ = config_path(Overrides(config_file=args.config, data_dir=args.data_dir), os.environ)
    try:
        config = parse_config(path.read_text(encoding="utf-8"), str(path), path.parent.resolve())
    except OSError as e:
        raise CliError(f"{path}: cannot read the config: {e.strerror}") from None
    except ConfigError as e:
        raise CliError(str(e)) from None
    rows = [
        {
            "name": p.name,
            "role": p.role.value,
            "token": bool(p.token_sha256),
            "client_certificate": p.client_certificate,
            "owns": sorted(p.owns),
        }
        for p in config.principals
    ]
    if is_json(args):
        print_records(rows, args.format)
    else:
        print(f"{'NAME':<24} {'ROLE':<9} {'TOKEN':<6} CLIENT CERTIFICATE")
        for row in rows:
            token = "yes" if row["token"] else "no"
            print(f"{row['name']:<24} {row['role']:<9} {token:<6} {row['client_certificate']}")
    return EXIT_OK


def _print_token(
    args: argparse.Namespace, done: str, name: str, role: str, token: str, path: Path
) -> None:
    if is_json(args):
        document: dict[str, Any] = {"name": name, "token": token, "config": str(path)}
        if role:
            document["role"] = role
        print(json.dumps(document))
        return
    what = f"{name} ({role})" if role else name
    print(f"{done} a token for {what} in {path}; it is shown only now:")
    print(token)
    print(
        "The gateway takes it up within a second (SIGHUP: at once)"
        + ("; the old token stops working then." if done == "rotated" else "."),
        file=sys.stderr,
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds `<config>.lock` exclusively: two edits at once never lose one."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise CliError(f"{lock_path}: cannot lock the config: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _replace_file(path: Path, text: str) -> None:
    """Writes a new file beside `path` with its mode and owner, fsyncs it, renames it
    over `path` and fsyncs the folder: a crash leaves the old file or the new one."""
    info = path.stat()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            with contextlib.suppress(PermissionError):
                os.fchown(f.fileno(), info.st_uid, info.st_gid)
            os.fchmod(f.fileno(), info.st_mode & 0o7777)  # as it was, whatever the umask
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
