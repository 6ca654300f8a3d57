"""What a change to someone's account, made through Synapse's client or admin
API, does to the rooms they are in. Each scenario runs in a Synapse room and in
a local room, and the other members see the same thing: a server admin
renaming someone updates that user's member event (sent as the user); a
deactivation, by the user or by an admin, parts the user from the rooms they
joined and rejects their pending invites and knocks, each a leave by the user
themselves, and their token stops working."""

import secrets

import httpx
import pytest

import stack
from client import As, create_room, of, q, send_text


def admin_call(admin: stack.User, method: str, path: str, body: dict) -> dict:
    resp = httpx.request(method, f"{stack.HS_URL}/_synapse/admin{path}", json=body, headers=admin.auth, timeout=60)
    assert resp.status_code in (200, 201), f"{method} {path}: {resp.status_code} {resp.text}"
    return resp.json()


def member_event(viewer: As, room_id: str, user_id: str) -> dict | None:
    """The user's current member event in the room, as a member sees it."""
    state = viewer.ok("GET", f"/v3/rooms/{q(room_id)}/state")
    return next((e for e in state if e["type"] == "m.room.member" and e["state_key"] == user_id), None)


def wait_membership(viewer: As, room_id: str, user_id: str, membership: str) -> dict:
    found: dict = {}

    def reached() -> bool:
        event = member_event(viewer, room_id, user_id)
        found["event"] = event
        return event is not None and event["content"].get("membership") == membership

    # Synapse changes its rooms in a background task; ours change before the answer.
    stack.wait_until(reached, 20, f"{user_id} to be '{membership}' in {room_id}")
    return found["event"]


@pytest.fixture(scope="module")
def admin() -> stack.User:
    return stack.register_user(admin=True)


@pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
@pytest.mark.parametrize("how", ["client_api", "admin_v2_users", "client_delete"])
def test_admin_changes_someones_profile(federate, how, admin):
    owner, other = stack.register_user(), stack.register_user()
    room_id = create_room(of(owner), federate, invite=[other.user_id])
    of(other).ok("POST", f"/v3/join/{q(room_id)}")
    of(other).ok("PUT", f"/v3/profile/{q(other.user_id)}/displayname", body={"displayname": "Before"})
    wait_membership(of(owner), room_id, other.user_id, "join")
    stack.wait_until(
        lambda: member_event(of(owner), room_id, other.user_id)["content"].get("displayname") == "Before",
        20,
        "the user's own name",
    )

    name = f"Renamed by an admin {secrets.token_hex(3)}"
    avatar = "mxc://example.org/renamed"
    if how == "client_api":
        of(admin).ok("PUT", f"/v3/profile/{q(other.user_id)}/displayname", body={"displayname": name})
        want = {"displayname": name}
    elif how == "admin_v2_users":
        admin_call(admin, "PUT", f"/v2/users/{q(other.user_id)}", {"displayname": name, "avatar_url": avatar})
        want = {"displayname": name, "avatar_url": avatar}
    else:
        # MSC4133's DELETE of displayname: Synapse sets it to "" and propagates.
        resp = of(admin)("DELETE", f"/v3/profile/{q(other.user_id)}/displayname")
        assert resp.status_code == 200, resp.text
        want = {"displayname": None}

    def updated() -> bool:
        content = member_event(of(owner), room_id, other.user_id)["content"]
        return all(content.get(k) == v for k, v in want.items())

    stack.wait_until(updated, 20, "the admin's change in the member event")
    event = member_event(of(owner), room_id, other.user_id)
    assert event["sender"] == other.user_id
    assert event["content"]["membership"] == "join"
    # The admin's own member events are untouched: they are in no room.
    joined = of(owner).ok("GET", f"/v3/rooms/{q(room_id)}/joined_members")["joined"]
    assert set(joined) == {owner.user_id, other.user_id}


@pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
def test_custom_profile_fields_stay_out_of_member_events(federate):
    owner = stack.register_user()
    room_id = create_room(of(owner), federate)
    before = member_event(of(owner), room_id, owner.user_id)
    resp = of(owner)("PUT", f"/v3/profile/{q(owner.user_id)}/org.example.pronouns", body={"org.example.pronouns": "they"})
    assert resp.status_code == 200, resp.text
    # Synapse: "Custom fields do not propagate into the user directory *or* rooms."
    assert member_event(of(owner), room_id, owner.user_id)["event_id"] == before["event_id"]


@pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
@pytest.mark.parametrize("how", ["self", "admin_v1", "admin_v2"])
def test_deactivation_parts_the_user(federate, how, admin):
    owner, leaver = stack.register_user(), stack.register_user()
    joined = create_room(of(owner), federate, invite=[leaver.user_id])
    of(leaver).ok("POST", f"/v3/join/{q(joined)}")
    send_text(of(leaver), joined, "goodbye soon")
    invited = create_room(of(owner), federate, invite=[leaver.user_id])
    knocked = create_room(
        of(owner),
        federate,
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
    )
    of(leaver).ok("POST", f"/v3/knock/{q(knocked)}", body={"reason": "let me in"})
    wait_membership(of(owner), knocked, leaver.user_id, "knock")

    if how == "self":
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": leaver.user_id},
            "password": leaver.password,
        }
        of(leaver).ok("POST", "/v3/account/deactivate", body={"auth": auth, "erase": False})
    elif how == "admin_v1":
        admin_call(admin, "POST", f"/v1/deactivate/{q(leaver.user_id)}", {"erase": False})
    else:
        admin_call(admin, "PUT", f"/v2/users/{q(leaver.user_id)}", {"deactivated": True})

    for room_id in (joined, invited, knocked):
        event = wait_membership(of(owner), room_id, leaver.user_id, "leave")
        # A plain leave by the user themselves, not a kick.
        assert event["sender"] == leaver.user_id
        assert "reason" not in event["content"]
    members = of(owner).ok("GET", f"/v3/rooms/{q(joined)}/joined_members")["joined"]
    assert set(members) == {owner.user_id}
    resp = of(leaver)("GET", f"/v3/rooms/{q(joined)}/messages", {"dir": "b"})
    assert resp.status_code == 401, resp.text
    assert resp.json()["errcode"] == "M_UNKNOWN_TOKEN"


@pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
def test_admin_v2_users_without_deactivation_parts_nobody(federate, admin):
    owner, other = stack.register_user(), stack.register_user()
    room_id = create_room(of(owner), federate, invite=[other.user_id])
    of(other).ok("POST", f"/v3/join/{q(room_id)}")
    answer = admin_call(admin, "PUT", f"/v2/users/{q(other.user_id)}", {"user_type": None})
    assert answer["deactivated"] is False
    send_text(of(other), room_id, "still here")
    assert member_event(of(owner), room_id, other.user_id)["content"]["membership"] == "join"


@pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
@pytest.mark.parametrize("preset", ["public_chat", "private_chat"])
def test_admin_joins_someone_and_lists_their_rooms(federate, preset, admin):
    """Synapse's admin `v1/join` (the admin invites first unless the room is
    public) and `v1/users/{userId}/joined_rooms`, which lists both worlds."""
    joiner = stack.register_user()
    room_id = create_room(of(admin), federate, preset=preset)
    answer = admin_call(admin, "POST", f"/v1/join/{q(room_id)}", {"user_id": joiner.user_id})
    assert answer == {"room_id": room_id}
    event = wait_membership(of(admin), room_id, joiner.user_id, "join")
    assert event["sender"] == joiner.user_id
    invited = any(
        e["type"] == "m.room.member" and e["state_key"] == joiner.user_id and e["content"]["membership"] == "invite"
        for e in of(admin).ok("GET", f"/v3/rooms/{q(room_id)}/messages", {"dir": "b", "limit": "50"})["chunk"]
    )
    assert invited == (preset == "private_chat")
    listed = httpx.get(
        f"{stack.HS_URL}/_synapse/admin/v1/users/{q(joiner.user_id)}/joined_rooms", headers=admin.auth, timeout=30
    )
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"joined_rooms": [room_id], "total": 1}
    # Not an admin: refused, as Synapse refuses.
    refused = httpx.get(
        f"{stack.HS_URL}/_synapse/admin/v1/users/{q(joiner.user_id)}/joined_rooms", headers=joiner.auth, timeout=30
    )
    assert refused.status_code == 403
    not_admin = httpx.post(
        f"{stack.HS_URL}/_synapse/admin/v1/join/{q(room_id)}",
        json={"user_id": joiner.user_id},
        headers=joiner.auth,
        timeout=30,
    )
    assert (not_admin.status_code, not_admin.json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest.mark.parametrize("federate", [True, False], ids=["synapse", "local"])
def test_make_room_admin(federate, admin):
    """Synapse's admin `make_room_admin`: the room's most powerful local member
    gives the user the same level, and invites them into a private room."""
    owner, helper = stack.register_user(), stack.register_user()
    room_id = create_room(of(owner), federate)
    resp = httpx.post(
        f"{stack.HS_URL}/_synapse/admin/v1/rooms/{q(room_id)}/make_room_admin",
        json={"user_id": helper.user_id},
        headers=admin.auth,
        timeout=60,
    )
    assert (resp.status_code, resp.json()) == (200, {}), resp.text
    power = next(e for e in of(owner).ok("GET", f"/v3/rooms/{q(room_id)}/state") if e["type"] == "m.room.power_levels")
    assert power["sender"] == owner.user_id
    assert power["content"]["users"] == {owner.user_id: 100, helper.user_id: 100}
    invite = member_event(of(owner), room_id, helper.user_id)
    assert (invite["sender"], invite["content"]["membership"]) == (owner.user_id, "invite")
    refused = httpx.post(
        f"{stack.HS_URL}/_synapse/admin/v1/rooms/{q(room_id)}/make_room_admin",
        json={"user_id": helper.user_id},
        headers=helper.auth,
        timeout=30,
    )
    assert (refused.status_code, refused.json()["errcode"]) == (403, "M_FORBIDDEN")
