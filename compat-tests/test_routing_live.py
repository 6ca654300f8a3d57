"""Room classes changed while hungryserv runs: routing.toml reloaded on SIGHUP
and through POST /_hungryserv/admin/v1/routing/reload (server admins only),
atomically (a broken file is refused with every problem listed and the old
routing keeps working); `serve = "read_only"` refuses writes with 403 and
`serve = "off"` answers 503; `create` decides where the next createRoom goes.

hungryserv is pointed at a copy of routing.toml in the stack directory for
these tests, and back at the repository's file afterwards.
"""

import os
import re
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

import stack
from client import q

LIVE = Path(stack.STACK_DIR) / "routing-live.toml"



def routing_toml(serve: str = "local", create: str = "local", extra: str = "") -> str:
    return f"""
[[class]]
name = "bridge"
prefix = "hs_"
serve = "{serve}"
create = "{create}"
[class.match]
appservices = []
unfederated = true
all = false
{extra}"""


def restart_with_routing(path: Path) -> None:
    text = stack.HUNGRYSERV_CONFIG.read_text()
    text = re.sub(r'(?m)^routing = ".*"$', f'routing = "{path}"', text)
    stack.HUNGRYSERV_CONFIG.write_text(text)
    stack.stack_lib("hungryserv_stop")
    subprocess.run(["bash", stack.STACK_LIB, "hungryserv_start", stack.STACK_DIR, stack.HUNGRYSERV_BIN], check=True)


@pytest.fixture(scope="module", autouse=True)
def live_routing():
    LIVE.write_text(routing_toml())
    restart_with_routing(LIVE)
    try:
        yield
    finally:
        restart_with_routing(stack.REPO / "routing.toml")


def write(text: str) -> None:
    # Replace, never truncate in place: a reload must not read half a file.
    tmp = LIVE.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, LIVE)


def sighup() -> None:
    os.kill(stack.hungryserv_pid(), signal.SIGHUP)
    time.sleep(0.3)


def call(token: str, method: str, path: str, body=None, params=None) -> httpx.Response:
    return httpx.request(
        method, f"{stack.HS_URL}{path}", json=body, params=params,
        headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )


def create(token: str) -> str:
    resp = call(token, "POST", "/_matrix/client/v3/createRoom",
                {"preset": "private_chat", "room_version": "10", "creation_content": {"m.federate": False}})
    assert resp.status_code == 200, resp.text
    return resp.json()["room_id"]


def send(token: str, room_id: str) -> httpx.Response:
    return call(token, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/{secrets.token_hex(6)}",
                {"msgtype": "m.text", "body": "hi"})


def reload(token: str) -> httpx.Response:
    return call(token, "POST", "/_hungryserv/admin/v1/routing/reload", {})


@pytest.fixture
def admin() -> stack.User:
    return stack.register_user(admin=True)


def test_create_follows_the_reloaded_file(admin, user):
    assert create(user.access_token).startswith("!hs_")
    write(routing_toml(create="synapse"))
    sighup()
    assert not create(user.access_token).startswith("!hs_")
    write(routing_toml(create="local"))
    assert reload(admin.access_token).status_code == 200
    assert create(user.access_token).startswith("!hs_")


def test_reload_is_for_admins_only(user):
    resp = reload(user.access_token)
    assert resp.status_code == 403
    assert resp.json() == {"errcode": "M_FORBIDDEN", "error": "You are not a server admin"}
    resp = call(user.access_token, "GET", "/_hungryserv/admin/v1/routing")
    assert resp.status_code == 403


