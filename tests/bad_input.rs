//! Bad input, generated: requests to the local endpoints with malformed paths, query
//! parameters and bodies, through the real router over a real Postgres
//! (`HUNGRYSERV_TEST_DATABASE_URL`), with a stand-in for Synapse's `whoami`/profile answers.
//! Every answer must be a success or a 4xx Matrix error (`errcode` `M_…` and `error`), never
//! a 5xx or a dropped connection (a panic), and a refused write writes nothing: the room's
//! event count is unchanged after every non-2xx answer.
//!
//! Bounded for CI: `BAD_INPUT_CASES` cases (default 1,500; about 20 s in a debug build), with
//! the seed printed so a failure can be replayed (`PROPTEST_RNG_SEED`).

mod support;

use std::time::Instant;

use http::Method;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

use support::local::AS_TOKEN;

/// Path segments: valid-looking, every malformed ID shape, raw bytes percent-encoded, and
/// broken percent-encodings (invalid UTF-8, overlong, a UTF-8 surrogate, `%` alone).
fn segment() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "",
        "x",
        "m.room.message",
        "%00",
        "%ZZ",
        "%",
        "%FF%FE",
        "%C0%80",
        "%ED%A0%80",
        "%F4%90%80%80",
        "!",
        "!hs_",
        "!hs_x",
        "!hs_x:",
        ":test.local",
        "!hs_x:test.local:8448",
        "$",
        "$x",
        "$%00:test.local",
        "@",
        "@:test.local",
        "@a",
        "@a:",
        "@A%20B:test.local",
        "@a:test.local",
        "@%00:test.local",
        "#",
        "#a",
        "#a:test.local",
        "..",
        ".",
        "%2F",
        "%2e%2e",
        "m.room.member",
        "m.room.redaction",
        "m.room.create",
        "m.room.power_levels",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        3 => fixed,
        2 => any::<String>().prop_map(|s| utf8_percent_encode(&s, NON_ALPHANUMERIC).to_string()),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(|bytes| {
            bytes.iter().map(|b| format!("%{b:02X}")).collect::<String>()
        }),
        1 => (1usize..3000).prop_map(|n| "a".repeat(n)),
    ]
}

