//! The HTTP client transactions are pushed with: `http://` as it is, `https://` with the
//! appservice's certificate verified against the public roots built into the binary
//! (Mozilla's list, as `webpki-roots` ships it) plus the CAs of `appservice.extra_ca_file`
//! (bridges with a private CA). Verification is never turned off.
//!
//! The crypto provider is named explicitly (aws-lc-rs, the one sqlx's rustls already uses)
//! rather than taken from a process default, so another crate enabling `ring` cannot make
//! the choice ambiguous.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::{ClientConfig, RootCertStore};

use crate::config::DeliveryConfig;

/// A pooled HTTP/1.1 client for `http://` and `https://` appservice URLs.
pub type PushClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client every pusher shares.
pub fn build(config: &DeliveryConfig) -> Result<PushClient, rustls::Error> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(bundle) = &config.extra_ca {
        // Each was already checked when the configuration was read.
        for certificate in &bundle.certificates {
            roots.add(certificate.clone())?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    // The TLS layer above handles https://; the TCP connector must let those URIs through.
    tcp.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
