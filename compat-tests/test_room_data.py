"""Receipts, read markers, typing, tags and room account data, differentially:
the same scenario in a Synapse room and in a local room, seen through /sync by
matrix-nio, and the same bad requests answered with the same status and errcode.

What each client sees after each step is reduced to labels (event IDs become
m1, m2, ..., users owner/other) and the two traces must be equal.
"""

import asyncio
import secrets
import time

import pytest
from nio import (
    FullyReadEvent,
    ReceiptEvent,
    SyncResponse,
    TagEvent,
    TypingNoticeEvent,
    UnknownAccountDataEvent,
)

import stack
from client import create_room, failure, new_nio, of, q, send_text, two_rooms

COLLECT_SYNCS = 8


class Observer:
    """A nio client that reduces what it sees in one room to comparable tuples."""

    def __init__(self, user: stack.User, room_id: str, labels: dict[str, str]):
        self.client = new_nio(user)
        self.room_id = room_id
        self.labels = labels

    def reduce(self, event) -> tuple | None:
        label = lambda value: self.labels.get(value, value)  # noqa: E731
        if isinstance(event, ReceiptEvent):
            return (
                "receipts",
                tuple(
                    sorted(
                        (label(r.event_id), r.receipt_type, label(r.user_id), r.thread_id)
                        for r in event.receipts
                    )
                ),
            )
        if isinstance(event, TypingNoticeEvent):
            return ("typing", tuple(sorted(label(u) for u in event.users)))
        if isinstance(event, FullyReadEvent):
            return ("fully_read", label(event.event_id))
        if isinstance(event, TagEvent):
            return ("tags", tuple(sorted((k, str(v)) for k, v in event.tags.items())))
        if isinstance(event, UnknownAccountDataEvent):
            return ("account_data", event.type, str(event.content))
        return None

    async def start(self) -> None:
        first = await self.client.sync(timeout=0, full_state=True)
        assert isinstance(first, SyncResponse), first

    async def until(self, wanted) -> list[tuple]:
        """Syncs (long-polling) until an observation satisfies `wanted`; returns
        everything observed in the room on the way, in order."""
        seen: list[tuple] = []
        for _ in range(COLLECT_SYNCS):
            response = await self.client.sync(timeout=5000)
            assert isinstance(response, SyncResponse), response
            room = response.rooms.join.get(self.room_id)
            if room is not None:
                for event in list(room.ephemeral) + list(room.account_data):
                    reduced = self.reduce(event)
                    if reduced is not None:
                        seen.append(reduced)
            if any(wanted(o) for o in seen):
                return seen
        raise AssertionError(f"never saw the wanted observation; saw {seen}")

    async def unread_after(self, event_id: str) -> tuple:
        """Syncs until `event_id` is in the room's timeline; the room's unread counts then."""
        for _ in range(COLLECT_SYNCS):
            response = await self.client.sync(timeout=5000)
            assert isinstance(response, SyncResponse), response
            room = response.rooms.join.get(self.room_id)
            if room is not None and any(getattr(e, "event_id", None) == event_id for e in room.timeline.events):
                counts = room.unread_notifications
                return ("unread", counts.notification_count, counts.highlight_count)
        raise AssertionError(f"never saw {event_id}")

    async def close(self) -> None:
        await self.client.close()


def kind(name: str):
    return lambda observation: observation[0] == name


