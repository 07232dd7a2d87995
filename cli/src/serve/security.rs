//! What makes the server safe to expose: Bearer-key auth on the /v1 routes (401 in
//! OpenAI's shape), and CORS only for the origins named.

use super::api::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use yangtuo::{Error, Result};

/// 401 unless the request carries `Authorization: Bearer <key>` (when a key is set).
pub async fn require_key(
    State(key): State<Arc<Option<String>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(key) = key.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // compare in constant time, so the key cannot be guessed byte by byte from timings
    let ok = given.is_some_and(|g| {
        g.len() == key.len()
            && g.bytes()
                .zip(key.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
    });
    if ok {
        return next.run(req).await;
    }
    let message = if given.is_some() {
        "Incorrect API key provided."
    } else {
        "You didn't provide an API key: send `Authorization: Bearer KEY`."
    };
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: Some("invalid_api_key"),
        ..ApiError::invalid(message, None)
    }
    .into_response()
}

/// The CORS layer for `origins` (`*` for any), or none.
pub fn cors(origins: &[String]) -> Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let base = CorsLayer::new().allow_methods(Any).allow_headers(Any);
    if origins.iter().any(|o| o == "*") {
        return Ok(Some(base.allow_origin(Any)));
    }
    let list = origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o)
                .map_err(|_| Error::arg("cors-origin", format!("`{o}` is not a valid origin")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(base.allow_origin(AllowOrigin::list(list))))
}
