"""matrix-js-sdk, the npm client library, as the user's client of a merged
/sync: one user in a Synapse room and a local room at once, while messages
go into both rooms concurrently. The client must see every message exactly
once, live, in the order it was sent, across many incremental syncs.

The client is compat-tests/js/sync_collect.mjs (a js-sdk MatrixClient that
reports what it saw); the senders are the example appservice's bot and a
second user, both through hungryserv like everything else here.
"""

import asyncio
import json
import os
import random
import secrets
from collections import Counter
from pathlib import Path

import httpx
import pytest

import stack
from client import q

COLLECTOR = stack.REPO / "compat-tests" / "js" / "sync_collect.mjs"
# Set by compat-tests/run; a plain `npm ci` in compat-tests/js works too.
NODE_MODULES = Path(os.environ.get("COMPAT_JS_NODE_MODULES") or COLLECTOR.parent / "node_modules")

MESSAGES_PER_ROOM = 40
# A pause of up to this long before each send, so that the messages spread
# over many syncs instead of arriving in one or two.
MAX_PAUSE = 0.05
# The collector's limits (it stops as soon as everything has arrived).
DEADLINE_MS = 180_000
GRACE_MS = 30_000
SETTLE_MS = 2_000
# Seconds until the client has done its initial sync.
PREPARE_TIMEOUT = 90

ROOMS = ["synapse", "local"]



class Api:
    """Client-server calls as one sender, through hungryserv."""

    def __init__(self, http: httpx.AsyncClient, token: str):
        self.http, self.token = http, token

    async def post(self, path: str, body: dict) -> dict:
        resp = await self.http.post(
            "/_matrix/client/v3" + path, json=body, headers={"Authorization": f"Bearer {self.token}"}
        )
        assert resp.status_code == 200, f"POST {path}: {resp.status_code} {resp.text}"
        return resp.json()

    async def send(self, room_id: str, content: dict) -> str:
        path = f"/rooms/{q(room_id)}/send/m.room.message/{secrets.token_hex(8)}"
        resp = await self.http.put(
            "/_matrix/client/v3" + path, json=content, headers={"Authorization": f"Bearer {self.token}"}
        )
        assert resp.status_code == 200, f"PUT {path}: {resp.status_code} {resp.text}"
        return resp.json()["event_id"]


async def create_rooms(bot: Api, invitees: list[str]) -> dict[str, str]:
    """One room of each kind, made by the bridge bot with the users invited;
    routing.toml makes the unfederated one a local room."""
    rooms = {}
    for kind in ROOMS:
        rooms[kind] = (
            await bot.post(
                "/createRoom",
                {
                    "preset": "private_chat",
                    "name": f"js-sdk sync, {kind} room",
                    "invite": invitees,
                    "creation_content": {"m.federate": kind == "synapse"},
                    # Local rooms are always version 10; the same for both.
                    "room_version": "10",
                },
            )
        )["room_id"]
    assert not rooms["synapse"].startswith("!hs_"), rooms
    assert rooms["local"].startswith("!hs_"), rooms
    return rooms


async def send_numbered(room_id: str, kind: str, senders: list[tuple[str, Api]]) -> list[dict]:
    """MESSAGES_PER_ROOM messages, one after the other (so the send order is
    the room's order), the senders taking turns."""
    sent = []
    for seq in range(MESSAGES_PER_ROOM):
        await asyncio.sleep(random.uniform(0, MAX_PAUSE))
        sender, api = senders[seq % len(senders)]
        body = f"{kind} message {seq}"
        event_id = await api.send(room_id, {"msgtype": "m.text", "body": body, "seq": seq})
        sent.append({"event_id": event_id, "sender": sender, "seq": seq, "body": body})
    return sent


