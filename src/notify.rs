//! Wake-ups for readers of the local event stream: the highest committed stream position,
//! published after each commit, and what each commit touched.
//!
//! A waiting reader subscribes *before* it reads the store, so a commit that lands between
//! its read and its wait still wakes it (a `watch` receiver sees any value published after it
//! was created). What a commit touched (rooms, and users whose membership changed) is recorded
//! *before* the position is published, so a woken reader can decide from memory whether the
//! commit concerns it ([`Notifier::news_for`]) instead of asking the database on every commit
//! of every room.
//!
//! Room data (receipts, read markers, room account data) and typing are not events: they have
//! positions of their own ([`SidePositions`]: the room data stream of migration 0008 and the
//! typing serial of [`crate::rooms::typing`]), published on a second channel with the same
//! subscribe-then-read rule. The device-change stream ([`crate::devices`]) is a third side
//! position: a change is recorded with the users who hear of it (the changed user's local-room
//! co-members), so a waiting sync knows from memory whether it concerns its user.
//!
//! # Several instances
//!
//! With `[cluster] enabled`, other instances commit to the same database, and each tells the
//! others what it committed ([`crate::cluster`]: a `NOTIFY` after the commit, carrying the
//! range of positions and what they touched). A remote commit is recorded exactly as a local
//! one. Two rules keep a reader that decides from memory from skipping a position:
//!
//! * **Only a gap-free prefix is published.** Positions of the event stream are dense (the
//!   writer allocates `max + 1` under its lock), and each room data or device commit takes
//!   exactly one position; every commit says which range `(lo, hi]` it covers. A
//!   [`Sequencer`] per stream publishes the highest position up to which every commit has
//!   been heard of, local or remote. Without it, this instance's own commit at N + 1 could
//!   be published while another's N is still on its way, a waiting sync would find no news
//!   for its user at N + 1 and move its checked position past N, and the note about N would
//!   arrive too late to wake it.
//! * **A gap that is not closed in time, or a lost connection, wakes everyone.** Notes are
//!   lost when the listener's connection drops or an instance dies between commit and
//!   `NOTIFY`. A gap older than [`GAP_GRACE`], or a reconnect (which reads the committed
//!   positions from the database), moves the published position on and sets a *floor*: every
//!   reader whose position is below it is told "news" once and reads the store, which holds
//!   everything committed. Costs a read, loses nothing.
//!
//! Typing is not ordered by the database: a typing change heard from another instance is
//! applied as a local one, with a local serial ([`crate::rooms::typing`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::note::{Note, Outbox};
use crate::store::Positions;

/// How long a gap in the positions heard of may stay open before the published position
/// moves over it and every reader below it reads the store (see the module doc). A note
/// normally arrives within a millisecond.
pub const GAP_GRACE: Duration = Duration::from_millis(500);

/// How long the background followers of the streams (the push task, appservice delivery) wait
/// after a wake-up before reading: the syncs woken by the same commit, which a client is
/// waiting on, get the database first, and a burst of commits is read in one go.
pub const FOLLOWER_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// The shortest time between two reads of one background follower.
pub const FOLLOWER_READ_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// Spaces a background follower's reads of the stream by [`FOLLOWER_READ_EVERY`].
///
/// A follower that is behind reads again as soon as it has handled what it read; under a
/// flood of small commits (a bridge's ingest: hundreds per second) each read then finds a
/// handful of events, and the fixed cost of a read (a query, a wake-up) is paid per handful.
/// Spaced reads find what several commits wrote. After a quiet spell the first read is not
/// delayed (beyond [`FOLLOWER_PAUSE`]), so an event after a pause is handled as fast as
/// before; under load a follower is at most this much later. A follower working through a
/// backlog (its last read stopped short of the committed position) is not spaced at all: its
/// reads are full anyway.
#[derive(Default)]
pub struct ReadPace {
    last: Option<tokio::time::Instant>,
    backlog: bool,
}

impl ReadPace {
    /// Waits until the follower may read again, and counts the read as done now.
    pub async fn ready(&mut self) {
        if let Some(last) = self.last.filter(|_| !self.backlog) {
            tokio::time::sleep_until(last + FOLLOWER_READ_EVERY).await;
        }
        self.last = Some(tokio::time::Instant::now());
    }

