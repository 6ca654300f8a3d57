"""`/messages` filters `contains_url`, `related_by_senders` and
`related_by_rel_types` (what Element's Files panel and thread views ask), the
same in a Synapse room and in a local room."""

import json
import secrets

from client import of, q, send_text, two_rooms

import stack


def send(sender, room_id: str, content: dict, kind: str = "m.room.message") -> str:
    path = f"/v3/rooms/{q(room_id)}/send/{kind}/{secrets.token_hex(8)}"
    return sender.ok("PUT", path, body=content)["event_id"]


def scenario(owner: stack.User, other: stack.User, room_id: str) -> dict:
    names = {}
    names[send(of(owner), room_id, {"msgtype": "m.file", "body": "report.pdf", "url": "mxc://example.org/pdf"})] = "file"
    text = send_text(of(owner), room_id, "plain text")
    names[text] = "text"
    reacted = send_text(of(owner), room_id, "react to me")
    names[reacted] = "reacted"
    rel = {"m.relates_to": {"rel_type": "m.annotation", "event_id": reacted, "key": "👍"}}
    names[send(of(other), room_id, rel, "m.reaction")] = "reaction"
    threaded = send_text(of(other), room_id, "thread root")
    names[threaded] = "root"
    reply = {
        "msgtype": "m.text",
        "body": "in thread",
        "m.relates_to": {"rel_type": "m.thread", "event_id": threaded},
    }
    names[send(of(owner), room_id, reply)] = "reply"
    # A URL that is not a string does not count.
    names[send(of(owner), room_id, {"msgtype": "m.text", "body": "odd", "url": 5})] = "odd"

    def read(filter_: dict) -> list[str]:
        params = {"dir": "b", "limit": "30", "filter": json.dumps(filter_)}
        chunk = of(owner).ok("GET", f"/v3/rooms/{q(room_id)}/messages", params)["chunk"]
        return [names.get(e["event_id"], e["type"]) for e in chunk]

    return {
        "with_url": read({"contains_url": True}),
        "without_url": read({"contains_url": False, "types": ["m.room.message"]}),
        "annotated": read({"related_by_rel_types": ["m.annotation"]}),
        "by_other": read({"related_by_senders": [other.user_id]}),
        "by_owner": read({"related_by_senders": [owner.user_id]}),
        "threaded_by_other": read({"related_by_senders": [other.user_id], "related_by_rel_types": ["m.thread"]}),
        "threaded_by_owner": read({"related_by_senders": [owner.user_id], "related_by_rel_types": ["m.thread"]}),
    }


def test_messages_filters_read_the_same_in_both_worlds():
    owner, other = stack.register_user(), stack.register_user()
    synapse_room, local_room = two_rooms(owner, other)
    synapse = scenario(owner, other, synapse_room)
    local = scenario(owner, other, local_room)
    assert local == synapse
    assert synapse["with_url"] == ["file"]
    assert synapse["annotated"] == ["reacted"]
    assert synapse["by_other"] == ["reacted"]
    assert synapse["threaded_by_owner"] == ["root"]
    assert synapse["threaded_by_other"] == []
