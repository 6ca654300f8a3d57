//! Configuration: `hungryserv.toml` and the room-class file `routing.toml`, read and
//! validated before anything else happens.
//!
//! [`load`] returns either a fully validated [`Config`] or every problem found in every file
//! at once; `main` prints them and exits with code 64 before any port is bound. The annotated
//! reference for each field (unit and default) is `deploy/hungryserv.toml`.
//!
//! May import: nothing of the crate (it is the bottom layer).

mod fields;
pub mod registration;
pub mod routing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ruma::OwnedServerName;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub use fields::Problems;
use fields::Section;
pub use registration::{Namespace, Registration};
pub use routing::{CreateMatch, CreateTarget, RoomClass, RoutingConfig, ServeMode};

/// Everything hungryserv needs to start, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Matrix server name, shared with Synapse.
    pub server_name: OwnedServerName,
    /// The public listener's address.
    pub listen: SocketAddr,
    /// Where `routing.toml` was read from.
    pub routing_path: PathBuf,
    /// The room classes.
    pub routing: RoutingConfig,
    /// The appservice registrations, as Synapse reads them.
    pub appservices: Vec<Registration>,
    /// How to reach Synapse.
    pub synapse: SynapseConfig,
    /// hungryserv's own database.
    pub database: DatabaseConfig,
    /// Body size limits.
    pub limits: LimitsConfig,
    /// Log output.
    pub log: LogConfig,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// Transactions pushed to appservices.
    pub delivery: DeliveryConfig,
    /// Room deletion.
    pub deletion: DeletionConfig,
    /// Notifications to push gateways.
    pub push: PushConfig,
    /// Several instances on one database.
    pub cluster: ClusterConfig,
}

/// Several hungryserv instances on one database (`[cluster]`, see `crate::cluster`).
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// Other instances may share the database: wake-ups, typing, appservice changes and
    /// revocations are exchanged through `LISTEN/NOTIFY`, and the tasks that must run once
    /// are held through advisory locks.
    pub enabled: bool,
}

/// Notifications posted to push gateways (`[push]`).
#[derive(Debug, Clone, Default)]
pub struct PushConfig {
    /// CA certificates trusted for `https://` push gateways besides the built-in public roots
    /// (a gateway with a private CA), with `appservice.extra_ca_file`'s semantics.
    pub extra_ca: Option<CaBundle>,
}

/// Room deletion.
#[derive(Debug, Clone)]
pub struct DeletionConfig {
    /// How long a deleted room's state events (with its members' leaves) outlive the purge of
    /// its messages, so members who sync within that time see the room under `leave`.
    pub leaves_kept: Duration,
}

/// Synapse's internal listener and the connection pool to it.
#[derive(Debug, Clone)]
pub struct SynapseConfig {
    /// Scheme and authority of Synapse's client listener (`http://host:port`), no path.
    pub base: http::uri::Authority,
    /// Time allowed to open a TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed until Synapse's response headers arrive.
    pub response_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// At most this many idle connections are kept.
    pub pool_max_idle: usize,
    /// Time allowed for `/account/whoami` when a token is (re)checked.
    pub whoami_timeout: Duration,
    /// How long a merged `/sync` waits for Synapse's half beyond the client's timeout.
    pub sync_grace: Duration,
}

/// hungryserv's Postgres database.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Connection URL; may hold a password, so it is never printed (see the Debug impl).
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Time allowed to get a pooled connection.
    pub acquire_timeout: Duration,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

/// Request body limits.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Largest body forwarded to Synapse; `None` leaves the limit to Synapse.
    pub max_forward_body_bytes: Option<u64>,
    /// Largest body of a request hungryserv answers itself.
    pub max_local_body_bytes: u64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Log settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// `tracing` filter directive, unless `RUST_LOG` is set.
    pub filter: String,
}

/// Shutdown settings.
#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub grace_period: Duration,
}

