//! Wake-ups for readers of the local event stream: the highest committed stream position,
//! published after each commit, and what each commit touched.
//!
//! A waiting reader subscribes *before* it reads the store, so a commit that lands between
//! its read and its wait still wakes it (a `watch` receiver sees any value published after it
//! was created). What a commit touched (rooms, and users whose membership changed) is recorded
//! *before* the position is published, so a woken reader can decide from memory whether the
//! commit concerns it ([`Notifier::news_for`]) instead of asking the database on every commit
//! of every room.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

/// Publishes the highest committed stream position. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    /// The latest committed position.
    tx: watch::Sender<i64>,
    /// Latest stream position per room and per member, for committed positions only.
    touched: Arc<RwLock<Touched>>,
}

#[derive(Default)]
struct Touched {
    /// Room ID → stream position of its latest committed event.
    rooms: HashMap<String, i64>,
    /// User ID → stream position of the latest committed member event about them.
    members: HashMap<String, i64>,
}

/// What one commit wrote: `(room, stream)` per event, and `(user, stream)` per member event.
#[derive(Debug, Default)]
pub struct Commit {
    pub rooms: Vec<(String, i64)>,
    pub members: Vec<(String, i64)>,
}

impl Notifier {
    pub fn new(current: i64) -> Self {
        Self {
            tx: watch::Sender::new(current),
            touched: Arc::default(),
        }
    }

    /// Called by the writer after a commit; positions only move forward.
    pub fn committed(&self, position: i64, commit: Commit) {
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

    /// The highest committed position now.
    pub fn current(&self) -> i64 {
        *self.tx.borrow()
    }

    /// A receiver that is woken by every later commit.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.tx.subscribe()
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
}
