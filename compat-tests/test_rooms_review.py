"""Behaviours a review found missing, each checked the same way against a Synapse
room and a local room: relations stay inside their room, transaction IDs are
per endpoint, kick/unban check the target's membership, per-room member content
wins over the global profile, and non-canonical JSON is refused."""

import secrets

import pytest

import stack
from client import create_room, failure, of, q, send_text

VARIANTS = pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])


@pytest.fixture
def owner() -> stack.User:
    return stack.register_user()


@VARIANTS
def test_relations_must_stay_in_their_room(federate, owner):
    me = of(owner)
    room_a = create_room(me, federate)
    room_b = create_room(me, federate)
    original = send_text(me, room_a, "original")
    edit = {
        "msgtype": "m.text",
        "body": "* injected",
        "m.new_content": {"msgtype": "m.text", "body": "injected"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
    }
    resp = me("PUT", f"/v3/rooms/{q(room_b)}/send/m.room.message/{secrets.token_hex(4)}", body=edit)
    assert failure(resp) == (400, "M_UNKNOWN"), resp.text
    assert resp.json()["error"] == "Relations must be in the same room"
    # Nothing of it shows on the original.
    event = me.ok("GET", f"/v3/rooms/{q(room_a)}/event/{q(original)}")
    assert "m.relations" not in event.get("unsigned", {})


@VARIANTS
def test_transaction_ids_are_per_room(federate, owner):
    me = of(owner)
    room_a = create_room(me, federate)
    room_b = create_room(me, federate)
    body = {"msgtype": "m.text", "body": "same txn"}
    first = me.ok("PUT", f"/v3/rooms/{q(room_a)}/send/m.room.message/t1", body=body)["event_id"]
    second = me.ok("PUT", f"/v3/rooms/{q(room_b)}/send/m.room.message/t1", body=body)["event_id"]
    assert first != second
    # Synapse keys transactions by room, not endpoint: a redact reusing the ID in the same
    # room answers with the earlier event and redacts nothing.
    again = me.ok("PUT", f"/v3/rooms/{q(room_a)}/redact/{q(first)}/t1", body={})["event_id"]
    assert again == first
    assert me.ok("GET", f"/v3/rooms/{q(room_a)}/event/{q(first)}")["content"]["body"] == "same txn"
    # A fresh ID redacts.
    me.ok("PUT", f"/v3/rooms/{q(room_a)}/redact/{q(first)}/t2", body={})
    assert me.ok("GET", f"/v3/rooms/{q(room_a)}/event/{q(first)}")["content"] == {}


@VARIANTS
def test_kick_and_unban_check_the_target(federate, owner):
    me = of(owner)
    guest = stack.register_user()
    room_id = create_room(me, federate, preset="public_chat")
    of(guest).ok("POST", f"/v3/rooms/{q(room_id)}/join", body={})
    # Unbanning someone who is not banned, and kicking someone banned, are refused.
    assert failure(me("POST", f"/v3/rooms/{q(room_id)}/unban", body={"user_id": guest.user_id})) == (403, "M_BAD_STATE")
    me.ok("POST", f"/v3/rooms/{q(room_id)}/ban", body={"user_id": guest.user_id})
    assert failure(me("POST", f"/v3/rooms/{q(room_id)}/kick", body={"user_id": guest.user_id})) == (403, "M_BAD_STATE")
    me.ok("POST", f"/v3/rooms/{q(room_id)}/unban", body={"user_id": guest.user_id})
    # Kicking someone who is not in the room is refused too.
    resp = me("POST", f"/v3/rooms/{q(room_id)}/kick", body={"user_id": guest.user_id})
    assert failure(resp) == (403, "M_FORBIDDEN"), resp.text
    assert resp.json()["error"] == "The target user is not in the room"


@VARIANTS
def test_per_room_member_content_wins_over_the_profile(federate, owner):
    me = of(owner)
    room_id = create_room(me, federate)
    path = f"/v3/rooms/{q(room_id)}/state/m.room.member/{q(owner.user_id)}"
    me.ok("PUT", path, body={"membership": "join", "displayname": "Nick in this room"})
    assert me.ok("GET", path)["displayname"] == "Nick in this room"


@VARIANTS
def test_non_canonical_json_is_refused(federate, owner):
    me = of(owner)
    room_id = create_room(me, federate)
    for value in (1.5, 2**60):
        resp = me("PUT", f"/v3/rooms/{q(room_id)}/send/m.custom/{secrets.token_hex(4)}", body={"x": value})
        assert failure(resp) == (400, "M_BAD_JSON"), (value, resp.text)
