"""Appservice delivery for local rooms: hungryserv pushes every event of a
local room to the bridges interested in it, in order, at least once, and
repeats only whole transactions under their own txnId.

The bridge is mautrix-python's AppService (its aiohttp transaction endpoint,
txnId de-duplication and event parsing), listening on the port the stack's
registration names. Synapse pushes to the same registration too (for its own
rooms); the tests look only at events of the local rooms they make.
"""

import asyncio
import secrets
from collections import defaultdict

import httpx
from aiohttp import web

import stack
from bridge import Api, RecordingBridge, ping_through_synapse, portal, received, register_ghost, wait_for
from client import q

TS0 = 1_650_000_000_000


def test_bridge_gets_every_event_in_order_across_outage_and_sigkill():
    reg = stack.example_appservice()
    user = stack.register_user()
    record: list = []

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
            bot = Api(http, reg.as_token)
            tag = secrets.token_hex(3)
            ghosts = [reg.ghost(f"dlv_{tag}_{n}") for n in range(2)]
            for ghost in ghosts:
                await register_ghost(bot, ghost[1:].split(":")[0])
            rooms = [await portal(bot, ghosts, invite=[user.user_id]) for _ in range(2)]
            me = Api(http, user.access_token)
            for room_id in rooms:
                await me.call("POST", f"/v3/join/{q(room_id)}")
            sent: dict[str, list[tuple[str, str, int | None]]] = defaultdict(list)
            counter = 0

            async def send_round(n: int) -> None:
                nonlocal counter
                for _ in range(n):
                    for room_id in rooms:
                        counter += 1
                        ghost = ghosts[counter % 2]
                        ts = TS0 + counter
                        event_id = await bot.send(room_id, f"m{counter}", user_id=ghost, ts=ts)
                        sent[room_id].append((event_id, ghost, ts))
                # The user (outside the namespace) writes too: the bridge hears it
                # because its ghosts are in the room.
                event_id = await me.send(rooms[0], f"from the user {counter}")
                sent[rooms[0]].append((event_id, user.user_id, None))

            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            try:
                await send_round(5)
                want = {e for events in sent.values() for e, _, _ in events}
                await wait_for(
                    lambda: want <= {e["event_id"] for _, e in received(record, set(rooms))},
                    30,
                    "the first events to reach the bridge",
                )
            finally:
                await bridge.stop()

            # The bridge is down; events keep coming; hungryserv dies mid-delivery.
            await send_round(10)
            await asyncio.to_thread(stack.restart_hungryserv_after_sigkill)
            await send_round(5)

            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            try:
                # A ping through hungryserv (Synapse pings the bridge) retries at once
                # instead of after the backoff.
                ping = await http.post(
                    f"/_matrix/client/v1/appservice/{q(reg.id)}/ping",
                    json={"transaction_id": "ping-" + tag},
                    headers={"Authorization": f"Bearer {reg.as_token}"},
                )
                assert ping.status_code == 200, ping.text
                want = {e for events in sent.values() for e, _, _ in events}
                await wait_for(
                    lambda: want <= {e["event_id"] for _, e in received(record, set(rooms))},
                    60,
                    "every event to reach the bridge after the outage",
                )
            finally:
                await bridge.stop()
            return rooms, sent

    rooms, sent = asyncio.run(scenario())
    got = received(record, set(rooms))

    # Every event, with the sender and the massaged timestamp it was sent with.
    by_id = {e["event_id"]: e for _, e in got}
    for room_id in rooms:
        for event_id, sender, ts in sent[room_id]:
            event = by_id[event_id]
            assert event["sender"] == sender
            if ts is not None:
                assert event["origin_server_ts"] == ts
    # Per-room order: the first arrival of each event follows the send order.
    for room_id in rooms:
        first_seen = []
        for _, e in got:
            if e["room_id"] == room_id and e["type"] == "m.room.message" and e["event_id"] not in first_seen:
                first_seen.append(e["event_id"])
        assert first_seen == [e for e, _, _ in sent[room_id]]
    # Repeats only as repeats of a transaction under its own txnId.
    txns_of = defaultdict(set)
    for txn, e in got:
        txns_of[e["event_id"]].add(txn)
    assert all(len(txns) == 1 for txns in txns_of.values()), {k: v for k, v in txns_of.items() if len(v) > 1}
    assert all(txn.startswith("hungryserv.") for txn, _ in got)


