"""Beeper's bridge extensions, as mautrix bridges use them against a hungryserv:
/versions feature flags, createRoom with everyone joined at once, batch send
(forward and backward, bridge-chosen event IDs, mark_read_by), and the stream
order in `unsigned`. Requests are shaped as mautrix-go builds them
(`requests.go` ReqBeeperBatchSend, ReqCreateRoom).
"""

import base64
import hashlib
import json
import secrets

import httpx
import pytest

import stack
from client import As, of, q, send_text


def batch_path(room_id: str) -> str:
    return f"/unstable/com.beeper.backfill/rooms/{q(room_id)}/batch_send"


def deterministic_id(room_id: str, message_id: str) -> str:
    """How bridgev2 makes event IDs: base64url(sha256(room \\0 msg \\0 part)) + :network."""
    digest = hashlib.sha256(f"{room_id}\0{message_id}\0".encode()).digest()
    return "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=") + ":whatsapp.com"


@pytest.fixture
def bridge() -> stack.AppService:
    return stack.example_appservice()


def register(bot: As, localpart: str) -> str:
    resp = bot("POST", "/v3/register", body={"type": "m.login.application_service", "username": localpart})
    assert resp.status_code == 200 or resp.json().get("errcode") == "M_USER_IN_USE", resp.text
    return f"@{localpart}:{stack.SERVER_NAME}"


def test_versions_advertise_what_works():
    ours = httpx.get(f"{stack.HS_URL}/_matrix/client/versions", timeout=10).json()
    theirs = httpx.get(f"{stack.SYNAPSE_URL}/_matrix/client/versions", timeout=10).json()
    assert ours["versions"] == theirs["versions"]
    features = ours["unstable_features"]
    assert features["com.beeper.batch_sending"] is True
    assert features["com.beeper.room_create_autojoin_invites"] is True
    assert features["com.beeper.room_yeeting"] is True
    # The websocket and relay mode (test_appservice_websocket.py) make it a hungryserv.
    assert features["com.beeper.hungry"] is True
    # Not advertised until they work.
    assert "com.beeper.account_data_mute" not in features
    for name, value in theirs.get("unstable_features", {}).items():
        assert features[name] == value


def test_create_room_with_everyone_joined(bridge):
    bot = As(bridge.as_token)
    tag = secrets.token_hex(3)
    ghosts = [register(bot, f"example_aj_{tag}_{n}") for n in range(3)]
    user = stack.register_user()
    body = {
        "preset": "private_chat",
        "creation_content": {"m.federate": False},
        "invite": [ghosts[0], ghosts[1], user.user_id],
        "is_direct": False,
        "com.beeper.auto_join_invites": True,
        "com.beeper.initial_members": [ghosts[2]],
        "com.beeper.local_room_id": f"!portal.{tag}:{stack.SERVER_NAME}",
    }
    room_id = bot.ok("POST", "/v3/createRoom", body=body)["room_id"]
    assert room_id.startswith("!hs_"), "com.beeper.local_room_id is ignored: the class prefix decides"
    joined = bot.ok("GET", f"/v3/rooms/{q(room_id)}/joined_members")["joined"]
    assert set(joined) == {bridge.bot, *ghosts, user.user_id}
    # The user can read the room right away, no join needed.
    state = of(user).ok("GET", f"/v3/rooms/{q(room_id)}/state")
    members = [(e["state_key"], e["content"]["membership"]) for e in state if e["type"] == "m.room.member"]
    assert sorted(members) == sorted([(u, "join") for u in [bridge.bot, *ghosts, user.user_id]])
    # In order: each member's invite by the bot, then their join.
    page = bot.ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "f", "limit": 50})["chunk"]
    transitions = [(e["state_key"], e["content"]["membership"], e["sender"]) for e in page if e["type"] == "m.room.member"]
    for member in [ghosts[0], ghosts[1], user.user_id, ghosts[2]]:
        assert (member, "invite", bridge.bot) in transitions
        assert transitions.index((member, "invite", bridge.bot)) + 1 == transitions.index((member, "join", member))


