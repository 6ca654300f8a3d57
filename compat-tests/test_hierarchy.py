"""Space hierarchy (`/v1/rooms/{id}/hierarchy`): a local space whose children
are a local room and a Synapse room answers like a Synapse space with two
Synapse children — the same entries, children order, `suggested_only`,
`max_depth` and refusal of an outsider."""

from client import create_room, of, q

import stack


def make_space(owner: stack.User, space_local: bool, first_child_local: bool) -> tuple[str, dict[str, str]]:
    space = create_room(
        of(owner),
        not space_local,
        name="The space",
        creation_content={"m.federate": not space_local, "type": "m.space"},
    )
    first = create_room(of(owner), not first_child_local, name="Child one", topic="first")
    second = create_room(of(owner), True, name="Child two", preset="public_chat")
    for child, content in (
        (first, {"via": [stack.SERVER_NAME], "suggested": True, "order": "b"}),
        (second, {"via": [stack.SERVER_NAME], "order": "a"}),
    ):
        of(owner).ok("PUT", f"/v3/rooms/{q(space)}/state/m.space.child/{q(child)}", body=content)
    return space, {space: "space", first: "one", second: "two"}


def normalised(answer: dict, names: dict[str, str]) -> list[dict]:
    rooms = []
    for room in answer["rooms"]:
        entry = {k: v for k, v in room.items() if k not in ("room_id", "children_state")}
        entry["id"] = names.get(room["room_id"], "?")
        entry["children"] = [
            (names.get(c["state_key"], "?"), c["type"], c["sender"], c["content"]) for c in room["children_state"]
        ]
        rooms.append(entry)
    return rooms


def test_hierarchy_spans_both_worlds_like_synapse():
    owner, outsider = stack.register_user(), stack.register_user()
    answers = []
    for space_local in (False, True):
        space, names = make_space(owner, space_local, first_child_local=space_local)
        path = f"/v1/rooms/{q(space)}/hierarchy"
        answers.append(
            {
                "all": normalised(of(owner).ok("GET", path), names),
                "suggested": normalised(of(owner).ok("GET", path, {"suggested_only": "true"}), names),
                "depth0": normalised(of(owner).ok("GET", path, {"max_depth": "0"}), names),
                "outsider": of(outsider)("GET", path).status_code,
            }
        )
    assert answers[1] == answers[0]
    assert [r["id"] for r in answers[0]["all"]] == ["space", "two", "one"]
    assert [r["id"] for r in answers[0]["suggested"]] == ["space", "one"]
    assert [r["id"] for r in answers[0]["depth0"]] == ["space"]
    assert answers[0]["outsider"] == 403


def test_hierarchy_pages_like_synapse():
    """`limit` and `from`: paging one room at a time walks the same rooms in
    the same order as one page; a token used with other parameters, or
    garbage, is refused the same way."""
    owner = stack.register_user()
    answers = []
    for space_local in (False, True):
        space, names = make_space(owner, space_local, first_child_local=space_local)
        path = f"/v1/rooms/{q(space)}/hierarchy"
        pages, token = [], None
        for _ in range(5):
            params = {"limit": "1"} | ({"from": token} if token else {})
            page = of(owner).ok("GET", path, params)
            pages.append(normalised(page, names))
            token = page.get("next_batch")
            if token is None:
                break
        first = of(owner).ok("GET", path, {"limit": "1"})
        mismatched = of(owner)("GET", path, {"limit": "1", "from": first["next_batch"], "suggested_only": "true"})
        garbage = of(owner)("GET", path, {"from": "not-a-token"})
        answers.append(
            {
                "pages": pages,
                "mismatched": (mismatched.status_code, mismatched.json().get("errcode")),
                "garbage": (garbage.status_code, garbage.json().get("errcode")),
            }
        )
    assert answers[1] == answers[0]
    assert [[r["id"] for r in page] for page in answers[0]["pages"]] == [["space"], ["two"], ["one"]]
    assert answers[0]["mismatched"] == (400, "M_INVALID_PARAM")
