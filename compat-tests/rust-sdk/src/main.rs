//! matrix-rust-sdk (`matrix-sdk` and `matrix-sdk-ui`, the engine of Element X) as a client of
//! hungryserv, for compat-tests/test_rust_sdk.py.
//!
//! One run logs one user in with a password, starts a `SyncService` as Element X does (the
//! room list and the encryption sync over simplified sliding sync, MSC4186, found through
//! `/versions`), plays one scenario and prints what the user saw as one JSON object on stdout.
//! Every wait has a deadline (`--timeout`): when it passes, the run exits non-zero and says on
//! stderr what it waited for and what it saw last. The scenario's parameters (room IDs, the
//! bridge bot that sends) come as JSON in `--params`; the test creates the rooms.
//!
//! Scenarios:
//! - `room-list`: the `RoomListService` list holds `expected` (newest first); a message from
//!   the sender in `bump_room` moves it to the top.
//! - `timeline`: a room's `Timeline` shows a message that arrives while it is open, and a
//!   message the user sends through it ends as sent with an event ID.
//! - `pagination`: back pagination of a room's `Timeline` reaches the start of the room.
//! - `unread`: the sender posts three messages (the first mentions the user) in each of
//!   `rooms`; the user then sets a read receipt on the second and on the third. The counts of
//!   each room are reported after each step: the client's own (`num_unread_*`, from the
//!   events and receipts it has: what Element X shows) and the server's
//!   (`notification_count`, `highlight_count`; Synapse 1.163's sliding sync always sends 0).
//! - `e2ee`: real encryption over the classic `/sync` with a new device and an identity reset
//!   (see `e2ee.rs`); it runs its own clients instead of the `SyncService`.

// matrix-sdk's futures nest deeply (Timeline::send inside an async fn).
#![recursion_limit = "256"]

mod e2ee;

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use eyeball_im::Vector;
use futures_util::{StreamExt, pin_mut};
use matrix_sdk::{
    Client, Room, RoomState, reqwest,
    ruma::{
        OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
        api::client::receipt::create_receipt::v3::ReceiptType as SendReceiptType,
        events::{
            AnyMessageLikeEventContent,
            receipt::{ReceiptThread, ReceiptType},
            room::message::RoomMessageEventContent,
        },
    },
    sliding_sync::VersionBuilder,
};
use matrix_sdk_ui::{
    room_list_service::{RoomListItem, RoomListLoadingState, filters::new_filter_non_left},
    sync_service::SyncService,
    timeline::{EventSendState, RoomExt, Timeline, TimelineItem, VirtualTimelineItem},
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "matrix-rust-sdk scenarios against a homeserver; prints JSON results")]
struct Args {
    /// The homeserver's client-server base URL.
    #[arg(long, env = "HS_URL")]
    homeserver: String,
    /// The user who logs in (full Matrix ID).
    #[arg(long, env = "RUST_SDK_USER")]
    user: String,
    /// That user's password.
    #[arg(long, env = "RUST_SDK_PASSWORD")]
    password: String,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// The scenario's parameters, a JSON object (see each scenario).
    #[arg(long, default_value = "{}")]
    params: String,
    /// Seconds each wait may take before the run fails.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    RoomList,
    Timeline,
    Pagination,
    Unread,
    E2ee,
}

/// Someone else in the rooms who sends messages over plain HTTP (the bridge bot, with its
/// as_token), so the user's client sees them arrive through sync.
#[derive(Clone)]
struct Sender {
    http: reqwest::Client,
    homeserver: String,
    access_token: String,
}

impl Sender {
    fn from_params(homeserver: &str, params: &Value) -> Result<Self> {
        let access_token = params
            .pointer("/sender/access_token")
            .and_then(Value::as_str)
            .context("params.sender.access_token is missing")?;
        Ok(Self {
            http: reqwest::Client::new(),
            homeserver: homeserver.trim_end_matches('/').to_owned(),
            access_token: access_token.to_owned(),
        })
    }

