//! Sending notifications to push gateways (Push Gateway API, `POST /_matrix/push/v1/notify`):
//! the request body for one pusher, as Synapse's HTTP pusher builds it, and delivery with
//! bounded retries. A pushkey the gateway rejects is forgotten (Synapse deletes the pusher).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Map, Value, json};

/// The client pushes go out on (`http://` and `https://` gateways).
pub type GatewayClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client: gateway certificates are verified against the public roots built into
/// the binary (`webpki-roots`) plus the CAs of `push.extra_ca_file` (a gateway with a private
/// CA), with aws-lc-rs named as the provider (as for appservices).
pub fn client(extra_ca: Option<&crate::config::CaBundle>) -> Result<GatewayClient, rustls::Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Each was already checked when the configuration was read.
    for certificate in extra_ca.iter().flat_map(|bundle| &bundle.certificates) {
        roots.add(certificate.clone())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    // The TLS layer handles https://; the TCP connector must let those URIs through.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

/// Time allowed for one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts per notification: 1 s, 2 s, 4 s, 8 s, 16 s between them.
const ATTEMPTS: u32 = 6;
/// First pause between attempts.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// What the pusher's notification is about.
#[derive(Debug, Clone)]
pub struct Notice {
    pub event_id: String,
    pub room_id: String,
    pub kind: String,
    pub sender: String,
    pub state_key: Option<String>,
    pub content: Map<String, Value>,
    pub sender_display_name: Option<String>,
    pub room_name: Option<String>,
    /// The push badge: rooms with unread notifications.
    pub unread: i64,
    /// Tweaks of the rule that matched.
    pub tweaks: Map<String, Value>,
    /// The recipient.
    pub user_id: String,
}

/// The pusher fields a notification needs.
#[derive(Debug, Clone)]
pub struct Device {
    pub app_id: String,
    pub pushkey: String,
    /// Seconds since the epoch.
    pub pushkey_ts: i64,
    /// The pusher's `data`.
    pub data: Map<String, Value>,
}

impl Device {
    /// The gateway URL (`data.url`).
    pub fn url(&self) -> Option<&str> {
        self.data.get("url").and_then(Value::as_str)
    }
}

/// The body of a badge-only push (Synapse's, after a user's read receipt moved): no event,
/// only `counts.unread`.
pub fn badge_body(unread: i64, device: &Device) -> Value {
    let mut data = device.data.clone();
    data.remove("url");
    json!({"notification": {
        "id": "",
        "type": null,
        "sender": "",
        "counts": {"unread": unread},
        "devices": [{
            "app_id": device.app_id,
            "pushkey": device.pushkey,
            "pushkey_ts": device.pushkey_ts,
            "data": data,
        }],
    }})
}

/// The `POST /_matrix/push/v1/notify` body for one device. Priority is high for encrypted
/// events and for notifications with a sound or a highlight (Synapse's rule); `format:
/// event_id_only` leaves out everything but the IDs and counts.
pub fn body(notice: &Notice, device: &Device) -> Value {
    let truthy = |name: &str| {
        notice
            .tweaks
            .get(name)
            .is_some_and(|v| !matches!(v, Value::Bool(false) | Value::Null))
    };
    let prio = if notice.kind == "m.room.encrypted" || truthy("highlight") || truthy("sound") {
        "high"
    } else {
        "low"
    };
    let mut data = device.data.clone();
    data.remove("url");
    let devices = json!([{
        "app_id": device.app_id,
        "pushkey": device.pushkey,
        "pushkey_ts": device.pushkey_ts,
        "data": data,
        "tweaks": notice.tweaks,
    }]);
    let counts = json!({ "unread": notice.unread });
    if device.data.get("format").and_then(Value::as_str) == Some("event_id_only") {
        // Synapse sends no tweaks in this format.
        let mut devices = devices;
        if let Some(device) = devices.get_mut(0).and_then(Value::as_object_mut) {
            device.remove("tweaks");
        }
        return json!({"notification": {
            "event_id": notice.event_id,
            "room_id": notice.room_id,
            "counts": counts,
            "prio": prio,
            "devices": devices,
        }});
    }
    let mut notification = json!({
        "id": notice.event_id,
        "event_id": notice.event_id,
        "room_id": notice.room_id,
        "type": notice.kind,
        "sender": notice.sender,
        "prio": prio,
        "counts": counts,
        "devices": devices,
    });
    if notice.kind == "m.room.member"
        && let Some(key) = &notice.state_key
    {
        notification["membership"] = notice
            .content
            .get("membership")
            .cloned()
            .unwrap_or(Value::Null);
        notification["user_is_target"] = json!(*key == notice.user_id);
    }
    if !notice.content.is_empty() {
        notification["content"] = Value::Object(notice.content.clone());
    }
    if let Some(name) = &notice.sender_display_name {
        notification["sender_display_name"] = json!(name);
    }
    if let Some(name) = &notice.room_name {
        notification["room_name"] = json!(name);
    }
    json!({ "notification": notification })
}

/// How a delivery ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// The gateway took it; `rejected` says whether it refused this pushkey.
    Accepted { rejected: bool },
    /// Every attempt failed, or the gateway refused the request (4xx).
    Failed(String),
}

