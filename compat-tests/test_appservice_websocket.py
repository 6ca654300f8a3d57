"""The appservice websocket (`fi.mau.as_sync`), driven by a client written from the
protocol description in shared/reference/bridges.md §4.2 (mautrix-go's websocket
mode): transactions arrive on the socket as top-level fields with `command:
"transaction"`, count as delivered only once acknowledged with `{"txn_id"}`, and
come again under the same txn_id after a dropped connection or a hungryserv
restart; a newer connection replaces an older one with close code 4001; `ping` is
answered with a timestamp.

The bridge is the stack's relay-mode appservice (Synapse's registration points at
hungryserv), so one socket carries a local room's events and a Synapse room's,
relayed, under hungryserv's transaction IDs only.
"""

import asyncio
import json
import secrets

import aiohttp
import httpx

import stack
from bridge import Api, portal, register_ghost, wait_for
from client import q

SOCKET_PATH = "/_matrix/client/unstable/fi.mau.as_sync"


class Bridge:
    """One websocket connection; records transactions and acknowledges them unless told
    not to."""

    def __init__(self, as_token: str):
        self.as_token = as_token
        self.transactions: list[tuple[str, list[dict]]] = []
        self.unacked: list[str] = []
        self.replies: dict[int, dict] = {}
        self.proxied: list[dict] = []
        self.acking = True
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.first: dict | None = None

    async def connect(self, session: aiohttp.ClientSession) -> None:
        self.ws = await session.ws_connect(
            stack.HS_URL + SOCKET_PATH,
            headers={"Authorization": f"Bearer {self.as_token}", "X-Mautrix-Websocket-Version": "3"},
        )
        self.first = await self.ws.receive_json(timeout=10)
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            if frame.get("command") in ("response", "error"):
                self.replies[frame["id"]] = frame
                continue
            if frame.get("command") == "http_proxy":
                # A request for the bridge itself (Synapse asking about an alias): answered
                # as the bridge's HTTP router would.
                self.proxied.append(frame["data"])
                await self.ws.send_json(
                    {"id": frame["id"], "command": "response",
                     "data": {"status": 404, "headers": {}, "body": {"errcode": "M_NOT_FOUND", "error": "no such alias"}}}
                )
                continue
            if frame.get("command") == "transaction":
                self.transactions.append((frame["txn_id"], frame.get("events", [])))
                if self.acking:
                    await self.ws.send_json({"id": frame["id"], "command": "response", "data": {"txn_id": frame["txn_id"]}})
                else:
                    self.unacked.append(frame["txn_id"])
        self.close_code = self.ws.close_code
        self.close_reason = getattr(self.ws, "_close_message", None) or None

    async def ping(self) -> dict:
        await self.ws.send_json({"command": "ping", "id": 77, "data": {"timestamp": 1}})
        await wait_for(lambda: 77 in self.replies, 10, "the ping's answer")
        return self.replies[77]

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


def events_of(bridges: list[Bridge], room_id: str) -> list[tuple[str, str]]:
    """(txn_id, event_id) of the room's events, in the order the bridges received them."""
    return [
        (txn, e["event_id"]) for b in bridges for txn, events in b.transactions for e in events if e.get("room_id") == room_id
    ]


