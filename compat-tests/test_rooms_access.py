"""Access control in rooms: who may read and write, what an appservice may do
as whom, power levels, history visibility. Each test runs against a hungryserv
local room and, as the reference, against a Synapse room created the same way
(createRoom's `creation_content["m.federate"]` picks which, see routing.toml).
"""

import secrets

import pytest

import stack
from client import As, create_room, failure, of, q, send_text

# variant -> creation_content["m.federate"]
VARIANTS = {"synapse": True, "local": False}
variants = pytest.mark.parametrize("federate", list(VARIANTS.values()), ids=list(VARIANTS))


def visible_bodies(reader: As, room_id: str) -> list[str]:
    """Every message body the reader can page back to, oldest first."""
    bodies, token = [], None
    while True:
        params = {"dir": "b", "limit": 10} | ({"from": token} if token else {})
        page = reader.ok("GET", f"/v3/rooms/{q(room_id)}/messages", params)
        bodies += [e["content"]["body"] for e in page["chunk"] if e["type"] == "m.room.message"]
        token = page.get("end")
        if not token or not page["chunk"]:
            return bodies[::-1]


@pytest.fixture
def owner() -> stack.User:
    return stack.register_user()


@pytest.fixture
def other() -> stack.User:
    return stack.register_user()


@variants
def test_non_member_can_neither_read_nor_write(federate, owner, other):
    room_id = create_room(of(owner), federate, name="members only")
    secret = f"secret {secrets.token_hex(4)}"
    event_id = send_text(of(owner), room_id, secret)
    r, e = q(room_id), q(event_id)
    outsider = of(other)

    attempts = {
        "messages": outsider("GET", f"/v3/rooms/{r}/messages", {"dir": "b"}),
        "state": outsider("GET", f"/v3/rooms/{r}/state"),
        "state name": outsider("GET", f"/v3/rooms/{r}/state/m.room.name/"),
        "members": outsider("GET", f"/v3/rooms/{r}/members"),
        "joined_members": outsider("GET", f"/v3/rooms/{r}/joined_members"),
        "event": outsider("GET", f"/v3/rooms/{r}/event/{e}"),
        "context": outsider("GET", f"/v3/rooms/{r}/context/{e}"),
        "relations": outsider("GET", f"/v1/rooms/{r}/relations/{e}"),
        "send": outsider(
            "PUT", f"/v3/rooms/{r}/send/m.room.message/x", body={"msgtype": "m.text", "body": "hi"}
        ),
        "set name": outsider("PUT", f"/v3/rooms/{r}/state/m.room.name/", body={"name": "mine"}),
        "join (invite only)": outsider("POST", f"/v3/rooms/{r}/join", body={}),
        "invite": outsider("POST", f"/v3/rooms/{r}/invite", body={"user_id": other.user_id}),
        "redact": outsider("PUT", f"/v3/rooms/{r}/redact/{e}/x", body={}),
    }
    assert {name: failure(resp) for name, resp in attempts.items()} == {
        "messages": (403, "M_FORBIDDEN"),
        "state": (403, "M_FORBIDDEN"),
        "state name": (403, "M_FORBIDDEN"),
        "members": (403, "M_FORBIDDEN"),
        "joined_members": (403, "M_FORBIDDEN"),
        # Synapse does not tell an outsider whether the event exists.
        "event": (404, "M_NOT_FOUND"),
        "context": (403, "M_FORBIDDEN"),
        "relations": (403, "M_FORBIDDEN"),
        "send": (403, "M_FORBIDDEN"),
        "set name": (403, "M_FORBIDDEN"),
        "join (invite only)": (403, "M_FORBIDDEN"),
        "invite": (403, "M_FORBIDDEN"),
        "redact": (403, "M_FORBIDDEN"),
    }
    for name, resp in attempts.items():
        assert secret not in resp.text, f"{name} leaked the message"
    # Nothing the outsider tried reached the room.
    state = of(owner).ok("GET", f"/v3/rooms/{r}/state")
    assert {(s["type"], s["state_key"]) for s in state if s["sender"] == other.user_id} == set()
    assert visible_bodies(of(owner), room_id) == [secret]


