//! What one instance tells the others, and the outbox it is told through.
//!
//! A [`Note`] travels as the JSON payload of a `NOTIFY` on `store::cluster::CHANNEL`, wrapped
//! in an [`Envelope`] naming its sender (an instance ignores its own notes: it applied them
//! already) and numbering it (Postgres drops a repeated identical payload within one
//! transaction; the number keeps every note distinct). Payloads are at most
//! [`MAX_PAYLOAD`] bytes (Postgres allows 8000): a note about positions that would be longer
//! drops its lists and says only "everything up to here may have changed" (`None`), which
//! wakes every reader of the receiving instance once; nothing is lost, it only costs reads.
//!
//! May import: nothing of the crate.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The longest payload sent; Postgres refuses more than 8000 bytes.
pub const MAX_PAYLOAD: usize = 7_900;

/// Notes waiting for the publisher. When it is full a note is dropped and counted: a dropped
/// position note leaves a gap that the receivers close after `notify::GAP_GRACE`.
const OUTBOX: usize = 8_192;

/// One change another instance must know of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Note {
    /// Events committed at stream positions `(lo, hi]`: `(room, stream)` per event and
    /// `(user, stream)` per member event, or `None`: too many to say.
    #[serde(rename = "e")]
    Events {
        lo: i64,
        hi: i64,
        rooms: Option<Vec<(String, i64)>>,
        members: Option<Vec<(String, i64)>>,
    },
    /// Room data committed at position `p` (one position per commit): receipts in `rooms`,
    /// private data of `users` (`None`: too many to say).
    #[serde(rename = "d")]
    RoomData {
        p: i64,
        rooms: Option<Vec<String>>,
        users: Option<Vec<String>>,
    },
    /// A device change committed at position `p` of the device-change stream, heard of by
    /// `viewers` (`None`: too many to say).
    #[serde(rename = "v")]
    Devices {
        p: i64,
        viewers: Option<Vec<String>>,
    },
    /// `user` is typing in `room` for `ms` milliseconds, or stopped (`None`).
    #[serde(rename = "t")]
    Typing {
        room: String,
        user: String,
        ms: Option<u64>,
    },
    /// The dynamic appservice `id` was registered, updated or removed: read its row again.
    #[serde(rename = "a")]
    Appservice { id: String },
    /// A transaction from Synapse was stored for appservice `id`: its pusher, wherever it
    /// runs, delivers it now.
    #[serde(rename = "r")]
    Relayed { id: String },
    /// Cached token resolutions to drop (a revocation passed through another instance).
    #[serde(rename = "x")]
    Revoke(Revocation),
    /// A local room was deleted (or blocked): refuse it at once, as the instance that took
    /// the request does.
    #[serde(rename = "g")]
    RoomGone { room: String, blocked: bool },
}

/// Which cached token resolutions a revocation drops. Tokens travel only as their SHA-256
/// (hex), as they are cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "w")]
pub enum Revocation {
    /// One token (`/logout`).
    #[serde(rename = "token")]
    Token { digest: String },
    /// Every token of the user owning this one (`/logout/all`, a password change).
    #[serde(rename = "user_of")]
    UserOf { digest: String },
    /// Every token of a user (deactivation, an admin change).
    #[serde(rename = "user")]
    User { user: String },
    /// The tokens of one device but `keep` (device deletion, `/refresh`).
    #[serde(rename = "device")]
    Device {
        user: String,
        device: String,
        keep: Option<String>,
    },
    /// Everything cached.
    #[serde(rename = "all")]
    All,
}

/// A note as sent: who sent it, its number, the note.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending instance.
    pub i: u64,
    /// The sender's note counter.
    pub s: u64,
    #[serde(flatten)]
    pub note: Note,
}

impl Note {
    /// The note without its lists (see the module doc), for a payload that is too long.
    fn shortened(self) -> Self {
        match self {
            Note::Events { lo, hi, .. } => Note::Events {
                lo,
                hi,
                rooms: None,
                members: None,
            },
            Note::RoomData { p, .. } => Note::RoomData {
                p,
                rooms: None,
                users: None,
            },
            Note::Devices { p, .. } => Note::Devices { p, viewers: None },
            other => other,
        }
    }
}

/// Where an instance's notes go, for the publisher task. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    /// This instance's random id.
    instance: u64,
    tx: mpsc::Sender<String>,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Notes dropped because the outbox was full.
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Outbox {
    /// An outbox and the receiving end the publisher drains.
    pub fn new() -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let outbox = Self {
            instance: rand::random(),
            tx,
            counter: Default::default(),
            dropped: Default::default(),
        };
        (outbox, rx)
    }

    /// This instance's id, as its envelopes carry it.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Queues `note` for the other instances; never waits.
    pub fn send(&self, note: Note) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.counter.fetch_add(1, Relaxed);
        let encode = |note: Note| {
            serde_json::to_string(&Envelope {
                i: self.instance,
                s,
                note,
            })
            .unwrap_or_default()
        };
        let mut payload = encode(note.clone());
        if payload.len() > MAX_PAYLOAD {
            payload = encode(note.shortened());
        }
        if payload.is_empty() || payload.len() > MAX_PAYLOAD {
            // Only a typing notice or an ID of absurd length gets here; it is dropped.
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        if self.tx.try_send(payload).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Reads a payload; `None` for one that is not a note (another program on the channel).
pub fn parse(payload: &str) -> Option<Envelope> {
    serde_json::from_str(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_note_loses_its_lists_and_keeps_its_range() {
        let (outbox, mut rx) = Outbox::new();
        let rooms: Vec<(String, i64)> = (0..1000).map(|i| (format!("!room{i}:x"), i)).collect();
        outbox.send(Note::Events {
            lo: 4,
            hi: 1004,
            rooms: Some(rooms),
            members: Some(vec![]),
        });
        outbox.send(Note::Typing {
            room: "!r:x".into(),
            user: "@u:x".into(),
            ms: Some(3000),
        });
        let first = parse(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(
            first.note,
            Note::Events {
                lo: 4,
                hi: 1004,
                rooms: None,
                members: None
            }
        );
        let second = parse(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(second.i, outbox.instance());
        assert_eq!(second.s, first.s + 1, "every note is numbered");
        assert!(matches!(second.note, Note::Typing { ms: Some(3000), .. }));
        assert!(parse("not json").is_none());
    }
}
