"""SIGTERM on a second hungryserv instance: in-flight requests finish, new
connections are refused, the process exits 0 within the grace period."""

import json
import re
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

import stack

GRACE_PERIOD_S = 10
LONG_POLL_MS = 4000
# No presence or account data, so nothing but a new event can end the long-poll early.
QUIET_FILTER = json.dumps({"presence": {"types": []}, "account_data": {"types": []}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


@pytest.fixture
def second_hungryserv(tmp_path):
    """hungryserv with the suite's config but its own listen port."""
    port = free_port()
    config = tmp_path / "hungryserv.toml"
    text = stack.HUNGRYSERV_CONFIG.read_text()
    text, replaced = re.subn(r'(?m)^listen = ".*"$', f'listen = "127.0.0.1:{port}"', text)
    assert replaced == 1
    text, replaced = re.subn(r"(?m)^grace_period_s = .*$", f"grace_period_s = {GRACE_PERIOD_S}", text)
    assert replaced == 1
    config.write_text(text)
    log = open(tmp_path / "hungryserv.log", "wb")
    proc = subprocess.Popen(
        [stack.HUNGRYSERV_BIN, "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return httpx.get(f"{url}/_hungryserv/health", timeout=1).status_code == 200
        except httpx.TransportError:
            assert proc.poll() is None, (tmp_path / "hungryserv.log").read_text()
            return False

    stack.wait_until(healthy, 30, "the second hungryserv to start")
    try:
        yield proc, url, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_sigterm_drains_in_flight_requests(second_hungryserv, user, tmp_path):
    proc, url, port = second_hungryserv
    params = {"filter": QUIET_FILTER, "set_presence": "offline"}
    first = httpx.get(f"{url}/_matrix/client/v3/sync", params={**params, "timeout": 0}, headers=user.auth)
    assert first.status_code == 200

    result = {}

    def long_poll():
        try:
            result["resp"] = httpx.get(
                f"{url}/_matrix/client/v3/sync",
                params={**params, "since": first.json()["next_batch"], "timeout": LONG_POLL_MS},
                headers=user.auth,
                timeout=30,
            )
        except Exception as e:  # reported by the assertions below
            result["error"] = e

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1)
    assert poller.is_alive(), f"the long-poll ended before SIGTERM: {result}"

    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    # The listener closes at once, while the long-poll is still being served.
    stack.wait_until(lambda: connection_refused(port), 2, "new connections to be refused")
    assert poller.is_alive(), "the in-flight request ended before new connections were refused"

    poller.join(timeout=30)
    assert "error" not in result, result.get("error")
    resp = result["resp"]
    assert resp.status_code == 200
    assert "next_batch" in resp.json()

    exit_code = proc.wait(timeout=GRACE_PERIOD_S + 5)
    took = time.monotonic() - sent
    print(f"\nlong-poll answered {resp.status_code}; hungryserv exited {exit_code} {took:.1f}s after SIGTERM")
    assert exit_code == 0
    assert took <= GRACE_PERIOD_S + 1, f"exited {took:.1f}s after SIGTERM"
    assert connection_refused(port)
    # Every background task (pushers, purger, pruners, push, learner, reloader) stopped
    # when signalled, none had to be aborted, and the writer finished its queue.
    log = (tmp_path / "hungryserv.log").read_text()
    assert "background tasks stopped" in log, log[-2000:]
    assert "aborted after the grace period" not in log
    assert "room writer finished" in log
