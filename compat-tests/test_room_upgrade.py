"""Issue 22, `POST /rooms/{roomId}/upgrade`: the same upgrade of a Synapse room and of a
local room (`federate`) leaves the same client-visible rooms — the tombstone, the new room
with its `predecessor`, the state Synapse copies, the power levels restricted in the old
room and restored in the new, the bans, and the aliases moved. The Synapse variant is the
reference the expected values were read from."""

import secrets

import pytest
from nio import RoomGetStateResponse

import stack
from client import create_room, failure, new_nio, of, q

VARIANTS = pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])


@pytest.fixture
def owner() -> stack.User:
    return stack.register_user()


@pytest.fixture
def other() -> stack.User:
    return stack.register_user()


@pytest.fixture
def third() -> stack.User:
    return stack.register_user()


def by_key(events: list[dict]) -> dict:
    return {(e["type"], e.get("state_key")): e for e in events}


@VARIANTS
async def test_upgrade_moves_the_room_to_a_new_version(federate, owner, other, third):
    me, them = of(owner), of(other)
    alias_name = f"up_{secrets.token_hex(5)}"
    room = create_room(
        me,
        federate,
        name="Before",
        topic="About",
        room_alias_name=alias_name,
        invite=[other.user_id],
        initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    )
    alias = f"#{alias_name}:{owner.user_id.split(':', 1)[1]}"
    them.ok("POST", f"/v3/join/{q(room)}")
    me.ok("POST", f"/v3/rooms/{q(room)}/ban", body={"user_id": third.user_id, "reason": "spam"})
    power_before = me.ok("GET", f"/v3/rooms/{q(room)}/state/m.room.power_levels/")

    # A member without the tombstone's level may not upgrade; nor to a version we lack.
    resp = them("POST", f"/v3/rooms/{q(room)}/upgrade", body={"new_version": "11"})
    assert failure(resp) == (403, "M_FORBIDDEN"), resp.text
    resp = me("POST", f"/v3/rooms/{q(room)}/upgrade", body={"new_version": "999"})
    assert failure(resp) == (400, "M_UNSUPPORTED_ROOM_VERSION"), resp.text
    resp = me("POST", f"/v3/rooms/{q(room)}/upgrade", body={})
    assert failure(resp) == (400, "M_MISSING_PARAM"), resp.text

    new = me.ok("POST", f"/v3/rooms/{q(room)}/upgrade", body={"new_version": "11"})["replacement_room"]
    assert new.startswith("!hs_") == (not federate)

    client = new_nio(owner)
    try:
        old_state = await client.room_get_state(room)
        new_state = await client.room_get_state(new)
    finally:
        await client.close()
    assert isinstance(old_state, RoomGetStateResponse), old_state
    assert isinstance(new_state, RoomGetStateResponse), new_state
    old, fresh = by_key(old_state.events), by_key(new_state.events)

    tombstone = old[("m.room.tombstone", "")]
    assert tombstone["content"] == {"body": "This room has been replaced", "replacement_room": new}
    # The old room: only moderators may talk or invite; it lost its canonical alias.
    assert old[("m.room.power_levels", "")]["content"]["events_default"] == 50
    assert old[("m.room.power_levels", "")]["content"]["invite"] == 50
    assert old[("m.room.canonical_alias", "")]["content"] == {}

    create = fresh[("m.room.create", "")]["content"]
    assert create["room_version"] == "11"
    assert create["predecessor"] == {"room_id": room, "event_id": tombstone["event_id"]}
    assert create.get("m.federate", True) == federate
    assert "creator" not in create
    for kind in ("m.room.name", "m.room.topic", "m.room.join_rules", "m.room.history_visibility",
                 "m.room.guest_access", "m.room.encryption"):
        assert fresh[(kind, "")]["content"] == old[(kind, "")]["content"], kind
    # The power levels end as they were in the old room before the upgrade.
    assert fresh[("m.room.power_levels", "")]["content"] == power_before
    assert fresh[("m.room.member", third.user_id)]["content"]["membership"] == "ban"
    assert fresh[("m.room.member", owner.user_id)]["content"]["membership"] == "join"
    assert ("m.room.member", other.user_id) not in fresh, "members are not carried over"
    assert fresh[("m.room.canonical_alias", "")]["content"] == {"alias": alias}
    assert me.ok("GET", f"/v3/directory/room/{q(alias)}")["room_id"] == new
    # The old room is closed to ordinary members.
    resp = them("PUT", f"/v3/rooms/{q(room)}/send/m.room.message/{secrets.token_hex(4)}", body={"msgtype": "m.text", "body": "x"})
    assert failure(resp) == (403, "M_FORBIDDEN"), resp.text


@VARIANTS
def test_upgrade_carries_tags_push_rules_and_direct(federate, owner, other):
    """What Synapse's `transfer_room_state_on_room_upgrade` carries over: the tags of every
    joined member, and the upgrader's room push rules and `m.direct` entry."""
    me, them = of(owner), of(other)
    room = create_room(me, federate, invite=[other.user_id])
    them.ok("POST", f"/v3/join/{q(room)}")
    for user, client, tag in ((owner, me, "u.mine"), (other, them, "m.favourite")):
        client.ok("PUT", f"/v3/user/{q(user.user_id)}/rooms/{q(room)}/tags/{tag}", body={"order": 0.25})
    me.ok("PUT", f"/v3/pushrules/global/room/{q(room)}", body={"actions": []})
    condition = {"kind": "event_match", "key": "room_id", "pattern": room}
    me.ok("PUT", "/v3/pushrules/global/override/up_rule",
          body={"actions": ["notify"], "conditions": [condition, {"kind": "event_match", "key": "type", "pattern": "m.room.message"}]})
    me.ok("PUT", "/v3/pushrules/global/underride/off_rule", body={"actions": ["notify"], "conditions": [condition]})
    me.ok("PUT", "/v3/pushrules/global/underride/off_rule/enabled", body={"enabled": False})
    me.ok("PUT", f"/v3/user/{q(owner.user_id)}/account_data/m.direct", body={other.user_id: [room]})

    new = me.ok("POST", f"/v3/rooms/{q(room)}/upgrade", body={"new_version": "10"})["replacement_room"]

    for user, client, tag in ((owner, me, "u.mine"), (other, them, "m.favourite")):
        tags = client.ok("GET", f"/v3/user/{q(user.user_id)}/rooms/{q(new)}/tags")["tags"]
        assert tags == {tag: {"order": 0.25}}, (user.user_id, tags)
    rules = me.ok("GET", "/v3/pushrules/")["global"]
    assert [r for r in rules["room"] if r["rule_id"] == new] == [
        {"rule_id": new, "actions": [], "default": False, "enabled": True}
    ]
    copied = [r for r in rules["override"] if r["rule_id"] == new]
    assert [(r["actions"], r["conditions"]) for r in copied] == [
        (["notify"], [dict(condition, pattern=new), {"kind": "event_match", "key": "type", "pattern": "m.room.message"}])
    ]
    assert not [r for r in rules["underride"] if r["rule_id"] == new], "disabled rules stay behind"
    direct = me.ok("GET", f"/v3/user/{q(owner.user_id)}/account_data/m.direct")
    assert direct == {other.user_id: [room, new]}
