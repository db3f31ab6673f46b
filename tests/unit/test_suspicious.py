"""Suspicious action types: how a type is read as words, and which spellings match."""

from __future__ import annotations

import ast
import json
import re
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.actions import Finding
from gateway.domain.detect import suspicious
from gateway.domain.detect.suspicious import (
    DEFAULT_WORDS,
    SUSPICIOUS_ACTION,
    SuspiciousSettings,
    detect_suspicious,
    word_parts,
)

DEFAULTS = SuspiciousSettings()
ROOT = Path(__file__).resolve().parents[2]
DESCRIPTION_LIMIT = 200


def matched_word(action_type: str, settings: SuspiciousSettings = DEFAULTS) -> str | None:
    """The configured entry named by the finding, or None when there is no finding."""
    findings = detect_suspicious(action_type, settings)
    if not findings:
        return None
    [finding] = findings
    found = re.search(
        r"matches the suspicious (?:word|exact type|glob) '([^']*)'", finding.description
    )
    assert found is not None, finding.description
    return found.group(1)


# -- reading an action type as words -------------------------------------------------------

SEND_EMAIL_SPELLINGS = [
    "send_email",
    "send-email",
    "sendEmail",
    "SendEmail",
    "send.email",
    "SEND_EMAIL",
    "Send Email",
    "ｓｅｎｄ＿ｅｍａｉｌ",  # fullwidth, NFKC makes it ASCII  # noqa: RUF001
    "ＳＥＮＤ＿ＥＭＡＩＬ",  # noqa: RUF001
    "send/email",
    "send:email",
    "send__email",
    " send email ",
]


@pytest.mark.parametrize("spelling", SEND_EMAIL_SPELLINGS)
def test_every_spelling_of_send_email_reads_as_send_email(spelling: str) -> None:
    assert word_parts(spelling) == ("send", "email")


@pytest.mark.parametrize("spelling", SEND_EMAIL_SPELLINGS)
def test_every_spelling_of_send_email_matches_send_email(spelling: str) -> None:
    assert matched_word(spelling) == "send_email"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("HTTPDelete", ("http", "delete")),
        ("deleteALLFiles", ("delete", "all", "files")),
        ("gmail.sendEmail", ("gmail", "send", "email")),
        ("s3:DeleteObject", ("s", "3", "delete", "object")),
        ("v2Delete", ("v", "2", "delete")),
        ("delete2", ("delete", "2")),
        ("getHTTPResponseCode", ("get", "http", "response", "code")),
        ("IOError", ("io", "error")),
        ("ABC", ("abc",)),
        ("deleteURLs", ("delete", "urls")),  # a capital run keeps its plural s
        ("IDsToDelete", ("ids", "to", "delete")),
        ("Straße", ("strasse",)),  # casefold, not lower
        ("削除File", ("削除", "file")),  # caseless letters are a word of their own
        ("dele\u200bte", ("dele", "te")),  # a zero-width space separates too
        ("", ()),
        ("._-/: ", ()),
    ],
)
def test_word_parts_split_at_separators_case_and_digits(text: str, parts: tuple[str, ...]) -> None:
    assert word_parts(text) == parts


ASCII_TEXT = st.text(alphabet="aAbBsSzZ09_.-: ", max_size=20)


@given(text=ASCII_TEXT)
def test_ascii_and_unicode_text_split_alike(text: str) -> None:
    # An em dash is a separator outside ASCII: the action type then takes the general
    # path, which must split the ASCII part exactly as the ASCII path does.
    assert word_parts(text + "\u2014") == word_parts(text)


@given(text=ASCII_TEXT)
def test_word_parts_of_joined_parts_are_the_parts(text: str) -> None:
    parts = word_parts(text)
    assert word_parts("_".join(parts)) == parts


# -- the default words ---------------------------------------------------------------------

