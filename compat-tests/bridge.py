"""A bridge's side of the stack, shared by the appservice tests: a mautrix-python appservice
that records the transactions it processes, client-server calls as the bridge (`Api`),
ghost registration, portal rooms, and waiting for deliveries."""

import asyncio
import secrets
import time

import httpx
from mautrix.appservice import AppService

import stack
from client import q


class RecordingBridge(AppService):
    """A mautrix appservice that records every transaction it processes."""

    def __init__(self, reg: stack.AppService, record: list, **options):
        super().__init__(
            server=stack.HS_URL,
            domain=stack.SERVER_NAME,
            as_token=reg.as_token,
            hs_token=reg.hs_token,
            bot_localpart=reg.bot[1:].split(":")[0],
            id=reg.id,
            **options,
        )
        self.record = record
        self.reg = reg

    async def handle_transaction(self, txn_id, *, events, extra_data, **kwargs):
        self.record.append((txn_id, [dict(e) for e in events]))
        return await super().handle_transaction(txn_id, events=events, extra_data=extra_data, **kwargs)

    async def serve(self):
        await self.start(host="127.0.0.1", port=self.reg.port)


class Api:
    """Client-server calls through hungryserv as an appservice (optionally
    masquerading) or a user."""

    def __init__(self, http: httpx.AsyncClient, token: str):
        self.http, self.token = http, token

    async def call(self, method: str, path: str, params: dict | None = None, body=None) -> dict:
        resp = await self.http.request(
            method,
            "/_matrix/client" + path,
            params=params,
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json()

    async def send(self, room_id: str, body: str, user_id: str | None = None, ts: int | None = None) -> str:
        params = {}
        if user_id:
            params["user_id"] = user_id
        if ts:
            params["ts"] = str(ts)
        path = f"/v3/rooms/{q(room_id)}/send/m.room.message/{secrets.token_hex(8)}"
        return (await self.call("PUT", path, params, {"msgtype": "m.text", "body": body}))["event_id"]


async def register_ghost(bot: Api, localpart: str) -> None:
    resp = await bot.http.post(
        "/_matrix/client/v3/register",
        json={"type": "m.login.application_service", "username": localpart},
        headers={"Authorization": f"Bearer {bot.token}"},
    )
    assert resp.status_code == 200 or resp.json().get("errcode") == "M_USER_IN_USE", resp.text


async def portal(bot: Api, ghosts: list[str], invite: list[str] = ()) -> str:
    """A local room made by the bridge bot, with its ghosts joined."""
    room_id = (
        await bot.call(
            "POST",
            "/v3/createRoom",
            body={"preset": "public_chat", "creation_content": {"m.federate": False}, "invite": list(invite)},
        )
    )["room_id"]
    assert room_id.startswith("!hs_"), room_id
    for ghost in ghosts:
        await bot.call("POST", f"/v3/join/{q(room_id)}", {"user_id": ghost})
    return room_id


def received(record: list, rooms: set[str]) -> list[tuple[str, dict]]:
    """(txnId, event) for every event of `rooms` the bridge processed, in order."""
    return [(txn, e) for txn, events in record for e in events if e.get("room_id") in rooms]


async def ping_through_synapse(http: httpx.AsyncClient, reg: stack.AppService) -> None:
    """`POST /appservice/{id}/ping` through hungryserv: Synapse pings the registration's url.
    Synapse's HTTP pool may first try a connection the previous bridge instance on the same
    port closed (a 502 "AlreadyCalled"), so a failed ping is tried again a few times."""
    for attempt in range(5):
        ping = await http.post(
            f"/_matrix/client/v1/appservice/{q(reg.id)}/ping",
            json={"transaction_id": f"ping-{secrets.token_hex(3)}"},
            headers={"Authorization": f"Bearer {reg.as_token}"},
        )
        if ping.status_code == 200:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"ping failed: {ping.status_code} {ping.text}")


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
