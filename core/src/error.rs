//! One error type for the whole engine. Bindings map each variant to their runtime's
//! exception or error code, so variants follow what a user must do differently.

use std::borrow::Cow;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file or folder could not be read or does not describe a supported model.
    #[error("{path}: {msg}")]
    ModelLoad { path: PathBuf, msg: String },

    /// Chat messages that the template cannot render: wrong roles, empty, injected markers.
    #[error("message {index}: {msg}")]
    Template { index: usize, msg: String },

    /// The prompt plus the tokens to generate do not fit the context window.
    #[error(
        "context length exceeded: the prompt has {prompt} tokens and {requested} more were requested, \
         but the context holds {context} tokens"
    )]
    ContextLength {
        prompt: usize,
        requested: usize,
        context: usize,
    },

    /// A parameter outside its valid range (temperature, top_p, ids, ...).
    #[error("invalid argument `{name}`: {msg}")]
    InvalidArg {
        name: Cow<'static, str>,
        msg: String,
    },

    /// A tokenizer file that cannot be parsed, or text it cannot encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// No usable compute device, or the device failed (out of memory, lost).
    #[error("device: {0}")]
    Device(String),

    /// The device ran out of memory for a named allocation.
    #[error("out of device memory allocating {what} ({bytes} bytes): {msg}")]
    OutOfMemory {
        what: String,
        bytes: u64,
        msg: String,
    },

    /// The caller asked to stop (Ctrl-C, AbortSignal).
    #[error("cancelled")]
    Cancelled,

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Untrusted text (a key or name from a model file, a template's error) made safe to print:
/// control characters escaped, so a file cannot drive the terminal, and cut to `max`
/// characters.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push_str(&format!("… ({} bytes in all)", s.len()));
            break;
        }
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Error {
    pub fn load(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::ModelLoad {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn arg(name: impl Into<Cow<'static, str>>, msg: impl Into<String>) -> Self {
        Error::InvalidArg {
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// A short stable code for bindings (`MODEL_LOAD`, `TEMPLATE`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::ModelLoad { .. } | Error::Io { .. } | Error::Tokenizer(_) => "MODEL_LOAD",
            Error::Template { .. } => "TEMPLATE",
            Error::ContextLength { .. } => "CONTEXT_LENGTH",
            Error::InvalidArg { .. } => "INVALID_ARG",
            Error::Device(_) | Error::OutOfMemory { .. } => "DEVICE",
            Error::Cancelled => "ABORTED",
        }
    }
}

#[cfg(test)]
mod printable_tests {
    use super::printable;

    #[test]
    fn escapes_control_characters_and_cuts() {
        assert_eq!(
            printable("ok \u{1b}]0;pwned\u{7}\r", 100),
            "ok \\u{1b}]0;pwned\\u{7}\\r"
        );
        assert_eq!(printable("羊驼羊驼", 2), "羊驼… (12 bytes in all)");
        assert_eq!(printable("a\nb", 9), "a\nb");
    }
}
