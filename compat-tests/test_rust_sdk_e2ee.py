"""Real end-to-end encryption with matrix-rust-sdk (its own olm/megolm and cross-signing,
vodozemac), differential: the same scenario in a Synapse room and in a local room.

Alice and Bob share one encrypted room and nothing else. Bob logs in a second device;
Alice must learn of it from her /sync (`device_lists.changed`), so that the message she
then sends is encrypted for it and the new device decrypts it. Then Bob resets his
cross-signing identity, and Alice must end with his new master key. For a local room both
are hungryserv's to announce: Synapse does not know that Alice and Bob share a room.

The client is the `e2ee` scenario of compat-tests/rust-sdk (see its e2ee.rs); it prints
the latencies from each change to Alice's store (`new_device_ms`, `identity_reset_ms`).
"""

import pytest

import stack
from client import create_room, of, q
from test_rust_sdk import run_client

ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


@pytest.fixture(scope="module")
def runs() -> dict:
    """Both kinds in one run, so their latencies are measured under the same load."""
    out = {}
    for kind in ["synapse", "local"]:
        alice, bob = stack.register_user(), stack.register_user()
        room_id = create_room(of(alice), kind == "synapse", invite=[bob.user_id], initial_state=[ENCRYPTION])
        assert room_id.startswith("!hs_") == (kind == "local"), (kind, room_id)
        of(bob).ok("POST", f"/v3/join/{q(room_id)}")
        params = {"room": room_id, "bob": {"user_id": bob.user_id, "password": bob.password}}
        try:
            out[kind] = run_client("e2ee", alice, params)
        except pytest.fail.Exception as failure:
            # One kind failing must not hide the other's result.
            out[kind] = {"failed": str(failure)}
    print(
        "latency, change → Alice's store (ms):",
        {kind: {k: r.get(k) for k in ("new_device_ms", "identity_reset_ms")} for kind, r in out.items()},
    )
    return out


def result_of(runs: dict, kind: str) -> dict:
    if "failed" in runs[kind]:
        pytest.fail(f"{kind} room: {runs[kind]['failed']}", pytrace=False)
    return runs[kind]


@pytest.mark.parametrize("kind", ["synapse", "local"])
def test_new_device_decrypts_message_sent_after_it_appeared(runs, kind):
    result = result_of(runs, kind)
    message = result["message"]
    assert result["sent_encrypted"], f"{kind}: Alice's message was not encrypted"
    assert message["body"] == "encrypted for Bob's new device", message
    assert message["encrypted"] and message["megolm_session"], f"{kind}: not decrypted from megolm: {message}"


@pytest.mark.parametrize("kind", ["synapse", "local"])
def test_identity_reset_reaches_the_other_user(runs, kind):
    result = result_of(runs, kind)
    assert result["new_master_key"] != result["first_master_key"]
