"""`POST /search` over both worlds: the same scenario in a Synapse room and in
a local room gives the same results (ranks, highlights, count, context,
profiles, state, groups), and a search over both rooms merges them in Synapse's
order (`rank`: by rank; `recent`: newest first) and pages through both with
`next_batch`, each result exactly once."""

import time

import httpx

from client import As, create_room, of, q, send_text, two_rooms

import stack

MESSAGES = [
    "the quick brown fox",
    "a lazy dog sleeps",
    "quick quick fox jumps over the fox",
    "nothing to see here",
]


def search(who: As, term: str, params: dict | None = None, **room_events) -> dict:
    body = {"search_categories": {"room_events": {"search_term": term, **room_events}}}
    return who.ok("POST", "/v3/search", params, body)["search_categories"]["room_events"]


def shape(event: dict) -> tuple:
    return (event["type"], event["sender"], event["content"])


def normalised(answer: dict, room_id: str, ids: dict[str, str], rank_ties: bool = False) -> dict:
    """The answer with the room's ID and its event IDs replaced by names, and
    pagination tokens dropped, so a Synapse room's and a local room's compare.
    With `rank_ties`, results of equal rank are compared in name order: Synapse
    leaves their order to Postgres's sort (`ORDER BY rank DESC` alone)."""

    def event(e: dict) -> tuple:
        return (ids.get(e["event_id"], "?"), *shape(e))

    results = []
    for r in answer["results"]:
        context = r.get("context", {})
        results.append(
            {
                "rank": r["rank"],
                "result": event(r["result"]),
                "before": [event(e) for e in context.get("events_before", [])],
                "after": [event(e) for e in context.get("events_after", [])],
                "profile_info": context.get("profile_info"),
                "has_tokens": ("start" in context, "end" in context),
            }
        )
    if rank_ties:
        results.sort(key=lambda r: (-r["rank"], r["result"][0]))
    groups = {
        kind: {
            (key if kind == "sender" else "ROOM"): [ids.get(e, "?") for e in group["results"]]
            for key, group in by_key.items()
        }
        for kind, by_key in answer.get("groups", {}).items()
    }
    state = answer.get("state", {})
    return {
        "results": results,
        "count": answer["count"],
        "highlights": sorted(answer["highlights"]),
        "groups": groups,
        "state": sorted((e["type"], e["state_key"]) for e in state.get(room_id, [])),
        "state_rooms": sorted(k == room_id for k in state),
    }


def fill(owner: stack.User, other: stack.User, room_id: str) -> dict[str, str]:
    ids = {}
    for i, body in enumerate(MESSAGES):
        sender = of(owner) if i % 2 == 0 else of(other)
        ids[send_text(sender, room_id, body)] = f"m{i}"
    of(owner).ok("PUT", f"/v3/rooms/{q(room_id)}/state/m.room.topic/", body={"topic": "where the fox lives"})
    return ids


def test_one_room_answers_the_same_in_both_worlds():
    owner, other = stack.register_user(), stack.register_user()
    synapse_room, local_room = two_rooms(owner, other)
    answers = []
    for room_id in (synapse_room, local_room):
        ids = fill(owner, other, room_id)
        for order in ("rank", "recent"):
            answer = search(
                of(owner),
                "quick fox",
                filter={"rooms": [room_id]},
                order_by=order,
                include_state=True,
                event_context={"before_limit": 1, "after_limit": 2, "include_profile": True},
                groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]},
            )
            answers.append((order, normalised(answer, room_id, ids)))
    synapse_answers, local_answers = answers[:2], answers[2:]
    assert local_answers == synapse_answers
    rank_answer = synapse_answers[0][1]
    # The scenario really exercises something: two hits, ranked, with context.
    assert [r["result"][0] for r in rank_answer["results"]] == ["m2", "m0"]
    assert rank_answer["results"][0]["rank"] > rank_answer["results"][1]["rank"]
    assert rank_answer["count"] == 2
    assert rank_answer["highlights"] == ["fox", "quick"]
    assert rank_answer["results"][0]["before"] and rank_answer["results"][0]["profile_info"]


