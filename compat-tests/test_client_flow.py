"""A real client (matrix-nio) doing what a user does, entirely through hungryserv."""

import httpx
from nio import (
    AsyncClient,
    LoginResponse,
    LogoutResponse,
    MessageDirection,
    RoomCreateEvent,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

import stack

# More than one page of /messages and more than the default /sync timeline.
MESSAGES = 25


async def test_login_room_sync_paginate_logout(user):
    # Registered through hungryserv: the registration token already works.
    whoami = httpx.get(f"{stack.HS_URL}/_matrix/client/v3/account/whoami", headers=user.auth)
    assert whoami.status_code == 200 and whoami.json()["user_id"] == user.user_id

    client = AsyncClient(stack.HS_URL, user.user_id)
    try:
        login = await client.login(user.password, device_name="compat-tests")
        assert isinstance(login, LoginResponse), login

        created = await client.room_create(name="compat flow")
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id

        initial = await client.sync(timeout=0, full_state=True)
        assert isinstance(initial, SyncResponse), initial
        assert room_id in initial.rooms.join
        assert initial.rooms.join[room_id].state or initial.rooms.join[room_id].timeline.events

        bodies = [f"compat message {i}" for i in range(MESSAGES)]
        sent_ids = []
        for body in bodies:
            resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
            assert isinstance(resp, RoomSendResponse), resp
            sent_ids.append(resp.event_id)

        # Incremental sync from the initial batch: exactly our messages, in order.
        incremental = await client.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 100}}})
        assert isinstance(incremental, SyncResponse), incremental
        assert incremental.next_batch != initial.next_batch
        timeline = incremental.rooms.join[room_id].timeline
        texts = [e for e in timeline.events if isinstance(e, RoomMessageText)]
        assert [e.body for e in texts] == bodies
        assert [e.event_id for e in texts] == sent_ids
        assert all(e.sender == user.user_id for e in texts)
        assert not timeline.limited

        # Page backwards to the start of the room: every message, newest
        # first, and the room's creation as the very first event.
        seen = []
        token = incremental.next_batch
        while True:
            page = await client.room_messages(room_id, start=token, direction=MessageDirection.back, limit=10)
            assert isinstance(page, RoomMessagesResponse), page
            seen.extend(page.chunk)
            if not page.chunk or page.end is None:
                break
            token = page.end
        assert [e.body for e in seen if isinstance(e, RoomMessageText)] == bodies[::-1]
        assert isinstance(seen[-1], RoomCreateEvent)

        old_token = client.access_token
        assert isinstance(await client.logout(), LogoutResponse)
    finally:
        await client.close()

    # The logged-out token is dead for every later request through hungryserv.
    after = httpx.get(
        f"{stack.HS_URL}/_matrix/client/v3/account/whoami",
        headers={"Authorization": f"Bearer {old_token}"},
    )
    assert after.status_code == 401
    assert after.json()["errcode"] == "M_UNKNOWN_TOKEN"
