//! Tool calls for a model with no tool format of its own. Llama 2 was not trained to call
//! functions, so yangtuo uses one documented convention (README, "Tool calls"):
//!
//! - the tools are described at the end of the system prompt, by a jinja template
//!   (`DEFAULT_TEMPLATE`, or `LoadOptions::tool_template`);
//! - a call is the whole answer, one JSON object `{"name":"…","arguments":{…}}`, and the
//!   sampler is constrained (llguidance) so that `name` is one of the tools and `arguments`
//!   follows that tool's `parameters` schema; with `tool_choice: "auto"` an answer that
//!   starts with anything but `{` is plain text instead;
//! - in the history, an assistant's `tool_calls` are rendered back as those objects, one
//!   per line, and `tool` results as a user turn of `Result of {name}: {content}` lines,
//!   so the turns still alternate as every Llama 2 template requires.

use super::Message;
use crate::grammar::Grammar;
use crate::{Error, Result};
use serde::Serialize;
use serde_json::Value;

/// The system prompt's tool description: `system` is the caller's system prompt (or
/// none), `tools` the functions (`name`, `description`, `parameters` as JSON text),
/// `tool_choice` one of `auto`, `required` or the one function's name.
pub const DEFAULT_TEMPLATE: &str = r#"{% if system %}{{ system }}

{% endif %}You can call these functions:
{% for tool in tools %}
- {{ tool.name }}{% if tool.description %}: {{ tool.description }}{% endif %}
  arguments (JSON Schema): {{ tool.parameters }}
{% endfor %}
To call a function, answer with only a JSON object {"name": <function name>, "arguments": <its arguments>}.{% if tool_choice == "auto" %} If no function helps, answer in plain text.{% endif %} A function's result comes back as "Result of <function name>: <result>"."#;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// A JSON Schema of its arguments (an object).
    pub parameters: Value,
}

/// OpenAI's `tool_choice`, less `none` (which is no tools at all).
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model answers in text or calls one tool.
    Auto,
    /// The model calls one of the tools.
    Required,
    /// The model calls this tool.
    Function(String),
}

/// The tools a request offers and how it lets the model use them.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
}

/// A call in OpenAI's shape: `{"id", "type": "function", "function": {"name", "arguments"}}`,
/// `arguments` being JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