def portal_with_user(bridge: stack.AppService, ghosts: list[str]) -> tuple[str, stack.User]:
    bot = As(bridge.as_token)
    user = stack.register_user()
    room_id = bot.ok(
        "POST",
        "/v3/createRoom",
        body={
            "preset": "private_chat",
            "creation_content": {"m.federate": False},
            "invite": [user.user_id, *ghosts],
            "com.beeper.auto_join_invites": True,
        },
    )["room_id"]
    return room_id, user


def test_batch_send_forward_and_backward(bridge):
    bot = As(bridge.as_token)
    tag = secrets.token_hex(3)
    alice, bob = register(bot, f"example_bs_{tag}_a"), register(bot, f"example_bs_{tag}_b")
    # Bob never joins: bridges backfill people who left.
    room_id, user = portal_with_user(bridge, [alice])
    since = of(user).ok("GET", "/v3/sync")["next_batch"]

    live = send_text(As(bridge.as_token, alice), room_id, "live message")

    def events(prefix: str, n: int, ts0: int) -> list[dict]:
        return [
            {
                "type": "m.room.message",
                "sender": [alice, bob][i % 2],
                "origin_server_ts": ts0 + i,
                "event_id": deterministic_id(room_id, f"{prefix}{i}"),
                "room_id": room_id,
                "content": {"msgtype": "m.text", "body": f"{prefix}{i}"},
            }
            for i in range(n)
        ]

    # Backward: history before the oldest event, not news.
    history = events("old", 4, 1_500_000_000_000)
    resp = bot.ok(
        "POST",
        batch_path(room_id),
        body={"forward": False, "forward_if_no_messages": True, "send_notification": False, "events": history},
    )
    assert resp["event_ids"] == [e["event_id"] for e in history]
    # Forward: new messages, marked read by the user.
    news = events("new", 3, 1_700_000_000_000)
    resp = bot.ok(
        "POST",
        batch_path(room_id),
        body={
            "forward": True,
            "forward_if_no_messages": False,
            "send_notification": True,
            "mark_read_by": user.user_id,
            "events": news,
        },
    )
    assert resp["event_ids"] == [e["event_id"] for e in news]

    # The room reads: history first (before the room's creation events), then live, then news.
    chunk = of(user).ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "f", "limit": 100})["chunk"]
    bodies = [e["content"].get("body") for e in chunk if e["type"] == "m.room.message"]
    assert bodies == ["old0", "old1", "old2", "old3", "live message", "new0", "new1", "new2"]
    by_id = {e["event_id"]: e for e in chunk}
    for sent in history + news:
        got = by_id[sent["event_id"]]
        assert (got["sender"], got["origin_server_ts"]) == (sent["sender"], sent["origin_server_ts"])
    orders = [e["unsigned"]["com.beeper.hs.order"] for e in chunk]
    assert all(isinstance(o, int) for o in orders)

    # The user's sync: the live message and the forward batch, not the history; the read
    # receipt on the batch's last event.
    resp = of(user).ok("GET", "/v3/sync", {"since": since, "timeout": "0"})
    room = resp["rooms"]["join"][room_id]
    timeline = [e["content"].get("body") for e in room["timeline"]["events"] if e["type"] == "m.room.message"]
    assert timeline == ["live message", "new0", "new1", "new2"]
    receipts = [e for e in room["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert receipts and news[-1]["event_id"] in receipts[0]["content"]
    assert user.user_id in receipts[0]["content"][news[-1]["event_id"]]["m.read"]
    assert live

    # More history later: the room stays out of the next sync, having nothing new to show.
    since = resp["next_batch"]
    older = events("older", 2, 1_400_000_000_000)
    bot.ok(
        "POST",
        batch_path(room_id),
        body={"forward": False, "forward_if_no_messages": False, "send_notification": False, "events": older},
    )
    resp = of(user).ok("GET", "/v3/sync", {"since": since, "timeout": "0"})
    assert room_id not in resp.get("rooms", {}).get("join", {})
    chunk = of(user).ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "f", "limit": 2})["chunk"]
    assert [e["content"]["body"] for e in chunk] == ["older0", "older1"]


