//! The `/sync` token envelope: one opaque `since`/`next_batch` holding Synapse's half and ours.
//!
//! Shape: `h1_` followed by unpadded base64url of a small JSON object
//! `{"s": <Synapse's token or absent>, "l": <our stream position>, "r": <room data position>,
//! "t": <typing serial>, "d": <device-change position>}` (`r`, `t` and `d` absent mean 0:
//! tokens from before they existed still read, and their owners get receipts and typing as
//! new, and every local-room co-member in `device_lists.changed` once — a client then fetches
//! keys it may already have, which is harmless). The leading `h` cannot start a
//! Synapse token (those start with `s`, `t`, `m` or a digit), so the two are never confused;
//! the digit after it is the format version, so a later format can change shape and still read
//! this one.
//!
//! Parsing accepts three things: our envelope; a bare Synapse token (a client that synced
//! against Synapse before hungryserv was deployed — our half is then 0, so its local rooms
//! arrive as new); nothing else. A corrupt envelope or an unknown shape is refused with
//! Synapse's own answer to a bad token (400 `M_UNKNOWN` "Invalid stream token").

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::notify::SidePositions;

/// The prefix of version 1 of the envelope.
const V1: &str = "h1_";

/// A decoded `since` token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncToken {
    /// Synapse's half; `None` when Synapse has not answered this client yet.
    pub synapse: Option<String>,
    /// Our half: the highest local stream position the client has been given.
    pub local: i64,
    /// The room data position and typing serial the client has been given.
    pub side: SidePositions,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    synapse: Option<String>,
    #[serde(rename = "l")]
    local: i64,
    #[serde(rename = "r", default)]
    room_data: i64,
    #[serde(rename = "t", default)]
    typing: i64,
    #[serde(rename = "d", default)]
    devices: i64,
}

/// The token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid stream token")]
pub struct InvalidToken;

impl SyncToken {
    /// Encodes the envelope.
    pub fn encode(&self) -> String {
        let wire = Wire {
            synapse: self.synapse.clone(),
            local: self.local,
            room_data: self.side.room_data,
            typing: self.side.typing,
            devices: self.side.devices,
        };
        // Serialising two plain fields cannot fail.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        format!("{V1}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Whether `text` is one of our envelopes (well-formed or not), rather than a Synapse
    /// token or a pagination token.
    pub fn is_envelope(text: &str) -> bool {
        text.starts_with(V1)
    }

    /// Reads a `since` parameter: our envelope or a bare Synapse token.
    pub fn parse(text: &str) -> Result<Self, InvalidToken> {
        if let Some(payload) = text.strip_prefix(V1) {
            let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| InvalidToken)?;
            let wire: Wire = serde_json::from_slice(&json).map_err(|_| InvalidToken)?;
            let negative =
                wire.local < 0 || wire.room_data < 0 || wire.typing < 0 || wire.devices < 0;
            if negative || wire.synapse.as_deref().is_some_and(|s| !is_synapse(s)) {
                return Err(InvalidToken);
            }
            return Ok(SyncToken {
                synapse: wire.synapse,
                local: wire.local,
                side: SidePositions {
                    room_data: wire.room_data,
                    typing: wire.typing,
                    devices: wire.devices,
                },
            });
        }
        if is_synapse(text) {
            return Ok(SyncToken {
                synapse: Some(text.to_owned()),
                ..SyncToken::default()
            });
        }
        Err(InvalidToken)
    }
}

/// Query parameters that may carry a sync token (`/messages` `from`/`to`, `/members` `at`,
/// `/keys/changes` `from`/`to`).
const TOKEN_PARAMS: [&str; 3] = ["from", "to", "at"];