def test_a_failing_bridge_does_not_delay_another():
    good, bad = stack.example_appservice(), stack.other_appservice()
    record: list = []
    failing_attempts: list[str] = []
    bad_received: list[tuple[str, dict]] = []
    bad_txns: list[str] = []
    state = {"failing": True}

    async def bad_bridge_handler(request: web.Request) -> web.Response:
        txn = request.match_info["txn"]
        if state["failing"]:
            failing_attempts.append(txn)
            return web.json_response({"errcode": "M_UNKNOWN", "error": "bridge broken"}, status=500)
        body = await request.json()
        bad_txns.append(txn)
        bad_received.extend((txn, e) for e in body["events"])
        return web.json_response({})

    async def ping_handler(_request: web.Request) -> web.Response:
        return web.json_response({})

    async def scenario():
        app = web.Application()
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", bad_bridge_handler)
        app.router.add_post("/_matrix/app/v1/ping", ping_handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", bad.port).start()
        bridge = RecordingBridge(good, record)
        await bridge.serve()
        try:
            async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
                tag = secrets.token_hex(3)
                good_bot, bad_bot = Api(http, good.as_token), Api(http, bad.as_token)
                good_ghost, bad_ghost = good.ghost(f"f_{tag}"), bad.ghost(f"f_{tag}")
                await register_ghost(good_bot, good_ghost[1:].split(":")[0])
                await register_ghost(bad_bot, bad_ghost[1:].split(":")[0])
                good_room = await portal(good_bot, [good_ghost])
                bad_room = await portal(bad_bot, [bad_ghost])
                good_sent, bad_sent = [], []
                # Interleaved: the failing bridge's queue grows while the other drains.
                for i in range(10):
                    bad_sent.append(await bad_bot.send(bad_room, f"b{i}", user_id=bad_ghost))
                    good_sent.append(await good_bot.send(good_room, f"g{i}", user_id=good_ghost))
                    await asyncio.sleep(0.2)
                await wait_for(
                    lambda: set(good_sent) <= {e["event_id"] for _, e in received(record, {good_room})},
                    20,
                    "the healthy bridge's events",
                )
                # All of them arrived while the other bridge was still refusing.
                assert state["failing"] and failing_attempts
                assert not [e for _, e in bad_received if e.get("room_id") == bad_room]
                # Retries repeat the same transaction.
                assert len(set(failing_attempts)) == 1, failing_attempts

                # The broken bridge recovers; a ping retries at once.
                state["failing"] = False
                ping = await http.post(
                    f"/_matrix/client/v1/appservice/{q(bad.id)}/ping",
                    json={},
                    headers={"Authorization": f"Bearer {bad.as_token}"},
                )
                assert ping.status_code == 200, ping.text
                await wait_for(
                    lambda: set(bad_sent) <= {e["event_id"] for _, e in bad_received},
                    30,
                    "the recovered bridge's events",
                )
                got = [e["event_id"] for _, e in bad_received if e.get("room_id") == bad_room and e["type"] == "m.room.message"]
                assert got == bad_sent
                # The first transaction after recovery is the one that kept failing (it may
                # hold only ephemeral events, e.g. a typing notice of an earlier test expiring).
                assert bad_txns[0] == failing_attempts[0]
        finally:
            await bridge.stop()
            await runner.cleanup()

    asyncio.run(scenario())


def test_metrics_cover_requests_upstream_events_syncs_and_the_pool():
    user = stack.register_user()
    headers = {"Authorization": f"Bearer {user.access_token}"}
    httpx.get(f"{stack.HS_URL}/_matrix/client/v3/account/whoami", headers=headers, timeout=10)
    httpx.get(f"{stack.HS_URL}/_matrix/client/v3/sync", params={"timeout": "0"}, headers=headers, timeout=30)
    text = httpx.get(f"{stack.HS_URL}/_hungryserv/metrics", timeout=10).text
    assert 'hungryserv_requests_total{route="forward",endpoint="forwarded",status="200"}' in text
    assert 'route="merge",endpoint="/_matrix/client/v3/sync",status="200"' in text
    assert 'hungryserv_upstream_duration_seconds_count{outcome="ok"}' in text
    assert "hungryserv_sync_waiters " in text
    persisted = [line for line in text.splitlines() if line.startswith("hungryserv_events_persisted_total ")]
    assert persisted and int(persisted[0].split()[1]) >= 0
    assert 'hungryserv_db_pool_connections{state="in_use"}' in text
    assert "hungryserv_db_pool_max_connections " in text
    # The room writer's transactions by path; what each counts is tested in tests/ordering.rs.
    for series in (
        'hungryserv_writer_transactions_total{path="ordinary"} ',
        'hungryserv_writer_transactions_total{path="fast"} ',
        "hungryserv_writer_fast_declined_total ",
    ):
        values = [line[len(series):] for line in text.splitlines() if line.startswith(series)]
        assert len(values) == 1 and values[0].isdigit(), (series, values)


def test_metrics_show_delivery_per_appservice():
    text = httpx.get(f"{stack.HS_URL}/_hungryserv/metrics", timeout=10).text
    for reg in (stack.example_appservice(), stack.other_appservice()):
        assert f'hungryserv_appservice_transactions_sent_total{{appservice="{reg.id}"}}' in text
        assert f'hungryserv_appservice_queue_positions{{appservice="{reg.id}"}}' in text


class EphemeralBridge(RecordingBridge):
    """A mautrix appservice with MSC2409 ephemeral events on: records (txnId, ephemeral
    events, the unstable-named copy left in the body)."""

    def __init__(self, reg: stack.AppService, record: list):
        super().__init__(reg, [], ephemeral_events=True)
        self.ephemeral_record = record

    async def handle_transaction(self, txn_id, *, events, extra_data, ephemeral=None, **kwargs):
        unstable = extra_data.get("de.sorunome.msc2409.ephemeral")
        self.ephemeral_record.append((txn_id, list(ephemeral or []), unstable))
        return await super().handle_transaction(
            txn_id, events=events, extra_data=extra_data, ephemeral=ephemeral, **kwargs
        )


def test_bridges_get_receipts_and_typing_of_their_rooms():
    """MSC2409: receipts and typing of local rooms reach the bridges interested in the room
    (both field names, the registration's flag under either name); private receipts never;
    a receipt made while the bridge is down arrives once it is back."""
    regs = [stack.example_appservice(), stack.other_appservice()]
    user = stack.register_user()
    records: list[list] = [[], []]

    def ephemera(record: list, room_id: str, kind: str) -> list[dict]:
        return [e for _, events, _ in record for e in events if e.get("room_id") == room_id and e["type"] == kind]

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
            me = Api(http, user.access_token)
            rooms = []
            for reg in regs:
                bot = Api(http, reg.as_token)
                ghost = reg.ghost(f"eph_{secrets.token_hex(3)}")
                await register_ghost(bot, ghost[1:].split(":")[0])
                room_id = await portal(bot, [ghost], invite=[user.user_id])
                await me.call("POST", f"/v3/join/{q(room_id)}")
                rooms.append(room_id)
            bridges = [EphemeralBridge(reg, record) for reg, record in zip(regs, records)]
            for bridge in bridges:
                await bridge.serve()
            try:
                for room_id in rooms:
                    event_id = await me.send(room_id, "read me")
                    await me.call("POST", f"/v3/rooms/{q(room_id)}/receipt/m.read.private/{q(event_id)}", body={})
                    await me.call("POST", f"/v3/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", body={})
                    await me.call(
                        "PUT", f"/v3/rooms/{q(room_id)}/typing/{q(user.user_id)}", body={"typing": True, "timeout": 20000}
                    )
                for record, room_id in zip(records, rooms):
                    await wait_for(
                        lambda: ephemera(record, room_id, "m.receipt") and ephemera(record, room_id, "m.typing"),
                        20,
                        "a receipt and a typing notice at the bridge",
                    )
            finally:
                for bridge in bridges:
                    await bridge.stop()

            # Bridge down: a receipt made now arrives once it is back.
            late = await me.send(rooms[0], "read me later")
            await me.call("POST", f"/v3/rooms/{q(rooms[0])}/receipt/m.read/{q(late)}", body={})
            bridge = EphemeralBridge(regs[0], records[0])
            await bridge.serve()
            try:
                await ping_through_synapse(http, regs[0])
                await wait_for(
                    lambda: any(late in e["content"] for e in ephemera(records[0], rooms[0], "m.receipt")),
                    30,
                    "the receipt made while the bridge was down",
                )
            finally:
                await bridge.stop()
            return rooms

    rooms = asyncio.run(scenario())
    for i, (record, room_id) in enumerate(zip(records, rooms)):
        receipts = ephemera(record, room_id, "m.receipt")
        for receipt in receipts:
            for by_type in receipt["content"].values():
                assert set(by_type) == {"m.read"}, f"a private receipt reached a bridge: {receipt}"
        assert any(
            user.user_id in by_type["m.read"] for r in receipts for by_type in r["content"].values()
        ), receipts
        typing = ephemera(record, room_id, "m.typing")
        assert typing[0]["content"]["user_ids"] == [user.user_id], typing
        # Nothing of the other bridge's room.
        other_room = rooms[1 - i]
        assert not ephemera(record, other_room, "m.receipt"), f"bridge {i} got another bridge's receipts"
        # Both field names carry the same events.
        for _, events, unstable in record:
            if events:
                assert unstable == events


def test_relay_mode_delivers_synapse_and_local_events_in_one_stream():
    """Relay mode over HTTP: Synapse's registration points at hungryserv; a mautrix bridge on
    its own port gets Synapse's events and local events, each room in order, all under
    hungryserv's transaction IDs; Synapse's ping reaches the bridge through the relay."""
    reg = stack.relay_appservice()
    record: list = []

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
            bot = Api(http, reg.as_token)
            ghost = reg.ghost(f"rl_{secrets.token_hex(3)}")
            await register_ghost(bot, ghost[1:].split(":")[0])
            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            try:
                local_room = await portal(bot, [ghost])
                synapse_room = (
                    await bot.call("POST", "/v3/createRoom", body={"preset": "public_chat", "creation_content": {"m.federate": True}})
                )["room_id"]
                assert not synapse_room.startswith("!hs_"), synapse_room
                await bot.call("POST", f"/v3/join/{q(synapse_room)}", {"user_id": ghost})
                sent: dict[str, list[str]] = {local_room: [], synapse_room: []}
                for i in range(6):
                    for room_id in sent:
                        sent[room_id].append(await bot.send(room_id, f"relay {i}", user_id=ghost))
                want = {e for events in sent.values() for e in events}
                await wait_for(
                    lambda: want <= {e["event_id"] for _, e in received(record, set(sent))},
                    30,
                    "local and relayed events at the bridge",
                )
                await ping_through_synapse(http, reg)
            finally:
                await bridge.stop()
            return sent

    sent = asyncio.run(scenario())
    got = received(record, set(sent))
    for room_id, events in sent.items():
        seen = list(dict.fromkeys(e["event_id"] for _, e in got if e["room_id"] == room_id and e["event_id"] in events))
        assert seen == events, room_id
    assert all(txn.startswith("hungryserv.") for txn, _ in record), [t for t, _ in record]
