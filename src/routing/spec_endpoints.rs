//! The client-server API endpoints (Matrix spec v1.16) that name a room, a user or "all
//! rooms", with where each goes when it concerns a local room, walked through
//! [`super::classify`] so an endpoint cannot fall through to Synapse unnoticed: a new
//! room-naming endpoint of the spec goes into [`ENDPOINTS`] with what it should do, and the
//! README's table (section "Endpoints that name a room, a user or all rooms") lists exactly
//! these rows (checked below).

use http::Method;

use super::{FORWARD, RoomClasses, Route, classify};

/// What hungryserv does with an endpoint for a local room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Routed here (the path names the local room); the note says what is not served yet
    /// (those answer 404 `M_UNRECOGNIZED`, never Synapse's misleading answer).
    Local(&'static str),
    /// Answered by merging Synapse's answer with the local rooms'.
    Merge(&'static str),
    /// Decided by the alias (local when the alias is ours).
    Alias,
    /// `createRoom`: local or Synapse by routing.toml.
    Create,
    /// Synapse's answer alone; the second field says why that is right or what is missing.
    Forward(&'static str),
}

/// `(method, path with {placeholders}, expectation)`.
const ENDPOINTS: &[(&str, &str, Expect)] = &[
    // Room participation and reading.
    ("POST", "/v3/createRoom", Expect::Create),
    (
        "GET",
        "/v3/rooms/{roomId}/event/{eventId}",
        Expect::Local(""),
    ),
    (
        "GET",
        "/v3/rooms/{roomId}/joined_members",
        Expect::Local(""),
    ),
    ("GET", "/v3/rooms/{roomId}/members", Expect::Local("")),
    ("GET", "/v3/rooms/{roomId}/state", Expect::Local("")),
    (
        "GET",
        "/v3/rooms/{roomId}/state/{eventType}/{stateKey}",
        Expect::Local(""),
    ),
    (
        "PUT",
        "/v3/rooms/{roomId}/state/{eventType}/{stateKey}",
        Expect::Local(""),
    ),
    ("GET", "/v3/rooms/{roomId}/messages", Expect::Local("")),
    (
        "GET",
        "/v3/rooms/{roomId}/context/{eventId}",
        Expect::Local(""),
    ),
    ("GET", "/v3/rooms/{roomId}/initialSync", Expect::Local("")),
    (
        "PUT",
        "/v3/rooms/{roomId}/send/{eventType}/{txnId}",
        Expect::Local(""),
    ),
    (
        "PUT",
        "/v3/rooms/{roomId}/redact/{eventId}/{txnId}",
        Expect::Local(""),
    ),
    (
        "GET",
        "/v1/rooms/{roomId}/timestamp_to_event",
        Expect::Local(""),
    ),
    (
        "GET",
        "/v1/rooms/{roomId}/relations/{eventId}",
        Expect::Local(""),
    ),
    (
        "GET",
        "/v1/rooms/{roomId}/relations/{eventId}/{relType}",
        Expect::Local(""),
    ),
    (
        "GET",
        "/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}",
        Expect::Local(""),
    ),
    ("GET", "/v1/rooms/{roomId}/threads", Expect::Local("")),
    (
        "GET",
        "/v1/rooms/{roomId}/hierarchy",
        Expect::Local(
            "Synapse children included, paged; not yet: local children of a Synapse space",
        ),
    ),
    ("GET", "/v1/room_summary/{roomId}", Expect::Local("")),
    ("POST", "/v3/rooms/{roomId}/upgrade", Expect::Local("")),
    ("GET", "/v3/rooms/{roomId}/aliases", Expect::Local("")),
    // Membership.
    ("POST", "/v3/join/{roomId}", Expect::Local("")),
    ("POST", "/v3/join/{roomAlias}", Expect::Alias),
    ("POST", "/v3/knock/{roomId}", Expect::Local("")),
    ("POST", "/v3/rooms/{roomId}/join", Expect::Local("")),
    ("POST", "/v3/rooms/{roomId}/invite", Expect::Local("")),
    ("POST", "/v3/rooms/{roomId}/leave", Expect::Local("")),
    ("POST", "/v3/rooms/{roomId}/forget", Expect::Local("")),
    ("POST", "/v3/rooms/{roomId}/kick", Expect::Local("")),
    ("POST", "/v3/rooms/{roomId}/ban", Expect::Local("")),
    ("POST", "/v3/rooms/{roomId}/unban", Expect::Local("")),
    // Ephemeral and per-user room data.
    (
        "PUT",
        "/v3/rooms/{roomId}/typing/{userId}",
        Expect::Local(""),
    ),
    (
        "POST",
        "/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}",
        Expect::Local(""),
    ),
    ("POST", "/v3/rooms/{roomId}/read_markers", Expect::Local("")),
    (
        "GET",
        "/v3/user/{userId}/rooms/{roomId}/account_data/{type}",
        Expect::Local(""),
    ),
    (
        "PUT",
        "/v3/user/{userId}/rooms/{roomId}/account_data/{type}",
        Expect::Local(""),
    ),
    (
        "GET",
        "/v3/user/{userId}/rooms/{roomId}/tags",
        Expect::Local(""),
    ),
    (
        "PUT",
        "/v3/user/{userId}/rooms/{roomId}/tags/{tag}",
        Expect::Local(""),
    ),
    (
        "DELETE",
        "/v3/user/{userId}/rooms/{roomId}/tags/{tag}",
        Expect::Local(""),
    ),
    // Reporting.
    ("POST", "/v3/rooms/{roomId}/report", Expect::Local("")),
    (
        "POST",
        "/v3/rooms/{roomId}/report/{eventId}",
        Expect::Local(""),
    ),
    // Aliases and the directory.
    ("GET", "/v3/directory/room/{roomAlias}", Expect::Alias),
    ("PUT", "/v3/directory/room/{roomAlias}", Expect::Alias),
    ("DELETE", "/v3/directory/room/{roomAlias}", Expect::Alias),
    (
        "GET",
        "/v3/directory/list/room/{roomId}",
        Expect::Forward("not yet: local rooms are never published (issue 24)"),
    ),
    (
        "PUT",
        "/v3/directory/list/room/{roomId}",
        Expect::Forward("not yet: local rooms are never published (issue 24)"),
    ),
    (
        "GET",
        "/v3/publicRooms",
        Expect::Forward("not yet: lists Synapse's rooms only (issue 24)"),
    ),
    (
        "POST",
        "/v3/publicRooms",
        Expect::Forward("not yet: lists Synapse's rooms only (issue 24)"),
    ),
    // All rooms.
    ("GET", "/v3/sync", Expect::Merge("sync")),
    ("GET", "/v3/joined_rooms", Expect::Merge("joined_rooms")),
    ("GET", "/v3/notifications", Expect::Merge("notifications")),
    ("POST", "/v3/search", Expect::Merge("search")),
    ("GET", "/v3/keys/changes", Expect::Merge("keys_changes")),
    ("GET", "/v3/initialSync", Expect::Merge("initial_sync")),
    (
        "GET",
        "/v3/events",
        Expect::Forward("not yet: Synapse's rooms only (issue 22)"),
    ),
    (
        "POST",
        "/v3/user_directory/search",
        Expect::Merge("user_directory"),
    ),
    // Users.
    (
        "PUT",
        "/v3/profile/{userId}/{keyName}",
        Expect::Forward(
            "Synapse's; a displayname or avatar, set by the user or an admin, reaches local member events",
        ),
    ),
    (
        "DELETE",
        "/v3/profile/{userId}/{keyName}",
        Expect::Forward(
            "Synapse's; a displayname or avatar removed leaves local member events, as Synapse's",
        ),
    ),
    (
        "GET",
        "/v3/profile/{userId}",
        Expect::Forward("profiles are Synapse's"),
    ),
    (
        "POST",
        "/v3/account/deactivate",
        Expect::Forward("Synapse's; the user then leaves every local room"),
    ),
    (
        "GET",
        "/v3/presence/{userId}/status",
        Expect::Forward("presence is Synapse's"),
    ),
    (
        "PUT",
        "/v3/user/{userId}/account_data/{type}",
        Expect::Forward("global account data is Synapse's"),
    ),
    (
        "POST",
        "/v3/user/{userId}/filter",
        Expect::Forward("filters are Synapse's"),
    ),
    (
        "GET",
        "/v3/admin/whois/{userId}",
        Expect::Forward("sessions are Synapse's"),
    ),
];

/// The path with its placeholders filled in, a local room where a room is named.
fn concrete(template: &str) -> String {
    let mut path = String::from("/_matrix/client");
    for segment in template.split('/').skip(1) {
        path.push('/');
        path.push_str(match segment {
            "{roomId}" => "!hs_abc:example.org",
            "{roomAlias}" => "%23a%3Aexample.org",
            "{userId}" => "@a:example.org",
            "{eventId}" => "$e",
            s if s.starts_with('{') => "x",
            s => s,
        });
    }
    path
}

fn label(expect: Expect) -> String {
    match expect {
        Expect::Local("") => "local".into(),
        Expect::Local(note) => format!("local; {note}"),
        Expect::Merge(what) => format!("merged ({what})"),
        Expect::Alias => "by alias".into(),
        Expect::Create => "by routing.toml".into(),
        Expect::Forward(why) => format!("Synapse: {why}"),
    }
}

#[test]
fn every_spec_endpoint_goes_where_the_table_says() {
    let classes: RoomClasses = super::tests::classes();
    for &(method, template, expect) in ENDPOINTS {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let path = concrete(template);
        let route = classify(&classes, &method, &path);
        let ok = match expect {
            Expect::Local(_) => matches!(route, Route::Local(_)),
            Expect::Merge(name) => {
                route.label() == "merge"
                    && format!("{route:?}").to_lowercase().replace('_', "") == name.replace('_', "")
            }
            Expect::Alias => matches!(route, Route::Alias { .. } | Route::AliasWrite { .. }),
            Expect::Create => route == Route::CreateRoom,
            Expect::Forward(_) => route.is_forward(),
        };
        assert!(
            ok,
            "{method} {template}: {route:?}, the table says {expect:?}"
        );
        // Whatever the table says, nothing naming a local room may reach Synapse unless
        // the table says so.
        if template.contains("{roomId}") && !matches!(expect, Expect::Forward(_)) {
            assert_ne!(route, FORWARD, "{method} {template}");
        }
    }
}

#[test]
fn the_readme_lists_the_same_endpoints() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("### Endpoints that name a room, a user or all rooms")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_default();
    let rows: Vec<(&str, &str)> = section
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').skip(1);
            let endpoint = cells.next()?.trim().strip_prefix('`')?.strip_suffix('`')?;
            Some((endpoint, cells.next()?.trim()))
        })
        .collect();
    let wanted: Vec<(String, String)> = ENDPOINTS
        .iter()
        .map(|(method, path, expect)| (format!("{method} {path}"), label(*expect)))
        .collect();
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|(e, l)| ((*e).to_owned(), (*l).to_owned()))
        .collect();
    assert_eq!(got, wanted, "README table and ENDPOINTS differ");
}

/// Prints the README table (`cargo test print_readme_table -- --ignored --nocapture`).
#[test]
#[ignore]
fn print_readme_table() {
    for (method, path, expect) in ENDPOINTS {
        println!("| `{method} {path}` | {} |", label(*expect));
    }
}