class Collector:
    """The node process: started with its input, told when sending is over
    (stdin closed), then read for its one JSON result."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.stderr: list[str] = []
        self.prepared = asyncio.Event()
        self._stderr_task = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, config: dict) -> "Collector":
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(COLLECTOR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COMPAT_JS_NODE_MODULES": str(NODE_MODULES)},
        )
        proc.stdin.write(json.dumps(config).encode() + b"\n")
        await proc.stdin.drain()
        return cls(proc)

    async def _read_stderr(self) -> None:
        # Always drained, so that the SDK's warnings cannot fill the pipe.
        async for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip()
            self.stderr.append(text)
            if text == "prepared":
                self.prepared.set()

    def log_tail(self) -> str:
        return "\n".join(self.stderr[-30:])

    async def wait_prepared(self) -> None:
        # Whichever comes first: prepared, the process exiting, the timeout.
        waiters = [asyncio.create_task(self.prepared.wait()), asyncio.create_task(self.proc.wait())]
        await asyncio.wait(waiters, timeout=PREPARE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if not self.prepared.is_set():
            raise AssertionError(f"js-sdk never finished its initial sync; its log:\n{self.log_tail()}")

    async def result(self) -> dict:
        self.proc.stdin.close()
        limit = (DEADLINE_MS + SETTLE_MS) / 1000 + 30
        out = await asyncio.wait_for(self.proc.stdout.read(), timeout=limit)
        await asyncio.wait_for(self.proc.wait(), timeout=30)
        await self._stderr_task
        assert self.proc.returncode == 0 and out, (
            f"the collector exited with {self.proc.returncode}; its log:\n{self.log_tail()}"
        )
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def scenario() -> dict:
    assert NODE_MODULES.is_dir(), f"no {NODE_MODULES}: run compat-tests/run, or npm ci in {COLLECTOR.parent}"
    appservice = stack.example_appservice()
    user = stack.register_user()
    other = stack.register_user()
    async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
        bot = Api(http, appservice.as_token)
        rooms = await create_rooms(bot, [user.user_id, other.user_id])
        for who in (user, other):
            for room_id in rooms.values():
                await Api(http, who.access_token).post(f"/join/{q(room_id)}", {})

        collector = await Collector.start(
            {
                "homeserver": stack.HS_URL,
                "user_id": user.user_id,
                "access_token": user.access_token,
                "expect": {room_id: MESSAGES_PER_ROOM for room_id in rooms.values()},
                "deadline_ms": DEADLINE_MS,
                "grace_ms": GRACE_MS,
                "settle_ms": SETTLE_MS,
            }
        )
        try:
            await collector.wait_prepared()
            senders = [(appservice.bot, bot), (other.user_id, Api(http, other.access_token))]
            # Both rooms at once: Synapse's half and ours of each sync change together.
            sent = await asyncio.gather(*(send_numbered(rooms[kind], kind, senders) for kind in ROOMS))
            result = await collector.result()
        finally:
            collector.kill()
    return {"rooms": rooms, "sent": dict(zip(ROOMS, sent)), "result": result}


@pytest.fixture(scope="module")
def run() -> dict:
    return asyncio.run(scenario())


def describe(run: dict) -> str:
    result = run["result"]
    return (
        f"collector stopped: {result['stopped']}, {len(result['syncs'])} syncs, "
        f"last sync state {result['sync_state']} {result['sync_error'] or ''}".rstrip()
    )


def timeline(sync: dict, room_id: str) -> list[str]:
    return sync["rooms"].get(room_id, {}).get("timeline", [])


def repeated(items) -> list:
    return [item for item, n in Counter(items).items() if n > 1]


@pytest.mark.parametrize("kind", ROOMS)
def test_every_message_seen_once_in_order(run, kind):
    room_id = run["rooms"][kind]
    sent = run["sent"][kind]
    sent_ids = [m["event_id"] for m in sent]
    result = run["result"]
    syncs = result["syncs"]
    incremental = [s for s in syncs if s["since"] is not None]
    assert incremental, f"the client made no incremental sync ({describe(run)})"
    assert all(isinstance(s["next_batch"], str) and s["next_batch"] for s in syncs), "no next_batch"

    # What the server sent: the /sync responses as they came off the wire.
    # js-sdk drops an event it already has, so a duplicate only shows here.
    wire = [event_id for s in syncs for event_id in timeline(s, room_id)]
    missing = [m["seq"] for m in sent if m["event_id"] not in set(wire)]
    assert not missing, (
        f"{len(missing)} of {len(sent)} messages never came in /sync for the {kind} room "
        f"(seq {missing[:10]}{'...' if len(missing) > 10 else ''}); {describe(run)}"
    )
    assert repeated(wire) == [], f"/sync sent events of the {kind} room more than once"
    in_order = [event_id for event_id in wire if event_id in set(sent_ids)]
    assert in_order == sent_ids, f"/sync sent the {kind} room's messages out of order"
    limited = [s["next_batch"] for s in incremental if s["rooms"].get(room_id, {}).get("limited")]
    assert not limited, f"incremental syncs of the {kind} room were limited, yet the client kept up"
    # The premise of the test: the messages came spread over many responses.
    carrying = [s for s in incremental if set(timeline(s, room_id)) & set(sent_ids)]
    assert len(carrying) >= 4, f"the {kind} room's messages came in just {len(carrying)} syncs"

    # What the client made of it: js-sdk's live timeline events for the room.
    seen = result["events"][room_id]
    assert repeated(e["event_id"] for e in seen) == [], f"js-sdk saw events of the {kind} room twice"
    fields = ("event_id", "sender", "seq", "body")
    messages = [{k: e[k] for k in fields} for e in seen if e["type"] == "m.room.message"]
    assert [m["event_id"] for m in messages] == sent_ids, f"js-sdk's {kind} room timeline is not the sent one"
    assert messages == sent, f"js-sdk shows the {kind} room's messages with other senders or contents"
