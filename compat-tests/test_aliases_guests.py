"""Issue 22, aliases and guests: the canonical alias names only aliases of the room,
deleting an alias takes it out of the canonical alias, a room moderator may delete another
user's alias; guests join only where `guest_access` is `can_join`. Each scenario runs in a
Synapse room and in a local room (`federate`) with the same client-visible result; the
Synapse variant is the reference the expected values were read from."""

import secrets
import time

import httpx
import pytest

import stack
from client import As, create_room, failure, of, q

VARIANTS = pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])


@pytest.fixture
def owner() -> stack.User:
    return stack.register_user()


@pytest.fixture
def other() -> stack.User:
    return stack.register_user()


def new_alias(user: stack.User) -> str:
    server = user.user_id.split(":", 1)[1]
    return f"#spec_{secrets.token_hex(5)}:{server}"


def canonical(me, room: str) -> dict:
    return me.ok("GET", f"/v3/rooms/{q(room)}/state/m.room.canonical_alias/")


@VARIANTS
def test_canonical_alias_must_point_to_the_room(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    elsewhere = create_room(me, federate)
    mine, theirs, unknown = new_alias(owner), new_alias(owner), new_alias(owner)
    me.ok("PUT", f"/v3/directory/room/{q(mine)}", body={"room_id": room})
    me.ok("PUT", f"/v3/directory/room/{q(theirs)}", body={"room_id": elsewhere})
    path = f"/v3/rooms/{q(room)}/state/m.room.canonical_alias/"
    for content, bad in [
        ({"alias": unknown}, unknown),
        ({"alias": theirs}, theirs),
        ({"alias": mine, "alt_aliases": [mine, unknown]}, unknown),
    ]:
        resp = me("PUT", path, body=content)
        assert failure(resp) == (400, "M_BAD_ALIAS"), resp.text
        assert resp.json()["error"] == f"Room alias {bad} does not point to the room"
    resp = me("PUT", path, body={"alias": mine, "alt_aliases": "not a list"})
    assert failure(resp) == (400, "M_INVALID_PARAM"), resp.text
    resp = me("PUT", path, body={"alias": mine, "alt_aliases": [7]})
    assert failure(resp) == (400, "M_INVALID_PARAM"), resp.text
    assert resp.json()["error"] == "Each alt_alias must be of type string."
    me.ok("PUT", path, body={"alias": mine, "alt_aliases": [mine]})
    assert canonical(me, room) == {"alias": mine, "alt_aliases": [mine]}


@VARIANTS
def test_deleting_an_alias_takes_it_out_of_the_canonical_alias(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    first, second = new_alias(owner), new_alias(owner)
    for alias in (first, second):
        me.ok("PUT", f"/v3/directory/room/{q(alias)}", body={"room_id": room})
    me.ok(
        "PUT",
        f"/v3/rooms/{q(room)}/state/m.room.canonical_alias/",
        body={"alias": first, "alt_aliases": [first, second]},
    )
    me.ok("DELETE", f"/v3/directory/room/{q(first)}")
    assert canonical(me, room) == {"alt_aliases": [second]}
    me.ok("DELETE", f"/v3/directory/room/{q(second)}")
    assert canonical(me, room) == {}
    resp = me("GET", f"/v3/directory/room/{q(first)}")
    assert failure(resp) == (404, "M_NOT_FOUND"), resp.text


@VARIANTS
def test_a_room_moderator_may_delete_another_users_alias(federate, owner, other):
    me, them = of(owner), of(other)
    room = create_room(me, federate, invite=[other.user_id])
    them.ok("POST", f"/v3/join/{q(room)}")
    owners, others = new_alias(owner), new_alias(other)
    me.ok("PUT", f"/v3/directory/room/{q(owners)}", body={"room_id": room})
    them.ok("PUT", f"/v3/directory/room/{q(others)}", body={"room_id": room})
    # A member without the level to set the canonical alias may not delete another's alias.
    resp = them("DELETE", f"/v3/directory/room/{q(owners)}")
    assert failure(resp) == (403, "M_FORBIDDEN"), resp.text
    assert resp.json()["error"] == "You don't have permission to delete the alias."
    # The room's admin may.
    me.ok("DELETE", f"/v3/directory/room/{q(others)}")
    resp = me("GET", f"/v3/directory/room/{q(others)}")
    assert failure(resp) == (404, "M_NOT_FOUND"), resp.text
    assert me.ok("GET", f"/v3/directory/room/{q(owners)}")["room_id"] == room


def test_the_auth_rules_answer_before_the_alias_check(owner, other):
    """A member without the level to send `m.room.canonical_alias` gets the auth rules' 403,
    even for an alias of no room (Synapse validates the alias after its auth checks)."""

    def scenario(federate):
        me, them = of(owner), of(other)
        room = create_room(me, federate, invite=[other.user_id])
        them.ok("POST", f"/v3/join/{q(room)}")
        mine = new_alias(owner)
        me.ok("PUT", f"/v3/directory/room/{q(mine)}", body={"room_id": room})
        answers = []
        for content in ({"alias": new_alias(owner)}, {"alias": mine}, {"alt_aliases": [7]}):
            resp = them("PUT", f"/v3/rooms/{q(room)}/state/m.room.canonical_alias/", body=content)
            answers.append((failure(resp), resp.json()["error"]))
        return answers

    synapse, local = scenario(True), scenario(False)
    assert local == synapse
    assert {answer[0] for answer in synapse} == {(403, "M_FORBIDDEN")}


@VARIANTS
def test_a_server_admin_may_delete_any_alias(federate, owner):
    me = of(owner)
    admin = of(stack.register_user(admin=True))
    room = create_room(me, federate)
    alias = new_alias(owner)
    me.ok("PUT", f"/v3/directory/room/{q(alias)}", body={"room_id": room})
    me.ok("PUT", f"/v3/rooms/{q(room)}/state/m.room.canonical_alias/", body={"alias": alias})
    # Not in the room, not the alias's creator: a server admin all the same.
    admin.ok("DELETE", f"/v3/directory/room/{q(alias)}")
    resp = me("GET", f"/v3/directory/room/{q(alias)}")
    assert failure(resp) == (404, "M_NOT_FOUND"), resp.text


def register_guest() -> tuple[As, str]:
    """A guest account (`/register?kind=guest`, Synapse's `allow_guest_access`)."""
    resp = httpx.post(f"{stack.HS_URL}/_matrix/client/v3/register", params={"kind": "guest"}, json={}, timeout=30)
    assert resp.status_code == 200, resp.text
    return As(resp.json()["access_token"]), resp.json()["user_id"]


@VARIANTS
def test_guests_join_only_where_guest_access_allows_and_leave_when_revoked(federate, owner):
    me = of(owner)
    guest, guest_id = register_guest()
    closed = create_room(me, federate, preset="public_chat")
    resp = guest("POST", f"/v3/join/{q(closed)}", body={})
    assert failure(resp) == (403, "M_FORBIDDEN"), resp.text
    assert resp.json()["error"] == "Guest access not allowed"

    room = create_room(
        me,
        federate,
        preset="public_chat",
        initial_state=[{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}],
    )
    guest.ok("POST", f"/v3/join/{q(room)}", body={})
    member = me.ok("GET", f"/v3/rooms/{q(room)}/state/m.room.member/{q(guest_id)}")
    assert member["membership"] == "join" and member["kind"] == "guest", member

    me.ok("PUT", f"/v3/rooms/{q(room)}/state/m.room.guest_access/", body={"guest_access": "forbidden"})
    deadline = time.monotonic() + 10
    while True:
        member = me.ok("GET", f"/v3/rooms/{q(room)}/state/m.room.member/{q(guest_id)}")
        if member["membership"] == "leave" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert member == {"membership": "leave", "kind": "guest"}, member
