//! Push delivery to `https://` gateways (src/push/gateway.rs): a gateway whose certificate a
//! private CA issued (made here with rcgen) gets the notification when that CA is
//! `push.extra_ca_file`, read and checked with the rest of the configuration; without it the
//! handshake fails on the certificate and nothing reaches the gateway. No database needed.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hungryserv::push::gateway::{self, Delivered};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// A CA of the gateway's own and a certificate for 127.0.0.1 it issued: the CA (PEM), the
/// certificate and its key.
fn private_ca() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (ca.pem(), certificate.der().clone(), key)
}

/// A push gateway with TLS on 127.0.0.1 answering `{"rejected": []}`: where it listens, the
/// bodies it received, and why handshakes failed.
async fn gateway(
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Value>,
    mpsc::UnboundedReceiver<String>,
) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (body_tx, bodies) = mpsc::unbounded_channel();
    let (error_tx, errors) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body_tx, error_tx) =
                (acceptor.clone(), body_tx.clone(), error_tx.clone());
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(stream) => stream,
                    Err(err) => {
                        let _ = error_tx.send(err.to_string());
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let body_tx = body_tx.clone();
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        let _ = body_tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                            b"{\"rejected\":[]}",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, bodies, errors)
}

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
    let (addr, mut bodies, mut errors) = gateway(certificate, key).await;
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
    assert_eq!(bodies.recv().await.unwrap(), body);

    // The public roots alone do not know the CA: the handshake fails on the certificate.
    let public_only = gateway::client(None).unwrap();
    let request = Request::post(&url)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let err = public_only.request(request).await.unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let refused = errors.recv().await.unwrap();
    assert!(
        refused.contains("certificate") || refused.contains("alert"),
        "{refused}"
    );
    assert!(bodies.try_recv().is_err());
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