# Renamed spellings of the seven default words: case, separators, camelCase, prefixes
# and suffixes, inflections, glued compounds and fullwidth letters.
MATCHING = {
    "delete": [
        "delete",
        "DELETE",
        "Delete",
        "fs.delete",
        "fs.delete_file",
        "fs.Delete_File",
        "deleteFile",
        "DeleteObject",
        "s3:DeleteObject",
        "HTTPDelete",
        "delete-file",
        "delete.file",
        "delete file",
        "db/delete",
        "bulk_delete",
        "delete_v2",
        "deleteV2",
        "deleted",
        "deletes",
        "deleting",
        "deletion",
        "deletions",
        "deletefile",
        "bulkdelete",
        "softDelete",
        "deleteALLFiles",
        "DELETE_ALL",
        "de-lete",
        "DeLeTe",
        "ｄｅｌｅｔｅ",  # noqa: RUF001
    ],
    "remove": [
        "remove",
        "REMOVE",
        "remove_member",
        "repo.REMOVE",
        "removeUser",
        "RemoveItem",
        "remove-user",
        "removed",
        "removes",
        "removing",
        "removal",
        "removeuser",
        "users.remove_v2",
        "ｒｅｍｏｖｅ",  # noqa: RUF001
    ],
    "drop": [
        "drop",
        "DROP",
        "db.drop_table",
        "DROP_TABLE",
        "dropTable",
        "DropTable",
        "drop-table",
        "dropped",
        "drops",
        "dropping",
        "droptable",
        "dropdb",
        "dropdatabase",
        "sql:DROP",
        "airdrop",
    ],
    "truncate": [
        "truncate",
        "TRUNCATE",
        "truncate_log",
        "truncateTable",
        "TruncateTable",
        "truncated",
        "truncates",
        "truncating",
        "truncation",
        "truncatelog",
        "db.truncate_v2",
    ],
    "send_email": [
        "gmail.sendEmail",
        "send_email_v2",
        "bulk_send_email",
        "sendemail",
        "SENDEMAIL",
        "send_emails",
        "sendEmails",
        "sendEmailing",
        "mail.send_email_now",
        "Send-Email",
        "resend_email",
        "send_e_mail",
        "sendEmailNow",
        "bulksend_email",
        "send_emailnow",
    ],
    "transfer": [
        "transfer",
        "TRANSFER",
        "wire_transfer",
        "bank.TransferFunds",
        "transferFunds",
        "transfer-funds",
        "transferred",
        "transfers",
        "transferring",
        "transfered",
        "transferfunds",
        "wiretransfer",
        "funds.transfer_v2",
    ],
    "payment": [
        "payment",
        "PAYMENT",
        "create_payment_intent",
        "PAYMENTS.refund",
        "createPayment",
        "CreatePayment",
        "payments",
        "payment.create",
        "paymentIntent",
        "stripe.payment_intents.create",
        "paymentintent",
        "autopayment",
        "payment2",
        "ｐａｙｍｅｎｔ",  # noqa: RUF001
    ],
}
MATCHING_CASES = [
    (word, spelling) for word, spellings in MATCHING.items() for spelling in spellings
]


def test_there_are_many_renamed_spellings_of_every_default_word() -> None:
    assert set(MATCHING) == set(DEFAULT_WORDS)
    assert len(MATCHING_CASES) >= 60
    assert all(len(spellings) >= 10 for spellings in MATCHING.values())


@pytest.mark.parametrize(("word", "action_type"), MATCHING_CASES)
def test_renamed_spelling_matches_its_default_word(word: str, action_type: str) -> None:
    assert matched_word(action_type) == word


# Must not match any default word.
BENIGN = [
    "search",
    "web.search",
    "read_file",
    "fs.read",
    "list_files",
    "email_read",  # the parts of send_email, in another order and without send
    "email.read",
    "read_email",
    "emails_list",
    "sender_email",  # "sender" is not "send" + an inflection
    "email_sender",
    "send_sms",
    "sendSms",
    "send",
    "email",
    "pay",
    "paypal_balance",
    "get_weather",
    "http_get",
    "query_database",
    "create_user",
    "update_record",
    "summarize",
    "translate",
    "transport_status",
    "is_deletable",  # the e of delete is gone: not a spelling of the word
    "removable_media",
    "delegate_task",
    "develop",
    "card_ropes",  # d|rop crosses a boundary that is not the word's own
    "prop_drill",
    "model.predict",
    "undo",
    "",
    "x",
    "a_b_c",
]


