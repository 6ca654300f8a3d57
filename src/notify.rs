//! Wake-ups for readers of the local event stream: the highest committed stream position,
//! published after each commit. A waiting reader subscribes *before* it reads the store, so a
//! commit that lands between its read and its wait still wakes it (a `watch` receiver sees
//! any value published after it was created).

use tokio::sync::watch;

/// Publishes the highest committed stream position. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    /// The latest committed position.
    tx: watch::Sender<i64>,
}

impl Notifier {
    pub fn new(current: i64) -> Self {
        Self {
            tx: watch::Sender::new(current),
        }
    }

    /// Called by the writer after a commit; positions only move forward.
    pub fn committed(&self, position: i64) {
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
}
