"""Room summary (`/v1/room_summary/{roomId}` and the unstable
`im.nheko.summary` paths): the same fields for a Synapse room and a local room,
for a member, an invitee and an outsider, public or not."""

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
