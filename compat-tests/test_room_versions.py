"""Issue 22, room versions: a local room can be of any version 1–11, each with its own
auth and redaction rules, and the same scenario in a Synapse room and in a local room
(`federate`) gives the same client-visible result. The Synapse variant is the reference
the expected values were read from."""

import secrets

import pytest
from nio import RoomCreateResponse, RoomGetStateEventResponse

import stack
from client import create_room, failure, new_nio, of, q

VARIANTS = pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
VERSIONS = [str(n) for n in range(1, 12)]


@pytest.fixture
def owner() -> stack.User:
    return stack.register_user()


@pytest.fixture
def other() -> stack.User:
    return stack.register_user()


def txn() -> str:
    return secrets.token_hex(6)


def is_local(room_id: str) -> bool:
    return room_id.startswith("!hs_")


@VARIANTS
@pytest.mark.parametrize("version", VERSIONS)
async def test_each_version_makes_its_create_event(federate, version, owner):
    client = new_nio(owner)
    try:
        created = await client.room_create(room_version=version, federate=federate, name="v")
        assert isinstance(created, RoomCreateResponse), created
        assert is_local(created.room_id) == (not federate)
        create = await client.room_get_state_event(created.room_id, "m.room.create")
        assert isinstance(create, RoomGetStateEventResponse), create
        assert create.content["room_version"] == version
        # Version 11 dropped `creator`: the create event's sender is the creator.
        assert ("creator" in create.content) == (version != "11"), create.content
        if version != "11":
            assert create.content["creator"] == owner.user_id
        name = await client.room_get_state_event(created.room_id, "m.room.name")
        assert name.content == {"name": "v"}
    finally:
        await client.close()


@VARIANTS
def test_a_version_that_cannot_be_made_is_refused(federate, owner):
    me = of(owner)
    for version, want in [
        ("999", (400, "M_UNSUPPORTED_ROOM_VERSION", "Your homeserver does not support this room version")),
        (10, (400, "M_BAD_JSON", "room_version must be a string")),
    ]:
        resp = me(
            "POST",
            "/v3/createRoom",
            body={"room_version": version, "creation_content": {"m.federate": federate}},
        )
        assert (*failure(resp), resp.json().get("error")) == want, resp.text


def test_local_rooms_are_10_by_default_and_never_12(owner):
    me = of(owner)
    # No version: 10, what `/capabilities` should name for a deployment of local rooms.
    room = me.ok("POST", "/v3/createRoom", body={"creation_content": {"m.federate": False}})["room_id"]
    assert is_local(room)
    create = me.ok("GET", f"/v3/rooms/{q(room)}/state/m.room.create/")
    assert create["room_version"] == "10"
    # Version 12 room IDs carry no `:server`, so no class prefix: Synapse's refusal.
    resp = me("POST", "/v3/createRoom", body={"room_version": "12", "creation_content": {"m.federate": False}})
    assert failure(resp) == (400, "M_UNSUPPORTED_ROOM_VERSION"), resp.text


@VARIANTS
@pytest.mark.parametrize("version", ["7", "8", "10", "11"])
def test_redaction_follows_the_version_rules(federate, version, owner):
    me = of(owner)
    room = create_room(me, federate, room_version=version)
    rules_id = me.ok(
        "PUT",
        f"/v3/rooms/{q(room)}/state/m.room.join_rules/",
        body={"join_rule": "invite", "allow": [{"type": "m.room_membership", "room_id": room}], "x": 1},
    )["event_id"]
    power = me.ok("GET", f"/v3/rooms/{q(room)}/state/m.room.power_levels/")
    power["invite"] = 0
    power["x"] = 1
    power_id = me.ok("PUT", f"/v3/rooms/{q(room)}/state/m.room.power_levels/", body=power)["event_id"]
    redactions = {}
    for target in (rules_id, power_id):
        redactions[target] = me.ok("PUT", f"/v3/rooms/{q(room)}/redact/{q(target)}/{txn()}", body={})["event_id"]

    rules = me.ok("GET", f"/v3/rooms/{q(room)}/event/{q(rules_id)}")["content"]
    # `allow` survives redaction from version 8.
    assert set(rules) == ({"join_rule", "allow"} if int(version) >= 8 else {"join_rule"}), rules
    redacted_power = me.ok("GET", f"/v3/rooms/{q(room)}/event/{q(power_id)}")["content"]
    # `invite` survives from version 11; other keys never do.
    assert ("invite" in redacted_power) == (version == "11"), redacted_power
    assert "x" not in redacted_power and redacted_power["users"][owner.user_id] == 100
    for target, redaction_id in redactions.items():
        redaction = me.ok("GET", f"/v3/rooms/{q(room)}/event/{q(redaction_id)}")
        assert redaction["redacts"] == target, redaction
        assert redaction["content"].get("redacts") == target, redaction


@VARIANTS
@pytest.mark.parametrize("version", ["6", "7"])
def test_knocking_needs_version_7(federate, version, owner, other):
    me, them = of(owner), of(other)
    room = create_room(
        me,
        federate,
        room_version=version,
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
    )
    resp = them("POST", f"/v3/knock/{q(room)}", body={"reason": "let me in"})
    if version == "7":
        assert resp.status_code == 200, resp.text
        member = me.ok("GET", f"/v3/rooms/{q(room)}/state/m.room.member/{q(other.user_id)}")
        assert member["membership"] == "knock"
    else:
        assert (*failure(resp), resp.json().get("error")) == KNOCK_REFUSED, resp.text
        # Nor may they join: `knock` is an unknown join rule in version 6.
        resp = them("POST", f"/v3/join/{q(room)}")
        assert failure(resp) == (403, "M_FORBIDDEN"), resp.text
        assert resp.json()["error"] == "You are not allowed to join this room"


# What Synapse 1.163 answers a knock in a room whose version has no knocking.
KNOCK_REFUSED = (500, "M_FORBIDDEN", "Unknown membership knock")


@VARIANTS
@pytest.mark.parametrize("version", ["7", "8"])
def test_restricted_join_rule_needs_version_8(federate, version, owner, other):
    me, them = of(owner), of(other)
    room = create_room(
        me,
        federate,
        room_version=version,
        invite=[other.user_id],
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "restricted", "allow": []}}],
    )
    resp = them("POST", f"/v3/join/{q(room)}")
    if version == "8":
        # Invited users may join a restricted room.
        assert resp.status_code == 200, resp.text
    else:
        # Before version 8 `restricted` is an unknown join rule: not even an invitee may join.
        assert failure(resp) == (403, "M_FORBIDDEN"), resp.text
        assert resp.json()["error"] == "You are not allowed to join this room"


@VARIANTS
@pytest.mark.parametrize("version", ["5", "6"])
def test_notifications_levels_are_limited_from_version_6(federate, version, owner, other):
    me, them = of(owner), of(other)
    room = create_room(
        me,
        federate,
        room_version=version,
        invite=[other.user_id],
        power_level_content_override={
            "users": {owner.user_id: 100, other.user_id: 50},
            "events": {"m.room.power_levels": 50},
        },
    )
    them.ok("POST", f"/v3/join/{q(room)}")
    power = me.ok("GET", f"/v3/rooms/{q(room)}/state/m.room.power_levels/")
    power["notifications"] = {"room": 75}
    resp = them("PUT", f"/v3/rooms/{q(room)}/state/m.room.power_levels/", body=power)
    if version == "5":
        assert resp.status_code == 200, resp.text
    else:
        assert failure(resp) == (403, "M_FORBIDDEN"), resp.text
        assert resp.json()["error"] == "You don't have permission to add ops level greater than your own"
