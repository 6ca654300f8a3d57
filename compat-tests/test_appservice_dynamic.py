"""Bridges registered at run time behind the umbrella registration
(`/_hungryserv/admin/v1/appservices`, src/appservice/umbrella.rs): no restart of
Synapse or hungryserv.

Two real mautrix-python appservices (their aiohttp transaction endpoint, txnId
de-duplication, IntentAPI registration and joins) are registered by a server
admin while the stack runs. Each makes portal rooms (local) and joins a DM a
Synapse user makes in a Synapse room; each must receive exactly its own
events. A bridge acting outside its namespaces gets Synapse's own answer (the
same request by a static registration straight at Synapse is the reference).
One bridge is removed with its rooms: its token stops working at once.
"""

import asyncio
import re
import secrets
import socket
import time

import httpx
from mautrix.appservice import AppService
from mautrix.types import EventType, TextMessageEventContent, MessageType

import stack
from client import q

ADMIN_API = "/_hungryserv/admin/v1/appservices"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bridge(AppService):
    """A mautrix appservice that records every transaction it processes, and when."""

    def __init__(self, bridge_id: str, tag: str, as_token: str, hs_token: str, port: int):
        super().__init__(
            server=stack.HS_URL,
            domain=stack.SERVER_NAME,
            as_token=as_token,
            hs_token=hs_token,
            bot_localpart=f"dyn_{tag}_bot",
            id=bridge_id,
            ephemeral_events=True,
        )
        self.port = port
        self.tag = tag
        self.record: list[tuple[float, str, list[dict]]] = []
        self.ephemeral: list[dict] = []

    async def handle_transaction(self, txn_id, *, events, extra_data, **kwargs):
        self.record.append((time.monotonic(), txn_id, [dict(e) for e in events]))
        self.ephemeral.extend(dict(e) for e in kwargs.get("ephemeral") or [])
        return await super().handle_transaction(txn_id, events=events, extra_data=extra_data, **kwargs)

    def event_ids(self) -> list[str]:
        return [e["event_id"] for _, _, events in self.record for e in events]

    def rooms(self) -> set[str]:
        return {e["room_id"] for _, _, events in self.record for e in events}

    def ghost(self, suffix: str) -> str:
        return f"@dyn_{self.tag}_{suffix}:{stack.SERVER_NAME}"


def registration(tag: str, port: int, **extra) -> dict:
    server = re.escape(stack.SERVER_NAME)
    return {
        "url": f"http://127.0.0.1:{port}",
        "sender_localpart": f"dyn_{tag}_bot",
        "namespaces": {
            "users": [{"regex": f"@dyn_{tag}_.*:{server}", "exclusive": True}],
            "aliases": [{"regex": f"#dyn_{tag}_.*:{server}", "exclusive": True}],
        },
        "receive_ephemeral": True,
        **extra,
    }


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def first_delivery(bridge: Bridge, started: float, portals: list[str]) -> float:
    """The bridge's bot makes a portal room right after its registration: milliseconds
    from the admin call's start to the first transaction the bridge processed."""
    room_id = await bridge.intent.create_room(name="first", creation_content={"m.federate": False})
    portals.append(room_id)
    await wait_for(lambda: bridge.record, 30, f"{bridge.id}'s first transaction")
    return round((bridge.record[0][0] - started) * 1000, 1)