@pytest.mark.parametrize("action_type", BENIGN)
def test_benign_action_type_is_not_suspicious(action_type: str) -> None:
    assert detect_suspicious(action_type, DEFAULTS) == []


# Decided: these are flagged. A type that names deletion or money is worth a look, and
# the built-in policy's globs (*drop*, *payment*, ...) hold every one of them as well.
FLAGGED_BY_CHOICE = [
    ("list_payments", "payment"),
    ("get_transfer_status", "transfer"),
    ("payment_status_read", "payment"),
    ("dropdown", "drop"),
    ("dropdown_select", "drop"),
    ("dropbox_upload", "drop"),
    ("droplet_list", "drop"),
    ("undelete", "delete"),
    ("backdrop", "drop"),
    ("transfer_learning", "transfer"),
    ("deleted_items_list", "delete"),
    ("resend_email", "send_email"),
]


@pytest.mark.parametrize(("action_type", "word"), FLAGGED_BY_CHOICE)
def test_edge_case_is_flagged_by_choice(action_type: str, word: str) -> None:
    assert matched_word(action_type) == word


# Decided: these are not flagged. Irregular forms and other word orders are out of reach
# of the rule; `email_send` can be added to the words where tools name the object first.
NOT_FLAGGED_BY_CHOICE = ["sent_email", "email.send", "send_to_email"]


@pytest.mark.parametrize("action_type", NOT_FLAGGED_BY_CHOICE)
def test_irregular_forms_and_other_orders_are_not_flagged(action_type: str) -> None:
    assert detect_suspicious(action_type, DEFAULTS) == []


def test_object_first_names_match_once_configured() -> None:
    settings = SuspiciousSettings(words=(*DEFAULT_WORDS, "email_send"))
    assert matched_word("email.send", settings) == "email_send"
    assert matched_word("gmail.EmailSend", settings) == "email_send"


def test_glued_compounds_need_two_letters_of_glue() -> None:
    # "removeable" is "remove" + "able": four letters of glue, so it is flagged, while
    # the usual spelling "removable" is not a spelling of "remove" at all.
    assert matched_word("removeable_media_list") == "remove"
    assert matched_word("removable_media_list") is None
    settings = SuspiciousSettings(words=("kill", "mail"))
    assert matched_word("skill_search", settings) is None  # 1 letter before "kill"
    assert matched_word("email_read", settings) is None  # 1 letter before "mail"
    assert matched_word("gmail_read", settings) is None  # 1 letter before "mail"
    assert matched_word("hotmail_read", settings) == "mail"  # 3 letters before "mail"
    assert matched_word("killall", settings) == "kill"


def test_short_words_match_only_whole_parts() -> None:
    settings = SuspiciousSettings(words=("rm", "cp"))
    for action_type in ("rm", "RM", "fs.rm", "rm_rf", "rmRf", "rm2"):
        assert matched_word(action_type, settings) == "rm", action_type
    for action_type in ("form", "confirm", "rmdir", "alarm", "rms", "cpu_info"):
        assert matched_word(action_type, settings) is None, action_type


def test_multi_part_word_matches_its_parts_in_order() -> None:
    settings = SuspiciousSettings(words=("drop_table",))
    for action_type in ("DROP TABLE", "dropTable", "droptable", "db.drop_tables", "dropTableNow"):
        assert matched_word(action_type, settings) == "drop_table", action_type
    for action_type in ("drop", "table_drop", "drop_the_table", "db.drop_view"):
        assert matched_word(action_type, settings) is None, action_type


def test_a_configured_word_may_be_spelled_any_way() -> None:
    for spelling in ("send_email", "sendEmail", "SEND-EMAIL", "Send Email"):
        settings = SuspiciousSettings(words=(spelling,))
        assert matched_word("gmail.send_email", settings) == spelling


