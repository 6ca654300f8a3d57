"""One bridge scenario, played twice: once in a Synapse room and once in a
hungryserv local room. The only difference between the two runs is the
bridge's createRoom `creation_content["m.federate"]`, which routing.toml uses to
pick a local room. What the user's client then reads back must be the same,
once IDs, tokens and server clocks are normalised.

The bridge is mautrix-python's appservice IntentAPI (as_token, `?user_id=`
masquerading, `?ts=` massaging), the user is matrix-nio plus raw HTTP where the
exact JSON matters.
"""

import asyncio
import difflib
import json
import logging
import re
import secrets

import httpx
import pytest
from mautrix.appservice import AppServiceAPI, IntentAPI
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore
from mautrix.types import EventType, RoomCreatePreset
from nio import AsyncClient, JoinedRoomsResponse, JoinResponse, MessageDirection, RoomMessagesResponse

import stack
from client import q

# Massaged timestamps (?ts=): in the past, so they can never be mistaken for a
# server's clock, and equal in both runs, so they are compared as they are.
TS0 = 1_700_000_000_000
MASSAGED = {TS0 + i * 1000 for i in range(1, 10)}

# Small pages, so both directions of /messages really paginate.
PAGE = 3

# The synapse run first (module fixture), then the local run compares against it.
VARIANTS = {"synapse": True, "local": False}  # variant -> m.federate


class MemoryASStore(ASStateStore, MemoryStateStore):
    """mautrix's in-memory state store, as a bridge uses it (membership and
    power-level cache, registered ghosts)."""

    def __init__(self) -> None:
        ASStateStore.__init__(self)
        MemoryStateStore.__init__(self)



def txn() -> str:
    return secrets.token_hex(8)