/// Query strings: the parameters local endpoints read, with values of every bad shape.
fn query() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "limit",
        "dir",
        "from",
        "to",
        "filter",
        "ts",
        "user_id",
        "at",
        "membership",
        "not_membership",
        "recurse",
        "access_token",
        "event_id",
        "timeout",
        "since",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "",
            "-1",
            "0",
            "99999999999999999999",
            "1e3",
            "NaN",
            "b",
            "f",
            "x",
            "%00",
            "%FF",
            "{",
            "{\"limit\":-5}",
            "{\"types\":[1]}",
            "{\"rooms\":{}}",
            "[]",
            "null",
            "h1_garbage",
            "s1_2_3",
            "t",
            "@nope",
            "%40input_x%3Atest.local",
            "true",
        ])
        .prop_map(str::to_owned),
        segment(),
    ];
    prop::collection::vec((key, value), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// JSON values with the awkward parts of JSON: numbers outside canonical JSON's range,
/// floats, NUL and lone surrogates in strings, nesting.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(vec![
            "null",
            "true",
            "0",
            "-0",
            "1.5",
            "-0.0",
            "1e400",
            "-1e400",
            "9007199254740991",
            "9007199254740992",
            "-9007199254740992",
            "18446744073709551616",
            "123456789012345678901234567890",
            "\"\"",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"\\udc00x\"",
            "\"\\ud800\\u0041\"",
            "\"a\\u0000b\"",
            "\"\\uFFFF\"",
            "\"@a:test.local\"",
            "\"!hs_x:test.local\"",
            "\"$e\"",
            "\"m.text\"",
            "\"join\"",
            "\"invite\"",
            "\"ban\"",
            "\"leave\"",
            "\"knock\"",
        ])
        .prop_map(str::to_owned),
        any::<String>().prop_map(|s| Value::String(s).to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| Value::from(f).to_string()),
    ];
    leaf.prop_recursive(4, 24, 6, |inner| {
        let key = prop_oneof![
            prop::sample::select(vec![
                "body",
                "msgtype",
                "membership",
                "user_id",
                "reason",
                "events",
                "type",
                "sender",
                "content",
                "state_key",
                "room_id",
                "m.fully_read",
                "m.read",
                "typing",
                "timeout",
                "redacts",
                "origin_server_ts",
                "prev_events",
                "mark_read_by",
                "forward",
                "send_notification",
                "tags",
                "order",
                "thread_id",
                "\u{0}",
                "a",
            ])
            .prop_map(str::to_owned),
            any::<String>(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5)
                .prop_map(|items| format!("[{}]", items.join(","))),
            // Duplicate keys are possible here (the same key drawn twice).
            prop::collection::vec((key, inner), 0..6).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", Value::String(k)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// Request bodies: JSON of every shape, deep nesting, raw bytes (invalid UTF-8), and
/// events just over the size limit.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => json_value().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (100usize..5000).prop_map(|depth| {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }),
        1 => (100usize..5000).prop_map(|depth| {
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)).into_bytes()
        }),
        1 => (60_000usize..70_000).prop_map(|n| {
            json!({"msgtype": "m.text", "body": "x".repeat(n)}).to_string().into_bytes()
        }),
        1 => prop::sample::select(vec![
            "{\"a\":1,\"a\":2}", "{\"membership\":\"join\",\"membership\":\"ban\"}",
            "{\"body\":\"\\ud800\"}", "{\"body\":\"\\u0000\"}", "{\"n\":1e400}",
            "{\"n\":18446744073709551616}", "{\"body\":\"x\"", "\u{feff}{}", "{}",
            "{\"events\":[{\"type\":\"m.room.message\",\"sender\":\"@inputbot:test.local\",\"content\":{\"n\":1.5}}]}",
            "{\"events\":[{\"type\":\"m.room.message\",\"sender\":\"@inputbot:test.local\",\"content\":{\"n\":9007199254740992}}]}",
            "{\"events\":[{\"type\":\"\",\"sender\":\"@inputbot:test.local\",\"content\":{}}]}",
            "{\"events\":[{\"type\":\"m.x\",\"sender\":\"@nope\",\"content\":{}}]}",
            "{\"events\":[{\"type\":\"m.x\",\"sender\":\"@inputbot:test.local\",\"content\":{\"b\":\"\\u0000\"}},1]}",
            "{\"events\":\"x\"}", "{\"user_id\":\"@inputbot:test.local\"}",
            "{\"typing\":true,\"timeout\":-1}", "{\"typing\":true,\"timeout\":1e400}",
            "{\"m.fully_read\":\"$nope\",\"m.read\":5}", "{\"order\":\"x\"}", "{\"order\":1e400}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

/// A request to one of the local endpoints, with generated parts.
#[derive(Debug, Clone)]
struct Case {
    method: Method,
    path: String,
    body: Vec<u8>,
}

fn case(room: String) -> impl Strategy<Value = Case> {
    let room_seg = prop_oneof![
        8 => Just(utf8_percent_encode(&room, NON_ALPHANUMERIC).to_string()),
        1 => segment().prop_map(|s| format!("%21hs_{s}%3Atest.local")),
        1 => segment().prop_map(|s| format!("!hs_{s}:test.local")),
    ];
    let endpoint = prop::sample::select(vec![
        (Method::PUT, "rooms/{room}/send/{a}/{b}"),
        (Method::PUT, "rooms/{room}/state/{a}/{b}"),
        (Method::PUT, "rooms/{room}/state/{a}"),
        (Method::PUT, "rooms/{room}/redact/{a}/{b}"),
        (
            Method::POST,
            "unstable/com.beeper.backfill/rooms/{room}/batch_send",
        ),
        (Method::POST, "rooms/{room}/invite"),
        (Method::POST, "rooms/{room}/kick"),
        (Method::POST, "rooms/{room}/ban"),
        (Method::POST, "rooms/{room}/unban"),
        (Method::POST, "rooms/{room}/join"),
        (Method::POST, "rooms/{room}/forget"),
        (Method::POST, "rooms/{room}/receipt/{a}/{b}"),
        (Method::POST, "rooms/{room}/read_markers"),
        (Method::PUT, "rooms/{room}/typing/{a}"),
        (Method::PUT, "user/{a}/rooms/{room}/account_data/{b}"),
        (Method::GET, "user/{a}/rooms/{room}/account_data/{b}"),
        (Method::PUT, "user/{a}/rooms/{room}/tags/{b}"),
        (Method::DELETE, "user/{a}/rooms/{room}/tags/{b}"),
        (Method::GET, "user/{a}/rooms/{room}/tags"),
        (Method::GET, "rooms/{room}/messages"),
        (Method::GET, "rooms/{room}/state"),
        (Method::GET, "rooms/{room}/state/{a}/{b}"),
        (Method::GET, "rooms/{room}/event/{a}"),
        (Method::GET, "rooms/{room}/context/{a}"),
        (Method::GET, "rooms/{room}/members"),
        (Method::GET, "rooms/{room}/joined_members"),
        (Method::GET, "rooms/{room}/aliases"),
        (Method::GET, "rooms/{room}/relations/{a}"),
        (Method::GET, "rooms/{room}/relations/{a}/{b}"),
        (Method::GET, "rooms/{room}/timestamp_to_event"),
        (Method::GET, "rooms/{room}/{a}"),
        (Method::PATCH, "rooms/{room}/send/{a}/{b}"),
    ]);
    (endpoint, room_seg, segment(), segment(), query(), body()).prop_map(
        |((method, template), room, a, b, query, body)| {
            let (version, template) = match template.strip_prefix("unstable/") {
                Some(rest) => ("unstable", rest.to_owned()),
                None => ("v3", template.to_owned()),
            };
            let path = template
                .replace("{room}", &room)
                .replace("{a}", &a)
                .replace("{b}", &b);
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("&{query}")
            };
            // Bodies only where the endpoint reads one: a body left unread makes hyper close
            // the connection after the answer, and the client may then see a reset instead
            // of the answer (a known gap, not what this test is about).
            let body = if method == Method::GET || method == Method::DELETE {
                Vec::new()
            } else {
                body
            };
            Case {
                method,
                path: format!("/_matrix/client/{version}/{path}?access_token={AS_TOKEN}{query}"),
                body,
            }
        },
    )
}

#[test]
fn local_endpoints_answer_bad_input_with_4xx_matrix_errors_and_write_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(support::local::server(""));
    let room = runtime.block_on(server.room());
    let cases: u32 = std::env::var("BAD_INPUT_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_500);
    let seed: u64 = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(rand_seed);
    println!("bad_input: {cases} cases, PROPTEST_RNG_SEED={seed}");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 200,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let started = Instant::now();
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let result = runner.run(&case(room.clone()), |case| {
        let (status, body, before, after) = runtime.block_on(async {
            let before = server.events(&room).await;
            let (status, body) = server
                .call_raw(case.method.clone(), &case.path, case.body.clone())
                .await;
            let after = server.events(&room).await;
            (status, body, before, after)
        });
        *statuses
            .lock()
            .unwrap()
            .entry(status.map_or(0, |s| s.as_u16()))
            .or_default() += 1;
        let Some(status) = status else {
            return Err(TestCaseError::fail(format!(
                "connection dropped (a panic?): {body}"
            )));
        };
        prop_assert!(
            status.is_success() || status.is_client_error(),
            "{status} for {} {}: {body}",
            case.method,
            case.path
        );
        if !status.is_success() {
            let errcode = body.get("errcode").and_then(Value::as_str).unwrap_or("");
            prop_assert!(
                errcode.starts_with("M_") && body.get("error").is_some_and(Value::is_string),
                "{status} without a Matrix error for {} {}: {body}",
                case.method,
                case.path
            );
            prop_assert_eq!(
                before,
                after,
                "a refused {} {} wrote events",
                case.method,
                case.path
            );
        }
        Ok(())
    });
    println!(
        "bad_input: {cases} cases in {:.1} s; statuses {:?}",
        started.elapsed().as_secs_f64(),
        statuses.lock().unwrap()
    );
    if let Err(err) = result {
        panic!("{err}");
    }
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
