//! `POST /user_directory/search`: Synapse's answer plus the users who share a joined local room
//! with the requester.
//!
//! Synapse (without `search_all_users`) finds users in public rooms and users who share a room
//! it knows; local rooms it does not know, and no Synapse module interface can add results
//! (its spam checker can only remove them), so hungryserv answers for them here. Synapse's
//! answer comes first, in its order; then local co-members that match and are not in it, by
//! user ID, up to `limit` (default 10, at most 50, as Synapse's); `limited` is Synapse's, or true when
//! matches were left out. A local co-member's profile is the one of their member event in a
//! shared room (hungryserv carries profile changes into local rooms).
//!
//! Matching follows Synapse's Postgres search in spirit: every word of the search term must be
//! a prefix of a word of the display name or the user ID (case-insensitive; words are runs of
//! letters and digits).

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::ApiError;
use super::extract::{Query, parse_object};
use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::error::MatrixError;
use crate::rooms::RoomError;
use crate::store::StoreError;
use crate::store::devices::CoMemberProfile;

/// Synapse's default `limit`, and the most it gives.
const DEFAULT_LIMIT: u64 = 10;
const MAX_LIMIT: u64 = 50;

/// The largest search body read (a search term and a limit).
const MAX_BODY: usize = 64 * 1024;

pub async fn user_directory(state: &AppState, request: Request<Body>) -> Response {
    match handle(state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn handle(state: &AppState, request: Request<Body>) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|_| MatrixError::too_large(MAX_BODY as u64))?
        .to_bytes();
    let search = Value::Object(parse_object(&bytes)?);
    let query = parts.uri.query().unwrap_or_default();
    let token = access_token(&parts.headers, parts.uri.query()).map(|t| t.into_owned());
    let requester = state
        .identity
        .resolve(token.as_deref(), Query::parse(Some(query)).get("user_id"))
        .await?;
    // Synapse checks the body (search_term required, limit an integer) and refuses it as usual.
    let answer = state
        .synapse
        .user_directory_search(token.as_deref().unwrap_or_default(), query, &search)
        .await
        .map_err(|err| ApiError::from_upstream(err, "user_directory/search"))?;
    let term = search
        .get("search_term")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let limit = search
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_LIMIT)
        .min(MAX_LIMIT);
    let mut conn = state
        .db
        .acquire()
        .await
        .map_err(|err| RoomError::from(StoreError::from(err)))?;
    let co_members =
        crate::store::devices::co_member_profiles(&mut conn, requester.user_id.as_str())
            .await
            .map_err(RoomError::from)?;
    drop(conn);
    Ok(Json(merge(&answer, term, limit, co_members)).into_response())
}

/// Synapse's answer with the matching co-members added (see the module doc).
fn merge(synapse: &Value, term: &str, limit: u64, co_members: Vec<CoMemberProfile>) -> Value {
    let mut results: Vec<Value> = synapse
        .get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut limited = synapse
        .get("limited")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut local: Vec<CoMemberProfile> = co_members
        .into_iter()
        .filter(|m| matches(term, &m.user_id, m.displayname.as_deref()))
        .filter(|m| !results.iter().any(|r| r["user_id"] == json!(m.user_id)))
        .collect();
    local.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    for member in local {
        if results.len() >= limit {
            limited = true;
            break;
        }
        results.push(json!({
            "user_id": member.user_id,
            "display_name": member.displayname,
            "avatar_url": member.avatar_url,
        }));
    }
    json!({ "limited": limited, "results": results })
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Whether every word of `term` starts a word of the display name or the user ID.
fn matches(term: &str, user_id: &str, displayname: Option<&str>) -> bool {
    let haystack: Vec<String> = words(user_id)
        .chain(displayname.into_iter().flat_map(words))
        .collect();
    let mut terms = words(term).peekable();
    terms.peek().is_some() && terms.all(|t| haystack.iter().any(|w| w.starts_with(&t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_are_prefixes_of_name_or_id_words() {
        let cases = [
            ("ali", "@alice:hs", None, true),
            ("ALICE", "@alice:hs", None, true),
            ("hs", "@alice:hs", None, true),
            ("wonder", "@a:hs", Some("Alice Wonderland"), true),
            ("alice wond", "@a:hs", Some("Alice Wonderland"), true),
            ("alice bob", "@a:hs", Some("Alice Wonderland"), false),
            ("lice", "@alice:hs", None, false),
            ("", "@alice:hs", None, false),
        ];
        for (term, user, name, want) in cases {
            assert_eq!(
                matches(term, user, name),
                want,
                "{term:?} in {user} {name:?}"
            );
        }
    }

    #[test]
    fn local_co_members_follow_synapse_results_up_to_the_limit() {
        let member = |u: &str, name: &str| CoMemberProfile {
            user_id: u.into(),
            displayname: Some(name.into()),
            avatar_url: None,
        };
        let synapse = json!({"limited": false, "results": [
            {"user_id": "@s:hs", "display_name": "Sam Smith"},
            {"user_id": "@both:hs", "display_name": "Sam Both"},
        ]});
        let co_members = vec![
            member("@z:hs", "Sam Zed"),
            member("@both:hs", "Sam Both"),
            member("@y:hs", "Sam Why"),
            member("@n:hs", "Nobody"),
        ];
        let merged = merge(&synapse, "sam", 10, co_members.clone());
        let ids: Vec<&str> = merged["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["user_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["@s:hs", "@both:hs", "@y:hs", "@z:hs"]);
        assert_eq!(merged["limited"], false);
        let cut = merge(&synapse, "sam", 3, co_members);
        assert_eq!(cut["results"].as_array().unwrap().len(), 3);
        assert_eq!(cut["limited"], true);
    }
}