class Http:
    """Raw client-server calls, answering (status, JSON body), so the exact
    bytes a client would parse are what gets compared."""

    def __init__(self, client: httpx.AsyncClient, token: str, user_id: str | None = None):
        self.client, self.token, self.user_id = client, token, user_id

    async def __call__(self, method: str, path: str, params: dict | None = None, body=None):
        params = dict(params or {})
        if self.user_id is not None:
            params["user_id"] = self.user_id
        resp = await self.client.request(
            method,
            "/_matrix/client" + path,
            params=params,
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            data = resp.json()
        except ValueError:
            data = {"<not json>": resp.text}
        return resp.status_code, data

    async def ok(self, method: str, path: str, params: dict | None = None, body=None) -> dict:
        status, data = await self(method, path, params, body)
        assert status == 200, f"{method} {path}: {status} {data}"
        return data

    async def error(self, method: str, path: str, params: dict | None = None, body=None) -> dict:
        """A request that must fail: what the client sees of the failure."""
        status, data = await self(method, path, params, body)
        return {"status": status, "errcode": data.get("errcode"), "error": data.get("error")}


async def scenario(federate: bool, people: dict) -> dict:
    """Play the scenario in a new room; return everything the user and the
    bridge saw, raw (normalise() makes it comparable)."""
    appservice: stack.AppService = people["appservice"]
    user: stack.User = people["user"]
    ghost_ids: list[str] = people["ghosts"]
    seen: dict = {"massaged_event_ids": []}

    as_api = AppServiceAPI(
        base_url=stack.HS_URL,
        bot_mxid=appservice.bot,
        token=appservice.as_token,
        log=logging.getLogger("mautrix"),
        state_store=MemoryASStore(),
    )
    nio = AsyncClient(stack.HS_URL, user.user_id)
    nio.access_token = user.access_token
    http = httpx.AsyncClient(base_url=stack.HS_URL, timeout=30)
    try:
        bot = as_api.bot_intent()
        g: list[IntentAPI] = [as_api.intent(ghost) for ghost in ghost_ids]
        for ghost in g:
            await ghost.ensure_registered()
        as_user = {i.mxid: Http(http, appservice.as_token, i.mxid) for i in [bot, *g]}
        u = Http(http, user.access_token)

        room_id = await bot.create_room(
            name="Differential room",
            topic="first topic",
            preset=RoomCreatePreset.PRIVATE,
            invitees=[user.user_id, g[0].mxid, g[1].mxid, g[2].mxid],
            power_level_override={"users": {bot.mxid: 100}},
            creation_content={"m.federate": federate},
            # Synapse 1.163 defaults to room version 12, whose creators may not
            # be listed in power levels; local rooms are always version 10.
            room_version="10",
        )
        seen["room_id"] = room_id
        r = q(room_id)

        await g[0].join_room_by_id(room_id)
        await g[1].join_room_by_id(room_id)
        joined = await nio.join(room_id)
        assert isinstance(joined, JoinResponse), joined

        errors = {}
        # g2 is invited but has not joined yet; g3 was never invited.
        errors["ghost sends before joining"] = await as_user[g[2].mxid].error(
            "PUT",
            f"/v3/rooms/{r}/send/m.room.message/{txn()}",
            body={"msgtype": "m.text", "body": "too early"},
        )
        errors["uninvited ghost joins"] = await Http(http, appservice.as_token, g[3].mxid).error(
            "POST", f"/v3/rooms/{r}/join", body={}
        )

        async def send(intent: IntentAPI, content: dict, ts: int, event_type=EventType.ROOM_MESSAGE) -> str:
            event_id = await intent.send_message_event(room_id, event_type, content, timestamp=ts)
            seen["massaged_event_ids"].append(event_id)
            return event_id

        m1 = await send(g[0], {"msgtype": "m.text", "body": "hello from ghost 0"}, TS0 + 1000)
        m2 = await send(g[1], {"msgtype": "m.text", "body": "hello from ghost 1"}, TS0 + 2000)
        reply = await send(
            g[0],
            {
                "msgtype": "m.text",
                "body": "a reply",
                "m.relates_to": {"m.in_reply_to": {"event_id": m1}},
            },
            TS0 + 3000,
        )
        reaction = await send(
            g[1],
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": m1, "key": "👍"}},
            TS0 + 4000,
            EventType.REACTION,
        )
        edit = await send(
            g[1],
            {
                "msgtype": "m.text",
                "body": "* hello edited",
                "m.new_content": {"msgtype": "m.text", "body": "hello edited"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": m2},
            },
            TS0 + 5000,
        )
        await g[2].join_room_by_id(room_id)
        thread = await send(
            g[2],
            {
                "msgtype": "m.text",
                "body": "in a thread",
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": m1,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": m1},
                },
            },
            TS0 + 6000,
        )
        doomed = await send(g[0], {"msgtype": "m.text", "body": "this will be redacted"}, TS0 + 7000)
        topic = await bot.set_room_topic(room_id, "second topic", timestamp=TS0 + 8000)
        seen["massaged_event_ids"].append(topic)
        redaction = await bot.redact(room_id, doomed, reason="spam")
        await bot.kick_user(room_id, g[1].mxid, reason="kicked by the bridge")
        await bot.ban_user(room_id, g[2].mxid, reason="banned by the bridge")
        await bot.unban_user(room_id, g[2].mxid)

        # The same transaction ID twice: one event, and both answers name it.
        txn_id = f"differential-{txn()}"
        content = {"msgtype": "m.text", "body": "sent twice, stored once"}
        once = await g[0].send_message_event(
            room_id, EventType.ROOM_MESSAGE, content, txn_id=txn_id, timestamp=TS0 + 9000
        )
        again = await g[0].send_message_event(
            room_id, EventType.ROOM_MESSAGE, content, txn_id=txn_id, timestamp=TS0 + 9000
        )
        seen["massaged_event_ids"].append(once)
        seen["ids"] = dict(
            m1=m1, m2=m2, reply=reply, reaction=reaction, edit=edit, thread=thread,
            doomed=doomed, topic=topic, redaction=redaction, once=once, again=again,
        )  # fmt: skip

        # What a bridge sees when it invites someone who is already there:
        # mautrix matches this error text and treats the invite as done.
        errors["bot invites a joined user"] = await as_user[bot.mxid].error(
            "POST", f"/v3/rooms/{r}/invite", body={"user_id": user.user_id}
        )
        await bot.invite_user(room_id, user.user_id)  # must not raise

        errors["user sets the room name"] = await u.error(
            "PUT", f"/v3/rooms/{r}/state/m.room.name/", body={"name": "mine now"}
        )
        errors["user kicks a ghost"] = await u.error(
            "POST", f"/v3/rooms/{r}/kick", body={"user_id": g[0].mxid}
        )
        errors["user redacts a ghost's message"] = await u.error(
            "PUT", f"/v3/rooms/{r}/redact/{q(m1)}/{txn()}", body={}
        )
        # Synapse answers this room ID itself in the synapse run; in the local
        # run an unknown room with the local prefix must get the same answer.
        unknown = f"!{'hs_' if not federate else ''}doesnotexistatall:{stack.SERVER_NAME}"
        errors["bot sends into an unknown room"] = await as_user[bot.mxid].error(
            "PUT",
            f"/v3/rooms/{q(unknown)}/send/m.room.message/{txn()}",
            body={"msgtype": "m.text", "body": "x"},
        )
        errors["user reads an unknown room"] = await u.error(
            "GET", f"/v3/rooms/{q(unknown)}/messages", {"dir": "b"}
        )
        errors["user reads an unknown event"] = await u.error(
            "GET", f"/v3/rooms/{r}/event/{q('$doesnotexist')}"
        )
        errors["appservice masquerades outside its namespace"] = await Http(
            http, appservice.as_token, user.user_id
        ).error("PUT", f"/v3/rooms/{r}/send/m.room.message/{txn()}", body={"msgtype": "m.text", "body": "x"})
        errors["appservice masquerades as an unregistered ghost"] = await Http(
            http, appservice.as_token, appservice.ghost(f"never_registered_{people['suffix']}")
        ).error("PUT", f"/v3/rooms/{r}/send/m.room.message/{txn()}", body={"msgtype": "m.text", "body": "x"})
        errors["unknown access token"] = await Http(http, "not-a-token").error("GET", f"/v3/rooms/{r}/state")

        # --- everything the user reads back. The forward timeline comes first:
        # normalise() numbers event IDs in order of first appearance.
        out: dict = {}
        out["messages forward"] = await paginate(nio, room_id, MessageDirection.front)
        out["messages backward"] = await paginate(nio, room_id, MessageDirection.back)
        out["members"] = await u.ok("GET", f"/v3/rooms/{r}/members")
        out["joined_members"] = await u.ok("GET", f"/v3/rooms/{r}/joined_members")
        out["state"] = await u.ok("GET", f"/v3/rooms/{r}/state")
        out["state topic"] = await u.ok("GET", f"/v3/rooms/{r}/state/m.room.topic/")
        # mautrix fetches the create event like this before its first send.
        out["state create (format=event)"] = await u.ok(
            "GET", f"/v3/rooms/{r}/state/m.room.create/", {"format": "event"}
        )
        out["context of m2"] = await u.ok("GET", f"/v3/rooms/{r}/context/{q(m2)}", {"limit": 4})
        out["event m2 (edited)"] = await u.ok("GET", f"/v3/rooms/{r}/event/{q(m2)}")
        out["event m1 (thread root)"] = await u.ok("GET", f"/v3/rooms/{r}/event/{q(m1)}")
        out["event doomed (redacted)"] = await u.ok("GET", f"/v3/rooms/{r}/event/{q(doomed)}")
        out["relations of m1"] = await u.ok("GET", f"/v1/rooms/{r}/relations/{q(m1)}")
        out["relations of m1, m.annotation"] = await u.ok(
            "GET", f"/v1/rooms/{r}/relations/{q(m1)}/m.annotation"
        )
        out["relations of m1, m.annotation m.reaction"] = await u.ok(
            "GET", f"/v1/rooms/{r}/relations/{q(m1)}/m.annotation/m.reaction"
        )
        out["relations of m2, m.replace"] = await u.ok("GET", f"/v1/rooms/{r}/relations/{q(m2)}/m.replace")
        out["timestamp_to_event f"] = await u.ok(
            "GET", f"/v1/rooms/{r}/timestamp_to_event", {"ts": TS0 + 1500, "dir": "f"}
        )
        out["timestamp_to_event b"] = await u.ok(
            "GET", f"/v1/rooms/{r}/timestamp_to_event", {"ts": TS0 + 6500, "dir": "b"}
        )
        rooms = await nio.joined_rooms()
        assert isinstance(rooms, JoinedRoomsResponse), rooms
        out["joined_rooms has the room"] = room_id in rooms.rooms
        out["errors"] = errors
        out["idempotent send"] = {"first": once, "second": again}
        seen["out"] = out
        return seen
    finally:
        await nio.close()
        await http.aclose()
        await as_api.session.close()


