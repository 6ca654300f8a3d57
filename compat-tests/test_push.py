"""Push notifications and unread counts of local rooms, next to a Synapse room
doing the same: a push gateway receiver inside the test gets what Synapse's
HTTP pusher would send, muted rooms send nothing, and /sync's
unread_notifications match Synapse's.

Rules and pushers live in Synapse; hungryserv learns them when the user's own
requests pass through it (a /sync, a /pushers/set, a /pushrules write).
"""

import json
import queue
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import stack
from client import As, create_room, of, q, send_text

APP_ID = "org.example.compat"


class Gateway:
    """A push gateway on 127.0.0.1: records every notification; a pushkey in
    `rejected` is answered as rejected."""

    def __init__(self):
        self.received: "queue.Queue[dict]" = queue.Queue()
        self.rejected: set[str] = set()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                gateway.received.put(body["notification"])
                keys = [d["pushkey"] for d in body["notification"].get("devices", [])]
                answer = json.dumps({"rejected": [k for k in keys if k in gateway.rejected]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/_matrix/push/v1/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def notification_for(self, event_id: str, timeout: float = 20) -> dict:
        """The notification about `event_id`; others that arrive first are kept aside."""
        return self.first(lambda n: n.get("event_id") == event_id, event_id, timeout)

    def first(self, wanted, what: str, timeout: float = 20) -> dict:
        """The first notification `wanted` accepts; others that arrive first are kept aside."""
        deadline = time.monotonic() + timeout
        kept = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no push for {what} within {timeout}s; got {kept}")
                try:
                    notification = self.received.get(timeout=left)
                except queue.Empty:
                    continue
                if wanted(notification):
                    return notification
                kept.append(notification)
        finally:
            for notification in kept:
                self.received.put(notification)

    def drain(self) -> list[dict]:
        out = []
        while not self.received.empty():
            out.append(self.received.get_nowait())
        return out

    def close(self):
        self.server.shutdown()


@pytest.fixture
def gateway():
    gw = Gateway()
    yield gw
    gw.close()


def set_pusher(user: stack.User, url: str, pushkey: str, **data) -> None:
    of(user).ok(
        "POST",
        "/v3/pushers/set",
        body={
            "kind": "http",
            "app_id": APP_ID,
            "pushkey": pushkey,
            "app_display_name": "compat",
            "device_display_name": "test",
            "lang": "en",
            "data": {"url": url, **data},
        },
    )


def sync(user: stack.User, per_thread: bool = False) -> dict:
    """An initial sync. The filter is new each time: Synapse keeps an initial sync's answer
    for a while (sync_response_cache_duration) and would repeat it."""
    room = {"timeline": {"limit": 1, "unread_thread_notifications": per_thread}}
    fresh = {"account_data": {"not_types": [f"x.{secrets.token_hex(6)}"]}, "room": room}
    return of(user).ok("GET", "/v3/sync", {"timeout": 0, "filter": json.dumps(fresh)})


def joined_room(owner: stack.User, member: stack.User, federate: bool, name: str) -> str:
    room_id = create_room(of(owner), federate, name=name)
    of(owner).ok("POST", f"/v3/rooms/{q(room_id)}/invite", body={"user_id": member.user_id})
    of(member).ok("POST", f"/v3/rooms/{q(room_id)}/join", body={})
    return room_id


def mention(sender: As, room_id: str, user: stack.User) -> str:
    txn = secrets.token_hex(8)
    body = {"msgtype": "m.text", "body": f"hey {user.user_id}", "m.mentions": {"user_ids": [user.user_id]}}
    return sender.ok("PUT", f"/v3/rooms/{q(room_id)}/send/m.room.message/{txn}", body=body)["event_id"]


def read_up_to(user: stack.User, room_id: str, event_id: str, **body) -> None:
    of(user).ok("POST", f"/v3/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", body=body)


def comparable(notification: dict, room_id: str, event_id: str) -> dict:
    """The notification with what must differ between the two rooms replaced."""
    n = json.loads(json.dumps(notification).replace(room_id, "ROOM").replace(event_id, "EVENT"))
    for device in n.get("devices", []):
        # When each server first saw the pusher: the same moment, give or take.
        assert abs(device.pop("pushkey_ts") - time.time()) < 120
    return n


def test_a_mention_in_a_local_room_pushes_what_synapse_pushes(gateway):
    alice, bob = stack.register_user(), stack.register_user()
    pushkey = secrets.token_hex(8)
    set_pusher(alice, gateway.url, pushkey)
    sync(alice)

    pushes = {}
    for federate in (True, False):
        # The invite pushes (`.m.rule.invite_for_me`), then the mention. Each room is read
        # before the other one's turn, so both badges count one room.
        room_id = create_room(of(bob), federate, name="push test")
        of(bob).ok("POST", f"/v3/rooms/{q(room_id)}/invite", body={"user_id": alice.user_id})
        invite_push = gateway.first(lambda n: n.get("room_id") == room_id and n.get("type") == "m.room.member", "the invite")
        of(alice).ok("POST", f"/v3/rooms/{q(room_id)}/join", body={})
        event_id = mention(of(bob), room_id, alice)
        pushed = gateway.notification_for(event_id)
        invite_push = comparable(invite_push, room_id, invite_push["event_id"])
        pushes[federate] = (comparable(pushed, room_id, event_id), invite_push)
        read_up_to(alice, room_id, event_id)

    synapse_push, local_push = pushes[True], pushes[False]
    assert local_push[0] == synapse_push[0]
    assert local_push[0]["counts"] == {"unread": 1}
    assert local_push[0]["prio"] == "high"
    assert local_push[0]["devices"][0]["tweaks"].get("highlight") is True
    assert local_push[0]["devices"][0]["data"] == {}
    assert local_push[1] == synapse_push[1]
    assert local_push[1]["membership"] == "invite" and local_push[1]["user_is_target"] is True


def test_reading_a_local_room_pushes_the_new_badge_as_synapse_does(gateway):
    alice, bob = stack.register_user(), stack.register_user()
    set_pusher(alice, gateway.url, secrets.token_hex(8))
    sync(alice)
    badges = {}
    for federate in (True, False):
        room_id = joined_room(bob, alice, federate, "badge test")
        event_id = mention(of(bob), room_id, alice)
        assert gateway.notification_for(event_id)["counts"] == {"unread": 1}
        gateway.drain()
        read_up_to(alice, room_id, event_id)
        badge = gateway.first(lambda n: n.get("id") == "", "the badge update after the receipt")
        for device in badge["devices"]:
            assert abs(device.pop("pushkey_ts") - time.time()) < 120
        badges[federate] = badge
    assert badges[False] == badges[True]
    assert badges[False]["counts"] == {"unread": 0}, badges[False]


def test_event_id_only_pushers_get_ids_and_counts(gateway):
    alice, bob = stack.register_user(), stack.register_user()
    set_pusher(alice, gateway.url, secrets.token_hex(8), format="event_id_only")
    pushes = {}
    for federate in (True, False):
        room_id = joined_room(bob, alice, federate, "ids only")
        gateway.drain()
        event_id = send_text(of(bob), room_id, "plain")
        pushes[federate] = comparable(gateway.notification_for(event_id), room_id, event_id)
        read_up_to(alice, room_id, event_id)
    assert pushes[False] == pushes[True]
    assert set(pushes[False]) == {"event_id", "room_id", "counts", "prio", "devices"}


def test_muted_local_rooms_push_nothing(gateway):
    alice, bob = stack.register_user(), stack.register_user()
    set_pusher(alice, gateway.url, secrets.token_hex(8))
    beeper_muted = joined_room(bob, alice, False, "muted by account data")
    rule_muted = {federate: joined_room(bob, alice, federate, "muted by rule") for federate in (True, False)}
    loud = joined_room(bob, alice, False, "not muted")

    mute = f"/v3/user/{q(alice.user_id)}/rooms/{q(beeper_muted)}/account_data/com.beeper.mute"
    resp = of(alice)("PUT", mute, body={"muted_until": -1})
    if resp.status_code == 404 or resp.json().get("errcode") == "M_UNRECOGNIZED":
        pytest.skip(f"room account data of local rooms is not served yet: {resp.status_code} {resp.text}")
    assert resp.status_code == 200, resp.text
    for room_id in rule_muted.values():
        of(alice).ok("PUT", f"/v3/pushrules/global/room/{q(room_id)}", body={"actions": []})
    gateway.drain()

    silent = [
        send_text(of(bob), beeper_muted, "muted plain"),
        mention(of(bob), beeper_muted, alice),
        send_text(of(bob), rule_muted[True], "muted by rule on Synapse"),
        send_text(of(bob), rule_muted[False], "muted by rule here"),
    ]
    # Pushes of local rooms go out in stream order: once this one arrives, the muted ones
    # were passed over. Synapse's pusher is given the same moment.
    sentinel = send_text(of(bob), loud, "sentinel")
    gateway.notification_for(sentinel)
    time.sleep(1)
    leaked = [n for n in gateway.drain() if n.get("event_id") in silent]
    assert leaked == []


def pushkeys_at_synapse(user: stack.User) -> list[str]:
    """The user's pushers as Synapse itself lists them (not through hungryserv)."""
    with httpx.Client(base_url=stack.SYNAPSE_URL, timeout=30) as client:
        listed = client.get("/_matrix/client/v3/pushers", headers=user.auth).raise_for_status()
    return [p["pushkey"] for p in listed.json()["pushers"]]


def test_a_rejected_pushkey_is_dropped_and_deleted_at_synapse(gateway):
    alice, bob = stack.register_user(), stack.register_user()
    pushkey = secrets.token_hex(8)
    gateway.rejected.add(pushkey)
    room_id = joined_room(bob, alice, False, "rejecting gateway")
    set_pusher(alice, gateway.url, pushkey)
    gateway.notification_for(send_text(of(bob), room_id, "first"))
    second = send_text(of(bob), room_id, "second")
    time.sleep(2)
    assert [n for n in gateway.drain() if n.get("event_id") == second] == []
    # Synapse deletes a pusher whose pushkey its gateway rejected; for a local room's push,
    # hungryserv does it with the user's token on their next sync.
    assert pushkey in pushkeys_at_synapse(alice)
    deadline = time.monotonic() + 20
    while pushkey in pushkeys_at_synapse(alice):
        assert time.monotonic() < deadline, "the rejected pusher is still at Synapse"
        sync(alice)
        time.sleep(0.2)


def unread(body: dict, room_id: str) -> dict:
    room = body["rooms"]["join"][room_id]
    return {k: room.get(k) for k in ("unread_notifications", "unread_thread_notifications")}


def unread_steps(alice: stack.User, bob: stack.User, federate: bool) -> list:
    """The unread counts alice's syncs show along one scenario in a new room of the kind."""
    room_id = joined_room(bob, alice, federate, "counting")
    steps = []
    first = send_text(of(bob), room_id, "one")
    send_text(of(bob), room_id, "two")
    mention(of(bob), room_id, alice)
    send_text(of(alice), room_id, "my own words never count")
    steps.append(unread(sync(alice), room_id))
    # A thread reply: counted in the room, or apart with per-thread counts.
    txn = secrets.token_hex(8)
    reply = {"msgtype": "m.text", "body": "in a thread", "m.relates_to": {"rel_type": "m.thread", "event_id": first}}
    of(bob).ok("PUT", f"/v3/rooms/{q(room_id)}/send/m.room.message/{txn}", body=reply)
    steps.append(unread(sync(alice), room_id))
    steps.append(unread(sync(alice, per_thread=True), room_id))
    # A receipt on the main timeline resets it; the thread keeps its count.
    last = send_text(of(bob), room_id, "three")
    read_up_to(alice, room_id, last, thread_id="main")
    steps.append(unread(sync(alice, per_thread=True), room_id))
    # An unthreaded receipt resets everything.
    read_up_to(alice, room_id, last)
    steps.append(unread(sync(alice, per_thread=True), room_id))
    return json.loads(json.dumps(steps).replace(first, "ROOT"))


def test_unread_counts_through_sync_match_a_synapse_room():
    alice, bob = stack.register_user(), stack.register_user()
    local = unread_steps(alice, bob, False)
    # Synapse's own count was once one high in CI (4 and 5 where ours, and every earlier run
    # of both, said 3 and 4; it agreed again after the receipts); its counts go through a
    # summary table rotated in the background. The Synapse room is then run once more in a
    # new room: a wrong local count still fails, as Synapse repeats the right one.
    synapse = unread_steps(alice, bob, True)
    if synapse != local:
        synapse = unread_steps(alice, bob, True)
    assert local == synapse
    assert local[0]["unread_notifications"] == {"notification_count": 3, "highlight_count": 1}
    assert local[-1]["unread_notifications"] == {"notification_count": 0, "highlight_count": 0}


def test_batch_send_without_notifications_pushes_and_counts_nothing(gateway):
    bridge = stack.example_appservice()
    bot = As(bridge.as_token)
    alice = stack.register_user()
    set_pusher(alice, gateway.url, secrets.token_hex(8))
    sync(alice)
    ghost_local = f"example_push_{secrets.token_hex(3)}"
    resp = bot("POST", "/v3/register", body={"type": "m.login.application_service", "username": ghost_local})
    assert resp.status_code == 200, resp.text
    ghost = f"@{ghost_local}:{stack.SERVER_NAME}"
    room_id = create_room(bot, False, invite=[ghost, alice.user_id])
    As(bridge.as_token, ghost).ok("POST", f"/v3/rooms/{q(room_id)}/join", body={})
    of(alice).ok("POST", f"/v3/rooms/{q(room_id)}/join", body={})
    gateway.drain()
    events = [
        {"type": "m.room.message", "sender": ghost, "origin_server_ts": 1_700_000_000_000 + n,
         "content": {"msgtype": "m.text", "body": f"bridged {n}"}}
        for n in range(3)
    ]
    path = f"/unstable/com.beeper.backfill/rooms/{q(room_id)}/batch_send"
    bot.ok("POST", path, body={"forward": True, "send_notification": False, "events": events})
    sentinel = send_text(As(bridge.as_token, ghost), room_id, "live")
    gateway.notification_for(sentinel)
    time.sleep(1)
    assert [n["event_id"] for n in gateway.drain()] == []
    assert unread(sync(alice), room_id)["unread_notifications"] == {"notification_count": 1, "highlight_count": 0}


def test_notifications_merge_local_rooms_with_synapses():
    alice, bob = stack.register_user(), stack.register_user()
    rooms = {federate: joined_room(bob, alice, federate, "listed") for federate in (True, False)}
    sync(alice)
    sent = {}
    for federate, room_id in rooms.items():
        sent[federate] = [send_text(of(bob), room_id, "plain"), mention(of(bob), room_id, alice)]
        time.sleep(0.05)
    read_up_to(alice, rooms[False], sent[False][0])
    read_up_to(alice, rooms[True], sent[True][0])

    def entries(**params) -> dict:
        page = of(alice).ok("GET", "/v3/notifications", params)
        return {n["event"]["event_id"]: n for n in page["notifications"]}

    everything = entries()
    for federate in (True, False):
        plain, mentioned = (everything[e] for e in sent[federate])
        assert plain["read"] is True and mentioned["read"] is False
        assert plain["room_id"] == rooms[federate]
    local, theirs = everything[sent[False][1]], everything[sent[True][1]]
    assert sorted(local) == sorted(theirs)
    assert local["actions"] == theirs["actions"]
    assert local["event"]["content"] == theirs["event"]["content"]
    highlights = entries(only="highlight")
    assert set(highlights) >= {sent[False][1], sent[True][1]}
    assert sent[False][0] not in highlights and sent[True][0] not in highlights

    # Page by page, every entry exactly once, newest first.
    seen, token = [], None
    for _ in range(20):
        page = of(alice).ok("GET", "/v3/notifications", {"limit": 1} | ({"from": token} if token else {}))
        seen += [n["event"]["event_id"] for n in page["notifications"]]
        token = page.get("next_token")
        if not token:
            break
    assert sorted(seen) == sorted(everything) and len(seen) == len(set(seen))


def test_ignored_users_push_nothing(gateway):
    """Issue 22: a message from a user the recipient ignores pushes nothing, in a Synapse
    room and in a local room alike; the list is learned when its PUT passes through."""
    alice, bob, carol = stack.register_user(), stack.register_user(), stack.register_user()
    set_pusher(alice, gateway.url, secrets.token_hex(8))
    rooms = {federate: joined_room(bob, alice, federate, "ignoring bob") for federate in (True, False)}
    loud = joined_room(carol, alice, False, "not ignored")
    of(alice).ok("PUT", f"/v3/user/{q(alice.user_id)}/account_data/m.ignored_user_list",
                 body={"ignored_users": {bob.user_id: {}}})
    gateway.drain()
    silent = [mention(of(bob), room_id, alice) for room_id in rooms.values()]
    sentinel = send_text(of(carol), loud, "sentinel")
    gateway.notification_for(sentinel)
    time.sleep(1)
    leaked = [n for n in gateway.drain() if n.get("event_id") in silent]
    assert leaked == []