    /// Tells whether the read just done reached the committed position it read up to.
    pub fn read_up_to_committed(&mut self, reached: bool) {
        self.backlog = !reached;
    }
}

/// Publishes the highest committed stream position. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    /// The latest committed position.
    tx: watch::Sender<i64>,
    /// The latest room data position and typing serial.
    side: watch::Sender<SidePositions>,
    /// Latest stream position per room and per member, for committed positions only.
    touched: Arc<RwLock<Touched>>,
    /// Events committed by this process (for metrics).
    persisted: Arc<AtomicU64>,
    /// Set when several instances share the database (see the module doc).
    shared: Option<Arc<Shared>>,
}

/// What a notifier shared with other instances adds.
struct Shared {
    /// Where this instance's commits are announced.
    outbox: Outbox,
    /// What has been heard of, per stream.
    streams: Mutex<Streams>,
}

struct Streams {
    events: Sequencer,
    room_data: Sequencer,
    devices: Sequencer,
}

/// The commits heard of in one stream of dense positions: the prefix heard of without a gap,
/// and the commits heard of beyond a gap.
#[derive(Debug)]
pub struct Sequencer {
    /// Every commit up to this position has been heard of.
    known: i64,
    /// Commits beyond a gap: `lo → hi` for the range `(lo, hi]`.
    pending: BTreeMap<i64, i64>,
    /// When the oldest open gap was noticed.
    gap_since: Option<Instant>,
}

impl Sequencer {
    pub fn new(known: i64) -> Self {
        Self {
            known,
            pending: BTreeMap::new(),
            gap_since: None,
        }
    }

    /// Hears of the commit `(lo, hi]`; the new gap-free position if it moved.
    pub fn commit(&mut self, lo: i64, hi: i64, now: Instant) -> Option<i64> {
        if hi <= self.known {
            return None;
        }
        if lo > self.known {
            let end = self.pending.entry(lo).or_insert(hi);
            *end = (*end).max(hi);
            self.gap_since.get_or_insert(now);
            return None;
        }
        self.known = hi;
        self.drain(now);
        Some(self.known)
    }

    /// Moves over a gap open for `grace` or more: the new position if it moved.
    pub fn skip_gap(&mut self, grace: Duration, now: Instant) -> Option<i64> {
        let since = self.gap_since?;
        if now.duration_since(since) < grace {
            return None;
        }
        let end = self.pending.values().copied().max()?;
        self.pending.clear();
        self.gap_since = None;
        (end > self.known).then(|| {
            self.known = end;
            end
        })
    }

    /// Moves to `committed` (read from the database) if it is ahead.
    pub fn jump(&mut self, committed: i64, now: Instant) -> Option<i64> {
        if committed <= self.known {
            return None;
        }
        self.known = committed;
        self.drain(now);
        Some(self.known)
    }

    fn drain(&mut self, now: Instant) {
        while let Some((&lo, &hi)) = self.pending.first_key_value() {
            if lo > self.known {
                break;
            }
            self.pending.pop_first();
            self.known = self.known.max(hi);
        }
        self.gap_since = (!self.pending.is_empty()).then_some(now);
    }
}

#[derive(Default)]
struct Touched {
    /// Room ID → stream position of its latest committed event.
    rooms: HashMap<String, i64>,
    /// User ID → stream position of the latest committed member event about them.
    members: HashMap<String, i64>,
    /// Room ID → room data position of its latest receipt.
    data_rooms: HashMap<String, i64>,
    /// User ID → room data position of their latest private room data (account data).
    data_users: HashMap<String, i64>,
    /// Room ID → typing serial of its latest typing change.
    typing_rooms: HashMap<String, i64>,
    /// User ID → device-change position of the latest change they hear of.
    device_viewers: HashMap<String, i64>,
    /// Readers below these positions have news (a gap skipped, a reconnect, a note too long
    /// to list what it touched): they read the store.
    floor: Floors,
}

#[derive(Default)]
struct Floors {
    events: i64,
    room_data: i64,
    devices: i64,
}