def test_batch_send_is_idempotent_and_all_or_nothing(bridge):
    bot = As(bridge.as_token)
    tag = secrets.token_hex(3)
    alice = register(bot, f"example_bi_{tag}")
    room_id, user = portal_with_user(bridge, [alice])
    batch = [
        {
            "type": "m.room.message",
            "sender": alice,
            "origin_server_ts": 1_600_000_000_000 + i,
            "event_id": deterministic_id(room_id, f"m{i}"),
            "content": {"msgtype": "m.text", "body": f"m{i}"},
        }
        for i in range(3)
    ]
    body = {"forward": True, "forward_if_no_messages": False, "send_notification": False, "events": batch}
    first = bot.ok("POST", batch_path(room_id), body=body)
    again = bot.ok("POST", batch_path(room_id), body=body)
    assert again == first

    def bodies() -> list[str]:
        chunk = of(user).ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "f", "limit": 100})["chunk"]
        return [e["content"]["body"] for e in chunk if e["type"] == "m.room.message"]

    assert bodies() == ["m0", "m1", "m2"]

    def refused(body: dict, requester: As = bot) -> tuple[int, str]:
        resp = requester("POST", batch_path(room_id), body=body)
        return resp.status_code, resp.json().get("errcode")

    fresh = {**batch[0], "event_id": deterministic_id(room_id, "fresh"), "content": {"msgtype": "m.text", "body": "fresh"}}
    # A batch reusing one existing ID: refused whole.
    assert refused({**body, "events": [fresh, batch[1]]}) == (400, "M_INVALID_PARAM")
    # Senders outside the appservice's namespace, state events, non-appservices: refused.
    outsider = {**fresh, "sender": user.user_id}
    assert refused({**body, "events": [fresh, outsider]}) == (403, "M_FORBIDDEN")
    assert refused({**body, "events": [{**fresh, "type": "m.room.name", "state_key": "", "content": {"name": "x"}}]}) == (400, "M_BAD_JSON")
    assert refused({**body, "events": [fresh]}, of(user)) == (403, "M_FORBIDDEN")
    assert refused({**body, "events": "nope"}) == (400, "M_BAD_JSON")
    # Nothing of the refused batches was written.
    assert bodies() == ["m0", "m1", "m2"]
    assert json.dumps(first)


