"""A real browser: headless Chromium (Debian's `chromium`) opens a page served
from another origin than hungryserv (a static server on its own port) that
runs matrix-js-sdk 37, bundled for the browser with esbuild. The page logs in
with a password, syncs, shows a room's messages in the DOM and sends one.

Every request the page makes is cross-origin, so the browser lets the page
read an answer only if it carries CORS headers, and sends a preflight before
each request with an Authorization header: without hungryserv's CORS layer
(src/cors.rs) the merged /versions and /sync are refused and the page never
gets past its initial sync.

The page and its driver are compat-tests/js/browser/page.mjs and
compat-tests/js/browser_run.mjs (playwright-core). The screenshot of each run
is written to $COMPAT_ARTIFACTS, or compat-tests/artifacts/ (ignored by git).
"""

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import httpx
import pytest

import stack

RUNNER = stack.REPO / "compat-tests" / "js" / "browser_run.mjs"
NODE_MODULES = Path(os.environ.get("COMPAT_JS_NODE_MODULES") or RUNNER.parent / "node_modules")
ARTIFACTS = Path(os.environ.get("COMPAT_ARTIFACTS") or stack.REPO / "compat-tests" / "artifacts")
CHROMIUM = os.environ.get("COMPAT_CHROMIUM", "/usr/bin/chromium")

SEEDED = 5
# The page's run, from login to its sent message coming back through /sync.
PAGE_TIMEOUT_MS = 90_000
# The whole runner: bundling, Chromium's start and the page's run.
RUNNER_TIMEOUT_S = PAGE_TIMEOUT_MS / 1000 + 120


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def call(http: httpx.Client, method: str, path: str, token: str, body: dict | None = None) -> dict:
    resp = http.request(method, "/_matrix/client/v3" + path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
    return resp.json()


def prepare(kind: str) -> dict:
    """A room of `kind` made by the example bridge's bot, with the browser's
    user and another user joined and SEEDED messages in it."""
    bot = stack.example_appservice()
    user, other = stack.register_user(), stack.register_user()
    with httpx.Client(base_url=stack.HS_URL, timeout=30) as http:
        room_id = call(
            http,
            "POST",
            "/createRoom",
            bot.as_token,
            {
                "preset": "private_chat",
                "name": f"Browser test, {kind} room",
                "invite": [user.user_id, other.user_id],
                "creation_content": {"m.federate": kind == "synapse"},
                "room_version": "10",
            },
        )["room_id"]
        assert room_id.startswith("!hs_") == (kind == "local"), room_id
        for who in (user, other):
            call(http, "POST", f"/join/{q(room_id)}", who.access_token, {})
        seeded = []
        for seq in range(SEEDED):
            sender, token = [(bot.bot, bot.as_token), (other.user_id, other.access_token)][seq % 2]
            body = f"{kind} message {seq} from {sender}"
            event_id = call(
                http,
                "PUT",
                f"/rooms/{q(room_id)}/send/m.room.message/{secrets.token_hex(8)}",
                token,
                {"msgtype": "m.text", "body": body},
            )["event_id"]
            seeded.append({"event_id": event_id, "sender": sender, "body": body})
    return {"room_id": room_id, "user": user, "other": other, "seeded": seeded}


def run_page(kind: str, setup: dict, send_body: str) -> dict:
    assert NODE_MODULES.is_dir(), f"no {NODE_MODULES}: run compat-tests/run, or npm ci in {RUNNER.parent}"
    assert shutil.which(CHROMIUM), f"no {CHROMIUM}: compat-tests/run installs Debian's chromium"
    screenshot = ARTIFACTS / f"browser-{kind}-room.png"
    screenshot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="hungryserv-browser-") as workdir:
        config = {
            "workdir": workdir,
            "screenshot": str(screenshot),
            "timeout_ms": PAGE_TIMEOUT_MS,
            "page": {
                "homeserver": stack.HS_URL,
                "user": setup["user"].user_id,
                "password": setup["user"].password,
                "room_id": setup["room_id"],
                "expect": [m["body"] for m in setup["seeded"]],
                "send_body": send_body,
            },
        }
        proc = subprocess.run(
            ["node", str(RUNNER)],
            input=json.dumps(config),
            capture_output=True,
            text=True,
            timeout=RUNNER_TIMEOUT_S,
            env={**os.environ, "COMPAT_JS_NODE_MODULES": str(NODE_MODULES), "COMPAT_CHROMIUM": CHROMIUM},
        )
    assert proc.returncode == 0 and proc.stdout, f"browser_run.mjs exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout)
    print(f"screenshot of the {kind} room's page: {screenshot}")
    return result


@pytest.mark.parametrize("kind", ["local", "synapse"])
def test_browser_client_shows_room_and_sends(kind):
    setup = prepare(kind)
    send_body = f"hello from Chromium ({secrets.token_hex(4)})"
    result = run_page(kind, setup, send_body)
    hs_origin = urllib.parse.urlsplit(stack.HS_URL)
    assert urllib.parse.urlsplit(result["origin"]).netloc != hs_origin.netloc, "the page must be cross-origin"
    assert result["state"] == "done", (
        f"the page ended in {result['state']!r}: {result.get('status')}\n"
        f"failed requests: {result['failed']}\nconsole: {result['console'][-20:]}"
    )

    # What the page shows: the seeded messages in order, then the one it sent,
    # each as the server's copy (not a local echo) with the server's event ID.
    user = setup["user"].user_id
    shown = [{k: m[k] for k in ("event_id", "sender", "body")} for m in result["messages"] if not m["pending"]]
    assert shown == setup["seeded"] + [{"event_id": result["sent"], "sender": user, "body": send_body}], shown
    assert not [m for m in result["messages"] if m["pending"]], "a message stayed a local echo"

    # The sent message is in the room for everyone: the other member's /messages.
    with httpx.Client(base_url=stack.HS_URL, timeout=30) as http:
        chunk = call(
            http,
            "GET",
            f"/rooms/{q(setup['room_id'])}/messages?dir=b&limit=10",
            setup["other"].access_token,
        )["chunk"]
    latest = next(e for e in chunk if e["type"] == "m.room.message")
    assert (latest["event_id"], latest["sender"], latest["content"]["body"]) == (result["sent"], user, send_body)

    png = Path(result["screenshot"]).read_bytes()
    assert png.startswith(b"\x89PNG"), "the screenshot is not a PNG"
