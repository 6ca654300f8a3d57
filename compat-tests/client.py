"""Requests as a Matrix client, shared by the compat tests: a requester (`As`: a
user's token, or an appservice's as_token with `?user_id=`), path quoting, room creation
for either kind of room (a Synapse room or a local one, picked by `m.federate`), sending,
and a matrix-nio client for a user."""

import secrets
import urllib.parse

import httpx
from nio import AsyncClient

import stack


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


class As:
    """Requests as one requester: a user's token, or the appservice's
    as_token with an optional `?user_id=`."""

    def __init__(self, token: str, user_id: str | None = None):
        self.token, self.user_id = token, user_id

    def __call__(self, method: str, path: str, params: dict | None = None, body=None) -> httpx.Response:
        params = dict(params or {})
        if self.user_id is not None:
            params["user_id"] = self.user_id
        return httpx.request(
            method,
            f"{stack.HS_URL}/_matrix/client{path}",
            params=params,
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def ok(self, method: str, path: str, params: dict | None = None, body=None) -> dict:
        resp = self(method, path, params, body)
        assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json()


def of(user: stack.User) -> As:
    return As(user.access_token)


def failure(resp: httpx.Response) -> tuple[int, str | None]:
    try:
        return resp.status_code, resp.json().get("errcode")
    except ValueError:
        return resp.status_code, None


def create_room(creator: As, federate: bool, **fields) -> str:
    room_id = creator.ok(
        "POST",
        "/v3/createRoom",
        body={
            "preset": "private_chat",
            # Synapse 1.163 defaults to version 12, which local rooms cannot be.
            "room_version": "10",
            "creation_content": {"m.federate": federate},
            **fields,
        },
    )["room_id"]
    # Otherwise the local variant would test Synapse.
    wanted = "a Synapse room" if federate else "a local room (!hs_...)"
    assert room_id.startswith("!hs_") == (not federate), f"wanted {wanted}, createRoom made {room_id}"
    return room_id


def send_text(sender: As, room_id: str, body: str, params: dict | None = None) -> str:
    txn = secrets.token_hex(8)
    path = f"/v3/rooms/{q(room_id)}/send/m.room.message/{txn}"
    return sender.ok("PUT", path, params, {"msgtype": "m.text", "body": body})["event_id"]


def new_nio(user: stack.User) -> AsyncClient:
    client = AsyncClient(stack.HS_URL, user.user_id)
    client.access_token = user.access_token
    client.user_id = user.user_id
    return client


def two_rooms(owner: stack.User, other: stack.User) -> tuple[str, str]:
    """A Synapse room and a local room, both with owner and other joined."""
    rooms = []
    for federate in (True, False):
        room_id = create_room(of(owner), federate, invite=[other.user_id])
        of(other).ok("POST", f"/v3/join/{q(room_id)}")
        rooms.append(room_id)
    return rooms[0], rooms[1]
