"""Real encryption across a new device, differential (a Synapse room against a
local room): Alice and Bob are in an encrypted room; Bob logs in a second
device; Alice (matrix-nio with vodozemac: olm and megolm done for real) sends
an encrypted message, and Bob's new device decrypts it. Alice learns of the new
device only from `device_lists.changed` in her /sync — for a local room that is
hungryserv's to tell, as Synapse does not know Alice and Bob share it.
"""

import tempfile

import pytest
from nio import AsyncClient, AsyncClientConfig, LoginResponse, MegolmEvent, RoomMessageText, SyncResponse

import stack
from client import create_room, of, q

KINDS = {"synapse": True, "local": False}


async def logged_in(user: stack.User, store: str) -> AsyncClient:
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    client = AsyncClient(stack.HS_URL, user.user_id, store_path=store, config=config)
    resp = await client.login(user.password)
    assert isinstance(resp, LoginResponse), resp
    if client.should_upload_keys:
        await client.keys_upload()
    return client


async def sync(client: AsyncClient) -> SyncResponse:
    """One sync, and the key traffic nio does after it (queries for changed
    device lists)."""
    resp = await client.sync(timeout=0, full_state=client.next_batch is None)
    assert isinstance(resp, SyncResponse), resp
    if client.should_query_keys:
        await client.keys_query()
    if client.should_upload_keys:
        await client.keys_upload()
    return resp


@pytest.mark.parametrize("kind", KINDS)
async def test_a_second_device_decrypts_a_message_sent_after_it_appeared(kind):
    alice, bob = stack.register_user(), stack.register_user()
    with tempfile.TemporaryDirectory() as store:
        alice_nio = await logged_in(alice, store)
        bob_first = await logged_in(bob, store)
        clients = [alice_nio, bob_first]
        try:
            room_id = create_room(
                of(alice),
                KINDS[kind],
                invite=[bob.user_id],
                initial_state=[
                    {
                        "type": "m.room.encryption",
                        "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                    }
                ],
            )
            of(bob).ok("POST", f"/v3/join/{q(room_id)}")
            # Alice learns Bob's first device the usual way (he joined her room).
            await sync(alice_nio)
            await sync(alice_nio)
            assert bob_first.device_id in alice_nio.device_store[bob.user_id]

            bob_second = await logged_in(bob, store)
            clients.append(bob_second)
            await sync(bob_second)
            # Alice hears of the new device only through device_lists.changed.
            for _ in range(5):
                await sync(alice_nio)
                if bob_second.device_id in alice_nio.device_store[bob.user_id]:
                    break
            assert bob_second.device_id in alice_nio.device_store[bob.user_id], (
                f"{kind} room: Alice never learned of Bob's new device"
            )

            sent = await alice_nio.room_send(
                room_id,
                "m.room.message",
                {"msgtype": "m.text", "body": f"secret in a {kind} room"},
                ignore_unverified_devices=True,
            )
            assert getattr(sent, "event_id", None), sent
            decrypted = None
            for _ in range(5):
                resp = await sync(bob_second)
                room = resp.rooms.join.get(room_id)
                events = room.timeline.events if room else []
                for event in events:
                    if isinstance(event, RoomMessageText):
                        decrypted = event.body
                    assert not isinstance(event, MegolmEvent), f"{kind} room: not decryptable: {event}"
                if decrypted:
                    break
            assert decrypted == f"secret in a {kind} room"
        finally:
            for client in clients:
                await client.close()
