"""The merged /sync, seen by matrix-nio and raw HTTP: one client in Synapse
rooms and local rooms at once, one token, every event exactly once and in
order, filters honoured, and Synapse's outage survived without losing events.

Rooms are made by a user through hungryserv; `m.federate: false` makes a local
room (!hs_...), `true` a Synapse room, as in test_rooms_access.
"""

import asyncio
import json
import threading
import time

import httpx
import pytest
from nio import SyncResponse

import stack
from client import As, create_room, new_nio, of, q, send_text, two_rooms


def raw_sync(user: As, **params) -> dict:
    return user.ok("GET", "/v3/sync", {k: str(v) for k, v in params.items()})


def bodies(room: dict) -> list[str]:
    return [e["content"].get("body") for e in room["timeline"]["events"] if e["type"] == "m.room.message"]


@pytest.fixture
def owner() -> stack.User:
    return stack.register_user()


@pytest.fixture
def other() -> stack.User:
    return stack.register_user()


def test_concurrent_sends_reach_nio_once_in_order(owner, other):
    synapse_room, local_room = two_rooms(owner, other)
    per_room = 30
    sent: dict[str, list[str]] = {synapse_room: [], local_room: []}

    def sender(room_id: str) -> None:
        for i in range(per_room):
            sent[room_id].append(send_text(of(other), room_id, f"{room_id[:4]} {i}"))
            time.sleep(0.02)

    async def run() -> tuple[dict[str, list[str]], int, int]:
        client = new_nio(owner)
        seen: dict[str, list[str]] = {synapse_room: [], local_room: []}
        syncs_with_news = 0
        limited = 0
        # Timeline limit above what one sync can gather, so `limited` would mean a bug.
        sync_filter = {"room": {"timeline": {"limit": 100}}}
        try:
            first = await client.sync(timeout=0, sync_filter=sync_filter)
            assert isinstance(first, SyncResponse), first
            threads = [threading.Thread(target=sender, args=(r,)) for r in seen]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                resp = await client.sync(timeout=2000, sync_filter=sync_filter, since=client.next_batch)
                assert isinstance(resp, SyncResponse), resp
                news = False
                for room_id, room in resp.rooms.join.items():
                    if room_id not in seen:
                        continue
                    limited += bool(room.timeline.limited)
                    for event in room.timeline.events:
                        if getattr(event, "body", None) is not None:
                            seen[room_id].append(event.event_id)
                            news = True
                syncs_with_news += news
                if all(len(seen[r]) >= per_room for r in seen) and not any(t.is_alive() for t in threads):
                    break
            for t in threads:
                t.join(timeout=60)
        finally:
            await client.close()
        return seen, syncs_with_news, limited

    seen, syncs_with_news, limited = asyncio.run(run())
    for room_id in (synapse_room, local_room):
        assert seen[room_id] == sent[room_id], f"{room_id}: seen {len(seen[room_id])}, sent {len(sent[room_id])}"
    assert limited == 0
    # The events came over many incremental syncs, not one catch-up.
    assert syncs_with_news >= 5, syncs_with_news


