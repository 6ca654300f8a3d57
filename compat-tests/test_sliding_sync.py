"""Merged simplified sliding sync (MSC4186, Synapse's
`/unstable/org.matrix.simplified_msc3575/sync`) through hungryserv: one
connection sees Synapse rooms and local rooms in one list ordered by recency,
a local room's entry has the fields a Synapse room's has (differential: the
same scenario in both kinds), a local send wakes a waiting request, a bad
`pos` gets Synapse's `M_UNKNOWN_POS`, and `prev_batch` pages with /messages.

Rooms are made by a user through hungryserv; `m.federate: false` makes a local
room (!hs_...), `true` a Synapse room, as in test_rooms_access.
"""

import threading
import time

import httpx
import pytest

import stack
from client import As, create_room, of, q, send_text

PATH = "/unstable/org.matrix.simplified_msc3575/sync"

REQUIRED_STATE = [
    ["m.room.name", ""],
    ["m.room.create", ""],
    ["m.room.member", "$LAZY"],
    ["m.room.member", "$ME"],
]


def sliding(user: As, body: dict, pos: str | None = None, timeout_ms: int = 0) -> dict:
    params = {"timeout": str(timeout_ms)}
    if pos is not None:
        params["pos"] = pos
    return user.ok("POST", PATH, params, body)


def one_list(end: int, timeline_limit: int = 1, **extra) -> dict:
    return {
        "lists": {
            "all": {
                "ranges": [[0, end]],
                "timeline_limit": timeline_limit,
                "required_state": REQUIRED_STATE,
                **extra,
            }
        }
    }


def window(answer: dict, name: str = "all") -> list[str]:
    return answer["lists"][name]["ops"][0]["room_ids"]


def bodies(entry: dict) -> list[str]:
    return [e["content"].get("body") for e in entry.get("timeline", []) if e["type"] == "m.room.message"]


@pytest.fixture
def owner() -> stack.User:
    return stack.register_user()


@pytest.fixture
def other() -> stack.User:
    return stack.register_user()


def test_one_list_orders_synapse_and_local_rooms_by_recency(owner):
    me = of(owner)
    rooms = []
    # Alternating kinds; each gets a message after the previous one's.
    for i, federate in enumerate([True, False, True, False, True]):
        room_id = create_room(me, federate, name=f"room {i}")
        rooms.append(room_id)
    for i, room_id in enumerate(rooms):
        send_text(me, room_id, f"message {i}")
        time.sleep(0.02)
    newest_first = list(reversed(rooms))

    first = sliding(me, one_list(9))
    assert first["lists"]["all"]["count"] == 5
    assert window(first) == newest_first
    assert set(first["rooms"]) == set(rooms)
    for i, room_id in enumerate(rooms):
        entry = first["rooms"][room_id]
        assert entry["name"] == f"room {i}", entry
        assert bodies(entry) == [f"message {i}"], entry
        assert entry.get("initial") is True

    # A window smaller than the list: count stays the merged count.
    # (Another connection: a request without `pos` restarts its own.)
    small = sliding(me, {"conn_id": "small", **one_list(1)})
    assert small["lists"]["all"]["count"] == 5
    assert window(small) == newest_first[:2]

    # The oldest room (a Synapse one) gets news: it moves to the top.
    send_text(me, rooms[0], "news")
    time.sleep(0.02)
    send_text(me, rooms[1], "local news")
    moved = sliding(me, one_list(9), pos=first["pos"])
    assert window(moved)[:2] == [rooms[1], rooms[0]], window(moved)
    assert bodies(moved["rooms"][rooms[1]]) == ["local news"]
    assert "initial" not in moved["rooms"][rooms[1]]
    assert moved["rooms"][rooms[1]]["num_live"] == 1


