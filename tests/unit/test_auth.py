"""Authentication from bearer-token metadata, and role checks."""

from __future__ import annotations

import pytest

from gateway.api.auth import Authenticator, require_role
from gateway.domain.principals import Principal, Role, token_digest
from gateway.errors import Forbidden, Unauthenticated

AGENT = Principal("agent-1", Role.AGENT, token_digest("tok-agent"))
APPROVER = Principal("ana", Role.APPROVER, token_digest("tok-approver"))
AUDITOR = Principal("audrey", Role.AUDITOR, token_digest("tok-auditor"))
ADMIN = Principal("root", Role.ADMIN, token_digest("tok-admin"))
PRINCIPALS = (AGENT, APPROVER, AUDITOR, ADMIN)


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(PRINCIPALS)


def unauthenticated(auth: Authenticator, metadata: list[tuple[str, str | bytes]] | None) -> str:
    with pytest.raises(Unauthenticated) as caught:
        auth.authenticate(metadata)
    return str(caught.value)


# -- authenticate --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "principal"),
    [
        ("tok-agent", AGENT),
        ("tok-approver", APPROVER),
        ("tok-auditor", AUDITOR),
        ("tok-admin", ADMIN),
    ],
)
def test_known_token_authenticates_as_its_principal(
    auth: Authenticator, token: str, principal: Principal
) -> None:
    assert auth.authenticate([("authorization", f"Bearer {token}")]) == principal


def test_metadata_may_carry_other_keys(auth: Authenticator) -> None:
    metadata: list[tuple[str, str | bytes]] = [
        ("user-agent", "grpc-python"),
        ("x-request-id", "r-1"),
        ("authorization", "Bearer tok-approver"),
    ]
    assert auth.authenticate(metadata) == APPROVER


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive(auth: Authenticator, scheme: str) -> None:
    assert auth.authenticate([("authorization", f"{scheme} tok-agent")]) == AGENT


def test_bytes_metadata_value_is_decoded(auth: Authenticator) -> None:
    assert auth.authenticate([("authorization", b"Bearer tok-agent")]) == AGENT


def test_whitespace_around_the_token_is_ignored(auth: Authenticator) -> None:
    assert auth.authenticate([("authorization", "Bearer   tok-agent  ")]) == AGENT


@pytest.mark.parametrize("second", ["Bearer tok-admin", "Bearer tok-agent", "Bearer nope"])
def test_two_authorization_entries_are_refused(auth: Authenticator, second: str) -> None:
    """Whichever came first, and even when both are the same: which one counts would be
    a guess (a proxy or sidecar may have added its own)."""
    metadata: list[tuple[str, str | bytes]] = [("authorization", "Bearer tok-agent")]
    assert auth.authenticate(metadata) == AGENT
    assert unauthenticated(auth, [*metadata, ("authorization", second)]) == (
        "more than one 'authorization' metadata entry; send one"
    )


@pytest.mark.parametrize("metadata", [None, [], [("x-other", "Bearer tok-agent")]])
def test_missing_authorization_metadata_is_unauthenticated(
    auth: Authenticator, metadata: list[tuple[str, str | bytes]] | None
) -> None:
    assert unauthenticated(auth, metadata) == ("missing 'authorization: Bearer <token>' metadata")


def test_authorization_key_is_matched_exactly(auth: Authenticator) -> None:
    # gRPC lower-cases metadata keys; anything else is not the authorization header
    unauthenticated(auth, [("Authorization", "Bearer tok-agent")])


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic dG9rLWFnZW50",
        "Token tok-agent",
        "tok-agent",
        "Bearer:tok-agent",
        " Bearer tok-agent",
    ],
)
def test_wrong_scheme_or_empty_token_is_unauthenticated(auth: Authenticator, header: str) -> None:
    assert unauthenticated(auth, [("authorization", header)]) == (
        "authorization metadata must be 'Bearer <token>'"
    )


@pytest.mark.parametrize(
    "token",
    [
        "tok-nobody",
        "TOK-AGENT",  # tokens are case-sensitive
        "tok-agen",
        "tok-agentx",
        token_digest("tok-agent"),  # the stored digest is not a credential
    ],
)
def test_unknown_token_is_unauthenticated(auth: Authenticator, token: str) -> None:
    assert unauthenticated(auth, [("authorization", f"Bearer {token}")]) == "unknown token"


def test_no_principals_means_no_one_authenticates() -> None:
    assert unauthenticated(Authenticator([]), [("authorization", "Bearer tok-agent")]) == (
        "unknown token"
    )


def test_principals_may_be_any_iterable() -> None:
    auth = Authenticator(p for p in PRINCIPALS)
    assert auth.authenticate([("authorization", "Bearer tok-auditor")]) == AUDITOR


# -- require_role -----------------------------------------------------------------------------


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_principal_with_a_listed_role_is_allowed(principal: Principal) -> None:
    require_role(principal, frozenset({principal.role}))
    require_role(principal, frozenset(Role))


@pytest.mark.parametrize("role", [r for r in Role if r is not Role.ADMIN])
def test_admin_is_not_an_agent_an_approver_or_an_auditor(role: Role) -> None:
    with pytest.raises(Forbidden):
        require_role(ADMIN, frozenset({role}))


@pytest.mark.parametrize(
    ("principal", "role"),
    [(p, r) for p in PRINCIPALS for r in Role if r is not p.role],
)
def test_principal_without_a_listed_role_is_forbidden(principal: Principal, role: Role) -> None:
    with pytest.raises(Forbidden):
        require_role(principal, frozenset({role}))


def test_forbidden_message_names_the_principal_its_role_and_the_needed_roles() -> None:
    with pytest.raises(Forbidden) as caught:
        require_role(AGENT, frozenset({Role.AUDITOR, Role.APPROVER}))
    assert str(caught.value) == (
        "principal 'agent-1' has role agent; this call needs approver, auditor"
    )


def test_empty_role_set_forbids_everyone() -> None:
    for principal in PRINCIPALS:
        with pytest.raises(Forbidden):
            require_role(principal, frozenset())


def test_a_principal_is_allowed_where_its_role_is_one_of_several() -> None:
    require_role(ADMIN, frozenset({Role.APPROVER, Role.ADMIN}))
    require_role(APPROVER, frozenset({Role.APPROVER, Role.ADMIN}))
    with pytest.raises(Forbidden):
        require_role(AGENT, frozenset({Role.APPROVER, Role.ADMIN}))