def test_mautrix_beeper_batch_send_seen_by_nio(bridge):
    """The same flows through mautrix-python's own `IntentAPI.beeper_batch_send`, read back
    by matrix-nio: history before the room's messages, forward messages with mark_read_by in
    /sync, an idempotent repeat, and a batch with one bad event refused whole."""
    import asyncio
    import logging

    import aiohttp
    from mautrix.appservice import AppServiceAPI
    from mautrix.appservice.state_store import ASStateStore
    from mautrix.client.state_store.memory import MemoryStateStore
    from mautrix.errors import MatrixRequestError
    from mautrix.types import BatchSendEvent, EventType, MessageType, TextMessageEventContent
    from nio import AsyncClient, MessageDirection, ReceiptEvent, RoomMessagesResponse, SyncResponse

    class Store(ASStateStore, MemoryStateStore):
        pass

    bot_http = As(bridge.as_token)
    tag = secrets.token_hex(3)
    alice = register(bot_http, f"example_mb_{tag}")
    room_id, user = portal_with_user(bridge, [alice])

    def batch(prefix: str, n: int, ts0: int, sender: str = alice) -> list[BatchSendEvent]:
        return [
            BatchSendEvent(
                type=EventType.ROOM_MESSAGE,
                sender=sender,
                timestamp=ts0 + i,
                event_id=deterministic_id(room_id, f"{prefix}{i}"),
                content=TextMessageEventContent(msgtype=MessageType.TEXT, body=f"{prefix}{i}"),
            )
            for i in range(n)
        ]

    async def scenario():
        client = AsyncClient(stack.HS_URL, user.user_id)
        client.access_token, client.user_id = user.access_token, user.user_id
        async with aiohttp.ClientSession() as session:
            api = AppServiceAPI(
                base_url=stack.HS_URL,
                bot_mxid=bridge.bot,
                token=bridge.as_token,
                log=logging.getLogger("batch"),
                state_store=Store(),
                client_session=session,
            )
            intent = api.bot_intent()
            try:
                first = await client.sync(timeout=0)
                assert isinstance(first, SyncResponse), first
                send_text(As(bridge.as_token, alice), room_id, "live")
                history = batch("old", 3, 1_500_000_000_000)
                resp = await intent.beeper_batch_send(room_id, history, forward_if_no_messages=True)
                assert resp.event_ids == [e.event_id for e in history]
                news = batch("new", 2, 1_700_000_000_000)
                resp = await intent.beeper_batch_send(
                    room_id, news, forward=True, send_notification=True, mark_read_by=user.user_id
                )
                assert resp.event_ids == [e.event_id for e in news]
                again = await intent.beeper_batch_send(
                    room_id, news, forward=True, send_notification=True, mark_read_by=user.user_id
                )
                assert again.event_ids == resp.event_ids
                # One event whose sender is outside the namespace: the whole batch is refused.
                bad = batch("bad", 2, 1_800_000_000_000) + batch("bad", 1, 1_800_000_000_100, user.user_id)
                try:
                    await intent.beeper_batch_send(room_id, bad, forward=True)
                    raise AssertionError("a batch with a foreign sender was accepted")
                except MatrixRequestError as err:
                    assert err.http_status in (400, 403), err

                page = await client.room_messages(room_id, start="", direction=MessageDirection.front, limit=100)
                assert isinstance(page, RoomMessagesResponse), page
                bodies = [getattr(e, "body", None) for e in page.chunk if getattr(e, "body", None)]
                synced = await client.sync(timeout=0)
                assert isinstance(synced, SyncResponse), synced
                room = synced.rooms.join[room_id]
                timeline = [getattr(e, "body", None) for e in room.timeline.events if getattr(e, "body", None)]
                receipts = [r for e in room.ephemeral if isinstance(e, ReceiptEvent) for r in e.receipts]
                return bodies, timeline, receipts, news
            finally:
                await client.close()

    bodies, timeline, receipts, news = asyncio.run(scenario())
    assert bodies == ["old0", "old1", "old2", "live", "new0", "new1"]
    assert timeline == ["live", "new0", "new1"], "history is not news; the bad batch wrote nothing"
    assert any(r.event_id == news[-1].event_id and r.user_id == user.user_id for r in receipts), receipts


def test_v12_style_create_room_without_the_bot_in_users(bridge):
    """A bridge that follows Synapse's default room version (12 here) leaves its bot out of
    power_level_content_override.users: in v12 creators have unlimited power and Synapse
    refuses them in `users`. The same request makes a local room where the bot has 100."""
    bot = As(bridge.as_token)
    ghost = register(bot, f"example_v12_{secrets.token_hex(3)}")
    caps = bot.ok("GET", "/v3/capabilities")["capabilities"]["m.room_versions"]
    assert caps["default"] == "12", "the test stack's Synapse defaults to room version 12"
    override = {"users": {ghost: 50}, "events": {"m.room.name": 50}}

    synapse_room = bot.ok("POST", "/v3/createRoom", body={"power_level_content_override": override})["room_id"]
    assert not synapse_room.startswith("!hs_")
    local_room = bot.ok(
        "POST",
        "/v3/createRoom",
        body={
            "name": "Portal",
            "creation_content": {"m.federate": False},
            "power_level_content_override": override,
        },
    )["room_id"]
    assert local_room.startswith("!hs_")
    power = bot.ok("GET", f"/v3/rooms/{q(local_room)}/state/m.room.power_levels/")
    assert power["users"] == {bridge.bot: 100, ghost: 50}
    # The bot can do what a creator of the v12 room it expected could.
    bot.ok("PUT", f"/v3/rooms/{q(local_room)}/state/m.room.topic/", body={"topic": "bridged"})
    name = bot.ok("GET", f"/v3/rooms/{q(local_room)}/state/m.room.name/")
    assert name["name"] == "Portal"
