"""hungryserv's Synapse module: presence for users who share local rooms.

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
