"""hungryserv's Synapse module: presence for users who share local rooms, and MSC3202 key
counts for hungryserv's own appservice transactions.

Synapse decides whose presence a user sees from the rooms it knows, and it does not know
hungryserv's local rooms: two users who share only local rooms never see each other's
presence. This module is a `presence_router` (Synapse's module interface for exactly this:
"which users receive someone's presence", `docs/modules/presence_router_callbacks.md`) that
adds the users who share a joined local room.

Why a module and not hungryserv's side: presence lives in Synapse (set by `/sync?set_presence`
and `PUT /presence`, with idle and offline timeouts, `last_active_ago`, `currently_active`);
copying that machinery into hungryserv would be a second presence server that disagrees
with the first. With the router, Synapse itself puts local co-members' presence into its
`/sync` (which hungryserv merges unchanged) and wakes their syncs on a change.

Where co-membership comes from: hungryserv's database, read-only (`memberships`: one row per
user and local room; a user shares a room with another when both rows say `join`), with the
same query as hungryserv's `store::devices::co_members`. The module ships with hungryserv
and changes with its schema. Answers are cached per user for `cache_seconds` (default 10):
`get_interested_users` runs on every presence computation of every `/sync`, and a join or
leave in a local room reaches presence within that time. A database that cannot be read
gives no extra users (Synapse's own presence is unaffected) and a warning in Synapse's log.

What it does not do: `GET /presence/{userId}/status` ignores presence routers in Synapse
(it asks "share a room?" itself), so it still answers 403 for a user met only in local rooms;
and the user directory has no module interface that can add results (the spam checker can only
remove them), so hungryserv merges `/user_directory/search` itself (src/api/user_directory.rs).

MSC3202 key counts: an appservice that opts into MSC3202 gets, in every transaction, the
one-time-key counts and unused fallback-key types of its users' devices. hungryserv builds
the transactions of local rooms itself, but the keys live in Synapse (uploads and claims,
also over federation, are Synapse's). The module therefore serves
`POST /_synapse/client/hungryserv/v1/msc3202_key_counts` with `{"user_ids": [...]}`, asked
with an appservice's `as_token` (anything else: 403), and answers
`{"device_one_time_keys_count": …, "device_unused_fallback_key_types": …}` for those of the
users the appservice is interested in (its bot and user namespaces; others are left out),
computed by the same two store methods Synapse's own appservice scheduler calls
(`_compute_msc3202_otk_counts_and_fallback_keys`), so both kinds of transaction carry the
same figures. At most 1,000 users per call.

Rooms for the umbrella: hungryserv splits Synapse's transactions to its umbrella registration
among the bridges registered behind it (src/appservice/umbrella.rs), by Synapse's interest
rules. Two of them need what only Synapse knows: a room's aliases (alias namespaces) and the
rooms of a user whose device list changed (a bridge gets the change only if the user shares
a room with it). The module serves `POST /_synapse/client/hungryserv/v1/appservice_rooms`
with `{"user_ids": [...], "room_ids": [...]}` (at most 1,000 of each), asked with an
appservice's `as_token`, and answers `{"rooms_of_users": {user: [room, ...]}, "aliases":
{room: [alias, ...]}}`: for each user, those of their joined rooms the appservice is
interested in (Synapse's `is_interested_in_room`, the test Synapse's
`_is_appservice_interested_in_device_lists_of_user` makes), and the aliases of the rooms
named and of those rooms.

Install (one Python file): put this file's directory on Synapse's `PYTHONPATH` (or copy the file
into Synapse's site-packages) and add to homeserver.yaml, in every Synapse process:

    modules:
      - module: hungryserv_synapse.PresenceRouter
        config:
          # hungryserv's database (its `database.url`); a read-only role is enough.
          database_url: "postgres://hungryserv_ro:…@db/hungryserv"
          cache_seconds: 10

Synapse's own psycopg2 (installed with `matrix-synapse[postgres]`) is used.
"""

import logging
import time
from typing import Iterable

import psycopg2
from synapse.api.errors import SynapseError
from synapse.module_api import DirectServeJsonResource, parse_json_object_from_request

logger = logging.getLogger(__name__)

CO_MEMBERS = """
    SELECT DISTINCT other.user_id
    FROM memberships mine
    JOIN memberships other ON other.room_id = mine.room_id
    WHERE mine.user_id = %s AND mine.membership = 'join'
      AND other.membership = 'join' AND other.user_id <> %s
"""

# Entries kept at most; the cache starts over when full.
MAX_CACHED = 100_000

# Where hungryserv asks for MSC3202 key counts, and how many users one call may name.
KEY_COUNTS_PATH = "/_synapse/client/hungryserv/v1/msc3202_key_counts"
MAX_KEY_COUNT_USERS = 1000


async def requesting_appservice(api, request):
    """The appservice whose `as_token` the request carries (403 for anything else)."""
    requester = await api.get_user_by_req(request)
    # Synapse 1.163's Requester names the appservice by its id (`app_service_id`).
    service_id = getattr(requester, "app_service_id", None)
    service = api._store.get_app_service_by_id(service_id) if service_id else None
    if service is None:
        raise SynapseError(403, "Only an application service may ask this", "M_FORBIDDEN")
    return service


