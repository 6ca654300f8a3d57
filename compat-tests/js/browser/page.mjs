// The web client of compat-tests/test_browser.py: matrix-js-sdk in a page,
// bundled for the browser by browser_run.mjs (esbuild) and served from another
// origin than the homeserver, so every request it makes is a cross-origin one.
//
// It logs in with a password, syncs, lists one room's messages in the DOM and
// sends one message. Everything the test reads is in the DOM:
//   #status[data-state]    login, syncing, sending, done or error (the text
//                          says what went wrong)
//   #messages > li         the room's m.room.message events in timeline
//                          order: data-event-id, data-sender, data-pending
//                          ("true" while only the local echo exists); the
//                          sender in <b>, the body in span.body
//   #sent[data-event-id]   the event ID the server gave the sent message
//
// Its input is the page URL's `config` parameter (JSON): homeserver, user,
// password, room_id, expect (bodies that must be shown before sending) and
// send_body.

import { ClientEvent, createClient, RoomEvent, SyncState } from "matrix-js-sdk";

const config = JSON.parse(new URLSearchParams(location.search).get("config"));
const status = document.getElementById("status");
const list = document.getElementById("messages");
const sent = document.getElementById("sent");

function setState(state, detail = "") {
    status.dataset.state = state;
    status.textContent = detail ? `${state}: ${detail}` : state;
}

// Re-rendered whole on each change: the room's live timeline is small.
function render(room) {
    document.getElementById("room").textContent = `${room.name} (${room.roomId})`;
    const items = room
        .getLiveTimeline()
        .getEvents()
        .filter((event) => event.getType() === "m.room.message")
        .map((event) => {
            const item = document.createElement("li");
            item.dataset.eventId = event.getId();
            item.dataset.sender = event.getSender();
            // Local echo: the SDK shows a message before the server has it.
            item.dataset.pending = String(event.status !== null);
            const sender = document.createElement("b");
            sender.textContent = event.getSender();
            const body = document.createElement("span");
            body.className = "body";
            body.textContent = event.getContent().body ?? "";
            item.append(sender, " ", body);
            return item;
        });
    list.replaceChildren(...items);
}

function shown() {
    return [...list.children].filter((li) => li.dataset.pending === "false");
}

// Resolves once `done()` holds, checked at every timeline change of the room.
function until(client, done) {
    return new Promise((resolve) => {
        const check = () => {
            if (done()) {
                client.off(RoomEvent.Timeline, check);
                client.off(RoomEvent.LocalEchoUpdated, check);
                resolve();
            }
        };
        client.on(RoomEvent.Timeline, check);
        client.on(RoomEvent.LocalEchoUpdated, check);
        check();
    });
}

async function main() {
    setState("login");
    const anonymous = createClient({ baseUrl: config.homeserver });
    const login = await anonymous.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: config.user },
        password: config.password,
        initial_device_display_name: "hungryserv browser test",
    });
    const client = createClient({
        baseUrl: config.homeserver,
        userId: login.user_id,
        accessToken: login.access_token,
        deviceId: login.device_id,
    });
    window.matrixClient = client;

    setState("syncing");
    client.on(ClientEvent.Sync, (state, _prev, data) => {
        if (state === SyncState.Error) {
            setState("error", `sync: ${data?.error?.message ?? data?.error ?? "unknown"}`);
        }
    });
    client.on(RoomEvent.Timeline, (_event, room) => {
        if (room?.roomId === config.room_id) render(room);
    });
    client.on(RoomEvent.LocalEchoUpdated, (_event, room) => {
        if (room?.roomId === config.room_id) render(room);
    });
    await client.startClient({ initialSyncLimit: 20 });
    await new Promise((resolve) => {
        if (client.isInitialSyncComplete()) return resolve();
        client.once(ClientEvent.Sync, function onSync(state) {
            if (state === SyncState.Prepared || state === SyncState.Syncing) resolve();
            else client.once(ClientEvent.Sync, onSync);
        });
    });
    const room = client.getRoom(config.room_id);
    if (!room) throw new Error(`room ${config.room_id} is not in the client after sync`);
    render(room);
    await until(client, () => {
        const bodies = shown().map((li) => li.querySelector(".body").textContent);
        return config.expect.every((body) => bodies.includes(body));
    });

    setState("sending");
    const { event_id } = await client.sendMessage(config.room_id, { msgtype: "m.text", body: config.send_body });
    sent.dataset.eventId = event_id;
    sent.textContent = `sent ${event_id}`;
    // Done when the message is in the list as the server's own copy (its
    // remote echo came back through /sync), not only as the local echo.
    await until(client, () => shown().some((li) => li.dataset.eventId === event_id));
    render(room);
    client.stopClient();
    setState("done");
}

main().catch((err) => setState("error", err?.message ?? String(err)));
