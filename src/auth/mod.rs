//! Who is asking: access tokens become requesters ([`requester`]). Appservices come from
//! their registration files, read with the rest of the configuration
//! (`config::registration`).
//!
//! May import: `config` types, `upstream` (whoami, profiles), `cluster::note` (announcing
//! revocations to other instances).

pub mod requester;