def test_two_bridges_come_and_go_without_a_restart():
    admin = stack.register_user(admin=True)
    alice = stack.register_user()
    pid_before = stack.hungryserv_pid()
    run = secrets.token_hex(3)
    tags = {"a": f"a{run}", "b": f"b{run}"}

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
            # Not for a user who is not a server admin.
            refused = await http.get(ADMIN_API, headers=alice.auth)
            assert refused.status_code == 403, refused.text
            assert refused.json()["errcode"] == "M_FORBIDDEN"

            # A namespace outside the umbrella's (@dyn_…) is refused, saying why.
            outside = registration("x", 9, namespaces={"users": [{"regex": "@dy.*", "exclusive": True}]})
            bad = await http.put(f"{ADMIN_API}/dynx{run}", json=outside, headers=admin.auth)
            assert bad.status_code == 400, bad.text
            assert bad.json()["errcode"] == "M_INVALID_PARAM"
            assert "does not lie inside the umbrella" in bad.json()["error"], bad.text

            # Bridge A brings its own tokens; bridge B lets hungryserv make them.
            bridges: dict[str, Bridge] = {}
            first_delivery_ms = {}
            ports = {name: free_port() for name in tags}
            a_tokens = (secrets.token_hex(16), secrets.token_hex(16))
            a = Bridge(f"dyn-a-{run}", tags["a"], *a_tokens, ports["a"])
            await a.start(host="127.0.0.1", port=a.port)
            started = time.monotonic()
            answer = await http.put(
                f"{ADMIN_API}/{a.id}",
                json=registration(tags["a"], a.port, as_token=a_tokens[0], hs_token=a_tokens[1]),
                headers=admin.auth,
            )
            assert answer.status_code == 201, answer.text
            assert "as_token" not in answer.json(), "given tokens are not echoed"
            put_ms = {"a": round((time.monotonic() - started) * 1000, 1)}
            bridges["a"] = a
            portals: dict[str, list[str]] = {name: [] for name in tags}
            first_delivery_ms["a"] = await first_delivery(a, started, portals["a"])

            started = time.monotonic()
            answer = await http.put(
                f"{ADMIN_API}/dyn-b-{run}", json=registration(tags["b"], ports["b"]), headers=admin.auth
            )
            assert answer.status_code == 201, answer.text
            put_ms["b"] = round((time.monotonic() - started) * 1000, 1)
            b = Bridge(f"dyn-b-{run}", tags["b"], answer.json()["as_token"], answer.json()["hs_token"], ports["b"])
            await b.start(host="127.0.0.1", port=b.port)
            bridges["b"] = b
            first_delivery_ms["b"] = await first_delivery(b, started, portals["b"])

            listed = (await http.get(ADMIN_API, headers=admin.auth)).json()["appservices"]
            ids = {entry["id"]: entry for entry in listed}
            assert ids[a.id]["source"] == "admin_api" and ids["umbrella"]["umbrella"] is True
            assert all("as_token" not in entry and "hs_token" not in entry for entry in listed)

            dms: dict[str, str] = {}
            sent: dict[str, list[str]] = {}
            for name, bridge in bridges.items():
                bot = bridge.intent
                # The bot and a ghost are registered in Synapse through the umbrella.
                await bot.ensure_registered()
                ghost = bridge.intent.user(bridge.ghost("g1"))
                await ghost.ensure_registered()
                assert (await ghost.whoami()).user_id == bridge.ghost("g1")
                # Portal rooms: local (unfederated), made by the bot, the ghost joined.
                made = []
                for n in range(2):
                    room_id = await bot.create_room(
                        name=f"portal {n}", invitees=[bridge.ghost("g1")],
                        creation_content={"m.federate": False},
                    )
                    assert room_id.startswith("!hs_"), room_id
                    await ghost.join_room(room_id)
                    portals[name].append(room_id)
                    made.append(room_id)
                sent[name] = [
                    await ghost.send_text(room_id, f"from {name}'s ghost") for room_id in made
                ]
                # A DM in a Synapse room: Alice invites the ghost, the ghost joins through
                # the umbrella, Alice writes.
                created = await http.post(
                    "/_matrix/client/v3/createRoom",
                    json={"is_direct": True, "invite": [bridge.ghost("g1")], "preset": "trusted_private_chat"},
                    headers=alice.auth,
                )
                assert created.status_code == 200, created.text
                dm = created.json()["room_id"]
                assert not dm.startswith("!hs_"), dm
                dms[name] = dm
                await ghost.join_room(dm)
                for n in range(3):
                    resp = await http.put(
                        f"/_matrix/client/v3/rooms/{q(dm)}/send/m.room.message/{secrets.token_hex(6)}",
                        json={"msgtype": "m.text", "body": f"alice to {name} {n}"},
                        headers=alice.auth,
                    )
                    assert resp.status_code == 200, resp.text
                    sent[name].append(resp.json()["event_id"])
                # The ghost answers in the DM (Synapse), as a bridge relays a remote message.
                sent[name].append(
                    await ghost.send_message(dm, TextMessageEventContent(msgtype=MessageType.TEXT, body="hi"))
                )

            for name, bridge in bridges.items():
                await wait_for(
                    lambda: set(sent[name]) <= set(bridge.event_ids()), 30, f"bridge {name}'s events"
                )
            # Each bridge got exactly its own rooms' events, nothing of the other's.
            for name, bridge in bridges.items():
                mine = set(portals[name]) | {dms[name]}
                assert bridge.rooms() <= mine, (name, bridge.rooms() - mine)
                other = "b" if name == "a" else "a"
                assert not set(sent[other]) & set(bridge.event_ids())
                # Alice's DM messages arrive in the order she sent them.
                got = [e for e in bridge.event_ids() if e in sent[name][2:5]]
                assert got == sent[name][2:5]

            # Ephemeral events follow their room: Alice typing in A's DM reaches A only.
            typing = await http.put(
                f"/_matrix/client/v3/rooms/{q(dms['a'])}/typing/{q(alice.user_id)}",
                json={"typing": True, "timeout": 30000},
                headers=alice.auth,
            )
            assert typing.status_code == 200, typing.text
            await wait_for(
                lambda: any(e.get("type") == "m.typing" and e.get("room_id") == dms["a"] for e in a.ephemeral),
                30,
                "A to hear Alice typing",
            )
            assert not any(e.get("room_id") == dms["a"] for e in b.ephemeral)

            # Ping: Synapse does not know the bridge; hungryserv pings it as Synapse would.
            ping = await http.post(
                f"/_matrix/client/v1/appservice/{q(a.id)}/ping",
                json={"transaction_id": "ping-" + run},
                headers={"Authorization": f"Bearer {a_tokens[0]}"},
            )
            assert ping.status_code == 200 and "duration_ms" in ping.json(), ping.text
            wrong = await http.post(
                f"/_matrix/client/v1/appservice/{q(b.id)}/ping",
                json={}, headers={"Authorization": f"Bearer {a_tokens[0]}"},
            )
            assert wrong.status_code == 403, wrong.text

            # Outside its namespaces: Synapse's answer, as the static example bridge gets
            # it from Synapse itself.
            example = stack.example_appservice()
            stranger = b.ghost("x")
            async with httpx.AsyncClient(base_url=stack.SYNAPSE_URL, timeout=30) as synapse:
                reference = await synapse.post(
                    f"/_matrix/client/v3/join/{q(dms['a'])}",
                    params={"user_id": stranger}, json={},
                    headers={"Authorization": f"Bearer {example.as_token}"},
                )
                reference_register = await synapse.post(
                    "/_matrix/client/v3/register",
                    json={"type": "m.login.application_service", "username": f"dyn_{tags['b']}_y"},
                    headers={"Authorization": f"Bearer {example.as_token}"},
                )
            mine = {"Authorization": f"Bearer {a_tokens[0]}"}
            for room_id in (dms["a"], portals["a"][1]):
                acting = await http.post(
                    f"/_matrix/client/v3/join/{q(room_id)}", params={"user_id": stranger}, json={}, headers=mine
                )
                assert (acting.status_code, acting.json()) == (reference.status_code, reference.json()), room_id
            assert reference.status_code == 403 and reference.json()["errcode"] == "M_FORBIDDEN"
            register = await http.post(
                "/_matrix/client/v3/register",
                json={"type": "m.login.application_service", "username": f"dyn_{tags['b']}_y"},
                headers=mine,
            )
            assert (register.status_code, register.json()) == (
                reference_register.status_code, reference_register.json()
            )
            assert register.json()["errcode"] == "M_EXCLUSIVE"

            # Removal with its rooms: the token is refused from the next request on.
            b_token = b.as_token
            removed = await http.delete(
                f"{ADMIN_API}/{b.id}", params={"delete_rooms": "true"}, headers=admin.auth
            )
            assert removed.status_code == 200, removed.text
            deleted = {room["room_id"] for room in removed.json()["rooms"]["deleted"]}
            assert deleted == set(portals["b"]), removed.text
            for path in ("/_matrix/client/v3/account/whoami", "/_matrix/client/v3/joined_rooms"):
                gone = await http.get(path, headers={"Authorization": f"Bearer {b_token}"})
                assert gone.status_code == 401 and gone.json()["errcode"] == "M_UNKNOWN_TOKEN", gone.text
            for room_id in portals["b"]:
                room = await http.get(f"/_synapse/admin/v1/rooms/{q(room_id)}", headers=admin.auth)
                assert room.status_code == 404, room.text
            assert (await http.get(f"{ADMIN_API}/{b.id}", headers=admin.auth)).status_code == 404
            # Bridge A goes on.
            after = await a.intent.user(a.ghost("g1")).send_text(portals["a"][1], "still here")
            await wait_for(lambda: after in a.event_ids(), 30, "bridge A after B's removal")
            await a.stop()
            await b.stop()
            return first_delivery_ms, put_ms

    first_delivery_ms, put_ms = asyncio.run(scenario())
    assert stack.hungryserv_pid() == pid_before, "no restart"
    print(f"admin call answered after (ms): {put_ms}")
    print(f"admin call to first delivered transaction (ms): {first_delivery_ms}")


