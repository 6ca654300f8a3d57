//! The room engine for local rooms: building events, the authorization rules and redaction
//! of each room version ([`version`]), visibility of history, aliases, upgrades, and the
//! writer that orders and commits events.
//!
//! Handlers call [`Rooms`]; it validates, asks Synapse for what it needs (profiles) *before*
//! any write, then hands events to the [`writer`]. Nothing here knows about HTTP.
//!
//! May import: `store`, `upstream`, `auth`, `config`, `notify`, `metrics` (the writer's
//! counters), `tasks` (the purger is one).

pub mod account;
pub mod admin;
pub mod aliases;
pub mod auth;
pub mod create;
pub mod deletion;
pub mod event;
pub mod forget;
pub mod guests;
pub mod hierarchy;
pub mod initial_sync;
pub mod power;
pub mod read;
pub mod reports;
pub mod restricted;
pub mod room_data;
pub mod search;
pub mod service;
pub mod state;
pub mod summary;
pub mod threads;
pub mod txn_ids;
pub mod typing;
pub mod upgrade;
pub mod validate;
pub mod version;
pub mod visibility;
pub mod writer;

/// Why a room operation failed. `api` turns it into a Matrix error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// 403 M_FORBIDDEN.
    #[error("{0}")]
    Forbidden(String),
    /// 404 M_NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// 400 M_BAD_JSON.
    #[error("{0}")]
    BadJson(String),
    /// 400 M_UNKNOWN: a request Synapse refuses without a more specific code.
    #[error("{0}")]
    BadRequest(String),
    /// 403 M_BAD_STATE: the membership change makes no sense for the target's membership.
    #[error("{0}")]
    BadState(String),
    /// 400 M_INVALID_PARAM.
    #[error("{0}")]
    InvalidParam(String),
    /// 400 M_UNSUPPORTED_ROOM_VERSION: a version local rooms cannot have ([`version`]).
    #[error("{0}")]
    UnsupportedRoomVersion(String),
    /// 400 M_BAD_ALIAS: a canonical alias naming an alias that does not name the room.
    #[error("{0}")]
    BadAlias(String),
    /// 500 M_FORBIDDEN: Synapse's answer to a knock where the room version has no knocking.
    #[error("{0}")]
    UnknownMembership(String),
    /// 400 M_ROOM_IN_USE.
    #[error("{0}")]
    RoomInUse(String),
    /// 400 M_EXCLUSIVE: an appservice namespace is in the way.
    #[error("{0}")]
    Exclusive(String),
    /// 404 M_UNKNOWN: Synapse's answer for an event it cannot place (read markers).
    #[error("{0}")]
    UnknownEvent(String),
    /// 400 M_FORBIDDEN: acting for another user where Synapse answers 400 (typing).
    #[error("{0}")]
    NotYours(String),
    /// 405 M_BAD_JSON: the data cannot be set through this endpoint.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the thing exists already.
    #[error("{0}")]
    Conflict(String),
    /// 413 M_TOO_LARGE.
    #[error("{0}")]
    TooLarge(String),
    /// 502 M_UNKNOWN: another server would be needed (local rooms never federate); Synapse
    /// answers an unreachable server this way.
    #[error("{0}")]
    Unreachable(String),
    /// A database failure (detail for the log only).
    #[error("storage failure: {0}")]
    Store(String),
    /// A broken invariant (detail for the log only).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for RoomError {
    fn from(err: crate::store::StoreError) -> Self {
        RoomError::Store(err.to_string())
    }
}
