//! `routing.toml`: the room classes hungryserv owns, read and validated.
//!
//! The file format is documented in the commented `routing.toml` at the repository root.
//! The invariant this module guards: a room ID belongs to at most one class, and never to a
//! room Synapse made. Synapse makes room IDs from 18 ASCII letters (room versions up to 11)
//! or from a hash with no `:server` part (version 12), so a prefix with at least one
//! non-letter character can never match one of Synapse's rooms; and because no prefix is a
//! prefix of another, at most one class matches any ID.

use std::path::Path;

use super::fields::{Problems, Section};
use super::registration::Registration;

/// All room classes, in file order (the order createRoom matching tries them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingConfig {
    /// The classes.
    pub classes: Vec<RoomClass>,
}

/// One class of rooms that hungryserv may own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomClass {
    /// Unique name, for logs, metrics and the admin API.
    pub name: String,
    /// Room-ID localpart prefix (after the `!`).
    pub prefix: String,
    /// What happens to existing rooms of the class.
    pub serve: ServeMode,
    /// Where new matching rooms are created.
    pub create: CreateTarget,
    /// Which createRoom requests match the class.
    pub matches: CreateMatch,
}

/// How existing rooms of a class are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeMode {
    /// hungryserv serves them.
    Local,
    /// Reads are served; writes get 403.
    ReadOnly,
    /// Requests naming them get 503.
    Off,
}

/// Where new rooms of a class are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateTarget {
    /// In hungryserv, with the class prefix.
    Local,
    /// Forwarded to Synapse as if the class did not exist.
    Synapse,
}

/// Conditions under which a createRoom request belongs to a class (any one suffices).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateMatch {
    /// Requests made with these appservices' tokens.
    pub appservices: Vec<String>,
    /// Requests with `creation_content["m.federate"] == false`.
    pub unfederated: bool,
    /// Every request.
    pub all: bool,
}

impl CreateMatch {
    fn is_empty(&self) -> bool {
        self.appservices.is_empty() && !self.unfederated && !self.all
    }
}

const MAX_PREFIX_LEN: usize = 32;

/// Reads and validates a routing file, recording its problems; `None` when it could not be
/// read or parsed at all. A returned config is only usable if no problem was recorded.
pub fn load(path: &Path, problems: &mut Problems) -> Option<RoutingConfig> {
    let label = path.display().to_string();
    let table = super::read_toml(path, &label, problems)?;
    Some(parse(Section::new(label, table), problems))
}

fn parse(mut top: Section, problems: &mut Problems) -> RoutingConfig {
    let mut classes = Vec::new();
    for mut section in top.tables(problems, "class") {
        let name = section
            .required_string(problems, "name")
            .unwrap_or_default();
        if !name.is_empty() && !valid_name(&name) {
            section.problem(
                problems,
                "name",
                format!("must be 1-64 characters from [a-z0-9_-] (got {name:?})"),
            );
        }
        let prefix = section
            .required_string(problems, "prefix")
            .unwrap_or_default();
        if let Err(message) = check_prefix(&prefix) {
            section.problem(problems, "prefix", format!("{message} (got {prefix:?})"));
        }
        let serve = match section.string(problems, "serve").as_deref() {
            None | Some("local") => ServeMode::Local,
            Some("read_only") => ServeMode::ReadOnly,
            Some("off") => ServeMode::Off,
            Some(other) => {
                section.problem(
                    problems,
                    "serve",
                    format!("must be \"local\", \"read_only\" or \"off\" (got {other:?})"),
                );
                ServeMode::Local
            }
        };
        let create = match section.string(problems, "create").as_deref() {
            None | Some("local") => CreateTarget::Local,
            Some("synapse") => CreateTarget::Synapse,
            Some(other) => {
                section.problem(
                    problems,
                    "create",
                    format!("must be \"local\" or \"synapse\" (got {other:?})"),
                );
                CreateTarget::Local
            }
        };
        let mut match_section = section.table(problems, "match");
        let matches = CreateMatch {
            appservices: match_section.strings(problems, "appservices"),
            unfederated: match_section.boolean(problems, "unfederated", false),
            all: match_section.boolean(problems, "all", false),
        };
        match_section.finish(problems);
        if create == CreateTarget::Local && matches.is_empty() {
            section.problem(
                problems,
                "match",
                "create = \"local\" but no createRoom request can match (set appservices, unfederated or all, or create = \"synapse\")",
            );
        }
        section.finish(problems);
        classes.push(RoomClass {
            name,
            prefix,
            serve,
            create,
            matches,
        });
    }
    let label = top.location("class");
    top.finish(problems);
    let config = RoutingConfig { classes };
    config.check_overlaps(&label, problems);
    config
}

impl ServeMode {
    /// The name routing.toml uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ServeMode::Local => "local",
            ServeMode::ReadOnly => "read_only",
            ServeMode::Off => "off",
        }
    }
}

impl CreateTarget {
    /// The name routing.toml uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CreateTarget::Local => "local",
            CreateTarget::Synapse => "synapse",
        }
    }
}

