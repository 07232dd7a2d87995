//! The OpenAI error body, `{"error": {"message", "type", "param", "code"}}`, and the HTTP
//! status of each error (requests and answers themselves are core's: `yangtuo::api`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use yangtuo::Error;

/// An error answered with an OpenAI-shaped body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("not_found"),
            ..ApiError::invalid(message, None)
        }
    }

    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// Past `--request-timeout` before a generation slot was free.
    pub fn timeout(waited: std::time::Duration) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: Some("timeout"),
            ..ApiError::server(format!(
                "no generation slot was free within the request timeout ({:.1} s); try again later",
                waited.as_secs_f64()
            ))
        }
    }

    /// An engine error, as core maps it (`yangtuo::api::http_error`).
    pub fn from_engine(e: &Error) -> ApiError {
        let (status, body) = yangtuo::api::http_error(e);
        let field = |k: &str| body["error"][k].as_str().map(str::to_string);
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: field("message").unwrap_or_default(),
            kind: if status == 400 {
                "invalid_request_error"
            } else {
                "server_error"
            },
            param: field("param"),
            code: match body["error"]["code"].as_str() {
                Some("context_length_exceeded") => Some("context_length_exceeded"),
                _ => None,
            },
        }
    }

    pub fn body(&self) -> Value {
        yangtuo::api::error_body(&self.message, self.kind, self.param.as_deref(), self.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Middleware: an error the HTTP layers answer themselves (413 from the body limit, 408
/// from the body timeout, 405, a body axum cannot read) gets OpenAI's body as well, so a
/// client's error handling sees one shape from every failure.
pub async fn openai_errors(res: Response) -> Response {
    let status = res.status();
    let json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let detail = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error");
    let message = match String::from_utf8_lossy(&detail).trim() {
        "" => reason.to_string(),
        d => format!("{reason}: {d}"),
    };
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    let mut out = ApiError {
        status,
        message,
        kind,
        param: None,
        code: None,
    }
    .into_response();
    // keep what the layer said besides the body (`allow` on a 405, `retry-after`)
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