impl ToolUse {
    /// The request's `tools` and `tool_choice`; `None` when no tool may be called (none
    /// given, or `tool_choice: "none"`). Errors name the field.
    pub fn from_request(tools: Option<&Value>, choice: Option<&Value>) -> Result<Option<ToolUse>> {
        let list = match tools {
            None | Some(Value::Null) => &vec![],
            Some(Value::Array(list)) => list,
            Some(_) => {
                return Err(Error::arg(
                    "tools",
                    "must be a list of {type: \"function\", function: {name, parameters}}",
                ));
            }
        };
        let tools = list
            .iter()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<Vec<_>>>()?;
        if let Some(dup) = tools
            .iter()
            .enumerate()
            .find(|(i, t)| tools[..*i].iter().any(|u| u.name == t.name))
        {
            return Err(Error::arg(
                "tools",
                format!("the function name `{}` is given twice", dup.1.name),
            ));
        }
        let choice = match choice {
            None | Some(Value::Null) => (!tools.is_empty()).then_some(ToolChoice::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "none" => None,
                "auto" => (!tools.is_empty()).then_some(ToolChoice::Auto),
                "required" => Some(ToolChoice::Required),
                other => {
                    return Err(Error::arg(
                        "tool_choice",
                        format!("`{other}` is not one of none, auto, required"),
                    ));
                }
            },
            Some(Value::Object(o)) => match o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) if o.get("type").and_then(Value::as_str) == Some("function") => {
                    Some(ToolChoice::Function(name.into()))
                }
                _ => {
                    return Err(Error::arg(
                        "tool_choice",
                        "must be none, auto, required or {type: \"function\", function: {name}}",
                    ));
                }
            },
            Some(_) => {
                return Err(Error::arg(
                    "tool_choice",
                    "must be none, auto, required or {type: \"function\", function: {name}}",
                ));
            }
        };
        let Some(choice) = choice else {
            return Ok(None);
        };
        if tools.is_empty() {
            return Err(Error::arg("tool_choice", "needs `tools`"));
        }
        if let ToolChoice::Function(name) = &choice
            && !tools.iter().any(|t| &t.name == name)
        {
            return Err(Error::arg(
                "tool_choice",
                format!("names `{name}`, which is not one of the tools"),
            ));
        }
        Ok(Some(ToolUse { tools, choice }))
    }

    /// What the answer must match: one call to one of the allowed tools, its arguments
    /// following the tool's schema (a Lark grammar with each schema inlined as `%json`);
    /// with `auto`, or text that does not start with `{`. The call is compact JSON, as the
    /// history shows calls; a few blanks may come first (Llama 2 answers start with one).
    pub fn grammar(&self) -> Grammar {
        let callable: Vec<&Tool> = match &self.choice {
            ToolChoice::Function(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
            _ => self.tools.iter().collect(),
        };
        let mut lark = String::from(match self.choice {
            ToolChoice::Auto => "start: WS? (call | TEXT)?\nTEXT: /[^{ \\t\\r\\n][\\s\\S]*/\n",
            _ => "start: WS? call\n",
        });
        lark.push_str("WS: /[ \\t\\r\\n]{1,4}/\n");
        let alternatives: Vec<String> = (0..callable.len()).map(|i| format!("call_{i}")).collect();
        lark.push_str(&format!("call: {}\n", alternatives.join(" | ")));
        for (i, t) in callable.iter().enumerate() {
            // the names are [A-Za-z0-9_-], so the literal needs no escapes but the quotes
            let schema = arguments_schema(&t.parameters);
            lark.push_str(&format!("call_{i}: \"{{\\\"name\\\":\\\"{}\\\",\\\"arguments\\\":\" %json {schema} \"}}\"\n", t.name));
        }
        Grammar::ToolCall(lark)
    }

    /// The system prompt with the tools described after `system`, by `template` (jinja;
    /// `DEFAULT_TEMPLATE` when `None`).
    pub fn system_prompt(&self, system: Option<&str>, template: Option<&str>) -> Result<String> {
        let err = |e: minijinja::Error| Error::arg("tool_template", format!("{e}"));
        let mut env = minijinja::Environment::new();
        env.add_template("tools", template.unwrap_or(DEFAULT_TEMPLATE))
            .map_err(err)?;
        let tools: Vec<Value> = self
            .tools
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "description": t.description, "parameters": t.parameters.to_string()}))
            .collect();
        let choice = match &self.choice {
            ToolChoice::Auto => "auto",
            ToolChoice::Required => "required",
            ToolChoice::Function(name) => name,
        };
        let ctx = minijinja::context! { system => system, tools => minijinja::Value::from(minijinja::value::Serde(&tools)), tool_choice => choice };
        env.get_template("tools")
            .and_then(|t| t.render(ctx))
            .map_err(err)
    }

    /// `messages` with the tools described in the system prompt (one is added if none).
    pub fn with_system_prompt(
        &self,
        messages: &[Message],
        template: Option<&str>,
    ) -> Result<Vec<Message>> {
        let (system, rest) = match messages.first() {
            Some(m) if m.role == "system" => (Some(m.content.as_str()), &messages[1..]),
            _ => (None, messages),
        };
        let mut out = vec![Message::system(self.system_prompt(system, template)?)];
        out.extend_from_slice(rest);
        Ok(out)
    }

    /// The call an answer makes, if it is one: a JSON object naming one of the tools, with
    /// an `arguments` object. `id` is the call's id.
    pub fn call_in(&self, answer: &str, id: String) -> Option<ToolCall> {
        let text = answer.trim();
        if !text.starts_with('{') {
            return None;
        }
        let Value::Object(mut call) = serde_json::from_str(text).ok()? else {
            return None;
        };
        let name = call.remove("name")?.as_str()?.to_string();
        let arguments = call.remove("arguments").filter(Value::is_object)?;
        if !call.is_empty() || !self.tools.iter().any(|t| t.name == name) {
            return None;
        }
        Some(ToolCall {
            id,
            kind: "function",
            function: FunctionCall {
                name,
                arguments: arguments.to_string(),
            },
        })
    }

    /// Whether an answer that starts with `text` (the first non-blank character decides)
    /// is a call, text, or not known yet.
    pub fn is_call(&self, text: &str) -> Option<bool> {
        if self.choice != ToolChoice::Auto {
            return Some(true);
        }
        text.trim_start().chars().next().map(|c| c == '{')
    }
}