def test_inflections_are_for_ascii_words_of_three_letters_or_more() -> None:
    assert matched_word("pays", SuspiciousSettings(words=("pay",))) == "pay"
    assert matched_word("copied", SuspiciousSettings(words=("copy",))) == "copy"
    assert matched_word("copies", SuspiciousSettings(words=("copy",))) == "copy"
    assert matched_word("rms", SuspiciousSettings(words=("rm",))) is None
    assert matched_word("削除する", SuspiciousSettings(words=("削除",))) is None
    assert matched_word("fs.削除", SuspiciousSettings(words=("削除",))) == "削除"


# -- properties ----------------------------------------------------------------------------


def is_separator(char: str) -> bool:
    """Any character that NFKC keeps free of letters, digits and combining marks."""
    normal = unicodedata.normalize("NFKC", char)
    return not any(ch.isalnum() or unicodedata.combining(ch) for ch in normal)


SEPARATOR = st.characters(blacklist_categories=("L", "N", "M", "Cs")).filter(is_separator)
SEPARATORS = st.text(SEPARATOR, min_size=1, max_size=3)
NEIGHBOURS = ["", "fs", "gmail", "db", "bulk", "v2", "mcp.tools", "API", "x9", "Ops"]


@st.composite
def renamed_default_word(draw: st.DrawFn) -> tuple[str, str]:
    """A default word with every letter in either case, separators inserted anywhere
    between its letters, and neighbours set off by separators."""
    word = draw(st.sampled_from(DEFAULT_WORDS))
    letters = word.replace("_", "")
    out = []
    for index, letter in enumerate(letters):
        if index and draw(st.booleans()):
            out.append(draw(SEPARATORS))
        out.append(letter.upper() if draw(st.booleans()) else letter)
    prefix, suffix = draw(st.sampled_from(NEIGHBOURS)), draw(st.sampled_from(NEIGHBOURS))
    body = "".join(out)
    if prefix:
        body = prefix + draw(SEPARATORS) + body
    if suffix:
        body = body + draw(SEPARATORS) + suffix
    return word, body


@given(case=renamed_default_word())
def test_separators_and_case_changes_keep_a_default_word_matching(case: tuple[str, str]) -> None:
    word, action_type = case
    assert matched_word(action_type) == word


@given(
    word=st.sampled_from(DEFAULT_WORDS),
    glue=st.sampled_from(["bulk", "soft", "un", "auto", "force"]),
    after=st.sampled_from(["", "all", "now", "db", "_v2"]),
)
def test_a_default_word_glued_into_a_part_still_matches(word: str, glue: str, after: str) -> None:
    assert matched_word(glue + word + after) == word


@given(
    action_type=st.text(max_size=300),
    words=st.lists(st.text("abcdeé_", min_size=1, max_size=80).filter(word_parts), max_size=3),
)
def test_the_description_stays_short_whatever_the_input(action_type: str, words: list[str]) -> None:
    settings = SuspiciousSettings(words=(*words, *DEFAULT_WORDS), exact=tuple(words), globs=("*",))
    for finding in detect_suspicious(action_type, settings):
        assert len(finding.description) < DESCRIPTION_LIMIT


def test_the_longest_description_is_under_the_limit() -> None:
    long_entry = "a" * 100
    action_type = "b" * 64 + "_" + "a" * 63
    assert len(action_type) == 128
    for settings in (
        SuspiciousSettings(words=(long_entry[:63],)),
        SuspiciousSettings(words=(), exact=(action_type,)),
        SuspiciousSettings(words=(), globs=("b" * 64 + "*",)),
    ):
        [finding] = detect_suspicious(action_type, settings)
        assert len(finding.description) < DESCRIPTION_LIMIT
        assert "…" in finding.description


# -- exact and glob entries ----------------------------------------------------------------


