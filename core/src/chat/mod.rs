//! Messages and chat templates: from `[{role, content}]` to prompt token ids.

pub mod fit;
mod namespaces;
pub mod own_template;
mod stop;
mod template;
pub mod tools;

pub use stop::StopMatcher;

pub use template::ChatTemplate;

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}

/// Strings that delimit turns in Llama 2 prompts. In user content they are prompt
/// injection; Meta's reference `chat_completion` marks such dialogs unsafe.
pub const CONTROL_STRINGS: [&str; 6] = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<s>", "</s>"];

/// Check the conversation shape every template needs: an optional `system` first, then
/// `user` and `assistant` alternating, ending with `user`; and, unless allowed, no
/// template control strings in any content.
pub fn validate(messages: &[Message], allow_control: bool) -> Result<()> {
    let err = |index: usize, msg: String| Err(Error::Template { index, msg });
    if messages.is_empty() {
        return err(
            0,
            "messages is empty: a chat needs at least one user message".into(),
        );
    }
    let start = usize::from(messages[0].role == "system");
    for (i, m) in messages.iter().enumerate() {
        let want = if i < start {
            "system"
        } else if (i - start) % 2 == 0 {
            "user"
        } else {
            "assistant"
        };
        if m.role != want {
            let what = match m.role.as_str() {
                "system" | "user" | "assistant" => {
                    format!("role `{}` is out of place here", m.role)
                }
                other => format!("unknown role `{other}` (expected system, user or assistant)"),
            };
            return err(
                i,
                format!(
                    "{what}; expected `{want}`. Roles must be an optional system message, then user and \
                     assistant alternating, ending with user"
                ),
            );
        }
        if !allow_control {
            if let Some(s) = CONTROL_STRINGS.iter().find(|s| m.content.contains(*s)) {
                return err(
                    i,
                    format!(
                        "content contains the template control string `{s}`, which could forge turns \
                         (prompt injection); pass allow_control_tokens to accept it"
                    ),
                );
            }
        }
    }
    if messages.last().map(|m| m.role.as_str()) != Some("user") {
        return err(
            messages.len() - 1,
            "the last message must be from the user".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(rs: &[&str]) -> Vec<Message> {
        rs.iter().map(|r| Message::new(r, "hi")).collect()
    }

    fn index_of(e: Error) -> usize {
        match e {
            Error::Template { index, .. } => index,
            other => panic!("expected a template error, got {other}"),
        }
    }

    #[test]
    fn accepts_the_llama2_shapes() {
        for ok in [
            &["user"][..],
            &["system", "user"],
            &["user", "assistant", "user"],
            &["system", "user", "assistant", "user"],
        ] {
            validate(&roles(ok), false).unwrap();
        }
    }

    #[test]
    fn names_the_offending_message() {
        assert_eq!(index_of(validate(&[], false).unwrap_err()), 0);
        assert_eq!(
            index_of(validate(&roles(&["assistant"]), false).unwrap_err()),
            0
        );
        assert_eq!(
            index_of(validate(&roles(&["user", "user"]), false).unwrap_err()),
            1
        );
        assert_eq!(
            index_of(validate(&roles(&["system", "system", "user"]), false).unwrap_err()),
            1
        );
        assert_eq!(
            index_of(validate(&roles(&["user", "assistant"]), false).unwrap_err()),
            1
        );
        assert_eq!(
            index_of(validate(&roles(&["user", "bot", "user"]), false).unwrap_err()),
            1
        );
        let e = validate(&roles(&["user", "tool"]), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown role `tool`"), "{e}");
    }

    #[test]
    fn rejects_control_strings_unless_allowed() {
        for s in CONTROL_STRINGS {
            let msgs = vec![
                Message::user("a"),
                Message::assistant(format!("x {s} y")),
                Message::user("b"),
            ];
            assert_eq!(index_of(validate(&msgs, false).unwrap_err()), 1);
            validate(&msgs, true).unwrap();
        }
    }
}