def normalise(entry: dict) -> dict:
    """The client-visible fields of a room entry, without values that depend
    on the server (IDs, stream positions, tokens)."""
    return {
        "keys": sorted(set(entry) - {"bump_stamp"}),
        "name": entry.get("name"),
        "joined_count": entry.get("joined_count"),
        "invited_count": entry.get("invited_count"),
        "initial": entry.get("initial"),
        "limited": entry.get("limited"),
        "num_live": entry.get("num_live"),
        "notification_count": entry.get("notification_count"),
        "highlight_count": entry.get("highlight_count"),
        "heroes": [h["user_id"] for h in entry.get("heroes", [])],
        "timeline": [(e["type"], e["sender"], e.get("state_key"), e["content"].get("body")) for e in entry.get("timeline", [])],
        "required_state": sorted((e["type"], e["state_key"]) for e in entry.get("required_state", [])),
        "has_bump_stamp": "bump_stamp" in entry,
    }


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_room_fields_match_a_synapse_room(owner, other, named):
    seen = {}
    for federate in (True, False):
        me = of(owner)
        extra = {"name": "Differential"} if named else {}
        room_id = create_room(me, federate, invite=[other.user_id], **extra)
        of(other).ok("POST", f"/v3/join/{q(room_id)}")
        send_text(of(other), room_id, "hello from other")
        send_text(me, room_id, "hello from owner")
        body = {
            "room_subscriptions": {
                room_id: {"timeline_limit": 3, "required_state": REQUIRED_STATE},
            }
        }
        answer = sliding(me, body)
        seen[federate] = normalise(answer["rooms"][room_id])
        # Incremental: one more message.
        send_text(of(other), room_id, "again")
        later = sliding(me, body, pos=answer["pos"])
        seen[(federate, "later")] = normalise(later["rooms"][room_id])
    assert seen[False] == seen[True]
    assert seen[(False, "later")] == seen[(True, "later")]
    if not named:
        assert seen[False]["heroes"] == [other.user_id]


def test_a_local_send_wakes_a_waiting_request(owner):
    me = of(owner)
    synapse_room = create_room(me, True)
    local_room = create_room(me, False)
    first = sliding(me, one_list(9))
    assert set(window(first)) == {synapse_room, local_room}

    result = {}

    def wait() -> None:
        started = time.monotonic()
        result["answer"] = sliding(me, one_list(9), pos=first["pos"], timeout_ms=20000)
        result["took"] = time.monotonic() - started

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.0)
    send_text(me, local_room, "wake up")
    waiter.join(timeout=25)
    assert "answer" in result, "the waiting sliding sync never returned"
    assert result["took"] < 10, f"waited {result['took']:.1f}s for a local send"
    assert result["took"] > 0.9, "returned before the send: it did not wait"
    answer = result["answer"]
    assert bodies(answer["rooms"][local_room]) == ["wake up"]
    assert window(answer)[0] == local_room
    # The Synapse room was not lost from the list while Synapse's request was dropped.
    assert answer["lists"]["all"]["count"] == 2

    # Synapse's side still works from the same connection afterwards.
    send_text(me, synapse_room, "synapse news")
    after = sliding(me, one_list(9), pos=answer["pos"], timeout_ms=10000)
    assert bodies(after["rooms"][synapse_room]) == ["synapse news"]


def test_a_timeout_without_news_answers_empty(owner):
    me = of(owner)
    create_room(me, False)
    first = sliding(me, one_list(9))
    started = time.monotonic()
    later = sliding(me, one_list(9), pos=first["pos"], timeout_ms=1500)
    took = time.monotonic() - started
    assert 1.2 < took < 8, took
    assert later["rooms"] == {}
    assert later["pos"] != first["pos"]
    assert later["lists"]["all"]["count"] == 1


@pytest.mark.parametrize("pos", ["garbage", "5/s12_3_0", "hs1_000000000000_1"])
def test_an_unknown_pos_is_refused_as_synapse_refuses_it(owner, pos):
    resp = of(owner)("POST", PATH, {"pos": pos, "timeout": "0"}, one_list(9))
    assert resp.status_code == 400, resp.text
    assert resp.json()["errcode"] == "M_UNKNOWN_POS"


