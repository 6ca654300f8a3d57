"""The running stack under test, as compat-tests/run describes it in the
environment, and the few ways the tests talk to it beyond a Matrix client:
byte-exact raw HTTP, shared-secret registration, stopping and starting Synapse.
"""

import hashlib
import hmac
import http.client
import os
import secrets
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

HS_URL = os.environ["HS_URL"]
SYNAPSE_URL = os.environ["SYNAPSE_URL"]
SERVER_NAME = os.environ["SERVER_NAME"]
SYNAPSE_CONFIG = Path(os.environ["SYNAPSE_CONFIG"])
SYNAPSE_LOG = Path(os.environ["SYNAPSE_LOG"])
STACK_DIR = os.environ["STACK_DIR"]
STACK_LIB = os.environ["STACK_LIB"]
HUNGRYSERV_BIN = os.environ["HUNGRYSERV_BIN"]
HUNGRYSERV_CONFIG = Path(os.environ["HUNGRYSERV_CONFIG"])
HUNGRYSERV_PIDFILE = Path(os.environ["HUNGRYSERV_PIDFILE"])
REPO = Path(__file__).resolve().parent.parent

# Headers that belong to one connection, not to the response (RFC 9110 7.6.1),
# and Date, which differs between any two responses.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "date",
}


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def end_to_end_headers(self) -> list[tuple[str, str]]:
        """Headers a proxy must pass through unchanged, in a comparable form."""
        return sorted((k.lower(), v) for k, v in self.headers if k.lower() not in HOP_BY_HOP)


def raw_request(
    base_url: str, method: str, target: str, headers: dict | None = None, body: bytes | None = None
) -> RawResponse:
    """Send `target` (path and query) exactly as given: http.client does not
    re-encode it, unlike the higher-level clients."""
    url = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return RawResponse(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def hungryserv_pid() -> int:
    return int(HUNGRYSERV_PIDFILE.read_text().split()[0])


@dataclass
class User:
    user_id: str
    password: str
    access_token: str

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.access_token}"}


def register_user(base_url: str = HS_URL, admin: bool = False) -> User:
    """Create a user with Synapse's shared-secret admin registration API
    (nonce, then HMAC-SHA1 over nonce, user, password and admin flag)."""
    shared_secret = yaml.safe_load(SYNAPSE_CONFIG.read_text())["registration_shared_secret"]
    localpart = f"compat_{secrets.token_hex(6)}"
    password = secrets.token_hex(12)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        nonce = client.get("/_synapse/admin/v1/register").raise_for_status().json()["nonce"]
        mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(
            b"\x00".join(
                [nonce.encode(), localpart.encode(), password.encode(), b"admin" if admin else b"notadmin"]
            )
        )
        resp = client.post(
            "/_synapse/admin/v1/register",
            json={
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        ).raise_for_status()
    body = resp.json()
    return User(body["user_id"], password, body["access_token"])


@dataclass
class AppService:
    """One of the example bridges' registrations, as synapse_configure writes
    them (appservice-example.yaml, appservice-other.yaml)."""

    id: str
    as_token: str
    hs_token: str
    bot: str
    # An exclusive user namespace: "@example_.*:SERVER_NAME".
    ghost_prefix: str
    # Where transactions are pushed: nothing listens unless a test starts a bridge.
    port: int

    def ghost(self, localpart_suffix: str) -> str:
        return f"{self.ghost_prefix}{localpart_suffix}:{SERVER_NAME}"


def _appservice(file: str, ghost_prefix: str) -> AppService:
    reg = yaml.safe_load((Path(STACK_DIR) / "synapse" / file).read_text())
    return AppService(
        reg["id"],
        reg["as_token"],
        reg["hs_token"],
        f"@{reg['sender_localpart']}:{SERVER_NAME}",
        ghost_prefix,
        urllib.parse.urlsplit(reg["url"]).port,
    )


def relay_appservice() -> AppService:
    """The bridge in relay mode: Synapse's registration points at hungryserv; the bridge
    listens on STACK_AS3_PORT (hungryserv.toml [[appservice.relay]])."""
    reg = _appservice("appservice-relay.yaml", "@relay_")
    env = dict(
        line.split("=", 1) for line in (Path(STACK_DIR) / "stack.env").read_text().splitlines() if "=" in line
    )
    reg.port = int(env["STACK_AS3_PORT"])
    return reg


def example_appservice() -> AppService:
    return _appservice("appservice-example.yaml", "@example_")


def other_appservice() -> AppService:
    return _appservice("appservice-other.yaml", "@other_")


def stack_lib(function: str) -> None:
    """Run one function of deploy/local/lib.sh against this stack."""
    subprocess.run(["bash", STACK_LIB, function, STACK_DIR], check=True)


def restart_hungryserv_after_sigkill() -> None:
    """SIGKILL hungryserv (no shutdown of any kind) and start it again."""
    pid = hungryserv_pid()
    os.kill(pid, 9)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10, "hungryserv to die")
    subprocess.run(["bash", STACK_LIB, "hungryserv_start", STACK_DIR, HUNGRYSERV_BIN], check=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
