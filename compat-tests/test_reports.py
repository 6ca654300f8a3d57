"""Abuse reports: `/rooms/{id}/report/{eventId}` and `/rooms/{id}/report`
answer the same in a Synapse room and a local room, and Synapse's admin list
`/_synapse/admin/v1/event_reports` shows both worlds' reports in one order,
paged by `from`/`next_token`."""

import time

import httpx

from client import As, failure, of, q, send_text, two_rooms

import stack


def admin_get(admin: stack.User, params: dict) -> httpx.Response:
    return httpx.get(
        f"{stack.HS_URL}/_synapse/admin/v1/event_reports", params=params, headers=admin.auth, timeout=30
    )


def test_reports_answer_the_same_and_are_listed_together():
    owner, reporter = stack.register_user(), stack.register_user()
    outsider = stack.register_user()
    admin = stack.register_user(admin=True)
    answers = []
    reported = []
    for room_id in two_rooms(owner, reporter):
        event_id = send_text(of(owner), room_id, "something rude")
        report = f"/v3/rooms/{q(room_id)}/report/{q(event_id)}"

        def status(who: As, path: str, body: dict) -> tuple:
            resp = who("POST", path, None, body)
            return failure(resp) if resp.status_code != 200 else (200, resp.json())

        answers.append(
            {
                "event": status(of(reporter), report, {"reason": "spam", "score": -100}),
                "unknown_event": status(of(reporter), f"/v3/rooms/{q(room_id)}/report/%24nope", {"reason": "x"}),
                "outsider": status(of(outsider), report, {"reason": "x"}),
                "bad_reason": status(of(reporter), report, {"reason": 5}),
                "bad_score": status(of(reporter), report, {"score": "high"}),
                "room": status(of(reporter), f"/v3/rooms/{q(room_id)}/report", {"reason": "bad room"}),
                "room_without_reason": status(of(reporter), f"/v3/rooms/{q(room_id)}/report", {}),
            }
        )
        reported.append((room_id, event_id))
        time.sleep(0.01)  # distinct received_ts
    assert answers[1] == answers[0]
    assert answers[0]["event"] == (200, {})
    assert answers[0]["unknown_event"][0] == 404

    # Each room's report reads the same in the admin list.
    shapes = []
    for room_id, event_id in reported:
        resp = admin_get(admin, {"room_id": room_id})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["total"] == 1
        entry = body["event_reports"][0]
        assert (entry["room_id"], entry["event_id"]) == (room_id, event_id)
        shapes.append({k: v for k, v in entry.items() if k not in ("id", "received_ts", "room_id", "event_id")})
    assert shapes[1] == shapes[0]
    assert shapes[0]["reason"] == "spam" and shapes[0]["score"] == -100 and shapes[0]["sender"] == owner.user_id

    # Both worlds in one list, newest first (then oldest first), one per page.
    for direction, expected in (("b", list(reversed(reported))), ("f", reported)):
        got, start = [], 0
        while True:
            resp = admin_get(admin, {"user_id": reporter.user_id, "limit": 1, "from": start, "dir": direction})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["total"] == 2
            got += [(e["room_id"], e["event_id"]) for e in body["event_reports"]]
            if "next_token" not in body:
                break
            start = body["next_token"]
        assert got == expected

    # Not for non-admins: Synapse's refusal.
    assert failure(admin_get(reporter, {})) == (403, "M_FORBIDDEN")
