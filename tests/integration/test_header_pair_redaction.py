"""A [NAME, value] pair with a sensitive NAME loses its value wherever it is: alone,
or in a list that also holds other items."""

from __future__ import annotations

from tests.harness import RunningGateway

SECRET = "planted-header-value-7c1e93f0a2b4"


def test_a_sensitive_header_pair_in_a_mixed_list_is_redacted(gw: RunningGateway) -> None:
    gw.agent().submit(
        "http_request",
        session_id="s1",
        parameters={"headers": [["X-Api-Key", SECRET], ["Accept", "text/html"], None]},
    )
    export = "\n".join(gw.export_lines())
    assert '"Accept","text/html"' in export  # the entry is there
    assert SECRET not in export
