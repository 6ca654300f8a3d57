//! Who is typing in local rooms: in memory only, as Synapse keeps it (a restart forgets it, and
//! typing notices are seconds long anyway).
//!
//! Several instances: each keeps its own copy. A change made here is announced to the others
//! ([`crate::notify::Notifier::announce`]), which apply it with [`Typing::apply`] as if it had
//! been made there: with their own deadline (the notice's `timeout` from when they heard of
//! it, a millisecond later) and their own serial. Serials of two instances are both clock
//! based, so a token from one instance read on another hides no later change unless their
//! clocks disagree by more than the time between two changes of one room; expiry publishes
//! again in any case. An instance that starts knows no notice until the next change.
//!
//! Every change of a room's typing list gets a new *serial*, taken from one counter for all
//! rooms; a sync token carries the serial it has seen, and a room whose serial is newer shows
//! its current list. The counter starts at the wall clock in milliseconds and only grows
//! (`max(previous + 1, now)`), so serials stay above those handed out before a restart and a
//! client's old token never hides a change.
//!
//! Expiry: each typing user has a deadline (`timeout`, at most [`MAX_TIMEOUT`]). One task
//! sleeps until the earliest deadline, drops whoever expired and publishes the change, so
//! waiting syncs are woken by an expiry as by a stop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::service::now_ms;
use crate::cluster::note::Note;
use crate::notify::Notifier;

/// The longest a typing notice lasts (Synapse caps `timeout` the same way).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// Typing state of all local rooms. Cheap to share through an `Arc`.
pub struct Typing {
    inner: Mutex<Inner>,
    notifier: Notifier,
    /// Wakes the expiry task when a deadline is added (`notify_one` keeps a permit when the
    /// task is not waiting, so no re-arm is lost).
    rearm: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    /// The last serial handed out.
    serial: i64,
    rooms: HashMap<String, RoomTyping>,
}

#[derive(Default)]
struct RoomTyping {
    /// User → when their notice expires.
    until: HashMap<String, Instant>,
    /// The serial of the room's last change.
    serial: i64,
}

impl Inner {
    fn next_serial(&mut self) -> i64 {
        self.serial = (self.serial + 1).max(now_ms());
        self.serial
    }
}

