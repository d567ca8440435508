"""engine.apikeys and the API-key login of engine.sessions on their own (docs/rules.md, "API
keys")."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import msgspec
import pytest

from oms_auth.crypto import mail_context
from oms_auth.engine.apikeys import ApiKeys, NewApiKey
from oms_auth.engine.deps import Deps
from oms_auth.engine.reset import Resets
from oms_auth.engine.sessions import LoginState, Sessions
from oms_auth.errors import InvalidValue, NotAuthorized, NotFound, OperationFailed

from ..helpers import make_user, sql, store_contents
from .conftest import Told, as_key_session, caller

INVALID = "Invalid API key login"


@pytest.fixture
def sessions(deps: Deps) -> Sessions:
    return Sessions(deps, delay_unit=0)


@pytest.fixture
def keys(sessions: Sessions) -> ApiKeys:
    return ApiKeys(sessions)


def sign(secret: str, nonce: str | int, user_id: str | int, key: str) -> str:
    """As a bot computes it: HMAC-SHA256 of Nonce + UserId + APIKey, keyed with the secret."""
    text = f"{nonce}{user_id}{key}".encode()
    return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()


async def new_key(deps: Deps, keys: ApiKeys, username: str = "bot") -> tuple[int, NewApiKey]:
    uid = await make_user(deps, username, permissions=["Trading"])
    added = await keys.add(await caller(deps, username), None, ["trading"], "10.0.0.1")
    return uid, added


async def test_a_user_adds_lists_and_removes_its_own_keys(
    deps: Deps, keys: ApiKeys, told: Told
) -> None:
    uid, added = await new_key(deps, keys)
    assert added.user_id == uid and added.permissions == ("Trading",)
    assert len(added.key) == 32 and int(added.key, 16) >= 0
    assert len(added.secret) == 64 and added.secret not in repr(added)
    me = await caller(deps, "bot")
    listed = await keys.keys(me, str(uid))
    assert [(k.key, k.user_id, k.permissions) for k in listed] == [(added.key, uid, ("Trading",))]
    assert added.secret not in repr(listed)
    await keys.remove(me, uid, added.key, "10.0.0.1")
    assert await keys.keys(me, None) == []
    with pytest.raises(NotFound):
        await keys.remove(me, uid, added.key, "10.0.0.1")
    assert told.counts.count("api_keys_added") == 1 and "api_keys_removed" in told.counts
    actions = [r.action for r in await deps.store.audit_rows(oldest_first=True)]
    keyed = [a for a in actions if a.startswith("api-key")]
    assert keyed == ["api-key-added", "api-key-removed"]


async def test_an_operator_manages_keys_of_users_of_its_oms_only(deps: Deps, keys: ApiKeys) -> None:
    await make_user(deps, "op", permissions=["Operator"])
    op = await caller(deps, "op")
    uid = await make_user(deps, "alice")
    foreign = await make_user(deps, "foreign", oms=2)
    added = await keys.add(op, uid, ["Trading"], "x")
    assert [k.key for k in await keys.keys(op, uid)] == [added.key]
    rows = await deps.store.audit_rows(limit=1)
    assert (rows[0].actor_id, rows[0].target_id) == (op.id, uid)
    await keys.remove(op, uid, added.key, "x")
    with pytest.raises(NotFound):
        await keys.add(op, foreign, [], "x")


async def test_another_user_a_key_session_and_no_login_are_refused(
    deps: Deps, keys: ApiKeys
) -> None:
    uid, added = await new_key(deps, keys)
    await make_user(deps, "other", permissions=["Trading"])
    other = await caller(deps, "other")
    me = await caller(deps, "bot")
    with pytest.raises(NotAuthorized):
        await keys.add(other, uid, [], "x")
    with pytest.raises(NotAuthorized):
        await keys.keys(other, uid)
    with pytest.raises(NotAuthorized):
        await keys.remove(other, uid, added.key, "x")
    bot = as_key_session(me, ("Trading",))
    for call in (
        keys.add(bot, None, [], "x"),
        keys.remove(bot, None, added.key, "x"),
        keys.add(None, uid, [], "x"),
    ):
        with pytest.raises(NotAuthorized):
            await call
    # Another user's key looks missing, even with the right owner named nowhere.
    with pytest.raises(NotFound):
        await keys.remove(other, None, added.key, "x")
    # A key session lists its own user's keys (the records hold only the sealed secret).
    assert [k.key for k in await keys.keys(bot, None)] == [added.key]
    assert len(await keys.keys(me, None)) == 1


@pytest.mark.parametrize(
    "permissions", [["Operator"], [""], ["x" * 65], ["a\x00b"], [f"p{n}" for n in range(17)]]
)
async def test_permissions_are_checked(deps: Deps, keys: ApiKeys, permissions: list[str]) -> None:
    await make_user(deps, "alice")
    me = await caller(deps, "alice")
    with pytest.raises(InvalidValue):
        await keys.add(me, None, permissions, "x")


async def test_a_user_holds_at_most_the_configured_number_of_keys(
    deps: Deps, keys: ApiKeys
) -> None:
    deps.settings = msgspec.structs.replace(deps.settings, api_keys_per_user=2)
    await make_user(deps, "alice")
    me = await caller(deps, "alice")
    await asyncio.gather(*(keys.add(me, None, [], "x") for _ in range(2)))
    with pytest.raises(OperationFailed):
        await keys.add(me, None, [], "x")


async def test_the_secret_is_stored_only_sealed_to_its_key_and_user(
    deps: Deps, keys: ApiKeys
) -> None:
    uid, added = await new_key(deps, keys)
    assert added.secret.encode() not in await store_contents(deps.settings.db)
    record = await deps.store.api_key(added.key)
    assert record is not None and added.secret not in repr(record)
    assert record.secret_sealed != added.secret.encode()
    with pytest.raises(ValueError):  # bound to its key and user: a copied row does not open
        deps.sealer.open(record.secret_sealed, f"api-key:{uid + 1}:{added.key}".encode())
    audit = " ".join(str(r) for r in await deps.store.audit_rows())
    assert added.key in audit and added.secret not in audit


async def test_a_signed_login_opens_a_session_marked_as_the_keys(
    deps: Deps, keys: ApiKeys, sessions: Sessions, told: Told
) -> None:
    uid, added = await new_key(deps, keys)
    nonce = "1700000000000"
    login = await sessions.authenticate_api_key(
        added.key, sign(added.secret, nonce, uid, added.key), uid, nonce, "10.0.0.1"
    )
    assert login.state is LoginState.AUTHENTICATED and login.user is not None
    assert login.token_digest is not None
    session = await deps.store.session(login.token_digest)
    assert session is not None and session.api_key == added.key
    assert "login:ok" in told.counts
    # UserId as a string, Nonce as a number: the texts as sent are what is signed.
    again = await sessions.authenticate_api_key(
        added.key,
        sign(added.secret, 1700000000001, str(uid), added.key),
        str(uid),
        1700000000001,
        "x",
    )
    assert again.state is LoginState.AUTHENTICATED


async def test_a_nonce_is_any_printable_text_accepted_once_per_key(
    deps: Deps, keys: ApiKeys, sessions: Sessions, told: Told
) -> None:
    _, added = await new_key(deps, keys)
    _, other = await new_key(deps, keys, "bot2")

    async def attempt(nonce: int | str, k: NewApiKey = added) -> LoginState:
        signature = sign(k.secret, nonce, k.user_id, k.key)
        login = await sessions.authenticate_api_key(k.key, signature, k.user_id, nonce, "x")
        return login.state

    assert await attempt(5) is LoginState.AUTHENTICATED
    assert await attempt("5") is LoginState.FAILED  # the same text as the integer 5
    assert await attempt(4) is LoginState.AUTHENTICATED  # older is fine: random, not counting
    assert await attempt("a7 Zq~!{x}") is LoginState.AUTHENTICATED
    assert await attempt("~" * 64) is LoginState.AUTHENTICATED
    assert await attempt("a7 Zq~!{x}") is LoginState.FAILED
    assert await attempt(5, other) is LoginState.AUTHENTICATED  # per key
    assert told.counts.count("login:api_key_failed") == 2


@pytest.mark.parametrize(
    "change",
    [
        {"signature": "0" * 64},
        {"signature": None},
        {"signature": "é"},
        {"key": "f" * 32},
        {"key": ""},
        {"user_id": 999},
        {"user_id": None},
        {"nonce": ""},
        {"nonce": "x" * 65},
        {"nonce": "caf\u00e9"},
        {"nonce": "tab\there"},
        {"nonce": True},
        {"nonce": None},
    ],
)
async def test_every_failure_answers_one_text(
    deps: Deps, keys: ApiKeys, sessions: Sessions, change: dict[str, object]
) -> None:
    uid, added = await new_key(deps, keys)
    args: dict[str, object] = {"key": added.key, "user_id": uid, "nonce": "7"}
    args.update({k: v for k, v in change.items() if k != "signature"})
    signature = change.get(
        "signature", sign(added.secret, str(args["nonce"]), str(args["user_id"]), str(args["key"]))
    )
    login = await sessions.authenticate_api_key(
        args["key"],
        signature,
        args["user_id"],
        args["nonce"],
        "x",  # type: ignore[arg-type]
    )
    assert (login.state, login.message, login.user) == (LoginState.FAILED, INVALID, None)


async def test_simultaneous_logins_with_one_nonce_open_one_session(
    deps: Deps, keys: ApiKeys, sessions: Sessions
) -> None:
    deps.settings = msgspec.structs.replace(deps.settings, login_failures_per_user=100)
    uid, added = await new_key(deps, keys)
    signature = sign(added.secret, 42, uid, added.key)
    logins = await asyncio.gather(
        *(sessions.authenticate_api_key(added.key, signature, uid, 42, "x") for _ in range(30))
    )
    assert sum(x.state is LoginState.AUTHENTICATED for x in logins) == 1


async def test_a_burst_of_wrong_signatures_checks_at_most_the_limit(
    deps: Deps, keys: ApiKeys, sessions: Sessions, told: Told
) -> None:
    uid, added = await new_key(deps, keys)
    logins = await asyncio.gather(
        *(sessions.authenticate_api_key(added.key, "0" * 64, uid, n, "10.0.0.1") for n in range(40))
    )
    limit = deps.settings.login_failures_per_user
    assert told.counts.count("api_key_checks") == limit
    assert all(x.state is LoginState.FAILED for x in logins)
    # The holder's password logins are limited too: the attempts were counted as failures.
    assert (await sessions.authenticate("bot", "whatever", "10.0.0.2")).message == (
        "Too many failed login attempts; try again later"
    )


async def test_removing_a_key_ends_its_sessions(
    deps: Deps, keys: ApiKeys, sessions: Sessions, told: Told
) -> None:
    uid, added = await new_key(deps, keys)
    login = await sessions.authenticate_api_key(
        added.key, sign(added.secret, 1, uid, added.key), uid, 1, "x"
    )
    assert login.token_digest is not None
    await keys.remove(await caller(deps, "bot"), None, added.key, "x")
    assert await deps.store.session(login.token_digest) is None
    assert (login.token_digest, "LoggedOutElsewhere") in told.revoked
    late = await sessions.authenticate_api_key(
        added.key, sign(added.secret, 2, uid, added.key), uid, 2, "x"
    )
    assert late.state is LoginState.FAILED


async def test_a_key_session_cannot_start_a_reset_for_another_user(deps: Deps) -> None:
    resets = Resets(deps)
    await make_user(deps, "op", permissions=["Operator"])
    await make_user(deps, "alice")
    op = await caller(deps, "op")
    bot = as_key_session(op, ("Operator",))
    for target in ("alice", "nobody"):
        with pytest.raises(NotAuthorized):
            await resets.request(bot, target, "x")
    await resets.request(bot, "op", "x")  # itself: allowed
    await resets.request(op, "alice", "x")


async def reset_password(deps: Deps, uid: int) -> dict[str, object]:
    """A completed reset of ``uid``; returns the public fields of its password-changed mail."""
    resets = Resets(deps)
    await make_user(deps, "op", permissions=["Operator"])
    target = await deps.store.user_by_id(uid)
    assert target is not None
    await resets.request(await caller(deps, "op"), target.username, "x")
    (sealed,) = (await sql(deps.settings.db, "SELECT sealed FROM outbox WHERE kind = 'reset'"))[0]
    code = msgspec.json.decode(deps.sealer.open(sealed, mail_context(uid, "reset")))["code"]
    await resets.complete(
        user_id=uid, password="Fresh-Start42", code=code, answer=None, totp_code=None, source="x"
    )
    rows = await sql(deps.settings.db, "SELECT public FROM outbox WHERE kind = 'password-changed'")
    return dict(msgspec.json.decode(rows[0][0]))


async def test_a_reset_revokes_the_users_keys(deps: Deps, keys: ApiKeys) -> None:
    uid, added = await new_key(deps, keys)
    public = await reset_password(deps, uid)
    assert await deps.store.api_keys(uid) == [] and public["api_keys"] == "revoked"
    assert await deps.store.api_key(added.key) is None


async def test_a_reset_keeps_the_keys_when_configured(
    deps: Deps, keys: ApiKeys, sessions: Sessions
) -> None:
    deps.settings = msgspec.structs.replace(deps.settings, reset_keeps_api_keys=True)
    uid, added = await new_key(deps, keys)
    public = await reset_password(deps, uid)
    assert [k.key for k in await deps.store.api_keys(uid)] == [added.key]
    assert public["api_keys"] == "kept"
    login = await sessions.authenticate_api_key(
        added.key, sign(added.secret, 1, uid, added.key), uid, 1, "x"
    )
    assert login.state is LoginState.AUTHENTICATED