def test_long_poll_is_woken_by_a_local_send(owner, other):
    _, local_room = two_rooms(owner, other)
    since = raw_sync(of(owner))["next_batch"]
    event_id = None

    def send_later():
        nonlocal event_id
        time.sleep(1)
        event_id = send_text(of(other), local_room, "wake up")

    sender = threading.Thread(target=send_later)
    sender.start()
    # A minute-long poll, asked with a 30 s client timeout: only a wake-up by the
    # local send can answer in time.
    resp = httpx.get(
        f"{stack.HS_URL}/_matrix/client/v3/sync",
        params={"since": since, "timeout": 60000},
        headers={"Authorization": f"Bearer {owner.access_token}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    # The sync may answer before the sender has read its own 200.
    sender.join(timeout=30)
    room = resp.json()["rooms"]["join"][local_room]
    assert [e["event_id"] for e in room["timeline"]["events"]] == [event_id]
    assert room["timeline"]["limited"] is False


def test_bare_synapse_token_is_upgraded(owner, other):
    synapse_room, local_room = two_rooms(owner, other)
    send_text(of(other), local_room, "before the token")
    # A client that synced against Synapse itself before hungryserv was deployed.
    direct = httpx.get(
        f"{stack.SYNAPSE_URL}/_matrix/client/v3/sync",
        headers={"Authorization": f"Bearer {owner.access_token}"},
        timeout=30,
    ).raise_for_status().json()
    bare = direct["next_batch"]
    assert bare[0] in "smt0123456789", bare
    send_text(of(other), synapse_room, "after the token")

    resp = raw_sync(of(owner), since=bare)
    join = resp["rooms"]["join"]
    # The local room arrives as new: its state and its timeline.
    local = join[local_room]
    assert "before the token" in bodies(local)
    state_types = {e["type"] for e in local["state"]["events"]} | {e["type"] for e in local["timeline"]["events"]}
    assert {"m.room.create", "m.room.power_levels", "m.room.join_rules"} <= state_types
    # The Synapse room continues from the bare token: only what came after it.
    assert bodies(join[synapse_room]) == ["after the token"]
    # And the next token is ours, which Synapse itself would not take.
    assert not resp["next_batch"].startswith(("s", "m", "t"))
    again = raw_sync(of(owner), since=resp["next_batch"])
    assert local_room not in again.get("rooms", {}).get("join", {})


def test_bad_since_tokens_are_refused_like_synapse(owner):
    for token in ["garbage", "h1_!!!", "h9_abc", ""]:
        ours = of(owner)("GET", "/v3/sync", {"since": token})
        theirs = httpx.get(
            f"{stack.SYNAPSE_URL}/_matrix/client/v3/sync",
            params={"since": token},
            headers={"Authorization": f"Bearer {owner.access_token}"},
            timeout=30,
        )
        assert (ours.status_code, ours.json()["errcode"]) == (theirs.status_code, theirs.json()["errcode"]), token


def test_filters_apply_to_both_kinds_of_room(owner, other):
    synapse_room, local_room = two_rooms(owner, other)
    third = stack.register_user()
    for room_id in (synapse_room, local_room):
        of(owner).ok("POST", f"/v3/rooms/{q(room_id)}/invite", body={"user_id": third.user_id})
        of(third).ok("POST", f"/v3/join/{q(room_id)}")
        for i in range(4):
            send_text(of(other), room_id, f"m{i}")
        of(owner).ok("PUT", f"/v3/rooms/{q(room_id)}/state/m.room.topic/", body={"topic": "t"})

    # An uploaded filter (through hungryserv, to Synapse), used by ID.
    filter_id = of(owner).ok(
        "POST",
        f"/v3/user/{q(owner.user_id)}/filter",
        body={"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}, "state": {"lazy_load_members": True}}},
    )["filter_id"]
    resp = raw_sync(of(owner), filter=filter_id)
    shapes = {}
    for room_id in (synapse_room, local_room):
        room = resp["rooms"]["join"][room_id]
        members = sorted(e["state_key"] for e in room["state"]["events"] if e["type"] == "m.room.member")
        shapes[room_id] = {
            "timeline": bodies(room),
            "types": sorted({e["type"] for e in room["timeline"]["events"]}),
            "limited": room["timeline"]["limited"],
            # Lazy loading: the sender of the timeline, and the user themself.
            "members": members,
            "summary": {k: v for k, v in room.get("summary", {}).items() if k != "m.heroes"},
            "heroes": sorted(room.get("summary", {}).get("m.heroes", [])),
        }
    assert shapes[local_room] == shapes[synapse_room]
    assert shapes[local_room]["timeline"] == ["m2", "m3"]
    assert shapes[local_room]["limited"] is True
    assert shapes[local_room]["members"] == sorted([owner.user_id, other.user_id, third.user_id])
    assert shapes[local_room]["heroes"] == sorted([other.user_id, third.user_id])
    assert shapes[local_room]["summary"] == {"m.joined_member_count": 3, "m.invited_member_count": 0}

    # An inline filter leaving one room out, each way.
    for left_out, kept in ((local_room, synapse_room), (synapse_room, local_room)):
        inline = json.dumps({"room": {"not_rooms": [left_out]}})
        join = raw_sync(of(owner), filter=inline)["rooms"]["join"]
        assert left_out not in join and kept in join

    # Bad filters get Synapse's answers.
    assert of(owner)("GET", "/v3/sync", {"filter": "{nope"}).json()["errcode"] == "M_NOT_JSON"
    assert of(owner)("GET", "/v3/sync", {"filter": "99999"}).json()["errcode"] == "M_INVALID_PARAM"


def room_entry(resp: dict, room_id: str) -> tuple[str, dict] | None:
    for section in ("join", "invite", "leave"):
        if room_id in resp.get("rooms", {}).get(section, {}):
            return section, resp["rooms"][section][room_id]
    return None


def test_membership_sections_match_synapse(owner, other):
    """Invite, join, kick, as the invited user's sync shows them: the same
    sections and the same events for a Synapse room and a local room."""
    observed = {}
    for federate in (True, False):
        room_id = create_room(of(owner), federate, name="sections")
        since = raw_sync(of(other))["next_batch"]
        steps = []

        def step(action):
            nonlocal since
            action()
            resp = raw_sync(of(other), since=since, timeout=0)
            since = resp["next_batch"]
            entry = room_entry(resp, room_id)
            if entry is None:
                steps.append(None)
                return
            section, room = entry
            if section == "invite":
                events = [(e["type"], e.get("state_key"), e["content"].get("membership")) for e in room["invite_state"]["events"]]
                steps.append((section, sorted(events, key=str)))
            else:
                timeline = [(e["type"], e["content"].get("membership") or e["content"].get("body")) for e in room["timeline"]["events"]]
                steps.append((section, timeline))

        step(lambda: of(owner).ok("POST", f"/v3/rooms/{q(room_id)}/invite", body={"user_id": other.user_id}))
        step(lambda: of(other).ok("POST", f"/v3/join/{q(room_id)}"))
        step(lambda: send_text(of(owner), room_id, "hello"))
        step(lambda: None)
        step(lambda: of(owner).ok("POST", f"/v3/rooms/{q(room_id)}/kick", body={"user_id": other.user_id}))
        step(lambda: send_text(of(owner), room_id, "after the kick"))
        observed[federate] = steps

    local, synapse = observed[False], observed[True]
    # The join brings the room with its state; compare the sections and timelines
    # except the join step's timeline (state event order differs by server).
    assert [s and s[0] for s in local] == [s and s[0] for s in synapse] == [
        "invite", "join", "join", None, "leave", None
    ]
    assert local[0] == synapse[0]
    assert local[2] == synapse[2] == ("join", [("m.room.message", "hello")])
    assert local[4] == synapse[4] == ("leave", [("m.room.member", "leave")])


def test_sync_survives_synapse_outage(owner, other):
    synapse_room, local_room = two_rooms(owner, other)
    since = raw_sync(of(owner))["next_batch"]
    sent_synapse = [send_text(of(other), synapse_room, "before outage")]
    sent_local = [send_text(of(other), local_room, "before outage")]
    seen: dict[str, list[str]] = {synapse_room: [], local_room: []}

    def collect(resp: dict, newly_joined: str | None = None) -> None:
        for room_id in seen:
            room = resp.get("rooms", {}).get("join", {}).get(room_id)
            if room:
                # A room new to an incremental sync is limited, as Synapse marks it.
                assert room["timeline"]["limited"] is (room_id == newly_joined)
                seen[room_id] += [e["event_id"] for e in room["timeline"]["events"] if e["type"] == "m.room.message"]

    # The bridge keeps writing into the local room while Synapse is down: its
    # as_token is known without asking Synapse.
    bot = As(stack.example_appservice().as_token)
    bridge_room = create_room(bot, False, invite=[owner.user_id])
    of(owner).ok("POST", f"/v3/join/{q(bridge_room)}")
    seen[bridge_room] = []
    sent_bridge = []
    resp = raw_sync(of(owner), since=since)  # after the join
    collect(resp, newly_joined=bridge_room)
    since = resp["next_batch"]
    stack.stack_lib("synapse_stop")
    try:
        # An initial sync cannot be answered without Synapse.
        initial = of(owner)("GET", "/v3/sync")
        assert initial.status_code == 502, initial.text
        for i in range(3):
            sent_bridge.append(send_text(bot, bridge_room, f"during outage {i}"))
            resp = raw_sync(of(owner), since=since, timeout=5000)
            collect(resp)
            since = resp["next_batch"]
        # With nothing new, a long poll still ends at its timeout (no error, no hot loop).
        resp = raw_sync(of(owner), since=since, timeout=1000)
        collect(resp)
        since = resp["next_batch"]
    finally:
        stack.stack_lib("synapse_start")
    assert seen[bridge_room] == sent_bridge
    sent_synapse.append(send_text(of(other), synapse_room, "after outage"))
    sent_local.append(send_text(of(other), local_room, "after outage"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(seen[synapse_room]) < 2 or len(seen[local_room]) < 2):
        resp = raw_sync(of(owner), since=since, timeout=2000)
        collect(resp)
        since = resp["next_batch"]
    assert seen[synapse_room] == sent_synapse
    assert seen[local_room] == sent_local


def test_sync_tokens_page_back_in_both_kinds_of_room(owner, other):
    """Clients may use a sync's next_batch or prev_batch as /messages `from`
    (matrix-nio does): Synapse gets its half, local rooms resolve theirs."""
    synapse_room, local_room = two_rooms(owner, other)
    for room_id in (synapse_room, local_room):
        for i in range(3):
            send_text(of(other), room_id, f"p{i}")
    resp = raw_sync(of(owner), filter=json.dumps({"room": {"timeline": {"limit": 1}}}))
    next_batch = resp["next_batch"]
    for room_id in (synapse_room, local_room):
        page = of(owner).ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"from": next_batch, "dir": "b", "limit": 2})
        assert [e["content"].get("body") for e in page["chunk"]] == ["p2", "p1"], room_id
        prev_batch = resp["rooms"]["join"][room_id]["timeline"]["prev_batch"]
        page = of(owner).ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"from": prev_batch, "dir": "b", "limit": 2})
        assert [e["content"].get("body") for e in page["chunk"]] == ["p1", "p0"], room_id
        members = of(owner).ok("GET", f"/v3/rooms/{q(room_id)}/members", {"at": next_batch})
        assert {e["state_key"] for e in members["chunk"]} == {owner.user_id, other.user_id}
