//! Appservice registration files: the same YAML files Synapse reads
//! (`app_service_config_files`), parsed and checked with the rest of the configuration.
//!
//! Tokens are secrets: the [`Registration`] `Debug` output hides them, and nothing here
//! logs them.

use std::path::Path;

use regex::Regex;
use serde::Deserialize;

use super::Problems;

/// One appservice registration.
#[derive(Clone)]
pub struct Registration {
    /// The registration's unique `id`.
    pub id: String,
    /// Where transactions are pushed; `None` for appservices that only send.
    pub url: Option<String>,
    /// Token the appservice presents to us.
    pub as_token: String,
    /// Token we present to the appservice.
    pub hs_token: String,
    /// Localpart of the appservice's bot user.
    pub sender_localpart: String,
    /// User-ID namespaces.
    pub users: Vec<Namespace>,
    /// Room-alias namespaces.
    pub aliases: Vec<Namespace>,
    /// Room-ID namespaces.
    pub rooms: Vec<Namespace>,
    /// Whether the appservice wants ephemeral events (MSC2409, stable or unstable key).
    pub receive_ephemeral: bool,
    /// Whether the appservice wants device-list changes (and key counts) in its transactions
    /// (MSC3202, `org.matrix.msc3202: true`).
    pub msc3202: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("sender_localpart", &self.sender_localpart)
            .field("users", &self.users)
            .field("aliases", &self.aliases)
            .field("rooms", &self.rooms)
            .field("receive_ephemeral", &self.receive_ephemeral)
            .field("msc3202", &self.msc3202)
            .finish_non_exhaustive()
    }
}

/// One namespace: a regex over full IDs, and whether it is exclusive.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// The registration's regex, anchored at the start (as Synapse matches it).
    pub regex: Regex,
    /// Only this appservice may create or act for matching IDs.
    pub exclusive: bool,
}

impl Namespace {
    /// A namespace from its registration regex, anchored at the start only, as Synapse
    /// matches (Python `re.match`): a namespace like "@bot_[0-9]+" without a server part
    /// covers "@bot_1:example.org".
    pub fn new(regex: &str, exclusive: bool) -> Result<Self, regex::Error> {
        Ok(Self {
            regex: Regex::new(&format!("^(?:{regex})"))?,
            exclusive,
        })
    }

    /// Whether `id` is inside this namespace.
    pub fn matches(&self, id: &str) -> bool {
        self.regex.is_match(id)
    }
}

#[derive(Deserialize)]
struct RawRegistration {
    id: String,
    #[serde(default)]
    url: Option<String>,
    as_token: String,
    hs_token: String,
    sender_localpart: String,
    #[serde(default)]
    namespaces: RawNamespaces,
    #[serde(default)]
    receive_ephemeral: Option<bool>,
    #[serde(default, rename = "de.sorunome.msc2409.push_ephemeral")]
    push_ephemeral_unstable: Option<bool>,
    #[serde(default, rename = "org.matrix.msc3202")]
    msc3202: bool,
}

#[derive(Deserialize, Default)]
struct RawNamespaces {
    #[serde(default)]
    users: Vec<RawNamespace>,
    #[serde(default)]
    aliases: Vec<RawNamespace>,
    #[serde(default)]
    rooms: Vec<RawNamespace>,
}

#[derive(Deserialize)]
struct RawNamespace {
    regex: String,
    #[serde(default)]
    exclusive: bool,
}

/// Reads one registration file.
pub fn load(path: &Path) -> Result<Registration, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("cannot read file: {err}"))?;
    parse(&text)
}

/// Parses the text of a registration file.
pub fn parse(text: &str) -> Result<Registration, String> {
    let raw: RawRegistration =
        serde_yaml::from_str(text).map_err(|err| format!("not a valid registration: {err}"))?;
    if raw.id.is_empty() {
        return Err("id must not be empty".to_owned());
    }
    if raw.as_token.is_empty() || raw.hs_token.is_empty() {
        return Err(format!(
            "registration {:?}: as_token and hs_token must not be empty",
            raw.id
        ));
    }
    let namespaces = |kind: &str, list: Vec<RawNamespace>| {
        list.into_iter()
            .map(|ns| {
                // Anchored at the start only, as Synapse matches (Python re.match): a namespace
                // like "@bot_[0-9]+" without a server part covers "@bot_1:example.org". The
                // user's server is checked separately (masquerading is for local users only).
                Regex::new(&format!("^(?:{})", ns.regex))
                    .map(|regex| Namespace {
                        regex,
                        exclusive: ns.exclusive,
                    })
                    .map_err(|err| {
                        format!(
                            "registration {:?}: {kind} namespace regex {:?} is invalid: {err}",
                            raw.id, ns.regex
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Registration {
        users: namespaces("users", raw.namespaces.users)?,
        aliases: namespaces("aliases", raw.namespaces.aliases)?,
        rooms: namespaces("rooms", raw.namespaces.rooms)?,
        receive_ephemeral: raw
            .receive_ephemeral
            .or(raw.push_ephemeral_unstable)
            .unwrap_or(false),
        msc3202: raw.msc3202,
        id: raw.id,
        url: raw.url,
        as_token: raw.as_token,
        hs_token: raw.hs_token,
        sender_localpart: raw.sender_localpart,
    })
}

/// Ids and as_tokens must be unique across registrations, as Synapse requires.
pub fn check_unique(registrations: &[Registration], problems: &mut Problems) {
    for (i, a) in registrations.iter().enumerate() {
        for b in &registrations[i + 1..] {
            if a.id == b.id {
                problems.push(format!(
                    "appservice_registrations: two registrations have the id {:?}",
                    a.id
                ));
            }
            if a.as_token == b.as_token {
                problems.push(format!(
                    "appservice_registrations: registrations {:?} and {:?} have the same as_token",
                    a.id, b.id
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TELEGRAM: &str = r#"
id: telegram
url: http://127.0.0.1:29317
as_token: secret-as
hs_token: secret-hs
sender_localpart: telegrambot
rate_limited: false
de.sorunome.msc2409.push_ephemeral: true
namespaces:
  users:
    - regex: '@telegram_.*:example\.org'
      exclusive: true
  aliases:
    - regex: '#telegram_.*:example\.org'
      exclusive: true
"#;

    #[test]
    fn parses_a_mautrix_registration() {
        let reg = parse(TELEGRAM).unwrap();
        assert_eq!(reg.id, "telegram");
        assert!(reg.receive_ephemeral);
        assert!(reg.users[0].matches("@telegram_123:example.org"));
        assert!(!reg.users[0].matches("@alice:example.org"));
        assert!(
            !reg.users[0].matches("x@telegram_1:example.org"),
            "anchored at the start"
        );
        assert!(reg.rooms.is_empty());
        assert!(!reg.msc3202, "MSC3202 only when asked for");
        let opted_in = parse(&format!("{TELEGRAM}org.matrix.msc3202: true\n")).unwrap();
        assert!(opted_in.msc3202);
    }

    #[test]
    fn debug_hides_tokens() {
        let shown = format!("{:?}", parse(TELEGRAM).unwrap());
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn bad_regex_and_missing_fields_are_errors() {
        assert!(parse("id: x\nas_token: a\nhs_token: b\nsender_localpart: bot\nnamespaces:\n  users:\n    - regex: '('\n").unwrap_err().contains("invalid"));
        assert!(parse("id: x\nas_token: a\n").is_err());
    }
}
