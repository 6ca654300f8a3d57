"""Faults during ingest: hungryserv SIGKILLed, Postgres restarted, Synapse restarted.

Bridge senders (an appservice's ghosts, each with its own transaction IDs) keep sending
into a local room while the fault happens. Whatever was answered 200 must be in the room
exactly once afterwards, and sending a transaction ID again must return the event ID of
its first answer (or, for a send whose answer was lost, settle it: the event is then there
exactly once). Every answer that is not 200 must be Matrix JSON. Each test is bounded.
"""

import asyncio
import json
import time
from collections import defaultdict

import httpx

import stack
from bridge import Api, portal, register_ghost
from client import q

SENDERS = 16
# Timestamps given to batch-sent events: fixed, so runs compare.
TS0 = 1_650_000_000_000
# Timelines long enough that no sync in these tests is `limited` (a gap the client would
# have to fill with /messages): the tests count what the syncs carried.
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 5000}}})


class Ingest:
    """SENDERS ghosts sending into `room` one after another until stopped."""

    def __init__(self, http: httpx.AsyncClient, reg: stack.AppService, room: str, ghosts: list[str]):
        self.http, self.reg, self.room, self.ghosts = http, reg, room, ghosts
        self.answered: dict[tuple[str, str], str] = {}  # (ghost, txn) -> event_id
        self.unsettled: set[tuple[str, str]] = set()  # outcome unknown (no answer, or 5xx)
        self.errors: list[tuple[int, str]] = []  # non-200 answers (status, body)
        self.stopped = asyncio.Event()

    async def put(self, ghost: str, txn: str) -> httpx.Response:
        return await self.http.put(
            f"/_matrix/client/v3/rooms/{q(self.room)}/send/m.room.message/{txn}",
            params={"user_id": ghost},
            json={"msgtype": "m.text", "body": txn},
            headers={"Authorization": f"Bearer {self.reg.as_token}"},
        )

    async def sender(self, i: int) -> None:
        ghost, n = self.ghosts[i], 0
        while not self.stopped.is_set():
            n += 1
            txn = f"f{i}-{n}-{time.monotonic_ns()}"
            try:
                resp = await self.put(ghost, txn)
            except httpx.TransportError:
                self.unsettled.add((ghost, txn))
                await asyncio.sleep(0.05)
                continue
            if resp.status_code == 200:
                self.answered[(ghost, txn)] = resp.json()["event_id"]
            else:
                self.unsettled.add((ghost, txn))
                self.errors.append((resp.status_code, resp.text))
                await asyncio.sleep(0.05)

    async def run(self, fault, before_s: float = 2.0, after_s: float = 2.0) -> None:
        tasks = [asyncio.create_task(self.sender(i)) for i in range(len(self.ghosts))]
        try:
            await asyncio.sleep(before_s)
            await fault()
            await asyncio.sleep(after_s)
        finally:
            self.stopped.set()
            await asyncio.gather(*tasks)

    async def settle_and_check(self) -> None:
        # A transaction ID sent again returns its first event ID.
        for (ghost, txn), event_id in self.answered.items():
            resp = await self.put(ghost, txn)
            assert resp.status_code == 200, resp.text
            assert resp.json()["event_id"] == event_id, (txn, resp.text)
        # Sends whose outcome was unknown are settled by sending them again.
        for ghost, txn in self.unsettled:
            resp = await self.put(ghost, txn)
            assert resp.status_code == 200, resp.text
            self.answered[(ghost, txn)] = resp.json()["event_id"]
        # Every error answer was Matrix JSON.
        for status, body in self.errors:
            assert status >= 500 or status == 429, (status, body)
            parsed = json.loads(body)
            assert isinstance(parsed.get("errcode"), str) and isinstance(parsed.get("error"), str), body
        # Each transaction is in the room exactly once, under its event ID.
        bodies: dict[str, list[str]] = {}
        frm = None
        while True:
            params = {"dir": "b", "limit": "1000"}
            if frm:
                params["from"] = frm
            page = await self.http.get(
                f"/_matrix/client/v3/rooms/{q(self.room)}/messages",
                params=params,
                headers={"Authorization": f"Bearer {self.reg.as_token}"},
            )
            assert page.status_code == 200, page.text
            chunk = page.json()["chunk"]
            for event in chunk:
                if event["type"] == "m.room.message":
                    bodies.setdefault(event["content"]["body"], []).append(event["event_id"])
            frm = page.json().get("end")
            if not chunk or not frm:
                break
        for (ghost, txn), event_id in self.answered.items():
            assert bodies.get(txn) == [event_id], (txn, bodies.get(txn), event_id)