/// Tool `i` of `tools`: `{"type": "function", "function": {"name", "description",
/// "parameters"}}`.
fn tool(i: usize, t: &Value) -> Result<Tool> {
    let bad = |msg: &str| Error::arg("tools", format!("tools[{i}]: {msg}"));
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(bad("`type` must be \"function\""));
    }
    let f = t
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| bad("`function` must be an object {name, parameters}"))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`function.name` must be a string"))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(bad(
            "`function.name` must be 1-64 of a-z, A-Z, 0-9, _ and -",
        ));
    }
    let description = match f.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(d)) => d.clone(),
        Some(_) => return Err(bad("`function.description` must be a string")),
    };
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(bad("`function.parameters` must be a JSON Schema object")),
    };
    Ok(Tool {
        name: name.into(),
        description,
        parameters,
    })
}

/// The schema a call's `arguments` are generated under: the tool's `parameters`, compact
/// (no blanks between tokens, llguidance's `x-guidance` option), and, where the schema
/// lists `properties` but says nothing of others, with no others: a function takes the
/// parameters it declares, as OpenAI's strict mode has it.
fn arguments_schema(parameters: &Value) -> Value {
    let mut schema = parameters.clone();
    if let Value::Object(o) = &mut schema {
        o.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
        if o.contains_key("properties") {
            o.entry("additionalProperties")
                .or_insert(Value::Bool(false));
        }
    }
    schema
}

/// An earlier call as the history shows it to the model: the object the grammar makes it
/// write, `{"name":"…","arguments":{…}}`.
pub fn call_text(name: &str, arguments: &Value) -> String {
    format!(
        "{{\"name\":{},\"arguments\":{}}}",
        Value::from(name),
        arguments
    )
}

/// A tool's result as the history shows it to the model.
pub fn result_text(name: &str, content: &str) -> String {
    format!("Result of {name}: {content}")
}

