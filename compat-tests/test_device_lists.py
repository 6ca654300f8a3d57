"""Device lists for users who share rooms, differential: two users who share
only a Synapse room against two who share only a local room (!hs_...). Synapse
tells the first pair of each other's device changes; hungryserv must tell the
second pair the same (`device_lists` in /sync, and /keys/changes): a new login
or a device-keys upload of one, or a new (or reset) cross-signing master key,
appears in the other's `changed`; joining a room
puts the members in each other's `changed`; leaving the only shared room puts
the leaver in `left`, and leaving one of two shared rooms does not.

The latency test measures, in one run, the time from a device change to the
other user's waiting /sync answering with it, for a Synapse room and a local
room, and prints both.
"""

import base64
import os
import threading
import time

import httpx
import pytest

import stack
from client import As, create_room, of, q

KINDS = {"synapse": True, "local": False}


def next_batch(user: As, since: str | None = None) -> str:
    params = {"timeout": "0"}
    if since:
        params["since"] = since
    return user.ok("GET", "/v3/sync", params)["next_batch"]


def device_lists(user: As, since: str) -> tuple[dict, str]:
    body = user.ok("GET", "/v3/sync", {"since": since, "timeout": "0"})
    return body.get("device_lists", {}), body["next_batch"]


def changed_within(user: As, since: str, wanted: str, seconds: float = 10) -> tuple[dict, str]:
    """Syncs from `since` until `wanted` is in `changed` or `seconds` pass; returns the
    lists seen (changed and left of every answer) and the last `next_batch`. Synapse
    announces some key changes (cross-signing uploads) from a background write after it
    answered the upload, so one sync right after the answer may come too early."""
    seen: dict = {"changed": [], "left": []}
    deadline = time.monotonic() + seconds
    while True:
        body = user.ok("GET", "/v3/sync", {"since": since, "timeout": "1000"})
        since = body["next_batch"]
        for key in ("changed", "left"):
            seen[key] += body.get("device_lists", {}).get(key, [])
        if wanted in seen["changed"] or time.monotonic() >= deadline:
            return seen, since


def settled(user: As, changing: str) -> str:
    """A token after which `changing` is not (yet again) in `changed`: two
    checks a second apart find nothing (Synapse writes some device-list
    changes in the background, after it answered)."""
    since = next_batch(user)
    clean = 0
    for _ in range(30):
        time.sleep(1.0)
        lists, after = device_lists(user, since)
        if changing in lists.get("changed", []):
            since, clean = after, 0
            continue
        clean += 1
        if clean == 2:
            return since
    raise AssertionError(f"{changing} keeps changing")


def keys_changes(user: As, since: str, to: str) -> dict:
    return user.ok("GET", "/v3/keys/changes", {"from": since, "to": to})


def login(user: stack.User) -> dict:
    resp = httpx.post(
        f"{stack.HS_URL}/_matrix/client/v3/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": user.password,
        },
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def upload_device_keys(session: dict, variant: str = "a") -> None:
    """Uploads device keys for the session's device; a new `variant` changes them."""
    user_id, device_id = session["user_id"], session["device_id"]
    keys = {
        "device_keys": {
            "user_id": user_id,
            "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                f"curve25519:{device_id}": variant * 43,
                f"ed25519:{device_id}": variant * 43,
            },
            "signatures": {user_id: {f"ed25519:{device_id}": variant * 86}},
        }
    }
    As(session["access_token"]).ok("POST", "/v3/keys/upload", body=keys)


def shared_room(kind: str) -> tuple[stack.User, stack.User, str]:
    """Alice and Bob, fresh, sharing exactly one room of `kind`."""
    alice, bob = stack.register_user(), stack.register_user()
    room_id = create_room(of(alice), KINDS[kind], invite=[bob.user_id])
    of(bob).ok("POST", f"/v3/join/{q(room_id)}")
    return alice, bob, room_id


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_login_and_key_upload_reach_the_other_member(kind):
    alice, bob, _ = shared_room(kind)
    since = next_batch(of(bob))
    session = login(alice)
    lists, after_login = device_lists(of(bob), since)
    assert alice.user_id in lists.get("changed", []), (kind, lists)
    changes = keys_changes(of(bob), since, after_login)
    assert alice.user_id in changes["changed"], (kind, changes)

    upload_device_keys(session)
    lists, after_upload = device_lists(of(bob), after_login)
    assert alice.user_id in lists.get("changed", []), (kind, lists)
    changes = keys_changes(of(bob), after_login, after_upload)
    assert alice.user_id in changes["changed"], (kind, changes)
    # Bob sees Alice's new device when he asks for her keys.
    query = of(bob).ok("POST", "/v3/keys/query", body={"device_keys": {alice.user_id: []}})
    assert session["device_id"] in query["device_keys"][alice.user_id]

    # Nothing happened since: nobody is changed (a range is not reported twice).
    lists, _ = device_lists(of(bob), after_upload)
    assert alice.user_id not in lists.get("changed", []), (kind, lists)


def upload_master_key(user: stack.User) -> None:
    """Uploads a new cross-signing master key (a reset when there is one: then
    with the password, through user-interactive auth)."""
    public = base64.b64encode(os.urandom(32)).decode().rstrip("=")
    body = {"master_key": {"user_id": user.user_id, "usage": ["master"], "keys": {f"ed25519:{public}": public}}}
    resp = of(user)("POST", "/v3/keys/device_signing/upload", body=body)
    if resp.status_code == 401:
        body["auth"] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": user.password,
            "session": resp.json()["session"],
        }
        resp = of(user)("POST", "/v3/keys/device_signing/upload", body=body)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("kind", KINDS)
