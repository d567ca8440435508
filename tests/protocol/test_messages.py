"""Payload decoding: a key of the wrong type names the key; o that is not an object is m=5."""

from __future__ import annotations

import pytest

from protocol.errors import SUCCESS, ErrorCode, StandardResponse
from protocol.messages import (
    AuthenticateUserReply,
    AuthenticateUserRequest,
    Empty,
    PayloadDecoder,
    PayloadError,
    ResetPassword2Request,
    ResetPasswordRequest,
)

decoder = PayloadDecoder(ResetPassword2Request)


def test_errorcode_texts_are_the_documented_ones() -> None:
    assert {c.value: c.text for c in ErrorCode} == {
        0: None,
        20: "Not Authorized",
        100: "Invalid Response",
        101: "Operation Failed",
        102: "Server Error",
        104: "Resource Not Found",
        106: "Operation Not Supported",
    }
    assert SUCCESS == StandardResponse(True, None, 0, None)


def test_userid_is_accepted_as_integer_or_decimal_string() -> None:
    assert decoder.decode('{"UserId": 5}') == ResetPassword2Request(UserId=5)
    assert decoder.decode('{"UserId": "5"}') == ResetPassword2Request(UserId="5")


def test_unknown_keys_are_ignored_and_missing_keys_are_none() -> None:
    assert decoder.decode('{"Other": [1, 2]}') == ResetPassword2Request()
    assert PayloadDecoder(ResetPasswordRequest).decode({}) == ResetPasswordRequest(None)


@pytest.mark.parametrize(
    ("o", "detail"),
    [
        ('{"Password": 5}', "Password must be a string, not an integer"),
        ('{"UserId": true}', "UserId must be an integer or a string, not a boolean"),
        ('{"PendingCode": {}}', "PendingCode must be a string, not an object"),
        ({"SecurityQuestionAnswer": [1]}, "SecurityQuestionAnswer must be a string, not an array"),
        ('{"Code": 1.5}', "Code must be an integer or a string, not a number"),
    ],
)
def test_a_key_of_the_wrong_type_is_code_100_naming_the_key(o: object, detail: str) -> None:
    result = decoder.decode(o)  # type: ignore[arg-type]
    assert isinstance(result, PayloadError)
    assert (result.code, result.routable) == (ErrorCode.INVALID_REQUEST, True)
    assert result.detail == detail


@pytest.mark.parametrize("o", ["not json", "[1]", "5", '"text"', "[" * 3000])
def test_o_that_is_not_a_json_object_is_unroutable(o: str) -> None:
    result = decoder.decode(o)
    assert isinstance(result, PayloadError) and not result.routable


def test_o_null_is_no_payload_as_the_python_sdk_pings() -> None:
    assert PayloadDecoder(Empty).decode("null") == Empty()


def test_secrets_do_not_appear_in_reprs() -> None:
    assert "hunter2" not in repr(ResetPassword2Request(UserId=1, Password="hunter2"))
    assert "tok" not in repr(AuthenticateUserReply(Authenticated=True, SessionToken="tok"))


def test_keys_match_their_fields_whatever_their_case() -> None:
    decoder = PayloadDecoder(AuthenticateUserRequest)
    got = decoder.decode('{"username": "alice", "PASSWORD": "pw", "extra": 1}')
    assert got == AuthenticateUserRequest(UserName="alice", Password="pw")
    assert decoder.decode({"userName": "bob"}) == AuthenticateUserRequest(UserName="bob")


def test_the_documented_spelling_wins_over_another_case_of_it() -> None:
    got = PayloadDecoder(AuthenticateUserRequest).decode('{"username": "x", "UserName": "y"}')
    assert got == AuthenticateUserRequest(UserName="y")


def test_a_wrongly_typed_key_in_another_case_is_named_as_documented() -> None:
    got = PayloadDecoder(AuthenticateUserRequest).decode('{"username": 5}')
    assert isinstance(got, PayloadError) and got.routable
    assert got.detail == "UserName must be a string, not an integer"