@variants
def test_appservice_acts_only_inside_its_namespace(federate, other):
    appservice = stack.example_appservice()
    bot = As(appservice.as_token)
    room_id = create_room(bot, federate, invite=[other.user_id])
    of(other).ok("POST", f"/v3/rooms/{q(room_id)}/join", body={})
    send = f"/v3/rooms/{q(room_id)}/send/m.room.message/{secrets.token_hex(4)}"
    text = {"msgtype": "m.text", "body": "not allowed"}

    # A real user of this server, a ghost name on another server, and a ghost
    # that was never registered: the appservice may be none of them.
    for user_id, message in [
        (other.user_id, "Application service cannot masquerade as this user"),
        (
            f"@example_{secrets.token_hex(3)}:elsewhere.example",
            "Application service cannot masquerade as this user",
        ),
        (
            appservice.ghost(f"unregistered_{secrets.token_hex(3)}"),
            "Application service has not registered this user",
        ),
    ]:
        resp = As(appservice.as_token, user_id)("PUT", send, body=text)
        assert failure(resp) == (403, "M_FORBIDDEN"), (user_id, resp.text)
        assert resp.json()["error"].startswith(message)

    # Nor may it create a room as someone else (a local room, by its class).
    before = set(of(other).ok("GET", "/v3/joined_rooms")["joined_rooms"])
    resp = As(appservice.as_token, other.user_id)(
        "POST", "/v3/createRoom", body={"room_version": "10", "creation_content": {"m.federate": federate}}
    )
    assert failure(resp) == (403, "M_FORBIDDEN")
    assert set(of(other).ok("GET", "/v3/joined_rooms")["joined_rooms"]) == before

    # A registered ghost still has to be in the room.
    ghost = appservice.ghost(f"outside_{secrets.token_hex(3)}")
    bot.ok(
        "POST",
        "/v3/register",
        body={"type": "m.login.application_service", "username": ghost[1:].split(":")[0]},
    )
    assert failure(As(appservice.as_token, ghost)("PUT", send, body=text)) == (403, "M_FORBIDDEN")

    # A wrong as_token is no token at all.
    assert failure(As("not-the-as-token", appservice.bot)("PUT", send, body=text)) == (401, "M_UNKNOWN_TOKEN")

    bodies = visible_bodies(of(other), room_id)
    assert "not allowed" not in bodies


@variants
def test_only_appservices_choose_user_and_timestamp(federate, owner):
    """`?user_id=` and `?ts=` are appservice powers: from a user's token they
    change nothing."""
    appservice = stack.example_appservice()
    room_id = create_room(of(owner), federate)
    past = 1_600_000_000_000
    event_id = send_text(of(owner), room_id, "plain user", {"user_id": appservice.bot, "ts": past})
    event = of(owner).ok("GET", f"/v3/rooms/{q(room_id)}/event/{q(event_id)}")
    assert event["sender"] == owner.user_id
    assert event["origin_server_ts"] != past

    # The appservice's own massaged timestamp is kept.
    bot = As(appservice.as_token)
    bot_room = create_room(bot, federate)
    event_id = send_text(bot, bot_room, "bridged", {"ts": past})
    event = bot.ok("GET", f"/v3/rooms/{q(bot_room)}/event/{q(event_id)}")
    assert (event["sender"], event["origin_server_ts"]) == (appservice.bot, past)


