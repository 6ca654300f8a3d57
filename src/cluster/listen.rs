//! The listener: one dedicated connection that `LISTEN`s on the cluster channel and applies
//! every other instance's notes here (see the parent module for what is applied where, and
//! why a (re)connect reads everything again).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use super::note::{self, Note, Revocation};
use crate::appservice::Delivery;
use crate::appservice::umbrella::Bridges;
use crate::auth::requester::Identity;
use crate::notify::{Commit, GAP_GRACE, Notifier};
use crate::rooms::deletion::Deletions;
use crate::rooms::typing::Typing;
use crate::store;

/// Pause before connecting again after the connection failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// What notes from other instances are applied to.
pub struct Peers {
    /// This instance's id: its own notes come back and are skipped.
    pub instance: u64,
    pub notifier: Notifier,
    pub typing: Arc<Typing>,
    pub bridges: Arc<Bridges>,
    pub delivery: Arc<Delivery>,
    pub identity: Arc<Identity>,
    pub deletions: Arc<Deletions>,
}

/// Listens until the process ends, reconnecting after any failure.
pub async fn run(db: PgPool, peers: Peers) {
    loop {
        if let Err(err) = listen_once(&db, &peers).await {
            tracing::warn!(error = %err, "listener connection lost; reconnecting, then reading everything again");
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Closes position gaps older than [`GAP_GRACE`] (see `notify`); runs until the process ends.
pub async fn close_gaps(notifier: Notifier) {
    let mut tick = tokio::time::interval(GAP_GRACE / 5);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        notifier.skip_gaps(GAP_GRACE);
    }
}

async fn listen_once(db: &PgPool, peers: &Peers) -> Result<(), store::StoreError> {
    let mut listener = PgListener::connect_with(db).await?;
    listener.listen(store::cluster::CHANNEL).await?;
    // Listening now: whatever is read from here on is either read or notified.
    let committed = store::current_positions(db).await?;
    peers.notifier.resync(committed);
    peers.identity.apply_revocation(&Revocation::All);
    peers.bridges.reload_all().await?;
    tracing::info!(
        stream = committed.stream,
        "listening to the other instances"
    );
    loop {
        // `None`: the connection was lost (notes may be lost with it).
        let Some(notification) = listener.try_recv().await? else {
            return Ok(());
        };
        let Some(envelope) = note::parse(notification.payload()) else {
            continue;
        };
        if envelope.i == peers.instance {
            continue;
        }
        apply(peers, envelope.note).await;
    }
}

async fn apply(peers: &Peers, note: Note) {
    match note {
        Note::Events {
            lo,
            hi,
            rooms,
            members,
        } => peers.notifier.remote_committed(
            lo,
            hi,
            rooms
                .zip(members)
                .map(|(rooms, members)| Commit { rooms, members }),
        ),
        Note::RoomData { p, rooms, users } => peers.notifier.remote_room_data(p, rooms.zip(users)),
        Note::Devices { p, viewers } => peers.notifier.remote_devices(p, viewers),
        Note::Typing { room, user, ms } => {
            peers
                .typing
                .apply(&room, &user, ms.map(Duration::from_millis));
        }
        Note::Appservice { id } => {
            if let Err(err) = peers.bridges.reload(&id).await {
                tracing::warn!(appservice = %id, error = %err, "cannot read a changed bridge; read again at the next reconnect");
            }
        }
        Note::Relayed { id } => peers.delivery.relayed_elsewhere(&id),
        Note::Revoke(revocation) => peers.identity.apply_revocation(&revocation),
        Note::RoomGone { room, blocked } => peers.deletions.gone_elsewhere(&room, blocked),
    }
}