async def paginate(nio: AsyncClient, room_id: str, direction: MessageDirection) -> list[dict]:
    """/messages from one end of the room to the other (no `from`: the spec's
    "start from the end/beginning"), PAGE events at a time, through nio."""
    pages = []
    token = None
    while True:
        page = await nio.room_messages(room_id, start=token, direction=direction, limit=PAGE)
        assert isinstance(page, RoomMessagesResponse), page
        if token is not None:
            # Spec: `start` is the `from` token the page was asked for.
            assert page.start == token
        pages.append({"start": page.start, "end": page.end, "chunk": [e.source for e in page.chunk]})
        if page.end is None or not page.chunk:
            return pages
        token = page.end
        assert len(pages) < 50, "pagination does not end"


# --------------------------------------------------------------- normalising

ROOM_ID = re.compile(r"![A-Za-z0-9._=\-]+:[A-Za-z0-9.\-]+(?::[0-9]+)?")
EVENT_ID = re.compile(r"\$[A-Za-z0-9._~+/=\-]+(?::[A-Za-z0-9.\-]+(?::[0-9]+)?)?")
# Pagination and sync tokens: only their presence is compared. Synapse's
# tokens from different endpoints can be textually equal by accident of their
# format (a stream token vs a topological one), so numbering them would compare
# Synapse internals; the chaining the spec requires is asserted in paginate().
TOKEN_KEYS = {"start", "end", "next_batch", "prev_batch"}