/// `messages` with each run of `tool` results made one user turn, together with a user
/// message that follows them, so user and assistant turns alternate again.
pub fn fold_results(messages: Vec<Message>) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    let mut open = false; // the last message in `out` is a user turn made of tool results
    for m in messages {
        match (m.role.as_str(), out.last_mut()) {
            ("tool", Some(last)) if open => {
                last.content.push('\n');
                last.content.push_str(&m.content);
            }
            ("user", Some(last)) if open => {
                last.content.push_str("\n\n");
                last.content.push_str(&m.content);
                open = false;
            }
            ("tool", _) => {
                out.push(Message::user(m.content));
                open = true;
            }
            _ => {
                out.push(m);
                open = false;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "天气",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn reads_tools_and_choice() {
        let tools = weather();
        let u = ToolUse::from_request(Some(&tools), None).unwrap().unwrap();
        assert_eq!(
            (u.tools[0].name.as_str(), &u.choice),
            ("get_weather", &ToolChoice::Auto)
        );
        assert_eq!(
            ToolUse::from_request(Some(&tools), Some(&json!("none"))).unwrap(),
            None
        );
        assert_eq!(ToolUse::from_request(None, None).unwrap(), None);
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert_eq!(
            ToolUse::from_request(Some(&tools), Some(&named))
                .unwrap()
                .unwrap()
                .choice,
            ToolChoice::Function("get_weather".into())
        );
        for (tools, choice, field) in [
            (
                json!([{"type": "function", "function": {"name": "a b"}}]),
                json!("auto"),
                "tools",
            ),
            (json!([{"type": "retrieval"}]), json!("auto"), "tools"),
            (json!({"name": "x"}), json!("auto"), "tools"),
            (tools.clone(), json!("sometimes"), "tool_choice"),
            (
                tools.clone(),
                json!({"type": "function", "function": {"name": "other"}}),
                "tool_choice",
            ),
            (json!([]), json!("required"), "tool_choice"),
            (json!([weather()[0], weather()[0]]), json!("auto"), "tools"),
        ] {
            match ToolUse::from_request(Some(&tools), Some(&choice)) {
                Err(Error::InvalidArg { name, .. }) => assert_eq!(name, field, "{tools} {choice}"),
                other => panic!("{tools} {choice}: {other:?}"),
            }
        }
    }

    #[test]
    fn finds_the_call_in_an_answer() {
        let u = ToolUse::from_request(Some(&weather()), None)
            .unwrap()
            .unwrap();
        let call = u
            .call_in(
                " {\"name\":\"get_weather\",\"arguments\":{\"city\": \"北京\"}}",
                "call_1".into(),
            )
            .unwrap();
        assert_eq!(call.function.name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&call.function.arguments).unwrap(),
            json!({"city": "北京"})
        );
        assert_eq!(u.call_in("It is sunny.", "c".into()), None);
        assert_eq!(
            u.call_in("{\"name\":\"other\",\"arguments\":{}}", "c".into()),
            None
        );
        assert_eq!(
            u.call_in("{\"name\":\"get_weather\",\"arguments\":{\"ci", "c".into()),
            None
        );
        assert_eq!(
            (u.is_call("  "), u.is_call(" {"), u.is_call("\nIt")),
            (None, Some(true), Some(false))
        );
    }

    #[test]
    fn describes_the_tools_after_the_system_prompt() {
        let u = ToolUse::from_request(Some(&weather()), None)
            .unwrap()
            .unwrap();
        let m = u
            .with_system_prompt(&[Message::system("Be brief."), Message::user("hi")], None)
            .unwrap();
        assert!(
            m[0].content
                .starts_with("Be brief.\n\nYou can call these functions:\n"),
            "{}",
            m[0].content
        );
        assert!(
            m[0].content
                .contains("- get_weather: 天气\n  arguments (JSON Schema): {\"type\":\"object\""),
            "{}",
            m[0].content
        );
        assert!(m[0].content.contains("answer in plain text"));
        let m = u
            .with_system_prompt(&[Message::user("hi")], Some("{{ tools | length }} tool(s)"))
            .unwrap();
        assert_eq!((m[0].content.as_str(), m.len()), ("1 tool(s)", 2));
        assert!(
            matches!(u.with_system_prompt(&m, Some("{% if")), Err(Error::InvalidArg { name, .. }) if name == "tool_template")
        );
    }

    #[test]
    fn folds_results_into_user_turns() {
        let m = fold_results(vec![
            Message::user("q"),
            Message::assistant(call_text("f", &json!({"a": 1}))),
            Message::new("tool", result_text("f", "1")),
            Message::new("tool", result_text("f", "2")),
            Message::user("and?"),
        ]);
        let got: Vec<_> = m
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("user", "q"),
                ("assistant", "{\"name\":\"f\",\"arguments\":{\"a\":1}}"),
                ("user", "Result of f: 1\nResult of f: 2\n\nand?")
            ]
        );
    }
}
