"""What happens around local rooms when things pass through hungryserv on their
way to Synapse (profile changes, logouts), and how bad input is refused. Each
test runs against a Synapse room and a local room where the comparison means
something, and asserts what the client sees."""

import concurrent.futures
import json
import os
import secrets

import httpx
import pytest

import stack
from client import As, create_room, failure, of, q, send_text


@pytest.fixture
def owner() -> stack.User:
    return stack.register_user()


def login(user: stack.User) -> str:
    resp = httpx.post(
        f"{stack.HS_URL}/_matrix/client/v3/login",
        json={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id}, "password": user.password},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


@pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
def test_profile_change_updates_member_events(federate, owner):
    me = of(owner)
    room_id = create_room(me, federate)
    name = f"Renamed {secrets.token_hex(3)}"
    me.ok("PUT", f"/v3/profile/{q(owner.user_id)}/displayname", body={"displayname": name})

    def my_member_content() -> dict:
        return me.ok("GET", f"/v3/rooms/{q(room_id)}/state/m.room.member/{q(owner.user_id)}")

    # Synapse updates its rooms in the background; ours are updated before the PUT returns.
    stack.wait_until(lambda: my_member_content().get("displayname") == name, 10, "the new displayname")
    assert my_member_content()["membership"] == "join"
    joined = me.ok("GET", f"/v3/rooms/{q(room_id)}/joined_members")["joined"]
    assert joined[owner.user_id]["display_name"] == name


def test_logout_ends_access_to_local_rooms_at_once(owner):
    token = login(owner)
    device = As(token)
    room_id = create_room(of(owner), federate=False)
    # The token is now resolved and cached by hungryserv.
    assert device("GET", f"/v3/rooms/{q(room_id)}/state").status_code == 200
    assert device("POST", "/v3/logout", body={}).status_code == 200
    # Without the logout dropping the cache entry this would still answer 200 for a minute.
    resp = device("GET", f"/v3/rooms/{q(room_id)}/state")
    assert failure(resp) == (401, "M_UNKNOWN_TOKEN"), resp.text
    # The owner's other session is unaffected.
    assert of(owner)("GET", f"/v3/rooms/{q(room_id)}/state").status_code == 200


def test_bad_input_gets_clear_errors_and_writes_nothing(owner):
    me = of(owner)
    room_id = create_room(me, federate=False)
    send_text(me, room_id, "before")
    base = f"{stack.HS_URL}/_matrix/client/v3/rooms/{q(room_id)}"

    def put(path: str, content: bytes) -> httpx.Response:
        return httpx.put(f"{base}{path}", content=content, headers=owner.auth | {"Content-Type": "application/json"}, timeout=30)

    assert failure(put("/send/m.room.message/t1", b"{not json")) == (400, "M_NOT_JSON")
    assert failure(put("/send/m.room.message/t2", b"[1, 2]")) == (400, "M_BAD_JSON")
    big = b'{"msgtype": "m.text", "body": "' + b"x" * 70_000 + b'"}'
    assert failure(put("/send/m.room.message/t3", big)) == (413, "M_TOO_LARGE")
    assert failure(put("/state/m.room.power_levels/", b'{"users": {"not a user": 100}}')) == (400, "M_BAD_JSON")
    resp = httpx.get(f"{base}/event/not-an-event-id", headers=owner.auth, timeout=30)
    assert resp.status_code in (400, 404), resp.text
    resp = httpx.get(f"{base}/messages", params={"from": "garbage"}, headers=owner.auth, timeout=30)
    # Synapse's words for a token it cannot parse ("Invalid stream token"); the spec walk
    # (test_spec_walk.py, "messages bad from") compares the two kinds of room.
    assert failure(resp) == (400, "M_UNKNOWN")
    # Nothing of the refused requests was written.
    page = me.ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "b", "limit": 50})
    bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["before"]
    # A txn ID whose request was refused is still free.
    ok = put("/send/m.room.message/t1", b'{"msgtype": "m.text", "body": "after"}')
    assert ok.status_code == 200, ok.text


