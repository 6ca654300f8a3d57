"""Issue 22, the deprecated room `GET /rooms/{roomId}/initialSync`: a local room answers
what a Synapse room answers (each scenario run for both with fresh users, reduced by
`difftools.Roles` and compared). Presence is compared apart: hungryserv asks Synapse for
each member's, which Synapse gives only for users sharing one of its rooms."""

from client import create_room, failure, of, q, send_text
import stack
from difftools import Roles, both


def reduce(roles: Roles, answer: dict) -> dict:
    return {
        "keys": sorted(answer),
        "membership": answer["membership"],
        "chunk": roles.timeline(answer["messages"]["chunk"]),
        "state": roles.state(answer["state"]),
        "receipts": sorted(
            (e["type"], sorted(roles.user(u) for per_type in e["content"].values() for users in per_type.values() for u in users))
            for e in answer["receipts"]
        ),
        "account_data": [(e["type"], sorted(e["content"])) for e in answer["account_data"]],
    }


def test_room_initial_sync_of_a_member():
    def scenario(federate):
        owner, other = stack.register_user(), stack.register_user()
        roles = Roles(owner=owner, other=other)
        room = create_room(of(owner), federate, preset="public_chat", name="initial")
        of(other).ok("POST", f"/v3/join/{q(room)}")
        for n in range(5):
            last = send_text(of(other), room, f"m{n}")
        of(owner).ok("POST", f"/v3/rooms/{q(room)}/receipt/m.read/{q(last)}", body={})
        of(owner).ok("PUT", f"/v3/user/{q(owner.user_id)}/rooms/{q(room)}/tags/u.work", body={"order": 0.5})
        of(owner).ok("PUT", f"/v3/user/{q(owner.user_id)}/rooms/{q(room)}/account_data/m.custom", body={"a": 1})
        answer = of(owner).ok("GET", f"/v3/rooms/{q(room)}/initialSync", params={"limit": "3"})
        seen = reduce(roles, answer)
        # `start` pages back to the events before the chunk.
        back = of(owner).ok("GET", f"/v3/rooms/{q(room)}/messages",
                            params={"from": answer["messages"]["start"], "dir": "b", "limit": "2"})
        seen["before"] = roles.timeline(back["chunk"])
        seen["default_limit"] = len(of(owner).ok("GET", f"/v3/rooms/{q(room)}/initialSync")["messages"]["chunk"])
        return seen

    synapse, local = both(scenario)
    assert local == synapse
    assert [e[3] for e in synapse["chunk"]] == ["m2", "m3", "m4"]


def test_room_initial_sync_after_leaving_and_of_a_stranger():
    def scenario(federate):
        owner, other, stranger = (stack.register_user() for _ in range(3))
        roles = Roles(owner=owner, other=other)
        room = create_room(of(owner), federate, preset="public_chat")
        of(other).ok("POST", f"/v3/join/{q(room)}")
        send_text(of(owner), room, "while there")
        of(other).ok("POST", f"/v3/rooms/{q(room)}/leave", body={})
        send_text(of(owner), room, "after leaving")
        of(owner).ok("PUT", f"/v3/rooms/{q(room)}/state/m.room.topic/", body={"topic": "later"})
        answer = of(other).ok("GET", f"/v3/rooms/{q(room)}/initialSync")
        refused = failure(of(stranger)("GET", f"/v3/rooms/{q(room)}/initialSync"))
        return reduce(roles, answer), refused

    synapse, local = both(scenario)
    assert local == synapse
    assert synapse[0]["membership"] == "leave"


def test_room_initial_sync_lists_the_members_presence():
    """Synapse lists the joined members' presence; members who also share a Synapse room
    (as the two users of `both` do, once the Synapse variant ran) are listed alike."""
    owner, other = stack.register_user(), stack.register_user()
    roles = Roles(owner=owner, other=other)
    of(other).ok("PUT", f"/v3/presence/{q(other.user_id)}/status", body={"presence": "online", "status_msg": "here"})

    def scenario(federate):
        room = create_room(of(owner), federate, preset="public_chat")
        of(other).ok("POST", f"/v3/join/{q(room)}")
        answer = of(owner).ok("GET", f"/v3/rooms/{q(room)}/initialSync")
        return sorted(
            (roles.user(e["content"]["user_id"]), e["type"], e["content"]["presence"], e["content"].get("status_msg"))
            for e in answer["presence"]
        )

    synapse, local = both(scenario)
    assert local == synapse
    assert ("other", "m.presence", "online", "here") in synapse