/// How events of local rooms are pushed to appservices.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Most events in one transaction.
    pub max_events: usize,
    /// Largest transaction body, in bytes (a single larger event still goes, alone).
    pub max_bytes: usize,
    /// Longest wait between retries of a failed transaction.
    pub max_backoff: Duration,
    /// Time allowed for the appservice to answer one transaction.
    pub request_timeout: Duration,
    /// Appservices in relay mode (`[[appservice.relay]]`).
    pub relays: Vec<RelayConfig>,
    /// The id of the umbrella registration (`appservice.umbrella`): the one registration
    /// Synapse knows for every bridge registered at run time (see `appservice::umbrella`).
    pub umbrella: Option<String>,
    /// CA certificates trusted for `https://` appservice URLs besides the built-in public
    /// roots (a bridge with a private CA).
    pub extra_ca: Option<CaBundle>,
}

/// Relay mode for one appservice: Synapse's registration for it points at
/// `/_hungryserv/appservice/{id}`; hungryserv passes Synapse's transactions on to the bridge
/// with its own (see `appservice::relay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The registration's `id`.
    pub appservice: String,
    /// Where the bridge itself listens (`http://…` or `https://…`); `None`: it connects by websocket only.
    /// (The registration's `url` is hungryserv's relay endpoint in this mode.)
    pub url: Option<String>,
}

/// CA certificates read from a PEM file, each checked to be usable as a trust anchor.
#[derive(Clone)]
pub struct CaBundle {
    /// Where they were read from, for messages.
    pub path: PathBuf,
    /// The certificates, DER-encoded.
    pub certificates: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

impl CaBundle {
    /// Reads every certificate of a PEM file; a file without one, or with one that cannot be
    /// a trust anchor, is refused (a silently empty bundle would only show up as failing
    /// deliveries).
    pub fn read(path: &Path) -> Result<Self, String> {
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("{}: not a PEM certificate file: {err}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!(
                "{}: contains no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (index, certificate) in certificates.iter().enumerate() {
            roots.add(certificate.clone()).map_err(|err| {
                format!(
                    "{}: certificate {} cannot be a trust anchor: {err}",
                    path.display(),
                    index + 1
                )
            })?;
        }
        Ok(Self {
            path: path.to_owned(),
            certificates,
        })
    }
}

/// Reads and validates `path` and the files it names. On failure, every problem found.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let mut problems = Problems::default();
    let label = path.display().to_string();
    let Some(table) = read_toml(path, &label, &mut problems) else {
        return Err(problems);
    };
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut top = Section::new(label, table);

