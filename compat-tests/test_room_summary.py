"""Room summary (`/v1/room_summary/{roomId}` and the unstable
`im.nheko.summary` paths): the same fields for a Synapse room and a local room,
for a member, an invitee and an outsider, public or not."""

import secrets

import httpx

from client import create_room, of, q

import stack

PATHS = [
    "/v1/room_summary/{}",
    "/unstable/im.nheko.summary/summary/{}",
    "/unstable/im.nheko.summary/rooms/{}/summary",
]


def test_room_summary_reads_the_same_in_both_worlds():
    owner, invitee, outsider = (stack.register_user() for _ in range(3))
    answers = []
    for federate in (True, False):
        private = create_room(of(owner), federate, name="Private place", topic="secrets", invite=[invitee.user_id])
        public = create_room(
            of(owner),
            federate,
            preset="public_chat",
            name="Town square",
            initial_state=[
                {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}
            ],
        )
        seen = {}
        for label, room_id in (("private", private), ("public", public)):
            for who_label, who in (("owner", owner), ("invitee", invitee), ("outsider", outsider)):
                for path in PATHS:
                    resp = of(who)("GET", path.format(q(room_id)))
                    body = resp.json()
                    if resp.status_code == 200:
                        assert body.pop("room_id") == room_id
                    seen[(label, who_label, path)] = (resp.status_code, body.get("errcode"), body)
        answers.append(seen)
    assert answers[1] == answers[0]
    owner_view = answers[0][("private", "owner", PATHS[0])][2]
    assert owner_view["name"] == "Private place" and owner_view["membership"] == "join"
    assert answers[0][("private", "outsider", PATHS[0])][0] == 404
    assert answers[0][("public", "outsider", PATHS[0])][2]["membership"] == "leave"


def test_room_summary_without_a_token_and_by_alias():
    """Without an access token a public room's summary is shown (without
    `membership`) and a private one is 404; a room named by its alias gets
    the same summary as by its ID, with and without a token."""
    owner = stack.register_user()
    server = owner.user_id.split(":", 1)[1]
    answers = []
    for federate in (True, False):
        private = create_room(of(owner), federate, name="Hidden place")
        public = create_room(of(owner), federate, preset="public_chat", name="Open place")
        alias = f"#summary_{secrets.token_hex(4)}:{server}"
        of(owner).ok("PUT", f"/v3/directory/room/{q(alias)}", body={"room_id": public})
        seen = {}
        for label, room, room_id in (("private", private, private), ("public", public, public), ("alias", alias, public)):
            for path in PATHS[:2]:
                for who in ("anonymous", "owner"):
                    headers = owner.auth if who == "owner" else {}
                    resp = httpx.get(f"{stack.HS_URL}/_matrix/client{path.format(q(room))}", headers=headers, timeout=30)
                    body = resp.json()
                    if resp.status_code == 200:
                        assert body.pop("room_id") == room_id
                    seen[(label, path, who)] = (resp.status_code, body.get("errcode"), body)
        answers.append(seen)
    assert answers[1] == answers[0]
    anonymous = answers[0][("public", PATHS[0], "anonymous")]
    assert anonymous[0] == 200 and anonymous[2]["name"] == "Open place" and "membership" not in anonymous[2]
    assert answers[0][("private", PATHS[0], "anonymous")][0] == 404
    assert answers[0][("alias", PATHS[0], "owner")][2]["membership"] == "join"
