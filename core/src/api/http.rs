//! An engine error as an HTTP answer: its status and OpenAI's error body,
//! `{"error": {"message", "type", "param", "code"}}`. What the caller got wrong is a 400, the
//! rest a 500. `yangtuo serve` answers with it, and the Python exceptions carry it (so a
//! Python server, such as `yangtuo.ray`'s replicas, answers as `yangtuo serve` does).

use crate::Error;
use serde_json::{Value, json};

/// The HTTP status and OpenAI error body for `e`.
pub fn http_error(e: &Error) -> (u16, Value) {
    let invalid = |message: String, param: Option<&str>, code: Option<&str>| {
        (400, body(&message, "invalid_request_error", param, code))
    };
    match e {
        Error::Template { index, msg } => {
            invalid(format!("messages[{index}]: {msg}"), Some("messages"), None)
        }
        Error::ContextLength { .. } => invalid(
            e.to_string(),
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        Error::InvalidArg { name, msg } => {
            invalid(format!("`{name}` {msg}"), Some(name.as_ref()), None)
        }
        Error::Tokenizer(_) => invalid(e.to_string(), None, None),
        _ => (500, body(&e.to_string(), "server_error", None, None)),
    }
}

/// OpenAI's error body.
pub fn body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_errors_are_400_with_the_param() {
        let (status, b) = http_error(&Error::arg("top_p", "must be in (0, 1]"));
        assert_eq!(status, 400);
        assert_eq!(b["error"]["param"], "top_p");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        let (status, b) = http_error(&Error::ContextLength {
            prompt: 9,
            requested: 1,
            context: 8,
        });
        assert_eq!(
            (status, b["error"]["code"].as_str()),
            (400, Some("context_length_exceeded"))
        );
        let (status, b) = http_error(&Error::Device("lost".into()));
        assert_eq!(
            (status, b["error"]["type"].as_str()),
            (500, Some("server_error"))
        );
    }
}