def test_a_pos_belongs_to_its_connection(owner):
    me = of(owner)
    first = sliding(me, {"conn_id": "one", **one_list(9)})
    resp = me("POST", PATH, {"pos": first["pos"]}, {"conn_id": "two", **one_list(9)})
    assert resp.status_code == 400 and resp.json()["errcode"] == "M_UNKNOWN_POS", resp.text
    # A retried position answers again (a client resends after a cancelled request).
    sliding(me, {"conn_id": "one", **one_list(9)}, pos=first["pos"])
    sliding(me, {"conn_id": "one", **one_list(9)}, pos=first["pos"])


@pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
def test_prev_batch_pages_back_with_messages(owner, federate):
    me = of(owner)
    room_id = create_room(me, federate, name="history")
    for i in range(6):
        send_text(me, room_id, f"m{i}")
    answer = sliding(me, {"room_subscriptions": {room_id: {"timeline_limit": 2, "required_state": []}}})
    entry = answer["rooms"][room_id]
    assert bodies(entry) == ["m4", "m5"]
    assert entry["limited"] is True
    page = me.ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "b", "from": entry["prev_batch"], "limit": "50"})
    older = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
    assert older == ["m3", "m2", "m1", "m0"]
    assert page["chunk"][-1]["type"] == "m.room.create"


