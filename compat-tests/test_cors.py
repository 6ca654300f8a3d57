"""CORS: hungryserv's own answers carry exactly the headers Synapse sends,
compared with a live Synapse answering the same request (or, for a room,
the same request about one of its own rooms). Forwarded answers keep
Synapse's headers once each, preflights for local rooms and the merged
/sync are answered 204 without a token, and a wrong method on a local
room's path is Synapse's 405 Matrix error.

The browser's side of it is test_browser.py.
"""

import urllib.parse

import httpx
import pytest

import stack

CORS = [
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
]
ORIGIN = "http://127.0.0.1:1"


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def cors(resp: stack.RawResponse) -> dict[str, list[str]]:
    """Each CORS header's values, in order (a doubled header shows as two)."""
    return {name: [v for k, v in resp.headers if k.lower() == name] for name in CORS}


@pytest.fixture(scope="module")
def rooms() -> dict[str, str]:
    """A Synapse room and a local room, made by the example bridge's bot."""
    bot = stack.example_appservice()
    out = {}
    with httpx.Client(base_url=stack.HS_URL, timeout=30) as http:
        for kind in ("synapse", "local"):
            resp = http.post(
                "/_matrix/client/v3/createRoom",
                json={"name": f"cors {kind}", "creation_content": {"m.federate": kind == "synapse"}},
                headers={"Authorization": f"Bearer {bot.as_token}"},
            )
            assert resp.status_code == 200, resp.text
            out[kind] = resp.json()["room_id"]
    assert out["local"].startswith("!hs_") and not out["synapse"].startswith("!hs_"), out
    return out


def both(method: str, target: str, headers: dict | None = None, body: bytes | None = None):
    """The same request to Synapse directly and through hungryserv."""
    headers = {"Origin": ORIGIN, **(headers or {})}
    return (
        stack.raw_request(stack.SYNAPSE_URL, method, target, headers, body),
        stack.raw_request(stack.HS_URL, method, target, headers, body),
    )


def test_synapse_sends_four_cors_headers():
    """The premise: the live Synapse sends the four headers, once each, with the
    values hungryserv copies (src/cors.rs)."""
    synapse, _ = both("GET", "/_matrix/client/versions")
    assert cors(synapse) == {
        "access-control-allow-origin": ["*"],
        "access-control-allow-methods": ["GET, HEAD, POST, PUT, DELETE, OPTIONS"],
        "access-control-allow-headers": ["X-Requested-With, Content-Type, Authorization, Date"],
        "access-control-expose-headers": ["Synapse-Trace-Id, Server"],
    }


def test_merged_endpoints_answer_with_synapse_headers(user):
    """/versions and /sync are answered by hungryserv (merged)."""
    auth = {"Authorization": f"Bearer {user.access_token}"}
    for method, target, headers in [
        ("GET", "/_matrix/client/versions", {}),
        ("GET", "/_matrix/client/v3/sync?timeout=0", auth),
        ("GET", "/_matrix/client/v3/joined_rooms", auth),
        # An error of the merged /sync: the token is checked before anything else.
        ("GET", "/_matrix/client/v3/sync?timeout=0", {"Authorization": "Bearer nonsense"}),
    ]:
        synapse, ours = both(method, target, headers)
        assert ours.status == synapse.status, (target, ours.body)
        assert cors(ours) == cors(synapse), target


def test_local_room_answers_and_errors_match_a_synapse_room(rooms, user):
    auth = {"Authorization": f"Bearer {user.access_token}"}
    for method, path, headers, body in [
        # Not a member: 403 from each.
        ("GET", "/messages?dir=b&limit=1", auth, None),
        # No token: 401 M_MISSING_TOKEN from each.
        ("GET", "/messages?dir=b&limit=1", {}, None),
        # Not JSON.
        ("PUT", "/send/m.room.message/t1", auth, b"{"),
    ]:
        synapse = stack.raw_request(
            stack.SYNAPSE_URL,
            method,
            f"/_matrix/client/v3/rooms/{q(rooms['synapse'])}{path}",
            {"Origin": ORIGIN, **headers},
            body,
        )
        ours = stack.raw_request(
            stack.HS_URL,
            method,
            f"/_matrix/client/v3/rooms/{q(rooms['local'])}{path}",
            {"Origin": ORIGIN, **headers},
            body,
        )
        assert ours.status == synapse.status, (method, path, ours.body, synapse.body)
        assert cors(ours) == cors(synapse), (method, path)


def test_wrong_method_on_a_local_room_is_synapses_405(rooms, user):
    auth = {"Authorization": f"Bearer {user.access_token}"}
    answers = {
        kind: stack.raw_request(
            base, "POST", f"/_matrix/client/v3/rooms/{q(rooms[kind])}/messages", {"Origin": ORIGIN, **auth}, b"{}"
        )
        for kind, base in (("synapse", stack.SYNAPSE_URL), ("local", stack.HS_URL))
    }
    synapse, ours = answers["synapse"], answers["local"]
    assert synapse.status == 405, synapse.body
    assert ours.status == 405, ours.body
    assert httpx.Response(200, content=ours.body).json() == httpx.Response(200, content=synapse.body).json()
    assert httpx.Response(200, content=ours.body).json()["errcode"] == "M_UNRECOGNIZED"
    assert cors(ours) == cors(synapse)


@pytest.mark.parametrize(
    "method,path",
    [("PUT", "/send/m.room.message/t1"), ("GET", "/messages"), ("POST", "/read_markers")],
)
def test_preflight_for_a_local_room_is_answered_like_synapses(rooms, method, path):
    """A browser's preflight carries no token: hungryserv answers it as Synapse
    answers the same preflight about a Synapse room."""
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    synapse = stack.raw_request(
        stack.SYNAPSE_URL, "OPTIONS", f"/_matrix/client/v3/rooms/{q(rooms['synapse'])}{path}", preflight
    )
    ours = stack.raw_request(stack.HS_URL, "OPTIONS", f"/_matrix/client/v3/rooms/{q(rooms['local'])}{path}", preflight)
    assert synapse.status == 204
    assert ours.status == synapse.status, ours.body
    assert ours.body == synapse.body == b""
    assert cors(ours) == cors(synapse)


def test_preflight_for_merged_sync_and_forwarded_paths():
    """/sync's preflight is answered by hungryserv, a forwarded path's by Synapse
    (through hungryserv): both as Synapse answers it."""
    for target, method in [
        ("/_matrix/client/v3/sync", "GET"),
        ("/_matrix/client/v3/createRoom", "POST"),
        ("/_matrix/client/v3/login", "POST"),
        ("/_matrix/client/v3/profile/%40someone%3Ahs/displayname", "PUT"),
    ]:
        synapse, ours = both(
            "OPTIONS",
            target,
            {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": "authorization"},
        )
        assert synapse.status == 204
        assert ours.status == synapse.status, target
        assert cors(ours) == cors(synapse), target


def test_forwarded_answers_keep_synapses_headers_once(user):
    for method, target, headers in [
        ("GET", "/_matrix/client/v3/account/whoami", {"Authorization": f"Bearer {user.access_token}"}),
        ("GET", "/_matrix/client/v3/account/whoami", {}),
        ("GET", "/_matrix/client/v3/login", {}),
    ]:
        synapse, ours = both(method, target, headers)
        assert ours.status == synapse.status, target
        assert cors(ours) == cors(synapse), target
