"""The user directory for users who share a room, differential (a Synapse room against a
local room). Synapse (without `search_all_users`) finds users who share a room it knows, or a
public room; hungryserv adds the users who share a local room with the searcher. Alice must
find Bob by his display name in both kinds of private room; a stranger must not.
"""

import secrets
import time

import pytest

import stack
from client import create_room, of, q

KINDS = {"synapse": True, "local": False}


def search(user: stack.User, term: str, limit: int = 10) -> dict:
    return of(user).ok("POST", "/v3/user_directory/search", body={"search_term": term, "limit": limit})


def wait_for_value(probe, timeout: float, what: str):
    """Synapse updates its directory in the background: ask until `probe` answers."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return value


@pytest.mark.parametrize("kind", KINDS)
def test_a_room_mate_is_found_by_display_name(kind):
    alice, bob, stranger = (stack.register_user() for _ in range(3))
    name = f"Zebulon{secrets.token_hex(4)} Quist"
    of(bob).ok("PUT", f"/v3/profile/{q(bob.user_id)}/displayname", body={"displayname": name})
    room_id = create_room(of(alice), KINDS[kind], invite=[bob.user_id])
    of(bob).ok("POST", f"/v3/join/{q(room_id)}")

    found = wait_for_value(
        lambda: [r for r in search(alice, name.split()[0].lower())["results"] if r["user_id"] == bob.user_id],
        10,
        f"{kind}: Alice finds Bob",
    )
    assert found[0]["display_name"] == name, found
    both_words = search(alice, name)["results"]
    assert [r["user_id"] for r in both_words] == [bob.user_id], both_words
    assert search(stranger, name.split()[0])["results"] == [], f"{kind}: a stranger found Bob"
    assert search(alice, "nobody-matches-this")["results"] == []


def test_bad_search_is_refused_like_synapse():
    alice = stack.register_user()
    resp = of(alice)("POST", "/v3/user_directory/search", body={"limit": 3})
    # Synapse's own refusal, passed on.
    assert resp.status_code == 400 and "search_term" in resp.json()["error"], resp.text
