"""Degraded mode: Synapse hung (SIGSTOP) for longer than the token cache lives.

A user who synced before keeps syncing and sending in a local room, a bridge keeps
sending into it and receiving from it, and a long poll with the client's 3 s timeout
answers in seconds, not after Synapse's timeout. After SIGCONT hungryserv notices within
seconds and the user's Synapse room catches up from the Synapse half the client kept,
with nothing lost. An initial sync during the outage fails at once with 502 (it has no
Synapse position to keep).

The outage lasts HS_DEGRADED_STOP_S seconds (default 75: it must exceed the 60 s the
token cache trusts an identity without asking, which is what the test is about; the
issue's 5 minutes is HS_DEGRADED_STOP_S=300). Synapse always gets SIGCONT.
"""

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import httpx

import stack
from bridge import Api, RecordingBridge, portal, received, register_ghost, wait_for
from client import q

STOP_S = float(os.environ.get("HS_DEGRADED_STOP_S", "75"))
# The token cache's POSITIVE_TTL (src/auth/requester.rs).
TOKEN_TTL_S = 60
# A long poll's bound: the client's timeout, plus synapse.sync_grace_s (5 s) or the time
# to notice a hung Synapse (probe every 5 s, 2 s timeout), plus slack for a loaded machine.
LONG_POLL_BOUND_S = 3 + 7 + 3


def synapse_pid() -> int:
    return int((Path(stack.STACK_DIR) / "synapse" / "synapse.pid").read_text().split()[0])


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} missing from metrics"
    return float(match.group(1))


async def sync(http: httpx.AsyncClient, user: stack.User, since: str | None, timeout_ms: int = 3000):
    params = {"timeout": str(timeout_ms)}
    if since:
        params["since"] = since
    started = time.monotonic()
    resp = await http.get("/_matrix/client/v3/sync", params=params, headers=user.auth)
    return resp, time.monotonic() - started


def timeline_ids(body: dict, room_id: str) -> list[str]:
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e["event_id"] for e in room.get("timeline", {}).get("events", [])]


def test_local_rooms_live_through_a_hung_synapse():
    assert STOP_S > TOKEN_TTL_S, "the outage must outlast the token cache to prove anything"
    reg = stack.example_appservice()
    user = stack.register_user()
    other = stack.register_user()
    record: list = []

    async def scenario():
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=60) as http:
            bot, me, them = Api(http, reg.as_token), Api(http, user.access_token), Api(http, other.access_token)
            ghost = reg.ghost(f"deg_{os.urandom(3).hex()}")
            await register_ghost(bot, ghost[1:].split(":")[0])
            local = await portal(bot, [ghost], invite=[user.user_id])
            await me.call("POST", f"/v3/join/{q(local)}")
            remote = (await me.call("POST", "/v3/createRoom", body={"invite": [other.user_id]}))["room_id"]
            assert not remote.startswith("!hs_"), remote
            await them.call("POST", f"/v3/join/{q(remote)}")

            resp, _ = await sync(http, user, None, 0)
            assert resp.status_code == 200, resp.text
            since = resp.json()["next_batch"]
            # Synapse news the user has not synced yet when Synapse hangs.
            pending = await them.send(remote, "sent before the outage")

            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            os.kill(synapse_pid(), signal.SIGSTOP)
            stopped_at = time.monotonic()
            sent, seen, polls = [], [], []
            try:
                n = 0
                while time.monotonic() - stopped_at < STOP_S:
                    n += 1
                    for api, kwargs in [(me, {}), (bot, {"user_id": ghost})]:
                        started = time.monotonic()
                        sent.append(await api.send(local, f"outage {n}", **kwargs))
                        assert time.monotonic() - started < 5, "a local send waited for Synapse"
                    # Local news: answered, with Synapse's half kept.
                    while not set(sent) <= set(seen):
                        resp, took = await sync(http, user, since)
                        assert resp.status_code == 200, resp.text
                        assert took < LONG_POLL_BOUND_S, f"sync with news took {took:.1f}s"
                        since = resp.json()["next_batch"]
                        seen += timeline_ids(resp.json(), local)
                    # No news: the long poll ends with the client's timeout.
                    resp, took = await sync(http, user, since)
                    assert resp.status_code == 200, resp.text
                    assert took < LONG_POLL_BOUND_S, f"long poll took {took:.1f}s"
                    polls.append(took)
                    since = resp.json()["next_batch"]
                    seen += timeline_ids(resp.json(), local)

                # An initial sync has no Synapse position to keep: 502 Matrix JSON, at once.
                resp, took = await sync(http, user, None, 0)
                assert resp.status_code == 502, resp.text
                assert resp.json()["errcode"] == "M_UNKNOWN", resp.text
                assert took < 2, f"initial sync took {took:.1f}s to fail"

                # Degraded mode is visible to operators.
                ready = await http.get("/_hungryserv/ready")
                assert ready.status_code == 503 and ready.json()["degraded"] is True, ready.text
                metrics = (await http.get("/_hungryserv/metrics")).text
                assert metric(metrics, "hungryserv_synapse_up") == 0
                # Requests went past the token cache's lifetime on the confirmed identity.
                assert metric(metrics, "hungryserv_auth_confirmed_identities_served_total") > 0
                # The bridge got every local event while Synapse was stopped.
                await wait_for(
                    lambda: set(sent) <= {e["event_id"] for _, e in received(record, {local})},
                    30,
                    "the bridge to receive the outage's events",
                )
            finally:
                os.kill(synapse_pid(), signal.SIGCONT)
                await bridge.stop()
            resumed_at = time.monotonic()

            # Back within seconds.
            async def ready_now() -> bool:
                return (await http.get("/_hungryserv/ready")).status_code == 200

            while not await ready_now():
                assert time.monotonic() - resumed_at < 20, "Synapse's return not noticed"
                await asyncio.sleep(0.2)
            metrics = (await http.get("/_hungryserv/metrics")).text
            assert metric(metrics, "hungryserv_synapse_up") == 1

            # The Synapse room catches up from the half the client kept: nothing lost.
            remote_seen: list[str] = []
            after = await them.send(remote, "sent after the outage")
            deadline = time.monotonic() + 60
            while not {pending, after} <= set(remote_seen):
                assert time.monotonic() < deadline, f"Synapse room did not catch up: {remote_seen}"
                resp, _ = await sync(http, user, since, 5000)
                assert resp.status_code == 200, resp.text
                since = resp.json()["next_batch"]
                remote_seen += timeline_ids(resp.json(), remote)
                seen += timeline_ids(resp.json(), local)
            return local, sent, seen, polls

    local, sent, seen, polls = asyncio.run(scenario())
    # Every local event of the outage reached the user exactly once.
    outage_seen = [e for e in seen if e in set(sent)]
    assert sorted(outage_seen) == sorted(sent), "local events lost or repeated"
    got = [e["event_id"] for _, e in received(record, {local}) if e["event_id"] in set(sent)]
    assert set(got) == set(sent)
    print(f"outage {STOP_S:.0f}s: {len(sent)} local sends, long polls {min(polls):.2f}-{max(polls):.2f}s")
