//! hungryserv: a Synapse-compatible sidecar homeserver for bridge-only rooms.
//!
//! One public listener receives every client and bridge request. Each request is classified
//! once ([`routing::classify`]) and then forwarded to Synapse unchanged ([`upstream`]),
//! served from hungryserv's own rooms ([`api`] handlers over the room engine [`rooms`]),
//! merged from both worlds (`/sync` in [`sync`], `/joined_rooms`, `/notifications`,
//! `/versions`), or answered by hungryserv's operations endpoints ([`admin`]). Local events
//! reach bridges through [`appservice`] and push gateways through [`push`]. The HTTP wiring
//! that ties these together lives in [`server`]; [`app`] builds the one shared
//! [`app::AppState`] handle and starts the background work, owned by [`tasks`].
//!
//! Dependencies point one way (see `shared/STYLE.md`): `config`, `error`, `metrics` and
//! `tasks` at the bottom; `store` (the only place SQL lives) and `upstream` (the only place
//! that talks to Synapse) above them; then `routing`, `auth`, `notify` and `rooms`; then
//! `sync`, `push` and `appservice` (and `devices`, the device lists of local-room co-members,
//! which reads a forwarded device change's body and answer); then `cluster` (what several
//! instances on one database tell each other; its `note` sits at the bottom, beside `tasks`);
//! then `app`; then the `api` and `admin` handlers; then
//! `server`; then `main`. Nothing below `api`/`admin`/`server` builds HTTP responses.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod app;
pub mod appservice;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod devices;
pub mod drain;
pub mod error;
pub mod metrics;
pub mod notify;
pub mod push;
pub mod rooms;
pub mod routing;
pub mod search;
pub mod server;
pub mod store;
pub mod sync;
pub mod tasks;
pub mod telemetry;
pub mod upstream;
