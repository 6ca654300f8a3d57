"""Issue 22, the sync side: /sync, /messages and /context of a local room answer what
they answer for a Synapse room, scenario by scenario (each run twice with fresh users,
once per kind of room, reduced by `difftools.Roles` and compared)."""

import json

import stack
from client import create_room, of, q, send_text
from difftools import Roles, both, invite_and_join, joined, set_state, sync

JOINED_ONLY = [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]


def pair(federate: bool, **fields) -> tuple[stack.User, stack.User, str, Roles]:
    owner, other = stack.register_user(), stack.register_user()
    room = create_room(of(owner), federate, preset="public_chat", **fields)
    of(other).ok("POST", f"/v3/join/{q(room)}")
    return owner, other, room, Roles(owner=owner, other=other)


# --- State while away -----------------------------------------------------------------


def test_state_changed_while_away_appears_after_rejoining():
    """History visibility `joined`: the user leaves, the topic changes, they rejoin between
    two syncs. The new topic must reach them (Synapse puts it in `state`)."""

    def scenario(federate):
        owner, other, room, roles = pair(federate, initial_state=JOINED_ONLY)
        set_state(of(owner), room, "m.room.topic", {"topic": "before"})
        since = sync(of(other))["next_batch"]
        of(other).ok("POST", f"/v3/rooms/{q(room)}/leave", body={})
        set_state(of(owner), room, "m.room.topic", {"topic": "while away"})
        send_text(of(owner), room, "unseen")
        of(other).ok("POST", f"/v3/join/{q(room)}")
        send_text(of(owner), room, "seen")
        entry = joined(sync(of(other), since), room)
        topics = [e["content"]["topic"] for e in entry["state"]["events"] + entry["timeline"]["events"]
                  if e["type"] == "m.room.topic"]
        return roles.timeline(entry["timeline"]["events"]), topics, entry["timeline"]["limited"]

    synapse, local = both(scenario)
    assert local == synapse
    assert synapse[1][-1] == "while away"


def test_state_changed_while_away_with_a_sync_in_between():
    """The same, with a sync while the user is out (the rejoined room is then new)."""

    def scenario(federate):
        owner, other, room, roles = pair(federate, initial_state=JOINED_ONLY)
        since = sync(of(other))["next_batch"]
        of(other).ok("POST", f"/v3/rooms/{q(room)}/leave", body={})
        since = sync(of(other), since)["next_batch"]
        set_state(of(owner), room, "m.room.topic", {"topic": "while away"})
        of(other).ok("POST", f"/v3/join/{q(room)}")
        entry = joined(sync(of(other), since), room)
        return (
            roles.timeline(entry["timeline"]["events"]),
            [e["content"]["topic"] for e in entry["state"]["events"] + entry["timeline"]["events"]
             if e["type"] == "m.room.topic"],
        )

    synapse, local = both(scenario)
    assert local == synapse
    # The topic set while away is part of the current state: in the timeline, visible.
    assert synapse[1] == ["while away"]


# --- Rooms with nothing left after filtering ------------------------------------------


def test_a_room_with_nothing_left_after_filtering_is_not_listed():
    def scenario(federate):
        owner, other, room, _ = pair(federate)
        only_topics = {"room": {"timeline": {"types": ["m.room.topic"]}, "state": {"types": ["m.room.topic"]}}}
        since = sync(of(owner), filter=only_topics)["next_batch"]
        send_text(of(other), room, "filtered out")
        incremental = sync(of(owner), since, filter=only_topics)
        no_timeline = {"room": {"timeline": {"limit": 0}}}
        since = sync(of(owner), filter=no_timeline)["next_batch"]
        send_text(of(other), room, "filtered out again")
        zero = sync(of(owner), since, filter=no_timeline)
        return room in incremental["rooms"].get("join", {}), room in zero["rooms"].get("join", {})

    synapse, local = both(scenario)
    assert local == synapse


# --- event_format ---------------------------------------------------------------------


def test_event_format_federation():
    def scenario(federate):
        owner, other, room, roles = pair(federate)
        send_text(of(other), room, "fed")
        fmt = {"event_format": "federation", "room": {"timeline": {"limit": 2}}}
        entry = joined(sync(of(owner), filter=fmt), room)
        events = entry["timeline"]["events"]
        state = entry["state"]["events"]
        return (
            roles.timeline(events),
            [sorted(e) for e in events],
            sorted({k for e in state for k in e}),
            [e.get("room_id") == room for e in events],
        )

    synapse, local = both(scenario)
    assert local == synapse


def test_event_fields():
    def scenario(federate):
        owner, other, room, roles = pair(federate)
        send_text(of(other), room, "fields")
        fields = {"event_fields": ["type", "content.body", "sender"], "room": {"timeline": {"limit": 1}}}
        entry = joined(sync(of(owner), filter=fields), room)
        event = entry["timeline"]["events"][0]
        return sorted(event), sorted(event["content"]), sorted({k for e in entry["state"]["events"] for k in e})

    synapse, local = both(scenario)
    assert local == synapse
    assert synapse[0] == ["content", "sender", "type"]