def test_read_only_and_off(admin, user):
    room_id = create(user.access_token)
    assert send(user.access_token, room_id).status_code == 200
    try:
        write(routing_toml(serve="read_only"))
        assert reload(admin.access_token).status_code == 200
        assert call(user.access_token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages",
                    params={"dir": "b"}).status_code == 200
        resp = send(user.access_token, room_id)
        assert (resp.status_code, resp.json()["errcode"]) == (403, "M_FORBIDDEN")
        assert "read-only" in resp.json()["error"]

        write(routing_toml(serve="off"))
        sighup()
        resp = call(user.access_token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages", params={"dir": "b"})
        assert (resp.status_code, resp.json()["errcode"]) == (503, "M_UNAVAILABLE")
    finally:
        write(routing_toml())
        assert reload(admin.access_token).status_code == 200
    assert send(user.access_token, room_id).status_code == 200


def test_broken_file_is_refused_whole(admin, user):
    room_id = create(user.access_token)
    broken = routing_toml(serve="maybe").replace('name = "bridge"', 'name = "renamed"')
    write(broken)
    resp = reload(admin.access_token)
    assert resp.status_code == 400, resp.text
    problems = resp.json()["problems"]
    assert any("serve" in p for p in problems), problems
    assert any('"bridge" is missing' in p for p in problems), problems
    sighup()  # logged, refused
    assert send(user.access_token, room_id).status_code == 200
    assert create(user.access_token).startswith("!hs_")
    write(routing_toml())
    assert reload(admin.access_token).status_code == 200


def test_routing_state_counts_rooms_and_events(admin, user):
    room_id = create(user.access_token)
    send(user.access_token, room_id)
    state = call(admin.access_token, "GET", "/_hungryserv/admin/v1/routing").json()
    [bridge] = [c for c in state["classes"] if c["name"] == "bridge"]
    assert bridge["serve"] == "local" and bridge["create"] == "local"
    assert bridge["rooms"] >= 1 and bridge["events"] >= bridge["rooms"] * 5


def test_no_request_is_dropped_across_reloads(admin, user):
    room_id = create(user.access_token)
    failures, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            resp = send(user.access_token, room_id)
            if resp.status_code != 200:
                failures.append(resp.status_code)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for create_target in ["synapse", "local"] * 3:
            write(routing_toml(create=create_target))
            sighup()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []


def test_alias_requests_obey_serve(admin, user):
    """A join, knock or directory lookup by alias is judged by the room's class like one by
    room ID: the alias route used to skip `serve`."""
    name = f"live{secrets.token_hex(4)}"
    alias = f"#{name}:{stack.SERVER_NAME}"
    resp = call(user.access_token, "POST", "/_matrix/client/v3/createRoom",
                {"preset": "public_chat", "room_version": "10", "room_alias_name": name,
                 "creation_content": {"m.federate": False}})
    assert resp.status_code == 200, resp.text
    room_id = resp.json()["room_id"]
    other = stack.register_user()
    try:
        write(routing_toml(serve="read_only"))
        assert reload(admin.access_token).status_code == 200
        for endpoint in ["join", "knock"]:
            resp = call(other.access_token, "POST", f"/_matrix/client/v3/{endpoint}/{q(alias)}", {})
            assert (resp.status_code, resp.json()["errcode"]) == (403, "M_FORBIDDEN"), (endpoint, resp.text)
            assert "read-only" in resp.json()["error"]
        # A lookup is a read.
        resp = call(other.access_token, "GET", f"/_matrix/client/v3/directory/room/{q(alias)}")
        assert (resp.status_code, resp.json()["room_id"]) == (200, room_id)

        write(routing_toml(serve="off"))
        assert reload(admin.access_token).status_code == 200
        for method, path in [("POST", f"/_matrix/client/v3/join/{q(alias)}"),
                             ("POST", f"/_matrix/client/v3/knock/{q(alias)}"),
                             ("GET", f"/_matrix/client/v3/directory/room/{q(alias)}")]:
            resp = call(other.access_token, method, path, {} if method == "POST" else None)
            assert (resp.status_code, resp.json()["errcode"]) == (503, "M_UNAVAILABLE"), (path, resp.text)
    finally:
        write(routing_toml())
        assert reload(admin.access_token).status_code == 200
    members = call(user.access_token, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members").json()
    assert other.user_id not in members["joined"]
    resp = call(other.access_token, "POST", f"/_matrix/client/v3/join/{q(alias)}", {})
    assert (resp.status_code, resp.json()["room_id"]) == (200, room_id)


def test_off_rooms_are_not_listed_until_switched_on(admin, user):
    """`serve = "off"`: the class's rooms are unavailable — left out of /sync, /joined_rooms
    and /notifications — and come back whole when the class is switched on again."""
    other = stack.register_user()
    room_id = create(user.access_token)
    assert call(user.access_token, "POST", f"/_matrix/client/v3/rooms/{q(room_id)}/invite",
                {"user_id": other.user_id}).status_code == 200
    assert call(other.access_token, "POST", f"/_matrix/client/v3/join/{q(room_id)}", {}).status_code == 200
    # The other user's client syncs, so hungryserv has its push rules.
    call(other.access_token, "GET", "/_matrix/client/v3/sync", params={"timeout": "0"})
    assert send(user.access_token, room_id).status_code == 200

    def listed(token: str) -> dict:
        sync = call(token, "GET", "/_matrix/client/v3/sync", params={"timeout": "0"}).json()
        joined = call(token, "GET", "/_matrix/client/v3/joined_rooms").json()["joined_rooms"]
        notes = call(token, "GET", "/_matrix/client/v3/notifications").json()["notifications"]
        return {
            "sync": room_id in sync.get("rooms", {}).get("join", {}),
            "joined_rooms": room_id in joined,
            "notifications": any(n["room_id"] == room_id for n in notes),
        }

    stack.wait_until(lambda: listed(other.access_token)["notifications"], 30, "the notification")
    assert listed(other.access_token) == {"sync": True, "joined_rooms": True, "notifications": True}
    try:
        write(routing_toml(serve="off"))
        assert reload(admin.access_token).status_code == 200
        assert listed(other.access_token) == {"sync": False, "joined_rooms": False, "notifications": False}
    finally:
        write(routing_toml())
        assert reload(admin.access_token).status_code == 200
    assert listed(other.access_token) == {"sync": True, "joined_rooms": True, "notifications": True}


def test_off_holds_back_appservice_delivery_of_earlier_events(admin):
    """Events written before the switch that a bridge had not received yet (it was down) are
    held back while the class is `off`, and reach the bridge, in order, once it is on again."""
    import asyncio

    from test_appservice_delivery import Api, RecordingBridge, ping_through_synapse, portal, received, register_ghost, wait_for

    reg = stack.example_appservice()
    record: list = []

    async def scenario() -> tuple[str, list[str]]:
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
            bot = Api(http, reg.as_token)
            ghost = reg.ghost(f"off_{secrets.token_hex(3)}")
            await register_ghost(bot, ghost[1:].split(":")[0])
            room = await portal(bot, [ghost])
            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            try:
                marker = await bot.send(room, "caught up", user_id=ghost)
                await wait_for(lambda: marker in {e["event_id"] for _, e in received(record, {room})}, 60,
                               "the bridge to be caught up")
            finally:
                await bridge.stop()
            record.clear()
            sent = [await bot.send(room, f"while the bridge is down {n}", user_id=ghost) for n in range(5)]
            try:
                write(routing_toml(serve="off"))
                assert (await asyncio.to_thread(reload, admin.access_token)).status_code == 200
                bridge = RecordingBridge(reg, record)
                await bridge.serve()
                try:
                    await ping_through_synapse(http, reg)
                    await asyncio.sleep(4)
                    got = {e["event_id"] for _, e in received(record, {room})}
                    assert not got & set(sent), "events of an off room reached the bridge"
                finally:
                    await bridge.stop()
            finally:
                write(routing_toml())
                assert (await asyncio.to_thread(reload, admin.access_token)).status_code == 200
            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            try:
                await ping_through_synapse(http, reg)
                await wait_for(lambda: set(sent) <= {e["event_id"] for _, e in received(record, {room})}, 60,
                               "the held events once the class is on")
            finally:
                await bridge.stop()
            return room, sent

    room, sent = asyncio.run(scenario())
    order = list(dict.fromkeys(e["event_id"] for _, e in received(record, {room}) if e["type"] == "m.room.message"))
    assert order == sent


OTHER_CLASS = """
[[class]]
name = "other"
prefix = "ot_"
serve = "{serve}"
create = "local"
[class.match]
appservices = ["{appservice}"]
unfederated = false
all = false
"""


def test_off_holds_back_only_the_off_rooms_of_an_appservice(admin):
    """A bridge with a room in each of two classes: while one class is off, the events of
    its room that the bridge had not received wait, and the other room's events keep
    flowing; once the class is on, the held events arrive, in order, each in one transaction.
    (Runs last in this file: it adds a class, which later reloads would have to keep.)"""
    import asyncio

    from bridge import Api, RecordingBridge, ping_through_synapse, portal, received, register_ghost, wait_for

    reg = stack.example_appservice()
    record: list = []

    def routing(bridge_serve: str) -> str:
        return routing_toml(serve=bridge_serve, extra=OTHER_CLASS.format(serve="local", appservice=reg.id))

    async def switch(text: str) -> None:
        write(text)
        assert (await asyncio.to_thread(reload, admin.access_token)).status_code == 200

    async def scenario() -> tuple[str, str, list[str], list[str]]:
        async with httpx.AsyncClient(base_url=stack.HS_URL, timeout=30) as http:
            bot = Api(http, reg.as_token)
            ghost = reg.ghost(f"perroom_{secrets.token_hex(3)}")
            await register_ghost(bot, ghost[1:].split(":")[0])
            held_room = await portal(bot, [ghost])
            await switch(routing("local"))
            # Not unfederated, so the first class does not match; the second names the bridge.
            flowing_room = (await bot.call("POST", "/v3/createRoom", body={"preset": "public_chat"}))["room_id"]
            assert flowing_room.startswith("!ot_"), flowing_room
            await bot.call("POST", f"/v3/join/{q(flowing_room)}", {"user_id": ghost})
            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            try:
                await ping_through_synapse(http, reg)
                markers = {await bot.send(room, "caught up", user_id=ghost) for room in (held_room, flowing_room)}
                await wait_for(lambda: markers <= {e["event_id"] for _, e in received(record, {held_room, flowing_room})},
                               60, "the bridge to be caught up")
            finally:
                await bridge.stop()
            record.clear()
            held = [await bot.send(held_room, f"while the bridge is down {n}", user_id=ghost) for n in range(3)]
            try:
                await switch(routing("off"))
                bridge = RecordingBridge(reg, record)
                await bridge.serve()
                try:
                    await ping_through_synapse(http, reg)
                    flowing = [await bot.send(flowing_room, f"while the other class is off {n}", user_id=ghost)
                               for n in range(3)]
                    await wait_for(lambda: set(flowing) <= {e["event_id"] for _, e in received(record, {flowing_room})},
                                   30, "the other room's events while one class is off")
                    got = {e["event_id"] for _, e in received(record, {held_room})}
                    assert not got & set(held), "events of an off room reached the bridge"
                finally:
                    await bridge.stop()
            finally:
                await switch(routing("local"))
            bridge = RecordingBridge(reg, record)
            await bridge.serve()
            try:
                await ping_through_synapse(http, reg)
                await wait_for(lambda: set(held) <= {e["event_id"] for _, e in received(record, {held_room})}, 60,
                               "the held events once the class is on")
                after = await bot.send(held_room, "after the switch", user_id=ghost)
                await wait_for(lambda: after in {e["event_id"] for _, e in received(record, {held_room})}, 30,
                               "a new event of the released room")
                held.append(after)
            finally:
                await bridge.stop()
            return held_room, flowing_room, held, flowing

    held_room, flowing_room, held, flowing = asyncio.run(scenario())
    for room, sent in ((held_room, held), (flowing_room, flowing)):
        pairs = list(dict.fromkeys((txn, e["event_id"]) for txn, e in received(record, {room})
                                   if e["type"] == "m.room.message"))
        order = [event_id for _, event_id in pairs]
        assert order == sent, (room, order, sent)