impl RoutingConfig {
    /// A reload may change how classes are served and created, and add classes, but never
    /// drop a class or change its prefix: rooms of it may exist, and they must keep being
    /// routed to hungryserv by their prefix (`serve = "off"` is how to stop serving them).
    pub fn check_replaces(&self, old: &RoutingConfig, label: &str, problems: &mut Problems) {
        for class in &old.classes {
            match self.classes.iter().find(|c| c.name == class.name) {
                None => problems.push(format!(
                    "{label}: class {:?} is missing; classes cannot be removed while the server runs (set serve = \"off\" instead)",
                    class.name
                )),
                Some(new) if new.prefix != class.prefix => problems.push(format!(
                    "{label}: class {:?} changes its prefix from {:?} to {:?}; prefixes are permanent",
                    class.name, class.prefix, new.prefix
                )),
                Some(_) => {}
            }
        }
    }
    /// Names and prefixes must be unique, and no prefix may start another class's prefix
    /// (otherwise one room ID would belong to two classes).
    fn check_overlaps(&self, label: &str, problems: &mut Problems) {
        for (i, a) in self.classes.iter().enumerate() {
            for b in &self.classes[i + 1..] {
                if !a.name.is_empty() && a.name == b.name {
                    problems.push(format!("{label}: two classes are named {:?}", a.name));
                }
                if a.prefix.is_empty() || b.prefix.is_empty() {
                    continue;
                }
                if a.prefix == b.prefix {
                    problems.push(format!(
                        "{label}: classes {:?} and {:?} have the same prefix {:?}",
                        a.name, b.name, a.prefix
                    ));
                } else if a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix) {
                    problems.push(format!(
                        "{label}: prefix {:?} of class {:?} and prefix {:?} of class {:?} overlap (one starts the other)",
                        a.prefix, a.name, b.prefix, b.name
                    ));
                }
            }
        }
    }

    /// Every appservice a class matches on must have a registration.
    pub fn check_appservices(
        &self,
        path: &Path,
        registrations: &[Registration],
        problems: &mut Problems,
    ) {
        for class in &self.classes {
            for id in &class.matches.appservices {
                if !registrations.iter().any(|r| &r.id == id) {
                    problems.push(format!(
                        "{}: class {:?} matches appservice {id:?}, but no registration file in appservice_registrations has that id",
                        path.display(),
                        class.name
                    ));
                }
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
        return Err("must be 1-32 characters long");
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'=' | b'-'))
    {
        return Err("may only contain A-Z, a-z, 0-9, '.', '_', '=' and '-'");
    }
    if prefix.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(
            "must contain a character that is not a letter, or Synapse's own room IDs (18 random letters) could match it",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> (RoutingConfig, Vec<String>) {
        let mut problems = Problems::default();
        let config = parse(
            Section::new("routing.toml", text.parse().unwrap()),
            &mut problems,
        );
        (config, problems.lines)
    }

    #[test]
    fn the_shipped_routing_file_is_valid() {
        let mut problems = Problems::default();
        let config = load(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/routing.toml")),
            &mut problems,
        );
        assert_eq!(problems.lines, Vec::<String>::new());
        let config = config.unwrap();
        assert_eq!(config.classes.len(), 1);
        assert_eq!(config.classes[0].prefix, "hs_");
    }

    #[test]
    fn a_full_class() {
        let (config, problems) = parse_text(
            "[[class]]\nname = \"tg\"\nprefix = \"tg_\"\nserve = \"off\"\ncreate = \"synapse\"\n[class.match]\nappservices = [\"telegram\"]\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            config.classes,
            vec![RoomClass {
                name: "tg".into(),
                prefix: "tg_".into(),
                serve: ServeMode::Off,
                create: CreateTarget::Synapse,
                matches: CreateMatch {
                    appservices: vec!["telegram".into()],
                    unfederated: false,
                    all: false
                },
            }]
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let (_, problems) = parse_text(concat!(
            "[[class]]\nname = \"a\"\nprefix = \"hs_\"\n[class.match]\nall = true\n",
            "[[class]]\nname = \"a\"\nprefix = \"hs_\"\n[class.match]\nall = true\n",
            "[[class]]\nname = \"Bad Name\"\nprefix = \"letters\"\nserve = \"maybe\"\n[class.match]\nall = true\n",
            "[[class]]\nname = \"c\"\nprefix = \"hs_x\"\ncreate = \"local\"\ncolour = 1\n",
        ));
        let joined = problems.join("\n");
        for needle in [
            "class[2].name: must be 1-64 characters",
            "class[2].prefix: must contain a character that is not a letter",
            "class[2].serve: must be \"local\", \"read_only\" or \"off\"",
            "class[3].match: create = \"local\" but no createRoom request can match",
            "class[3].colour: unknown key",
            "two classes are named \"a\"",
            "have the same prefix \"hs_\"",
            "prefix \"hs_\" of class \"a\" and prefix \"hs_x\" of class \"c\" overlap",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn prefix_rules() {
        assert!(check_prefix("hs_").is_ok());
        assert!(check_prefix("7").is_ok());
        assert!(check_prefix("bridge.").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("abc").is_err());
        assert!(check_prefix("a:b_").is_err());
        assert!(check_prefix("ü_").is_err());
        assert!(check_prefix(&"a_".repeat(17)).is_err());
    }
}
