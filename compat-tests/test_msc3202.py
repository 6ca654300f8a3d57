"""MSC3202 device lists in appservice transactions, differential (a Synapse room against a
local room).

The relay bridge's registration opts in (`org.matrix.msc3202: true`; Synapse has
`experimental_features.msc3202_transaction_extensions`), so Synapse puts
`org.matrix.msc3202.device_lists` in its transactions, and hungryserv, which relays them,
adds its own for local rooms. A bridge ghost with a device (registered without
`inhibit_login`, keys uploaded as that device) shares a room with Alice. When Alice logs in
a new device, the bridge must hear that her device list changed, so it encrypts for the
new device: for a Synapse room Synapse tells it, for a local room only hungryserv can. A
user who shares no room with the bridge's users is never announced.

The bridge here is a plain aiohttp endpoint that records the transactions' bodies as sent.
"""

import asyncio
import secrets
import time

import httpx
from aiohttp import web

import stack
from client import q

DEVICE_LISTS = "org.matrix.msc3202.device_lists"
OTK_COUNTS = "org.matrix.msc3202.device_one_time_keys_count"
FALLBACK_TYPES = "org.matrix.msc3202.device_unused_fallback_key_types"


class RawBridge:
    """Records every transaction body pushed to the relay bridge's port."""

    def __init__(self, reg: stack.AppService):
        self.reg = reg
        self.bodies: list[tuple[str, dict]] = []
        self.runner: web.AppRunner | None = None

    async def transaction(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.reg.hs_token}":
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        self.bodies.append((request.match_info["txn"], await request.json()))
        return web.json_response({})

    async def ok(self, _request: web.Request) -> web.Response:
        return web.json_response({})

    async def __aenter__(self):
        app = web.Application()
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self.transaction)
        app.router.add_post("/_matrix/app/v1/ping", self.ok)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.reg.port).start()
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()

    def changed(self) -> set[str]:
        return {u for _, body in self.bodies for u in body.get(DEVICE_LISTS, {}).get("changed", [])}

    def left(self) -> set[str]:
        return {u for _, body in self.bodies for u in body.get(DEVICE_LISTS, {}).get("left", [])}


async def call(http: httpx.AsyncClient, token: str, method: str, path: str, params=None, body=None) -> dict:
    resp = await http.request(
        method, "/_matrix/client" + path, params=params, json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
    return resp.json()


async def ghost_with_device(http: httpx.AsyncClient, reg: stack.AppService, fallback: bool = False) -> tuple[str, str]:
    """A bridge ghost registered with a device (no inhibit_login), its device keys and
    one-time keys (and with `fallback`, a fallback key) uploaded as that device (MSC3202
    masquerading: `device_id`)."""
    localpart = f"relay_m3_{secrets.token_hex(3)}"
    session = await call(
        http, reg.as_token, "POST", "/v3/register", body={"type": "m.login.application_service", "username": localpart}
    )
    user_id, device_id = session["user_id"], session["device_id"]
    keys = {
        "device_keys": {
            "user_id": user_id,
            "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{device_id}": "c" * 43, f"ed25519:{device_id}": "e" * 43},
            "signatures": {user_id: {f"ed25519:{device_id}": "s" * 86}},
        },
        "one_time_keys": {f"signed_curve25519:K{i}": {"key": f"{i}" * 43, "signatures": {}} for i in range(3)},
    }
    if fallback:
        keys["fallback_keys"] = {"signed_curve25519:F": {"key": "f" * 43, "fallback": True, "signatures": {}}}
    params = {"user_id": user_id, "device_id": device_id}
    answer = await call(http, reg.as_token, "POST", "/v3/keys/upload", params, keys)
    assert answer["one_time_key_counts"].get("signed_curve25519") == 3, answer
    return user_id, device_id