async def scenario(owner: stack.User, other: stack.User, room_id: str, expiry_within: float) -> list:
    """Runs the steps in one room; returns the trace of what both users saw. A typing
    notice of 1.5 s must be seen to expire within `expiry_within` seconds."""
    labels = {owner.user_id: "owner", other.user_id: "other"}
    events = [send_text(of(other), room_id, f"message {i}") for i in range(3)]
    for i, event_id in enumerate(events):
        labels[event_id] = f"m{i}"
    m0, m1, m2 = events
    path = f"/v3/rooms/{q(room_id)}"
    owner_tags = f"/v3/user/{q(owner.user_id)}/rooms/{q(room_id)}"
    trace: list = []
    watch_owner = Observer(owner, room_id, labels)
    watch_other = Observer(other, room_id, labels)
    try:
        await watch_owner.start()
        await watch_other.start()

        # A private receipt reaches only its owner; the public one after it everybody.
        of(other).ok("POST", f"{path}/receipt/m.read.private/{q(m0)}", body={})
        trace.append(("other sees own private", await watch_other.until(kind("receipts"))))
        of(other).ok("POST", f"{path}/receipt/m.read/{q(m1)}", body={})
        seen = await watch_owner.until(kind("receipts"))
        assert all("m.read.private" not in str(o) for o in seen), seen
        trace.append(("owner sees public only", seen))

        # Read markers: m.fully_read into room account data, m.read as a receipt.
        of(owner).ok(
            "POST",
            f"{path}/read_markers",
            body={"m.fully_read": m1, "m.read": m2, "com.beeper.read.extra": {"ts": 1234}},
        )
        trace.append(("owner read markers", await watch_owner.until(kind("fully_read"))))
        if not any(o[0] == "receipts" for o in trace[-1][1]):
            trace[-1][1].extend(await watch_owner.until(kind("receipts")))

        # Receipts and markers never move back; the tag after them shows nothing else came.
        of(owner).ok("POST", f"{path}/receipt/m.read/{q(m0)}", body={})
        of(owner).ok("POST", f"{path}/read_markers", body={"m.fully_read": m0})
        of(owner).ok("PUT", f"{owner_tags}/tags/u.work", body={"order": 0.5})
        trace.append(("backwards, then a tag", await watch_owner.until(kind("tags"))))
        assert of(owner).ok("GET", f"{owner_tags}/tags") == {"tags": {"u.work": {"order": 0.5}}}
        of(owner).ok("DELETE", f"{owner_tags}/tags/u.work")
        trace.append(("tag deleted", await watch_owner.until(kind("tags"))))
        assert of(owner).ok("GET", f"{owner_tags}/tags") == {"tags": {}}

        # Room account data.
        of(owner).ok("PUT", f"{owner_tags}/account_data/com.example.x", body={"a": 1})
        trace.append(("account data", await watch_owner.until(kind("account_data"))))
        assert of(owner).ok("GET", f"{owner_tags}/account_data/com.example.x") == {"a": 1}

        # Typing: start, stop, and a short notice whose expiry wakes the waiting sync.
        typing = f"{path}/typing/{q(other.user_id)}"
        of(other).ok("PUT", typing, body={"typing": True, "timeout": 30000})
        trace.append(("typing", await watch_owner.until(kind("typing"))))
        of(other).ok("PUT", typing, body={"typing": False})
        trace.append(("stopped", await watch_owner.until(kind("typing"))))
        of(other).ok("PUT", typing, body={"typing": True, "timeout": 1500})
        trace.append(("short notice", await watch_owner.until(kind("typing"))))
        started = time.monotonic()
        trace.append(("expired", await watch_owner.until(lambda o: o == ("typing", ()))))
        assert time.monotonic() - started < expiry_within, "the expiry did not wake the sync"

        # Unread counts after all of the above: the owner's receipt is on m2.
        plain = send_text(of(other), room_id, "unread one")
        trace.append(("unread after a message", [await watch_owner.unread_after(plain)]))
        mention = send_text(of(other), room_id, f"hey {owner.user_id}")
        trace.append(("unread after a mention", [await watch_owner.unread_after(mention)]))
    finally:
        await watch_owner.close()
        await watch_other.close()
    return trace


def errors(owner: stack.User, other: stack.User, outsider: stack.User, room_id: str) -> list:
    """Bad requests: (what, status, errcode) for each."""
    event_id = send_text(of(other), room_id, "target")
    path = f"/v3/rooms/{q(room_id)}"
    # A thread rooted at event_id: a reply in it, and a reaction to that reply.
    in_thread = of(other).ok(
        "PUT",
        f"{path}/send/m.room.message/{secrets.token_hex(8)}",
        body={"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": event_id}},
    )["event_id"]
    reaction = of(other).ok(
        "PUT",
        f"{path}/send/m.reaction/{secrets.token_hex(8)}",
        body={"m.relates_to": {"rel_type": "m.annotation", "event_id": in_thread, "key": "x"}},
    )["event_id"]
    plain = send_text(of(other), room_id, "not in a thread")
    receipt = lambda event, thread: of(owner)(  # noqa: E731
        "POST", f"{path}/receipt/m.read/{q(event)}", body={"thread_id": thread}
    )
    mine = f"/v3/user/{q(owner.user_id)}/rooms/{q(room_id)}"
    theirs = f"/v3/user/{q(other.user_id)}/rooms/{q(room_id)}"
    cases = [
        ("bad receipt type", of(owner)("POST", f"{path}/receipt/m.bogus/{q(event_id)}", body={})),
        ("empty thread_id", of(owner)("POST", f"{path}/receipt/m.read/{q(event_id)}", body={"thread_id": ""})),
        (
            "thread_id on m.fully_read",
            of(owner)("POST", f"{path}/receipt/m.fully_read/{q(event_id)}", body={"thread_id": "main"}),
        ),
        ("unknown event", of(owner)("POST", f"{path}/receipt/m.read/{q('$nope:' + stack.SERVER_NAME)}", body={})),
        ("marker on unknown event", of(owner)("POST", f"{path}/read_markers", body={"m.fully_read": "$nope:" + stack.SERVER_NAME})),
        ("someone else's account data", of(owner)("PUT", f"{theirs}/account_data/com.example.x", body={})),
        ("read someone else's account data", of(owner)("GET", f"{theirs}/account_data/com.example.x")),
        ("missing account data", of(owner)("GET", f"{mine}/account_data/com.example.missing")),
        ("m.fully_read as account data", of(owner)("PUT", f"{mine}/account_data/m.fully_read", body={})),
        ("someone else's tags", of(owner)("GET", f"{theirs}/tags")),
        ("tag too long", of(owner)("PUT", f"{mine}/tags/{'t' * 256}", body={})),
        ("tag by a non-member", of(outsider)("PUT", f"/v3/user/{q(outsider.user_id)}/rooms/{q(room_id)}/tags/x", body={})),
        ("typing for someone else", of(owner)("PUT", f"{path}/typing/{q(other.user_id)}", body={"typing": True})),
        ("typing by a non-member", of(outsider)("PUT", f"{path}/typing/{q(outsider.user_id)}", body={"typing": True})),
        # Synapse checks that a threaded receipt's event belongs to the thread it names.
        ("main receipt on the thread root", receipt(event_id, "main")),
        ("main receipt in a thread", receipt(in_thread, "main")),
        ("main receipt on a reaction in a thread", receipt(reaction, "main")),
        ("thread receipt on its root", receipt(event_id, event_id)),
        ("thread receipt in the thread", receipt(in_thread, event_id)),
        ("thread receipt on a reaction in it", receipt(reaction, event_id)),
        ("thread receipt outside the thread", receipt(plain, event_id)),
        ("receipt naming a thread that is not one", receipt(plain, plain)),
        ("thread receipt on an unknown event", receipt("$nope:" + stack.SERVER_NAME, event_id)),
        ("main receipt on an unknown event", receipt("$nope:" + stack.SERVER_NAME, "main")),
    ]
    return [(what, *failure(resp)) for what, resp in cases]