def test_keys_filters_and_visibility_answer_the_same():
    owner, other = stack.register_user(), stack.register_user()
    late = stack.register_user()
    answers = []
    for federate in (True, False):
        room_id = create_room(
            of(owner),
            federate,
            invite=[other.user_id, late.user_id],
            initial_state=[
                {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}
            ],
        )
        of(other).ok("POST", f"/v3/join/{q(room_id)}")
        ids = fill(owner, other, room_id)
        ids[send_text(of(owner), room_id, "fox picture")] = "pic"
        url_event = of(owner).ok(
            "PUT",
            f"/v3/rooms/{q(room_id)}/send/m.room.message/u{int(time.time() * 1000)}",
            body={"msgtype": "m.image", "body": "a fox image", "url": "mxc://example.org/fox"},
        )["event_id"]
        ids[url_event] = "image"
        of(late).ok("POST", f"/v3/join/{q(room_id)}")
        ids[send_text(of(owner), room_id, "after the late fox joined")] = "after"
        rooms = {"rooms": [room_id]}
        runs = {
            "topic_only": search(of(owner), "fox", filter=rooms, keys=["content.topic"]),
            "senders": search(of(owner), "fox", filter={**rooms, "senders": [other.user_id]}),
            "not_senders": search(of(owner), "fox", filter={**rooms, "not_senders": [other.user_id]}),
            "with_url": search(of(owner), "fox", filter={**rooms, "contains_url": True}),
            "without_url": search(of(owner), "fox", filter={**rooms, "contains_url": False}, order_by="recent"),
            "late_joiner": search(of(late), "fox", filter=rooms, order_by="recent"),
            "outsider": search(of(stack.register_user()), "fox", filter=rooms),
        }
        answers.append(
            {name: normalised(answer, room_id, ids, rank_ties=True) for name, answer in runs.items()}
        )
    assert answers[1] == answers[0]
    seen = answers[0]
    assert [r["result"][0] for r in seen["late_joiner"]["results"]] == ["after"]
    assert [r["result"][0] for r in seen["with_url"]["results"]] == ["image"]
    assert seen["outsider"]["results"] == [] and seen["outsider"]["count"] == 0


def test_rank_merges_both_worlds_by_rank():
    owner, other = stack.register_user(), stack.register_user()
    synapse_room, local_room = two_rooms(owner, other)
    # Ranks differ by how often the word occurs; each world gets both strengths.
    bodies = {
        synapse_room: ["zebra", "zebra zebra zebra zebra"],
        local_room: ["zebra zebra", "zebra zebra zebra"],
    }
    sent = {}
    for room_id, texts in bodies.items():
        for text in texts:
            sent[send_text(of(owner), room_id, text)] = room_id
    answer = search(of(owner), "zebra", groupings={"group_by": [{"key": "room_id"}]})
    results = answer["results"]
    assert {r["result"]["event_id"] for r in results} == set(sent)
    ranks = [r["rank"] for r in results]
    assert ranks == sorted(ranks, reverse=True), ranks
    assert [r["result"]["content"]["body"].count("zebra") for r in results] == [4, 3, 2, 1]
    assert answer["count"] == 4
    assert set(answer["groups"]["room_id"]) == {synapse_room, local_room}
    assert "next_batch" not in answer


