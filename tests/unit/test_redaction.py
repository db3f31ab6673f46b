"""Redaction: secrets under sensitive keys, in header lists, URLs, free text and in
well-known credential formats never leave the gateway; everything else stays readable."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.domain.actions import ActionRequest
from gateway.domain.redaction import (
    REDACTED,
    SENSITIVE_KEY_PARTS,
    RedactionRules,
    Redactor,
    is_sensitive_key,
    key_word,
    key_words,
    redact,
    redact_text,
    value_pattern,
)
from tests.planted import LEAKED_KEYS

# Realistic-looking credentials in each known format (none of them is real).
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFuYSJ9"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
TOKENS = {
    "agentgw": "agw_q3Xr0-9_ZkYb7TmWc2LpNd4HsVf8GjA1eUo6iKyRn5B",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "aws_session": "ASIAY34FZKBOKMUTVV7A",
    "github": "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "github_fine_grained": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789AB",
    "gitlab": "glpat-Xy9z8W7v6U5t4S3r2Q1p",
    "slack_bot": "xoxb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "slack_user": "xoxp-1234567890-1234567890-1234567890-0123456789abcdef0123456789abcdef",
    "stripe_live": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "stripe_test": "sk_test_51HqLyjWDarjtT1zdp7dcAbC",
    "stripe_restricted": "rk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "google_api": "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
    "openai": "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90",
    "openai_legacy": "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",
    "anthropic": "sk-ant-api03-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12-Wx34AA",
    "npm": "npm_Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78",
    "pypi": "pypi-AgEIcHlwaS5vcmcCJGI4YmNhMDA5LTg2ZjItNDg4Ni1hZjQ4LTQ2ZmM0NmQ1YzM4ZQ",
    "huggingface": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567",
    "sendgrid": "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",
    "square": "sq0csp-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq",
    "mailchimp": "0123456789abcdef0123456789abcdef-us12",
    "telegram": "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1",
    "google_oauth": "ya29.a0AfH6SMBx1234567890abcdefghij",
    "jwt": JWT,
}
PEM_BODY = [
    "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB",
    "aFDrBz9vFqU4yD8kKXqP2Z9vJ7oGfCKh4bZ2XhlRMkO4YqQvB1qEa1pS9bPjmw3k",
    "ZQIDAQABAoIBAQCqDk2ZnmvQyF4ZBvF6N1XqE1pH3GqZb4Hj7kL9mN0pQ2rS3tU4",
]


def pem(kind: str = "RSA PRIVATE KEY", lines: list[str] = PEM_BODY) -> str:
    return "\n".join([f"-----BEGIN {kind}-----", *lines, f"-----END {kind}-----"])


# -- key names ---------------------------------------------------------------------------


def test_sensitive_key_parts_match_the_design() -> None:
    assert set(SENSITIVE_KEY_PARTS) == {"password", "token", "key", "secret", "credential"}


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("X-Auth-Token", ("x", "auth", "token")),
        ("apiKey", ("api", "key")),
        ("APIKey", ("api", "key")),
        ("userPIN2", ("user", "pin", "2")),
        ("set-cookie", ("set", "cookie")),
        ("private.key name", ("private", "key", "name")),
        ("SESSION_COOKIE", ("session", "cookie")),
        ("", ()),
    ],
)
def test_key_names_split_into_normalised_word_parts(name: str, words: tuple[str, ...]) -> None:
    assert key_words(name) == words


@pytest.mark.parametrize(
    "name",
    [
        # The design's words, as substrings, as before.
        "password",
        "PASSWORD",
        "db_password",
        "passwordHash",
        "access_token",
        "refreshToken",
        "api_key",
        "KEY_ID",
        "client_secret",
        "SecretValue",
        "credentials",
        "aws_Credentials",
        # What probing found leaking (issue 7).
        "passwd",
        "pwd",
        "authorization",
        "Authorization",
        "auth",
        "bearer",
        "cookie",
        "set-cookie",
        "Set-Cookie",
        "jwt",
        "passphrase",
        "otp",
        "pin",
        "private_key",
        "apiKey",
        "X-Auth-Token",
        # Other spellings of the same words.
        "PIN",
        "userPin",
        "card-pin",
        "OTP_CODE",
        "totp",
        "x-auth",
        "AuthHeader",
        "proxy-authorization",
        "sessionCookie",
        "session-cookie",
        "id_jwt",
        "mypwd",
        "db_pass",
        "pass_word",
        "sig",
        "X-Amz-Signature",
        "signature",
        "hmac",
        "cvv",
        "creds",
        "privateKey",
        "Private Key",
        "mnemonic",
    ],
)
def test_names_with_a_sensitive_word_are_sensitive(name: str) -> None:
    assert is_sensitive_key(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "user",
        "amount",
        "to",
        "passw",
        "tok",
        "ke",
        "secre",
        "credit",
        # Short words that occur inside ordinary words must not hide them.
        "author",
        "Author",
        "authored_by",
        "authority",
        "shipping",
        "shipping_address",
        "opinion",
        "spinner",
        "pinned",
        "compass",
        "passenger",
        "bypass",
        "design",
        "assignee",
        "signal",
        "footprint",
        "hotpot",
        "oauth_provider",
        "session_id",
        "sessionId",
        "cookbook",
    ],
)
def test_other_names_are_not_sensitive(name: str) -> None:
    assert not is_sensitive_key(name)


# -- values under keys (as before) -------------------------------------------------------


def test_top_level_sensitive_values_are_redacted() -> None:
    out = redact({"user": "ana", "password": "hunter2", "API_KEY": "abc123"})
    assert out == {"user": "ana", "password": REDACTED, "API_KEY": REDACTED}


@pytest.mark.parametrize("name", LEAKED_KEYS)
def test_values_under_the_keys_that_leaked_are_redacted(name: str) -> None:
    out = redact({"to": "bob@example.com", name: "hunter2-leaked", "nested": {name: 1234.0}})
    assert out == {"to": "bob@example.com", name: REDACTED, "nested": {name: REDACTED}}


def test_values_under_look_alike_keys_are_kept() -> None:
    value = {"author": "ana", "shipping": "express", "opinion": "fine", "session_id": "s1"}
    assert redact(value) == value


def test_whole_subtree_under_a_sensitive_key_is_redacted() -> None:
    out = redact({"credentials": {"user": "ana", "pin": 1234.0}, "tokens": ["a", "b"]})
    assert out == {"credentials": REDACTED, "tokens": REDACTED}


def test_nested_sensitive_values_are_redacted_at_any_depth() -> None:
    value = {"a": {"b": {"c": {"d": {"Secret": "s3", "e": "kept"}}}}}
    assert redact(value) == {"a": {"b": {"c": {"d": {"Secret": REDACTED, "e": "kept"}}}}}


def test_sensitive_values_inside_lists_of_objects_are_redacted() -> None:
    value = {
        "accounts": [
            {"name": "main", "access_token": "t1"},
            {"name": "backup", "nested": [{"password": "p2"}, "plain"]},
        ]
    }
    assert redact(value) == {
        "accounts": [
            {"name": "main", "access_token": REDACTED},
            {"name": "backup", "nested": [{"password": REDACTED}, "plain"]},
        ]
    }


def test_top_level_list_is_walked() -> None:
    assert redact([{"token": "t"}, 1.0, None]) == [{"token": REDACTED}, 1.0, None]


def test_tuples_are_walked_and_come_back_as_lists() -> None:
    assert redact({"items": ({"secret": "s"}, "x")}) == {"items": [{"secret": REDACTED}, "x"]}


def test_non_sensitive_values_are_untouched() -> None:
    value = {
        "amount": 12.5,
        "count": 3,
        "flag": False,
        "nothing": None,
        "to": "bob@example.com",
        "note": "my password is hunter2",  # no `name: value` shape: kept
        "url": "https://example.com:8443/reports/q3?format=pdf&page=2#top",
        "path": "/home/ana/report-2024_q3.pdf",
        "items": [1.0, "two", {"three": 3.0}],
        "when": "2024-05-01T10:30:00Z",
    }
    assert redact(value) == value


def test_scalars_are_returned_as_they_are() -> None:
    for scalar in ("text", 1, 2.5, True, None):
        assert redact(scalar) == scalar


def test_sensitive_key_with_a_null_or_empty_value_is_still_redacted() -> None:
    assert redact({"token": None, "secret": ""}) == {"token": REDACTED, "secret": REDACTED}


def test_non_string_keys_are_checked_by_their_text() -> None:
    assert redact({1: "one", "key": "k"}) == {1: "one", "key": REDACTED}


def test_a_secret_used_as_a_key_is_redacted_too() -> None:
    assert redact({TOKENS["github"]: "owner"}) == {REDACTED: "owner"}


def test_input_is_not_mutated() -> None:
    value = {
        "password": "hunter2",
        "nested": {"token": "t", "list": [{"secret": "s"}, {"ok": "v"}]},
        "headers": [{"name": "Authorization", "value": "Bearer abcdefgh12345678"}],
        "text": f"use {TOKENS['aws']}",
    }
    before = copy.deepcopy(value)
    out = redact(value)
    assert value == before
    out["nested"]["list"][1]["ok"] = "changed"
    out["headers"][0]["name"] = "changed"
    assert value == before  # the output shares no containers with the input


# -- header lists ------------------------------------------------------------------------


@pytest.mark.parametrize("name_field", ["name", "header", "Name", "HEADER"])
def test_header_list_entries_named_by_a_sensitive_header_are_redacted(name_field: str) -> None:
    headers = [
        {name_field: "Authorization", "value": "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="},
        {name_field: "Cookie", "value": "sid=31d4d96e407aad42"},
        {name_field: "X-Api-Key", "value": "hunter2-leaked"},
        {name_field: "Accept", "value": "application/json"},
    ]
    assert redact({"headers": headers}) == {
        "headers": [
            {name_field: "Authorization", "value": REDACTED},
            {name_field: "Cookie", "value": REDACTED},
            {name_field: "X-Api-Key", "value": REDACTED},
            {name_field: "Accept", "value": "application/json"},
        ]
    }


def test_key_value_header_entries_lose_the_value_of_a_sensitive_header() -> None:
    # `key` is itself a sensitive key name (the design's rule), so its value goes too.
    out = redact(
        [{"key": "Authorization", "value": "hunter2-leaked"}, {"Key": "Accept", "Value": "*/*"}]
    )
    assert out == [{"key": REDACTED, "value": REDACTED}, {"Key": REDACTED, "Value": "*/*"}]


def test_header_values_lists_are_redacted_whole() -> None:
    out = redact([{"name": "Set-Cookie", "values": ["a=1", "b=2"]}])
    assert out == [{"name": "Set-Cookie", "values": REDACTED}]


def test_header_pairs_are_redacted() -> None:
    out = redact({"headers": [["Authorization", "hunter2-leaked"], ["Accept", "text/html"]]})
    assert out == {"headers": [["Authorization", REDACTED], ["Accept", "text/html"]]}


def test_argument_vectors_lose_the_value_after_a_sensitive_flag() -> None:
    argv = ["mysql", "--password", "hunter2", "--user", "ana", "-p", "3306", "--token", "t"]
    out = redact({"argv": argv})
    assert out == {
        "argv": [
            "mysql",
            "--password",
            REDACTED,
            "--user",
            "ana",
            "-p",
            "3306",
            "--token",
            REDACTED,
        ]
    }


# -- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://user:pass@host/p?token=abc123&q=x",
            f"https://user:{REDACTED}@host/p?token={REDACTED}&q=x",
        ),
        ("redis://:s3cret@redis.internal:6379/0", f"redis://:{REDACTED}@redis.internal:6379/0"),
        ("postgres://app:p@ss@db:5432/app", f"postgres://app:{REDACTED}@db:5432/app"),
        ("https://h/x?api_key=abc&sig=def", f"https://h/x?api_key={REDACTED}&sig={REDACTED}"),
        ("https://h/x?access_token=abc#top", f"https://h/x?access_token={REDACTED}#top"),
        ("https://h/cb#access_token=abc&state=s", f"https://h/cb#access_token={REDACTED}&state=s"),
        (
            "https://h/x?X-Amz-Signature=ab12&X-Amz-Credential=AK%2F1",
            (f"https://h/x?X-Amz-Signature={REDACTED}&X-Amz-Credential={REDACTED}"),
        ),
        ("https://h/x?api%5Fkey=abc", f"https://h/x?api%5Fkey={REDACTED}"),
        ("https://h/x?auth=abc&page=2", f"https://h/x?auth={REDACTED}&page=2"),
        ("https://h/x?passwd=&page=2", f"https://h/x?passwd={REDACTED}&page=2"),
    ],
)
def test_url_credentials_are_redacted_and_the_rest_kept(url: str, expected: str) -> None:
    assert redact_text(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com:8443/a/b?format=pdf&page=2#section-3",
        "https://ana@example.com/",  # a user name alone is not a secret
        "http://[::1]:8080/health",
        "mailto:bob@example.com?subject=Report",
        "https://example.com/search?q=password+reset&author=ana",
    ],
)
def test_urls_without_credentials_are_unchanged(url: str) -> None:
    assert redact_text(url) == url


# -- free text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abcdef123456", f"Authorization: Bearer {REDACTED}"),
        ("password: hunter2, then retry", f"password: {REDACTED}, then retry"),
        ("set PGPASSWORD=hunter2 first", f"set PGPASSWORD={REDACTED} first"),
        ('{"password": "hunter2", "user": "ana"}', f'{{"password": "{REDACTED}", "user": "ana"}}'),
        ("{'api_key': 'abc'}", f"{{'api_key': '{REDACTED}'}}"),
        ('{\\"token\\": \\"abc\\"}', f'{{\\"token\\": \\"{REDACTED}\\"}}'),
        (
            '{"credentials": {"user": "a", "pin": 1}, "to": "b"}',
            f'{{"credentials": {REDACTED}, "to": "b"}}',
        ),
        ("X-Api-Key: abc123", f"X-Api-Key: {REDACTED}"),
        ("pin: 1234 otp=998877", f"pin: {REDACTED} otp={REDACTED}"),
        ("mysql --password=hunter2 --token abc", f"mysql --password={REDACTED} --token {REDACTED}"),
        ("curl -u admin:hunter2 https://h", f"curl -u admin:{REDACTED} https://h"),
        ("AccountKey=abc==;EndpointSuffix=core", f"AccountKey={REDACTED};EndpointSuffix=core"),
        (
            "//registry.npmjs.org/:_authToken=abc-123",
            f"//registry.npmjs.org/:_authToken={REDACTED}",
        ),
    ],
)
def test_named_values_in_free_text_are_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Text cut off inside the quoted value (a truncated JSON document, a log line
        # cut at a limit): the open value runs to the end of the text or its line.
        ('{"user": {"client_secret": "QQ0000', f'{{"user": {{"client_secret": "{REDACTED}'),
        ("{'api_key': 'abc", f"{{'api_key': '{REDACTED}"),
        ('{\\"token\\": \\"abc', f'{{\\"token\\": \\"{REDACTED}'),
        ('password: "abc\nnext: 1', f'password: "{REDACTED}\nnext: 1'),
        ('"password": "abc\\', f'"password": "{REDACTED}\\'),
        ('--token "abc', f'--token "{REDACTED}'),
    ],
)
def test_a_quoted_value_cut_off_before_its_closing_quote_is_redacted(
    text: str, expected: str
) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The author checked the shipping address; in my opinion it is fine.",
        "Note: the bearer of bad news, a basic idea. Ratio 3:2 at 10:30.",
        "Use the design doc (see section 2) - then assign it to ana.",
        "x == y and a != b, total = 12",
        "my password is hunter2",  # no `name: value` shape
    ],
)
def test_prose_is_unchanged(text: str) -> None:
    assert redact_text(text) == text


# -- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TOKENS))
def test_well_known_credential_formats_are_redacted_wherever_they_appear(kind: str) -> None:
    token = TOKENS[kind]
    text = f"The agent found {token} in the config, then stopped."
    assert redact_text(text) == f"The agent found {REDACTED} in the config, then stopped."
    assert redact({"note": token, "list": [f"({token})"]}) == {
        "note": REDACTED,
        "list": [f"({REDACTED})"],
    }


def test_bearer_and_basic_credentials_keep_their_scheme() -> None:
    basic = base64.b64encode(b"ana:hunter2").decode()
    text = f"curl -H 'Authorization: Bearer {JWT}' -H 'X: Basic {basic}'"
    assert (
        redact_text(text) == f"curl -H 'Authorization: Bearer {REDACTED}' -H 'X: Basic {REDACTED}'"
    )
    assert redact_text("bearer abcdef0123456789") == f"bearer {REDACTED}"


def test_webhook_urls_keep_their_host() -> None:
    slack = "https://hooks.slack.com/services/T0123ABCD/B0123ABCD/abcdefghijklmnopqrstuvwx"
    discord = "https://discord.com/api/webhooks/123456789012345678/AbCdEf-GhIjKl_MnOp"
    assert redact_text(slack) == f"https://hooks.slack.com/services/{REDACTED}"
    assert redact_text(discord) == f"https://discord.com/api/webhooks/123456789012345678/{REDACTED}"


def test_tokens_inside_words_are_not_formats() -> None:
    text = "risk-assessment-framework-document and the task-management_board_2024"
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "kind",
    [
        "RSA PRIVATE KEY",
        "PRIVATE KEY",
        "EC PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
    ],
)
def test_private_key_blocks_keep_only_their_armour(kind: str) -> None:
    text = f"key file:\n{pem(kind)}\ndone"
    out = redact_text(text)
    assert out == f"key file:\n-----BEGIN {kind}-----\n{REDACTED}\n-----END {kind}-----\ndone"


def test_a_cut_off_private_key_block_is_redacted_to_the_end() -> None:
    text = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(PEM_BODY[:2])
    assert redact_text(text) == f"-----BEGIN RSA PRIVATE KEY-----\n{REDACTED}"


def test_certificates_and_public_keys_are_kept() -> None:
    text = "\n".join(["-----BEGIN CERTIFICATE-----", *PEM_BODY, "-----END CERTIFICATE-----"])
    assert redact_text(text) == text


def test_putty_private_keys_are_redacted() -> None:
    text = "PuTTY-User-Key-File-2: ssh-rsa\nEncryption: none\nPrivate-Lines: 14\nAAAAgQ"
    # The header line goes too: `PuTTY-User-Key-File-2` is a name containing "key".
    assert redact_text(text) == f"PuTTY-User-Key-File-2: {REDACTED}\n{REDACTED}"


# -- the request ---------------------------------------------------------------------------


def test_request_redacts_parameters_labels_resource_and_reasoning() -> None:
    request = ActionRequest(
        action_id="a-1",
        agent_id="agent-1",
        session_id="s-1",
        action_type="http_request",
        resource=f"https://ana:hunter2@api.example.com/v1/items?token={TOKENS['github']}&page=2",
        parameters={
            "headers": [{"name": "Authorization", "value": f"Bearer {JWT}"}],
            "pwd": "hunter2",
            "body": f"key {TOKENS['stripe_live']}",
        },
        reasoning=f"Retrying with Authorization: Bearer {JWT} because of a 401.",
        labels={"team": "billing", "session_cookie": "sid=1"},
    )
    before = copy.deepcopy(request)
    out = Redactor().request(request)
    assert request == before
    assert (
        out.resource == f"https://ana:{REDACTED}@api.example.com/v1/items?token={REDACTED}&page=2"
    )
    assert out.parameters == {
        "headers": [{"name": "Authorization", "value": REDACTED}],
        "pwd": REDACTED,
        "body": f"key {REDACTED}",
    }
    assert out.reasoning == f"Retrying with Authorization: Bearer {REDACTED} because of a 401."
    assert out.labels == {"team": "billing", "session_cookie": REDACTED}
    assert (out.action_id, out.agent_id, out.session_id, out.action_type) == (
        "a-1",
        "agent-1",
        "s-1",
        "http_request",
    )


# -- configured rules ----------------------------------------------------------------------


def test_configured_key_words_match_word_parts_in_any_spelling() -> None:
    redactor = Redactor(RedactionRules(key_words=(key_word("ssn"), key_word("Account Number"))))
    value = {
        "SSN": "1",
        "customerSsn": "2",
        "accountNumber": "3",
        "ACCOUNT-NUMBER": "4",
        "accountnumber": "5",
        "lessons": "kept",
        "account": "kept",
        "number": "kept",
        "password": "built-ins still apply",
    }
    assert redactor.value(value) == {
        "SSN": REDACTED,
        "customerSsn": REDACTED,
        "accountNumber": REDACTED,
        "ACCOUNT-NUMBER": REDACTED,
        "accountnumber": REDACTED,
        "lessons": "kept",
        "account": "kept",
        "number": "kept",
        "password": REDACTED,
    }
    assert redactor.text("ssn: 078-05-1120") == f"ssn: {REDACTED}"
    assert redact({"ssn": "1"}) == {"ssn": "1"}  # not a built-in


def test_configured_patterns_replace_the_match_or_its_secret_group() -> None:
    rules = RedactionRules(
        patterns=(
            value_pattern(r"ACME-[0-9a-f]{8}"),
            value_pattern(r"employee (?P<secret>\d{6})"),
        )
    )
    redactor = Redactor(rules)
    text = "use ACME-deadbeef for employee 123456, see AKIAIOSFODNN7EXAMPLE"
    out = redactor.text(text)
    assert out == f"use {REDACTED} for employee {REDACTED}, see {REDACTED}"
    assert redactor.text(out) == out
    assert redactor.value({"note": text}) == {"note": out}


def test_a_configured_pattern_never_rewrites_an_earlier_marker() -> None:
    redactor = Redactor(RedactionRules(patterns=(value_pattern(r"RED\w+"),)))
    once = redactor.text("password: hunter2 REDWOOD")
    assert once == f"password: {REDACTED} {REDACTED}"
    assert redactor.text(once) == once


@pytest.mark.parametrize(
    ("source", "why"),
    [("ACME-[0-9", "invalid regular expression"), ("x*", "matches the empty string")],
)
def test_unusable_patterns_are_refused(source: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        value_pattern(source)


def test_a_key_word_needs_a_letter_or_digit() -> None:
    assert key_word(" Account-Number ") == "account number"
    with pytest.raises(ValueError):
        key_word("--")


# -- idempotence ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        *TOKENS.values(),
        pem(),
        "https://user:pass@host/p?token=abc&sig=&q=x",
        "Authorization: Bearer abcdef123456 and password: 'x y'",
        '{"credentials": {"a": [1, {"b": 2}]}, "c": "d"}',
        "--token abc -u ana:pw",
    ],
)
def test_redacting_twice_is_redacting_once(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once
    value = {"t": text, "password": text, "h": [{"name": "Cookie", "value": text}]}
    assert redact(redact(value)) == redact(value)


# -- properties: planted secrets never survive ---------------------------------------------

alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
upper_digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
b64url = alnum + "-_"


def chars(alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=size, max_size=size)


def prefixed(prefix: str, alphabet: str, size: int) -> st.SearchStrategy[str]:
    return chars(alphabet, size).map(lambda body: prefix + body)


def b64url_json(draw: st.DrawFn) -> str:
    raw = draw(st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 10**9), min_size=1))
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


@st.composite
def jwts(draw: st.DrawFn) -> str:
    signature = draw(chars(b64url, 43))
    return f"{b64url_json(draw)}.{b64url_json(draw)}.{signature}"


format_tokens: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["AKIA", "ASIA", "ABIA", "ACCA"]).flatmap(
        lambda p: prefixed(p, upper_digits, 16)
    ),
    st.sampled_from(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]).flatmap(
        lambda p: prefixed(p, alnum, 36)
    ),
    prefixed("github_pat_", alnum + "_", 82),
    st.sampled_from(["glpat-", "gldt-", "glrt-"]).flatmap(lambda p: prefixed(p, b64url, 20)),
    st.sampled_from(["xoxb-", "xoxp-", "xoxa-"]).flatmap(
        lambda p: chars("0123456789", 12).flatmap(
            lambda n: prefixed(f"{p}{n}-{n}-", alnum.lower(), 24)
        )
    ),
    st.sampled_from(["sk_live_", "sk_test_", "rk_live_"]).flatmap(lambda p: prefixed(p, alnum, 24)),
    prefixed("AIza", b64url, 35),
    st.sampled_from(["sk-", "sk-proj-", "sk-ant-api03-", "sk-svcacct-"]).flatmap(
        lambda p: prefixed(p, b64url, 40)
    ),
    prefixed("npm_", alnum, 36),
    prefixed("hf_", alnum, 34),
    prefixed("agw_", b64url, 43),
    jwts(),
)


@st.composite
def bearer_credentials(draw: st.DrawFn) -> tuple[str, str]:
    token = draw(chars(alnum, 24)) + draw(chars("0123456789", 2))
    scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER"]))
    return f"{scheme} {token}", token


@st.composite
def basic_credentials(draw: st.DrawFn) -> tuple[str, str]:
    user = draw(chars("abcdefghij", 5))
    password = draw(chars(alnum, 12))
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Basic {encoded}", encoded


def styled(parts: list[str], style: str) -> str:
    if style == "camel":
        return parts[0] + "".join(p.capitalize() for p in parts[1:])
    if style == "pascal":
        return "".join(p.capitalize() for p in parts)
    if style == "kebab":
        return "-".join(parts)
    if style == "header":
        return "-".join(p.capitalize() for p in parts)
    if style == "upper":
        return "_".join(parts).upper()
    if style == "dotted":
        return ".".join(parts)
    return "_".join(parts)


SENSITIVE_WORDS = [
    ["password"],
    ["passwd"],
    ["pwd"],
    ["token"],
    ["access", "token"],
    ["api", "key"],
    ["private", "key"],
    ["secret"],
    ["client", "secret"],
    ["credential"],
    ["authorization"],
    ["auth"],
    ["bearer"],
    ["cookie"],
    ["set", "cookie"],
    ["session", "cookie"],
    ["jwt"],
    ["passphrase"],
    ["otp"],
    ["pin"],
    ["signature"],
    ["sig"],
]
STYLES = ["snake", "camel", "pascal", "kebab", "header", "upper", "dotted"]
sensitive_names = st.builds(
    lambda prefix, words, style: styled(prefix + words, style),
    st.sampled_from([[], ["x"], ["db"], ["user"], ["my"]]),
    st.sampled_from(SENSITIVE_WORDS),
    st.sampled_from(STYLES),
)
PLAIN_KEYS = ["to", "subject", "author", "shipping", "opinion", "amount", "items", "note", "id"]
words = st.lists(
    st.sampled_from(["the", "agent", "will", "send", "it", "now", "ok"]), max_size=4
).map(" ".join)
markers = chars("0123456789abcdef", 16).map(lambda h: f"s3cr3t{h}")


@st.composite
def planted(draw: st.DrawFn) -> tuple[Any, list[str]]:
    """A JSON-like value with a secret planted in one of the ways it leaked; returns it
    with the substrings that must not survive."""
    name = draw(sensitive_names)
    url_name = name.replace(".", "_")
    marker = draw(markers)
    way = draw(
        st.sampled_from(
            [
                "key",
                "format",
                "format_in_text",
                "bearer",
                "basic",
                "header_list",
                "pairs",
                "url",
                "assignment",
                "json_text",
                "pem",
            ]
        )
    )
    before, after = draw(words), draw(words)
    if way == "key":
        value: Any = {
            name: draw(
                st.one_of(
                    st.just(marker),
                    st.lists(st.just(marker), min_size=1),
                    st.just({"inner": marker}),
                )
            )
        }
        secrets = [marker]
    elif way == "format":
        token = draw(format_tokens)
        value, secrets = token, [token]
    elif way == "format_in_text":
        token = draw(format_tokens)
        value, secrets = f"{before} {token} {after}", [token]
    elif way in ("bearer", "basic"):
        credentials, secret = draw(bearer_credentials() if way == "bearer" else basic_credentials())
        value, secrets = f"{before} Authorization: {credentials} {after}", [secret]
    elif way == "header_list":
        field = draw(st.sampled_from(["name", "header", "Name"]))
        value = [{field: name, "value": marker}, {field: "Accept", "value": "text/html"}]
        secrets = [marker]
    elif way == "pairs":
        value, secrets = [[name, marker], ["Accept", "text/html"]], [marker]
    elif way == "url":
        password = draw(markers)
        value = f"{before} https://ana:{password}@example.com/p?{url_name}={marker}&q=x {after}"
        secrets = [password, marker]
    elif way == "assignment":
        separator = draw(st.sampled_from(["=", ": ", " = ", ":="]))
        value, secrets = f"{before} {name}{separator}{marker} {after}", [marker]
    elif way == "json_text":
        value, secrets = json.dumps({"to": "ana", name: marker}), [marker]
    else:
        value, secrets = f"{before}\n{pem(lines=[marker + 'A' * 40])}\n{after}", [marker]
    return value, secrets


@st.composite
def nested(draw: st.DrawFn) -> tuple[Any, list[str]]:
    """A planted secret, wrapped in a few layers of dicts and lists with plain data."""
    value, secrets = draw(planted())
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            siblings = draw(st.dictionaries(st.sampled_from(PLAIN_KEYS), words, max_size=3))
            value = {**siblings, draw(st.sampled_from(PLAIN_KEYS)): value}
        else:
            value = [draw(words), value]
    return value, secrets


@given(sensitive_names)
def test_every_spelling_of_a_sensitive_word_is_sensitive(name: str) -> None:
    assert is_sensitive_key(name)


@given(nested())
def test_planted_secrets_never_survive_in_values(case: tuple[Any, list[str]]) -> None:
    value, secrets = case
    before = copy.deepcopy(value)
    out = Redactor().value(value)
    dumped = json.dumps(out)
    for secret in secrets:
        assert secret not in dumped
    assert value == before
    assert Redactor().value(out) == out


@given(st.lists(planted(), min_size=1, max_size=4), words)
def test_planted_secrets_never_survive_in_text(
    cases: list[tuple[Any, list[str]]], glue: str
) -> None:
    texts = [json.dumps(v) if not isinstance(v, str) else v for v, _ in cases]
    text = f" {glue} ".join(texts)
    out = Redactor().text(text)
    for _, secrets in cases:
        for secret in secrets:
            assert secret not in out
    assert Redactor().text(out) == out


@given(nested(), planted(), planted())
def test_planted_secrets_never_survive_in_a_request(
    params: tuple[Any, list[str]], resource: tuple[Any, list[str]], reasoning: tuple[Any, list[str]]
) -> None:
    request = ActionRequest(
        action_id="a-1",
        agent_id="agent-1",
        session_id="s-1",
        action_type="send_email",
        resource=json.dumps(resource[0]) if not isinstance(resource[0], str) else resource[0],
        parameters={"p": params[0]},
        reasoning=json.dumps(reasoning[0]) if not isinstance(reasoning[0], str) else reasoning[0],
        labels={"team": "billing"},
    )
    out = Redactor().request(request)
    dumped = json.dumps([out.resource, out.parameters, out.reasoning, out.labels])
    for secret in params[1] + resource[1] + reasoning[1]:
        assert secret not in dumped
    assert out.labels == {"team": "billing"}


# The older property over generated trees: every value under a sensitive key goes.

SENSITIVE_KEYS = ["password", "Api_Key", "ACCESS_TOKEN", "clientSecret", "credentials", "userPin"]
TREE_KEYS = ["user", "amount", "items", "to", "note", "data", "author"]

plain_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.text(alphabet="abcdefghij :=?&-_./", max_size=12)
)
secret_leaves = st.integers(0, 10**6).map(lambda n: f"SECRET-{n}")


def trees(leaves: st.SearchStrategy[Any], secrets: st.SearchStrategy[Any]) -> Any:
    """JSON-like trees; every value under a sensitive key is drawn from `secrets` trees."""
    secret_trees = st.recursive(
        secrets,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.sampled_from(TREE_KEYS + SENSITIVE_KEYS), children, max_size=3)
        ),
        max_leaves=8,
    )

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        plain = st.dictionaries(st.sampled_from(TREE_KEYS), children, max_size=3)
        secret = st.dictionaries(st.sampled_from(SENSITIVE_KEYS), secret_trees, max_size=2)
        mixed = st.tuples(plain, secret).map(lambda pair: {**pair[0], **pair[1]})
        return st.lists(children, max_size=3) | mixed

    return st.recursive(leaves, extend, max_leaves=25)


def values_under_sensitive_keys(value: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if is_sensitive_key(str(k)):
                found.append(v)
            else:
                found += values_under_sensitive_keys(v)
    elif isinstance(value, list):
        for item in value:
            found += values_under_sensitive_keys(item)
    return found


@given(trees(plain_leaves, secret_leaves))
def test_no_value_under_a_sensitive_key_survives_anywhere(value: Any) -> None:
    out = redact(value)
    assert "SECRET-" not in json.dumps(out)
    assert all(v == REDACTED for v in values_under_sensitive_keys(out))


@given(trees(plain_leaves, secret_leaves))
def test_redaction_is_idempotent_and_does_not_mutate(value: Any) -> None:
    before = copy.deepcopy(value)
    once = redact(value)
    assert value == before
    assert redact(once) == once


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_any_text_redacts_idempotently(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once


# -- docs/configuration.md, "Redaction" ----------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def redaction_docs() -> str:
    text = DOCS.read_text(encoding="utf-8")
    return text.split("## Redaction\n", 1)[1].split("\n## ", 1)[0]


def test_the_documented_redaction_section_parses() -> None:
    [block] = re.findall(r"```yaml\n(.*?)```", redaction_docs(), re.DOTALL)
    rules = parse_config(block, "docs/configuration.md", DOCS.parent).redaction
    assert rules.key_words == ("ssn", "account number")
    redactor = Redactor(rules)
    assert redactor.value({"customerSsn": "078-05-1120"}) == {"customerSsn": REDACTED}
    assert redactor.text("employee 123456") == f"employee {REDACTED}"


def test_the_documented_examples_are_what_redaction_does() -> None:
    rows = re.findall(r"^\| `(.+)` \| `(.+)` \|$", redaction_docs(), re.MULTILINE)
    assert len(rows) >= 5
    for submitted, stored in rows:
        assert redact_text(submitted) == stored