/// Positions of what is not an event: a sync token holds them next to the stream position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SidePositions {
    /// The room data stream (receipts, read markers, room account data).
    pub room_data: i64,
    /// The typing serial.
    pub typing: i64,
    /// The device-change stream position (migration 0021).
    pub devices: i64,
}

/// What one commit wrote: `(room, stream)` per event, and `(user, stream)` per member event.
#[derive(Debug, Default)]
pub struct Commit {
    pub rooms: Vec<(String, i64)>,
    pub members: Vec<(String, i64)>,
}

impl Notifier {
    pub fn new(current: i64) -> Self {
        Self::with_side(current, SidePositions::default())
    }

    /// A notifier starting from known positions of both channels.
    pub fn with_side(current: i64, side: SidePositions) -> Self {
        Self {
            tx: watch::Sender::new(current),
            side: watch::Sender::new(side),
            touched: Arc::default(),
            persisted: Arc::default(),
            shared: None,
        }
    }

    /// A notifier of one of several instances on one database: its commits are announced
    /// through `outbox`, and only gap-free prefixes are published (see the module doc).
    pub fn shared(current: i64, side: SidePositions, outbox: Outbox) -> Self {
        Self {
            shared: Some(Arc::new(Shared {
                outbox,
                streams: Mutex::new(Streams {
                    events: Sequencer::new(current),
                    room_data: Sequencer::new(side.room_data),
                    devices: Sequencer::new(side.devices),
                }),
            })),
            ..Self::with_side(current, side)
        }
    }

    /// Whether other instances share the database.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Tells the other instances, if there are any.
    pub fn announce(&self, note: Note) {
        if let Some(shared) = &self.shared {
            shared.outbox.send(note);
        }
    }

    /// Called by the writer after a commit; positions only move forward.
    pub fn committed(&self, position: i64, commit: Commit) {
        self.persisted
            .fetch_add(commit.rooms.len() as u64, Ordering::Relaxed);
        if let Some(shared) = &self.shared {
            // Positions are dense: the commit covers (its lowest - 1, position].
            let lo = commit
                .rooms
                .iter()
                .map(|(_, stream)| *stream - 1)
                .min()
                .unwrap_or(position);
            if lo < position {
                shared.outbox.send(Note::Events {
                    lo,
                    hi: position,
                    rooms: Some(commit.rooms.clone()),
                    members: Some(commit.members.clone()),
                });
            }
            self.events_heard(lo, position, Some(commit));
            return;
        }
        {
            let mut touched = self.touched.write().unwrap_or_else(|e| e.into_inner());
            for (room, stream) in commit.rooms {
                let latest = touched.rooms.entry(room).or_insert(stream);
                *latest = (*latest).max(stream);
            }
            for (user, stream) in commit.members {
                let latest = touched.members.entry(user).or_insert(stream);
                *latest = (*latest).max(stream);
            }
        }
        self.tx.send_if_modified(|current| {
            let advanced = position > *current;
            if advanced {
                *current = position;
            }
            advanced
        });
    }

    /// Records a commit `(lo, hi]` of the event stream (`None`: what it touched is not
    /// known) and publishes the gap-free position.
    fn events_heard(&self, lo: i64, hi: i64, commit: Option<Commit>) {
        let Some(shared) = &self.shared else { return };
        {
            let mut touched = self.touched.write().unwrap_or_else(|e| e.into_inner());
            match commit {
                Some(commit) => {
                    for (room, stream) in commit.rooms {
                        let latest = touched.rooms.entry(room).or_insert(stream);
                        *latest = (*latest).max(stream);
                    }
                    for (user, stream) in commit.members {
                        let latest = touched.members.entry(user).or_insert(stream);
                        *latest = (*latest).max(stream);
                    }
                }
                None => touched.floor.events = touched.floor.events.max(hi),
            }
        }
        let known = shared.lock().events.commit(lo, hi, Instant::now());
        if let Some(known) = known {
            self.publish_events(known);
        }
    }

    fn publish_events(&self, position: i64) {
        self.tx.send_if_modified(|current| {
            let advanced = position > *current;
            if advanced {
                *current = position;
            }
            advanced
        });
    }