def string_list(body: dict, key: str) -> list[str]:
    values = body.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SynapseError(400, f"{key} must be a list of strings", "M_BAD_JSON")
    if len(values) > MAX_KEY_COUNT_USERS:
        raise SynapseError(400, f"At most {MAX_KEY_COUNT_USERS} {key}", "M_INVALID_PARAM")
    return values


APPSERVICE_ROOMS_PATH = "/_synapse/client/hungryserv/v1/appservice_rooms"


class AppserviceRooms(DirectServeJsonResource):
    """`POST APPSERVICE_ROOMS_PATH`: rooms of users that the appservice is interested in, and
    rooms' aliases (see the module doc)."""

    def __init__(self, api):
        super().__init__()
        self.api = api

    async def _async_render_POST(self, request):
        service = await requesting_appservice(self.api, request)
        body = parse_json_object_from_request(request)
        users = string_list(body, "user_ids")
        rooms = set(string_list(body, "room_ids"))
        store = self.api._store
        rooms_of_users = {}
        for user in set(users):
            interesting = []
            for room_id in await store.get_rooms_for_user(user):
                if await service.is_interested_in_room(room_id, store):
                    interesting.append(room_id)
            rooms_of_users[user] = sorted(interesting)
            rooms.update(interesting)
        aliases = {}
        for room_id in rooms:
            found = await store.get_aliases_for_room(room_id)
            if found:
                aliases[room_id] = sorted(found)
        return 200, {"rooms_of_users": rooms_of_users, "aliases": aliases}


class KeyCounts(DirectServeJsonResource):
    """`POST KEY_COUNTS_PATH`: the MSC3202 one-time-key counts and unused fallback-key types
    of an appservice's users, as Synapse's scheduler puts them into its transactions."""

    def __init__(self, api):
        super().__init__()
        self.api = api

    async def _async_render_POST(self, request):
        service = await requesting_appservice(self.api, request)
        users = string_list(parse_json_object_from_request(request), "user_ids")
        users = sorted({u for u in users if service.is_interested_in_user(u)})
        store = self.api._store
        counts = await store.count_bulk_e2e_one_time_keys_for_as(users) if users else {}
        fallback = await store.get_e2e_bulk_unused_fallback_key_types(users) if users else {}
        return 200, {
            "device_one_time_keys_count": counts,
            "device_unused_fallback_key_types": fallback,
        }


class PresenceRouter:
    def __init__(self, config: dict, api):
        self.api = api
        self.database_url = config["database_url"]
        self.cache_seconds = float(config.get("cache_seconds", 10))
        self.cache: dict[str, tuple[float, frozenset[str]]] = {}
        self.connection = None
        api.register_presence_router_callbacks(
            get_users_for_states=self.get_users_for_states,
            get_interested_users=self.get_interested_users,
        )
        api.register_web_resource(KEY_COUNTS_PATH, KeyCounts(api))
        api.register_web_resource(APPSERVICE_ROOMS_PATH, AppserviceRooms(api))

    @staticmethod
    def parse_config(config: dict) -> dict:
        if not isinstance(config.get("database_url"), str):
            raise Exception("hungryserv_synapse.PresenceRouter: config.database_url (hungryserv's database) is required")
        return config

    def _query(self, user_id: str) -> frozenset[str]:
        """Runs in a thread (psycopg2 blocks)."""
        for attempt in (1, 2):
            try:
                if self.connection is None or self.connection.closed:
                    self.connection = psycopg2.connect(self.database_url, connect_timeout=2)
                    self.connection.set_session(readonly=True, autocommit=True)
                with self.connection.cursor() as cursor:
                    cursor.execute(CO_MEMBERS, (user_id, user_id))
                    return frozenset(row[0] for row in cursor.fetchall())
            except psycopg2.Error:
                # A dropped connection is opened again once.
                self.connection = None
                if attempt == 2:
                    raise
        return frozenset()

    async def co_members(self, user_id: str) -> frozenset[str]:
        now = time.monotonic()
        cached = self.cache.get(user_id)
        if cached and now - cached[0] < self.cache_seconds:
            return cached[1]
        try:
            users = await self.api.defer_to_thread(self._query, user_id)
        except Exception as e:
            logger.warning("hungryserv co-members of %s not read: %s", user_id, e)
            return cached[1] if cached else frozenset()
        if len(self.cache) >= MAX_CACHED:
            self.cache.clear()
        self.cache[user_id] = (now, users)
        return users

    async def get_users_for_states(self, state_updates: Iterable) -> dict[str, set]:
        recipients: dict[str, set] = {}
        for state in state_updates:
            for user in await self.co_members(state.user_id):
                recipients.setdefault(user, set()).add(state)
        return recipients

    async def get_interested_users(self, user_id: str) -> set[str]:
        return set(await self.co_members(user_id))
