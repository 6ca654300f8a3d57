//! `device_lists` of a merged `/sync`: Synapse's lists plus the local ones of the answer's
//! range, read from [`crate::devices`] between the two tokens' positions. The dependency goes
//! one way: sync knows its tokens and asks `devices` for a range; `devices` knows no token.

use serde_json::Value;

use super::token::SyncToken;
use crate::devices::lists::Viewer;
use crate::devices::{At, DeviceLists, merge};

impl From<&SyncToken> for At {
    fn from(token: &SyncToken) -> Self {
        At {
            events: token.local,
            devices: token.side.devices,
        }
    }
}

/// Adds the local device lists to a merged incremental `/sync` answer (`since` is the
/// client's token, the answer's `next_batch` the end of the range). An initial sync has no
/// device lists (Synapse's rule). On a database error Synapse's lists stay as they are.
pub async fn add_to_sync(
    devices: &DeviceLists,
    viewer: &Viewer<'_>,
    since: Option<&str>,
    body: &mut Value,
) {
    let Some(since) = since.and_then(|s| SyncToken::parse(s).ok()) else {
        return;
    };
    let Some(next) = body
        .get("next_batch")
        .and_then(Value::as_str)
        .and_then(|s| SyncToken::parse(s).ok())
    else {
        return;
    };
    let has_synapse_left = body
        .pointer("/device_lists/left")
        .and_then(Value::as_array)
        .is_some_and(|left| !left.is_empty());
    let (from, to) = (At::from(&since), At::from(&next));
    if from == to && !has_synapse_left {
        return;
    }
    match devices.between(viewer, from, to).await {
        Ok(local) => {
            let merged = merge(body.get("device_lists"), local);
            if let Some(body) = body.as_object_mut() {
                body.insert("device_lists".into(), merged);
            }
        }
        Err(err) => tracing::warn!(error = %err, "sync: local device lists not read"),
    }
}