# Fields Synapse adds that the spec's ClientEvent does not have, or that depend
# on the moment of the request; the local room need not reproduce them.
# Legacy pre-r0 copies at the top of an event (the spec keeps these in
# `unsigned` only, and nio and mautrix read them there first):
LEGACY_TOP_LEVEL = {"age", "user_id", "prev_content", "replaces_state", "redacted_because"}
SYNAPSE_ONLY_UNSIGNED = {
    # Milliseconds since the event, measured when the response was made.
    "age",
    # MSC4115, the reader's membership at the event: optional for servers.
    "membership",
    # Synapse's own, not in the spec (redacted_because is).
    "prev_sender",
    "redacted_by",
}
# Ours, not Synapse's: Beeper's stream order for bridges (test_bridge_extensions checks it).
HUNGRYSERV_ONLY_UNSIGNED = {"com.beeper.hs.order"}


class Normaliser:
    """Replaces room and event IDs with placeholders (numbered in order of
    first appearance), tokens and server clocks with markers, and drops the
    fields above."""

    def __init__(self, named_events: dict[str, str]) -> None:
        # The scenario's own events keep their role as their name ($m1,
        # $reaction, ...): readable, and immune to an extra event elsewhere.
        self.names: dict[str, str] = {}
        for role, event_id in named_events.items():
            self.names.setdefault(event_id, f"${role}")
        self.counts: dict[str, int] = {}

    def _name(self, value: str, kind: str) -> str:
        if value not in self.names:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.names[value] = f"{kind}{self.counts[kind]}"
        return self.names[value]

    def text(self, s: str) -> str:
        s = ROOM_ID.sub(lambda m: self._name(m.group(0), "!ROOM"), s)
        return EVENT_ID.sub(lambda m: self._name(m.group(0), "$EVENT"), s)

    def sections(self, out: dict) -> dict:
        # The other events are numbered by their place in the forward
        # timeline, so that one difference (say, a missing bundled
        # aggregation) does not renumber the events after it.
        for page in out["messages forward"]:
            for event in page["chunk"]:
                self.text(event["event_id"])
        return {name: self.walk(value) for name, value in out.items()}

    def walk(self, obj):
        if isinstance(obj, dict):
            is_event = "event_id" in obj and "type" in obj
            out = {}
            # Sorted, so numbering does not depend on a server's key order.
            for k in sorted(obj):
                v = obj[k]
                if is_event and k in LEGACY_TOP_LEVEL:
                    continue
                if k in TOKEN_KEYS and isinstance(v, str):
                    out[k] = "<token>"
                elif k == "origin_server_ts" and isinstance(v, int) and v not in MASSAGED:
                    # Stamped by the server's clock; a massaged ts is compared as is.
                    out[k] = "<server time>"
                elif is_event and k == "unsigned":
                    out[k] = self.walk({
                            uk: uv
                            for uk, uv in v.items()
                            if uk not in SYNAPSE_ONLY_UNSIGNED | HUNGRYSERV_ONLY_UNSIGNED
                        })
                else:
                    out[self.text(k)] = self.walk(v)
            return out
        if isinstance(obj, list):
            return [self.walk(v) for v in obj]
        if isinstance(obj, str):
            return self.text(obj)
        return obj