def test_websocket_delivers_local_and_relayed_events_across_reconnects_and_a_restart():
    reg = stack.relay_appservice()

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http, aiohttp.ClientSession() as session:
            bot = Api(http, reg.as_token)
            ghost = reg.ghost(f"ws_{secrets.token_hex(3)}")
            await register_ghost(bot, ghost[1:].split(":")[0])
            bridges = [Bridge(reg.as_token)]
            await bridges[0].connect(session)
            assert bridges[0].first == {"command": "connect", "status": "connected"}
            pong = await bridges[0].ping()
            assert pong["command"] == "response" and isinstance(pong["data"]["timestamp"], int), pong
            # Synapse asks the bridge about an alias in its namespace: over the socket.
            alias = f"#relay_q{secrets.token_hex(3)}:{stack.SERVER_NAME}"
            lookup = await http.get(f"/_matrix/client/v3/directory/room/{q(alias)}")
            assert lookup.status_code == 404, lookup.text
            assert any(
                p["method"] == "GET" and p["path"].startswith("/_matrix/app/v1/rooms/") and alias.split(":")[0][1:] in p["path"]
                for p in bridges[0].proxied
            ), bridges[0].proxied

            room_id = await portal(bot, [ghost])
            synapse_room = (
                await bot.call("POST", "/v3/createRoom", body={"preset": "public_chat", "creation_content": {"m.federate": True}})
            )["room_id"]
            assert not synapse_room.startswith("!hs_"), synapse_room
            await bot.call("POST", f"/v3/join/{q(synapse_room)}", {"user_id": ghost})
            sent: list[str] = []
            sent_synapse: list[str] = []

            async def send(n: int, synapse: bool = True) -> None:
                for i in range(n):
                    sent.append(await bot.send(room_id, f"ws {len(sent)}", user_id=ghost))
                    if synapse:
                        sent_synapse.append(await bot.send(synapse_room, f"ws {len(sent)}", user_id=ghost))

            def all_arrived() -> bool:
                return set(sent) <= {e for _, e in events_of(bridges, room_id)} and set(sent_synapse) <= {
                    e for _, e in events_of(bridges, synapse_room)
                }

            async def ping() -> None:
                # Through hungryserv to Synapse, which pings its registration's url —
                # hungryserv's relay endpoint — and retries its queue at once (PR 18521).
                resp = await http.post(
                    f"/_matrix/client/v1/appservice/{q(reg.id)}/ping",
                    json={},
                    headers={"Authorization": f"Bearer {reg.as_token}"},
                )
                assert resp.status_code == 200, resp.text

            await send(5)
            await wait_for(all_arrived, 20, "the first events over the socket")

            # The bridge stops acknowledging and drops the connection: what it did not
            # acknowledge comes again on the next connection, under the same txn_id.
            bridges[0].acking = False
            await send(3)
            await wait_for(lambda: bridges[0].unacked, 20, "an unacknowledged transaction")
            unacked = bridges[0].unacked[0]
            await bridges[0].close()
            bridges.append(Bridge(reg.as_token))
            await bridges[1].connect(session)
            await wait_for(all_arrived, 20, "the events of the dropped connection")
            assert bridges[1].transactions[0][0] == unacked

            # SIGKILL hungryserv while the bridge holds a transaction it has not acknowledged:
            # the socket dies, and the next connection gets it again, under the same txn_id,
            # before anything newer. Only local events are sent before the kill, so hungryserv
            # is the only one retrying: Synapse's sender can race its own recoverer when a
            # send fails, and then puts a later transaction before the failed one (seen in its
            # log: txn N+1 accepted by the restarted hungryserv 8 ms after N was refused, N
            # retried 130 ms later); relay mode passes on the order Synapse delivered in.
            bridges[1].acking = False
            await send(2, synapse=False)
            await wait_for(lambda: bridges[1].unacked, 20, "an unacknowledged transaction before the kill")
            held = list(bridges[1].unacked)
            await asyncio.to_thread(stack.restart_hungryserv_after_sigkill)
            await bridges[1].reader
            bridges.append(Bridge(reg.as_token))
            await bridges[2].connect(session)
            await wait_for(lambda: len(bridges[2].transactions) >= len(held), 20, "the held transactions again")
            assert [txn for txn, _ in bridges[2].transactions[: len(held)]] == held
            await send(4)
            await ping()
            await wait_for(all_arrived, 60, "every event after the restart")

            # A second connection replaces the first: 4001 conn_replaced.
            newer = Bridge(reg.as_token)
            await newer.connect(session)
            await asyncio.wait_for(bridges[2].reader, 10)
            replaced = (bridges[2].close_code, bridges[2].ws.close_code)
            await newer.close()
            return (room_id, sent), (synapse_room, sent_synapse), bridges, replaced

    local, relayed, bridges, replaced = asyncio.run(scenario())
    for room_id, sent in (local, relayed):
        got = events_of(bridges, room_id)
        # Every event, in order (first sight of each), repeats only under one txn_id.
        first_seen = list(dict.fromkeys(e for _, e in got if e in set(sent)))
        assert first_seen == sent, room_id
        txn_of: dict[str, set[str]] = {}
        for txn, event_id in got:
            txn_of.setdefault(event_id, set()).add(txn)
        assert all(len(txns) == 1 for txns in txn_of.values()), {e: t for e, t in txn_of.items() if len(t) > 1}
    # One namespace of transaction IDs: hungryserv's (never Synapse's integers).
    assert all(txn.startswith("hungryserv.") for b in bridges for txn, _ in b.transactions)
    assert 4001 in replaced, replaced


def test_websocket_refusals_are_matrix_errors():
    user = stack.register_user()
    headers = {"Authorization": f"Bearer {user.access_token}", "Connection": "Upgrade", "Upgrade": "websocket",
               "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    not_an_appservice = httpx.get(stack.HS_URL + SOCKET_PATH, headers=headers, timeout=10)
    assert not_an_appservice.status_code == 403
    assert not_an_appservice.json()["errcode"] == "M_FORBIDDEN"
    reg = stack.example_appservice()
    no_upgrade = httpx.get(stack.HS_URL + SOCKET_PATH, headers={"Authorization": f"Bearer {reg.as_token}"}, timeout=10)
    assert no_upgrade.status_code == 400
    assert no_upgrade.json()["errcode"] == "M_UNKNOWN"
    no_token = httpx.get(stack.HS_URL + SOCKET_PATH, timeout=10)
    assert no_token.status_code == 401
    assert no_token.json()["errcode"] == "M_MISSING_TOKEN"
