//! Device lists for users who share local rooms: who hears about whose device changes, and
//! when.
//!
//! **Why.** Synapse tells a user's device and cross-signing key changes to the users it knows
//! share a room with them (`device_lists.changed` in `/sync`, `/keys/changes`), and tells a
//! user to stop tracking someone (`left`) when they share no room any more. It does not know
//! local rooms, so two users who share only local rooms are strangers to it: in an encrypted
//! local room a new device of one member would never be seen by the others, who then encrypt
//! for a stale device list.
//!
//! **Who hears about whom.** hungryserv adds what Synapse cannot know:
//! * `changed` for viewer V gets user P when V and P are both joined to a local room now and
//!   P's devices changed in the sync's range ([`trigger`]: every request that changes devices
//!   passes through hungryserv, and is recorded in the device-change stream of migration 0021
//!   after Synapse accepted it — recording before would let a peer fetch the old keys and
//!   consider them fresh);
//! * `changed` also gets P when P joined (or was invited to) a local room V is joined to in the
//!   range, and every member of a local room V joined in the range: V must fetch their keys
//!   (Synapse does the same for its rooms);
//! * `left` gets P when P left (or was kicked or banned from) a local room V is in, or V left a
//!   room P is in, in the range — and V now shares neither a local room nor a Synapse room
//!   with P. The Synapse side is asked with V's own token (MSC2666 mutual rooms, within a
//!   2-second budget per answer); when it cannot be asked (an appservice viewer, Synapse down
//!   or slow), P stays out of `left`: a stale tracked user costs a key query, a wrongly
//!   dropped one breaks encryption.
//!
//! Merged with Synapse's answer ([`lists::merge`]): `changed` is the union; `left` is the
//! union minus anyone still sharing a local room with V (Synapse's `left` does not know them)
//! and minus anyone in `changed`. A user's own device changes are Synapse's to tell.
//!
//! A waiting `/sync` of a co-member is woken through [`crate::notify`]: a change is published
//! with the users who hear of it.
//!
//! May import: `store`, `notify`, `upstream`, `auth`, `routing` (the classified change). Not
//! `sync`: sync asks this module for a range of positions ([`At`]), never the reverse.

pub mod lists;
pub mod trigger;

use sqlx::PgPool;

use crate::notify::Notifier;
use crate::store::{self, StoreError};
use crate::upstream::Synapse;

pub use lists::{At, LocalLists, merge};
pub use trigger::Pending;

/// The device-change stream and what is read from it. Cheap to share behind an `Arc`.
pub struct DeviceLists {
    /// hungryserv's database (the stream, local memberships).
    db: PgPool,
    /// Wakes the syncs of the co-members of a changed user.
    notifier: Notifier,
    /// For the Synapse side of `left` (mutual rooms).
    synapse: Synapse,
}

impl DeviceLists {
    pub fn new(db: PgPool, notifier: Notifier, synapse: Synapse) -> Self {
        Self {
            db,
            notifier,
            synapse,
        }
    }

    /// Records that `user_id`'s devices or cross-signing keys changed (Synapse has accepted
    /// the change), then wakes the syncs of their local-room co-members.
    pub async fn record(&self, user_id: &str) -> Result<i64, StoreError> {
        let position = store::devices::record_change(&self.db, user_id).await?;
        let mut conn = self.db.acquire().await?;
        let viewers = store::devices::co_members(&mut conn, user_id).await?;
        drop(conn);
        // Published after commit: a woken sync reads the committed row.
        self.notifier.devices_changed(position, &viewers);
        tracing::debug!(
            user = user_id,
            position,
            viewers = viewers.len(),
            "device change recorded"
        );
        Ok(position)
    }

    /// The committed device-change position now.
    pub fn current(&self) -> i64 {
        self.notifier.side_current().devices
    }
}
