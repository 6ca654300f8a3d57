"""Revocations reach hungryserv's token cache at once: after Synapse accepted a request
that ends a session — passing through hungryserv — the old token stops working on local
rooms immediately, as it does at Synapse, instead of for up to 60 s (the cache's lifetime).

Each test first uses the token on a local room (so it is cached), revokes it through
hungryserv, and then checks that Synapse's own `whoami` refuses the token and that
hungryserv refuses it for a local room too.
"""

import secrets
import urllib.parse

import httpx
import pytest

import stack


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def call(token: str | None, method: str, path: str, body=None, base: str = stack.HS_URL) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{base}{path}", json=body, headers=headers, timeout=30)


def ok(token: str | None, method: str, path: str, body=None) -> dict:
    resp = call(token, method, path, body)
    assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
    return resp.json()


def login(user: stack.User, refresh: bool = False) -> dict:
    return ok(None, "POST", "/_matrix/client/v3/login", {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user.user_id},
        "password": user.password,
        "refresh_token": refresh,
    })


@pytest.fixture
def admin() -> stack.User:
    return stack.register_user(admin=True)


@pytest.fixture
def room(admin) -> str:
    """A public local room: any user may read its state after joining."""
    room_id = ok(admin.access_token, "POST", "/_matrix/client/v3/createRoom", {
        "preset": "public_chat", "room_version": "10", "creation_content": {"m.federate": False},
    })["room_id"]
    assert room_id.startswith("!hs_")
    return room_id


def local(token: str, room_id: str) -> httpx.Response:
    return call(token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members")


def joined(token: str, room_id: str) -> None:
    ok(token, "POST", f"/_matrix/client/v3/join/{q(room_id)}", {})
    assert local(token, room_id).status_code == 200


def assert_revoked(token: str, room_id: str) -> None:
    at_synapse = call(token, "GET", "/_matrix/client/v3/account/whoami", base=stack.SYNAPSE_URL)
    assert at_synapse.status_code == 401, at_synapse.text
    resp = local(token, room_id)
    assert (resp.status_code, resp.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN"), resp.text


def test_admin_deactivation_v1(admin, room):
    user = stack.register_user()
    joined(user.access_token, room)
    ok(admin.access_token, "POST", f"/_synapse/admin/v1/deactivate/{q(user.user_id)}", {"erase": False})
    assert_revoked(user.access_token, room)


def test_admin_deactivation_v2(admin, room):
    user = stack.register_user()
    joined(user.access_token, room)
    ok(admin.access_token, "PUT", f"/_synapse/admin/v2/users/{q(user.user_id)}", {"deactivated": True})
    assert_revoked(user.access_token, room)


def test_admin_device_deletion(admin, room):
    user = stack.register_user()
    second = login(user)
    joined(user.access_token, room)
    assert local(second["access_token"], room).status_code == 200
    path = f"/_synapse/admin/v2/users/{q(user.user_id)}/devices/{q(second['device_id'])}"
    ok(admin.access_token, "DELETE", path)
    assert_revoked(second["access_token"], room)
    # The other device stays.
    assert local(user.access_token, room).status_code == 200

    third = login(user)
    assert local(third["access_token"], room).status_code == 200
    ok(admin.access_token, "POST", f"/_synapse/admin/v2/users/{q(user.user_id)}/delete_devices",
       {"devices": [third["device_id"]]})
    assert_revoked(third["access_token"], room)


def uia(token: str, method: str, path: str, body: dict, user: stack.User) -> None:
    """A request behind user-interactive auth: the 401 with a session, then the password."""
    first = call(token, method, path, body)
    assert first.status_code == 401, first.text
    auth = {"type": "m.login.password", "session": first.json()["session"],
            "identifier": {"type": "m.id.user", "user": user.user_id}, "password": user.password}
    ok(token, method, path, body | {"auth": auth})


def test_own_device_deletion(room):
    user = stack.register_user()
    joined(user.access_token, room)
    second, third = login(user), login(user)
    assert local(second["access_token"], room).status_code == 200
    assert local(third["access_token"], room).status_code == 200
    uia(user.access_token, "DELETE", f"/_matrix/client/v3/devices/{q(second['device_id'])}", {}, user)
    assert_revoked(second["access_token"], room)
    uia(user.access_token, "POST", "/_matrix/client/v3/delete_devices", {"devices": [third["device_id"]]}, user)
    assert_revoked(third["access_token"], room)
    assert local(user.access_token, room).status_code == 200


def test_refresh_ends_what_synapse_ends(room):
    """Synapse keeps the last two refresh tokens of a device: the second refresh deletes the
    first access token from its database. Its own in-memory cache keeps accepting that token
    until it restarts; after a restart it refuses it, and so must hungryserv, whose cache
    entry (made before the refreshes) the refreshes dropped."""
    user = stack.register_user()
    first = login(user, refresh=True)
    joined(first["access_token"], room)
    second = ok(None, "POST", "/_matrix/client/v3/refresh", {"refresh_token": first["refresh_token"]})
    third = ok(None, "POST", "/_matrix/client/v3/refresh", {"refresh_token": second["refresh_token"]})
    stack.stack_lib("synapse_stop")
    stack.stack_lib("synapse_start")
    assert_revoked(first["access_token"], room)
    assert local(third["access_token"], room).status_code == 200
