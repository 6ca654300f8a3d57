"""Threads: the thread list (`/v1/rooms/{id}/threads`, `include`, paging) and
the bundled thread summaries (`unsigned["m.relations"]["m.thread"]`) on roots
in `/event`, `/messages`, `/context` and `/sync`, the same in a Synapse room and
in a local room."""

import json
import secrets

from client import As, of, q, send_text, two_rooms

import stack


def reply(sender: As, room_id: str, root: str, body: str) -> str:
    content = {
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": root},
        },
    }
    path = f"/v3/rooms/{q(room_id)}/send/m.room.message/{secrets.token_hex(8)}"
    return sender.ok("PUT", path, body=content)["event_id"]


def summary(event: dict, names: dict[str, str]) -> dict | None:
    thread = event.get("unsigned", {}).get("m.relations", {}).get("m.thread")
    if thread is None:
        return None
    return {
        "latest_event": names.get(thread["latest_event"]["event_id"], "?"),
        "latest_body": thread["latest_event"]["content"]["body"],
        "count": thread["count"],
        "current_user_participated": thread["current_user_participated"],
    }


def scenario(owner: stack.User, other: stack.User, room_id: str) -> dict:
    names = {}

    def named(name: str, event_id: str) -> str:
        names[event_id] = name
        return event_id

    root1 = named("root1", send_text(of(owner), room_id, "first root"))
    root2 = named("root2", send_text(of(other), room_id, "second root"))
    root3 = named("root3", send_text(of(other), room_id, "third root"))
    named("r1a", reply(of(other), room_id, root1, "reply 1a"))
    named("r2a", reply(of(owner), room_id, root2, "reply 2a"))
    named("r3a", reply(of(other), room_id, root3, "reply 3a"))
    named("r1b", reply(of(other), room_id, root1, "reply 1b"))
    # Order by latest reply: root1, root3, root2.

    def pages(who: As, include: str) -> list[list[tuple]]:
        got, token = [], None
        for _ in range(5):
            params = {"limit": "2", "include": include}
            if token:
                params["from"] = token
            page = who.ok("GET", f"/v1/rooms/{q(room_id)}/threads", params)
            got.append([(names.get(e["event_id"], "?"), summary(e, names)) for e in page["chunk"]])
            token = page.get("next_batch")
            if not token:
                break
        return got

    result = {
        "all_owner": pages(of(owner), "all"),
        "all_other": pages(of(other), "all"),
        "participated_owner": pages(of(owner), "participated"),
        "participated_other": pages(of(other), "participated"),
    }
    result["event"] = summary(of(owner).ok("GET", f"/v3/rooms/{q(room_id)}/event/{q(root1)}"), names)
    context = of(owner).ok("GET", f"/v3/rooms/{q(room_id)}/context/{q(root2)}", {"limit": "4"})
    result["context"] = [
        (names.get(e["event_id"], "?"), summary(e, names))
        for e in context["events_before"] + [context["event"]] + context["events_after"]
    ]
    messages = of(other).ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "b", "limit": "20"})
    result["messages"] = [(names.get(e["event_id"], "?"), summary(e, names)) for e in messages["chunk"] if e["event_id"] in names]
    # A limited timeline: Synapse bundles aggregations into sync only then (or for a newly
    # joined room).
    sync_filter = json.dumps({"room": {"rooms": [room_id], "timeline": {"limit": 7}}})
    sync = of(owner).ok("GET", "/v3/sync", {"filter": sync_filter})
    timeline = sync["rooms"]["join"][room_id]["timeline"]["events"]
    result["sync"] = [(names.get(e["event_id"], "?"), summary(e, names)) for e in timeline if e["event_id"] in names]
    return result


def test_threads_read_the_same_in_both_worlds():
    owner, other = stack.register_user(), stack.register_user()
    synapse_room, local_room = two_rooms(owner, other)
    synapse = scenario(owner, other, synapse_room)
    local = scenario(owner, other, local_room)
    assert local == synapse
    # The scenario is not vacuous: two pages, participation, summaries.
    assert [[name for name, _ in page] for page in synapse["all_owner"]] == [["root1", "root3"], ["root2"]]
    assert [name for page in synapse["participated_owner"] for name, _ in page] == ["root1", "root2"]
    assert synapse["event"] == {
        "latest_event": "r1b",
        "latest_body": "reply 1b",
        "count": 2,
        "current_user_participated": True,
    }


def test_thread_list_refuses_bad_input_alike():
    owner, other = stack.register_user(), stack.register_user()
    outsider = stack.register_user()
    answers = []
    for room_id in two_rooms(owner, other):
        path = f"/v1/rooms/{q(room_id)}/threads"
        answers.append(
            [
                of(owner)(  "GET", path, {"include": "some"}).status_code,
                of(outsider)("GET", path).status_code,
            ]
        )
    assert answers[0] == answers[1]
    assert answers[0] == [400, 403]
