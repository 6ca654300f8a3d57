//! Who is asking: appservice registrations now; access-token resolution (Synapse
//! `/account/whoami`, cached by SHA-256) arrives with local rooms.
//!
//! May import: `config` types only.

pub mod registration;