def test_a_websocket_only_bridge_hears_local_and_synapse_rooms():
    """A bridge registered without `url` gets its transactions, local and Synapse
    events alike, over `fi.mau.as_sync` only; its removal closes the socket."""
    import aiohttp

    from test_appservice_delivery import Api, portal, register_ghost
    from test_appservice_websocket import Bridge as SocketBridge

    admin = stack.register_user(admin=True)
    alice = stack.register_user()
    tag = f"w{secrets.token_hex(3)}"
    bridge_id = f"dyn-{tag}"

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http, aiohttp.ClientSession() as session:
            answer = await http.put(
                f"{ADMIN_API}/{bridge_id}", json={**registration(tag, 0), "url": None}, headers=admin.auth
            )
            assert answer.status_code == 201, answer.text
            assert answer.json()["url"] is None
            token = answer.json()["as_token"]
            socket_bridge = SocketBridge(token)
            await socket_bridge.connect(session)
            assert socket_bridge.first["status"] == "connected", socket_bridge.first
            ping = await http.post(
                f"/_matrix/client/v1/appservice/{q(bridge_id)}/ping", json={},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert ping.status_code == 200, ping.text

            bot = Api(http, token)
            ghost = f"@dyn_{tag}_g1:{stack.SERVER_NAME}"
            await register_ghost(bot, ghost[1:].split(":")[0])
            room_id = await portal(bot, [ghost])
            local = await bot.send(room_id, "local", user_id=ghost)
            created = await http.post(
                "/_matrix/client/v3/createRoom", json={"invite": [ghost]}, headers=alice.auth
            )
            dm = created.json()["room_id"]
            await bot.call("POST", f"/v3/join/{q(dm)}", {"user_id": ghost}, {})
            remote = await Api(http, alice.access_token).send(dm, "from Synapse")
            await wait_for(
                lambda: {local, remote}
                <= {e["event_id"] for _, events in socket_bridge.transactions for e in events},
                30,
                "both events on the socket",
            )
            removed = await http.delete(f"{ADMIN_API}/{bridge_id}", headers=admin.auth)
            assert removed.status_code == 200, removed.text
            await wait_for(lambda: socket_bridge.close_code is not None, 10, "the socket to close")
            refused = await http.get(
                "/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {token}"}
            )
            assert refused.status_code == 401, refused.text

    asyncio.run(scenario())