def test_local_alias_resolves_and_joins(owner):
    joiner = stack.register_user()
    alias_name = f"bridged{secrets.token_hex(4)}"
    room_id = create_room(of(owner), federate=False, room_alias_name=alias_name, preset="public_chat")
    alias = f"#{alias_name}:{stack.SERVER_NAME}"
    found = httpx.get(f"{stack.HS_URL}/_matrix/client/v3/directory/room/{q(alias)}", timeout=30)
    assert found.status_code == 200, found.text
    assert found.json()["room_id"] == room_id
    joined = of(joiner).ok("POST", f"/v3/join/{q(alias)}", body={})
    assert joined["room_id"] == room_id
    members = of(joiner).ok("GET", f"/v3/rooms/{q(room_id)}/joined_members")["joined"]
    assert set(members) == {owner.user_id, joiner.user_id}
    # The alias is taken: another room cannot claim it.
    resp = of(joiner)("POST", "/v3/createRoom", body={"room_alias_name": alias_name, "creation_content": {"m.federate": False}})
    assert failure(resp) == (400, "M_ROOM_IN_USE"), resp.text
    # Aliases that are not ours still go to Synapse.
    missing = httpx.get(f"{stack.HS_URL}/_matrix/client/v3/directory/room/{q('#nope' + secrets.token_hex(3) + ':' + stack.SERVER_NAME)}", timeout=30)
    assert failure(missing) == (404, "M_NOT_FOUND")


def test_create_room_alias_races_answer_room_in_use(owner):
    """createRooms with the same room_alias_name racing each other and PUT /directory/room for
    that alias: one request wins; every other createRoom answers 400 M_ROOM_IN_USE "Room alias
    already taken" as Synapse does (never a 500) and leaves no room behind."""
    me = of(owner)
    target = create_room(me, federate=False)
    creates = puts = created = 0
    # Many initial state events make the time between the writer's alias check and its commit
    # long enough for a PUT to land in it now and then (that race answered 500).
    filler = [{"type": "org.example.filler", "state_key": str(i), "content": {"n": i}} for i in range(100)]
    for _ in range(int(os.environ.get("RACE_ROUNDS", "30"))):
        alias_name = f"race{secrets.token_hex(4)}"
        alias = f"#{alias_name}:{stack.SERVER_NAME}"
        body = {
            "room_alias_name": alias_name,
            "preset": "private_chat",
            "creation_content": {"m.federate": False},
            "initial_state": filler,
        }
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            create_answers = [pool.submit(me, "POST", "/v3/createRoom", None, body) for _ in range(3)]
            put_answers = [
                pool.submit(me, "PUT", f"/v3/directory/room/{q(alias)}", None, {"room_id": target}) for _ in range(2)
            ]
        winners = []
        for answer in create_answers:
            resp = answer.result()
            if resp.status_code == 200:
                winners.append(resp.json()["room_id"])
            else:
                assert (resp.status_code, resp.json()) == (
                    400,
                    {"errcode": "M_ROOM_IN_USE", "error": "Room alias already taken"},
                ), resp.text
        created += len(winners)
        for answer in put_answers:
            resp = answer.result()
            if resp.status_code == 200:
                winners.append(target)
            else:
                assert resp.status_code == 409, resp.text
        assert len(winners) == 1, winners
        creates += winners[0] != target
        puts += winners[0] == target
        assert me.ok("GET", f"/v3/directory/room/{q(alias)}")["room_id"] == winners[0]
    # Nothing half-made: the owner is in the target room and the rooms whose createRoom won.
    local = [r for r in me.ok("GET", "/v3/joined_rooms")["joined_rooms"] if r.startswith("!hs_")]
    assert len(local) == 1 + created, (len(local), created)
    print(f"alias races won by createRoom {creates}, by PUT /directory/room {puts}")


@pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
def test_directory_alias_write_and_delete(federate, owner):
    stranger = stack.register_user()
    room_id = create_room(of(owner), federate)
    alias = f"#dir{secrets.token_hex(4)}:{stack.SERVER_NAME}"
    path = f"/v3/directory/room/{q(alias)}"
    # Someone outside the room may not point an alias at it (Synapse's default).
    assert failure(of(stranger)("PUT", path, body={"room_id": room_id})) == (403, "M_FORBIDDEN")
    of(owner).ok("PUT", path, body={"room_id": room_id})
    assert of(stranger).ok("GET", path)["room_id"] == room_id
    # Taken now, by whoever asks.
    assert failure(of(owner)("PUT", path, body={"room_id": room_id}))[0] == 409
    # Only its creator removes it.
    assert failure(of(stranger)("DELETE", path))[0] == 403
    of(owner).ok("DELETE", path)
    assert failure(of(stranger)("GET", path)) == (404, "M_NOT_FOUND")


@pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
def test_forget_after_leaving(federate, owner):
    """POST /forget: refused while joined or invited (Synapse's words), allowed after leaving;
    the room then drops out of initial syncs even with include_leave and its history is closed,
    until the user is invited and joins again."""
    guest = stack.register_user()
    me, them = of(owner), of(guest)
    room_id = create_room(me, federate, preset="public_chat")
    forget = f"/v3/rooms/{q(room_id)}/forget"
    messages = f"/v3/rooms/{q(room_id)}/messages"

    def initial_sync() -> dict:
        # A filter of its own each time: Synapse answers a repeated identical sync from a cache.
        with_leaves = {
            "room": {"include_leave": True, "timeline": {"limit": 5}},
            "account_data": {"not_types": [f"org.example.{secrets.token_hex(4)}"]},
        }
        params = {"timeout": "0", "filter": json.dumps(with_leaves)}
        rooms = them.ok("GET", "/v3/sync", params=params).get("rooms", {})
        return {section: set(rooms.get(section, {})) for section in ("join", "invite", "leave")}

    def bodies() -> list[str]:
        chunk = them.ok("GET", messages, params={"dir": "b", "limit": "50"})["chunk"]
        return [e["content"].get("body") for e in chunk if e["type"] == "m.room.message"]

    # Never in the room: nothing to forget, and that is fine.
    assert them.ok("POST", forget, body={}) == {}
    send_text(me, room_id, "before")
    them.ok("POST", f"/v3/join/{q(room_id)}", body={})
    refused = {"errcode": "M_UNKNOWN", "error": f"User {guest.user_id} in room {room_id}"}
    resp = them("POST", forget, body={})
    assert (resp.status_code, resp.json()) == (400, refused), resp.text
    them.ok("POST", f"/v3/rooms/{q(room_id)}/leave", body={})
    send_text(me, room_id, "after the leave")
    # Left: history up to the leave; the room under `leave` with include_leave.
    assert bodies() == ["before"]
    assert room_id in initial_sync()["leave"]

    assert them.ok("POST", forget, body={}) == {}
    assert room_id not in set().union(*initial_sync().values())
    for path in (messages, f"/v3/rooms/{q(room_id)}/state", f"/v3/rooms/{q(room_id)}/members"):
        assert failure(them("GET", path)) == (403, "M_FORBIDDEN"), path
    # Forgetting twice is fine.
    assert them.ok("POST", forget, body={}) == {}

    # A new invite brings the room back, and it cannot be forgotten while invited.
    me.ok("POST", f"/v3/rooms/{q(room_id)}/invite", body={"user_id": guest.user_id})
    assert room_id in initial_sync()["invite"]
    resp = them("POST", forget, body={})
    assert (resp.status_code, resp.json()) == (400, refused), resp.text
    them.ok("POST", f"/v3/join/{q(room_id)}", body={})
    assert room_id in initial_sync()["join"]
    assert "after the leave" in bodies()