    /// Another instance committed events `(lo, hi]` (`None`: it did not say what they
    /// touched).
    pub fn remote_committed(&self, lo: i64, hi: i64, commit: Option<Commit>) {
        self.events_heard(lo, hi, commit);
    }

    /// Another instance committed room data at `position` (`None`: it did not say where).
    pub fn remote_room_data(&self, position: i64, touched: Option<(Vec<String>, Vec<String>)>) {
        match touched {
            Some((rooms, users)) => self.room_data_heard(position, &rooms, &users),
            None => {
                {
                    let mut touched = self.touched.write().unwrap_or_else(|e| e.into_inner());
                    touched.floor.room_data = touched.floor.room_data.max(position);
                }
                self.room_data_heard(position, &[], &[]);
            }
        }
    }

    /// Another instance committed a device change at `position` (`None`: heard of by
    /// everyone it may concern).
    pub fn remote_devices(&self, position: i64, viewers: Option<Vec<String>>) {
        match viewers {
            Some(viewers) => self.devices_heard(position, &viewers),
            None => {
                {
                    let mut touched = self.touched.write().unwrap_or_else(|e| e.into_inner());
                    touched.floor.devices = touched.floor.devices.max(position);
                }
                self.devices_heard(position, &[]);
            }
        }
    }

    /// Moves over gaps open for `grace` or more; every reader below the new positions reads
    /// the store once. Called periodically by the listener.
    pub fn skip_gaps(&self, grace: Duration) {
        self.move_over(|sequencer, now| sequencer.skip_gap(grace, now));
    }

    /// After the listener (re)connected: `committed` was read from the database after it
    /// listened, so every commit up to it happened; those not heard of wake everyone below.
    pub fn resync(&self, committed: Positions) {
        let mut which = 0;
        self.move_over(|sequencer, now| {
            which += 1;
            let position = match which {
                1 => committed.stream,
                2 => committed.room_data,
                _ => committed.devices,
            };
            sequencer.jump(position, now)
        });
    }

    /// Applies `step` to the events, room data and device sequencers (in that order) and
    /// publishes, with a floor, each that moved.
    fn move_over(&self, mut step: impl FnMut(&mut Sequencer, Instant) -> Option<i64>) {
        let Some(shared) = &self.shared else { return };
        let now = Instant::now();
        let moved = {
            let mut streams = shared.lock();
            let events = step(&mut streams.events, now);
            let room_data = step(&mut streams.room_data, now);
            let devices = step(&mut streams.devices, now);
            [events, room_data, devices]
        };
        if moved.iter().all(Option::is_none) {
            return;
        }
        {
            let mut touched = self.touched.write().unwrap_or_else(|e| e.into_inner());
            let floor = &mut touched.floor;
            if let Some(p) = moved[0] {
                floor.events = floor.events.max(p);
            }
            if let Some(p) = moved[1] {
                floor.room_data = floor.room_data.max(p);
            }
            if let Some(p) = moved[2] {
                floor.devices = floor.devices.max(p);
            }
        }
        if let Some(p) = moved[0] {
            tracing::debug!(
                position = p,
                "event stream moved over a gap; readers below read the store"
            );
            self.publish_events(p);
        }
        self.side.send_if_modified(|current| {
            let mut advanced = false;
            if let Some(p) = moved[1].filter(|p| *p > current.room_data) {
                current.room_data = p;
                advanced = true;
            }
            if let Some(p) = moved[2].filter(|p| *p > current.devices) {
                current.devices = p;
                advanced = true;
            }
            advanced
        });
    }

    /// Events committed by this process since it started.
    pub fn events_persisted(&self) -> u64 {
        self.persisted.load(Ordering::Relaxed)
    }

    /// The highest committed position now.
    pub fn current(&self) -> i64 {
        *self.tx.borrow()
    }