impl Typing {
    /// The typing state, with its expiry task running until the last handle is dropped.
    pub fn start(notifier: Notifier) -> Arc<Self> {
        let typing = Arc::new(Self {
            inner: Mutex::new(Inner {
                serial: now_ms(),
                rooms: HashMap::new(),
            }),
            notifier,
            rearm: Arc::new(Notify::new()),
        });
        // The task holds no strong handle: it ends within a minute of the last one's drop.
        let weak = Arc::downgrade(&typing);
        let rearm = Arc::clone(&typing.rearm);
        tokio::spawn(async move {
            loop {
                let next = {
                    let Some(typing) = weak.upgrade() else { return };
                    typing.expire(Instant::now());
                    typing.next_deadline()
                };
                let sleep = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
                tokio::select! {
                    () = tokio::time::sleep_until(sleep) => {}
                    () = rearm.notified() => {}
                }
            }
        });
        typing
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest serial handed out.
    pub fn current(&self) -> i64 {
        self.lock().serial
    }

    /// `user` is typing in `room` for `timeout` (capped), or stopped (`None`). Publishes a
    /// change only when the room's list changes (a renewed notice just moves the deadline).
    pub fn set(&self, room: &str, user: &str, timeout: Option<Duration>) {
        self.notifier.announce(Note::Typing {
            room: room.to_owned(),
            user: user.to_owned(),
            ms: timeout.map(|t| u64::try_from(t.min(MAX_TIMEOUT).as_millis()).unwrap_or(0)),
        });
        self.apply(room, user, timeout);
    }

    /// Applies a change without announcing it (one another instance announced).
    pub fn apply(&self, room: &str, user: &str, timeout: Option<Duration>) {
        let changed = {
            let mut inner = self.lock();
            let was_typing = inner
                .rooms
                .get(room)
                .is_some_and(|r| r.until.contains_key(user));
            match timeout {
                Some(timeout) => {
                    let until = Instant::now() + timeout.min(MAX_TIMEOUT);
                    inner
                        .rooms
                        .entry(room.to_owned())
                        .or_default()
                        .until
                        .insert(user.to_owned(), until);
                }
                None => {
                    if let Some(r) = inner.rooms.get_mut(room) {
                        r.until.remove(user);
                    }
                }
            }
            (was_typing != timeout.is_some()).then(|| {
                let serial = inner.next_serial();
                inner.rooms.entry(room.to_owned()).or_default().serial = serial;
                serial
            })
        };
        if timeout.is_some() {
            self.rearm.notify_one();
        }
        if let Some(serial) = changed {
            self.notifier.typing_changed(room, serial);
        }
    }

    /// The users typing in `room` and the serial of its last change, if it ever changed.
    pub fn of_room(&self, room: &str) -> Option<(i64, Vec<String>)> {
        let inner = self.lock();
        let r = inner.rooms.get(room)?;
        let mut users: Vec<String> = r.until.keys().cloned().collect();
        users.sort();
        Some((r.serial, users))
    }

    /// Every room whose typing list changed after serial `since`, with its list now.
    pub fn changed_since(&self, since: i64) -> Vec<(String, Vec<String>)> {
        let inner = self.lock();
        inner
            .rooms
            .iter()
            .filter(|(_, r)| r.serial > since)
            .map(|(room, r)| {
                let mut users: Vec<String> = r.until.keys().cloned().collect();
                users.sort();
                (room.clone(), users)
            })
            .collect()
    }

    /// Drops the notices that expired by `now` and publishes the changed rooms.
    fn expire(&self, now: Instant) {
        let changed: Vec<(String, i64)> = {
            let mut inner = self.lock();
            let expired: Vec<String> = inner
                .rooms
                .iter_mut()
                .filter_map(|(room, r)| {
                    let before = r.until.len();
                    r.until.retain(|_, until| *until > now);
                    (r.until.len() != before).then(|| room.clone())
                })
                .collect();
            expired
                .into_iter()
                .map(|room| {
                    let serial = inner.next_serial();
                    if let Some(r) = inner.rooms.get_mut(&room) {
                        r.serial = serial;
                    }
                    (room, serial)
                })
                .collect()
        };
        for (room, serial) in changed {
            self.notifier.typing_changed(&room, serial);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.lock()
            .rooms
            .values()
            .flat_map(|r| r.until.values())
            .min()
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn typing_starts_stops_and_expires_with_a_wake_up() {
        let notifier = Notifier::new(0);
        let typing = Typing::start(notifier.clone());
        let mut side = notifier.subscribe_side();
        let start = typing.current();

        typing.set("!r:x", "@a:x", Some(Duration::from_secs(5)));
        let (first, users) = typing.of_room("!r:x").unwrap();
        assert!(first > start);
        assert_eq!(users, ["@a:x"]);
        side.changed().await.unwrap();
        assert_eq!(side.borrow_and_update().typing, first);

        // A renewed notice changes nothing a client sees.
        typing.set("!r:x", "@a:x", Some(Duration::from_secs(5)));
        assert_eq!(typing.of_room("!r:x").unwrap().0, first);
        assert!(!side.has_changed().unwrap());

        typing.set("!r:x", "@b:x", Some(Duration::from_secs(600)));
        let (second, users) = typing.of_room("!r:x").unwrap();
        assert!(second > first);
        assert_eq!(users, ["@a:x", "@b:x"]);

        // @a's notice (renewed at t=0 for 5 s) expires; the expiry wakes subscribers.
        side.borrow_and_update();
        tokio::time::sleep(Duration::from_secs(6)).await;
        side.changed().await.unwrap();
        let (third, users) = typing.of_room("!r:x").unwrap();
        assert!(third > second);
        assert_eq!(
            users,
            ["@b:x"],
            "timeouts are capped at two minutes, @b stays"
        );

        typing.set("!r:x", "@b:x", None);
        assert!(typing.of_room("!r:x").unwrap().1.is_empty());
        // Stopping twice publishes once.
        let stopped = typing.current();
        typing.set("!r:x", "@b:x", None);
        assert_eq!(typing.current(), stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_applies_to_long_timeouts() {
        let typing = Typing::start(Notifier::new(0));
        typing.set("!r:x", "@a:x", Some(Duration::from_secs(3600)));
        tokio::time::sleep(MAX_TIMEOUT + Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        assert!(typing.of_room("!r:x").unwrap().1.is_empty());
    }
}
