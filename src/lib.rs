//! hungryserv: a Synapse-compatible sidecar homeserver for bridge-only rooms.
//!
//! One public listener receives every client and bridge request. Each request is classified
//! once ([`routing::classify`]) and then either forwarded to Synapse unchanged
//! ([`upstream`]), answered by hungryserv's own operations endpoints ([`admin`]), or — in
//! later versions — served from hungryserv's own rooms. The HTTP wiring that ties these
//! together lives in [`server`]; [`app`] builds the one shared [`app::AppState`] handle.
//!
//! Dependencies point one way (see `shared/STYLE.md`): `config` and `error` at the bottom;
//! `store` (the only place SQL lives) and `upstream` (the only place that talks to Synapse)
//! above them; `auth` and `routing` next; `admin` handlers; then `app` and `server`; then
//! `main`. Nothing below `admin`/`server` knows about HTTP responses.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod app;
pub mod appservice;
pub mod auth;
pub mod config;
pub mod cors;
pub mod error;
pub mod metrics;
pub mod notify;
pub mod push;
pub mod rooms;
pub mod routing;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod upstream;