def test_exact_entries_match_the_whole_normalised_type() -> None:
    settings = SuspiciousSettings(words=(), exact=("rm", "shell_exec"))
    for action_type in ("rm", "RM", "Rm", " rm "):
        assert matched_word(action_type, settings) == "rm", action_type
    for action_type in ("shell.exec", "shellExec", "SHELL-EXEC", "ｓｈｅｌｌ＿ｅｘｅｃ"):  # noqa: RUF001
        assert matched_word(action_type, settings) == "shell_exec", action_type
    for action_type in ("rmdir", "fs.rm", "rm_rf", "r_m", "shell", "shell_exec_v2"):
        assert matched_word(action_type, settings) is None, action_type


def test_an_exact_entry_is_compared_as_word_parts() -> None:
    assert matched_word("fs.rm", SuspiciousSettings(words=(), exact=("fs_rm",))) == "fs_rm"
    assert matched_word("fs_rm", SuspiciousSettings(words=(), exact=("fsRm",))) == "fsRm"


def test_glob_entries_match_the_raw_type_case_insensitively() -> None:
    settings = SuspiciousSettings(words=(), globs=("shell.*", "exec_[0-9]"))
    for action_type in ("shell.exec", "SHELL.Exec", "shell.", "exec_7", "EXEC_7"):
        assert matched_word(action_type, settings) is not None, action_type
    for action_type in ("myshell.exec", "shell_exec", "exec_77", "exec_x"):
        assert matched_word(action_type, settings) is None, action_type


def test_globs_use_the_policy_glob_syntax() -> None:
    # No backslash escapes: a literal "*" is written "[*]", as in the policy format.
    settings = SuspiciousSettings(words=(), globs=("admin[*]",))
    assert matched_word("admin*", settings) == "admin[*]"
    assert matched_word("admins", settings) is None


def test_entries_are_tried_words_then_exact_then_globs() -> None:
    settings = SuspiciousSettings(words=("drop",), exact=("drop_table",), globs=("*table*",))
    assert matched_word("drop_table", settings) == "drop"
    settings = SuspiciousSettings(words=("purge",), exact=("drop_table",), globs=("*table*",))
    assert matched_word("DROP_TABLE", settings) == "drop_table"
    assert matched_word("create_table", settings) == "*table*"


def test_the_first_configured_word_that_matches_is_reported() -> None:
    action_type = "delete_payment"
    assert matched_word(action_type, SuspiciousSettings(words=("payment", "delete"))) == "payment"
    assert matched_word(action_type, SuspiciousSettings(words=("delete", "payment"))) == "delete"


# -- the finding ---------------------------------------------------------------------------


def test_the_finding_recommends_approval() -> None:
    assert detect_suspicious("gmail.sendEmail", DEFAULTS) == [
        Finding(
            type=SUSPICIOUS_ACTION,
            severity=0.7,
            description=(
                "action type 'gmail.sendEmail' matches the suspicious word 'send_email' "
                "in 'sendEmail'"
            ),
            recommended_action="require_approval",
        )
    ]


def test_the_description_names_the_entry_and_the_part_it_matched() -> None:
    def description(action_type: str, settings: SuspiciousSettings = DEFAULTS) -> str:
        [finding] = detect_suspicious(action_type, settings)
        return finding.description

    assert description("delete") == "action type 'delete' matches the suspicious word 'delete'"
    assert description("fs.bulkdelete_v2") == (
        "action type 'fs.bulkdelete_v2' matches the suspicious word 'delete' in 'bulkdelete'"
    )
    assert description("db.DROP_TABLE") == (
        "action type 'db.DROP_TABLE' matches the suspicious word 'drop' in 'DROP'"
    )
    assert description("RM", SuspiciousSettings(exact=("rm",))) == (
        "action type 'RM' matches the suspicious exact type 'rm'"
    )
    assert description("shell.exec", SuspiciousSettings(globs=("shell.*",))) == (
        "action type 'shell.exec' matches the suspicious glob 'shell.*'"
    )


def test_a_long_action_type_is_clipped_in_the_description() -> None:
    action_type = "x" * 100 + "_delete"
    [finding] = detect_suspicious(action_type, DEFAULTS)
    assert finding.description == (
        f"action type '{'x' * 63}…' matches the suspicious word 'delete' in 'delete'"
    )