async def wait_for(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def scenario(kind: str) -> dict:
    reg = stack.relay_appservice()

    async def run():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http, RawBridge(reg) as bridge:
            ghost, _ = await ghost_with_device(http, reg)
            alice, stranger = stack.register_user(), stack.register_user()
            room_id = (
                await call(
                    http,
                    reg.as_token,
                    "POST",
                    "/v3/createRoom",
                    {"user_id": ghost},
                    {"preset": "private_chat", "invite": [alice.user_id], "creation_content": {"m.federate": kind == "synapse"}},
                )
            )["room_id"]
            assert room_id.startswith("!hs_") == (kind == "local"), (kind, room_id)
            await call(http, alice.access_token, "POST", f"/v3/join/{q(room_id)}", body={})
            # The ghost's own device is announced (its namespace).
            await wait_for(lambda: ghost in bridge.changed(), 20, "the ghost's device change")

            # Alice logs in a new device; the stranger too (he shares no room with the bridge).
            for user in (stranger, alice):
                login = {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": user.user_id},
                    "password": user.password,
                }
                resp = await http.post("/_matrix/client/v3/login", json=login)
                assert resp.status_code == 200, resp.text
            latency = await wait_for(lambda: alice.user_id in bridge.changed(), 20, f"{kind}: Alice's new device at the bridge")
            # Whatever was on its way for the stranger has had time to arrive.
            await asyncio.sleep(1)
            return {
                "ghost": ghost,
                "alice": alice.user_id,
                "stranger": stranger.user_id,
                "changed": bridge.changed(),
                "left": bridge.left(),
                "txn_ids": [txn for txn, _ in bridge.bodies],
                "counts": [body[OTK_COUNTS] for _, body in bridge.bodies if OTK_COUNTS in body],
                "latency_ms": round(latency * 1000),
            }

    return asyncio.run(run())


def test_bridge_hears_of_device_changes_of_its_room_mates():
    results = {kind: scenario(kind) for kind in ["synapse", "local"]}
    print("Alice's login → the bridge's transaction (ms):", {k: r["latency_ms"] for k, r in results.items()})
    for kind, r in results.items():
        assert {r["ghost"], r["alice"]} <= r["changed"], f"{kind}: {r['changed']}"
        assert r["stranger"] not in r["changed"], f"{kind}: a stranger's device change reached the bridge"
        assert r["alice"] not in r["left"], kind
        assert all(txn.startswith("hungryserv.") for txn in r["txn_ids"]), r["txn_ids"]


def key_count_scenario(kind: str) -> dict:
    """A ghost with 3 one-time keys and a fallback key shares a room with Alice; Alice claims
    one of its keys, then sends a message. The transaction that brings the message says how
    many keys the ghost's device has left."""
    reg = stack.relay_appservice()

    async def run():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http, RawBridge(reg) as bridge:
            ghost, device = await ghost_with_device(http, reg, fallback=True)
            alice = stack.register_user()
            room_id = (
                await call(
                    http,
                    reg.as_token,
                    "POST",
                    "/v3/createRoom",
                    {"user_id": ghost},
                    {"preset": "private_chat", "invite": [alice.user_id], "creation_content": {"m.federate": kind == "synapse"}},
                )
            )["room_id"]
            assert room_id.startswith("!hs_") == (kind == "local"), (kind, room_id)
            await call(http, alice.access_token, "POST", f"/v3/join/{q(room_id)}", body={})
            claimed = await call(
                http,
                alice.access_token,
                "POST",
                "/v3/keys/claim",
                body={"one_time_keys": {ghost: {device: "signed_curve25519"}}},
            )
            assert claimed["one_time_keys"][ghost][device], claimed
            event_id = (
                await call(
                    http,
                    alice.access_token,
                    "PUT",
                    f"/v3/rooms/{q(room_id)}/send/m.room.message/{secrets.token_hex(4)}",
                    body={"msgtype": "m.text", "body": "hello"},
                )
            )["event_id"]

            def carrying():
                return [body for _, body in bridge.bodies if any(e.get("event_id") == event_id for e in body.get("events", []))]

            await wait_for(lambda: carrying(), 20, f"{kind}: the transaction with Alice's message")
            body = carrying()[0]
            return {
                "ghost": ghost,
                "device": device,
                "counts": body.get(OTK_COUNTS),
                "misspelled": body.get("org.matrix.msc3202.device_one_time_key_counts"),
                "fallback": body.get(FALLBACK_TYPES),
            }

    return asyncio.run(run())


def test_transactions_with_only_local_events_carry_key_counts():
    results = {kind: key_count_scenario(kind) for kind in ["synapse", "local"]}
    print("key counts in the message's transaction:", results)
    for kind, r in results.items():
        ghost, device = r["ghost"], r["device"]
        assert r["counts"], f"{kind}: no one-time-key counts in the transaction"
        assert r["counts"][ghost] == {device: {"signed_curve25519": 2}}, f"{kind}: {r['counts']}"
        assert r["misspelled"] == r["counts"], kind
        assert r["fallback"][ghost][device] == ["signed_curve25519"], f"{kind}: {r['fallback']}"


def test_the_synapse_modules_resources_are_closed_to_outside_callers():
    """The module answers any appservice token about every bridge's users, and hungryserv
    sends a dynamic bridge's requests out with the umbrella's token: so through hungryserv
    its resources are unknown endpoints, while hungryserv itself reaches Synapse directly."""
    token = stack.relay_appservice().as_token
    body = {"user_ids": []}
    path = "/_synapse/client/hungryserv/v1/msc3202_key_counts"
    direct = httpx.post(f"{stack.SYNAPSE_URL}{path}", json=body,
                        headers={"Authorization": f"Bearer {token}"})
    assert direct.status_code == 200, direct.text
    through = httpx.post(f"{stack.HS_URL}{path}", json=body,
                         headers={"Authorization": f"Bearer {token}"})
    assert through.status_code == 404, through.text
    assert through.json()["errcode"] == "M_UNRECOGNIZED"