    /// A receiver that is woken by every later commit.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.tx.subscribe()
    }

    /// Called after room data is committed at `position`: receipts in `rooms` (everyone in
    /// them may see them), private data of `users`.
    pub fn room_data_committed(&self, position: i64, rooms: &[String], users: &[String]) {
        self.announce(Note::RoomData {
            p: position,
            rooms: Some(rooms.to_vec()),
            users: Some(users.to_vec()),
        });
        self.room_data_heard(position, rooms, users);
    }

    fn room_data_heard(&self, position: i64, rooms: &[String], users: &[String]) {
        {
            let mut touched = self.touched.write().unwrap_or_else(|e| e.into_inner());
            for room in rooms {
                let latest = touched.data_rooms.entry(room.clone()).or_insert(position);
                *latest = (*latest).max(position);
            }
            for user in users {
                let latest = touched.data_users.entry(user.clone()).or_insert(position);
                *latest = (*latest).max(position);
            }
        }
        // One position per commit: (position - 1, position].
        let Some(position) = self.sequenced(position, |streams| &mut streams.room_data) else {
            return;
        };
        self.side.send_if_modified(|current| {
            let advanced = position > current.room_data;
            if advanced {
                current.room_data = position;
            }
            advanced
        });
    }

    /// The position to publish after a one-position commit at `position` of a stream: itself
    /// when nothing is shared, else the gap-free prefix if it moved.
    fn sequenced(
        &self,
        position: i64,
        stream: impl FnOnce(&mut Streams) -> &mut Sequencer,
    ) -> Option<i64> {
        match &self.shared {
            None => Some(position),
            Some(shared) => {
                stream(&mut shared.lock()).commit(position - 1, position, Instant::now())
            }
        }
    }

    /// Called when who is typing in `room` changed, with the new serial.
    pub fn typing_changed(&self, room: &str, serial: i64) {
        {
            let mut touched = self.touched.write().unwrap_or_else(|e| e.into_inner());
            let latest = touched
                .typing_rooms
                .entry(room.to_owned())
                .or_insert(serial);
            *latest = (*latest).max(serial);
        }
        self.side.send_if_modified(|current| {
            let advanced = serial > current.typing;
            if advanced {
                current.typing = serial;
            }
            advanced
        });
    }

    /// Called after a device change is committed at `position`: `viewers` hear of it.
    pub fn devices_changed(&self, position: i64, viewers: &[String]) {
        self.announce(Note::Devices {
            p: position,
            viewers: Some(viewers.to_vec()),
        });
        self.devices_heard(position, viewers);
    }

    fn devices_heard(&self, position: i64, viewers: &[String]) {
        {
            let mut touched = self.touched.write().unwrap_or_else(|e| e.into_inner());
            for viewer in viewers {
                let latest = touched
                    .device_viewers
                    .entry(viewer.clone())
                    .or_insert(position);
                *latest = (*latest).max(position);
            }
        }
        let Some(position) = self.sequenced(position, |streams| &mut streams.devices) else {
            return;
        };
        self.side.send_if_modified(|current| {
            let advanced = position > current.devices;
            if advanced {
                current.devices = position;
            }
            advanced
        });
    }

    /// Whether `user` hears of a device change committed by this process after position
    /// `since` of the device-change stream.
    pub fn device_news_for(&self, user: &str, since: i64) -> bool {
        let touched = self.touched.read().unwrap_or_else(|e| e.into_inner());
        since < touched.floor.devices
            || touched.device_viewers.get(user).is_some_and(|p| *p > since)
    }

    /// The side positions now.
    pub fn side_current(&self) -> SidePositions {
        *self.side.borrow()
    }

    /// A receiver woken by every later room data commit or typing change.
    pub fn subscribe_side(&self) -> watch::Receiver<SidePositions> {
        self.side.subscribe()
    }

    /// Whether room data or typing changed after `since` in one of `rooms`, `user`'s private
    /// room data changed, or `user` hears of a device change.
    pub fn side_news_for<'a>(
        &self,
        user: &str,
        rooms: impl IntoIterator<Item = &'a str>,
        since: SidePositions,
    ) -> bool {
        if self.device_news_for(user, since.devices) {
            return true;
        }
        let touched = self.touched.read().unwrap_or_else(|e| e.into_inner());
        since.room_data < touched.floor.room_data
            || touched
                .data_users
                .get(user)
                .is_some_and(|p| *p > since.room_data)
            || rooms.into_iter().any(|room| {
                touched
                    .data_rooms
                    .get(room)
                    .is_some_and(|p| *p > since.room_data)
                    || touched
                        .typing_rooms
                        .get(room)
                        .is_some_and(|s| *s > since.typing)
            })
    }

    /// Whether a member event about `user` was committed after `since` (seen by this process).
    pub fn member_news_for(&self, user: &str, since: i64) -> bool {
        let touched = self.touched.read().unwrap_or_else(|e| e.into_inner());
        since < touched.floor.events || touched.members.get(user).is_some_and(|s| *s > since)
    }

    /// Those of `rooms` written into by a commit seen by this process after `since`.
    pub fn rooms_touched_since<'a>(
        &self,
        rooms: impl IntoIterator<Item = &'a str>,
        since: i64,
    ) -> Vec<String> {
        let touched = self.touched.read().unwrap_or_else(|e| e.into_inner());
        let all = since < touched.floor.events;
        rooms
            .into_iter()
            .filter(|room| all || touched.rooms.get(*room).is_some_and(|s| *s > since))
            .map(str::to_owned)
            .collect()
    }

    /// Whether a commit seen by this process after `since` wrote into one of `rooms` or
    /// changed `user`'s membership anywhere. Commits before this process started are not
    /// known here: callers read the store for the range they start from.
    pub fn news_for<'a>(
        &self,
        user: &str,
        rooms: impl IntoIterator<Item = &'a str>,
        since: i64,
    ) -> bool {
        let touched = self.touched.read().unwrap_or_else(|e| e.into_inner());
        since < touched.floor.events
            || touched.members.get(user).is_some_and(|s| *s > since)
            || rooms
                .into_iter()
                .any(|room| touched.rooms.get(room).is_some_and(|s| *s > since))
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reads_are_spaced_under_load_and_not_delayed_after_a_quiet_spell() {
        use tokio::time::{Duration, Instant, advance};
        let mut pace = ReadPace::default();
        let start = Instant::now();
        pace.ready().await;
        assert_eq!(Instant::now(), start, "the first read waits for nothing");
        advance(Duration::from_millis(1)).await;
        pace.ready().await;
        assert_eq!(
            Instant::now(),
            start + FOLLOWER_READ_EVERY,
            "a read right after another waits out the interval"
        );
        advance(Duration::from_secs(1)).await;
        let quiet = Instant::now();
        pace.ready().await;
        assert_eq!(
            Instant::now(),
            quiet,
            "after a quiet spell the read is at once"
        );
        pace.read_up_to_committed(false);
        pace.ready().await;
        assert_eq!(Instant::now(), quiet, "a backlog is read without pause");
        pace.read_up_to_committed(true);
        pace.ready().await;
        assert_eq!(Instant::now(), quiet + FOLLOWER_READ_EVERY);
    }

    #[test]
    fn a_sequencer_publishes_only_a_gap_free_prefix() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(10);
        assert_eq!(seq.commit(12, 14, t0), None, "(10, 12] not heard of yet");
        assert_eq!(seq.commit(10, 11, t0), Some(11));
        assert_eq!(
            seq.commit(11, 12, t0),
            Some(14),
            "the gap closes: 14 at once"
        );
        assert_eq!(seq.commit(13, 14, t0), None, "old news");
        assert_eq!(seq.commit(20, 21, t0), None);
        assert_eq!(seq.skip_gap(GAP_GRACE, t0 + GAP_GRACE / 2), None);
        assert_eq!(seq.skip_gap(GAP_GRACE, t0 + GAP_GRACE), Some(21));
        assert_eq!(seq.jump(30, t0), Some(30));
        assert_eq!(seq.jump(25, t0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_notifier_waits_for_a_remote_commit_below_its_own() {
        let (outbox, mut notes) = Outbox::new();
        let notifier = Notifier::shared(10, SidePositions::default(), outbox);
        let mut rx = notifier.subscribe();
        // Our commit at 12 while another instance's 11 is on its way.
        notifier.committed(
            12,
            Commit {
                rooms: vec![("!ours:x".into(), 12)],
                members: vec![],
            },
        );
        assert_eq!(notifier.current(), 10, "12 is not published over the gap");
        assert!(matches!(
            crate::cluster::note::parse(&notes.try_recv().unwrap())
                .unwrap()
                .note,
            Note::Events { lo: 11, hi: 12, .. }
        ));
        notifier.remote_committed(
            10,
            11,
            Some(Commit {
                rooms: vec![("!theirs:x".into(), 11)],
                members: vec![],
            }),
        );
        rx.changed().await.unwrap();
        assert_eq!(notifier.current(), 12);
        assert!(notifier.news_for("@u:x", ["!theirs:x"], 10));
        // A lost note: the gap is skipped after the grace, and everyone below reads the store.
        notifier.committed(
            14,
            Commit {
                rooms: vec![("!ours:x".into(), 14)],
                members: vec![],
            },
        );
        assert_eq!(notifier.current(), 12);
        tokio::time::advance(GAP_GRACE).await;
        notifier.skip_gaps(GAP_GRACE);
        assert_eq!(notifier.current(), 14);
        assert!(
            notifier.news_for("@u:x", ["!elsewhere:x"], 13),
            "below the floor: news for everyone"
        );
        assert!(!notifier.news_for("@u:x", ["!elsewhere:x"], 14));
    }

    #[test]
    fn news_is_per_room_and_per_member() {
        let notifier = Notifier::new(0);
        notifier.committed(
            3,
            Commit {
                rooms: vec![("!a:x".into(), 2), ("!a:x".into(), 3), ("!b:x".into(), 1)],
                members: vec![("@u:x".into(), 1)],
            },
        );
        assert_eq!(notifier.current(), 3);
        assert!(notifier.news_for("@v:x", ["!a:x"], 2));
        assert!(!notifier.news_for("@v:x", ["!a:x"], 3));
        assert!(!notifier.news_for("@v:x", ["!b:x", "!c:x"], 1));
        assert!(notifier.news_for("@u:x", [], 0));
        assert!(!notifier.news_for("@u:x", [], 1));
    }

    #[tokio::test]
    async fn a_subscriber_is_woken_by_a_later_commit() {
        let notifier = Notifier::new(5);
        let mut rx = notifier.subscribe();
        notifier.committed(4, Commit::default());
        assert!(!rx.has_changed().unwrap(), "positions never move back");
        notifier.committed(6, Commit::default());
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 6);
    }

    #[tokio::test]
    async fn room_data_and_typing_wake_their_own_subscribers() {
        let notifier = Notifier::new(0);
        let events = notifier.subscribe();
        let mut side = notifier.subscribe_side();
        let start = notifier.side_current();
        notifier.room_data_committed(4, &["!a:x".into()], &["@u:x".into()]);
        side.changed().await.unwrap();
        assert_eq!(side.borrow_and_update().room_data, 4);
        assert!(!events.has_changed().unwrap(), "room data is not an event");
        assert!(notifier.side_news_for("@v:x", ["!a:x"], start));
        assert!(
            notifier.side_news_for("@u:x", ["!b:x"], start),
            "private data"
        );
        assert!(!notifier.side_news_for("@v:x", ["!b:x"], start));
        let now = notifier.side_current();
        assert!(!notifier.side_news_for("@u:x", ["!a:x"], now));
        notifier.typing_changed("!b:x", 100);
        side.changed().await.unwrap();
        assert_eq!(side.borrow().typing, 100);
        assert!(notifier.side_news_for("@v:x", ["!b:x"], now));
        assert!(!notifier.side_news_for("@v:x", ["!a:x"], now));
    }

    #[tokio::test]
    async fn a_device_change_wakes_side_subscribers_and_concerns_its_viewers_only() {
        let notifier = Notifier::new(0);
        let mut side = notifier.subscribe_side();
        let start = notifier.side_current();
        notifier.devices_changed(3, &["@v:x".into()]);
        side.changed().await.unwrap();
        assert_eq!(side.borrow_and_update().devices, 3);
        assert!(notifier.device_news_for("@v:x", 0));
        assert!(!notifier.device_news_for("@v:x", 3));
        assert!(!notifier.device_news_for("@w:x", 0), "not a co-member");
        assert!(notifier.side_news_for("@v:x", [], start));
        assert!(!notifier.side_news_for("@w:x", [], start));
        notifier.devices_changed(2, &[]);
        assert!(!side.has_changed().unwrap(), "positions never move back");
    }
}
