"""Drives the official Python SDK (PyPI ``notbank``), unmodified, through a session against a
server, over its WebSocket or its HTTP connection; run by tests/test_clients_sdk.py in the SDK's
own venv. Arguments: ws|http, host:port, APIKey, APISecret, UserId, the username of a user
sharing an account. Each step prints one JSON line: {"step", "value"} or {"step", "error"}.

The steps are the SDK's own calls, in order; a new call is one more entry in ``steps``.
"""

import dataclasses
import json
import sys

from notbank_python_sdk.client_connection_factory import (
    new_rest_client_connection,
    new_websocket_client_connection,
)
from notbank_python_sdk.notbank_client import NotbankClient
from notbank_python_sdk.requests_models.authenticate_request import AuthenticateRequest
from notbank_python_sdk.requests_models.get_user_info import GetUserInfoRequest
from notbank_python_sdk.requests_models.get_user_permissions import GetUserPermissionsRequest
from notbank_python_sdk.requests_models.user_accounts import GetUserAccountsRequest
from notbank_python_sdk.requests_models.user_devices import GetUserDevicesRequest
from notbank_python_sdk.requests_models.web_authenticate_user_request import (
    WebAuthenticateUserRequest,
)


def say(step, value=None, error=None):
    doc = {"step": step}
    if error is not None:
        doc["error"] = f"{type(error).__name__}: {error}"
    else:
        doc["value"] = plain(value)
    print(json.dumps(doc, default=str), flush=True)


def plain(value):
    """The SDK's dataclasses (alone or in a list) as JSON-ready dicts."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def run(step, call):
    try:
        value = call()
    except Exception as e:  # the SDK's refusal, reported as the step's outcome
        say(step, error=e)
        return None
    say(step, value)
    return value


def main():
    mode, host, key, secret, user_id, mate = sys.argv[1:7]
    if mode == "ws":
        connection = new_websocket_client_connection(url=host, request_timeout=10)
        connection.connect()
    else:
        connection = new_rest_client_connection(url=host)
    client = NotbankClient(connection)
    uid = int(user_id)
    steps = [
        ("login", lambda: client.authenticate(AuthenticateRequest(key, secret, user_id))),
        ("userInfo", lambda: client.get_user_info(GetUserInfoRequest())),
        ("userInfoById", lambda: client.get_user_info(GetUserInfoRequest(user_id=uid))),
        ("mateInfo", lambda: client.get_user_info(GetUserInfoRequest(username=mate))),
        ("permissions", lambda: client.get_user_permissions(GetUserPermissionsRequest(uid))),
        ("accounts", lambda: client.get_user_accounts(GetUserAccountsRequest(user_id=uid))),
        ("devices", lambda: client.get_user_devices(GetUserDevicesRequest(user_id=uid))),
    ]
    for step, call in steps:
        run(step, call)
    logins = [run("login2", lambda: client.authenticate(AuthenticateRequest(key, secret, uid)))]
    token = getattr(logins[0], "session_token", None)
    request = WebAuthenticateUserRequest(session_token=token)
    run("resume", lambda: client.web_authenticate_user(request))
    run("logout", client.logout)
    run("afterLogout", lambda: client.get_user_info(GetUserInfoRequest()))
    client.close()


main()
