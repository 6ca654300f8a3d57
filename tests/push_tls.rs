//! Push delivery to `https://` gateways (src/push/gateway.rs): a gateway whose certificate a
//! private CA issued (made here with rcgen) gets the notification when that CA is
//! `push.extra_ca_file`, read and checked with the rest of the configuration; without it the
//! handshake fails on the certificate and nothing reaches the gateway. No database needed.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hungryserv::push::gateway::{self, Delivered};
use serde_json::json;
use support::tls::{https_server, private_ca};

fn config_with(push: &str) -> Result<hungryserv::config::Config, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hungryserv.toml");
    let routing = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("routing.toml");
    std::fs::write(
        &path,
        format!(
            "server_name = \"test.local\"\nrouting = {routing:?}\n[synapse]\nurl = \"http://127.0.0.1:9\"\n\
             [database]\nurl = \"{}\"\n{push}\n",
            support::NO_DATABASE
        ),
    )
    .unwrap();
    hungryserv::config::load(&path).map_err(|problems| problems.lines)
}

#[tokio::test]
async fn a_gateway_with_a_private_ca_is_reached_with_push_extra_ca_file() {
    let (ca_pem, certificate, key) = private_ca();
    let mut gateway_server = https_server(certificate, key, b"{\"rejected\":[]}").await;
    let addr = gateway_server.addr;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("gateway-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let config = config_with(&format!("[push]\nextra_ca_file = {ca_file:?}\n")).unwrap();
    assert_eq!(
        config.push.extra_ca.as_ref().map(|b| b.certificates.len()),
        Some(1)
    );
    let url = format!("https://{addr}/_matrix/push/v1/notify");
    let body = json!({"notification": {"event_id": "$e", "devices": [{"pushkey": "k"}]}});

    let trusting = gateway::client(config.push.extra_ca.as_ref()).unwrap();
    let delivered = gateway::deliver(&trusting, &url, &body, "k").await;
    assert_eq!(delivered, Delivered::Accepted { rejected: false });
    assert_eq!(gateway_server.requests.recv().await.unwrap().body, body);

    // The public roots alone do not know the CA: the handshake fails on the certificate.
    let public_only = gateway::client(None).unwrap();
    let request = Request::post(&url)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let err = public_only.request(request).await.unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let refused = gateway_server.handshake_errors.recv().await.unwrap();
    assert!(
        refused.contains("certificate") || refused.contains("alert"),
        "{refused}"
    );
    assert!(gateway_server.requests.try_recv().is_err());
}

#[test]
fn push_extra_ca_file_is_checked_with_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for (file, want) in [
        (
            dir.path().join("missing.pem"),
            "push.extra_ca_file: cannot read",
        ),
        (empty, "push.extra_ca_file: "),
    ] {
        let problems = config_with(&format!("[push]\nextra_ca_file = {file:?}\n")).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{want}: {problems:?}"
        );
    }
    assert!(config_with("").unwrap().push.extra_ca.is_none());
}
