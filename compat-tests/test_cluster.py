"""Two hungryserv instances on one database behind HAProxy (src/cluster/): wake-ups, typing,
the appservice pusher's lock and dynamic bridges cross instances. Each test pins requests to
instance A or B by addressing it directly; the rest go through the load balancer.

Needs the stack with two instances: `HUNGRYSERV_INSTANCES=2 compat-tests/run --
compat-tests/test_cluster.py` (skipped otherwise)."""

import asyncio
import os
import secrets
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

import stack
from bridge import Api, RecordingBridge, portal, wait_for
from client import q
from test_appservice_dynamic import ADMIN_API, registration

PORTS = os.environ.get("HS_INSTANCE_PORTS", "").split()
pytestmark = pytest.mark.skipif(len(PORTS) < 2, reason="needs HUNGRYSERV_INSTANCES=2")
A, B = (f"http://127.0.0.1:{port}" for port in (PORTS + ["0", "0"])[:2])


def pidfile(instance: int) -> Path:
    return Path(stack.STACK_DIR) / "hungryserv" / f"hungryserv-{instance}.pid"


def restart_dead_instances() -> None:
    subprocess.run(
        ["bash", stack.STACK_LIB, "cluster_start", stack.STACK_DIR, stack.HUNGRYSERV_BIN, str(len(PORTS))],
        check=True,
    )


def call(base: str, method: str, path: str, token: str, params=None, body=None, timeout=30) -> httpx.Response:
    return httpx.request(
        method,
        f"{base}/_matrix/client{path}",
        params=params,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def local_room(base: str, token: str) -> str:
    resp = call(base, "POST", "/v3/createRoom", token, body={"creation_content": {"m.federate": False}})
    assert resp.status_code == 200, resp.text
    room_id = resp.json()["room_id"]
    assert room_id.startswith("!hs_"), room_id
    return room_id


def send(base: str, token: str, room_id: str, body: str) -> str:
    path = f"/v3/rooms/{q(room_id)}/send/m.room.message/{secrets.token_hex(8)}"
    resp = call(base, "PUT", path, token, body={"msgtype": "m.text", "body": body})
    assert resp.status_code == 200, resp.text
    return resp.json()["event_id"]


def sync(base: str, token: str, since: str | None, timeout_ms: int) -> dict:
    params = {"timeout": str(timeout_ms)}
    if since:
        params["since"] = since
    resp = call(base, "GET", "/v3/sync", token, params=params, timeout=timeout_ms / 1000 + 30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def timeline(answer: dict, room_id: str) -> list[dict]:
    return answer.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])


def woken_ms(writer: str, reader: str, token: str, room_id: str, since: str) -> tuple[float, str]:
    """A sync held on `reader`, a send through `writer`: ms from the send to the answer that
    holds the event (an answer with only Synapse's news, e.g. the user's presence, is
    followed by the next sync, as a client does)."""
    box: dict = {}

    def hold():
        token_now = since
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answer = sync(reader, token, token_now, 20_000)
            token_now = answer["next_batch"]
            if "event_id" in box and box["event_id"] in [e["event_id"] for e in timeline(answer, room_id)]:
                box["at"] = time.monotonic()
                box["next_batch"] = token_now
                return

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)  # the sync is waiting by now
    sent_at = time.monotonic()
    box["event_id"] = send(writer, token, room_id, f"wake {secrets.token_hex(3)}")
    holder.join(30)
    assert "at" in box, "no sync on the reader returned the event"
    return (box["at"] - sent_at) * 1000, box["next_batch"]


@pytest.mark.xfail(
    reason="known intermittent bug, open (issue 25): since the sync rework of `scale` met "
    "`multi`, a sync held on B sometimes misses a message sent through B or A (2 of the lead's "
    "3 runs; the `multi` branch alone passed)",
    strict=False,
)
def test_a_send_through_a_wakes_a_sync_held_on_b():
    user = stack.register_user()
    room_id = local_room(A, user.access_token)
    since = sync(B, user.access_token, None, 0)["next_batch"]
    figures = {}
    for name, writer, reader in (("same instance (B→B)", B, B), ("across instances (A→B)", A, B)):
        times = []
        for _ in range(15):
            ms, since = woken_ms(writer, reader, user.access_token, room_id, since)
            times.append(ms)
        figures[name] = (round(statistics.median(times), 1), round(max(times), 1))
    print(f"send → woken sync, p50 and max over 15 (ms): {figures}")
    p50, worst = figures["across instances (A→B)"]
    assert worst < 2_000, figures