    /// PUT an m.room.message; answers its event ID.
    async fn send(&self, room_id: &RoomId, content: Value) -> Result<OwnedEventId> {
        static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let txn = format!(
            "rustsdk-{}-{}",
            std::process::id(),
            TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            self.homeserver,
            percent_encode(room_id.as_str())
        );
        let resp = self
            .http
            .put(&url)
            .bearer_auth(&self.access_token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&content)?)
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        let status = resp.status();
        let body: Value = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("the sender's PUT {url} answered {status}: {body}");
        }
        let event_id = body["event_id"]
            .as_str()
            .context("send answered no event_id")?;
        Ok(event_id.try_into()?)
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Poll `probe` every 100 ms until it answers `Ok`, or fail after `timeout` with what it
/// answered last (`Err(last seen)`).
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Value>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(value) => {
                eprintln!("ok after {:.1}s: {what}", start.elapsed().as_secs_f64());
                return Ok(value);
            }
            Err(last) if start.elapsed() >= timeout => {
                bail!(
                    "timed out after {}s waiting for {what}; last seen: {last}",
                    timeout.as_secs()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn room_id_param(params: &Value, pointer: &str) -> Result<OwnedRoomId> {
    let s = params
        .pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("params{} is missing", pointer.replace('/', ".")))?;
    Ok(s.try_into()?)
}

/// The logged-in user's client with its sync running, and the room list as the UI shows it
/// (all non-left rooms, the SDK's own order: recency, then name), kept up to date by a task.
struct Session {
    client: Client,
    sync: SyncService,
    list: Arc<Mutex<Vector<RoomListItem>>>,
    timeout: Duration,
}

impl Session {
    async fn start(args: &Args) -> Result<Self> {
        let client = Client::builder()
            .homeserver_url(&args.homeserver)
            // As Element X: simplified sliding sync, if /versions advertises it.
            .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
            .build()
            .await
            .context("building the client (GET /versions; simplified sliding sync advertised?)")?;
        client
            .matrix_auth()
            .login_username(&args.user, &args.password)
            .initial_device_display_name("hs-rust-sdk-compat")
            .send()
            .await
            .context("password login")?;
        let sync = SyncService::builder(client.clone())
            .build()
            .await
            .context("building the SyncService")?;
        sync.start().await;

        let list = Arc::new(Mutex::new(Vector::new()));
        let all_rooms = sync
            .room_list_service()
            .all_rooms()
            .await
            .context("RoomListService::all_rooms")?;
        let shared = list.clone();
        tokio::spawn(async move {
            let (stream, controller) = all_rooms.entries_with_dynamic_adapters(200);
            controller.set_filter(Box::new(new_filter_non_left()));
            pin_mut!(stream);
            while let Some(diffs) = stream.next().await {
                let mut list = shared.lock().unwrap_or_else(|e| e.into_inner());
                for diff in diffs {
                    diff.apply(&mut list);
                }
            }
        });
        Ok(Self {
            client,
            sync,
            list,
            timeout: Duration::from_secs(args.timeout),
        })
    }

    /// Room IDs in the order the room list shows them.
    fn order(&self) -> Vec<OwnedRoomId> {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().map(|r| r.room_id().to_owned()).collect()
    }

    /// Whether every one of `rooms` in the list has its latest event computed.
    fn have_latest_events(&self, rooms: &[OwnedRoomId]) -> bool {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        rooms.iter().all(|room_id| {
            list.iter()
                .any(|r| r.room_id() == room_id && r.latest_event_timestamp().is_some())
        })
    }

    fn list_json(&self) -> Value {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .map(|r| {
                json!({
                    "room_id": r.room_id(),
                    "name": r.cached_display_name().map(|n| n.to_string()),
                    "state": format!("{:?}", r.state()),
                    "recency_stamp": r.recency_stamp().map(u64::from),
                    "latest_event_ts": r.latest_event_timestamp().map(|ts| u64::from(ts.0)),
                })
            })
            .collect()
    }

    /// The joined room, once sync has brought it.
    async fn joined_room(&self, room_id: &RoomId) -> Result<Room> {
        wait_for(
            &format!("room {room_id} to be joined in the client"),
            self.timeout,
            || async {
                match self.client.get_room(room_id) {
                    Some(room) if room.state() == RoomState::Joined => Ok(room),
                    Some(room) => Err(json!({"state": format!("{:?}", room.state())})),
                    None => Err(json!({"room_list": self.order()})),
                }
            },
        )
        .await
    }

    async fn stop(self) {
        self.sync.stop().await;
    }
}

async fn room_list(s: &Session, params: &Value, sender: &Sender) -> Result<Value> {
    let expected: Vec<OwnedRoomId> = params["expected"]
        .as_array()
        .context("params.expected (room IDs, newest first) is missing")?
        .iter()
        .map(|v| {
            v.as_str()
                .context("a room ID")
                .and_then(|s| Ok(s.try_into()?))
        })
        .collect::<Result<_>>()?;
    let bump: OwnedRoomId = room_id_param(params, "/bump_room")?;
    let ours = |order: Vec<OwnedRoomId>| -> Vec<OwnedRoomId> {
        order.into_iter().filter(|r| expected.contains(r)).collect()
    };

    // The SDK computes each room's latest event in the background and, until it has, sorts
    // a room without one by `bump_stamp` against its like and after every room with one: an
    // order seen before all our rooms have their latest event is a passing state.
    wait_for(
        "the room list to show the rooms in the expected order, each with its latest event",
        s.timeout,
        || async {
            if ours(s.order()) == expected && s.have_latest_events(&expected) {
                Ok(())
            } else {
                Err(s.list_json())
            }
        },
    )
    .await?;
    let initial = s.list_json();

    let event_id = sender
        .send(
            &bump,
            json!({"msgtype": "m.text", "body": "this moves the room to the top"}),
        )
        .await?;
    let mut after_expected = vec![bump.clone()];
    after_expected.extend(expected.iter().filter(|r| **r != bump).cloned());
    wait_for(
        "the message to move its room to the top of the list",
        s.timeout,
        || async {
            if ours(s.order()) == after_expected {
                Ok(())
            } else {
                Err(s.list_json())
            }
        },
    )
    .await?;
    // The list's `count` as the server sent it (the merged count, through hungryserv).
    let count = match s
        .sync
        .room_list_service()
        .all_rooms()
        .await?
        .loading_state()
        .get()
    {
        RoomListLoadingState::Loaded {
            maximum_number_of_rooms,
        } => maximum_number_of_rooms,
        RoomListLoadingState::NotLoaded => None,
    };
    Ok(json!({
        "initial": initial,
        "bump_event_id": event_id,
        "after": s.list_json(),
        "count": count,
    }))
}

fn item_json(item: &TimelineItem) -> Value {
    if let Some(virt) = item.as_virtual() {
        let kind = match virt {
            VirtualTimelineItem::DateDivider(_) => "date_divider",
            VirtualTimelineItem::ReadMarker => "read_marker",
            VirtualTimelineItem::TimelineStart => "timeline_start",
        };
        return json!({"virtual": kind});
    }
    let Some(ev) = item.as_event() else {
        return json!({"unknown": true});
    };
    let raw: Option<Value> = ev.original_json().and_then(|raw| raw.deserialize_as().ok());
    let send_state = ev.send_state().map(|state| match state {
        EventSendState::NotSentYet { .. } => json!("not_sent_yet"),
        EventSendState::SendingFailed { error, .. } => json!({"failed": error.to_string()}),
        EventSendState::Sent { event_id } => json!({"sent": event_id}),
    });
    json!({
        "event_id": ev.event_id(),
        "sender": ev.sender(),
        "type": raw.as_ref().and_then(|r| r["type"].as_str().map(str::to_owned))
            .or_else(|| ev.content().event_type_str()),
        "state_key": raw.as_ref().and_then(|r| r.get("state_key").cloned()),
        "body": ev.content().as_message().map(|m| m.body().to_owned()),
        "is_local_echo": ev.is_local_echo(),
        "send_state": send_state,
    })
}

async fn items_json(timeline: &Timeline) -> Vec<Value> {
    timeline
        .items()
        .await
        .iter()
        .map(|i| item_json(i))
        .collect()
}

async fn timeline(s: &Session, params: &Value, sender: &Sender) -> Result<Value> {
    let room_id = room_id_param(params, "/room")?;
    let room = s.joined_room(&room_id).await?;
    let timeline = room.timeline().await.context("building the Timeline")?;

    let body = "a live message while the timeline is open";
    let event_id = sender
        .send(&room_id, json!({"msgtype": "m.text", "body": body}))
        .await?;
    let live = wait_for("the live message in the timeline", s.timeout, || async {
        let items = items_json(&timeline).await;
        match items.iter().find(|i| i["event_id"] == json!(event_id)) {
            Some(item) => Ok(item.clone()),
            None => Err(json!(items)),
        }
    })
    .await?;

    let own_body = "sent from the matrix-rust-sdk Timeline";
    timeline
        .send(AnyMessageLikeEventContent::RoomMessage(
            RoomMessageEventContent::text_plain(own_body),
        ))
        .await
        .context("Timeline::send")?;
    let own = wait_for(
        "the user's own message to be sent (remote echo)",
        s.timeout,
        || async {
            let items = items_json(&timeline).await;
            match items.iter().find(|i| {
                i["body"] == json!(own_body)
                    && !i["event_id"].is_null()
                    && i["is_local_echo"] == json!(false)
            }) {
                Some(item) => Ok(item.clone()),
                None => Err(json!(items)),
            }
        },
    )
    .await?;
    Ok(json!({"live": live, "own": own, "items": items_json(&timeline).await}))
}

async fn pagination(s: &Session, params: &Value) -> Result<Value> {
    let room_id = room_id_param(params, "/room")?;
    let room = s.joined_room(&room_id).await?;
    let timeline = room.timeline().await.context("building the Timeline")?;
    let start = Instant::now();
    let mut pages = 0u32;
    loop {
        pages += 1;
        let hit_start = tokio::time::timeout(s.timeout, timeline.paginate_backwards(20))
            .await
            .map_err(|_| anyhow!("paginate_backwards took longer than {:?}", s.timeout))?
            .context("paginate_backwards")?;
        if hit_start {
            break;
        }
        if start.elapsed() > s.timeout {
            bail!(
                "timed out after {:?} ({pages} pages) before back pagination reached the start; \
                 items: {}",
                s.timeout,
                json!(items_json(&timeline).await)
            );
        }
    }
    // The Timeline applies the event cache's updates in a task of its own: the last page can
    // still be on its way into the items when paginate_backwards has returned.
    // (length, polls it has not changed for)
    let seen = std::cell::Cell::new((0usize, 0u32));
    let items = wait_for(
        "the timeline start among the Timeline's items",
        s.timeout,
        || async {
            let items = items_json(&timeline).await;
            let (len, same) = seen.get();
            let same = if items.len() == len { same + 1 } else { 0 };
            seen.set((items.len(), same));
            let start = items
                .iter()
                .any(|i| i["virtual"] == json!("timeline_start"));
            if start && same >= 3 {
                Ok(items)
            } else {
                Err(json!(items))
            }
        },
    )
    .await?;
    Ok(json!({"pages": pages, "items": items}))
}

/// What the user sees of one room's unread state.
async fn unread_state(room: &Room, user: &OwnedUserId, labels: &[(OwnedEventId, &str)]) -> Value {
    let counts = room.unread_notification_counts();
    let receipt = room
        .load_user_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, user)
        .await
        .ok()
        .flatten()
        .map(|(event_id, _)| {
            labels
                .iter()
                .find(|(id, _)| *id == event_id)
                .map(|(_, label)| (*label).to_owned())
                .unwrap_or_else(|| event_id.to_string())
        });
    json!({
        "notification_count": counts.notification_count,
        "highlight_count": counts.highlight_count,
        "num_unread_messages": room.num_unread_messages(),
        "num_unread_notifications": room.num_unread_notifications(),
        "num_unread_mentions": room.num_unread_mentions(),
        "own_read_receipt": receipt,
    })
}

