//! `ingest`: how fast a bridge can write. 16 (by default) concurrent appservice senders, each
//! a ghost user of the registration masquerading with `?user_id=` and stamping `?ts=`, send
//! `m.room.message` events into rooms of their own — local rooms through hungryserv, Synapse
//! rooms directly at Synapse — in the same run, alternating.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http::{Method, Request};
use http_body_util::Full;
use hungryserv::upstream::client::encode_segment;
use serde_json::json;

use crate::client::{self, Http, MakeRequest};
use crate::{Load, stats};

#[derive(Args)]
pub struct Options {
    /// Synapse's own listener (Synapse rooms are written there directly).
    #[arg(long, default_value = "http://127.0.0.1:8009")]
    synapse: String,
    /// hungryserv's public listener (local rooms are written there).
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    hungryserv: String,
    /// The appservice registration YAML whose as_token and user namespace the senders use.
    #[arg(long)]
    registration: PathBuf,
    /// Localpart prefix of the ghost users; must fall inside the registration's namespace.
    #[arg(long, default_value = "example_bench_")]
    ghost_prefix: String,
    #[command(flatten)]
    load: Load,
}

/// One sender: a ghost and the room it writes to.
pub struct Sender {
    pub user_id: String,
    pub room_id: String,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let http = client::http();
    let appservice =
        client::Appservice::load(&http, &options.hungryserv, &options.registration).await?;
    let token = appservice.token.clone();

    let clients = options.load.clients;
    let mut ghosts = Vec::with_capacity(clients);
    for n in 0..clients {
        let localpart = format!("{}{n}", options.ghost_prefix);
        ghosts.push(
            appservice
                .ghost(&http, &options.hungryserv, &localpart)
                .await?,
        );
    }
    let local = rooms(&http, &options.hungryserv, &token, &ghosts, false).await?;
    let remote = rooms(&http, &options.synapse, &token, &ghosts, true).await?;
    if !local
        .iter()
        .all(|s| s.room_id.starts_with("!") && s.room_id.contains(':'))
    {
        bail!("local rooms were not created by hungryserv");
    }
    println!(
        "ingest: {clients} appservice senders, one room each; per target at most {} events or {} s in {} alternating rounds",
        options.load.max_requests, options.load.seconds, options.load.rounds
    );
    println!(
        "  local rooms (through hungryserv): {}…   Synapse rooms (direct): {}…",
        local[0].room_id, remote[0].room_id
    );

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let send = |base: &str, senders: Vec<Sender>, tag: &'static str| -> MakeRequest {
        let base = base.to_owned();
        let auth = format!("Bearer {token}");
        let run_id = run_id.clone();
        let senders = Arc::new(senders);
        Arc::new(move |n| {
            let sender = &senders[usize::try_from(n).unwrap_or(0) % senders.len()];
            let ts = 1_600_000_000_000_i64 + i64::try_from(n).unwrap_or(0);
            Request::put(format!(
                "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/{tag}-{run_id}-{n}?user_id={}&ts={ts}",
                encode_segment(&sender.room_id),
                encode_segment(&sender.user_id),
            ))
            .header("authorization", auth.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(r#"{{"msgtype":"m.text","body":"bridged message {n}"}}"#))))
            .expect("request from valid parts")
        })
    };
    let (synapse, hungryserv) = client::compare(
        &http,
        &options.load,
        send(&options.synapse, remote, "s"),
        send(&options.hungryserv, local, "h"),
    )
    .await;
    stats::report(
        "PUT /send as appservice ghosts (events/s)",
        &synapse,
        &hungryserv,
    );
    Ok(())
}

/// Creates one room per ghost (local or federated), with the ghost joined.
pub async fn rooms(
    http: &Http,
    base: &str,
    token: &str,
    ghosts: &[String],
    federate: bool,
) -> anyhow::Result<Vec<Sender>> {
    let mut senders = Vec::with_capacity(ghosts.len());
    for ghost in ghosts {
        let room_id = create(http, base, token, federate).await?;
        client::join(http, base, token, &room_id, Some(ghost)).await?;
        senders.push(Sender {
            user_id: ghost.clone(),
            room_id,
        });
    }
    Ok(senders)
}

/// Creates a public room as the appservice bot; an unfederated one is local by routing.toml.
pub async fn create(
    http: &Http,
    base: &str,
    token: &str,
    federate: bool,
) -> anyhow::Result<String> {
    let (status, body) = client::call(
        http,
        Method::POST,
        &format!("{base}/_matrix/client/v3/createRoom"),
        Some(token),
        Some(&json!({
            "preset": "public_chat",
            "name": "hsbench ingest",
            "creation_content": {"m.federate": federate},
        })),
    )
    .await?;
    if !status.is_success() {
        bail!("createRoom at {base} failed: {status} {body}");
    }
    Ok(body["room_id"].as_str().context("no room_id")?.to_owned())
}