def test_typing_set_on_a_is_seen_through_b():
    user = stack.register_user()
    room_id = local_room(A, user.access_token)
    since = sync(B, user.access_token, None, 0)["next_batch"]
    box: dict = {}

    def hold():
        deadline = time.monotonic() + 10
        token = since
        while time.monotonic() < deadline:
            answer = sync(B, user.access_token, token, 5_000)
            token = answer["next_batch"]
            room = answer.get("rooms", {}).get("join", {}).get(room_id, {})
            for event in room.get("ephemeral", {}).get("events", []):
                if event["type"] == "m.typing" and user.user_id in event["content"]["user_ids"]:
                    box["at"] = time.monotonic()
                    return

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)
    started = time.monotonic()
    resp = call(
        A,
        "PUT",
        f"/v3/rooms/{q(room_id)}/typing/{q(user.user_id)}",
        user.access_token,
        body={"typing": True, "timeout": 20_000},
    )
    assert resp.status_code == 200, resp.text
    holder.join(15)
    assert "at" in box, "B never showed the typing notice set on A"
    assert box["at"] - started < 1.0, f"{(box['at'] - started) * 1000:.0f} ms"

    # Stopping on B is seen through A: a sync held on A gets the emptied list.
    since_a = sync(A, user.access_token, None, 0)["next_batch"]
    resp = call(
        B, "PUT", f"/v3/rooms/{q(room_id)}/typing/{q(user.user_id)}", user.access_token, body={"typing": False}
    )
    assert resp.status_code == 200, resp.text
    answer = sync(A, user.access_token, since_a, 5_000)
    room = answer.get("rooms", {}).get("join", {}).get(room_id, {})
    typing = [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == "m.typing"]
    assert typing and typing[-1]["content"]["user_ids"] == [], answer


def held_by(instance_url: str, task: str) -> bool:
    text = httpx.get(f"{instance_url}/_hungryserv/metrics", timeout=10).text
    return f'hungryserv_cluster_task_held{{task="{task}"}} 1' in text


class SlowBridge(RecordingBridge):
    """Takes its time over each transaction, so a backlog builds up behind it."""

    async def handle_transaction(self, txn_id, *, events, extra_data, **kwargs):
        await asyncio.sleep(0.3)
        return await super().handle_transaction(txn_id, events=events, extra_data=extra_data, **kwargs)


def test_killing_the_pusher_holder_mid_delivery_loses_nothing():
    reg = stack.example_appservice()
    task = f"appservice pusher:{reg.id}"
    urls = {1: A, 2: B}
    stack.wait_until(lambda: any(held_by(url, task) for url in urls.values()), 10, "a pusher holder")
    holder = next(i for i, url in urls.items() if held_by(url, task))
    survivor = 3 - holder
    record: list = []
    count = 40

    async def scenario():
        bridge = SlowBridge(reg, record)
        await bridge.serve()
        try:
            async with httpx.AsyncClient(base_url=urls[survivor], timeout=30) as http:
                bot = Api(http, reg.as_token)
                room_id = await portal(bot, [])

                async def sends():
                    # Through the survivor, before and after the kill.
                    for i in range(count):
                        await bot.send(room_id, f"m{i}")
                        await asyncio.sleep(0.05)

                sending = asyncio.create_task(sends())
                await wait_for(lambda: len(bodies(record, room_id)) >= 3, 30, "the first deliveries")
                pid = int(pidfile(holder).read_text().split()[0])
                os.kill(pid, 9)
                killed_at = time.monotonic()
                await wait_for(lambda: held_by(urls[survivor], task), 15, "the survivor to take the pusher")
                takeover_s = time.monotonic() - killed_at
                await sending
                await wait_for(lambda: len(set(bodies(record, room_id))) >= count, 60, "every message")
                got = bodies(record, room_id)
                first_seen = list(dict.fromkeys(got))
                assert first_seen == [f"m{i}" for i in range(count)], got
                print(
                    f"takeover after SIGKILL: {takeover_s:.1f} s; "
                    f"{len(got)} deliveries for {count} messages ({len(got) - count} repeated)"
                )
        finally:
            await bridge.stop()

    def bodies(record, room_id):
        return [
            e["content"].get("body")
            for _, events in record
            for e in events
            if e.get("room_id") == room_id and e.get("type") == "m.room.message"
        ]

    try:
        asyncio.run(scenario())
    finally:
        restart_dead_instances()


def test_a_bridge_registered_through_a_works_through_b_within_a_second():
    admin = stack.register_user(admin=True)
    tag = f"c{secrets.token_hex(3)}"
    bridge_id = f"dyn-{tag}"
    as_token, hs_token = secrets.token_hex(16), secrets.token_hex(16)

    def whoami_on_b() -> int:
        return call(B, "GET", "/v3/account/whoami", as_token).status_code

    assert whoami_on_b() == 401
    resp = httpx.put(
        f"{A}{ADMIN_API}/{bridge_id}",
        json=registration(tag, 9, as_token=as_token, hs_token=hs_token),
        headers=admin.auth,
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    answered = time.monotonic()
    stack.wait_until(lambda: whoami_on_b() == 200, 1.0, "B to know the bridge's token")
    known_ms = (time.monotonic() - answered) * 1000
    whoami = call(B, "GET", "/v3/account/whoami", as_token).json()
    assert whoami["user_id"] == f"@dyn_{tag}_bot:{stack.SERVER_NAME}", whoami

    # The bridge's bot acts through B: a local room of its own.
    room_id = local_room(B, as_token)
    listed = httpx.get(f"{B}{ADMIN_API}/{bridge_id}", headers=admin.auth, timeout=30)
    assert listed.status_code == 200, listed.text

    # Removed through A: its token stops working on B too.
    resp = httpx.delete(f"{A}{ADMIN_API}/{bridge_id}", headers=admin.auth, timeout=30)
    assert resp.status_code == 200, resp.text
    removed = time.monotonic()
    stack.wait_until(lambda: whoami_on_b() == 401, 1.0, "B to forget the bridge's token")
    print(
        f"bridge known on B {known_ms:.0f} ms after A answered; "
        f"forgotten {(time.monotonic() - removed) * 1000:.0f} ms after; room {room_id}"
    )
