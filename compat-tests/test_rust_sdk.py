"""matrix-rust-sdk (`matrix-sdk` and `matrix-sdk-ui`, the engine of Element X) as the
user's client: it syncs with simplified sliding sync (MSC4186) through hungryserv, so
local rooms and Synapse rooms must come in one room list, and a local room's timeline,
history and unread counts must behave as a Synapse room's.

The client is the binary of compat-tests/rust-sdk (`hs-rust-sdk-compat`, built by
compat-tests/run): each run logs the user in, starts a SyncService as Element X does,
plays one scenario with a deadline on every wait and prints what the user saw as JSON.
The rooms are made here by the example bridge's bot, which also sends the messages the
user receives; routing.toml makes the unfederated ones local rooms.
"""

import json
import os
import subprocess
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

import stack

BINARY = Path(os.environ.get("RUST_SDK_COMPAT_BIN") or stack.REPO / "target" / "debug" / "hs-rust-sdk-compat")
# Seconds each wait inside the client may take; the whole run gets a margin on top
# (login, initial sync, shutdown).
WAIT_TIMEOUT = 30
RUN_TIMEOUT = 150
# Messages in the room whose history is paginated: several pages of 20.
HISTORY = 45
# The server's own counts in sliding sync: Synapse 1.163 always sends 0 for both, so they are
# printed, not compared.
SERVER_COUNTS = {"notification_count", "highlight_count"}


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


class Bot:
    """The example bridge's bot, through hungryserv."""

    def __init__(self, http: httpx.Client):
        self.appservice = stack.example_appservice()
        self.http = http
        self.auth = {"Authorization": f"Bearer {self.appservice.as_token}"}
        self.txn = 0

    def create_room(self, kind: str, name: str, invite: str) -> str:
        resp = self.http.post(
            "/_matrix/client/v3/createRoom",
            headers=self.auth,
            json={
                "preset": "private_chat",
                "name": name,
                "invite": [invite],
                "creation_content": {"m.federate": kind == "synapse"},
                # Local rooms are always version 10; the same for both.
                "room_version": "10",
            },
        )
        assert resp.status_code == 200, f"createRoom ({kind}): {resp.status_code} {resp.text}"
        room_id = resp.json()["room_id"]
        assert room_id.startswith("!hs_") == (kind == "local"), (kind, room_id)
        return room_id

    def send(self, room_id: str, body: str) -> str:
        self.txn += 1
        resp = self.http.put(
            f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/rustsdk-py-{time.time_ns()}-{self.txn}",
            headers=self.auth,
            json={"msgtype": "m.text", "body": body},
        )
        assert resp.status_code == 200, f"send in {room_id}: {resp.status_code} {resp.text}"
        return resp.json()["event_id"]

    def event(self, room_id: str, event_id: str) -> dict:
        resp = self.http.get(f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(event_id)}", headers=self.auth)
        assert resp.status_code == 200, f"GET event {event_id}: {resp.status_code} {resp.text}"
        return resp.json()

    @property
    def sender(self) -> dict:
        return {"user_id": self.appservice.bot, "access_token": self.appservice.as_token}