async def setup(
    http: httpx.AsyncClient, reg: stack.AppService, tag: str, invite: list[str] = ()
) -> tuple[str, list[str]]:
    bot = Api(http, reg.as_token)
    ghosts = [reg.ghost(f"flt_{tag}_{i}") for i in range(SENDERS)]
    for ghost in ghosts:
        await register_ghost(bot, ghost[1:].split(":")[0])
    return await portal(bot, ghosts, invite=invite), ghosts


def test_sigkill_during_ingest_loses_nothing_answered():
    reg = stack.example_appservice()

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
            room, ghosts = await setup(http, reg, f"k{time.monotonic_ns() % 10**6}")
            ingest = Ingest(http, reg, room, ghosts)
            await ingest.run(lambda: asyncio.to_thread(stack.restart_hungryserv_after_sigkill))
            assert ingest.answered and ingest.unsettled, "the kill should have cut sends in flight"
            await ingest.settle_and_check()
            return len(ingest.answered), len(ingest.unsettled)

    answered, unsettled = asyncio.run(asyncio.wait_for(scenario(), 240))
    print(f"SIGKILL: {answered} sends settled, {unsettled} of them cut by the kill")


def test_postgres_restart_during_ingest_and_long_polls():
    reg = stack.example_appservice()
    user = stack.register_user()

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=60) as http:
            room, ghosts = await setup(http, reg, f"p{time.monotonic_ns() % 10**6}", [user.user_id])
            me = Api(http, user.access_token)
            await me.call("POST", f"/v3/join/{q(room)}")
            first = await http.get(
                "/_matrix/client/v3/sync", params={"timeout": "0", "filter": SYNC_FILTER}, headers=user.auth
            )
            assert first.status_code == 200, first.text
            since = first.json()["next_batch"]
            seen: list[str] = []
            poll_errors: list[tuple[int, str]] = []
            ingest = Ingest(http, reg, room, ghosts)

            async def poller():
                nonlocal since
                while not ingest.stopped.is_set():
                    params = {"since": since, "timeout": "3000", "filter": SYNC_FILTER}
                    resp = await http.get("/_matrix/client/v3/sync", params=params, headers=user.auth)
                    if resp.status_code != 200:
                        poll_errors.append((resp.status_code, resp.text))
                        await asyncio.sleep(0.2)
                        continue
                    since = resp.json()["next_batch"]
                    room_part = resp.json().get("rooms", {}).get("join", {}).get(room, {})
                    assert not room_part.get("timeline", {}).get("limited"), "a limited sync"
                    seen.extend(e["event_id"] for e in room_part.get("timeline", {}).get("events", []))

            async def restart_postgres():
                await asyncio.to_thread(stack.stack_lib, "pg_stop")
                await asyncio.sleep(3)
                await asyncio.to_thread(stack.stack_lib, "pg_start")
                # Recovery without restarting hungryserv: a send succeeds within 30 s.
                deadline = time.monotonic() + 30
                while True:
                    resp = await ingest.put(ghosts[0], f"probe-{time.monotonic_ns()}")
                    if resp.status_code == 200:
                        break
                    assert time.monotonic() < deadline, f"no recovery: {resp.status_code} {resp.text}"
                    await asyncio.sleep(0.5)

            polling = asyncio.create_task(poller())
            pid = stack.hungryserv_pid()
            await ingest.run(restart_postgres)
            await polling
            assert stack.hungryserv_pid() == pid, "hungryserv was restarted"
            for status, body in poll_errors:
                assert status >= 500, (status, body)
                parsed = json.loads(body)
                assert isinstance(parsed.get("errcode"), str), body
            await ingest.settle_and_check()
            # The long-polling user catches up on every event answered 200, once each.
            deadline = time.monotonic() + 30
            want = set(ingest.answered.values())
            while not want <= set(seen):
                assert time.monotonic() < deadline, f"{len(want - set(seen))} events never synced"
                params = {"since": since, "timeout": "1000", "filter": SYNC_FILTER}
                resp = await http.get("/_matrix/client/v3/sync", params=params, headers=user.auth)
                assert resp.status_code == 200, resp.text
                since = resp.json()["next_batch"]
                room_part = resp.json().get("rooms", {}).get("join", {}).get(room, {})
                seen.extend(e["event_id"] for e in room_part.get("timeline", {}).get("events", []))
            assert len(seen) == len(set(seen)), "an event was synced twice"
            return len(ingest.answered), len(ingest.errors), len(poll_errors)

    answered, errors, poll_errors = asyncio.run(asyncio.wait_for(scenario(), 240))
    print(f"Postgres restart: {answered} sends settled; {errors} send and {poll_errors} sync error answers")

    # Synapse shares the Postgres: its pooled connections broke too, and it answers 500 until
    # it has reconnected them. Wait until it registers a user again, so the next test starts
    # on a working stack.
    def synapse_recovered() -> bool:
        try:
            stack.register_user()
            return True
        except httpx.HTTPStatusError:
            return False

    stack.wait_until(synapse_recovered, 60, "Synapse to recover from the Postgres restart")


