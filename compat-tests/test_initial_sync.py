"""Issue 22, the deprecated room `GET /rooms/{roomId}/initialSync`: a local room answers
what a Synapse room answers (each scenario run for both with fresh users, reduced by
`difftools.Roles` and compared). Presence is left out of the comparison: Synapse fills it
from its presence tracking, which does not know local rooms."""

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