/// One room of the `unread` scenario and the sender's messages in it, by label.
struct UnreadRoom {
    kind: String,
    room: Room,
    labels: Vec<(OwnedEventId, &'static str)>,
}

/// Every room's unread state, by kind.
async fn unread_snapshot(rooms: &[UnreadRoom], user: &OwnedUserId) -> Value {
    let mut out = serde_json::Map::new();
    for r in rooms {
        out.insert(r.kind.clone(), unread_state(&r.room, user, &r.labels).await);
    }
    Value::Object(out)
}

/// Waits until every room's unread counts, as the client computes them from the events and
/// receipts it has (what Element X shows), and the user's own read receipt, if given, are as
/// given.
async fn unread_settle(
    s: &Session,
    what: &str,
    rooms: &[UnreadRoom],
    user: &OwnedUserId,
    (messages, notifications, mentions): (u64, u64, u64),
    receipt: Option<&str>,
) -> Result<Value> {
    wait_for(what, s.timeout, || async {
        let state = unread_snapshot(rooms, user).await;
        let done = state.as_object().is_some_and(|m| {
            m.values().all(|r| {
                r["num_unread_messages"] == json!(messages)
                    && r["num_unread_notifications"] == json!(notifications)
                    && r["num_unread_mentions"] == json!(mentions)
                    && (receipt.is_none() || r["own_read_receipt"] == json!(receipt))
            })
        });
        if done { Ok(state) } else { Err(state) }
    })
    .await
}

async fn unread(s: &Session, params: &Value, sender: &Sender) -> Result<Value> {
    let user = s.client.user_id().context("not logged in")?.to_owned();
    let kinds = params["rooms"]
        .as_object()
        .context("params.rooms ({kind: room ID}) is missing")?;
    let mut rooms = Vec::new();
    for kind in kinds.keys() {
        let room_id = room_id_param(params, &format!("/rooms/{kind}"))?;
        let room = s.joined_room(&room_id).await?;
        rooms.push(UnreadRoom {
            kind: kind.clone(),
            room,
            labels: Vec::new(),
        });
    }

    // As Element X does for the rooms on screen: a room subscription (timeline_limit 20), so
    // every new message reaches the client's count, not only the list's latest one (its
    // timeline_limit is 1: two messages between two responses come as the newer one and
    // `limited`, with either server).
    let ids: Vec<&RoomId> = rooms.iter().map(|r| r.room.room_id()).collect();
    s.sync.room_list_service().subscribe_to_rooms(&ids).await;

    let mut steps = serde_json::Map::new();
    steps.insert("joined".into(), unread_snapshot(&rooms, &user).await);

    for r in rooms.iter_mut() {
        let mention = json!({
            "msgtype": "m.text",
            "body": format!("{user}: the first message mentions you"),
            "m.mentions": {"user_ids": [user]},
        });
        r.labels
            .push((sender.send(r.room.room_id(), mention).await?, "m1"));
        for label in ["m2", "m3"] {
            let content = json!({"msgtype": "m.text", "body": format!("message {label}")});
            r.labels
                .push((sender.send(r.room.room_id(), content).await?, label));
        }
    }
    let what = "3 unread messages, 3 notifications, 1 mention in every room";
    let state = unread_settle(s, what, &rooms, &user, (3, 3, 1), None).await?;
    steps.insert("three_messages".into(), state);

    for (label, unread) in [("m2", 1), ("m3", 0)] {
        for r in &rooms {
            let (event_id, _) = r
                .labels
                .iter()
                .find(|(_, l)| *l == label)
                .context("label")?;
            r.room
                .send_single_receipt(
                    SendReceiptType::Read,
                    ReceiptThread::Unthreaded,
                    event_id.clone(),
                )
                .await
                .with_context(|| format!("read receipt on {label} in {}", r.room.room_id()))?;
        }
        let what = format!("{unread} unread after the read receipt on {label}");
        let counts = (unread, unread, 0);
        let state = unread_settle(s, &what, &rooms, &user, counts, Some(label)).await?;
        steps.insert(format!("receipt_{label}"), state);
    }
    Ok(Value::Object(steps))
}

async fn run(args: Args) -> Result<Value> {
    let params: Value = serde_json::from_str(&args.params).context("--params is not JSON")?;
    if let Scenario::E2ee = args.scenario {
        let alice = (args.user.as_str(), args.password.as_str());
        return e2ee::run(
            &args.homeserver,
            alice,
            &params,
            Duration::from_secs(args.timeout),
        )
        .await;
    }
    let session = Session::start(&args).await?;
    let sender = || Sender::from_params(&args.homeserver, &params);
    let result = match args.scenario {
        Scenario::RoomList => room_list(&session, &params, &sender()?).await,
        Scenario::Timeline => timeline(&session, &params, &sender()?).await,
        Scenario::Pagination => pagination(&session, &params).await,
        Scenario::Unread => unread(&session, &params, &sender()?).await,
        Scenario::E2ee => Err(anyhow!("e2ee runs its own clients (see above)")),
    };
    let version = format!("{:?}", session.client.sliding_sync_version());
    session.stop().await;
    let mut result = result?;
    if let Some(obj) = result.as_object_mut() {
        obj.insert("sliding_sync_version".into(), json!(version));
    }
    Ok(result)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(result) => {
            println!("{result}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("hs-rust-sdk-compat: FAILED: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
