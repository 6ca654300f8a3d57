"""Deleting rooms: Synapse's admin delete API (v1, v2 + delete_status) and
Beeper's com.beeper.yeet endpoint, answered by hungryserv for local rooms and
forwarded to Synapse for Synapse's. A deleted room disappears at once (404),
its members' next sync shows it under `leave`, its rows are purged in the
background, and a blocked room cannot be joined again.
"""

import json
import secrets
import subprocess
import time

import httpx
import pytest

import stack
from client import q



def call(token: str, method: str, path: str, body=None, params=None) -> httpx.Response:
    return httpx.request(
        method,
        f"{stack.HS_URL}{path}",
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def ok(token: str, method: str, path: str, body=None, params=None) -> dict:
    resp = call(token, method, path, body, params)
    assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
    return resp.json()


def create_room(token: str, federate: bool = False, params=None, **fields) -> str:
    room_id = ok(
        token,
        "POST",
        "/_matrix/client/v3/createRoom",
        {"preset": "public_chat", "room_version": "10", "creation_content": {"m.federate": federate}, **fields},
        params,
    )["room_id"]
    assert room_id.startswith("!hs_") == (not federate), room_id
    return room_id


def send(token: str, room_id: str, body: str, params=None) -> str:
    path = f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/{secrets.token_hex(8)}"
    return ok(token, "PUT", path, {"msgtype": "m.text", "body": body}, params)["event_id"]


def join(token: str, room_id: str, params=None) -> httpx.Response:
    return call(token, "POST", f"/_matrix/client/v3/join/{q(room_id)}", {}, params)


def sync(token: str, since: str | None = None) -> dict:
    params = {"timeout": "0"} | ({"since": since} if since else {})
    return ok(token, "GET", "/_matrix/client/v3/sync", params=params)


def sql(query: str) -> str:
    """One query against hungryserv's database, as the superuser."""
    out = subprocess.run(
        ["bash", stack.STACK_LIB, "pg_psql", stack.STACK_DIR, "-d", "hungryserv", "-tAc", query],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def rows_left(room_id: str) -> int:
    r = room_id.replace("'", "''")
    return int(
        sql(
            f"SELECT (SELECT count(*) FROM events WHERE room_id = '{r}')"
            f" + (SELECT count(*) FROM current_state WHERE room_id = '{r}')"
            f" + (SELECT count(*) FROM memberships WHERE room_id = '{r}')"
            f" + (SELECT count(*) FROM room_aliases WHERE room_id = '{r}')"
            f" + (SELECT count(*) FROM receipts WHERE room_id = '{r}')"
            f" + (SELECT count(*) FROM rooms WHERE room_id = '{r}')"
        )
    )


def purged(room_id: str) -> bool:
    # The members' leaves go deletion.leaves_kept_s (3 s in the test stack) after the rest;
    # the database's newest event is kept until a newer one exists (stream positions are
    # never handed out twice): tests write one elsewhere so the purge can finish.
    return rows_left(room_id) == 0


def events_left(room_id: str) -> list[str]:
    r = room_id.replace("'", "''")
    return sql(f"SELECT type || ' ' || coalesce(content->>'membership', '') FROM events WHERE room_id = '{r}'").split("\n")


def wait_purged(admin: stack.User, room_id: str) -> None:
    def done() -> bool:
        results = ok(admin.access_token, "GET", f"/_synapse/admin/v2/rooms/{q(room_id)}/delete_status")["results"]
        return results[-1]["status"] == "complete"

    stack.wait_until(done, 20, "the purge to complete")


@pytest.fixture
def admin() -> stack.User:
    return stack.register_user(admin=True)


def test_non_admin_is_refused_as_synapse_refuses(user):
    local = create_room(user.access_token)
    synapse_room = create_room(user.access_token, federate=True)
    for room_id in (local, synapse_room):
        for version in ("v1", "v2"):
            resp = call(user.access_token, "DELETE", f"/_synapse/admin/{version}/rooms/{q(room_id)}", {})
            assert resp.status_code == 403, resp.text
            assert resp.json() == {"errcode": "M_FORBIDDEN", "error": "You are not a server admin"}
    # The room is untouched.
    send(user.access_token, local, "still here")


def test_admin_v2_delete_is_immediate_and_purges(admin, user):
    member = stack.register_user()
    room_id = create_room(user.access_token, room_alias_name=f"del{secrets.token_hex(4)}")
    assert join(member.access_token, room_id).status_code == 200
    for i in range(30):
        send(user.access_token, room_id, f"message {i}")
    since = sync(member.access_token)["next_batch"]
    assert room_id in sync(member.access_token)["rooms"]["join"]

    started = time.monotonic()
    delete_id = ok(admin.access_token, "DELETE", f"/_synapse/admin/v2/rooms/{q(room_id)}", {})["delete_id"]
    # Gone at once, for members too.
    for token, method, path in [
        (user.access_token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b"),
        (member.access_token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state"),
        (user.access_token, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/x1"),
    ]:
        resp = call(token, method, path, {"msgtype": "m.text", "body": "x"} if method == "PUT" else None)
        assert (resp.status_code, resp.json()["errcode"]) == (404, "M_NOT_FOUND"), resp.text
    elapsed = time.monotonic() - started
    assert elapsed < 2, elapsed

    # The member's next sync shows the room under leave, with the leave.
    left = sync(member.access_token, since)["rooms"].get("leave", {})
    assert room_id in left, left
    timeline = left[room_id]["timeline"]["events"]
    assert any(
        e["type"] == "m.room.member" and e["state_key"] == member.user_id and e["content"]["membership"] == "leave"
        for e in timeline
    )
    assert room_id not in ok(member.access_token, "GET", "/_matrix/client/v3/joined_rooms")["joined_rooms"]

    wait_purged(admin, room_id)
    # Messages gone; state events (with the leaves) stay a little longer for late syncs.
    left_events = events_left(room_id)
    assert not [e for e in left_events if e.startswith("m.room.message")], left_events
    assert left_events.count("m.room.member leave") == 2, left_events
    status = ok(admin.access_token, "GET", f"/_synapse/admin/v2/rooms/delete_status/{delete_id}")
    assert status["status"] == "complete"
    assert status["purged_events"] >= 30
    assert sorted(status["shutdown_room"]["kicked_users"]) == sorted([user.user_id, member.user_id])
    assert len(status["shutdown_room"]["local_aliases"]) == 1
    # Another event anywhere lets the purge take the room's last row (see migration 0007).
    send(user.access_token, create_room(user.access_token), "newer")
    stack.wait_until(lambda: purged(room_id), 30, "the rows to be gone")


def test_admin_v1_delete_answers_like_synapse(admin, user):
    room_id = create_room(user.access_token)
    send(user.access_token, room_id, "hello")
    body = ok(admin.access_token, "DELETE", f"/_synapse/admin/v1/rooms/{q(room_id)}", {"purge": True})
    assert body == {
        "kicked_users": [user.user_id],
        "failed_to_kick_users": [],
        "local_aliases": [],
        "new_room_id": None,
    }
    resp = call(user.access_token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages", params={"dir": "b"})
    assert (resp.status_code, resp.json()["errcode"]) == (404, "M_NOT_FOUND")
    # Deleting it again: the room is unknown now.
    resp = call(admin.access_token, "DELETE", f"/_synapse/admin/v1/rooms/{q(room_id)}", {})
    assert (resp.status_code, resp.json()["errcode"]) == (404, "M_NOT_FOUND")


def test_bad_fields_are_refused_and_nothing_happens(admin, user):
    room_id = create_room(user.access_token)
    for body, code in [
        ({"block": "yes"}, "M_BAD_JSON"),
        ({"purge": 1}, "M_BAD_JSON"),
        ({"new_room_user_id": user.user_id}, "M_INVALID_PARAM"),
    ]:
        resp = call(admin.access_token, "DELETE", f"/_synapse/admin/v2/rooms/{q(room_id)}", body)
        assert (resp.status_code, resp.json()["errcode"]) == (400, code), resp.text
    send(user.access_token, room_id, "still here")


def test_blocked_room_cannot_be_joined(admin, user):
    room_id = create_room(user.access_token)
    ok(admin.access_token, "DELETE", f"/_synapse/admin/v2/rooms/{q(room_id)}", {"block": True})
    wait_purged(admin, room_id)
    other = stack.register_user()
    resp = join(other.access_token, room_id)
    assert resp.status_code == 403, resp.text
    assert resp.json() == {"errcode": "M_FORBIDDEN", "error": "This room has been blocked on this server"}
    resp = call(other.access_token, "POST", f"/_matrix/client/v3/rooms/{q(room_id)}/join", {})
    assert (resp.status_code, resp.json()["errcode"]) == (403, "M_FORBIDDEN"), resp.text
    # Only joins and knocks are refused as blocked: a send whose event type is "join" is a
    # request about an unknown room.
    resp = call(user.access_token, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/join/t1", {})
    assert (resp.status_code, resp.json()["errcode"]) == (404, "M_NOT_FOUND"), resp.text
    # Not blocked: unknown.
    room2 = create_room(user.access_token)
    ok(admin.access_token, "DELETE", f"/_synapse/admin/v2/rooms/{q(room2)}", {"block": False})
    assert join(other.access_token, room2).status_code == 404


def test_synapse_rooms_are_deleted_by_synapse(admin, user):
    room_id = create_room(user.access_token, federate=True)
    delete_id = ok(admin.access_token, "DELETE", f"/_synapse/admin/v2/rooms/{q(room_id)}", {})["delete_id"]
    assert not delete_id.startswith("hsdel_")

    def done() -> bool:
        return ok(admin.access_token, "GET", f"/_synapse/admin/v2/rooms/delete_status/{delete_id}")[
            "status"
        ] == "complete"

    stack.wait_until(done, 60, "Synapse to delete its room")


def test_yeet_by_the_creating_appservice_only(admin):
    example, other = stack.example_appservice(), stack.other_appservice()
    room_id = create_room(example.as_token)
    send(example.as_token, room_id, "bridged")
    path = f"/_matrix/client/unstable/com.beeper.yeet/rooms/{q(room_id)}/delete"

    resp = call(other.as_token, "POST", path, {})
    assert (resp.status_code, resp.json()["errcode"]) == (403, "M_FORBIDDEN"), resp.text
    user = stack.register_user()
    resp = call(user.access_token, "POST", path, {})
    assert (resp.status_code, resp.json()["errcode"]) == (403, "M_FORBIDDEN"), resp.text

    ok(example.as_token, "POST", path, {})
    resp = call(example.as_token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state")
    assert (resp.status_code, resp.json()["errcode"]) == (404, "M_NOT_FOUND")
    wait_purged(admin, room_id)

    # A server admin may yeet any local room.
    room2 = create_room(example.as_token)
    ok(admin.access_token, "POST", f"/_matrix/client/unstable/com.beeper.yeet/rooms/{q(room2)}/delete", {})
    assert call(example.as_token, "GET", f"/_matrix/client/v3/rooms/{q(room2)}/state").status_code == 404


def test_purge_resumes_after_sigkill(admin, user):
    room_id = create_room(user.access_token)
    for i in range(20):
        send(user.access_token, room_id, f"m{i}")
    # Pretend the process died mid-purge: the deletion is recorded, nothing purged yet.
    delete_id = "hsdel_resume" + secrets.token_hex(6)
    r = room_id.replace("'", "''")
    sql(
        f"WITH r AS (UPDATE rooms SET deleted_at = now() WHERE room_id = '{r}' RETURNING room_id) "
        f"INSERT INTO room_deletions (delete_id, room_id, requested_by, status, purge, block) "
        f"SELECT '{delete_id}', room_id, '{admin.user_id}', 'active', true, false FROM r"
    )
    stack.restart_hungryserv_after_sigkill()
    resp = call(user.access_token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state")
    assert (resp.status_code, resp.json()["errcode"]) == (404, "M_NOT_FOUND")
    wait_purged(admin, room_id)
    status = ok(admin.access_token, "GET", f"/_synapse/admin/v2/rooms/delete_status/{delete_id}")
    assert status["status"] == "complete"
    assert status["purged_events"] >= 20
    send(user.access_token, create_room(user.access_token), "newer")
    stack.wait_until(lambda: purged(room_id), 30, "the resumed purge")
    assert status["shutdown_room"]["kicked_users"] == [user.user_id]


def test_bridge_gets_the_leaves_of_a_yeeted_room():
    import asyncio

    from bridge import Api, RecordingBridge, portal, received, register_ghost, wait_for

    reg = stack.example_appservice()
    record: list = []

    async def scenario() -> tuple[str, list[str]]:
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
            bot = Api(http, reg.as_token)
            tag = secrets.token_hex(3)
            ghosts = [reg.ghost(f"yeet_{tag}_{n}") for n in range(2)]
            for ghost in ghosts:
                await register_ghost(bot, ghost[1:].split(":")[0])
            room_id = await portal(bot, ghosts)
            await bot.send(room_id, "last words", user_id=ghosts[0])
            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            try:
                # Earlier tests may have left the bridge's queue in backoff: retry now.
                await bot.call("POST", f"/v1/appservice/{q(reg.id)}/ping", body={"transaction_id": tag})
                await bot.call("POST", f"/unstable/com.beeper.yeet/rooms/{q(room_id)}/delete", body={})

                def left() -> set[str]:
                    return {
                        e["state_key"]
                        for _, e in received(record, {room_id})
                        if e["type"] == "m.room.member" and e["content"].get("membership") == "leave"
                    }

                await wait_for(lambda: left() >= {reg.bot, *ghosts}, 30, "the leaves to reach the bridge")
            finally:
                await bridge.stop()
            return room_id, ghosts

    asyncio.run(scenario())


def test_admin_room_api_for_local_rooms(admin, user):
    room_id = create_room(user.access_token, name="admin view")
    send(user.access_token, room_id, "hello")
    base = f"/_synapse/admin/v1/rooms/{q(room_id)}"
    for suffix in ("", "/members", "/state"):
        resp = call(user.access_token, "GET", base + suffix)
        assert (resp.status_code, resp.json()["errcode"]) == (403, "M_FORBIDDEN"), resp.text
    details = ok(admin.access_token, "GET", base)
    assert details["room_id"] == room_id and details["name"] == "admin view"
    assert details["joined_members"] == 1 and details["creator"] == user.user_id
    assert details["version"] == "10" and details["federatable"] is False
    assert ok(admin.access_token, "GET", base + "/members") == {"total": 1, "members": [user.user_id]}
    state = ok(admin.access_token, "GET", base + "/state")["state"]
    assert {e["type"] for e in state} >= {"m.room.create", "m.room.member", "m.room.name", "m.room.power_levels"}
    ok(admin.access_token, "DELETE", base, {})
    resp = call(admin.access_token, "GET", base)
    assert (resp.status_code, resp.json()["errcode"]) == (404, "M_NOT_FOUND")


def test_delete_every_room_of_an_appservice(admin):
    example = stack.example_appservice()
    user = stack.register_user()
    clean = [create_room(example.as_token) for _ in range(2)]
    for room_id in clean:
        ok(example.as_token, "POST", f"/_matrix/client/v3/rooms/{q(room_id)}/invite", {"user_id": user.user_id})
        assert join(user.access_token, room_id).status_code == 200
    mixed = create_room(example.as_token)
    # A member from another server (local rooms do not federate; an operator's import
    # could still have put one there): the bridge reset must leave this room alone.
    sql(
        "INSERT INTO memberships (room_id, user_id, membership, stream) "
        f"VALUES ('{mixed}', '@stranger:elsewhere.example', 'join', 0)"
    )
    listed = ok(admin.access_token, "GET", f"/_hungryserv/admin/v1/appservices/{q(example.id)}/rooms")["rooms"]
    assert set(clean) | {mixed} <= set(listed)

    resp = call(user.access_token, "POST", f"/_hungryserv/admin/v1/appservices/{q(example.id)}/delete_rooms", {})
    assert resp.status_code == 403
    result = ok(admin.access_token, "POST", f"/_hungryserv/admin/v1/appservices/{q(example.id)}/delete_rooms", {})
    deleted = {d["room_id"] for d in result["deleted"]}
    refused = {r["room_id"]: r["reason"] for r in result["refused"]}
    assert set(clean) <= deleted and mixed not in deleted
    assert "@stranger:elsewhere.example" in refused[mixed]
    for room_id in clean:
        resp = call(user.access_token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state")
        assert resp.status_code == 404
    send(example.as_token, mixed, "still bridged")
    listed = ok(admin.access_token, "GET", f"/_hungryserv/admin/v1/appservices/{q(example.id)}/rooms")["rooms"]
    assert mixed in listed and not set(clean) & set(listed)
    resp = call(admin.access_token, "GET", "/_hungryserv/admin/v1/appservices/nonesuch/rooms")
    assert resp.status_code == 404


def test_admin_room_list_has_synapse_and_local_rooms(admin, user):
    tag = secrets.token_hex(4)
    local = create_room(user.access_token, name=f"listed {tag}")
    synapse_room = create_room(user.access_token, federate=True, name=f"listed {tag}")
    body = ok(admin.access_token, "GET", "/_synapse/admin/v1/rooms", params={"limit": "1000000"})
    rooms = {r["room_id"]: r for r in body["rooms"]}
    assert local in rooms and synapse_room in rooms
    assert body["total_rooms"] >= len(rooms)
    assert rooms[local]["name"] == f"listed {tag}" and rooms[local]["joined_members"] == 1
    found = ok(admin.access_token, "GET", "/_synapse/admin/v1/rooms", params={"search_term": tag})["rooms"]
    assert {r["room_id"] for r in found} == {local, synapse_room}
    resp = call(user.access_token, "GET", "/_synapse/admin/v1/rooms")
    assert (resp.status_code, resp.json()["errcode"]) == (403, "M_FORBIDDEN")


def admin_messages_room(creator: stack.User, member: stack.User, federate: bool) -> str:
    """A room whose history the admin (never a member) could not read through the client
    API: `joined` history visibility, a member who came and went, a redaction."""
    room_id = create_room(
        creator.access_token,
        federate=federate,
        initial_state=[
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}
        ],
    )
    for i in range(4):
        send(creator.access_token, room_id, f"before {i}")
    assert join(member.access_token, room_id).status_code == 200
    doomed = send(member.access_token, room_id, "redacted later")
    send(member.access_token, room_id, "from the member")
    ok(member.access_token, "POST", f"/_matrix/client/v3/rooms/{q(room_id)}/leave", {})
    ok(creator.access_token, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/redact/{q(doomed)}/r1", {})
    for i in range(3):
        send(creator.access_token, room_id, f"after {i}")
    return room_id


def admin_messages(admin: stack.User, room_id: str, **params) -> dict:
    params = {k: v for k, v in params.items() if v is not None}
    return ok(admin.access_token, "GET", f"/_synapse/admin/v1/rooms/{q(room_id)}/messages", params=params)


def walk_admin_messages(admin: stack.User, room_id: str, direction: str, limit: int) -> list[dict]:
    """Every event, page by page, until a page has no `end` (or no events)."""
    events, token = [], None
    while True:
        page = admin_messages(admin, room_id, dir=direction, limit=str(limit), **{"from": token})
        events += page["chunk"]
        if "end" not in page or not page["chunk"]:
            return events
        token = page["end"]


def seen_as(event: dict, names: dict) -> tuple:
    """What a client would compare of an event: IDs replaced by role names."""
    content = {k: v for k, v in event["content"].items() if k != "m.federate"}
    if event["type"] == "m.room.power_levels":
        # Synapse's default power levels of a new room name more event types (m.call.invite,
        # historical) than ours; not what this test is about.
        content = {k: v for k, v in content.items() if k in ("users", "ban", "kick", "redact", "invite")}
    if event["type"] == "m.room.redaction":
        content.pop("redacts", None)
    return (
        event["type"],
        names.get(event["sender"], event["sender"]),
        names.get(event.get("state_key"), event.get("state_key")),
        json.dumps(content, sort_keys=True),
        "redacted_because" in event.get("unsigned", {}),
    )


def test_admin_messages_of_a_local_room_match_synapse(admin):
    creator, member = stack.register_user(), stack.register_user()
    names = {creator.user_id: "creator", member.user_id: "member", "": ""}
    seen = {}
    for federate in (True, False):
        room_id = admin_messages_room(creator, member, federate)
        path = f"/_synapse/admin/v1/rooms/{q(room_id)}/messages"
        # Members who are not server admins are refused, in Synapse's words.
        resp = call(creator.access_token, "GET", path)
        assert (resp.status_code, resp.json()) == (
            403,
            {"errcode": "M_FORBIDDEN", "error": "You are not a server admin"},
        ), resp.text
        # The admin is no member, and the room's history is `joined`: through the client API
        # they see nothing.
        assert call(admin.access_token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages").status_code == 403

        # Without parameters: the first 10 events from the room's start (the admin API's `dir`
        # defaults to `f`, the client API's to `b`).
        first = admin_messages(admin, room_id)
        assert len(first["chunk"]) == 10 and "start" in first and "end" in first
        assert first["chunk"][0]["type"] == "m.room.create"
        # Backwards from the end in pages of 3 until `end` is gone.
        # (Synapse sends `end` on the last page with events and then an empty page without it;
        # we omit it at once, as the spec says and as the client API does: see
        # last_page_without_end in test_rooms_differential.py.)
        backwards = walk_admin_messages(admin, room_id, "b", 3)
        # Forwards from the start in pages of 4.
        forwards = walk_admin_messages(admin, room_id, "f", 4)
        assert [e["event_id"] for e in forwards] == [e["event_id"] for e in reversed(backwards)]
        # `to` stops where the first page of 3 ended.
        head = admin_messages(admin, room_id, dir="b", limit="3")
        upto = admin_messages(admin, room_id, dir="b", limit="100", to=head["end"])
        assert [e["event_id"] for e in upto["chunk"]] == [e["event_id"] for e in head["chunk"]]
        # A filter: messages only, senders restricted.
        only = admin_messages(
            admin,
            room_id,
            dir="f",
            limit="100",
            filter=json.dumps({"types": ["m.room.message"], "senders": [member.user_id]}),
        )
        seen[federate] = {
            "default": [seen_as(e, names) for e in first["chunk"]],
            "backwards": [seen_as(e, names) for e in backwards],
            "forwards": [seen_as(e, names) for e in forwards],
            "upto": [seen_as(e, names) for e in upto["chunk"]],
            "filtered": [seen_as(e, names) for e in only["chunk"]],
        }
    synapse_view, local_view = seen[True], seen[False]
    for key in synapse_view:
        assert local_view[key] == synapse_view[key], key
    # Everything is there, including what the room's visibility hides from non-members.
    bodies = [json.loads(e[3]).get("body") for e in local_view["forwards"] if e[0] == "m.room.message"]
    assert bodies == [f"before {i}" for i in range(4)] + [None, "from the member"] + [f"after {i}" for i in range(3)]
    assert [json.loads(e[3]).get("body") for e in local_view["filtered"]] == [None, "from the member"]


def test_no_alias_points_at_a_deleted_room(admin):
    """An appservice may put aliases of its namespace on a room it created; once the room is
    deleted it may not (it used to get 200 and an alias naming a deleted room). A join by an
    alias that still names one (a row left behind) gets the deleted room's answer, as a join by
    its ID does."""
    bridge = stack.relay_appservice()
    room_id = create_room(bridge.as_token)
    alias = f"#relay_{secrets.token_hex(4)}:{stack.SERVER_NAME}"
    ok(bridge.as_token, "PUT", f"/_matrix/client/v3/directory/room/{q(alias)}", {"room_id": room_id})
    ok(admin.access_token, "DELETE", f"/_synapse/admin/v2/rooms/{q(room_id)}", {"block": True, "purge": False})
    resp = call(bridge.as_token, "GET", f"/_matrix/client/v3/directory/room/{q(alias)}")
    assert resp.status_code == 404, resp.text
    resp = call(bridge.as_token, "PUT", f"/_matrix/client/v3/directory/room/{q(alias)}", {"room_id": room_id})
    assert (resp.status_code, resp.json()["errcode"]) == (404, "M_NOT_FOUND"), resp.text
    assert call(bridge.as_token, "GET", f"/_matrix/client/v3/directory/room/{q(alias)}").status_code == 404

    # A row naming the deleted room, as a race with the deletion could leave behind.
    r = room_id.replace("'", "''")
    sql(f"INSERT INTO room_aliases (alias, room_id, creator) VALUES ('{alias}', '{r}', '{bridge.bot}')")
    other = stack.register_user()
    for endpoint in ["join", "knock"]:
        resp = call(other.access_token, "POST", f"/_matrix/client/v3/{endpoint}/{q(alias)}", {})
        assert resp.json() == {"errcode": "M_FORBIDDEN", "error": "This room has been blocked on this server"}, (
            endpoint, resp.text)
    assert call(other.access_token, "GET", f"/_matrix/client/v3/directory/room/{q(alias)}").status_code == 404