def test_filters_apply_to_local_rooms(owner, other):
    me = of(owner)
    plain = create_room(me, False)
    encrypted = create_room(me, False, initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    invited = create_room(of(other), False, invite=[owner.user_id])
    space = create_room(me, False, creation_content={"m.federate": False, "type": "m.space"})

    def ids(filters: dict) -> set[str]:
        answer = sliding(me, one_list(19, filters=filters))
        return set(window(answer))

    assert ids({"is_encrypted": True}) == {encrypted}
    assert ids({"is_invite": True}) == {invited}
    assert ids({"room_types": ["m.space"]}) == {space}
    assert ids({"not_room_types": ["m.space"], "is_invite": False, "is_encrypted": False}) == {plain}
    answer = sliding(me, one_list(19, filters={"is_invite": True}))
    entry = answer["rooms"][invited]
    assert any(e["type"] == "m.room.member" and e["state_key"] == owner.user_id for e in entry["invite_state"])


def test_receipts_and_typing_extensions_carry_local_rooms(owner, other):
    me = of(owner)
    room_id = create_room(me, False, invite=[other.user_id])
    of(other).ok("POST", f"/v3/join/{q(room_id)}")
    event_id = send_text(me, room_id, "read me")
    body = {**one_list(9), "extensions": {"receipts": {"enabled": True}, "typing": {"enabled": True}, "account_data": {"enabled": True}}}
    first = sliding(me, body)
    of(other).ok("POST", f"/v3/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", body={})
    of(other).ok("PUT", f"/v3/rooms/{q(room_id)}/typing/{q(other.user_id)}", body={"typing": True, "timeout": 30000})
    me.ok("PUT", f"/v3/user/{q(owner.user_id)}/rooms/{q(room_id)}/account_data/m.tag.test", body={"x": 1})
    later = sliding(me, body, pos=first["pos"], timeout_ms=5000)
    deadline = time.monotonic() + 10
    ext = later["extensions"]
    while not (ext.get("receipts", {}).get("rooms", {}).get(room_id) and ext.get("typing", {}).get("rooms", {}).get(room_id)) and time.monotonic() < deadline:
        later = sliding(me, body, pos=later["pos"], timeout_ms=2000)
        for name in ("receipts", "typing", "account_data"):
            ext.setdefault(name, {}).setdefault("rooms", {}).update(later["extensions"].get(name, {}).get("rooms", {}))
    receipt = ext["receipts"]["rooms"][room_id]
    assert receipt["type"] == "m.receipt"
    assert other.user_id in receipt["content"][event_id]["m.read"]
    assert ext["typing"]["rooms"][room_id]["content"]["user_ids"] == [other.user_id]
    assert {"type": "m.tag.test", "content": {"x": 1}} in ext["account_data"]["rooms"][room_id]
    # Synapse's own extension answers are still there.
    assert "global" in ext["account_data"]


def test_tag_filters_apply_to_local_rooms_as_to_synapse_rooms(owner):
    """Differential: a tagged and an untagged room of each kind; `tags` and `not_tags`
    select the same kind of room on both sides (Synapse's rule: any of `tags`, none of
    `not_tags`; an empty `tags` selects nothing)."""
    me = of(owner)
    rooms = {}
    for kind, federate in (("synapse", True), ("local", False)):
        for tag in ("u.work", "m.favourite", None):
            room_id = create_room(me, federate, name=f"{kind} {tag}")
            if tag:
                me.ok("PUT", f"/v3/user/{q(owner.user_id)}/rooms/{q(room_id)}/tags/{q(tag)}", body={"order": 0.5})
            rooms[(kind, tag)] = room_id
    label = {room_id: tag for (_, tag), room_id in rooms.items()}

    def selected(filters: dict) -> dict[str, set]:
        answer = sliding(me, {"conn_id": "tags", **one_list(19, filters=filters)})
        out = {"synapse": set(), "local": set()}
        for room_id in window(answer):
            out["local" if room_id.startswith("!hs_") else "synapse"].add(label[room_id])
        assert answer["lists"]["all"]["count"] == len(window(answer)), answer["lists"]
        return out

    cases = [
        ({"tags": ["u.work"]}, {"u.work"}),
        ({"tags": ["u.work", "m.favourite"]}, {"u.work", "m.favourite"}),
        ({"tags": []}, set()),
        ({"not_tags": ["u.work"]}, {"m.favourite", None}),
        ({"tags": ["m.favourite", "u.work"], "not_tags": ["u.work"]}, {"m.favourite"}),
    ]
    for filters, expected in cases:
        seen = selected(filters)
        assert seen["synapse"] == expected, (filters, seen)
        assert seen["local"] == seen["synapse"], (filters, seen)

    # Removing a tag takes the local room out of the tagged list.
    local_work = rooms[("local", "u.work")]
    me.ok("DELETE", f"/v3/user/{q(owner.user_id)}/rooms/{q(local_work)}/tags/u.work")
    assert selected({"tags": ["u.work"]})["local"] == set()


def test_a_spaces_filter_is_answered_as_synapse_answers_it(owner):
    """Synapse 1.163 has no `spaces` filter (it answers 500); hungryserv passes that on
    rather than making up an answer of its own."""
    me = of(owner)
    create_room(me, False)
    body = one_list(9, filters={"spaces": ["!nowhere:example.org"]})
    ours = me("POST", PATH, {"timeout": "0"}, body)
    theirs = httpx.post(
        f"{stack.SYNAPSE_URL}/_matrix/client{PATH}",
        params={"timeout": "0"},
        json=body,
        headers={"Authorization": f"Bearer {owner.access_token}"},
        timeout=30,
    )
    assert ours.status_code == theirs.status_code, (ours.text, theirs.text)
    assert ours.json().get("errcode") == theirs.json().get("errcode"), (ours.text, theirs.text)


E2EE = {"conn_id": "encryption", "extensions": {"e2ee": {"enabled": True}}}


def e2ee_lists(answer: dict) -> dict:
    return answer.get("extensions", {}).get("e2ee", {}).get("device_lists", {})


@pytest.mark.parametrize("kind", ["synapse", "local"])
def test_e2ee_extension_carries_changed_devices_as_sync_does(kind):
    """Bob shares one room with Alice, of either kind. A new login of Alice's is in
    `e2ee.device_lists.changed` of Bob's sliding sync, as in his /sync."""
    from test_device_lists import device_lists, login, next_batch, shared_room

    alice, bob, _ = shared_room(kind)
    first = sliding(of(bob), E2EE)
    assert "changed" not in e2ee_lists(first), "an initial answer has no device lists (Synapse's rule)"
    since = next_batch(of(bob))

    login(alice)
    lists, _ = device_lists(of(bob), since)
    assert alice.user_id in lists.get("changed", []), lists
    answer = sliding(of(bob), E2EE, pos=first["pos"], timeout_ms=5000)
    assert alice.user_id in e2ee_lists(answer).get("changed", []), (kind, answer)
    if kind == "local":
        # A range is told once. (Synapse announces a login again from a background write
        # after it answered, so its own side may repeat it.)
        again = sliding(of(bob), E2EE, pos=answer["pos"])
        assert alice.user_id not in e2ee_lists(again).get("changed", []), (kind, again)


@pytest.mark.parametrize("kind", ["synapse", "local"])
def test_e2ee_extension_carries_left_as_sync_does(kind):
    """Alice leaving the only room she shares with Bob puts her in `left` of Bob's sliding
    sync, as in his /sync."""
    from test_device_lists import device_lists, next_batch, shared_room

    alice, bob, room_id = shared_room(kind)
    first = sliding(of(bob), E2EE)
    since = next_batch(of(bob))
    of(alice).ok("POST", f"/v3/rooms/{q(room_id)}/leave", body={})
    lists, _ = device_lists(of(bob), since)
    assert alice.user_id in lists.get("left", []), lists
    gone = sliding(of(bob), E2EE, pos=first["pos"], timeout_ms=5000)
    assert alice.user_id in e2ee_lists(gone).get("left", []), (kind, gone)
    assert alice.user_id not in e2ee_lists(gone).get("changed", []), (kind, gone)


def test_a_local_device_change_wakes_a_waiting_e2ee_connection():
    from test_device_lists import login, shared_room

    alice, bob, _ = shared_room("local")
    first = sliding(of(bob), E2EE)
    result = {}

    def wait() -> None:
        started = time.monotonic()
        result["answer"] = sliding(of(bob), E2EE, pos=first["pos"], timeout_ms=20000)
        result["took"] = time.monotonic() - started

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.0)
    login(alice)
    waiter.join(timeout=25)
    assert "answer" in result, "the waiting sliding sync never returned"
    assert result["took"] < 10, f"waited {result['took']:.1f}s for a device change"
    assert alice.user_id in e2ee_lists(result["answer"]).get("changed", []), result["answer"]


