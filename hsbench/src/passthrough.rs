//! `passthrough`: what forwarding costs. The same two workloads run directly against Synapse
//! and through hungryserv: `GET /_matrix/client/versions` (pure proxy overhead, Synapse's
//! cheapest answer) and authenticated `PUT /rooms/{room}/send/m.room.message/{txnId}` into a
//! Synapse room (a real write). Target: hungryserv adds at most 0.3 ms to p50 and keeps at
//! least 90% of direct throughput.

use std::sync::Arc;

use bytes::Bytes;
use clap::Args;
use http::Request;
use http_body_util::Full;

use hungryserv::upstream::client::encode_segment;

use crate::client::{self, MakeRequest};
use crate::{Load, Targets, stats};

#[derive(Args)]
pub struct Options {
    #[command(flatten)]
    targets: Targets,
    #[command(flatten)]
    load: Load,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let Options { targets, load } = options;
    let http = client::http();
    let token = client::login(&http, &targets.synapse, &targets.user, &targets.password).await?;
    let room = client::create_room(&http, &targets.synapse, &token, "hsbench passthrough").await?;
    println!(
        "passthrough: {} clients; per target at most {} requests or {} s in {} alternating rounds (after {} s warm-up)",
        load.clients, load.max_requests, load.seconds, load.rounds, load.warmup_seconds
    );

    let versions = |base: String| -> MakeRequest {
        let url = format!("{base}/_matrix/client/versions");
        Arc::new(move |_| {
            Request::get(url.as_str())
                .body(Full::default())
                .expect("static request")
        })
    };
    let (direct, proxied) = client::compare(
        &http,
        &load,
        versions(targets.synapse.clone()),
        versions(targets.hungryserv.clone()),
    )
    .await;
    stats::report("GET /_matrix/client/versions", &direct, &proxied);

    // Transaction IDs carry the target and a run id so no send is deduplicated by Synapse.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let send = |base: String, target: &'static str| -> MakeRequest {
        let prefix = format!(
            "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/{target}-{run_id}-",
            encode_segment(&room)
        );
        let auth = format!("Bearer {token}");
        Arc::new(move |n| {
            Request::put(format!("{prefix}{n}"))
                .header("authorization", auth.as_str())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(
                    r#"{{"msgtype":"m.text","body":"hsbench message {n}"}}"#
                ))))
                .expect("request from valid parts")
        })
    };
    let (direct, proxied) = client::compare(
        &http,
        &load,
        send(targets.synapse.clone(), "d"),
        send(targets.hungryserv.clone(), "p"),
    )
    .await;
    stats::report(
        "PUT /rooms/{roomId}/send/m.room.message/{txnId}",
        &direct,
        &proxied,
    );
    Ok(())
}
