//! Account changes forwarded to Synapse that local rooms must follow once Synapse accepts them
//! ([`crate::rooms::account`]): a new displayname or avatar (the user's own, or set by a server
//! admin through the client or admin API) and a deactivation (`/account/deactivate`, admin
//! `v1/deactivate/{userId}`, admin `v2/users/{userId}` with `deactivated: true`).
//!
//! [`AccountChange::before`] runs before the request is forwarded: a self-deactivation ends
//! the requester's token, so whose account it is must be known first.
//! [`AccountChange::after`] runs once Synapse answered 2xx, before the answer goes back, so a
//! client that deactivates someone and then reads a local room sees them gone.

use axum::body::Body;
use http::Response;
use http_body_util::BodyExt;
use ruma::OwnedUserId;
use serde_json::Value;

use crate::app::AppState;
use crate::routing::{Deactivation, FollowUps};

/// The largest admin `v2/users` answer read (one user's record).
const MAX_USER_ANSWER: usize = 256 * 1024;

/// What a forwarded request will change about an account, once Synapse accepts it.
#[derive(Debug, Default)]
pub struct AccountChange {
    /// Whose displayname or avatar the request sets.
    profile: Option<OwnedUserId>,
    /// Whose account the request deactivates, if it does.
    deactivation: Option<Pending>,
}

#[derive(Debug)]
enum Pending {
    /// This user's, once Synapse accepts.
    User(OwnedUserId),
    /// This user's, if Synapse's answer (the user's record) says `deactivated: true`.
    IfAnswerSays(OwnedUserId),
}

impl AccountChange {
    /// Reads what the request will change; resolves the requester of a self-deactivation
    /// (`token` and the `user_id` an appservice masquerades as) while the token still works.
    pub async fn before(
        state: &AppState,
        follow_ups: &FollowUps,
        token: Option<&str>,
        user_id_param: Option<&str>,
    ) -> Self {
        let deactivation = match &follow_ups.deactivation {
            None => None,
            Some(Deactivation::User(user)) => Some(Pending::User(user.clone())),
            Some(Deactivation::IfAnswerSays(user)) => Some(Pending::IfAnswerSays(user.clone())),
            Some(Deactivation::Requester) => {
                match state.identity.resolve(token, user_id_param).await {
                    Ok(requester) => Some(Pending::User(requester.user_id)),
                    // Synapse will refuse the same token; nothing to follow.
                    Err(_) => None,
                }
            }
        };
        Self {
            profile: follow_ups.profile.clone(),
            deactivation,
        }
    }

    /// Carries the accepted change into local rooms; `response` is Synapse's 2xx answer,
    /// passed on with the same bytes.
    pub async fn after(
        self,
        state: &AppState,
        token: Option<&str>,
        response: Response<Body>,
    ) -> Response<Body> {
        let (deactivated, response) = match self.deactivation {
            None => (None, response),
            Some(Pending::User(user)) => (Some(user), response),
            Some(Pending::IfAnswerSays(user)) => {
                let (says, response) = answer_says_deactivated(response).await;
                (says.then_some(user), response)
            }
        };
        if let Some(user) = deactivated {
            if let Err(err) = state.rooms.deactivate(&user).await {
                tracing::warn!(error = %err, "deactivation not carried into local rooms");
            }
            // A deactivated user is parted from every room; no profile to carry.
            return response;
        }
        if let (Some(user), Some(token)) = (self.profile, token)
            && let Err(err) = state.rooms.propagate_profile(&user, token).await
        {
            tracing::warn!(error = %err, "profile change not carried into local rooms");
        }
        response
    }
}

/// Whether an admin `v2/users` answer says the user is deactivated; the answer comes back with
/// the same bytes (or a 502 when it cannot be read, as for any unreadable Synapse answer).
async fn answer_says_deactivated(response: Response<Body>) -> (bool, Response<Body>) {
    let (parts, body) = response.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_USER_ANSWER)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let refusal =
                crate::error::MatrixError::bad_gateway("Synapse's answer could not be read");
            return (false, refusal.into_response());
        }
    };
    let deactivated = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|user| user.get("deactivated")?.as_bool())
        .unwrap_or(false);
    (deactivated, Response::from_parts(parts, Body::from(bytes)))
}
