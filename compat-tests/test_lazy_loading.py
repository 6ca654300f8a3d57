"""Issue 22, lazy-loaded members: the member events a client lazy-loading members gets in
sync, `/messages` and `/context`, compared between a Synapse room and a local room. Each
scenario runs twice with fresh users (Synapse's record of the members a device was sent is
per device), and the two runs must show the same thing."""

import secrets

import stack
from client import create_room, of, q, send_text
from difftools import Roles, both, invite_and_join, joined, set_state, sync

LAZY = {"lazy_load_members": True}


def room_of_three(federate: bool) -> tuple[stack.User, stack.User, stack.User, str, Roles]:
    owner, other, third = (stack.register_user() for _ in range(3))
    room = create_room(of(owner), federate, name="lazy")
    invite_and_join(of(owner), room, other)
    invite_and_join(of(owner), room, third)
    return owner, other, third, room, Roles(owner=owner, other=other, third=third)


def lazy_filter(limit: int, **state) -> dict:
    return {"room": {"timeline": {"limit": limit}, "state": {**LAZY, **state}}}


def test_initial_then_incremental_sends_each_member_once():
    """An initial sync sends the members of the timeline's senders (and the user's own); an
    incremental one whose senders the device already has sends none (the issue's "3 member
    events where 0 are due")."""

    def scenario(federate):
        owner, other, third, room, roles = room_of_three(federate)
        for n in range(3):
            send_text(of(other), room, f"m{n}")
        first = sync(of(owner), filter=lazy_filter(2))
        seen = [roles.members(joined(first, room)["state"]["events"])]
        since = first["next_batch"]
        send_text(of(other), room, "again")
        send_text(of(third), room, "third speaks")
        second = sync(of(owner), since, filter=lazy_filter(10))
        entry = joined(second, room)
        seen.append(roles.timeline(entry["timeline"]["events"]))
        seen.append(roles.members(entry["state"]["events"]))
        since = second["next_batch"]
        send_text(of(other), room, "and again")
        third_sync = sync(of(owner), since, filter=lazy_filter(10))
        seen.append(roles.members(joined(third_sync, room)["state"]["events"]))
        return seen

    synapse, local = both(scenario)
    assert local == synapse
    # Synapse sent other and owner first, then only third (new to the device), then no one.
    assert synapse[0] == ["other", "owner"]
    assert synapse[2] == ["third"]
    assert synapse[3] == []


def test_include_redundant_members_sends_them_again():
    def scenario(federate):
        owner, other, _, room, roles = room_of_three(federate)
        send_text(of(other), room, "one")
        first = sync(of(owner), filter=lazy_filter(2, include_redundant_members=True))
        send_text(of(other), room, "two")
        second = sync(of(owner), first["next_batch"], filter=lazy_filter(10, include_redundant_members=True))
        return roles.members(joined(first, room)["state"]["events"]), roles.members(
            joined(second, room)["state"]["events"]
        )

    synapse, local = both(scenario)
    assert local == synapse
    assert synapse[1] == ["other"]


def test_members_after_a_gap():
    """A limited incremental sync: the members of the timeline's senders the device lacks,
    including one whose member event changed in the gap; nobody else's."""

    def scenario(federate):
        owner, other, third, room, roles = room_of_three(federate)
        send_text(of(owner), room, "start")
        first = sync(of(owner), filter=lazy_filter(1))
        # In the gap: third renames, other and third speak; the timeline keeps only third's last.
        set_state(of(third), room, "m.room.member", {"membership": "join", "displayname": "Third"}, third.user_id)
        set_state(of(owner), room, "m.room.topic", {"topic": "in the gap"})
        for n in range(4):
            send_text(of(other), room, f"gap {n}")
        send_text(of(third), room, "last")
        second = sync(of(owner), first["next_batch"], filter=lazy_filter(1))
        entry = joined(second, room)
        return (
            roles.members(joined(first, room)["state"]["events"]),
            entry["timeline"]["limited"],
            roles.timeline(entry["timeline"]["events"]),
            roles.state(entry["state"]["events"]),
        )

    synapse, local = both(scenario)
    assert local == synapse
    assert synapse[1] is True


def test_members_of_state_senders_in_the_timeline():
    """A member event in the timeline is not repeated in `state`; the senders of state
    events in the timeline count like any sender."""

    def scenario(federate):
        owner, other, third, room, roles = room_of_three(federate)
        first = sync(of(owner), filter=lazy_filter(5))
        set_state(of(owner), room, "m.room.topic", {"topic": "t"})
        set_state(of(third), room, "m.room.member", {"membership": "join", "displayname": "T3"}, third.user_id)
        of(other).ok("POST", f"/v3/rooms/{q(room)}/leave", body={})
        second = sync(of(owner), first["next_batch"], filter=lazy_filter(5))
        entry = joined(second, room)
        return (
            roles.members(joined(first, room)["state"]["events"]),
            roles.timeline(entry["timeline"]["events"]),
            roles.state(entry["state"]["events"]),
        )

    synapse, local = both(scenario)
    assert local == synapse


def test_context_and_messages_lazy_load_the_senders_only():
    """`/context` and `/messages` with `lazy_load_members`: the member events of the senders
    of the events returned (the issue's "/context giving 3 instead of 1")."""

    def scenario(federate):
        owner, other, third, room, roles = room_of_three(federate)
        send_text(of(other), room, "a")
        target = send_text(of(other), room, "b")
        send_text(of(other), room, "c")
        lazy = '{"lazy_load_members": true}'
        context = of(owner).ok(
            "GET", f"/v3/rooms/{q(room)}/context/{q(target)}", params={"limit": "2", "filter": lazy}
        )
        messages = of(owner).ok(
            "GET", f"/v3/rooms/{q(room)}/messages", params={"dir": "b", "limit": "2", "filter": lazy}
        )
        plain = of(owner).ok("GET", f"/v3/rooms/{q(room)}/context/{q(target)}", params={"limit": "2"})
        return (
            roles.members(context["state"]),
            roles.members(messages.get("state", [])),
            roles.members(plain["state"]),
            sorted({e["type"] for e in context["state"]}),
        )

    synapse, local = both(scenario)
    assert local == synapse
    assert synapse[0] == ["other"]


def test_lazy_members_with_a_state_types_filter():
    """`state.types` leaving members out still sends the lazy-loaded ones? As Synapse does."""

    def scenario(federate):
        owner, other, _, room, roles = room_of_three(federate)
        send_text(of(other), room, "x" + secrets.token_hex(2)[:0])
        resp = sync(of(owner), filter=lazy_filter(3, types=["m.room.name"]))
        return roles.state(joined(resp, room)["state"]["events"])

    synapse, local = both(scenario)
    assert local == synapse