@pytest.fixture(scope="module")
def http():
    with httpx.Client(base_url=stack.HS_URL, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def bot(http) -> Bot:
    return Bot(http)


def join(http: httpx.Client, user: stack.User, room_id: str) -> None:
    resp = http.post(f"/_matrix/client/v3/join/{q(room_id)}", headers=user.auth, json={})
    assert resp.status_code == 200, f"join {room_id}: {resp.status_code} {resp.text}"


def rooms_for(http: httpx.Client, bot: Bot, user: stack.User, kinds: list[str], label: str) -> list[str]:
    """One new room per entry of `kinds`, made by the bot, with the user joined."""
    rooms = [bot.create_room(kind, f"rust-sdk {label} {kind} {i}", user.user_id) for i, kind in enumerate(kinds)]
    for room_id in rooms:
        join(http, user, room_id)
    return rooms


def run_client(scenario: str, user: stack.User, params: dict) -> dict:
    """One run of the matrix-rust-sdk client; its JSON result, or a failure with its log."""
    assert BINARY.is_file(), f"no {BINARY}: compat-tests/run builds it (cargo build -p hs-rust-sdk-compat)"
    args = [str(BINARY), "--scenario", scenario, "--params", json.dumps(params), "--timeout", str(WAIT_TIMEOUT)]
    env = {
        **os.environ,
        "HS_URL": stack.HS_URL,
        "RUST_SDK_USER": user.user_id,
        "RUST_SDK_PASSWORD": user.password,
        "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
    }
    t0 = time.monotonic()
    try:
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"matrix-rust-sdk {scenario}: no result after {RUN_TIMEOUT}s; log:\n{e.stderr}") from e
    log = proc.stderr.strip().splitlines()
    print(f"matrix-rust-sdk {scenario}: exit {proc.returncode} after {time.monotonic() - t0:.1f}s")
    print("\n".join(log[-40:]))
    if proc.returncode != 0:
        failure = next((line for line in reversed(log) if "FAILED:" in line), None)
        pytest.fail(f"matrix-rust-sdk {scenario} failed: {failure or log[-5:]}", pytrace=False)
    return json.loads(proc.stdout)


def room_order(entries: list[dict], ours: list[str]) -> list[str]:
    return [e["room_id"] for e in entries if e["room_id"] in ours]


# --- the room list ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def room_list(http, bot) -> dict:
    """Four rooms, Synapse's and local ones taking turns, each with a message in that
    order; then a message moves the older local room to the top."""
    user = stack.register_user()
    kinds = ["synapse", "local", "synapse", "local"]
    rooms = rooms_for(http, bot, user, kinds, "list")
    for room_id in rooms:
        # Apart by more than a millisecond: the client may sort by the events' timestamps.
        time.sleep(0.05)
        bot.send(room_id, "latest message")
    newest_first = rooms[::-1]
    bump = rooms[1]  # the older local room, third in the list
    result = run_client(
        "room-list", user, {"expected": newest_first, "bump_room": bump, "sender": bot.sender}
    )
    return {"rooms": rooms, "kinds": kinds, "newest_first": newest_first, "bump": bump, "result": result}


def test_room_list_merges_local_and_synapse_rooms_by_recency(room_list):
    ours = room_list["rooms"]
    initial = room_list["result"]["initial"]
    assert room_order(initial, ours) == room_list["newest_first"], json.dumps(initial, indent=1)
    assert len(initial) == len(ours), f"the list shows other rooms too: {initial}"
    assert room_list["result"]["count"] == len(ours), "the list's count is not over both servers' rooms"
    names = {e["room_id"]: e["name"] for e in initial}
    assert all(names[r] == f"rust-sdk list {k} {i}" for i, (r, k) in enumerate(zip(ours, room_list["kinds"]))), names


def test_room_list_message_moves_local_room_to_top(room_list):
    after = room_list["result"]["after"]
    bump = room_list["bump"]
    expected = [bump] + [r for r in room_list["newest_first"] if r != bump]
    assert room_order(after, room_list["rooms"]) == expected, json.dumps(after, indent=1)


def test_room_list_bump_stamps_sort_like_the_list(room_list):
    """The client falls back to `bump_stamp` (its recency stamp) where it has no latest
    event: the stamps of local and Synapse rooms must compare like their recency."""
    for step, expected in [
        ("initial", room_list["newest_first"]),
        ("after", [room_list["bump"]] + [r for r in room_list["newest_first"] if r != room_list["bump"]]),
    ]:
        entries = {e["room_id"]: e for e in room_list["result"][step]}
        stamps = [entries[r]["recency_stamp"] for r in expected]
        assert None not in stamps, f"{step}: rooms without bump_stamp: {stamps}"
        assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == len(stamps), (
            f"{step}: bump_stamps newest first {list(zip(expected, stamps))}"
        )