def test_recent_pages_through_both_worlds_newest_first():
    owner, other = stack.register_user(), stack.register_user()
    synapse_room, local_room = two_rooms(owner, other)
    sent = []
    # Uneven runs, so pages hold different shares of each world.
    for room_id in [synapse_room] * 2 + [local_room] * 3 + [synapse_room] + [local_room] + [synapse_room] * 3:
        sent.append(send_text(of(owner), room_id, f"giraffe number {len(sent)}"))
        time.sleep(0.01)  # distinct origin_server_ts: the order is by timestamp
    got, batch, pages = [], None, 0
    while True:
        params = {"next_batch": batch} if batch else None
        answer = search(
            of(owner),
            "giraffe",
            params,
            order_by="recent",
            filter={"limit": 3},
            groupings={"group_by": [{"key": "room_id"}]},
        )
        pages += 1
        assert answer["count"] == len(sent)
        got += [r["result"]["event_id"] for r in answer["results"]]
        batch = answer.get("next_batch")
        if not batch or pages > 10:
            break
    assert got == list(reversed(sent))
    assert pages in (4, 5)

    # A room group's token pages that room alone, in either world.
    for room_id in (synapse_room, local_room):
        first = search(
            of(owner), "giraffe", order_by="recent", filter={"limit": 5}, groupings={"group_by": [{"key": "room_id"}]}
        )
        in_room = [e for e in reversed(sent) if e in set(sent_in(owner, room_id))]
        token = first["groups"]["room_id"][room_id]["next_batch"]
        more = search(of(owner), "giraffe", {"next_batch": token}, order_by="recent", filter={"limit": 10})
        rest = [r["result"]["event_id"] for r in more["results"]]
        assert all(e in in_room for e in rest)
        shown = [r["result"]["event_id"] for r in first["results"] if r["result"]["room_id"] == room_id]
        assert shown + rest == in_room


def sent_in(user: stack.User, room_id: str) -> list[str]:
    chunk = of(user).ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "b", "limit": "50"})["chunk"]
    return [e["event_id"] for e in chunk if e["type"] == "m.room.message"]


def test_bad_requests_get_synapses_errors():
    user = stack.register_user()
    bad = [
        {"search_categories": {}},
        {"search_categories": {"room_events": {"search_term": "x", "order_by": "sideways"}}},
        {"search_categories": {"room_events": {"search_term": "x", "groupings": {"group_by": [{"key": "type"}]}}}},
    ]
    for body in bad:
        resp = of(user)("POST", "/v3/search", None, body)
        assert resp.status_code == 400, resp.text
        assert resp.json()["errcode"] == "M_UNKNOWN"
    resp = of(user)("POST", "/v3/search", {"next_batch": "not-a-token"}, {"search_categories": {"room_events": {"search_term": "x"}}})
    assert resp.status_code == 400


def test_search_answers_local_rooms_while_synapse_is_down():
    """Degraded mode: with Synapse stopped, a search answers the local rooms'
    results (as /sync keeps serving them) instead of 502."""
    owner, other = stack.register_user(), stack.register_user()
    synapse_room, local_room = two_rooms(owner, other)
    term = f"walrus{int(time.time() * 1000)}"
    send_text(of(owner), synapse_room, f"{term} on Synapse's side")
    local_event = send_text(of(owner), local_room, f"{term} on the local side")
    # Synapse confirms the token while it is up; both worlds answer.
    up = search(of(owner), term)
    assert sorted(r["result"]["room_id"] for r in up["results"]) == sorted([synapse_room, local_room])
    stack.stack_lib("synapse_stop")
    try:
        down = search(of(owner), term, order_by="recent")
        assert [r["result"]["event_id"] for r in down["results"]] == [local_event]
        assert down["count"] >= 1
        # A room filter naming the Synapse room alone finds nothing, without an error.
        only_synapse = search(of(owner), term, filter={"rooms": [synapse_room]})
        assert only_synapse["results"] == []
    finally:
        stack.stack_lib("synapse_start")
    # hungryserv asks Synapse again once its health probe has seen it back.
    stack.wait_until(
        lambda: httpx.get(f"{stack.HS_URL}/_hungryserv/ready", timeout=10).status_code == 200,
        30,
        "hungryserv to see Synapse back",
    )
    again = search(of(owner), term)
    assert sorted(r["result"]["room_id"] for r in again["results"]) == sorted([synapse_room, local_room])