    let server_name = top
        .required_string(&mut problems, "server_name")
        .and_then(|name| match OwnedServerName::try_from(name.as_str()) {
            Ok(name) => Some(name),
            Err(err) => {
                top.problem(
                    &mut problems,
                    "server_name",
                    format!("{err} (got {name:?})"),
                );
                None
            }
        });
    let listen_text = top
        .string(&mut problems, "listen")
        .unwrap_or_else(|| "127.0.0.1:8008".to_owned());
    let listen = match listen_text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            top.problem(
                &mut problems,
                "listen",
                format!(
                    "must be an IP address and port such as 127.0.0.1:8008 (got {listen_text:?})"
                ),
            );
            None
        }
    };
    let routing_path = base_dir.join(
        top.string(&mut problems, "routing")
            .unwrap_or_else(|| "routing.toml".to_owned()),
    );
    let registration_paths: Vec<PathBuf> = top
        .strings(&mut problems, "appservice_registrations")
        .into_iter()
        .map(|file| base_dir.join(file))
        .collect();

    let mut synapse_section = top.table(&mut problems, "synapse");
    let synapse = read_synapse(&mut synapse_section, &mut problems);
    synapse_section.finish(&mut problems);

    let mut database_section = top.table(&mut problems, "database");
    let database = read_database(&mut database_section, &mut problems);
    database_section.finish(&mut problems);

    let mut limits_section = top.table(&mut problems, "limits");
    let limits = read_limits(&mut limits_section, &mut problems);
    limits_section.finish(&mut problems);

    let mut log_section = top.table(&mut problems, "log");
    let log = read_log(&mut log_section, &mut problems);
    log_section.finish(&mut problems);

    let mut shutdown_section = top.table(&mut problems, "shutdown");
    let shutdown = ShutdownConfig {
        grace_period: Duration::from_secs(shutdown_section.integer(
            &mut problems,
            "grace_period_s",
            10,
        )),
    };
    shutdown_section.finish(&mut problems);
    let mut delivery_section = top.table(&mut problems, "appservice");
    let delivery = read_delivery(&mut delivery_section, base_dir, &mut problems);
    delivery_section.finish(&mut problems);
    let mut deletion_section = top.table(&mut problems, "deletion");
    let deletion = DeletionConfig {
        leaves_kept: Duration::from_secs(deletion_section.integer(
            &mut problems,
            "leaves_kept_s",
            600,
        )),
    };
    deletion_section.finish(&mut problems);
    let mut cluster_section = top.table(&mut problems, "cluster");
    let cluster = ClusterConfig {
        enabled: cluster_section.boolean(&mut problems, "enabled", false),
    };
    cluster_section.finish(&mut problems);
    let mut push_section = top.table(&mut problems, "push");
    let push = PushConfig {
        extra_ca: read_extra_ca(&mut push_section, base_dir, &mut problems),
    };
    push_section.finish(&mut problems);
    top.finish(&mut problems);

    let mut appservices = Vec::new();
    for path in &registration_paths {
        match registration::load(path) {
            Ok(registration) => appservices.push(registration),
            Err(err) => problems.push(format!("{}: {err}", path.display())),
        }
    }
    registration::check_unique(&appservices, &mut problems);
    for relay in &delivery.relays {
        if !appservices.iter().any(|r| r.id == relay.appservice) {
            problems.push(format!(
                "[[appservice.relay]] names appservice {:?}, but no registration has that id",
                relay.appservice
            ));
        }
    }

    if let Some(umbrella) = &delivery.umbrella {
        match appservices.iter().find(|r| &r.id == umbrella) {
            None => problems.push(format!(
                "appservice.umbrella names {umbrella:?}, but no registration has that id"
            )),
            Some(registration) if registration.users.is_empty() => problems.push(format!(
                "appservice.umbrella: registration {umbrella:?} has no user namespace to share out"
            )),
            Some(_) if delivery.relays.iter().any(|r| &r.appservice == umbrella) => {
                problems.push(format!(
                    "appservice.umbrella: {umbrella:?} cannot also be in [[appservice.relay]]"
                ));
            }
            Some(_) => {}
        }
    }

    let routing = routing::load(&routing_path, &mut problems);
    if let Some(routing) = &routing {
        routing.check_appservices(&routing_path, &appservices, &mut problems);
    }

    match (server_name, listen, synapse, database, routing) {
        (Some(server_name), Some(listen), Some(synapse), Some(database), Some(routing))
            if problems.is_empty() =>
        {
            Ok(Config {
                server_name,
                listen,
                routing_path,
                routing,
                appservices,
                synapse,
                database,
                limits,
                log,
                shutdown,
                delivery,
                deletion,
                push,
                cluster,
            })
        }
        _ => Err(problems),
    }
}

/// Reads `routing.toml` again (from where it was read at start) for a live reload: the same
/// validation as at start, plus [`RoutingConfig::check_replaces`] against the routing in
/// force. On failure, every problem found.
pub fn reload_routing(config: &Config, current: &RoutingConfig) -> Result<RoutingConfig, Problems> {
    let mut problems = Problems::default();
    let routing = routing::load(&config.routing_path, &mut problems);
    if let Some(routing) = &routing {
        routing.check_appservices(&config.routing_path, &config.appservices, &mut problems);
        routing.check_replaces(
            current,
            &config.routing_path.display().to_string(),
            &mut problems,
        );
    }
    match routing {
        Some(routing) if problems.is_empty() => Ok(routing),
        _ => Err(problems),
    }
}

/// Reads a TOML file into a table, recording a problem when it cannot.
pub(crate) fn read_toml(path: &Path, label: &str, problems: &mut Problems) -> Option<toml::Table> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            problems.push(format!("{label}: cannot read file: {err}"));
            return None;
        }
    };
    match text.parse::<toml::Table>() {
        Ok(table) => Some(table),
        Err(err) => {
            problems.push(format!(
                "{label}: not valid TOML: {}",
                err.to_string().trim()
            ));
            None
        }
    }
}