def test_at_most_one_finding_per_action() -> None:
    settings = SuspiciousSettings(exact=("delete_payment",), globs=("*",))
    assert len(detect_suspicious("delete_payment_transfer", settings)) == 1


def test_disabled_detector_finds_nothing() -> None:
    settings = SuspiciousSettings(enabled=False, exact=("rm",), globs=("*",))
    for action_type in ("delete", "send_email", "rm", "anything"):
        assert detect_suspicious(action_type, settings) == []


def test_no_words_no_finding() -> None:
    assert detect_suspicious("delete", SuspiciousSettings(words=())) == []


# -- settings ------------------------------------------------------------------------------


def test_default_settings() -> None:
    assert DEFAULT_WORDS == (
        "delete",
        "remove",
        "drop",
        "truncate",
        "send_email",
        "transfer",
        "payment",
    )
    assert (DEFAULTS.words, DEFAULTS.exact, DEFAULTS.globs, DEFAULTS.enabled) == (
        DEFAULT_WORDS,
        (),
        (),
        True,
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"words": ("delete", "__")}, "words[1]: '__' has no letters or digits"),
        ({"words": ("",)}, "words[0]: '' has no letters or digits"),
        ({"exact": ("-",)}, "exact[0]: '-' has no letters or digits"),
        ({"globs": ("ok*", "[a")}, "globs[1]: invalid glob '[a': unclosed '[' at position 0"),
        ({"words": (3,)}, "words[0]: expected a string, got 3"),
    ],
)
def test_invalid_settings_name_the_entry(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        SuspiciousSettings(**changes)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_settings_given_lists_hold_tuples_and_stay_hashable() -> None:
    settings = SuspiciousSettings(words=["delete"], exact=["rm"], globs=["x*"])  # type: ignore[arg-type]
    same = SuspiciousSettings(words=("delete",), exact=("rm",), globs=("x*",))
    assert settings == same
    assert hash(settings) == hash(same)
    assert matched_word("RM", settings) == "rm"


# -- purity --------------------------------------------------------------------------------


def test_the_detector_imports_only_the_standard_library_and_the_domain() -> None:
    tree = ast.parse(Path(suspicious.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    outside = {
        name
        for name in imported
        if name.split(".")[0] not in sys.stdlib_module_names
        and not name.startswith("gateway.domain.")
    }
    assert not outside, outside


# -- docs/policy.md, "Suspicious action types" ---------------------------------------------


def doc_section() -> str:
    text = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
    return text.split("## Suspicious action types", 1)[1].split("\n## ", 1)[0]


def doc_rows() -> list[tuple[str, ...]]:
    rows = re.findall(r"^\| `([^`]*)` \| ([^|]*) \| ([^|]*) \|$", doc_section(), re.MULTILINE)
    return [tuple(cell.strip() for cell in row) for row in rows]


def test_doc_table_has_rows() -> None:
    assert len(doc_rows()) >= 10


@pytest.mark.parametrize("row", doc_rows(), ids=lambda row: row[0])
def test_doc_table_row_is_what_the_detector_does(row: tuple[str, ...]) -> None:
    action_type, parts, word = row
    assert ", ".join(word_parts(action_type)) == parts
    assert matched_word(action_type) == (None if word == "none" else word.strip("`"))


def test_doc_config_block_is_the_default_settings() -> None:
    [block] = re.findall(r"```yaml\n(.*?)```", doc_section(), re.DOTALL)
    config = yaml.safe_load(block)
    assert SuspiciousSettings(**config["detection"]["suspicious"]) == DEFAULTS


def test_doc_finding_example_is_the_real_finding() -> None:
    [block] = re.findall(r"```json\n(.*?)```", doc_section(), re.DOTALL)
    documented = json.loads(block)
    [finding] = detect_suspicious("gmail.sendEmail", DEFAULTS)
    assert documented == {
        "type": finding.type,
        "severity": finding.severity,
        "recommended_action": finding.recommended_action,
        "description": finding.description,
    }