def by_state_key(events: list[dict]) -> list[dict]:
    """Lists the spec leaves unordered (state, members) in a fixed order."""
    return sorted(events, key=lambda e: (e.get("type", ""), e.get("state_key", "")))


def last_page_without_end(pages: list[dict]) -> list[dict]:
    """Synapse sends `end` on the last page that has events and then answers
    one more, empty page without it; the spec wants `end` omitted as soon as
    no more events are available. Clients stop at either, so both shapes
    compare equal: the trailing empty page and the last page's `end` go."""
    if len(pages) > 1 and not pages[-1]["chunk"] and pages[-1]["end"] is None:
        pages = pages[:-1]
    return [*pages[:-1], {**pages[-1], "end": None}]


def normalise(seen: dict) -> dict:
    out = json.loads(json.dumps(seen["out"]))
    for direction in ("messages forward", "messages backward"):
        out[direction] = last_page_without_end(out[direction])
    # The one intended difference between the runs, checked in check_expectations.
    for create in iter_events(out, "m.room.create"):
        create["content"].pop("m.federate", None)
    out["members"]["chunk"] = by_state_key(out["members"]["chunk"])
    out["state"] = by_state_key(out["state"])
    out["context of m2"]["state"] = by_state_key(out["context of m2"]["state"])
    return Normaliser(seen["ids"]).sections(out)


def iter_events(obj, event_type: str):
    if isinstance(obj, dict):
        if obj.get("type") == event_type and "content" in obj:
            yield obj
        for v in obj.values():
            yield from iter_events(v, event_type)
    elif isinstance(obj, list):
        for v in obj:
            yield from iter_events(v, event_type)


# --------------------------------------------------------------- expectations


