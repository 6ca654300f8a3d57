// Syncs as one user with matrix-js-sdk and reports what its client saw.
//
// Driven by compat-tests/test_sync_jssdk.py. Input, one JSON object on the
// first line of stdin:
//   homeserver    base URL, e.g. http://127.0.0.1:8008
//   user_id       the user to sync as
//   access_token  that user's token
//   expect        {room_id: number of m.room.message events the test will send}
//   deadline_ms   hard limit on the whole run
//   grace_ms      how long to wait for missing events once stdin is closed
//   settle_ms     how long to keep syncing once everything arrived, so that
//                 a late duplicate is still seen
// The test closes stdin when it has sent everything; from then on the grace
// period runs.
//
// Output: "prepared" on stderr once the first sync has been processed (the
// test starts sending then), and one JSON object on stdout at the end:
//   events  {room_id: [{event_id, type, sender, seq, body}]}, live timeline
//           events in the order the SDK emitted them, duplicates included
//   syncs   one entry per /sync response: {since, next_batch, rooms}, where
//           rooms has, for each expected room in rooms.join, the timeline's
//           event IDs and its `limited` flag
//   stopped why the run ended: "complete", "grace" or "deadline"
//   sync_state, sync_error  the SDK's last sync state, and its error if any

import readline from "node:readline";
import { pathToFileURL } from "node:url";

// The packages are where compat-tests/run installed them (a cache directory
// keyed by package-lock.json, named in COMPAT_JS_NODE_MODULES), or beside this
// file after a plain `npm ci` here. An import statement cannot name a
// directory chosen at run time, hence the dynamic import.
const nodeModules = process.env.COMPAT_JS_NODE_MODULES
    ? pathToFileURL(`${process.env.COMPAT_JS_NODE_MODULES}/`)
    : new URL("./node_modules/", import.meta.url);
const { ClientEvent, createClient, Filter, RoomEvent } = await import(
    new URL("matrix-js-sdk/lib/index.js", nodeModules)
);

// stdout carries the result only. The SDK logs through console, looked up
// at each call: its debug and info lines are dropped (Node would write them
// to stdout), its warnings and errors go to stderr as usual.
console.log = console.info = console.debug = () => {};

// The initial sync gets a small timeline (the rooms' setup events are not
// under test). Incremental syncs get a limit above the whole test's traffic:
// a client that keeps up must then never see a gap (`limited`), so every
// sent event has to arrive live, exactly once.
const INITIAL_SYNC_LIMIT = 2;
const LIVE_TIMELINE_LIMIT = 100;

const stdin = readline.createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
const config = JSON.parse((await lines.next()).value);
let sendersDone = false;
// The rest of stdin is ignored; its end means "the test has sent everything".
(async () => {
    for await (const _ of lines);
    sendersDone = true;
})();

const startedAt = Date.now();
const expected = new Map(Object.entries(config.expect));
const events = Object.fromEntries([...expected.keys()].map((roomId) => [roomId, []]));
const messagesSeen = Object.fromEntries([...expected.keys()].map((roomId) => [roomId, new Set()]));
const syncs = [];

// Every /sync response, as the server sent it, before the SDK processes it.
async function recordingFetch(resource, options) {
    const response = await fetch(resource, options);
    const url = new URL(resource instanceof Request ? resource.url : String(resource));
    if (url.pathname.endsWith("/sync") && response.ok) {
        const body = await response.clone().json();
        const rooms = {};
        for (const [roomId, room] of Object.entries(body.rooms?.join ?? {})) {
            if (!expected.has(roomId)) continue;
            rooms[roomId] = {
                timeline: (room.timeline?.events ?? []).map((e) => e.event_id),
                limited: room.timeline?.limited ?? false,
            };
        }
        syncs.push({ since: url.searchParams.get("since"), next_batch: body.next_batch, rooms });
    }
    return response;
}

const client = createClient({
    baseUrl: config.homeserver,
    userId: config.user_id,
    accessToken: config.access_token,
    fetchFn: recordingFetch,
});

client.on(RoomEvent.Timeline, (event, room, toStartOfTimeline, removed) => {
    // Back-pagination and removals are not news from /sync.
    if (toStartOfTimeline || removed || !room || !expected.has(room.roomId)) return;
    const content = event.getContent();
    events[room.roomId].push({
        event_id: event.getId(),
        type: event.getType(),
        sender: event.getSender(),
        seq: content.seq ?? null,
        body: content.body ?? null,
    });
    if (event.getType() === "m.room.message") messagesSeen[room.roomId].add(event.getId());
});

let prepared = false;
let syncState = null;
let syncError = null;
client.on(ClientEvent.Sync, (state, _prev, data) => {
    syncState = state;
    syncError = data?.error ? String(data.error) : null;
    if (state === "PREPARED") prepared = true;
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Polls `predicate` until it holds or the clock passes `until`; says which.
async function waitFor(predicate, until) {
    while (!predicate() && Date.now() < until) await sleep(50);
    return predicate();
}
const complete = () => [...expected].every(([roomId, count]) => messagesSeen[roomId].size >= count);

await client.startClient({
    initialSyncLimit: INITIAL_SYNC_LIMIT,
    filter: Filter.fromJson(config.user_id, null, { room: { timeline: { limit: LIVE_TIMELINE_LIMIT } } }),
    lazyLoadMembers: true,
    disablePresence: true,
});

const deadline = startedAt + config.deadline_ms;
let stopped = "deadline";
if (await waitFor(() => prepared, deadline)) {
    process.stderr.write("prepared\n");
    await waitFor(() => sendersDone, deadline);
    if (await waitFor(complete, Math.min(deadline, Date.now() + config.grace_ms))) {
        stopped = "complete";
        await sleep(config.settle_ms);
    } else if (Date.now() < deadline) {
        stopped = "grace";
    }
}

client.stopClient();
const result = { events, syncs, stopped, sync_state: syncState, sync_error: syncError };
// Exit once the result is flushed: the SDK may still hold timers and sockets.
process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(0));
