//! An HTTPS server of a test's own: a private CA made with rcgen, a certificate for
//! 127.0.0.1 it issued, and a server on 127.0.0.1 presenting it that records what reaches it.
//! For the tests of delivery to `https://` URLs (appservices, push gateways), which show that
//! the CA is trusted when configured and the handshake fails when it is not.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// A CA of the server's own, and a certificate for 127.0.0.1 it issued. Returns the CA
/// certificate (PEM) and the server's certificate and key.
pub fn private_ca() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    (ca.pem(), server.der().clone(), key)
}

/// One request that reached the server.
#[derive(Debug)]
pub struct Received {
    pub path: String,
    /// The `Authorization` header ("" when absent).
    pub authorization: String,
    /// The JSON body (`null` when it is not JSON).
    pub body: Value,
}

/// What the server saw.
pub struct HttpsServer {
    pub addr: SocketAddr,
    /// Each request, in arrival order.
    pub requests: mpsc::UnboundedReceiver<Received>,
    /// Why each failed TLS handshake failed.
    pub handshake_errors: mpsc::UnboundedReceiver<String>,
}

/// A server listening with TLS on 127.0.0.1 that answers every request `200` with `answer`.
pub async fn https_server(
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    answer: &'static [u8],
) -> HttpsServer {
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
    let (request_tx, requests) = mpsc::unbounded_channel();
    let (error_tx, handshake_errors) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, request_tx, error_tx) =
                (acceptor.clone(), request_tx.clone(), error_tx.clone());
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(stream) => stream,
                    Err(err) => {
                        let _ = error_tx.send(err.to_string());
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let request_tx = request_tx.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let authorization = request
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let _ = request_tx.send(Received {
                            path,
                            authorization,
                            body,
                        });
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(answer))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    HttpsServer {
        addr,
        requests,
        handshake_errors,
    }
}