fn read_delivery(
    section: &mut Section,
    base_dir: &Path,
    problems: &mut Problems,
) -> DeliveryConfig {
    let mut positive = |key: &str, default: u64| {
        let value = section.integer(problems, key, default);
        if value == 0 {
            section.problem(problems, key, "must be at least 1");
            return default;
        }
        value
    };
    let max_events = positive("max_events_per_transaction", 100);
    let max_bytes = positive("max_transaction_bytes", 1024 * 1024);
    let max_backoff = positive("max_retry_interval_s", 30);
    let request_timeout = positive("request_timeout_s", 60);
    let relays = section
        .tables(problems, "relay")
        .into_iter()
        .filter_map(|mut relay| {
            let appservice = relay.required_string(problems, "appservice");
            let url = relay.string(problems, "url");
            if let Some(url) = &url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                relay.problem(
                    problems,
                    "url",
                    format!("must be an http:// or https:// URL (got {url:?})"),
                );
            }
            relay.finish(problems);
            appservice.map(|appservice| RelayConfig { appservice, url })
        })
        .collect();
    let extra_ca = read_extra_ca(section, base_dir, problems);
    let umbrella = section.string(problems, "umbrella");
    DeliveryConfig {
        relays,
        umbrella,
        max_events: usize::try_from(max_events).unwrap_or(usize::MAX),
        max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        max_backoff: Duration::from_secs(max_backoff),
        request_timeout: Duration::from_secs(request_timeout),
        extra_ca,
    }
}

/// `extra_ca_file` of a section: a PEM file of CA certificates, relative to the config's
/// directory, each checked as a trust anchor now (not at the first TLS handshake).
fn read_extra_ca(
    section: &mut Section,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<CaBundle> {
    section.string(problems, "extra_ca_file").and_then(|file| {
        match CaBundle::read(&base_dir.join(file)) {
            Ok(bundle) => Some(bundle),
            Err(message) => {
                section.problem(problems, "extra_ca_file", message);
                None
            }
        }
    })
}

fn read_synapse(section: &mut Section, problems: &mut Problems) -> Option<SynapseConfig> {
    let url = section.required_string(problems, "url");
    let base = url.and_then(|url| match synapse_authority(&url) {
        Ok(authority) => Some(authority),
        Err(message) => {
            section.problem(problems, "url", format!("{message} (got {url:?})"));
            None
        }
    });
    let connect_timeout =
        Duration::from_millis(section.integer(problems, "connect_timeout_ms", 2000));
    let response_timeout =
        Duration::from_secs(section.integer(problems, "response_timeout_s", 300));
    let pool_idle_timeout =
        Duration::from_secs(section.integer(problems, "pool_idle_timeout_s", 90));
    let pool_max_idle = section.integer(problems, "pool_max_idle", 512);
    let whoami_timeout = Duration::from_secs(section.integer(problems, "whoami_timeout_s", 5));
    let sync_grace = Duration::from_secs(section.integer(problems, "sync_grace_s", 5));
    if whoami_timeout.is_zero() {
        section.problem(problems, "whoami_timeout_s", "must be greater than 0");
    }
    if connect_timeout.is_zero() {
        section.problem(problems, "connect_timeout_ms", "must be greater than 0");
    }
    if response_timeout.is_zero() {
        section.problem(problems, "response_timeout_s", "must be greater than 0");
    }
    Some(SynapseConfig {
        base: base?,
        connect_timeout,
        response_timeout,
        pool_idle_timeout,
        pool_max_idle: usize::try_from(pool_max_idle).unwrap_or(usize::MAX),
        whoami_timeout,
        sync_grace,
    })
}

/// Synapse's URL must be `http://host:port` (optionally with a trailing `/`): hungryserv
/// appends the client's path byte for byte, so a path prefix would change every request.
fn synapse_authority(url: &str) -> Result<http::uri::Authority, &'static str> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "must be a URL such as http://127.0.0.1:8009")?;
    if uri.scheme_str() != Some("http") {
        return Err("must use http:// (Synapse's internal listener, no TLS)");
    }
    if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
        return Err("must not have a path or query: requests keep their own path");
    }
    uri.authority()
        .cloned()
        .ok_or("must name a host and port such as http://127.0.0.1:8009")
}

