//! The checks every request naming a local room passes before its handler runs, whichever
//! way it named the room (its ID in the path, or an alias resolved to it): the class's
//! `serve` (`off`: 503 `M_UNAVAILABLE`; `read_only`: writes 403) and deletion (404, as for a
//! room that never existed; joins and knocks of a blocked room 403, Synapse's answer).

use http::{Method, StatusCode};

use crate::app::AppState;
use crate::error::{ErrorCode, MatrixError};
use crate::routing::Route;

/// The refusal a route of a served-but-restricted class stands for, if it is one.
pub fn class_refusal(route: &Route) -> Option<MatrixError> {
    match route {
        Route::ReadOnly { class } => Some(MatrixError::forbidden(format!(
            "Rooms of class {class} are read-only on this server"
        ))),
        Route::Unavailable { class } => Some(MatrixError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("Rooms of class {class} are switched off on this server"),
        )),
        _ => None,
    }
}

/// The answer for a request about a deleted local room, if `room_id` is one. `joining`: the
/// request is a join or knock.
pub fn gone_refusal(state: &AppState, room_id: &str, joining: bool) -> Option<MatrixError> {
    let gone = state.deletions.gone(room_id)?;
    Some(if gone.blocked && joining {
        MatrixError::forbidden("This room has been blocked on this server")
    } else {
        MatrixError::not_found("Unknown room")
    })
}

/// Both checks for a request `method` about local room `room_id` reached by other means than
/// its path (an alias): the class first, as for a path naming the room.
pub fn room_refusal(
    state: &AppState,
    method: &Method,
    room_id: &str,
    joining: bool,
) -> Option<MatrixError> {
    let route = state.classes.current().room_route(method, room_id);
    route
        .as_ref()
        .and_then(class_refusal)
        .or_else(|| gone_refusal(state, room_id, joining))
}