def test_global_initial_sync_lists_local_rooms_as_synapse_rooms():
    """The global `GET /initialSync`: a joined, an invited and (with `archived`) a left
    local room are listed as the same Synapse rooms are, with their receipts, and a local
    room's `messages.start` pages back with `/messages`."""
    owner, other = stack.register_user(), stack.register_user()
    roles = Roles(owner=owner, other=other)
    rooms = {}
    for federate in (True, False):
        joined_room = create_room(of(owner), federate, name="global")
        of(owner).ok("POST", f"/v3/rooms/{q(joined_room)}/invite", body={"user_id": other.user_id})
        of(other).ok("POST", f"/v3/join/{q(joined_room)}")
        for n in range(4):
            last = send_text(of(other), joined_room, f"g{n}")
        of(owner).ok("POST", f"/v3/rooms/{q(joined_room)}/receipt/m.read/{q(last)}", body={})
        of(owner).ok("PUT", f"/v3/user/{q(owner.user_id)}/rooms/{q(joined_room)}/tags/u.g", body={})
        invited_room = create_room(of(other), federate, name="invited", invite=[owner.user_id])
        left_room = create_room(of(owner), federate, name="left")
        send_text(of(owner), left_room, "before leaving")
        of(owner).ok("POST", f"/v3/rooms/{q(left_room)}/leave", body={})
        rooms[federate] = {"joined": joined_room, "invited": invited_room, "left": left_room}

    def reduce_entry(entry: dict | None) -> dict | None:
        if entry is None:
            return None
        seen = {
            "keys": sorted(entry),
            "membership": entry["membership"],
            "visibility": entry["visibility"],
            "inviter": roles.user(entry.get("inviter")),
            "invite": roles.event(entry["invite"]) if "invite" in entry else None,
        }
        if "messages" in entry:
            seen["chunk"] = roles.timeline(entry["messages"]["chunk"])
            seen["state"] = roles.state(entry["state"])
            seen["account_data"] = [(e["type"], e["content"]) for e in entry["account_data"]]
        return seen

    answers = {
        archived: of(owner).ok("GET", "/v3/initialSync", params={"limit": "2", "archived": archived})
        for archived in ("false", "true")
    }
    assert sorted(answers["false"]) == ["account_data", "end", "presence", "receipts", "rooms"]
    for archived, answer in answers.items():
        by_id = {entry["room_id"]: entry for entry in answer["rooms"]}
        for kind in ("joined", "invited", "left"):
            synapse = reduce_entry(by_id.get(rooms[True][kind]))
            local = reduce_entry(by_id.get(rooms[False][kind]))
            assert local == synapse, (archived, kind)
            assert (synapse is None) == (kind == "left" and archived == "false"), (archived, kind)
    answer = answers["false"]
    by_id = {entry["room_id"]: entry for entry in answer["rooms"]}
    assert [e[3] for e in reduce_entry(by_id[rooms[False]["joined"]])["chunk"]] == ["g2", "g3"]
    receipted = {e["room_id"] for e in answer["receipts"] if e["type"] == "m.receipt"}
    assert {rooms[True]["joined"], rooms[False]["joined"]} <= receipted
    # `start` pages back in either kind of room.
    before = {}
    for federate in (True, False):
        start = by_id[rooms[federate]["joined"]]["messages"]["start"]
        back = of(owner).ok("GET", f"/v3/rooms/{q(rooms[federate]['joined'])}/messages",
                            params={"from": start, "dir": "b", "limit": "2"})
        before[federate] = roles.timeline(back["chunk"])
    assert before[False] == before[True]
    assert [e[3] for e in before[True]] == ["g1", "g0"]
    # `end` is a token Synapse's `/events` takes.
    of(owner).ok("GET", "/v3/events", params={"from": answer["end"], "timeout": "0"})
