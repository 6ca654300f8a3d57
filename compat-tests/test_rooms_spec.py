"""Issue 22: local rooms behave like Synapse rooms across the client-server spec.
Each test plays one scenario in a Synapse room and in a local room (`federate`)
and asserts the same client-visible result; the Synapse variant is the reference
the expected values were read from."""

import secrets

import pytest

import stack
from client import create_room, failure, of, q, send_text

VARIANTS = pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])


@pytest.fixture
def owner() -> stack.User:
    return stack.register_user()


@pytest.fixture
def other() -> stack.User:
    return stack.register_user()


def txn() -> str:
    return secrets.token_hex(6)


# --- Send -----------------------------------------------------------------------------


@VARIANTS
def test_send_without_a_transaction_id(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    body = {"msgtype": "m.text", "body": "no txn"}
    first = me.ok("POST", f"/v3/rooms/{q(room)}/send/m.room.message", body=body)["event_id"]
    # Without a transaction ID nothing is deduplicated.
    second = me.ok("POST", f"/v3/rooms/{q(room)}/send/m.room.message", body=body)["event_id"]
    assert first != second
    event = me.ok("GET", f"/v3/rooms/{q(room)}/event/{q(first)}")
    assert event["content"] == body
    assert "transaction_id" not in event.get("unsigned", {})
    # The same holds for redactions, state and membership POSTs without a txn ID.
    redaction = me.ok("POST", f"/v3/rooms/{q(room)}/redact/{q(first)}", body={"reason": "r"})
    assert redaction["event_id"].startswith("$")
    assert me.ok("GET", f"/v3/rooms/{q(room)}/event/{q(first)}")["content"] == {}


@VARIANTS
def test_event_type_over_255_bytes_is_too_large(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    long_type = "x" * 256
    resp = me("PUT", f"/v3/rooms/{q(room)}/send/{long_type}/{txn()}", body={"body": "b"})
    assert failure(resp) == (413, "M_TOO_LARGE"), resp.text
    assert resp.json()["error"] == "'type' too large"
    # 255 bytes is fine.
    me.ok("PUT", f"/v3/rooms/{q(room)}/send/{'x' * 255}/{txn()}", body={"body": "b"})
    # Bytes count, not characters: 128 two-byte characters are 256 bytes.
    resp = me("PUT", f"/v3/rooms/{q(room)}/send/{q('é' * 128)}/{txn()}", body={"body": "b"})
    assert failure(resp) == (413, "M_TOO_LARGE"), resp.text
    # A state key over 255 bytes likewise.
    resp = me("PUT", f"/v3/rooms/{q(room)}/state/m.custom/{'k' * 256}", body={"a": 1})
    assert failure(resp) == (413, "M_TOO_LARGE"), resp.text
    assert resp.json()["error"] == "'state_key' too large"


@VARIANTS
def test_redacting_an_event_of_another_room_is_refused(federate, owner):
    me = of(owner)
    room_a = create_room(me, federate)
    room_b = create_room(me, federate)
    target = send_text(me, room_a, "in room a")
    resp = me("PUT", f"/v3/rooms/{q(room_b)}/redact/{q(target)}/{txn()}", body={})
    assert failure(resp) == (400, "M_UNKNOWN"), resp.text
    assert resp.json()["error"] == "Cannot redact event from a different room"
    assert me.ok("GET", f"/v3/rooms/{q(room_a)}/event/{q(target)}")["content"]["body"] == "in room a"
    # Nor may the create event be redacted.
    create = me.ok("GET", f"/v3/rooms/{q(room_a)}/state/m.room.create", params={"format": "event"})
    resp = me("PUT", f"/v3/rooms/{q(room_a)}/redact/{q(create['event_id'])}/{txn()}", body={})
    assert failure(resp) == (403, "M_FORBIDDEN"), resp.text


# --- /relations -----------------------------------------------------------------------


def send(me, room: str, kind: str, content: dict) -> str:
    return me.ok("PUT", f"/v3/rooms/{q(room)}/send/{kind}/{txn()}", body=content)["event_id"]


def thread_with_children(me, room: str) -> dict:
    """A thread root with three replies, a reaction to the first and an edit of the second."""
    ids = {"root": send_text(me, room, "root")}
    for n in (1, 2, 3):
        ids[f"t{n}"] = send(me, room, "m.room.message", {
            "msgtype": "m.text",
            "body": f"reply {n}",
            "m.relates_to": {"rel_type": "m.thread", "event_id": ids["root"]},
        })
    ids["reaction"] = send(me, room, "m.reaction", {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": ids["t1"], "key": "👍"},
    })
    ids["edit"] = send(me, room, "m.room.message", {
        "msgtype": "m.text",
        "body": "* reply 2 edited",
        "m.new_content": {"msgtype": "m.text", "body": "reply 2 edited"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": ids["t2"]},
    })
    return ids


def page(me, room: str, parent: str, suffix: str = "", **params) -> dict:
    return me.ok("GET", f"/v1/rooms/{q(room)}/relations/{q(parent)}{suffix}", params=params)


@VARIANTS
def test_relations_forwards_and_pagination(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    ids = thread_with_children(me, room)
    names = {v: k for k, v in ids.items()}

    def seen(answer: dict) -> list[str]:
        return [names[e["event_id"]] for e in answer["chunk"]]

    first = page(me, room, ids["root"], dir="f", limit=2)
    assert seen(first) == ["t1", "t2"]
    assert "next_batch" in first and "prev_batch" not in first
    second = page(me, room, ids["root"], dir="f", limit=2, **{"from": first["next_batch"]})
    assert seen(second) == ["t3"]
    assert "next_batch" not in second
    assert second["prev_batch"] == first["next_batch"]
    # Backwards (the default), and `to` ending a forwards read where a backwards page stopped.
    newest = page(me, room, ids["root"], limit=1)
    assert seen(newest) == ["t3"]
    assert seen(page(me, room, ids["root"], dir="f", to=newest["next_batch"])) == ["t1", "t2"]
    back = page(me, room, ids["root"], limit=1, **{"from": newest["next_batch"]})
    assert seen(back) == ["t2"]
    assert back["prev_batch"] == newest["next_batch"]


@VARIANTS
def test_relations_recurse(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    ids = thread_with_children(me, room)
    names = {v: k for k, v in ids.items()}

    def seen(answer: dict) -> list[str]:
        return [names[e["event_id"]] for e in answer["chunk"]]

    flat = page(me, room, ids["root"])
    assert seen(flat) == ["t3", "t2", "t1"]
    assert "recursion_depth" not in flat
    deep = page(me, room, ids["root"], recurse="true", limit=10)
    assert seen(deep) == ["edit", "reaction", "t3", "t2", "t1"]
    assert deep["recursion_depth"] == 3
    # The type filters apply to every level (matrix-js-sdk asks for a thread this way).
    assert seen(page(me, room, ids["root"], "/m.thread", recurse="true")) == ["t3", "t2", "t1"]
    assert seen(page(me, room, ids["root"], "/m.annotation", recurse="true")) == ["reaction"]
    assert seen(page(me, room, ids["root"], "/m.annotation/m.reaction", recurse="true")) == ["reaction"]
    assert seen(page(me, room, ids["root"], "/m.annotation")) == []
    assert seen(page(me, room, ids["root"], dir="f", recurse="true", limit=10)) == [
        "t1", "t2", "t3", "reaction", "edit"]


# --- Pagination and sync --------------------------------------------------------------


def sync(me, since: str | None = None, limit: int = 20) -> dict:
    params = {"filter": '{"room": {"timeline": {"limit": %d}}}' % limit, "timeout": "0"}
    if since:
        params["since"] = since
    return me.ok("GET", "/v3/sync", params=params)


def pages_back(me, room: str, token: str, limit: int) -> list[tuple[list[str], bool]]:
    """Pages of /messages backwards from `token` until one has no `end`: each page as
    (bodies of its messages, whether it has `end`)."""
    pages = []
    for _ in range(10):
        page = me.ok("GET", f"/v3/rooms/{q(room)}/messages", params={"from": token, "dir": "b", "limit": limit})
        bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
        pages.append((bodies, "end" in page))
        if "end" not in page:
            return pages
        token = page["end"]
    raise AssertionError(f"no last page: {pages}")


@VARIANTS
def test_messages_back_from_a_limited_sync(federate, owner, other):
    me, them = of(owner), of(other)
    room = create_room(me, federate, invite=[other.user_id])
    them.ok("POST", f"/v3/join/{q(room)}")
    for n in range(1, 7):
        send_text(me, room, f"m{n}")
    timeline = sync(them, limit=3)["rooms"]["join"][room]["timeline"]
    assert [e["content"]["body"] for e in timeline["events"]] == ["m4", "m5", "m6"]
    assert timeline["limited"] is True
    pages = pages_back(them, room, timeline["prev_batch"], limit=3)
    messages = [body for bodies, _ in pages for body in bodies]
    assert messages == ["m3", "m2", "m1"]
    # Every page that returned events has `end`; only the empty last one has none.
    assert pages[-1] == ([], False)
    assert all(has_end for _, has_end in pages[:-1])


@VARIANTS
def test_messages_back_past_history_the_user_cannot_see(federate, owner, other):
    me, them = of(owner), of(other)
    room = create_room(me, federate, invite=[other.user_id],
                       initial_state=[{"type": "m.room.history_visibility", "state_key": "",
                                       "content": {"history_visibility": "joined"}}])
    for n in range(1, 4):
        send_text(me, room, f"before {n}")
    them.ok("POST", f"/v3/join/{q(room)}")
    send_text(me, room, "after")
    timeline = sync(them, limit=20)["rooms"]["join"][room]["timeline"]
    assert [e["content"].get("body") for e in timeline["events"] if e["type"] == "m.room.message"] == ["after"]
    pages = pages_back(them, room, timeline["prev_batch"], limit=10)
    # A first sync's timeline that was not cut short has Synapse's `prev_batch` at the sync's
    # own position, so paging back starts with the timeline again; the invisible history
    # ends in an empty page without `end`. Never `{chunk: [], start}` at once.
    assert [body for bodies, _ in pages for body in bodies] == ["after"]
    assert pages[0] == (["after"], True)
    assert pages[-1] == ([], False)


@VARIANTS
def test_newly_joined_room_is_limited_in_an_incremental_sync(federate, owner, other):
    me, them = of(owner), of(other)
    since = sync(them)["next_batch"]
    room = create_room(me, federate, invite=[other.user_id])
    send_text(me, room, "hello")
    them.ok("POST", f"/v3/join/{q(room)}")
    timeline = sync(them, since, limit=20)["rooms"]["join"][room]["timeline"]
    assert [e["content"].get("body") for e in timeline["events"] if e["type"] == "m.room.message"] == ["hello"]
    # The whole room fits, yet Synapse says limited for a room that is new to the client.
    assert timeline["limited"] is True
    # A cut-short timeline of a newly joined room says so too.
    since = sync(them)["next_batch"]
    room2 = create_room(me, federate, invite=[other.user_id])
    for n in range(1, 5):
        send_text(me, room2, f"m{n}")
    them.ok("POST", f"/v3/join/{q(room2)}")
    timeline = sync(them, since, limit=2)["rooms"]["join"][room2]["timeline"]
    assert timeline["limited"] is True
    pages = pages_back(them, room2, timeline["prev_batch"], limit=10)
    assert [b for bodies, _ in pages for b in bodies] == ["m3", "m2", "m1"]


# --- Membership -----------------------------------------------------------------------


def member_event(me, room: str, user: stack.User) -> dict:
    return me.ok("GET", f"/v3/rooms/{q(room)}/state/m.room.member/{q(user.user_id)}")


@VARIANTS
def test_join_body_keys_end_in_the_member_event(federate, owner, other):
    me, them = of(owner), of(other)
    room = create_room(me, federate, invite=[other.user_id])
    # `/join/{roomIdOrAlias}` keeps the whole body as the member content.
    them.ok("POST", f"/v3/join/{q(room)}", body={"foo": "bar", "reason": "hi"})
    content = member_event(me, room, other)
    assert content["membership"] == "join"
    assert content["foo"] == "bar" and content["reason"] == "hi"
    # `/rooms/{roomId}/join` keeps only `reason`.
    them.ok("POST", f"/v3/rooms/{q(room)}/leave")
    me.ok("POST", f"/v3/rooms/{q(room)}/invite", body={"user_id": other.user_id})
    them.ok("POST", f"/v3/rooms/{q(room)}/join", body={"foo": "baz", "reason": "again"})
    content = member_event(me, room, other)
    assert content["membership"] == "join" and content["reason"] == "again"
    assert "foo" not in content


def answer(resp) -> tuple[int, str | None, str | None]:
    try:
        data = resp.json()
    except ValueError:
        return resp.status_code, None, None
    return resp.status_code, data.get("errcode"), data.get("error")


@VARIANTS
def test_third_party_invite_without_an_identity_server(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    path = f"/v3/rooms/{q(room)}/invite"
    third_party = {"id_server": "127.0.0.1:1", "medium": "email", "address": "a@example.org"}
    resp = me("POST", path, body=third_party)
    assert answer(resp) == (400, "M_MISSING_PARAM",
                            "`id_server` and `id_access_token` are required when doing 3pid invite")
    resp = me("POST", path, body={**third_party, "id_access_token": "t"})
    # Synapse cannot reach the identity server (none in the test stack): 500 M_UNKNOWN. A
    # local room has no identity-server client and answers the same status and code.
    assert answer(resp)[:2] == (500, "M_UNKNOWN"), resp.text


@VARIANTS
def test_invite_of_a_user_on_another_server(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    resp = me("POST", f"/v3/rooms/{q(room)}/invite", body={"user_id": "@someone:remote.invalid"})
    # Synapse: 502 M_UNKNOWN "Can't connect to server remote.invalid" (the test stack does not
    # federate); a local room never federates and answers the same status and code.
    assert answer(resp)[:2] == (502, "M_UNKNOWN"), resp.text
    assert "remote.invalid" in answer(resp)[2]
    # The same through the state API.
    resp = me("PUT", f"/v3/rooms/{q(room)}/state/m.room.member/{q('@someone:remote.invalid')}",
              body={"membership": "invite"})
    assert answer(resp)[:2] == (502, "M_UNKNOWN"), resp.text
    # Nothing was written.
    members = me.ok("GET", f"/v3/rooms/{q(room)}/members")["chunk"]
    assert [m["state_key"] for m in members] == [owner.user_id]



# --- Ignored users --------------------------------------------------------------------


def bodies(events: list[dict]) -> list[str]:
    return [e["content"].get("body") for e in events if e["type"] == "m.room.message"]


@VARIANTS
def test_ignored_users_messages_and_invites_are_hidden(federate, owner, other):
    me, them = of(owner), of(other)
    room = create_room(me, federate, invite=[other.user_id])
    them.ok("POST", f"/v3/join/{q(room)}")
    send_text(them, room, "before ignoring")
    me.ok("PUT", f"/v3/user/{q(owner.user_id)}/account_data/m.ignored_user_list",
          body={"ignored_users": {other.user_id: {}}})
    send_text(them, room, "while ignored")
    send_text(me, room, "mine")
    # An invite from the ignored user.
    invite_room = create_room(them, federate, invite=[owner.user_id])

    synced = sync(me, limit=20)
    assert bodies(synced["rooms"]["join"][room]["timeline"]["events"]) == ["mine"]
    assert invite_room not in synced["rooms"].get("invite", {})
    messages = me.ok("GET", f"/v3/rooms/{q(room)}/messages", params={"dir": "b", "limit": 50})
    assert bodies(messages["chunk"]) == ["mine"]
    # State events of the ignored user still count (their join is in the room's members).
    members = me.ok("GET", f"/v3/rooms/{q(room)}/joined_members")["joined"]
    assert other.user_id in members

    # Unignored: everything comes back.
    me.ok("PUT", f"/v3/user/{q(owner.user_id)}/account_data/m.ignored_user_list",
          body={"ignored_users": {}})
    messages = me.ok("GET", f"/v3/rooms/{q(room)}/messages", params={"dir": "b", "limit": 50})
    assert bodies(messages["chunk"]) == ["mine", "while ignored", "before ignoring"]


@VARIANTS
def test_restricted_join_rule_lets_members_of_the_allowed_room_in(federate, owner, other):
    me, them = of(owner), of(other)
    stranger = stack.register_user()
    allowed = create_room(me, federate, invite=[other.user_id])
    them.ok("POST", f"/v3/join/{q(allowed)}")
    join_rules = {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": allowed}]}
    room = create_room(me, federate, initial_state=[
        {"type": "m.room.join_rules", "state_key": "", "content": join_rules}])
    # A member of the allowed room may join, and the join names who authorised it.
    them.ok("POST", f"/v3/join/{q(room)}")
    content = member_event(me, room, other)
    assert content["membership"] == "join"
    assert content["join_authorised_via_users_server"] == owner.user_id
    # Anyone else may not.
    resp = of(stranger)("POST", f"/v3/join/{q(room)}")
    assert answer(resp) == (403, "M_FORBIDDEN",
                            "You do not belong to any of the required rooms/spaces to join this room.")
    # An invite still works without the allowed room.
    me.ok("POST", f"/v3/rooms/{q(room)}/invite", body={"user_id": stranger.user_id})
    of(stranger).ok("POST", f"/v3/rooms/{q(room)}/join")
    assert "join_authorised_via_users_server" not in member_event(me, room, stranger)


@VARIANTS
def test_a_knock_appears_in_the_knockers_sync(federate, owner, other):
    me, them = of(owner), of(other)
    room = create_room(me, federate, name="knock here", initial_state=[
        {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])
    since = sync(them)["next_batch"]
    them.ok("POST", f"/v3/knock/{q(room)}", body={"reason": "let me in"})
    knocked = sync(them, since)["rooms"].get("knock", {})
    assert room in knocked, knocked
    events = knocked[room]["knock_state"]["events"]
    knock = events[-1]
    assert (knock["type"], knock["state_key"], knock["content"]["membership"]) == (
        "m.room.member", other.user_id, "knock")
    assert knock["content"]["reason"] == "let me in"
    # Stripped, like the state before it.
    assert set(knock) == {"type", "state_key", "content", "sender"}
    stripped = sorted((e["type"], e["state_key"]) for e in events[:-1])
    assert stripped == [("m.room.create", ""), ("m.room.join_rules", ""), ("m.room.name", "")]
    # An initial sync shows it too (another filter: Synapse repeats a cached initial sync).
    assert room in sync(them, limit=7)["rooms"].get("knock", {})