def test_a_bridge_outlives_a_hungryserv_restart():
    """Stored in Postgres: after hungryserv is SIGKILLed and started again, the bridge's
    token works and its delivery goes on (Synapse was never restarted)."""
    admin = stack.register_user(admin=True)
    tag = f"r{secrets.token_hex(3)}"
    port = free_port()
    tokens = (secrets.token_hex(16), secrets.token_hex(16))

    async def before():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
            answer = await http.put(
                f"{ADMIN_API}/dyn-{tag}",
                json=registration(tag, port, as_token=tokens[0], hs_token=tokens[1]),
                headers=admin.auth,
            )
            assert answer.status_code == 201, answer.text

    async def after():
        bridge = Bridge(f"dyn-{tag}", tag, *tokens, port)
        await bridge.start(host="127.0.0.1", port=port)
        try:
            room_id = await bridge.intent.create_room(creation_content={"m.federate": False})
            event_id = await bridge.intent.send_text(room_id, "after the restart")
            await wait_for(lambda: event_id in bridge.event_ids(), 30, "delivery after the restart")
        finally:
            await bridge.stop()

    asyncio.run(before())
    stack.restart_hungryserv_after_sigkill()
    asyncio.run(after())


def test_key_counts_and_device_lists_follow_each_bridges_users():
    """Two MSC3202 bridges registered at run time. Alice (a Synapse user) shares a Synapse
    room with bridge A's ghost only. The ghost's key counts and her new login's device-list
    change reach A (through Synapse's transactions to the umbrella, split by hungryserv) and
    never B, which shares no room with her. (To-device messages are not tried: the stack's
    Synapse does not enable `msc2409_to_device_messages_enabled`.)"""
    from aiohttp import web

    admin = stack.register_user(admin=True)
    alice = stack.register_user()
    run = secrets.token_hex(3)

    class Raw:
        """Records the bodies of the transactions pushed to one port."""

        def __init__(self, hs_token: str, port: int):
            self.hs_token, self.port, self.bodies = hs_token, port, []

        async def transaction(self, request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {self.hs_token}":
                return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
            self.bodies.append(await request.json())
            return web.json_response({})

        async def start(self) -> web.AppRunner:
            app = web.Application()
            app.router.add_put("/_matrix/app/v1/transactions/{txn}", self.transaction)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            return runner

        def field(self, stable: str, unstable: str) -> list:
            return [body.get(stable, body.get(unstable)) for body in self.bodies if stable in body or unstable in body]

        def to_device(self) -> list[dict]:
            return [m for lst in self.field("to_device", "de.sorunome.msc2409.to_device") for m in lst]

        def changed(self) -> set[str]:
            return {u for lists in self.field("device_lists", "org.matrix.msc3202.device_lists") for u in lists.get("changed", [])}

        def counted(self) -> set[str]:
            return {u for counts in self.field("device_one_time_keys_count", "org.matrix.msc3202.device_one_time_keys_count")
                    for u in counts}

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
            raws, tokens, runners = {}, {}, []
            for name in ("a", "b"):
                tag, port = f"{name}k{run}", free_port()
                tokens[name] = (secrets.token_hex(16), secrets.token_hex(16))
                raws[name] = Raw(tokens[name][1], port)
                runners.append(await raws[name].start())
                body = registration(tag, port, as_token=tokens[name][0], hs_token=tokens[name][1])
                body["org.matrix.msc3202"] = True
                answer = await http.put(f"{ADMIN_API}/dyn-{name}k-{run}", json=body, headers=admin.auth)
                assert answer.status_code == 201, answer.text
            try:
                a_token = {"Authorization": f"Bearer {tokens['a'][0]}"}
                # A's ghost, with a device and keys (MSC3202 device masquerading).
                ghost_local = f"dyn_ak{run}_g"
                session = (await http.post("/_matrix/client/v3/register", headers=a_token,
                                           json={"type": "m.login.application_service", "username": ghost_local})).json()
                ghost, device = session["user_id"], session["device_id"]
                keys = {"one_time_keys": {f"signed_curve25519:K{i}": {"key": f"{i}" * 43, "signatures": {}} for i in range(2)}}
                up = await http.post("/_matrix/client/v3/keys/upload", headers=a_token, json=keys,
                                     params={"user_id": ghost, "device_id": device})
                assert up.status_code == 200, up.text
                room = (await http.post("/_matrix/client/v3/createRoom", headers=alice.auth,
                                        json={"invite": [ghost]})).json()["room_id"]
                joined = await http.post(f"/_matrix/client/v3/join/{q(room)}", headers=a_token, params={"user_id": ghost}, json={})
                assert joined.status_code == 200, joined.text
                # Synapse's transaction with Alice's message carries the key counts of the
                # umbrella's users in the room (Synapse's rule), split to A.
                sent = await http.put(f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{run}", headers=alice.auth,
                                      json={"msgtype": "m.text", "body": "hi"})
                assert sent.status_code == 200, sent.text
                await wait_for(lambda: ghost in raws["a"].counted(), 30, "the ghost's key counts at A")
                login = await http.post("/_matrix/client/v3/login", json={
                    "type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id},
                    "password": alice.password})
                assert login.status_code == 200, login.text
                await wait_for(lambda: alice.user_id in raws["a"].changed(), 30, "Alice's device change at A")
                # Whatever was on its way to B has had time to arrive.
                await asyncio.sleep(2)
                return ghost, {name: (raw.to_device(), raw.changed(), raw.counted()) for name, raw in raws.items()}
            finally:
                for runner in runners:
                    await runner.cleanup()
                for name in ("a", "b"):
                    await http.delete(f"{ADMIN_API}/dyn-{name}k-{run}", headers=admin.auth)

    ghost, seen = asyncio.run(scenario())
    a_to_device, a_changed, a_counted = seen["a"]
    b_to_device, b_changed, b_counted = seen["b"]
    assert ghost in a_counted, f"A's ghost's key counts: {a_counted}"
    assert ghost not in b_counted, "A's ghost's key counts reached B"
    assert alice.user_id not in b_changed, "a device change of someone who shares no room with B reached B"