@variants
def test_power_levels_are_enforced(federate, owner, other):
    r = q(room_id := create_room(of(owner), federate, name="original", invite=[other.user_id]))
    of(other).ok("POST", f"/v3/rooms/{r}/join", body={})
    owner_message = send_text(of(owner), room_id, "owner's message")
    levels = of(owner).ok("GET", f"/v3/rooms/{r}/state/m.room.power_levels/")
    assert levels["users"] == {owner.user_id: 100} and levels.get("users_default", 0) == 0

    user = of(other)  # at power 0
    promoted_self = {**levels, "users": {**levels["users"], other.user_id: 100}}
    attempts = {
        "power levels": user("PUT", f"/v3/rooms/{r}/state/m.room.power_levels/", body=promoted_self),
        "name": user("PUT", f"/v3/rooms/{r}/state/m.room.name/", body={"name": "taken over"}),
        "kick": user("POST", f"/v3/rooms/{r}/kick", body={"user_id": owner.user_id}),
        "ban": user("POST", f"/v3/rooms/{r}/ban", body={"user_id": owner.user_id}),
        "redact": user("PUT", f"/v3/rooms/{r}/redact/{q(owner_message)}/x", body={}),
    }
    assert {name: failure(resp) for name, resp in attempts.items()} == dict.fromkeys(
        attempts, (403, "M_FORBIDDEN")
    )
    assert attempts["name"].json()["error"] == (
        "You don't have permission to post that to the room. user_level (0) < send_level (50)"
    )

    # At 50 (moderator) the user may rename, but still not touch power levels
    # nor act on the owner at 100.
    of(owner).ok(
        "PUT",
        f"/v3/rooms/{r}/state/m.room.power_levels/",
        body={**levels, "users": {**levels["users"], other.user_id: 50}},
    )
    user.ok("PUT", f"/v3/rooms/{r}/state/m.room.name/", body={"name": "renamed by a moderator"})
    assert failure(user("PUT", f"/v3/rooms/{r}/state/m.room.power_levels/", body=promoted_self)) == (
        403,
        "M_FORBIDDEN",
    )
    assert failure(user("POST", f"/v3/rooms/{r}/kick", body={"user_id": owner.user_id})) == (
        403,
        "M_FORBIDDEN",
    )

    final = of(owner).ok("GET", f"/v3/rooms/{r}/state/m.room.power_levels/")
    assert final["users"] == {owner.user_id: 100, other.user_id: 50}
    assert of(owner).ok("GET", f"/v3/rooms/{r}/state/m.room.name/") == {"name": "renamed by a moderator"}
    assert owner.user_id in of(owner).ok("GET", f"/v3/rooms/{r}/joined_members")["joined"]


@variants
@pytest.mark.parametrize(
    "visibility, expected",
    [
        ("joined", ["after the join"]),
        ("invited", ["after the invite", "after the join"]),
        ("shared", ["before the invite", "after the invite", "after the join"]),
    ],
)
def test_history_visibility(federate, visibility, expected, owner, other):
    room_id = create_room(
        of(owner),
        federate,
        initial_state=[{"type": "m.room.history_visibility", "content": {"history_visibility": visibility}}],
    )
    r = q(room_id)
    before = send_text(of(owner), room_id, "before the invite")
    of(owner).ok("POST", f"/v3/rooms/{r}/invite", body={"user_id": other.user_id})
    send_text(of(owner), room_id, "after the invite")
    of(other).ok("POST", f"/v3/rooms/{r}/join", body={})
    send_text(of(owner), room_id, "after the join")

    assert visible_bodies(of(other), room_id) == expected
    assert visible_bodies(of(owner), room_id) == ["before the invite", "after the invite", "after the join"]
    # An event hidden from /messages is hidden from /event too.
    resp = of(other)("GET", f"/v3/rooms/{r}/event/{q(before)}")
    if "before the invite" in expected:
        assert resp.status_code == 200 and resp.json()["content"]["body"] == "before the invite"
    else:
        assert failure(resp) == (404, "M_NOT_FOUND")


def test_departed_user_reads_back_from_their_leave(owner, other):
    """/messages for a user who left starts at their leave, as Synapse clamps it: the page's
    `start` is the leave's position (not the room's end), so the events sent since are not
    read and skipped one chunk at a time; what the user sees is unchanged."""
    from test_room_deletion import sql

    me, them = of(owner), of(other)
    room_id = create_room(me, federate=False, preset="public_chat")
    send_text(me, room_id, "before")
    them.ok("POST", f"/v3/join/{q(room_id)}", body={})
    send_text(them, room_id, "mine")
    them.ok("POST", f"/v3/rooms/{q(room_id)}/leave", body={})
    leave = me.ok("GET", f"/v3/rooms/{q(room_id)}/state/m.room.member/{q(other.user_id)}", {"format": "event"})
    for i in range(60):
        send_text(me, room_id, f"after {i}")
    page = them.ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "b", "limit": "2"})
    assert [e["event_id"] for e in page["chunk"]][0] == leave["event_id"]
    topo = sql(f"SELECT topo FROM events WHERE event_id = '{leave['event_id']}'")
    assert page["start"] == f"ht{topo}", (page["start"], topo)
    # A `from` before the leave is kept as it is.
    again = them.ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "b", "limit": "2", "from": page["end"]})
    assert again["start"] == page["end"]
    assert visible_bodies(them, room_id) == ["before", "mine"]