@pytest.fixture
def users() -> tuple[stack.User, stack.User, stack.User]:
    return stack.register_user(), stack.register_user(), stack.register_user()


def test_room_data_is_seen_through_sync_as_in_a_synapse_room(users):
    owner, other, _ = users
    synapse_room, local_room = two_rooms(owner, other)
    # Synapse finds expired typing with a 5 s wheel timer checked every 5 s: a 1.5 s notice
    # ends within 1.5 + 5 + 5 s there (one CI run took 10.4 s). Ours wakes the sync at expiry.
    expected = asyncio.run(scenario(owner, other, synapse_room, expiry_within=15))
    got = asyncio.run(scenario(owner, other, local_room, expiry_within=4))
    for (step, want), (_, have) in zip(expected, got):
        assert have == want, f"{step}: Synapse room {want}, local room {have}"
    assert len(got) == len(expected)
    # The scenario really observed things (not two empty traces).
    assert ("typing", ("other",)) in got[6][1], got
    assert got[-2:] == [
        ("unread after a message", [("unread", 1, 0)]),
        ("unread after a mention", [("unread", 2, 1)]),
    ], got[-2:]


def test_bad_room_data_requests_get_synapse_errors(users):
    owner, other, outsider = users
    synapse_room, local_room = two_rooms(owner, other)
    want = errors(owner, other, outsider, synapse_room)
    have = errors(owner, other, outsider, local_room)
    assert have == want
    # Synapse stores nothing and answers 200 for a receipt of an unknown event (in no thread);
    # a receipt naming a thread its event belongs to is fine; the rest fail.
    fine = {
        "unknown event",
        "main receipt on the thread root",
        "thread receipt on its root",
        "thread receipt in the thread",
        "thread receipt on a reaction in it",
        "main receipt on an unknown event",
    }
    assert all((status == 200) == (what in fine) for what, status, _ in have), have


def test_beeper_read_extras_are_returned_verbatim(users):
    owner, other, _ = users
    local_room = create_room(of(owner), False, invite=[other.user_id])
    of(other).ok("POST", f"/v3/join/{q(local_room)}")
    event_id = send_text(of(other), local_room, "read me")
    token = of(owner).ok("GET", "/v3/sync", {"timeout": "0"})["next_batch"]
    extra = {"ts": 1234, "fi.mau.double_puppet_source": "compat-test"}
    of(owner).ok(
        "POST",
        f"/v3/rooms/{q(local_room)}/read_markers",
        body={"m.read": event_id, "m.fully_read": event_id, "com.beeper.read.extra": extra,
              "com.beeper.fully_read.extra": {"fi.mau.double_puppet_source": "compat-test"}},
    )
    body = of(owner).ok("GET", "/v3/sync", {"since": token, "timeout": "5000"})
    room = body["rooms"]["join"][local_room]
    receipts = [e for e in room["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert receipts[0]["content"][event_id]["m.read"][owner.user_id] == extra
    fully_read = [e for e in room["account_data"]["events"] if e["type"] == "m.fully_read"]
    assert fully_read[0]["content"] == {"event_id": event_id, "fi.mau.double_puppet_source": "compat-test"}