def test_synapse_restart_during_long_polls():
    user = stack.register_user()
    other = stack.register_user()
    reg = stack.example_appservice()

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=60) as http:
            bot, me, them = Api(http, reg.as_token), Api(http, user.access_token), Api(http, other.access_token)
            local = await portal(bot, [], invite=[user.user_id])
            await me.call("POST", f"/v3/join/{q(local)}")
            remote = (await me.call("POST", "/v3/createRoom", body={"invite": [other.user_id]}))["room_id"]
            await them.call("POST", f"/v3/join/{q(remote)}")
            first = await http.get("/_matrix/client/v3/sync", params={"timeout": "0"}, headers=user.auth)
            since = first.json()["next_batch"]

            async def long_poll(since: str):
                started = time.monotonic()
                resp = await http.get(
                    "/_matrix/client/v3/sync", params={"since": since, "timeout": "5000"}, headers=user.auth
                )
                return resp, time.monotonic() - started

            # Long polls in flight when Synapse goes away.
            polls = [asyncio.create_task(long_poll(since)) for _ in range(4)]
            await asyncio.sleep(1)
            await asyncio.to_thread(stack.stack_lib, "synapse_stop")
            try:
                for resp, took in await asyncio.gather(*polls):
                    assert resp.status_code == 200, resp.text
                    assert took < 5 + 5 + 3, f"long poll took {took:.1f}s"
                    since = resp.json()["next_batch"]
                # A local send wakes a long poll while Synapse is away.
                poll = asyncio.create_task(long_poll(since))
                await asyncio.sleep(0.5)
                event_id = await bot.send(local, "while Synapse restarts")
                resp, took = await poll
                assert resp.status_code == 200, resp.text
                assert took < 3, f"local wake-up took {took:.1f}s"
                timeline = resp.json()["rooms"]["join"][local]["timeline"]["events"]
                assert event_id in [e["event_id"] for e in timeline]
                since = resp.json()["next_batch"]
            finally:
                await asyncio.to_thread(stack.stack_lib, "synapse_start")
            # Synapse's room works again through the same sync chain.
            sent = await them.send(remote, "after the restart")
            deadline = time.monotonic() + 60
            seen: list[str] = []
            while sent not in seen:
                assert time.monotonic() < deadline, "Synapse room did not come back"
                resp, _ = await long_poll(since)
                assert resp.status_code == 200, resp.text
                since = resp.json()["next_batch"]
                room_part = resp.json().get("rooms", {}).get("join", {}).get(remote, {})
                seen.extend(e["event_id"] for e in room_part.get("timeline", {}).get("events", []))

    asyncio.run(asyncio.wait_for(scenario(), 240))


BACKLOG = 10_000
BATCH = 1_000


