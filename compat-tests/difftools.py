"""Shared pieces of the differential sync tests (test_sync_spec, test_lazy_loading,
test_initial_sync): one scenario is played once in a Synapse room and once in a local
room, each with its own fresh users, and what a client sees is reduced to a form free of
IDs (users by role, events by what they say) so the two runs compare with `==`."""

import json

import stack
from client import As, of, q


def sync(me: As, since: str | None = None, filter: dict | None = None, **params) -> dict:
    query = {"timeout": "0", **{k: str(v) for k, v in params.items()}}
    if filter is not None:
        query["filter"] = json.dumps(filter)
    if since:
        query["since"] = since
    return me.ok("GET", "/v3/sync", params=query)


class Roles:
    """Names users by role, so two runs with different users compare equal."""

    def __init__(self, **users: stack.User):
        self.by_id = {user.user_id: role for role, user in users.items()}

    def user(self, user_id: str | None) -> str | None:
        if user_id is None:
            return None
        return self.by_id.get(user_id, "?" if user_id.startswith("@") else user_id)

    def event(self, e: dict) -> tuple:
        """What an event says: type, state key, sender, and its body or membership or topic."""
        content = e.get("content", {})
        what = content.get("body") or content.get("membership") or content.get("topic")
        name = content.get("displayname")
        if e["type"] == "m.room.member" and name and not name.startswith("compat_"):
            what = f"{what}:{name}"
        return (e["type"], self.user(e.get("state_key")), self.user(e.get("sender")), what)

    def timeline(self, events: list[dict]) -> list[tuple]:
        return [self.event(e) for e in events]

    def state(self, events: list[dict]) -> list[tuple]:
        """State as a set (servers order it differently)."""
        return sorted((self.event(e) for e in events), key=str)

    def members(self, events: list[dict]) -> list[str]:
        return sorted(str(self.user(e["state_key"])) for e in events if e["type"] == "m.room.member")


def joined(resp: dict, room: str) -> dict | None:
    return resp.get("rooms", {}).get("join", {}).get(room)


def set_state(me: As, room: str, kind: str, content: dict, key: str = "") -> str:
    return me.ok("PUT", f"/v3/rooms/{q(room)}/state/{kind}/{q(key)}", body=content)["event_id"]


def invite_and_join(inviter: As, room: str, user: stack.User) -> None:
    inviter.ok("POST", f"/v3/rooms/{q(room)}/invite", body={"user_id": user.user_id})
    of(user).ok("POST", f"/v3/join/{q(room)}")


def both(scenario) -> tuple:
    """Runs `scenario(federate)` for a Synapse room and a local room: (synapse, local)."""
    return scenario(True), scenario(False)
