"""Presence between users who share a room, differential (a Synapse room against a local
room). Synapse sends a user the presence of those it knows share a room with them; for a
local room it learns that from hungryserv's Synapse module (deploy/synapse-module, a
presence router that deploy/local/lib.sh installs), so Alice must see Bob's presence
change in her /sync through hungryserv in both kinds of room — and a stranger must not.
"""

import secrets
import time

import pytest

import stack
from client import create_room, of, q

KINDS = {"synapse": True, "local": False}


def presence_of(body: dict, user_id: str) -> list[dict]:
    return [e["content"] for e in body.get("presence", {}).get("events", []) if e.get("sender") == user_id]


@pytest.mark.parametrize("kind", KINDS)
def test_a_room_mate_sees_a_presence_change(kind):
    alice, bob, stranger = (stack.register_user() for _ in range(3))
    room_id = create_room(of(alice), KINDS[kind], invite=[bob.user_id])
    assert room_id.startswith("!hs_") == (kind == "local"), (kind, room_id)
    of(bob).ok("POST", f"/v3/join/{q(room_id)}")
    # The module caches co-members for a few seconds (cache_seconds in lib.sh): the join
    # must be older than that, as it is for any real pair of room-mates.
    time.sleep(2.5)
    since = {u.user_id: of(u).ok("GET", "/v3/sync", params={"timeout": "0"})["next_batch"] for u in (alice, stranger)}

    status = f"presence {kind} {secrets.token_hex(3)}"
    t0 = time.monotonic()
    of(bob).ok("PUT", f"/v3/presence/{q(bob.user_id)}/status", body={"presence": "online", "status_msg": status})
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = of(alice).ok("GET", "/v3/sync", params={"since": since[alice.user_id], "timeout": "5000"})
        since[alice.user_id] = body["next_batch"]
        seen += presence_of(body, bob.user_id)
        if any(p.get("status_msg") == status for p in seen):
            break
    latency = time.monotonic() - t0
    assert any(p.get("status_msg") == status and p.get("presence") == "online" for p in seen), (
        f"{kind} room: Alice never saw Bob's presence; saw {seen}"
    )
    print(f"{kind} room: Bob's presence reached Alice's sync after {latency * 1000:.0f} ms")

    body = of(stranger).ok("GET", "/v3/sync", params={"since": since[stranger.user_id], "timeout": "0"})
    assert presence_of(body, bob.user_id) == [], f"{kind}: a stranger saw Bob's presence"