/// Sends one notification, retrying failures with doubling pauses ([`ATTEMPTS`] in all;
/// a 4xx other than 429 is not retried: the gateway will not change its mind).
pub async fn deliver(client: &GatewayClient, url: &str, body: &Value, pushkey: &str) -> Delivered {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let mut pause = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match attempt_once(client, url, bytes.clone()).await {
            Ok(answer) => {
                let rejected = answer
                    .get("rejected")
                    .and_then(Value::as_array)
                    .is_some_and(|keys| keys.iter().any(|k| k.as_str() == Some(pushkey)));
                return Delivered::Accepted { rejected };
            }
            Err(Failure::Final(reason)) => return Delivered::Failed(reason),
            Err(Failure::Retry(reason)) => {
                tracing::debug!(%url, attempt, %reason, "push attempt failed");
                last = reason;
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    Delivered::Failed(last)
}

enum Failure {
    Retry(String),
    Final(String),
}

async fn attempt_once(client: &GatewayClient, url: &str, body: Bytes) -> Result<Value, Failure> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|err| Failure::Final(format!("bad gateway URL: {err}")))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|err| Failure::Retry(format!("unreachable: {err}")))?;
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|err| Failure::Retry(format!("reading the answer: {err}")))?
            .to_bytes();
        if status.is_success() {
            return Ok(serde_json::from_slice(&answer).unwrap_or(Value::Null));
        }
        if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
            return Err(Failure::Final(format!("answered {status}")));
        }
        Err(Failure::Retry(format!("answered {status}")))
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
        .await
        .map_err(|_| Failure::Retry("timed out".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Notice {
        Notice {
            event_id: "$e".into(),
            room_id: "!hs_r:x".into(),
            kind: "m.room.message".into(),
            sender: "@bob:x".into(),
            state_key: None,
            content: json!({"msgtype": "m.text", "body": "hi"})
                .as_object()
                .unwrap()
                .clone(),
            sender_display_name: Some("Bob".into()),
            room_name: Some("Chat".into()),
            unread: 2,
            tweaks: Map::new(),
            user_id: "@alice:x".into(),
        }
    }

    fn device(format: Option<&str>) -> Device {
        let mut data = json!({"url": "http://gw/_matrix/push/v1/notify", "extra": 1});
        if let Some(format) = format {
            data["format"] = json!(format);
        }
        Device {
            app_id: "app".into(),
            pushkey: "key".into(),
            pushkey_ts: 17,
            data: data.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn full_notification_without_url_in_device_data() {
        let body = body(&notice(), &device(None));
        let n = &body["notification"];
        assert_eq!(n["event_id"], "$e");
        assert_eq!(n["type"], "m.room.message");
        assert_eq!(n["sender_display_name"], "Bob");
        assert_eq!(n["room_name"], "Chat");
        assert_eq!(n["content"]["body"], "hi");
        assert_eq!(n["counts"], json!({"unread": 2}));
        assert_eq!(n["prio"], "low");
        assert_eq!(n["devices"][0]["data"], json!({"extra": 1}));
        assert_eq!(n["devices"][0]["pushkey_ts"], 17);
    }

    #[test]
    fn event_id_only_and_priority() {
        let mut loud = notice();
        loud.tweaks.insert("highlight".into(), json!(true));
        let body = body(&loud, &device(Some("event_id_only")));
        let n = &body["notification"];
        assert_eq!(n["prio"], "high");
        assert!(n.get("content").is_none() && n.get("sender").is_none());
        assert_eq!(
            n["devices"][0]["data"],
            json!({"extra": 1, "format": "event_id_only"})
        );
        assert!(n["devices"][0].get("tweaks").is_none());
        let mut quiet = notice();
        quiet.tweaks.insert("highlight".into(), json!(false));
        assert_eq!(
            super::body(&quiet, &device(None))["notification"]["prio"],
            "low"
        );
    }
}
