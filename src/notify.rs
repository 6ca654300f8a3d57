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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

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
        }
    }

    /// Called by the writer after a commit; positions only move forward.
    pub fn committed(&self, position: i64, commit: Commit) {
        self.persisted
            .fetch_add(commit.rooms.len() as u64, Ordering::Relaxed);
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
        self.side.send_if_modified(|current| {
            let advanced = position > current.room_data;
            if advanced {
                current.room_data = position;
            }
            advanced
        });
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
        touched.device_viewers.get(user).is_some_and(|p| *p > since)
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
        touched
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
        touched.members.get(user).is_some_and(|s| *s > since)
    }

    /// Those of `rooms` written into by a commit seen by this process after `since`.
    pub fn rooms_touched_since<'a>(
        &self,
        rooms: impl IntoIterator<Item = &'a str>,
        since: i64,
    ) -> Vec<String> {
        let touched = self.touched.read().unwrap_or_else(|e| e.into_inner());
        rooms
            .into_iter()
            .filter(|room| touched.rooms.get(*room).is_some_and(|s| *s > since))
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
        touched.members.get(user).is_some_and(|s| *s > since)
            || rooms
                .into_iter()
                .any(|room| touched.rooms.get(room).is_some_and(|s| *s > since))
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