# --- Filters --------------------------------------------------------------------------


def test_sync_filters_rooms_senders_types_and_urls():
    def scenario(federate):
        owner, other, room, roles = pair(federate)
        since = sync(of(owner))["next_batch"]
        send_text(of(other), room, "text")
        of(owner).ok("PUT", f"/v3/rooms/{q(room)}/send/m.room.message/u1",
                     body={"msgtype": "m.image", "body": "img", "url": "mxc://x/y"})
        of(owner).ok("PUT", f"/v3/rooms/{q(room)}/send/m.custom/c1", body={"body": "custom"})
        seen = {}
        for name, timeline in {
            "contains_url": {"contains_url": True},
            "no_url": {"contains_url": False},
            "not_senders": {"not_senders": [other.user_id]},
            "senders": {"senders": [other.user_id]},
            "types_wildcard": {"types": ["m.room.*"]},
            "not_types": {"not_types": ["m.room.message"]},
            "limit_1": {"limit": 1},
        }.items():
            entry = joined(sync(of(owner), since, filter={"room": {"timeline": timeline}}), room)
            seen[name] = entry and roles.timeline(entry["timeline"]["events"])
        for name, room_filter in {
            "rooms_other": {"rooms": ["!nothing:localhost"]},
            "not_rooms": {"not_rooms": [room]},
            "timeline_not_rooms": {"timeline": {"not_rooms": [room]}},
        }.items():
            seen[name] = room in sync(of(owner), since, filter={"room": room_filter})["rooms"].get("join", {})
        return seen

    synapse, local = both(scenario)
    assert local == synapse


def test_ephemeral_and_account_data_filters():
    def scenario(federate):
        owner, other, room, roles = pair(federate)
        event = send_text(of(other), room, "read me")
        of(owner).ok("POST", f"/v3/rooms/{q(room)}/receipt/m.read/{q(event)}", body={})
        of(owner).ok("PUT", f"/v3/user/{q(owner.user_id)}/rooms/{q(room)}/account_data/m.custom", body={"a": 1})
        of(owner).ok("PUT", f"/v3/user/{q(owner.user_id)}/rooms/{q(room)}/account_data/m.other", body={"b": 2})
        seen = {}
        for name, room_filter in {
            "no_ephemeral": {"ephemeral": {"types": []}},
            "receipts": {"ephemeral": {"types": ["m.receipt"]}},
            "no_receipts": {"ephemeral": {"not_types": ["m.receipt"]}},
            "account_custom": {"account_data": {"types": ["m.custom"]}},
            "account_none": {"account_data": {"not_types": ["*"]}},
            "account_not_rooms": {"account_data": {"not_rooms": [room]}},
            "ephemeral_not_rooms": {"ephemeral": {"not_rooms": [room]}},
        }.items():
            entry = joined(sync(of(owner), filter={"room": {**room_filter, "timeline": {"limit": 1}}}), room)
            seen[name] = (
                sorted(e["type"] for e in entry.get("ephemeral", {}).get("events", [])),
                sorted(e["type"] for e in entry.get("account_data", {}).get("events", [])),
            )
        return seen

    synapse, local = both(scenario)
    assert local == synapse


def test_include_leave():
    def scenario(federate):
        owner, other, room, _ = pair(federate)
        of(other).ok("POST", f"/v3/rooms/{q(room)}/leave", body={})
        plain = sync(of(other), filter={"room": {"timeline": {"limit": 3}}})
        leave = sync(of(other), filter={"room": {"include_leave": True, "timeline": {"limit": 4}}})
        return room in plain["rooms"].get("leave", {}), room in leave["rooms"].get("leave", {})

    synapse, local = both(scenario)
    assert local == synapse


def test_messages_and_context_with_filters():
    def scenario(federate):
        owner, other, room, roles = pair(federate)
        send_text(of(other), room, "one")
        of(owner).ok("PUT", f"/v3/rooms/{q(room)}/send/m.room.message/u1",
                     body={"msgtype": "m.file", "body": "file", "url": "mxc://x/z"})
        middle = send_text(of(owner), room, "two")
        send_text(of(other), room, "three")
        seen = {}
        for name, flt in {
            "not_senders": {"not_senders": [other.user_id]},
            "contains_url": {"contains_url": True},
            "no_url": {"contains_url": False, "types": ["m.room.message"]},
            "types": {"types": ["m.room.message"], "limit": 2},
            "not_types": {"not_types": ["m.room.message"]},
        }.items():
            page = of(owner).ok("GET", f"/v3/rooms/{q(room)}/messages",
                                params={"dir": "b", "limit": "10", "filter": json.dumps(flt)})
            context = of(owner).ok("GET", f"/v3/rooms/{q(room)}/context/{q(middle)}",
                                   params={"limit": "10", "filter": json.dumps(flt)})
            seen[name] = (
                roles.timeline(page["chunk"]),
                roles.timeline(context["events_before"]),
                roles.timeline(context["events_after"]),
                sorted({e["type"] for e in context["state"]}),
            )
        return seen

    synapse, local = both(scenario)
    assert local == synapse
