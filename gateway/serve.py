"""The `agentgw serve` process: the gateway run until a signal, its first start, and
`--check`.

`serve` runs an `App` (gateway/app.py) until SIGTERM or SIGINT; SIGHUP reloads the
policy, the principals and the TLS certificates. The logs go to stderr; the lines
for the person at the terminal (the address, and on a first start the tokens) go to
stdout. `check` is `agentgw serve --check`: what a start would load, loaded without
starting anything.
"""

from __future__ import annotations

import asyncio
import os
import signal

from gateway.api.telemetry import provider_from_env
from gateway.api.tls import CertificateFiles, check_cleartext
from gateway.app import App
from gateway.config import Config, FirstRun
from gateway.errors import ConfigError
from gateway.logs import configure_logging
from gateway.services.setup_check import Check, check_setup


def check(config: Config, first_run: FirstRun | None) -> list[Check]:
    """`agentgw serve --check`: the transport, then what check_setup checks."""
    try:
        check_cleartext(config)
        if config.tls.enabled:
            CertificateFiles(config.tls)
            mode = "mTLS" if config.tls.mutual else "TLS"
            transport = Check("transport", True, f"{mode} on {config.listen}")
        else:
            transport = Check("transport", True, f"cleartext on {config.listen}")
    except ConfigError as e:
        transport = Check("transport", False, str(e))
    return [transport, *check_setup(config, first_run)]


async def serve(config: Config, first_run: FirstRun | None = None) -> None:
    """Runs until SIGTERM/SIGINT; SIGHUP reloads the policy, the principals and the TLS
    certificates.

    Logs go to stderr (JSON by default); the lines for the person at the terminal (the
    address, and on a first start the tokens) go to stdout, so neither mixes into the
    other. A first start's config is written only once the server listens."""
    configure_logging(
        config.log_level, config.redaction, log_format=config.logs.format, file=config.logs.file
    )
    tracer_provider = provider_from_env(os.environ)
    app = App(config, tracer_provider=tracer_provider)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    try:
        if first_run is not None:
            first_run.make_folder()
        port = await app.start()
        if first_run is not None:
            _write_first_run(first_run)
        loop.add_signal_handler(signal.SIGHUP, app.reload)
        host = config.listen.rpartition(":")[0]
        print(f"agentgw listening on {host}:{port}", flush=True)
        if first_run is not None:
            print(first_run_banner(first_run), flush=True)
        await stopping.wait()
    finally:
        await app.stop()
        if tracer_provider is not None:
            await asyncio.to_thread(tracer_provider.shutdown)  # exports what is pending


def _write_first_run(first_run: FirstRun) -> None:
    try:
        first_run.write()
    except FileExistsError:
        raise ConfigError(
            f"{first_run.path}: another process wrote this config while the gateway "
            "started, so the tokens made for it are void; start the gateway again"
        ) from None
    except OSError as e:
        raise ConfigError(f"{first_run.path}: cannot write the config: {e.strerror}") from e


def first_run_banner(first_run: FirstRun) -> str:
    tokens = first_run.tokens
    lines = [
        "",
        f"First start: generated config {first_run.path} with these tokens.",
        "They are shown only now (the config keeps only their SHA-256):",
    ]
    for name, token in tokens.items():
        lines.append(f"  {name:<11} {token}")
    lines += [
        "For example, in another terminal:",
        f"  export AGENTGW_TOKEN={tokens.get('demo-agent', '')}",
        "More principals: agentgw tokens issue NAME --role ROLE",
        "",
    ]
    return "\n".join(lines)