fn read_database(section: &mut Section, problems: &mut Problems) -> Option<DatabaseConfig> {
    let url = section.required_string(problems, "url");
    let max_connections = section.integer(problems, "max_connections", 16);
    let acquire_timeout =
        Duration::from_millis(section.integer(problems, "acquire_timeout_ms", 5000));
    if let Some(url) = &url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        // The URL may carry a password: name the problem, not the value.
        section.problem(
            problems,
            "url",
            "must start with postgres:// or postgresql://",
        );
    }
    let max_connections = match u32::try_from(max_connections) {
        Ok(n) if n > 0 => n,
        _ => {
            section.problem(
                problems,
                "max_connections",
                "must be between 1 and 4294967295",
            );
            1
        }
    };
    Some(DatabaseConfig {
        url: url?,
        max_connections,
        acquire_timeout,
    })
}

fn read_limits(section: &mut Section, problems: &mut Problems) -> LimitsConfig {
    let forward = section.integer(problems, "max_forward_body_bytes", 0);
    let local = section.integer(problems, "max_local_body_bytes", 32 * 1024 * 1024);
    // A single event may be 65,536 bytes; a local limit below that would refuse valid events.
    if local < 65_536 {
        section.problem(problems, "max_local_body_bytes", "must be at least 65536");
    }
    LimitsConfig {
        max_forward_body_bytes: (forward > 0).then_some(forward),
        max_local_body_bytes: local,
    }
}