def test_a_cross_signing_key_and_its_reset_reach_the_other_member(kind):
    alice, bob, _ = shared_room(kind)
    for _ in ("first master key", "reset"):
        since = settled(of(bob), alice.user_id)
        upload_master_key(alice)
        lists, to = changed_within(of(bob), since, alice.user_id)
        assert alice.user_id in lists.get("changed", []), (kind, lists)
        assert alice.user_id in keys_changes(of(bob), since, to)["changed"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_stranger_hears_nothing(kind):
    alice, _, _ = shared_room(kind)
    stranger = stack.register_user()
    since = next_batch(of(stranger))
    login(alice)
    lists, to = device_lists(of(stranger), since)
    assert alice.user_id not in lists.get("changed", []), (kind, lists)
    assert alice.user_id not in keys_changes(of(stranger), since, to)["changed"]


@pytest.mark.parametrize("kind", KINDS)
def test_joining_puts_members_in_each_others_changed(kind):
    alice, bob, room_id = shared_room(kind)
    carol = stack.register_user()
    bob_since = next_batch(of(bob))
    carol_since = next_batch(of(carol))
    of(alice).ok("POST", f"/v3/rooms/{q(room_id)}/invite", body={"user_id": carol.user_id})
    of(carol).ok("POST", f"/v3/join/{q(room_id)}")
    lists, _ = device_lists(of(bob), bob_since)
    assert carol.user_id in lists.get("changed", []), (kind, lists)
    lists, _ = device_lists(of(carol), carol_since)
    assert {alice.user_id, bob.user_id} <= set(lists.get("changed", [])), (kind, lists)


@pytest.mark.parametrize("kind", KINDS)
def test_leaving_the_only_shared_room_gives_left(kind):
    alice, bob, room_id = shared_room(kind)
    since = next_batch(of(bob))
    alice_since = next_batch(of(alice))
    of(alice).ok("POST", f"/v3/rooms/{q(room_id)}/leave", body={})
    lists, to = device_lists(of(bob), since)
    assert alice.user_id in lists.get("left", []), (kind, lists)
    assert alice.user_id not in lists.get("changed", []), (kind, lists)
    changes = keys_changes(of(bob), since, to)
    assert alice.user_id in changes["left"], (kind, changes)
    # The leaver stops tracking the members of the room she left.
    lists, _ = device_lists(of(alice), alice_since)
    assert bob.user_id in lists.get("left", []), (kind, lists)


@pytest.mark.parametrize("leaves", KINDS)
def test_leaving_one_of_two_shared_rooms_gives_no_left(leaves):
    """Alice and Bob share a Synapse room and a local room; Alice leaves one of
    them. Bob must keep tracking her: neither side's `left` may name her."""
    alice, bob = stack.register_user(), stack.register_user()
    rooms = {}
    for kind, federate in KINDS.items():
        rooms[kind] = create_room(of(alice), federate, invite=[bob.user_id])
        of(bob).ok("POST", f"/v3/join/{q(rooms[kind])}")
    since = next_batch(of(bob))
    of(alice).ok("POST", f"/v3/rooms/{q(rooms[leaves])}/leave", body={})
    lists, to = device_lists(of(bob), since)
    assert alice.user_id not in lists.get("left", []), (leaves, lists)
    assert alice.user_id not in keys_changes(of(bob), since, to).get("left", [])


def test_device_change_wakes_a_waiting_sync_for_both_kinds_of_room():
    """Alice shares a Synapse room with Bob and a local room with Carol; Bob and
    Carol wait in /sync; Alice uploads new device keys for her device. Both
    syncs must answer with Alice in `changed`. Printed: the time from sending
    the upload to each sync's answer, per round. (A login is a change too, but
    its password hash takes seconds and Synapse may announce it after it
    answered, which would blur the rounds: one login comes first, then each
    round changes that device's keys.)"""
    alice = stack.register_user()
    viewers = {}
    for kind, federate in KINDS.items():
        viewer = stack.register_user()
        room_id = create_room(of(alice), federate, invite=[viewer.user_id])
        of(viewer).ok("POST", f"/v3/join/{q(room_id)}")
        viewers[kind] = viewer
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    answered: list[float] = []
    session = login(alice)
    for round_ in range(5):
        # Tokens past the previous change (Synapse may announce it a moment later).
        tokens = {kind: settled(of(v), alice.user_id) for kind, v in viewers.items()}
        seen_at: dict[str, float] = {}

        def wait(kind: str) -> None:
            since = tokens[kind]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                body = of(viewers[kind]).ok("GET", "/v3/sync", {"since": since, "timeout": "30000"})
                if alice.user_id in body.get("device_lists", {}).get("changed", []):
                    seen_at[kind] = time.monotonic()
                    return
                since = body["next_batch"]

        threads = [threading.Thread(target=wait, args=(kind,)) for kind in KINDS]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # both syncs are waiting
        sent_at = time.monotonic()
        upload_device_keys(session, "abcde"[round_])
        answered.append((time.monotonic() - sent_at) * 1000)
        for thread in threads:
            thread.join(timeout=40)
        for kind in KINDS:
            assert kind in seen_at, f"{kind} room: the waiting sync never saw the change"
            samples[kind].append((seen_at[kind] - sent_at) * 1000)
    print("keys upload answered after: " + ", ".join(f"{v:.0f}" for v in answered) + " ms")
    for kind, values in samples.items():
        ordered = sorted(values)
        print(
            f"keys upload -> co-member's waiting sync, {kind} room: median {ordered[len(ordered) // 2]:.0f} ms; "
            + ", ".join(f"{v:.0f}" for v in values)
            + " ms"
        )
