"""Issue 22: local rooms behave like Synapse rooms across the client-server spec.
Each test plays one scenario in a Synapse room and in a local room (`federate`)
and asserts the same client-visible result; the Synapse variant is the reference
the expected values were read from."""

import secrets

import pytest

import stack
from client import create_room, failure, of, q, send_text

VARIANTS = pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])


@pytest.fixture
def owner() -> stack.User:
    return stack.register_user()


@pytest.fixture
def other() -> stack.User:
    return stack.register_user()


def txn() -> str:
    return secrets.token_hex(6)


# --- Send -----------------------------------------------------------------------------


@VARIANTS
def test_send_without_a_transaction_id(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    body = {"msgtype": "m.text", "body": "no txn"}
    first = me.ok("POST", f"/v3/rooms/{q(room)}/send/m.room.message", body=body)["event_id"]
    # Without a transaction ID nothing is deduplicated.
    second = me.ok("POST", f"/v3/rooms/{q(room)}/send/m.room.message", body=body)["event_id"]
    assert first != second
    event = me.ok("GET", f"/v3/rooms/{q(room)}/event/{q(first)}")
    assert event["content"] == body
    assert "transaction_id" not in event.get("unsigned", {})
    # The same holds for redactions, state and membership POSTs without a txn ID.
    redaction = me.ok("POST", f"/v3/rooms/{q(room)}/redact/{q(first)}", body={"reason": "r"})
    assert redaction["event_id"].startswith("$")
    assert me.ok("GET", f"/v3/rooms/{q(room)}/event/{q(first)}")["content"] == {}


@VARIANTS
def test_event_type_over_255_bytes_is_too_large(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    long_type = "x" * 256
    resp = me("PUT", f"/v3/rooms/{q(room)}/send/{long_type}/{txn()}", body={"body": "b"})
    assert failure(resp) == (413, "M_TOO_LARGE"), resp.text
    assert resp.json()["error"] == "'type' too large"
    # 255 bytes is fine.
    me.ok("PUT", f"/v3/rooms/{q(room)}/send/{'x' * 255}/{txn()}", body={"body": "b"})
    # Bytes count, not characters: 128 two-byte characters are 256 bytes.
    resp = me("PUT", f"/v3/rooms/{q(room)}/send/{q('é' * 128)}/{txn()}", body={"body": "b"})
    assert failure(resp) == (413, "M_TOO_LARGE"), resp.text
    # A state key over 255 bytes likewise.
    resp = me("PUT", f"/v3/rooms/{q(room)}/state/m.custom/{'k' * 256}", body={"a": 1})
    assert failure(resp) == (413, "M_TOO_LARGE"), resp.text
    assert resp.json()["error"] == "'state_key' too large"


@VARIANTS
def test_redacting_an_event_of_another_room_is_refused(federate, owner):
    me = of(owner)
    room_a = create_room(me, federate)
    room_b = create_room(me, federate)
    target = send_text(me, room_a, "in room a")
    resp = me("PUT", f"/v3/rooms/{q(room_b)}/redact/{q(target)}/{txn()}", body={})
    assert failure(resp) == (400, "M_UNKNOWN"), resp.text
    assert resp.json()["error"] == "Cannot redact event from a different room"
    assert me.ok("GET", f"/v3/rooms/{q(room_a)}/event/{q(target)}")["content"]["body"] == "in room a"
    # Nor may the create event be redacted.
    create = me.ok("GET", f"/v3/rooms/{q(room_a)}/state/m.room.create", params={"format": "event"})
    resp = me("PUT", f"/v3/rooms/{q(room_a)}/redact/{q(create['event_id'])}/{txn()}", body={})
    assert failure(resp) == (403, "M_FORBIDDEN"), resp.text


# --- /relations -----------------------------------------------------------------------


def send(me, room: str, kind: str, content: dict) -> str:
    return me.ok("PUT", f"/v3/rooms/{q(room)}/send/{kind}/{txn()}", body=content)["event_id"]


def thread_with_children(me, room: str) -> dict:
    """A thread root with three replies, a reaction to the first and an edit of the second."""
    ids = {"root": send_text(me, room, "root")}
    for n in (1, 2, 3):
        ids[f"t{n}"] = send(me, room, "m.room.message", {
            "msgtype": "m.text",
            "body": f"reply {n}",
            "m.relates_to": {"rel_type": "m.thread", "event_id": ids["root"]},
        })
    ids["reaction"] = send(me, room, "m.reaction", {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": ids["t1"], "key": "👍"},
    })
    ids["edit"] = send(me, room, "m.room.message", {
        "msgtype": "m.text",
        "body": "* reply 2 edited",
        "m.new_content": {"msgtype": "m.text", "body": "reply 2 edited"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": ids["t2"]},
    })
    return ids


def page(me, room: str, parent: str, suffix: str = "", **params) -> dict:
    return me.ok("GET", f"/v1/rooms/{q(room)}/relations/{q(parent)}{suffix}", params=params)


@VARIANTS
def test_relations_forwards_and_pagination(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    ids = thread_with_children(me, room)
    names = {v: k for k, v in ids.items()}

    def seen(answer: dict) -> list[str]:
        return [names[e["event_id"]] for e in answer["chunk"]]

    first = page(me, room, ids["root"], dir="f", limit=2)
    assert seen(first) == ["t1", "t2"]
    assert "next_batch" in first and "prev_batch" not in first
    second = page(me, room, ids["root"], dir="f", limit=2, **{"from": first["next_batch"]})
    assert seen(second) == ["t3"]
    assert "next_batch" not in second
    assert second["prev_batch"] == first["next_batch"]
    # Backwards (the default), and `to` ending a forwards read where a backwards page stopped.
    newest = page(me, room, ids["root"], limit=1)
    assert seen(newest) == ["t3"]
    assert seen(page(me, room, ids["root"], dir="f", to=newest["next_batch"])) == ["t1", "t2"]
    back = page(me, room, ids["root"], limit=1, **{"from": newest["next_batch"]})
    assert seen(back) == ["t2"]
    assert back["prev_batch"] == newest["next_batch"]


@VARIANTS
def test_relations_recurse(federate, owner):
    me = of(owner)
    room = create_room(me, federate)
    ids = thread_with_children(me, room)
    names = {v: k for k, v in ids.items()}

    def seen(answer: dict) -> list[str]:
        return [names[e["event_id"]] for e in answer["chunk"]]

    flat = page(me, room, ids["root"])
    assert seen(flat) == ["t3", "t2", "t1"]
    assert "recursion_depth" not in flat
    deep = page(me, room, ids["root"], recurse="true", limit=10)
    assert seen(deep) == ["edit", "reaction", "t3", "t2", "t1"]
    assert deep["recursion_depth"] == 3
    # The type filters apply to every level (matrix-js-sdk asks for a thread this way).
    assert seen(page(me, room, ids["root"], "/m.thread", recurse="true")) == ["t3", "t2", "t1"]
    assert seen(page(me, room, ids["root"], "/m.annotation", recurse="true")) == ["reaction"]
    assert seen(page(me, room, ids["root"], "/m.annotation/m.reaction", recurse="true")) == ["reaction"]
    assert seen(page(me, room, ids["root"], "/m.annotation")) == []
    assert seen(page(me, room, ids["root"], dir="f", recurse="true", limit=10)) == [
        "t1", "t2", "t3", "reaction", "edit"]

