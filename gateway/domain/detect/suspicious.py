"""Suspicious action types: a type whose name says it destroys, sends or moves money.

Owns how an action type is read as words and which configured words, exact types and
globs make it suspicious; it looks at the action type only, never at parameters, and
does no I/O. One finding at most per action, recommending `require_approval`.

How an action type is read (`word_parts`): Unicode NFKC, then split into parts at
every character that is not a letter or digit, at lower-to-upper case changes, before
the last capital of a run of capitals followed by a lower-case letter, and between
letters and digits (and between cased and caseless letters); each part is casefolded.
A run of capitals followed by a lone `s` keeps it (`deleteURLs` -> delete, urls).

    send_email, send-email, sendEmail, SendEmail, SEND_EMAIL, Send Email -> send, email
    (and the fullwidth letters of send_email, which NFKC turns into ASCII)
    HTTPDelete -> http, delete    deleteALLFiles -> delete, all, files    v2Delete -> v, 2, delete

A configured word matches when its letters occur in the action type's letters (the
parts glued together, so separators and case are ignored) at a place that fits the
parts:

1. Whole parts: the occurrence starts where a part starts and ends where a part ends.
   It may cross any part boundary in between, so `sendEmail`, `send.email`,
   `sendemail` and `De_lete` all match. `send_email` matches `gmail.sendEmail`,
   `send_email_v2`, `bulk_send_email`; `email_read` does not match it (wrong order).
2. Inflections of the word's last part (ASCII letters, at least 3 of them): +s, +es,
   +ed, +ing, +ion(s); for a word ending in `e`: +s, +d, and -e +ing, +ion(s), +al(s);
   consonant+y -> +ies, +ied; a final consonant-vowel-consonant doubles before +ed
   and +ing. So: deleted, deletes, deleting, deletion, removal, truncation, dropped,
   dropping, transferred, transfers, payments, send_emails. Irregular forms (`sent`)
   do not match.
3. Glued compounds, for words of at least 4 letters: the occurrence may also start at
   least 2 characters into a part or end at least 2 characters before a part's end
   (`deletefile`, `dropdb`, `dropdatabase`, `bulkdelete`, `undelete`, `airdrop`,
   `bulksend_email`), provided every part boundary it crosses is one of the word's own
   (`card_ropes` does not match `drop`). A 1-character margin does not count, which
   keeps `kill` out of `skill` and `mail` out of `email`; words under 4 letters (`rm`)
   only ever match as whole parts.

This errs towards flagging. Deliberately flagged: `dropdown`, `dropbox_upload`,
`droplet_list`, `undelete`, `list_payments`, `get_transfer_status`,
`payment_status_read` (a type that names money or deletion is worth a look, and the
built-in policy's globs hold them too). Not flagged: `deletable`, `removable` (the
word is not a prefix of those spellings), `sender_email`, `email_read`, `send_sms`.
Look-alike letters from other scripts (a Cyrillic U+0435 for the `e`) are not folded:
against an agent that picks its own action type names, the policy's allowlist is the
defence, not this detector.

An `exact` entry matches when the action type's parts joined with `_` equal the
entry's (`rm` matches `rm`, `RM`, but not `rmdir` or `fs.rm`). A `globs` entry is a
case-insensitive text glob of the policy format (`gateway/domain/policy/globs.py`)
on the action type as submitted. Entries are tried in order: words, exact, globs.

The configured entries are prepared once per `SuspiciousSettings` (cached); a call
is linear in the length of the action type for a fixed configuration.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from dataclasses import dataclass

from gateway.domain.actions import Finding
from gateway.domain.policy.globs import GlobDialect, compile_globs, translate_glob

SUSPICIOUS_ACTION = "suspicious_action"
DEFAULT_WORDS = ("delete", "remove", "drop", "truncate", "send_email", "transfer", "payment")
SEVERITY = 0.7
RECOMMENDED_ACTION = "require_approval"

# Rule 3 above: glued compounds need a word this long and this much glue beside it.
_COMPOUND_MIN_LETTERS = 4
_COMPOUND_MIN_GLUE = 2
# Rule 2 above: only a last part this long is inflected.
_INFLECT_MIN_LETTERS = 3
_VOWELS = frozenset("aeiou")

# Clipping in descriptions, so that one stays under 200 characters.
_TYPE_CHARS = 64
_ENTRY_CHARS = 32
_MATCHED_CHARS = 32


@dataclass(frozen=True)
class SuspiciousSettings:
    """What makes an action type suspicious. Validated on construction: `ValueError`
    names the entry (`words[2]: '--' has no letters or digits`)."""

    words: tuple[str, ...] = DEFAULT_WORDS
    exact: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()
    enabled: bool = True

    def __post_init__(self) -> None:
        # Tuples even when given lists: the settings key a cache on the decision path.
        for key in ("words", "exact", "globs"):
            entries = tuple(getattr(self, key))
            for index, entry in enumerate(entries):
                if not isinstance(entry, str):
                    raise ValueError(f"{key}[{index}]: expected a string, got {entry!r}")
            object.__setattr__(self, key, entries)
        for key in ("words", "exact"):
            for index, entry in enumerate(getattr(self, key)):
                if not word_parts(entry):
                    raise ValueError(f"{key}[{index}]: {entry!r} has no letters or digits")
        for index, pattern in enumerate(self.globs):
            try:
                translate_glob(pattern, GlobDialect.TEXT)
            except ValueError as exc:
                raise ValueError(f"globs[{index}]: invalid glob {pattern!r}: {exc}") from None


def word_parts(text: str) -> tuple[str, ...]:
    """The casefolded word parts of `text`: `gmail.sendEmail` -> gmail, send, email."""
    normal = unicodedata.normalize("NFKC", text)
    return tuple(normal[start:end].casefold() for start, end in _spans(normal))


def detect_suspicious(action_type: str, settings: SuspiciousSettings) -> list[Finding]:
    if not settings.enabled:
        return []
    found = _matcher(settings).first_match(action_type)
    if found is None:
        return []
    return [
        Finding(
            type=SUSPICIOUS_ACTION,
            severity=SEVERITY,
            description=found.description(action_type),
            recommended_action=RECOMMENDED_ACTION,
        )
    ]


# -- splitting -------------------------------------------------------------------------

_DIGIT, _UPPER, _LOWER, _CASELESS = range(4)


def _kind(char: str) -> int:
    if not char.isalpha():
        return _DIGIT
    if char.isupper() or unicodedata.category(char) == "Lt":
        return _UPPER
    if char.islower():
        return _LOWER
    return _CASELESS


# The same split for ASCII text (almost every action type) in one regex: a capital run
# keeping its plural s, a capital run before a capitalised word, a word, capitals, digits.
_ASCII_PART = re.compile(r"[A-Z]+s(?![a-z])|[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def _spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word part of `text`, which is already NFKC."""
    if text.isascii():
        return [match.span() for match in _ASCII_PART.finditer(text)]
    return _scan(text)