fn read_log(section: &mut Section, problems: &mut Problems) -> LogConfig {
    let format = match section.string(problems, "format").as_deref() {
        None | Some("pretty") => LogFormat::Pretty,
        Some("json") => LogFormat::Json,
        Some(other) => {
            section.problem(
                problems,
                "format",
                format!("must be \"pretty\" or \"json\" (got {other:?})"),
            );
            LogFormat::Pretty
        }
    };
    let filter = section
        .string(problems, "filter")
        .unwrap_or_else(|| "info".to_owned());
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&filter) {
        section.problem(problems, "filter", format!("not a valid filter: {err}"));
    }
    LogConfig { format, filter }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/hungryserv.toml"
        ));
        let config = load(path).unwrap_or_else(|problems| panic!("{:?}", problems.lines));
        assert_eq!(config.server_name.as_str(), "localhost");
        assert_eq!(config.synapse.base.as_str(), "127.0.0.1:8009");
        assert_eq!(config.limits.max_forward_body_bytes, None);
        assert_eq!(config.shutdown.grace_period, Duration::from_secs(10));
    }

    #[test]
    fn every_problem_in_every_file_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("routing.toml"),
            "[[class]]\nname = \"a\"\nprefix = \"letters\"\n[class.match]\nappservices = [\"ghost\"]\n",
        )
        .unwrap();
        let path = dir.path().join("hungryserv.toml");
        std::fs::write(
            &path,
            "listen = \"nowhere\"\nappservice_registrations = [\"missing.yaml\"]\n\
             [synapse]\nurl = \"http://synapse:8008/prefix\"\nconnect_timeout_ms = \"soon\"\n\
             [database]\nurl = \"mysql://x\"\n[log]\nformat = \"xml\"\n[extra]\n",
        )
        .unwrap();
        let problems = load(&path).unwrap_err().lines.join("\n");
        for needle in [
            "server_name: is required",
            "listen: must be an IP address and port",
            "synapse.url: must not have a path or query",
            "synapse.connect_timeout_ms: expected an integer",
            "database.url: must start with postgres://",
            "log.format: must be \"pretty\" or \"json\"",
            "extra: unknown key",
            "missing.yaml: cannot read file",
            "class[0].prefix: must contain a character that is not a letter",
            "matches appservice \"ghost\", but no registration",
        ] {
            assert!(
                problems.contains(needle),
                "missing {needle:?} in:\n{problems}"
            );
        }
        assert!(
            !problems.contains("mysql://x"),
            "a database URL may hold a password: {problems}"
        );
    }

    #[test]
    fn the_umbrella_must_be_a_registration_with_users_and_not_relayed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("routing.toml"), "").unwrap();
        let registration = |id: &str, users: &str| {
            format!(
                "id: {id}\nas_token: a-{id}\nhs_token: h-{id}\nsender_localpart: {id}bot\n\
                 namespaces:\n  users: {users}\n"
            )
        };
        std::fs::write(
            dir.path().join("wide.yaml"),
            registration("wide", "[{regex: '@br_.*'}]"),
        )
        .unwrap();
        std::fs::write(dir.path().join("bare.yaml"), registration("bare", "[]")).unwrap();
        let config = |umbrella: &str, relay: bool| {
            let path = dir.path().join("hungryserv.toml");
            let relay = if relay {
                "[[appservice.relay]]\nappservice = \"wide\"\n"
            } else {
                ""
            };
            std::fs::write(
                &path,
                format!(
                    "server_name = \"hs\"\nappservice_registrations = [\"wide.yaml\", \"bare.yaml\"]\n\
                     [synapse]\nurl = \"http://127.0.0.1:8009\"\n[database]\nurl = \"postgres://x\"\n\
                     [appservice]\numbrella = {umbrella:?}\n{relay}"
                ),
            )
            .unwrap();
            load(&path)
                .map(|config| config.delivery.umbrella)
                .map_err(|p| p.lines.join("\n"))
        };
        assert_eq!(config("wide", false), Ok(Some("wide".to_owned())));
        assert!(
            config("none", false)
                .unwrap_err()
                .contains("no registration has that id")
        );
        assert!(
            config("bare", false)
                .unwrap_err()
                .contains("no user namespace")
        );
        assert!(
            config("wide", true)
                .unwrap_err()
                .contains("cannot also be in")
        );
    }

    #[test]
    fn extra_ca_file_is_read_relative_to_the_config_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("routing.toml"), "").unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "no certificates here\n").unwrap();
        let write = |ca_file: &str| {
            let path = dir.path().join("hungryserv.toml");
            std::fs::write(
                &path,
                format!(
                    "server_name = \"test.local\"\n[synapse]\nurl = \"http://127.0.0.1:1\"\n\
                     [database]\nurl = \"postgres://x@127.0.0.1/x\"\n\
                     [appservice]\nextra_ca_file = \"{ca_file}\"\n"
                ),
            )
            .unwrap();
            path
        };
        let config = load(&write("ca.pem")).unwrap_or_else(|p| panic!("{:?}", p.lines));
        let bundle = config.delivery.extra_ca.unwrap();
        assert_eq!(bundle.certificates, vec![ca.der().clone()]);
        assert_eq!(bundle.path, dir.path().join("ca.pem"));
        for (file, needle) in [
            ("missing.pem", "appservice.extra_ca_file: cannot read"),
            ("empty.pem", "appservice.extra_ca_file: "),
        ] {
            let problems = load(&write(file)).unwrap_err().lines.join("\n");
            assert!(problems.contains(needle), "{file}: {problems}");
        }
        let problems = load(&write("empty.pem")).unwrap_err().lines.join("\n");
        assert!(
            problems.contains("contains no PEM certificate"),
            "{problems}"
        );
    }

    #[test]
    fn synapse_url_shapes() {
        assert_eq!(
            synapse_authority("http://127.0.0.1:8009").unwrap().as_str(),
            "127.0.0.1:8009"
        );
        assert!(synapse_authority("http://127.0.0.1:8009/").is_ok());
        assert!(synapse_authority("http://synapse:8008/_matrix").is_err());
        assert!(synapse_authority("https://synapse:8008").is_err());
        assert!(synapse_authority("synapse:8008").is_err());
        assert!(synapse_authority("http://synapse:8008/?x=1").is_err());
    }
}