/// Rewrites a query on its way to Synapse: every sync-token parameter holding one of our
/// envelopes gets Synapse's half instead (or is dropped when the envelope has none). `None`
/// when the query has nothing to rewrite, so it goes upstream byte for byte.
pub fn query_for_synapse(query: &str) -> Option<String> {
    if !query.contains(V1) {
        return None;
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut changed = false;
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (key, value) in &pairs {
        if TOKEN_PARAMS.contains(&key.as_str()) && value.starts_with(V1) {
            changed = true;
            // A corrupt envelope goes up as it is: Synapse answers it as any bad token.
            match SyncToken::parse(value) {
                Ok(token) => match token.synapse {
                    Some(synapse) => out.append_pair(key, &synapse),
                    None => continue,
                },
                Err(_) => out.append_pair(key, value),
            };
            continue;
        }
        out.append_pair(key, value);
    }
    changed.then(|| out.finish())
}

/// Whether `text` has the shape of a Synapse sync token: `s…` (one writer), `m…` (several
/// event writers), `t…` (a topological token) or a bare number, in URL-safe characters.
/// Synapse itself decides whether it is valid.
fn is_synapse(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some('s' | 'm' | 't' | '0'..='9'))
        && text.len() <= 1024
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '~' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn synapse_token() -> impl Strategy<Value = String> {
        "[smt0-9][a-z0-9_~.-]{0,80}"
    }

    proptest! {
        #[test]
        fn envelopes_round_trip(
            synapse in proptest::option::of(synapse_token()),
            local in 0..i64::MAX,
            room_data in 0..i64::MAX,
            typing in 0..i64::MAX,
            devices in 0..i64::MAX,
        ) {
            let token = SyncToken { synapse, local, side: SidePositions { room_data, typing, devices } };
            let text = token.encode();
            prop_assert_eq!(SyncToken::parse(&text), Ok(token));
        }

        #[test]
        fn an_envelope_never_looks_like_a_synapse_token(synapse in proptest::option::of(synapse_token()), local in 0..i64::MAX) {
            let text = SyncToken { synapse, local, ..SyncToken::default() }.encode();
            prop_assert!(!is_synapse(&text));
            prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }

        #[test]
        fn bare_synapse_tokens_start_our_half_at_zero(text in synapse_token()) {
            prop_assert_eq!(
                SyncToken::parse(&text),
                Ok(SyncToken { synapse: Some(text.clone()), ..SyncToken::default() })
            );
        }

        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in "\\PC{0,200}") {
            let _ = SyncToken::parse(&text);
        }

        #[test]
        fn a_damaged_envelope_is_refused_or_still_well_formed(
            local in 0..i64::MAX,
            cut in 0usize..40,
            junk in "[A-Za-z0-9_-]{0,4}",
        ) {
            let text = SyncToken { synapse: Some("s12_3".into()), local, ..SyncToken::default() }.encode();
            let damaged = format!("{}{junk}", &text[..cut.min(text.len())]);
            if let Ok(token) = SyncToken::parse(&damaged) {
                prop_assert!(token.local >= 0 && token.side.room_data >= 0 && token.side.typing >= 0 && token.side.devices >= 0);
            }
        }
    }

    #[test]
    fn refuses_what_is_neither() {
        for text in [
            "",
            "garbage",
            "h1_",
            "h1_!!!",
            "h2_eyJsIjoxfQ",
            "x123",
            "s 1",
        ] {
            assert_eq!(SyncToken::parse(text), Err(InvalidToken), "{text:?}");
        }
        // Valid base64 of JSON with the wrong shape, or a negative position.
        let wrong = format!("h1_{}", URL_SAFE_NO_PAD.encode(br#"{"l":-1}"#));
        assert_eq!(SyncToken::parse(&wrong), Err(InvalidToken));
        let wrong = format!("h1_{}", URL_SAFE_NO_PAD.encode(br#"{"s":"h1_x","l":1}"#));
        assert_eq!(SyncToken::parse(&wrong), Err(InvalidToken));
        let wrong = format!("h1_{}", URL_SAFE_NO_PAD.encode(br#"{"l":1,"t":-5}"#));
        assert_eq!(SyncToken::parse(&wrong), Err(InvalidToken));
        let wrong = format!("h1_{}", URL_SAFE_NO_PAD.encode(br#"{"l":1,"d":-1}"#));
        assert_eq!(SyncToken::parse(&wrong), Err(InvalidToken));
    }

    #[test]
    fn tokens_from_before_room_data_still_read() {
        let old = format!("h1_{}", URL_SAFE_NO_PAD.encode(br#"{"s":"s5_1","l":7}"#));
        assert_eq!(
            SyncToken::parse(&old),
            Ok(SyncToken {
                synapse: Some("s5_1".into()),
                local: 7,
                side: SidePositions::default(),
            })
        );
    }

    #[test]
    fn tokens_from_before_device_changes_still_read() {
        let old = format!(
            "h1_{}",
            URL_SAFE_NO_PAD.encode(br#"{"s":"s5_1","l":7,"r":3,"t":9}"#)
        );
        let token = SyncToken::parse(&old).unwrap();
        assert_eq!(token.side.room_data, 3);
        assert_eq!(token.side.devices, 0);
    }

    #[test]
    fn forwarded_queries_get_synapse_half() {
        let ours = SyncToken {
            synapse: Some("s9_2".into()),
            local: 4,
            ..SyncToken::default()
        }
        .encode();
        assert_eq!(query_for_synapse("dir=b&from=s1_1"), None);
        assert_eq!(
            query_for_synapse(&format!("dir=b&from={ours}&limit=5")).as_deref(),
            Some("dir=b&from=s9_2&limit=5")
        );
        assert_eq!(
            query_for_synapse(&format!("from={ours}&to={ours}")).as_deref(),
            Some("from=s9_2&to=s9_2")
        );
        let no_synapse = SyncToken {
            synapse: None,
            local: 4,
            ..SyncToken::default()
        }
        .encode();
        assert_eq!(
            query_for_synapse(&format!("at={no_synapse}&membership=join")).as_deref(),
            Some("membership=join")
        );
        // Only token parameters are touched.
        assert_eq!(query_for_synapse(&format!("filter={ours}")), None);
    }

    #[test]
    fn synapse_token_shapes_are_recognised() {
        for text in ["s72594_4483_1934", "m1~2.3_4", "t12-345_6", "12345"] {
            assert!(is_synapse(text), "{text}");
        }
    }
}