def test_a_new_connection_starts_from_a_spare_and_catches_up(owner):
    """A new connection is answered from the spare Synapse connection made after
    the device's previous new connection (so it does not wait for Synapse to
    compute the room list afresh); what changed at Synapse since the spare comes
    with the connection's next request. The two connections stay independent."""
    me = of(owner)
    synapse_room = create_room(me, True, name="synapse")
    local_room = create_room(me, False, name="local")
    send_text(me, synapse_room, "before")
    first = sliding(me, {"conn_id": "a", **one_list(9)})
    assert set(window(first)) == {synapse_room, local_room}
    # The spare is made in the background after `first`; let it finish first.
    time.sleep(2.0)
    send_text(me, synapse_room, "after the spare")
    send_text(me, local_room, "local after the spare")

    second = sliding(me, {"conn_id": "b", **one_list(9)})
    assert second["lists"]["all"]["count"] == 2
    assert set(window(second)) == {synapse_room, local_room}
    # The local half is read now; Synapse's half is the spare's.
    assert bodies(second["rooms"][local_room]) == ["local after the spare"]
    assert bodies(second["rooms"][synapse_room]) == ["before"]
    caught_up = sliding(me, {"conn_id": "b", **one_list(9)}, pos=second["pos"], timeout_ms=10000)
    assert bodies(caught_up["rooms"][synapse_room]) == ["after the spare"]
    assert window(caught_up) == [local_room, synapse_room]

    # The first connection goes on from its own position.
    send_text(me, synapse_room, "for both")
    for conn_id, pos in (("a", first["pos"]), ("b", caught_up["pos"])):
        later = sliding(me, {"conn_id": conn_id, **one_list(9)}, pos=pos, timeout_ms=10000)
        assert "for both" in bodies(later["rooms"][synapse_room]), conn_id
