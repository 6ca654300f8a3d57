//! Who is asking: access tokens become requesters ([`requester`]), appservices come from
//! their registration files ([`registration`]).
//!
//! May import: `config` types, `upstream` (whoami, profiles).

pub mod registration;
pub mod requester;
