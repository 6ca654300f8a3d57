"""A user in a few hundred local rooms (issue 25): the initial /sync must hold
every room with its last event, and an incremental /sync must hold exactly the
rooms where something happened, each kind of news found (a message, a receipt,
room account data, typing, a leave) although it reads only the rooms that
changed. Small enough for CI; `hsbench rooms` measures the same at 10,000."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import stack
from client import create_room, of, q, send_text

ROOMS = 300


@pytest.fixture(scope="module")
def crowd() -> tuple[stack.User, dict[str, str]]:
    """A user in ROOMS local rooms, each with one message: room → that message's ID."""
    owner = stack.register_user()

    def make(n: int) -> tuple[str, str]:
        room = create_room(of(owner), False, name=f"many {n}")
        return room, send_text(of(owner), room, f"last of {n}")

    with ThreadPoolExecutor(8) as pool:
        rooms = dict(pool.map(make, range(ROOMS)))
    assert len(rooms) == ROOMS
    return owner, rooms


def sync(user: stack.User, **params) -> dict:
    params = {k: str(v) for k, v in params.items()}
    params.setdefault("filter", json.dumps({"room": {"timeline": {"limit": 1}}}))
    return of(user).ok("GET", "/v3/sync", params)


def local_join(body: dict) -> dict:
    return {r: v for r, v in body["rooms"].get("join", {}).items() if r.startswith("!hs_")}


def test_initial_sync_holds_every_room_with_its_last_event(crowd):
    owner, rooms = crowd
    joined = local_join(sync(owner, timeout=0))
    assert sorted(joined) == sorted(rooms)
    wrong = [
        room
        for room, last in rooms.items()
        if [e["event_id"] for e in joined[room]["timeline"]["events"]] != [last]
    ]
    assert wrong == []
    # /joined_rooms agrees.
    listed = of(owner).ok("GET", "/v3/joined_rooms")["joined_rooms"]
    assert set(rooms) <= set(listed)


def test_incremental_sync_holds_exactly_the_rooms_with_news(crowd):
    owner, rooms = crowd
    since = sync(owner, timeout=0)["next_batch"]
    ids = sorted(rooms)
    message, receipt, tag, typing, leave = ids[7], ids[42], ids[99], ids[150], ids[-1]
    sent = send_text(of(owner), message, "news")
    of(owner).ok("POST", f"/v3/rooms/{q(receipt)}/receipt/m.read/{q(rooms[receipt])}", body={})
    of(owner).ok("PUT", f"/v3/user/{q(owner.user_id)}/rooms/{q(tag)}/tags/u.work", body={"order": 0.5})
    of(owner).ok("PUT", f"/v3/rooms/{q(typing)}/typing/{q(owner.user_id)}", body={"typing": True, "timeout": 30000})
    of(owner).ok("POST", f"/v3/rooms/{q(leave)}/leave", body={})

    body = sync(owner, since=since, timeout=0)
    joined = local_join(body)
    assert sorted(joined) == sorted([message, receipt, tag, typing])
    assert [e["event_id"] for e in joined[message]["timeline"]["events"]] == [sent]
    receipts = [e for e in joined[receipt]["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert owner.user_id in receipts[0]["content"][rooms[receipt]]["m.read"]
    assert [e["type"] for e in joined[tag]["account_data"]["events"]] == ["m.tag"]
    typing_events = [e for e in joined[typing]["ephemeral"]["events"] if e["type"] == "m.typing"]
    assert typing_events[0]["content"]["user_ids"] == [owner.user_id]
    left = {r for r in body["rooms"].get("leave", {}) if r.startswith("!hs_")}
    assert left == {leave}

    # A waiting sync is woken by a message in any one of the rooms, and holds only it.
    since = body["next_batch"]
    late = ids[200]
    answer: dict = {}
    waiter = threading.Thread(target=lambda: answer.update(sync(owner, since=since, timeout=20000)))
    waiter.start()
    time.sleep(0.5)
    sent = send_text(of(owner), late, "wake")
    waiter.join(timeout=30)
    joined = local_join(answer)
    assert list(joined) == [late]
    assert [e["event_id"] for e in joined[late]["timeline"]["events"]] == [sent]
