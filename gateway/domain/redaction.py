"""Redaction of secrets in action requests, log records and free text.

Owns the rules that decide what counts as a secret and replaces only the secret
part of a value with "[REDACTED]". Applied before anything is hashed, logged, stored
or returned, because the audit log is append-only: a leaked secret can never be
removed. Pure (no I/O, no grpc/redis), never mutates its input, and idempotent.

What is redacted (the built-ins always apply; `RedactionRules` only adds to them):

- Keys. The whole value under a sensitive key. A key is sensitive when its lowercased
  name contains one of SENSITIVE_KEY_PARTS (the product contract: "keys containing
  password, token, key, secret or credential") or SENSITIVE_KEY_SUBSTRINGS (words no
  common word contains: pwd, passwd, cookie, jwt, ...), or when one of its word parts
  (split on case changes, digits, `-`, `_`, `.` and spaces) is one of
  SENSITIVE_KEY_WORDS (short words that are substrings of ordinary words: pin, otp,
  auth, pass, sig, ...; so `author`, `shipping` and `opinion` are kept). Header lists
  (`{"name"|"key"|"header": NAME, "value": ...}`) and lists of `[NAME, value]` pairs
  are read as keys too.
- Context, in every string: the password of URL userinfo, URL query and fragment
  parameters, `name: value`, `name=value`, `"name": "value"` (a whole JSON object
  or list too) and `--name value` when the name is sensitive (after detect-secrets'
  keyword plugin), header lists written as JSON, and `curl -u user:password`. Only
  the value goes.
- Formats, in every string: `Bearer`/`Basic` credentials, JWTs, PEM and PuTTY private
  keys, and the token formats in `_FORMATS`. These patterns are derived from the
  detect-secrets 1.5.0 plugins (Yelp, Apache-2.0; detect_secrets/plugins/ at
  https://github.com/Yelp/detect-secrets: aws, basic_auth, discord, github_token,
  gitlab_token, jwt, mailchimp, npm, openai, private_key, pypi_token,
  sendgrid, slack, square_oauth, stripe, telegram_token), widened where a plugin
  misses current formats (GitHub fine-grained tokens, Stripe test keys, sk-proj- and
  sk-ant- keys, a JWT's signature) and extended with Google, Hugging Face, npm_ token
  and Discord webhook formats and agentgw's own `agw_` tokens. detect-secrets is not
  a runtime dependency: its scanner is line-oriented with process-wide settings,
  pulls in `requests` for verification, and measured 0.35 ms (ten regex plugins) to
  6.5 ms (defaults) for the strings of one typical request, against tens of
  microseconds for this module.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

from gateway.domain.actions import ActionRequest

REDACTED = "[REDACTED]"

# The design's words: matched as substrings of the lowercased key name.
SENSITIVE_KEY_PARTS = ("password", "token", "key", "secret", "credential")
# Also substrings: no common word contains them, so `sessionCookie`, `mypwd` match.
SENSITIVE_KEY_SUBSTRINGS = (
    "passwd",
    "pwd",
    "passphrase",
    "passcode",
    "authorization",
    "bearer",
    "cookie",
    "jwt",
    "signature",
    "hmac",
    "mnemonic",
)
# Whole word parts only: as substrings they would hit `author`, `shipping`, `opinion`,
# `footprint`, `compass`, `design`.
SENSITIVE_KEY_WORDS = frozenset(
    {"pass", "pin", "otp", "totp", "hotp", "auth", "sig", "cvv", "cvc", "cred", "creds"}
)

_WORD_PART = re.compile(r"[A-Z]+(?![^\W\d_A-Z])|[A-Z]?[^\W\d_A-Z]+|\d+")


def key_words(name: str) -> tuple[str, ...]:
    """A key name's normalised word parts: `X-Auth-Token` -> (x, auth, token),
    `APIKey` -> (api, key), `userPIN2` -> (user, pin, 2)."""
    return tuple(part.lower() for part in _WORD_PART.findall(name))


@dataclass(frozen=True)
class RedactionRules:
    """Additions to the built-in rules (which always apply), from `redaction:` in the
    config. `key_words`: words or phrases matched against a key's word parts (`ssn`,
    `account number` matches `accountNumber`, `ACCOUNT-NUMBER`, `accountnumber`).
    `patterns`: value patterns, replaced wherever they match in a string; only the
    group named `secret` when the pattern has one. Build items with `key_word` and
    `value_pattern`, which check them."""

    key_words: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()


def key_word(text: str) -> str:
    """A configured key word or phrase, normalised ("Account-Number" -> "account number")."""
    parts = key_words(text)
    if not parts:
        raise ValueError("expected a word with at least one letter or digit")
    return " ".join(parts)


def value_pattern(source: str) -> re.Pattern[str]:
    """A configured value pattern, compiled; ValueError says why it cannot be used."""
    try:
        pattern = re.compile(source)
    except re.error as e:
        raise ValueError(f"invalid regular expression: {e}") from None
    if pattern.fullmatch(""):
        raise ValueError("the pattern matches the empty string")
    return pattern


def is_sensitive_key(name: str) -> bool:
    """Whether a value under this key name is redacted by the built-in rules."""
    return _sensitive_key(name, ())


@functools.lru_cache(maxsize=8192)
def _sensitive_key(name: str, phrases: tuple[tuple[str, ...], ...]) -> bool:
    # Cached: the same few key names come with every request. Names are the agent's
    # input, so the cache is bounded; a miss only costs the computation.
    lowered = name.lower()
    if any(part in lowered for part in SENSITIVE_KEY_PARTS):
        return True
    if any(part in lowered for part in SENSITIVE_KEY_SUBSTRINGS):
        return True
    words = key_words(name)
    if not SENSITIVE_KEY_WORDS.isdisjoint(words):
        return True
    return any(_has_phrase(words, phrase) for phrase in phrases)


def _has_phrase(words: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    if "".join(phrase) in words:
        return True
    n = len(phrase)
    return any(words[i : i + n] == phrase for i in range(len(words) - n + 1))


# --- context: a value named by what stands before it --------------------------------

# Where a named value may start: the separator of `name: value` / `name=value`, the
# `:` of `scheme://user:password@`, or the start of a URL parameter. One character
# class, so the regex engine skips everything else at C speed.
_CONTEXT_MARK = re.compile(r"[:=?&;#]")
_USERINFO_USER = re.compile(r"//[^\s/?#@:\[\]]*:")
_USERINFO_PASSWORD = re.compile(r"[^\s/?#]+(?=@)")  # up to the authority's last @
_PARAM = re.compile(r"[?&;#]([A-Za-z0-9_.\-\[\]%]+)=")
_PARAM_VALUE = re.compile(r"[^&#\s\"'<>]*")
_SEPARATOR = re.compile(r"(?::=|=>|[:=])[ \t]*")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_NAME_WINDOW = 256  # how far back a name may start
# A quote left open (text cut off inside the value: `{"password": "hunt`) runs to the
# end of its line, as the cut-off object does in _closing_bracket.
_OPEN_TO_EOL = r"\\?(?=\n|\Z)"
_QUOTED = (
    rf"\"(?P<dq>(?:[^\"\\\n]|\\.)*)(?:\"|{_OPEN_TO_EOL})"
    rf"|'(?P<sq>(?:[^'\\\n]|\\.)*)(?:'|{_OPEN_TO_EOL})"
    # JSON inside a JSON string: {\"password\": \"...\"}
    rf"|\\\"(?P<eq>(?:[^\"\\\n]|\\[^\"])*)(?:\\\"|{_OPEN_TO_EOL})"
)
_ASSIGNED_VALUE = re.compile(
    # `Authorization: Bearer x` keeps its scheme.
    r"(?:(?i:bearer|basic|token|digest|negotiate|ntlm|aws4-hmac-sha256)[ \t]+)?"
    rf"(?:{_QUOTED}|(?P<bare>[^\s\"',;&]+))"
)
_FLAG = re.compile(r"(?:^|(?<=[ \t]))--?([A-Za-z][A-Za-z0-9_\-]*)(?:=|[ \t]+)")
_FLAG_VALUE = re.compile(rf"(?:{_QUOTED}|(?P<bare>[^\s\"']+))")
_USER_PASSWORD = re.compile(r"[^\s:\"']+:(?P<password>[^\s\"']+)")
_USER_FLAGS = frozenset({"u", "user"})  # curl -u user:password


# Header lists written out as JSON or Python text: `{"name": "Authorization", "value":`
# and `["Authorization", `; the value follows.
_PAIR_IN_TEXT = re.compile(
    r"(?P<q1>[\"'])(?i:name|key|header)(?P=q1)[ \t]*:[ \t]*"
    r"(?P<q2>[\"'])(?P<name>[^\"'\n]{1,256})(?P=q2)[ \t]*,[ \t]*"
    r"(?P<q3>[\"'])(?i:values?)(?P=q3)[ \t]*:[ \t]*"
    r"|\[[ \t]*(?P<q4>[\"'])(?P<first>[^\"'\n]{1,256})(?P=q4)[ \t]*,[ \t]*(?=[\"'])"
)
_QUOTED_VALUE = re.compile(_QUOTED)


def _value_span(m: re.Match[str]) -> tuple[int, int]:
    groups = m.groupdict()
    for group in ("dq", "sq", "eq", "bare"):
        if groups.get(group) is not None:
            return m.span(group)
    raise AssertionError("a value pattern matched no value")  # pragma: no cover


def _closing_bracket(text: str, start: int) -> int:
    """The end of the JSON-like object or list opening at start; the end of the text
    when it is not closed (cut off: the rest may be the secret). Either way the caller
    goes on after it, so no character is scanned twice."""
    depth = 0
    quote = ""
    escaped = False
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _name_before(text: str, i: int) -> str:
    """The name that ends just before the separator at i: `"x-api-key" :` -> x-api-key."""
    lo = max(0, i - _NAME_WINDOW)
    j = i
    while j > lo and text[j - 1] in " \t":
        j -= 1
    if j > lo and text[j - 1] in "\"'":
        j -= 1
    if j > lo and text[j - 1] == "\\":
        j -= 1
    end = j
    while j > lo and text[j - 1] in _NAME_CHARS:
        j -= 1
    name = text[j:end].lstrip("-.")
    return name if name and (name[0].isalpha() or name[0] == "_") else ""


# --- formats: secrets that look like what they are ----------------------------------

# Every alternative starts with a literal character, so the engine only stops where
# one of those characters is (a pattern list led by classes or lookbehinds costs ~20x
# more). `X(?<![A-Za-z0-9]X)`: the token does not continue a word.
_FORMATS = re.compile(
    "|".join(
        (
            # JWT / JWS: base64url('{"...') . payload [. signature]
            r"e(?<![A-Za-z0-9_\-]e)yJ[A-Za-z0-9_\-]{8,}={0,2}\.[A-Za-z0-9_\-]{8,}={0,2}"
            r"(?:\.[A-Za-z0-9_\-+/]*=*)?",
            # agentgw's own bearer tokens (agw_ and 32 random bytes in base64url)
            r"a(?<![A-Za-z0-9_\-]a)gw_[A-Za-z0-9_\-]{43,}",
            # AWS access key ids; Google API keys
            r"A(?<![A-Za-z0-9]A)(?:(?:3T[A-Z0-9]|BIA|CCA|KIA|SIA)[0-9A-Z]{16}(?![A-Za-z0-9])"
            r"|Iza[0-9A-Za-z_\-]{35})",
            # GitHub classic and fine-grained tokens; GitLab tokens
            r"g(?<![A-Za-z0-9]g)(?:h[pousr]_[A-Za-z0-9_]{36,}|ithub_pat_[A-Za-z0-9_]{22,}"
            r"|l(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-[A-Za-z0-9_\-]{20,}"
            r"(?:\.[A-Za-z0-9_\-]+){0,2})",
            # GitLab runner registration tokens; Google OAuth client secrets
            r"G(?<![A-Za-z0-9]G)(?:R1348941[A-Za-z0-9_\-]{20,}|OCSPX-[0-9A-Za-z_\-]{20,})",
            # Slack bot/user/app tokens
            r"x(?<![A-Za-z0-9]x)(?:ox[abposre]-[A-Za-z0-9\-]{10,}|app-\d-[A-Za-z0-9\-]{10,})",
            # Slack webhook URLs (the path is the secret); Hugging Face tokens
            r"h(?<![A-Za-z0-9]h)(?:ooks\.slack\.com/(?:services|workflows|triggers)/"
            r"[A-Za-z0-9_/]+|f_[A-Za-z0-9]{30,})",
            # Discord webhook URLs
            r"d(?<![A-Za-z0-9]d)iscord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_\-]+",
            # Stripe secret keys; OpenAI (sk-, sk-proj-, ...), Anthropic (sk-ant-...) and
            # alike; Square OAuth secrets and access tokens
            r"s(?<![A-Za-z0-9]s)(?:k_(?:live|test)_[0-9A-Za-z]{16,}|k-[A-Za-z0-9_\-]{20,}"
            r"|q0(?:csp|atp)-[0-9A-Za-z_\-]{22,})",
            # Stripe restricted keys and webhook secrets
            r"r(?<![A-Za-z0-9]r)k_(?:live|test)_[0-9A-Za-z]{16,}",
            r"w(?<![A-Za-z0-9]w)hsec_[0-9A-Za-z]{24,}",
            # Google OAuth access tokens
            r"y(?<![A-Za-z0-9]y)a29\.[0-9A-Za-z_\-]{20,}",
            # npm, PyPI and SendGrid tokens
            r"n(?<![A-Za-z0-9]n)pm_[A-Za-z0-9]{36}",
            r"p(?<![A-Za-z0-9]p)ypi-AgE[A-Za-z0-9_\-]{50,}",
            r"S(?<![A-Za-z0-9]S)G\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}",
        )
    )
)
# Formats without a leading literal: each runs only when its hint is in the text.
_HINTED_FORMATS = (
    # Mailchimp API keys
    ("-us", re.compile(r"(?<![A-Za-z0-9])[0-9a-f]{32}-us[0-9]{1,2}(?![0-9])")),
    # Telegram bot tokens
    (":AA", re.compile(r"(?<![A-Za-z0-9])[0-9]{8,10}:AA[0-9A-Za-z_\-]{33}")),
)
# Discord bot tokens: id . timestamp . hmac; hinted by the 6-character middle part.
_DISCORD_BOT_HINT = re.compile(r"\.[A-Za-z0-9_\-]{6}\.")
_DISCORD_BOT = re.compile(
    r"(?<![A-Za-z0-9])[MNO][A-Za-z0-9_\-]{23,25}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,}"
)
# Authorization schemes with an RFC 6750 b64token; checked in _scheme_match.
_SCHEME = re.compile(r"(?<![A-Za-z0-9_\-])((?i:bearer|basic)[ \t]+)([A-Za-z0-9\-._~+/]+=*)")
_PRIVATE_KEY = re.compile(
    r"(?P<begin>-{4,5} ?BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-{4,5})"
    r"(?P<body>.*?)"
    r"(?P<end>-{4,5} ?END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-{4,5}|\Z)",
    re.DOTALL,
)
_PUTTY_KEY = re.compile(r"(?P<begin>PuTTY-User-Key-File-\d+:[^\n]*)(?P<body>.+)", re.DOTALL)
# Every format above contains one of these within its first 40 characters (most
# strings contain none: prose, e-mail addresses, plain URLs), and a search for them
# is several times cheaper than the format scan.
_FORMAT_GATE = re.compile(
    r"_|-|:AA|A(?:3T|BIA|CCA|KIA|SIA|Iza)|GR1|eyJ|hooks\.|webhooks/|ya29\.|SG\."
    r"|\.[A-Za-z0-9_\-]{6}\."
)
_GATE_REACH = 40
_SHORTEST_FORMAT = 14  # no format above matches fewer characters ("Basic " + 8)


def _redact_private_keys(text: str) -> str:
    if "PRIVATE KEY" in text:
        text = _PRIVATE_KEY.sub(_private_key_match, text)
    if "PuTTY-User-Key-File-" in text:
        text = _PUTTY_KEY.sub(_private_key_match, text)
    return text


def _redact_formats(text: str) -> str:
    if len(text) < _SHORTEST_FORMAT:
        return text
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered:
        text = _SCHEME.sub(_scheme_match, text)
    # Search before sub: most strings have no match, and a search is the cheaper call.
    gate = _FORMAT_GATE.search(text)
    if gate is None:
        return text
    start = max(0, gate.start() - _GATE_REACH)
    if _FORMATS.search(text, start):
        text = text[:start] + _FORMATS.sub(_format_match, text[start:])
    for hint, pattern in _HINTED_FORMATS:
        if hint in text:
            text = pattern.sub(REDACTED, text)
    if text.count(".") >= 2 and _DISCORD_BOT_HINT.search(text):
        text = _DISCORD_BOT.sub(REDACTED, text)
    return text


def _format_match(m: re.Match[str]) -> str:
    found = m.group(0)
    if found.startswith("hooks."):  # keep hooks.slack.com/services/
        return "/".join(found.split("/", 2)[:2]) + "/" + REDACTED
    if found.startswith("discord"):  # keep discord.com/api/webhooks/<id>/
        return found[: found.rindex("/") + 1] + REDACTED
    return REDACTED


def _scheme_match(m: re.Match[str]) -> str:
    scheme, credentials = m.group(1), m.group(2)
    if scheme[:5].lower() == "basic":
        real = _basic_looks_real(credentials)
    else:
        # `Bearer of bad news` is prose; a token has digits or is long.
        real = len(credentials) >= 8 and (
            len(credentials) >= 20 or any(c.isdigit() for c in credentials)
        )
    return scheme + REDACTED if real else m.group(0)


def _basic_looks_real(credentials: str) -> bool:
    try:
        decoded = base64.b64decode(credentials, validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _private_key_match(m: re.Match[str]) -> str:
    end = m.groupdict().get("end")
    closing = "\n" + end if end else ""
    return f"{m.group('begin')}\n{REDACTED}{closing}"


# --- the redactor -------------------------------------------------------------------

_NO_RULES = RedactionRules()
_KEY_CACHE_SIZE = 4096
_KEY_CACHES: dict[
    tuple[tuple[tuple[str, ...], ...], tuple[re.Pattern[str], ...]], dict[str, tuple[str, bool]]
] = {}
_PAIR_NAME_FIELDS = frozenset({"name", "key", "header"})
_PAIR_VALUE_FIELDS = frozenset({"value", "values"})
_PAIR_MAX_FIELDS = 6  # a header entry: name, value and maybe a few flags


class Redactor:
    """Applies the built-in rules plus `rules` (None: built-ins only). Cheap to make:
    what is worth caching is cached per rules, not per instance."""

    def __init__(self, rules: RedactionRules | None = None) -> None:
        self.rules = rules or _NO_RULES
        self._phrases = tuple(p for p in map(key_words, self.rules.key_words) if p)
        self._patterns = self.rules.patterns
        # Keys as written out, and whether the value under them is redacted: the same
        # few key names come with every request. Shared by redactors of equal rules;
        # names are the agent's input, so the cache is emptied when it grows large.
        self._keys = _KEY_CACHES.setdefault((self._phrases, self._patterns), {})

    def is_sensitive_key(self, name: str) -> bool:
        return _sensitive_key(name, self._phrases)

    def value(self, value: Any) -> Any:
        """A JSON-like copy: values under sensitive keys (and header-list entries named
        by one) become "[REDACTED]"; every string, keys included, goes through `text`.
        Tuples come back as lists."""
        kind = type(value)  # exact types first: isinstance(x, Mapping) is slow
        if kind is str:
            return self.text(value)
        if kind is dict:
            return self._mapping(value)
        if kind is list or kind is tuple:
            return self._sequence(value)
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return self._mapping(value)
        if isinstance(value, list | tuple):
            return self._sequence(value)
        return value

    def text(self, text: str) -> str:
        """Free text, URLs and single values: only the secret parts are replaced."""
        text = _redact_formats(self._redact_context(_redact_private_keys(text)))
        if self._patterns:
            text = self._redact_patterns(text)
        return text

    def looks_secret(self, text: str) -> bool:
        """Would redaction change `text`? For values that are kept as they are (ids)."""
        return self.text(text) != text

    def request(self, request: ActionRequest) -> ActionRequest:
        """The request as it may be stored, logged, audited and returned."""
        return replace(
            request,
            resource=self.text(request.resource),
            parameters=self._mapping(request.parameters),
            reasoning=self.text(request.reasoning),
            labels=self._mapping(request.labels),
        )

    def _key(self, name: str) -> tuple[str, bool]:
        """A key as it is written out, and whether the value under it is redacted."""
        known = self._keys.get(name)
        if known is None:
            if len(self._keys) >= _KEY_CACHE_SIZE:
                self._keys.clear()
            known = self._keys[name] = (self.text(name), self.is_sensitive_key(name))
        return known

    def _mapping(self, mapping: Mapping[Any, Any]) -> dict[Any, Any]:
        named_secret = self._names_a_secret(mapping)
        out: dict[Any, Any] = {}
        for k, v in mapping.items():
            if isinstance(k, str):
                key, secret = self._key(k)
                if not secret and named_secret:
                    secret = k.lower() in _PAIR_VALUE_FIELDS
                out[key] = REDACTED if secret else self.value(v)
            else:
                out[k] = REDACTED if self.is_sensitive_key(str(k)) else self.value(v)
        return out

    def _names_a_secret(self, mapping: Mapping[Any, Any]) -> bool:
        """`{"name": "Authorization", "value": ...}` and its key/header spellings."""
        if not 2 <= len(mapping) <= _PAIR_MAX_FIELDS:
            return False
        has_value = False
        named = False
        for k, v in mapping.items():
            if not isinstance(k, str):
                continue
            lowered = k.lower()
            if lowered in _PAIR_VALUE_FIELDS:
                has_value = True
            elif lowered in _PAIR_NAME_FIELDS and isinstance(v, str):
                named = named or self.is_sensitive_key(v)
        return has_value and named

    def _sequence(self, items: list[Any] | tuple[Any, ...]) -> list[Any]:
        if len(items) == 2 and isinstance(items[0], str) and self.is_sensitive_key(items[0]):
            # ["X-Api-Key", "..."]: a [NAME, value] pair on its own.
            return [self.text(items[0]), REDACTED]
        # [["Authorization", "Bearer ..."], ["Accept", "text/html"], ...]: header pairs,
        # whatever else the list holds.
        out = [self.value(v) for v in items]
        # ["mysql", "--password", "hunter2"]: an argument vector.
        for i, item in enumerate(items[:-1]):
            if (
                isinstance(item, str)
                and item.startswith("-")
                and isinstance(items[i + 1], str)
                and self._names_a_flag_secret(item)
            ):
                out[i + 1] = REDACTED
        return out

    def _names_a_flag_secret(self, flag: str) -> bool:
        name = flag.lstrip("-")
        return bool(name) and "=" not in name and self.is_sensitive_key(name)

    def _redact_pairs(self, text: str) -> str:
        """Header entries and pairs inside text (see _PAIR_IN_TEXT)."""
        pieces: list[str] = []
        done = 0
        for m in _PAIR_IN_TEXT.finditer(text):
            if m.start() < done or not self.is_sensitive_key(m.group("name") or m.group("first")):
                continue
            start = m.end()
            if text.startswith(("{", "["), start):
                span = start, _closing_bracket(text, start)
            else:
                value = _QUOTED_VALUE.match(text, start)
                if value is None:
                    continue
                span = _value_span(value)
            pieces += (text[done : span[0]], REDACTED)
            done = span[1]
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def _redact_context(self, text: str) -> str:
        if ("value" in text or "[" in text) and _PAIR_IN_TEXT.search(text):
            text = self._redact_pairs(text)
        pieces: list[str] = []
        done = 0  # text[:done] is in pieces
        pos = 0
        m = _CONTEXT_MARK.search(text)
        while m is not None:
            mark = m.start()
            span = self._context_value(text, mark)
            if span is None:
                pos = mark + 1
            else:
                start, end = span
                pieces += (text[done:start], REDACTED)
                done = pos = max(end, mark + 1)
            m = _CONTEXT_MARK.search(text, pos)
        if pieces:
            pieces.append(text[done:])
            text = "".join(pieces)
        if " -" in text or "\t-" in text or text.startswith("-"):
            text = self._redact_flags(text)
        return text

    def _context_value(self, text: str, mark: int) -> tuple[int, int] | None:
        """Where the secret named at a context mark is, or None when it names none."""
        c = text[mark]
        if c == ":" and text.startswith("//", mark + 1):
            if mark == 0 or not text[mark - 1].isalnum():
                return None
            user = _USERINFO_USER.match(text, mark + 1)
            password = _USERINFO_PASSWORD.match(text, user.end()) if user else None
            return password.span() if password else None
        if c in "?&;#":
            param = _PARAM.match(text, mark)
            if param is None:
                return None
            name = param.group(1)
            if not self.is_sensitive_key(unquote(name) if "%" in name else name):
                return None
            value = _PARAM_VALUE.match(text, param.end())
            return value.span() if value else None
        name = _name_before(text, mark)
        if not name or not self.is_sensitive_key(name):
            return None
        separator = _SEPARATOR.match(text, mark)
        if separator is None:
            return None
        start = separator.end()
        if text.startswith(("{", "["), start):
            # `"credentials": {...}` in JSON text: the whole object, as in `value`.
            return start, _closing_bracket(text, start)
        value = _ASSIGNED_VALUE.match(text, start)
        return _value_span(value) if value else None

    def _redact_flags(self, text: str) -> str:
        """`--token abc`, `--password=x`, `-u user:password`."""
        pieces: list[str] = []
        done = 0
        pos = 0
        while (m := _FLAG.search(text, pos)) is not None:
            pos = m.end()
            name = m.group(1)
            if name in _USER_FLAGS:
                value = _USER_PASSWORD.match(text, pos)
                span = value.span("password") if value else None
            elif self.is_sensitive_key(name):
                value = _FLAG_VALUE.match(text, pos)
                span = _value_span(value) if value else None
            else:
                continue
            if span is not None:
                pieces += (text[done : span[0]], REDACTED)
                done = pos = span[1]
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def _redact_patterns(self, text: str) -> str:
        if REDACTED not in text:
            return _apply_pattern_list(self._patterns, text)
        # Never inside an earlier marker: keeps `redact(redact(x)) == redact(x)`.
        return REDACTED.join(
            _apply_pattern_list(self._patterns, segment) for segment in text.split(REDACTED)
        )


def _apply_pattern_list(patterns: tuple[re.Pattern[str], ...], text: str) -> str:
    for pattern in patterns:
        text = pattern.sub(_pattern_replacement(pattern), text)
    return text


def _pattern_replacement(pattern: re.Pattern[str]) -> Callable[[re.Match[str]], str]:
    if "secret" not in pattern.groupindex:
        return lambda m: REDACTED if m.group(0) else ""

    def keep_around_secret(m: re.Match[str]) -> str:
        start, end = m.span("secret")
        if start == end:  # the group did not take part, or matched nothing
            return m.group(0)
        whole_start = m.start()
        whole = m.group(0)
        return whole[: start - whole_start] + REDACTED + whole[end - whole_start :]

    return keep_around_secret


_BUILT_IN = Redactor()


def redact(value: Any) -> Any:
    """A copy of a JSON-like value redacted with the built-in rules."""
    return _BUILT_IN.value(value)


def redact_text(text: str) -> str:
    """Free text redacted with the built-in rules."""
    return _BUILT_IN.text(text)
