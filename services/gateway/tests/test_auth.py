"""The pure rules of ``praxis_gateway.auth``: scopes, the route table, tokens, OIDC claims."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from praxis_contracts.errors import Forbidden, Unauthenticated
from praxis_gateway.auth import (
    Principal,
    Scope,
    TokenIndex,
    bearer,
    due_for_touch,
    grants,
    is_bootstrap_admin,
    looks_like_jwt,
    new_record,
    new_token,
    oidc_principal,
    oidc_scopes,
    require,
    required_scope,
    token_hash,
    token_id_of,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("granted", "needed", "ok"),
    [
        ({Scope.READ}, Scope.READ, True),
        ({Scope.READ}, Scope.OPERATE, False),
        ({Scope.OPERATE}, Scope.READ, True),
        ({Scope.OPERATE}, Scope.ADMIN, False),
        ({Scope.ADMIN}, Scope.OPERATE, True),
        (set(), Scope.READ, False),
    ],
)
def test_scopes_imply_those_below(granted: set[Scope], needed: Scope, ok: bool) -> None:
    assert grants(granted, needed) is ok


def test_forbidden_names_the_missing_scope() -> None:
    with pytest.raises(Forbidden) as raised:
        require(Principal("token:x", frozenset({Scope.READ})), Scope.ADMIN)
    assert "admin" in raised.value.message
    assert raised.value.details == {"required_scope": "admin"}


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/healthz", None),
        ("GET", "/openapi.json", None),
        ("GET", "/api/v1/protocols/runs", Scope.READ),
        ("GET", "/api/v1/locks", Scope.READ),
        ("POST", "/api/v1/protocols/runs", Scope.OPERATE),
        ("POST", "/api/v1/protocols/runs/{run_id}/actions", Scope.OPERATE),
        ("POST", "/api/v1/locks/{asset_id}/force-release", Scope.ADMIN),
        ("POST", "/api/v1/protocols/sources", Scope.ADMIN),
        ("PATCH", "/api/v1/resources/{accession_id}", Scope.ADMIN),
        ("DELETE", "/api/v1/workcells/{workcell}", Scope.ADMIN),
        ("GET", "/api/v1/tokens", Scope.ADMIN),
        ("POST", "/api/v1/tokens", Scope.ADMIN),
        ("POST", "/api/v1/anything-new", Scope.ADMIN),  # a new write is closed until listed
    ],
)
def test_route_table(method: str, path: str, scope: Scope | None) -> None:
    assert required_scope(method, path) == scope


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   "])
def test_a_missing_or_malformed_authorization_is_unauthenticated(header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        bearer(header)


def test_the_bearer_is_read_case_insensitively() -> None:
    assert bearer("bearer abc") == bearer("Bearer abc") == "abc"


def test_bootstrap_admin() -> None:
    assert is_bootstrap_admin("s3cret", "s3cret")
    assert not is_bootstrap_admin("s3cret", "other")
    assert not is_bootstrap_admin("", None)
    assert not is_bootstrap_admin("anything", "")


def test_a_token_carries_its_id_and_only_its_hash_is_stored() -> None:
    token_id = uuid.uuid4()
    token = new_token(token_id)
    assert token_id_of(token) == token_id
    assert not looks_like_jwt(token)
    record = new_record(
        token_id, token, name="ci", scopes=[Scope.ADMIN, Scope.READ], created_by="x", now=T0
    )
    assert record.hash == token_hash(token) and token not in record.model_dump_json()
    assert record.scopes == [Scope.READ, Scope.ADMIN]
    assert token_id_of("praxis_nothex_abc") is None
    assert new_token(token_id) != token  # a new secret each time


def index_with(**changes: object) -> tuple[TokenIndex, str]:
    token_id = uuid.uuid4()
    token = new_token(token_id)
    record = new_record(token_id, token, name="ci", scopes=[Scope.READ], created_by="x", now=T0)
    index = TokenIndex()
    index.put(record.model_copy(update=changes), 1)
    return index, token


def test_the_index_verifies_live_tokens_only() -> None:
    index, token = index_with()
    principal = index.verify(token, T0).principal()
    assert principal.name == "token:ci" and principal.scopes == {Scope.READ}

    with pytest.raises(Unauthenticated, match="invalid"):
        index.verify(token[:-1] + ("A" if token[-1] != "A" else "B"), T0)  # wrong secret
    with pytest.raises(Unauthenticated, match="invalid"):
        index.verify(new_token(uuid.uuid4()), T0)  # unknown id

    revoked, token = index_with(revoked_at=T0)
    with pytest.raises(Unauthenticated, match="revoked"):
        revoked.verify(token, T0)

    expiring, token = index_with(expires_at=T0 + timedelta(seconds=10))
    expiring.verify(token, T0)
    with pytest.raises(Unauthenticated, match="expired"):
        expiring.verify(token, T0 + timedelta(seconds=10))


def test_the_index_keeps_the_newest_revision() -> None:
    index, token = index_with()
    record, _ = index.get(token_id_of(token))  # type: ignore[misc]
    index.put(record.model_copy(update={"revoked_at": T0}), 5)
    index.put(record, 3)  # a late, older write (e.g. a touch) does not undo the revocation
    with pytest.raises(Unauthenticated, match="revoked"):
        index.verify(token, T0)
    index.remove(record.id)
    assert index.records() == []


def test_last_used_is_due_once_a_minute() -> None:
    index, token = index_with()
    record = index.verify(token, T0)
    assert due_for_touch(record, T0)
    touched = record.model_copy(update={"last_used_at": T0})
    assert not due_for_touch(touched, T0 + timedelta(seconds=59))
    assert due_for_touch(touched, T0 + timedelta(seconds=60))


@pytest.mark.parametrize(
    ("claims", "scopes"),
    [
        ({"scope": "openid praxis:operate"}, {Scope.OPERATE}),
        ({"scope": ["praxis:read", "praxis:admin"]}, {Scope.READ, Scope.ADMIN}),
        ({"scope": "read admin"}, set()),  # generic names are not ours
        ({"scope": "praxis:root"}, set()),
        ({}, set()),
        ({"scope": 42}, set()),
    ],
)
def test_oidc_scopes(claims: dict[str, object], scopes: set[Scope]) -> None:
    assert oidc_scopes(claims) == scopes


def test_oidc_principal() -> None:
    principal = oidc_principal({"sub": "alice", "roles": ["praxis:read"]}, "roles")
    assert principal == Principal("oidc:alice", frozenset({Scope.READ}))
    with pytest.raises(Unauthenticated):
        oidc_principal({"scope": "praxis:read"})


def test_jwt_shape() -> None:
    assert looks_like_jwt("a.b.c")
    assert not looks_like_jwt("a..c")
    assert not looks_like_jwt("abc")