def _scan(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    n = len(text)
    i = 0
    while i < n:
        if not text[i].isalnum():
            i += 1
            continue
        j = i + 1
        while j < n and text[j].isalnum():
            j += 1
        kinds = [_kind(char) for char in text[i:j]]
        start = i
        for k in range(1, j - i):
            if _splits(text, i, kinds, k):
                spans.append((start, i + k))
                start = i + k
        spans.append((start, j))
        i = j
    return spans


def _splits(text: str, offset: int, kinds: list[int], k: int) -> bool:
    """Whether a part ends between characters k-1 and k of the run at `offset`."""
    before, here = kinds[k - 1], kinds[k]
    if before != here and _DIGIT in (before, here):
        return True
    if before != here and _CASELESS in (before, here):
        return True
    if before == _LOWER and here == _UPPER:
        return True
    if before == _UPPER and here == _UPPER and k + 1 < len(kinds) and kinds[k + 1] == _LOWER:
        # HTTPDelete -> HTTP, Delete; but URLs and IDsTo keep their plural s.
        plural = text[offset + k + 1] == "s" and (k + 2 == len(kinds) or kinds[k + 2] != _LOWER)
        return not plural
    return False


# -- matching --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Word:
    entry: str  # as configured, for the description
    core: str  # the letters every form starts with
    forms: tuple[str, ...]  # the glued parts and their inflections
    joints: frozenset[int]  # offsets in the glued parts where one part ends, another begins
    compounds: bool

    @classmethod
    def of(cls, entry: str) -> _Word:
        parts = word_parts(entry)
        glued = "".join(parts)
        forms = _inflections(glued, parts[-1])
        joints = frozenset(len("".join(parts[:i])) for i in range(1, len(parts)))
        return cls(
            entry=entry,
            core=_common_prefix(forms),
            forms=forms,
            joints=joints,
            compounds=len(glued) >= _COMPOUND_MIN_LETTERS,
        )


def _inflections(glued: str, last: str) -> tuple[str, ...]:
    forms = [glued]
    if len(last) >= _INFLECT_MIN_LETTERS and last.isascii() and last.isalpha():
        if glued.endswith("e"):
            stem = glued[:-1]
            forms += [glued + "s", glued + "d"]
            forms += [stem + suffix for suffix in ("ing", "ion", "ions", "al", "als")]
        elif last.endswith("y") and last[-2] not in _VOWELS:
            stem = glued[:-1]
            forms += [stem + "ies", stem + "ied", glued + "ing"]
        else:
            forms += [glued + suffix for suffix in ("s", "es", "ed", "ing", "ion", "ions")]
            if last[-3] not in _VOWELS and last[-2] in _VOWELS and last[-1] not in "aeiouwxy":
                forms += [glued + last[-1] + "ed", glued + last[-1] + "ing"]
    return tuple(dict.fromkeys(forms))


def _common_prefix(forms: tuple[str, ...]) -> str:
    core = forms[0]
    for form in forms:
        while not form.startswith(core):
            core = core[:-1]
    return core


class _Parts:
    """An action type read as word parts, with the parts glued into one string."""

    def __init__(self, action_type: str) -> None:
        self.normal = unicodedata.normalize("NFKC", action_type)
        self.spans = _spans(self.normal)
        self.parts = [self.normal[start:end].casefold() for start, end in self.spans]
        self.glued = "".join(self.parts)
        self.starts: list[int] = []
        offset = 0
        for part in self.parts:
            self.starts.append(offset)
            offset += len(part)
        self.boundaries = frozenset([*self.starts, offset])

    def part_at(self, position: int) -> int:
        return bisect.bisect_right(self.starts, position) - 1

    def end_of(self, index: int) -> int:
        return self.starts[index + 1] if index + 1 < len(self.starts) else len(self.glued)

    def find(self, word: _Word) -> tuple[int, int] | None:
        """The first and last part an occurrence of `word` touches, or None."""
        a = self.glued.find(word.core)
        while a != -1:
            for form in word.forms:
                if self.glued.startswith(form, a):
                    touched = self.fits(word, a, a + len(form))
                    if touched is not None:
                        return touched
            a = self.glued.find(word.core, a + 1)
        return None

    def fits(self, word: _Word, a: int, b: int) -> tuple[int, int] | None:
        first, last = self.part_at(a), self.part_at(b - 1)
        start_aligned, end_aligned = a in self.boundaries, b in self.boundaries
        if start_aligned and end_aligned:
            return first, last
        if not word.compounds:
            return None
        if not start_aligned and a - self.starts[first] < _COMPOUND_MIN_GLUE:
            return None
        if not end_aligned and self.end_of(last) - b < _COMPOUND_MIN_GLUE:
            return None
        if any(self.starts[i] - a not in word.joints for i in range(first + 1, last + 1)):
            return None
        return first, last

    def text_of(self, first: int, last: int) -> str:
        return self.normal[self.spans[first][0] : self.spans[last][1]]


@dataclass(frozen=True)
class _Match:
    kind: str  # "word", "exact type", "glob"
    entry: str
    matched: str  # the part(s) of the action type that matched; "" for a glob

    def description(self, action_type: str) -> str:
        text = (
            f"action type '{_clip(action_type, _TYPE_CHARS)}' matches the suspicious "
            f"{self.kind} '{_clip(self.entry, _ENTRY_CHARS)}'"
        )
        if self.matched and self.matched != action_type:
            text += f" in '{_clip(self.matched, _MATCHED_CHARS)}'"
        return text


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Matcher:
    """The configured entries, prepared once."""

    def __init__(self, settings: SuspiciousSettings) -> None:
        self.words = tuple(_Word.of(entry) for entry in settings.words)
        self.exact: dict[str, str] = {}
        for entry in settings.exact:
            self.exact.setdefault("_".join(word_parts(entry)), entry)
        self.globs: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
            (pattern, compile_globs((pattern,), GlobDialect.TEXT, ignore_case=True))
            for pattern in settings.globs
        )

    def first_match(self, action_type: str) -> _Match | None:
        parts = _Parts(action_type)
        for word in self.words:
            touched = parts.find(word)
            if touched is not None:
                return _Match("word", word.entry, parts.text_of(*touched))
        entry = self.exact.get("_".join(parts.parts))
        if entry is not None:
            return _Match("exact type", entry, "")
        for pattern, regex in self.globs:
            if regex.fullmatch(action_type) is not None:
                return _Match("glob", pattern, "")
        return None


@functools.lru_cache(maxsize=16)
def _matcher(settings: SuspiciousSettings) -> _Matcher:
    return _Matcher(settings)