def test_appservice_down_for_a_10000_event_backlog_gets_it_all_in_order_once():
    """A bridge down while 10,000 events are written into its room (batch sends, with a
    user's ordinary sends between them) gets every one afterwards: in the order the room has
    them, each in exactly one transaction (a transaction repeated whole, same txnId, is the
    only repeat allowed), no transaction over the configured size."""
    from test_appservice_delivery import RecordingBridge, ping_through_synapse, received, wait_for

    reg = stack.example_appservice()
    user = stack.register_user()
    record: list = []

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=120) as http:
            bot = Api(http, reg.as_token)
            tag = f"bl{time.monotonic_ns()}"
            ghosts = [reg.ghost(f"{tag}_{n}") for n in range(2)]
            for ghost in ghosts:
                await register_ghost(bot, ghost[1:].split(":")[0])
            room = await portal(bot, ghosts, invite=[user.user_id])
            me = Api(http, user.access_token)
            await me.call("POST", f"/v3/join/{q(room)}")

            # Caught up first, so what follows is a backlog of this room only (and whatever
            # earlier tests left, which is delivered before it).
            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            try:
                marker = await me.send(room, "before the outage")
                await wait_for(
                    lambda: marker in {e["event_id"] for _, e in received(record, {room})},
                    60,
                    "the bridge to be caught up",
                )
            finally:
                await bridge.stop()
            record.clear()

            # The bridge is down: 10,000 events, 1,000 per batch send, and a user's message
            # after each batch.
            sent: list[str] = []
            started = time.monotonic()
            for b in range(BACKLOG // BATCH):
                events = [
                    {
                        "type": "m.room.message",
                        "sender": ghosts[i % 2],
                        "origin_server_ts": TS0 + b * BATCH + i,
                        "content": {"msgtype": "m.text", "body": f"backlog {b * BATCH + i}"},
                    }
                    for i in range(BATCH)
                ]
                resp = await bot.call(
                    "POST",
                    f"/unstable/com.beeper.backfill/rooms/{q(room)}/batch_send",
                    body={"forward": True, "send_notification": False, "events": events},
                )
                assert len(resp["event_ids"]) == BATCH
                sent.extend(resp["event_ids"])
                sent.append(await me.send(room, f"from the user after batch {b}"))
            built = time.monotonic() - started
            print(f"backlog of {len(sent)} events built in {built:.1f} s")

            # Back: a ping through Synapse makes the pusher retry at once.
            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            try:
                await ping_through_synapse(http, reg)
                want = set(sent)
                started = time.monotonic()
                await wait_for(
                    lambda: want <= {e["event_id"] for _, e in received(record, {room})},
                    180,
                    "the whole backlog to reach the bridge",
                )
                print(f"backlog delivered in {time.monotonic() - started:.1f} s")
            finally:
                await bridge.stop()
            # The room's own order, as a client reads it.
            order: list[str] = []
            token = None
            while True:
                params = {"dir": "f", "limit": "1000"}
                if token:
                    params["from"] = token
                page = await me.call("GET", f"/v3/rooms/{q(room)}/messages", params)
                order += [e["event_id"] for e in page["chunk"] if e["type"] == "m.room.message"]
                token = page.get("end")
                if not token or not page["chunk"]:
                    break
            return room, sent, order

    room, sent, order = asyncio.run(asyncio.wait_for(scenario(), 600))
    got = received(record, {room})

    messages = [e["event_id"] for _, e in got if e["type"] == "m.room.message"]
    # In the order sent, which is the room's order.
    assert [e for e in order if e in set(sent)] == sent
    first_seen = list(dict.fromkeys(messages))
    assert first_seen == sent, "the bridge got the backlog out of order or incomplete"
    # Exactly once: each event in one transaction only; a transaction seen twice is the same
    # transaction repeated (same txnId, same events).
    txns_of = defaultdict(set)
    for txn, e in got:
        txns_of[e["event_id"]].add(txn)
    assert all(len(txns) == 1 for txns in txns_of.values()), {k: v for k, v in txns_of.items() if len(v) > 1}
    bodies = defaultdict(list)
    for txn, events in record:
        bodies[txn].append([e["event_id"] for e in events])
    assert all(all(b == seen[0] for b in seen) for seen in bodies.values())
    assert max(len(events) for _, events in record) <= 100  # appservice.max_events_per_transaction
    assert len({(txn, e["event_id"]) for txn, e in got if e["type"] == "m.room.message"}) == len(sent)
