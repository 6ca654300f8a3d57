"""Room deletion benchmark: a local room and a Synapse room with N events each are
deleted with Synapse's v2 admin API through hungryserv; reports the time until the
room is invisible to its member (a request about it is refused) and until the
deletion's status is `complete` (history purged), polled every few milliseconds.

Usage (against a running stack, e.g. the one /tmp/quickstack.sh or deploy/local/up makes):
    HS_URL=http://127.0.0.1:PORT SYNAPSE_CONFIG=.../homeserver.yaml \\
        python deploy/local/delete_bench.py [EVENTS] [--local-only]
Needs httpx and pyyaml (the compat venv has both).
"""

import concurrent.futures
import hashlib
import hmac
import os
import secrets
import sys
import time
import urllib.parse

import httpx
import yaml

HS = os.environ["HS_URL"]
SECRET = yaml.safe_load(open(os.environ["SYNAPSE_CONFIG"]))["registration_shared_secret"]
POLL = 0.002
TIMEOUT = 1800


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def register(client: httpx.Client, admin: bool) -> str:
    nonce = client.get("/_synapse/admin/v1/register").raise_for_status().json()["nonce"]
    user, password = f"bench_{secrets.token_hex(5)}", secrets.token_hex(10)
    mac = hmac.new(SECRET.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), user.encode(), password.encode(), b"admin" if admin else b"notadmin"]))
    body = {"nonce": nonce, "username": user, "password": password, "admin": admin, "mac": mac.hexdigest()}
    return client.post("/_synapse/admin/v1/register", json=body).raise_for_status().json()["access_token"]


def fill(token: str, room_id: str, events: int) -> float:
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"}

    def send_range(start: int, end: int) -> None:
        with httpx.Client(base_url=HS, headers=headers, timeout=120) as c:
            for i in range(start, end):
                path = f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/b{i}"
                r = c.put(path, json={"msgtype": "m.text", "body": f"message {i}"})
                if r.status_code == 429:
                    time.sleep(float(r.json().get("retry_after_ms", 100)) / 1000)
                    r = c.put(path, json={"msgtype": "m.text", "body": f"message {i}"})
                r.raise_for_status()

    workers = 8
    step = (events + workers - 1) // workers
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda w: send_range(w * step, min(events, (w + 1) * step)), range(workers)))
    return time.monotonic() - started


def run(kind: str, events: int) -> dict:
    with httpx.Client(base_url=HS, timeout=120) as client:
        admin = register(client, admin=True)
        # The room's creator sends; Synapse rate-limits non-admins, so the admin creates.
        auth = {"Authorization": f"Bearer {admin}"}
        room_id = client.post(
            "/_matrix/client/v3/createRoom",
            headers=auth,
            json={"preset": "private_chat", "room_version": "10", "creation_content": {"m.federate": kind == "synapse"}},
        ).raise_for_status().json()["room_id"]
        assert room_id.startswith("!hs_") == (kind == "local"), room_id
        fill_s = fill(admin, room_id, events)
        started = time.monotonic()
        resp = client.request("DELETE", f"/_synapse/admin/v2/rooms/{q(room_id)}", headers=auth, json={})
        answered = time.monotonic() - started
        delete_id = resp.raise_for_status().json()["delete_id"]
        invisible = complete = None
        deadline = started + TIMEOUT
        while (invisible is None or complete is None) and time.monotonic() < deadline:
            if invisible is None:
                r = client.get(f"/_matrix/client/v3/rooms/{q(room_id)}/state/m.room.create", headers=auth)
                if r.status_code in (403, 404):
                    invisible = time.monotonic() - started
            if complete is None:
                r = client.get(f"/_synapse/admin/v2/rooms/delete_status/{delete_id}", headers=auth)
                if r.status_code == 200 and r.json()["status"] in ("complete", "failed"):
                    assert r.json()["status"] == "complete", r.text
                    complete = time.monotonic() - started
            time.sleep(POLL)
    return {
        "kind": kind,
        "events": events,
        "fill_s": round(fill_s, 1),
        "delete_answered_ms": round(answered * 1000, 1),
        "invisible_ms": None if invisible is None else round(invisible * 1000, 1),
        "purged_ms": None if complete is None else round(complete * 1000, 1),
    }


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    events = int(args[0]) if args else 10_000
    kinds = ["local"] if "--local-only" in sys.argv else ["local", "synapse"]
    for kind in kinds:
        print(run(kind, events), flush=True)


if __name__ == "__main__":
    main()