# --- a room's timeline ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["synapse", "local"])
def test_timeline_shows_live_message_and_sends(http, bot, kind):
    user = stack.register_user()
    [room_id] = rooms_for(http, bot, user, [kind], "timeline")
    result = run_client("timeline", user, {"room": room_id, "sender": bot.sender})

    live = result["live"]
    assert live["sender"] == bot.appservice.bot and live["body"] == "a live message while the timeline is open", live
    own = result["own"]
    assert own["sender"] == user.user_id and own["event_id"], own
    # The message the user sent is in the room, as the server stored it.
    event = bot.event(room_id, own["event_id"])
    assert event["sender"] == user.user_id and event["content"]["body"] == "sent from the matrix-rust-sdk Timeline"
    bodies = [i.get("body") for i in result["items"] if i.get("body")]
    assert bodies[-2:] == [live["body"], own["body"]], bodies


# --- back pagination --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paginated(http, bot) -> dict:
    user = stack.register_user()
    out = {}
    for kind in ["synapse", "local"]:
        [room_id] = rooms_for(http, bot, user, [kind], "history")
        sent = [bot.send(room_id, f"history {i}") for i in range(HISTORY)]
        out[kind] = {"room_id": room_id, "sent": sent, "result": run_client("pagination", user, {"room": room_id})}
    return out


def events(items: list[dict]) -> list[dict]:
    return [i for i in items if "event_id" in i]


@pytest.mark.parametrize("kind", ["synapse", "local"])
def test_back_pagination_reaches_creation(paginated, kind):
    run = paginated[kind]
    items = run["result"]["items"]
    evs = events(items)
    assert evs and evs[0]["type"] == "m.room.create", (
        f"the {kind} room's timeline does not start with m.room.create after "
        f"{run['result']['pages']} pages: {[e['type'] for e in evs[:5]]}"
    )
    assert {"virtual": "timeline_start"} in items, f"no timeline start in the {kind} room"
    messages = [e["event_id"] for e in evs if e["type"] == "m.room.message"]
    assert messages == run["sent"], f"the {kind} room's timeline has other messages than the {HISTORY} sent"


def test_back_pagination_same_events_as_synapse(paginated):
    def shape(kind):
        return [(e["type"], e["state_key"], e["body"]) for e in events(paginated[kind]["result"]["items"])]

    assert shape("local") == shape("synapse")


# --- unread counts and read receipts ----------------------------------------------------------


@pytest.fixture(scope="module")
def unread(http, bot) -> dict:
    user = stack.register_user()
    synapse_room, local_room = rooms_for(http, bot, user, ["synapse", "local"], "unread")
    return run_client("unread", user, {"rooms": {"synapse": synapse_room, "local": local_room}, "sender": bot.sender})


def test_unread_counts_and_receipts_as_synapse(unread):
    """Three messages (the first mentions the user), then read receipts on the second and
    the third: the local room's counts, as the client computes them (what Element X shows),
    and the user's own read receipt follow the Synapse room's at every step."""
    steps = {step: state for step, state in unread.items() if step != "sliding_sync_version"}
    assert sorted(steps) == ["joined", "receipt_m2", "receipt_m3", "three_messages"], list(steps)
    print("server counts (notification_count, highlight_count):", {
        step: {kind: (r["notification_count"], r["highlight_count"]) for kind, r in state.items()}
        for step, state in steps.items()
    })
    for step, state in steps.items():
        local, synapse = (
            {k: v for k, v in state[kind].items() if k not in SERVER_COUNTS} for kind in ("local", "synapse")
        )
        assert local == synapse, f"{step}: local {local} != synapse {synapse}"
    seen = {step: state["local"] for step, state in steps.items()}
    assert (seen["three_messages"]["num_unread_notifications"], seen["three_messages"]["num_unread_mentions"]) == (3, 1)
    assert seen["receipt_m2"]["own_read_receipt"] == "m2" and seen["receipt_m2"]["num_unread_notifications"] == 1
    assert seen["receipt_m3"]["own_read_receipt"] == "m3" and seen["receipt_m3"]["num_unread_notifications"] == 0
