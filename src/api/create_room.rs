//! `POST /createRoom`: the one request whose body decides where it goes. The first room class
//! (in routing.toml order) whose `[class.match]` fits decides; with `create = "local"` the room
//! is made here, otherwise — or when no class fits — the request goes to Synapse unchanged.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use super::ApiError;
use super::extract::{Query, parse_object};
use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::config::{CreateTarget, RoomClass};
use crate::error::MatrixError;
use crate::rooms::create::CreateRoomRequest;
use crate::rooms::service::origin_ts;

/// Which class, if any, a createRoom request belongs to.
fn matching_class<'a>(
    classes: &'a [RoomClass],
    appservice_id: Option<&str>,
    body: &Map<String, Value>,
) -> Option<&'a RoomClass> {
    let unfederated = body
        .get("creation_content")
        .and_then(|content| content.get("m.federate"))
        .and_then(Value::as_bool)
        == Some(false);
    classes.iter().find(|class| {
        class.matches.all
            || (class.matches.unfederated && unfederated)
            || appservice_id
                .is_some_and(|id| class.matches.appservices.iter().any(|wanted| wanted == id))
    })
}

pub async fn create_room(state: AppState, request: Request<Body>, peer: SocketAddr) -> Response {
    match handle(state, request, peer).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn handle(
    state: AppState,
    request: Request<Body>,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let limit = usize::try_from(state.config.limits.max_local_body_bytes).unwrap_or(usize::MAX);
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| MatrixError::too_large(state.config.limits.max_local_body_bytes))?
        .to_bytes();
    let body = parse_object(&bytes)?;
    let token = access_token(&parts.headers, parts.uri.query()).map(|t| t.into_owned());
    let appservice_id = token
        .as_deref()
        .and_then(|t| state.identity.appservice(t))
        .map(|a| a.id.clone());

    let classes = state.classes.current();
    let class = matching_class(classes.classes(), appservice_id.as_deref(), &body);
    let Some(class) = class.filter(|class| class.create == CreateTarget::Local) else {
        // Not ours: Synapse gets the request exactly as sent.
        let request = Request::from_parts(parts, Body::from(bytes));
        return Ok(match state.synapse.forward(request, peer).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        });
    };
    let params = Query::parse(parts.uri.query());
    let requester = state
        .identity
        .resolve(token.as_deref(), params.get("user_id"))
        .await?;
    let ts = origin_ts(&requester, params.get("ts").and_then(|ts| ts.parse().ok()));
    let create: CreateRoomRequest = serde_json::from_value(Value::Object(body))
        .map_err(|err| MatrixError::bad_json(format!("Invalid createRoom request: {err}")))?;
    let room_id = state
        .rooms
        .create(
            &requester,
            token.as_deref().unwrap_or_default(),
            class,
            create,
            ts,
        )
        .await?;
    tracing::info!(%room_id, class = %class.name, "local room created");
    Ok(Json(json!({ "room_id": room_id })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CreateMatch, ServeMode};

    fn class(name: &str, create: CreateTarget, matches: CreateMatch) -> RoomClass {
        RoomClass {
            name: name.into(),
            prefix: format!("{name}_"),
            serve: ServeMode::Local,
            create,
            matches,
        }
    }

    #[test]
    fn first_matching_class_wins() {
        let classes = [
            class(
                "tg",
                CreateTarget::Local,
                CreateMatch {
                    appservices: vec!["telegram".into()],
                    ..Default::default()
                },
            ),
            class(
                "off",
                CreateTarget::Synapse,
                CreateMatch {
                    appservices: vec!["whatsapp".into()],
                    ..Default::default()
                },
            ),
            class(
                "unfed",
                CreateTarget::Local,
                CreateMatch {
                    unfederated: true,
                    ..Default::default()
                },
            ),
        ];
        let federated = json!({}).as_object().unwrap().clone();
        let unfederated = json!({"creation_content": {"m.federate": false}})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            matching_class(&classes, Some("telegram"), &federated)
                .unwrap()
                .name,
            "tg"
        );
        assert_eq!(
            matching_class(&classes, Some("whatsapp"), &unfederated)
                .unwrap()
                .name,
            "off"
        );
        assert_eq!(
            matching_class(&classes, None, &unfederated).unwrap().name,
            "unfed"
        );
        assert!(matching_class(&classes, None, &federated).is_none());
        assert!(matching_class(&classes, Some("slack"), &federated).is_none());
    }
}