def check_expectations(seen: dict, federate: bool, people: dict) -> None:
    """What the scenario must produce in either room, stated directly, so a
    wrong answer that both runs share still fails."""
    out, ids = seen["out"], seen["ids"]
    ghosts = people["ghosts"]
    forward = [e for page in out["messages forward"] for e in page["chunk"]]
    backward = [e for page in out["messages backward"] for e in page["chunk"]]

    assert forward[0]["type"] == "m.room.create"
    assert forward[0]["content"].get("m.federate") is federate
    assert forward[0]["content"]["room_version"] == "10"
    assert [e["event_id"] for e in backward] == [e["event_id"] for e in forward][::-1]

    by_id = {e["event_id"]: e for e in forward}
    assert list(by_id) == [e["event_id"] for e in forward], "an event appears twice in the timeline"
    bodies = [(e["sender"], e["content"].get("body")) for e in forward if e["type"] == "m.room.message"]
    assert bodies == [
        (ghosts[0], "hello from ghost 0"),
        (ghosts[1], "hello from ghost 1"),
        (ghosts[0], "a reply"),
        (ghosts[1], "* hello edited"),
        (ghosts[2], "in a thread"),
        (ghosts[0], None),  # redacted
        (ghosts[0], "sent twice, stored once"),
    ]
    for event_id in seen["massaged_event_ids"]:
        assert by_id[event_id]["origin_server_ts"] in MASSAGED

    doomed = by_id[ids["doomed"]]
    assert doomed["content"] == {}
    assert doomed["unsigned"]["redacted_because"]["event_id"] == ids["redaction"]
    assert out["event doomed (redacted)"]["content"] == {}

    assert ids["once"] == ids["again"]

    memberships = {e["state_key"]: e["content"]["membership"] for e in out["members"]["chunk"]}
    assert memberships == {
        people["appservice"].bot: "join",
        people["user"].user_id: "join",
        ghosts[0]: "join",
        ghosts[1]: "leave",  # kicked
        ghosts[2]: "leave",  # banned, then unbanned
    }
    assert set(out["joined_members"]["joined"]) == {
        people["appservice"].bot,
        people["user"].user_id,
        ghosts[0],
    }
    assert out["state topic"] == {"topic": "second topic"}

    # Relations: newest first; replies (m.in_reply_to) are not relations.
    assert [e["event_id"] for e in out["relations of m1"]["chunk"]] == [ids["thread"], ids["reaction"]]
    assert [e["event_id"] for e in out["relations of m1, m.annotation"]["chunk"]] == [ids["reaction"]]
    assert [e["event_id"] for e in out["relations of m2, m.replace"]["chunk"]] == [ids["edit"]]

    assert out["timestamp_to_event f"] == {"event_id": ids["m2"], "origin_server_ts": TS0 + 2000}
    assert out["timestamp_to_event b"] == {"event_id": ids["thread"], "origin_server_ts": TS0 + 6000}
    assert out["joined_rooms has the room"] is True

    errors = out["errors"]
    statuses = {name: (e["status"], e["errcode"]) for name, e in errors.items()}
    assert statuses == {
        "ghost sends before joining": (403, "M_FORBIDDEN"),
        "uninvited ghost joins": (403, "M_FORBIDDEN"),
        "bot invites a joined user": (403, "M_FORBIDDEN"),
        "user sets the room name": (403, "M_FORBIDDEN"),
        "user kicks a ghost": (403, "M_FORBIDDEN"),
        "user redacts a ghost's message": (403, "M_FORBIDDEN"),
        "bot sends into an unknown room": (403, "M_FORBIDDEN"),
        "user reads an unknown room": (403, "M_FORBIDDEN"),
        "user reads an unknown event": (404, "M_NOT_FOUND"),
        "appservice masquerades outside its namespace": (403, "M_FORBIDDEN"),
        "appservice masquerades as an unregistered ghost": (403, "M_FORBIDDEN"),
        "unknown access token": (401, "M_UNKNOWN_TOKEN"),
    }
    assert "is already in the room" in errors["bot invites a joined user"]["error"]


# --------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def people() -> dict:
    """The same user and ghosts act in both runs, so user IDs need no
    normalising; only room and event IDs differ."""
    appservice = stack.example_appservice()
    suffix = secrets.token_hex(3)
    return {
        "appservice": appservice,
        "user": stack.register_user(),
        "ghosts": [appservice.ghost(f"diff{suffix}_{i}") for i in range(4)],
        "suffix": suffix,
    }


@pytest.fixture(scope="module")
def synapse_run(people) -> dict:
    return asyncio.run(scenario(VARIANTS["synapse"], people))


def dump(value) -> str:
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False)


def section_diffs(expected: dict, actual: dict) -> str:
    """A unified diff per differing section, headed by the section's name."""
    parts = []
    for name in expected.keys() | actual.keys():
        want, got = dump(expected.get(name)), dump(actual.get(name))
        if want != got:
            lines = difflib.unified_diff(
                want.splitlines(), got.splitlines(), "synapse", "local", n=3, lineterm=""
            )
            parts.append(f"### {name}\n" + "\n".join(lines))
    return "\n\n".join(sorted(parts))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bridge_room_reads_the_same(variant, people, synapse_run, tmp_path):
    seen = synapse_run if variant == "synapse" else asyncio.run(scenario(VARIANTS[variant], people))
    local = seen["room_id"].startswith("!hs_")
    assert local == (variant == "local"), f"the {variant} run created {seen['room_id']}"
    if variant == "synapse":
        check_expectations(seen, VARIANTS[variant], people)
        return

    # The diff first: it says more than the first failed expectation would.
    expected, actual = normalise(synapse_run), normalise(seen)
    if expected != actual:
        (tmp_path / "synapse.json").write_text(dump(expected))
        (tmp_path / "local.json").write_text(dump(actual))
        pytest.fail(
            f"the local room reads differently from the Synapse room (whole answers in {tmp_path}):\n"
            + section_diffs(expected, actual),
            pytrace=False,
        )
    check_expectations(seen, VARIANTS[variant], people)
