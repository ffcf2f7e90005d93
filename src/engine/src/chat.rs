//! Chat templates: the model's own Jinja template turns a conversation into
//! the prompt text the model was trained on.
//!
//! The template comes from `tokenizer_config.json` (`chat_template`, a
//! string or a list of named templates) or from GGUF metadata
//! (`tokenizer.chat_template`). It is rendered with minijinja configured the
//! way Hugging Face's `apply_chat_template` configures Jinja2: `trim_blocks`
//! and `lstrip_blocks` on; Python string/dict/list methods (`.strip()`,
//! `.startswith()`, `.split()`, `.items()`, …) through minijinja-contrib's
//! pycompat; `raise_exception(msg)` fails the render with `msg`; variables
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.
//!
//! `strftime_now` is deliberately **not** defined: rendering must not depend
//! on the wall clock (a canister replays it; tests compare texts), so
//! templates that date their system prompt use their own default (Llama 3.x:
//! "26 Jul 2024"). Tools are not passed (`tools` is undefined).
//!
//! [`ChatTemplate::stop_strings`] reports the texts that end the assistant's
//! turn: EOS and the end-of-turn markers the template itself writes
//! (`<|im_end|>`, `<|eot_id|>`, …); the caller maps them to token ids.

use crate::format::gguf::Gguf;
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// GGUF metadata key of the template.
pub const GGUF_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// End-of-turn markers of the common template families; those that occur in
/// a template's text are among its stop strings.
const END_OF_TURN_MARKERS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
];

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates may know others, e.g. `tool`).
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
    pub fn system(content: &str) -> Message {
        Message::new("system", content)
    }
    pub fn user(content: &str) -> Message {
        Message::new("user", content)
    }
    pub fn assistant(content: &str) -> Message {
        Message::new("assistant", content)
    }
}

/// Why a template could not be loaded or rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    #[error("tokenizer_config.json: {0}")]
    Config(String),
    #[error("the chat template does not parse: {0}")]
    Syntax(String),
    #[error("the chat template failed: {0}")]
    Render(String),
    #[error("no built-in chat template is named {name:?} (built in: {known})")]
    UnknownBuiltin { name: String, known: String },
}

/// Chat templates by name for files that carry none, as llama.cpp's
/// `--chat-template NAME` has them (`llm_chat_apply_template`): each renders
/// exactly what llama.cpp's built-in of that name writes. None writes BOS:
/// [`encode_chat`] adds it when the vocabulary asks for it, as llama.cpp's
/// tokenizer does. Whitespace between tags is `{{ "\n" }}` so that Jinja's
/// block trimming cannot eat it.
pub const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (
        "chatml",
        concat!(
            "{%- for m in messages -%}<|im_start|>{{ m.role }}{{ '\n' }}{{ m.content }}<|im_end|>{{ '\n' }}{%- endfor -%}",
            "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\n' }}{%- endif -%}"
        ),
    ),
    (
        // google/gemma-*-it: no system role (its text joins the next user
        // turn), the assistant is `model`, contents trimmed.
        "gemma",
        concat!(
            "{%- set ns = namespace(system='') -%}",
            "{%- for m in messages -%}",
            "{%- if m.role == 'system' -%}{%- set ns.system = ns.system + m.content.strip() -%}",
            "{%- else -%}",
            "{%- set role = 'model' if m.role == 'assistant' else m.role -%}",
            "<start_of_turn>{{ role }}{{ '\n' }}",
            "{%- if ns.system and role != 'model' -%}{{ ns.system }}{{ '\n\n' }}{%- set ns.system = '' -%}{%- endif -%}",
            "{{ m.content.strip() }}<end_of_turn>{{ '\n' }}",
            "{%- endif -%}",
            "{%- endfor -%}",
            "{%- if add_generation_prompt -%}<start_of_turn>model{{ '\n' }}{%- endif -%}"
        ),
    ),
    (
        "llama3",
        concat!(
            "{%- for m in messages -%}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ '\n\n' }}{{ m.content.strip() }}<|eot_id|>{%- endfor -%}",
            "{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>{{ '\n\n' }}{%- endif -%}"
        ),
    ),
    (
        "phi3",
        concat!(
            "{%- for m in messages -%}<|{{ m.role }}|>{{ '\n' }}{{ m.content }}<|end|>{{ '\n' }}{%- endfor -%}",
            "{%- if add_generation_prompt -%}<|assistant|>{{ '\n' }}{%- endif -%}"
        ),
    ),
    (
        "zephyr",
        concat!(
            "{%- for m in messages -%}<|{{ m.role }}|>{{ '\n' }}{{ m.content }}<|endoftext|>{{ '\n' }}{%- endfor -%}",
            "{%- if add_generation_prompt -%}<|assistant|>{{ '\n' }}{%- endif -%}"
        ),
    ),
];

/// The names of [`BUILTIN_TEMPLATES`], for messages.
pub fn builtin_template_names() -> String {
    BUILTIN_TEMPLATES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// A compiled chat template with the special-token texts it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat_template";

/// minijinja fuel one render may spend. Fuel pays for each template
/// instruction (1) and for each byte of data the engine makes or reads
/// (1/64: strings and lists built by operators, filter inputs and results,
/// output), so it bounds both the time and the data of a render: at most
/// 2 M instructions and 128 MiB made. The largest conversation a real
/// template renders within [`MAX_RENDERED_BYTES`] takes about a fifth of it
/// (test `real_templates_fit_the_render_bounds`).
pub const RENDER_FUEL: u64 = 2_000_000;

/// Bytes a rendered conversation may have: eight times the text of a
/// 128 K-token context window, far less than the heap.
pub const MAX_RENDERED_BYTES: usize = 4 << 20;

/// Heap one render may hold, kept by [`crate::heap_cap`] where the binary
/// installs its allocator (the CLI, the canister). It backs the two
/// minijinja paths that make data without paying fuel (flattening a chain
/// of lists joined with `+`, writing out a value that holds another many
/// times as `tojson` does). The largest real render holds 15 MiB (Qwen's
/// template on a 4 MiB message: test `real_templates_fit_the_render_bounds`).
///
/// Natively the cap sits above what fuel lets the paid paths hold (160 MiB
/// at most), so those still end with a "ran out of fuel" error rather than
/// the abort the cap causes. In the canister a passed cap traps the message,
/// which is as clean, and the cap must bite before the 40 B instruction
/// limit does (the `tojson` path holds about 210 MiB at 40 B instructions),
/// so there it is lower: the canister's prompts are at most 128 KiB.
pub const RENDER_HEAP_CAP: usize = if cfg!(target_family = "wasm") {
    RENDER_HEAP_CAP_IN_CANISTER
} else {
    256 << 20
};

/// [`RENDER_HEAP_CAP`] in the canister's wasm.
pub const RENDER_HEAP_CAP_IN_CANISTER: usize = 64 << 20;

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts of those
    /// tokens (empty when the model has none).
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| ChatError::Syntax(e.to_string()))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(RENDER_FUEL));
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| ChatError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// The template of a Hugging Face `tokenizer_config.json`, if it has one
    /// (`chat_template` as a string, or the entry named "default" of a list
    /// of `{name, template}`), with its `bos_token`/`eos_token` (strings or
    /// `{"content": …}` objects). `separate_template`: the text of a
    /// `chat_template.jinja` file, which newer checkpoints ship instead.
    pub fn from_tokenizer_config(
        tokenizer_config_json: &str,
        separate_template: Option<&str>,
    ) -> Result<Option<ChatTemplate>, ChatError> {
        let config: serde_json::Value = serde_json::from_str(tokenizer_config_json)
            .map_err(|e| ChatError::Config(format!("not valid JSON: {e}")))?;
        let token_text = |key: &str| -> Option<String> {
            match config.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let source = match (separate_template, config.get("chat_template")) {
            (Some(text), _) => text.to_string(),
            (None, None | Some(serde_json::Value::Null)) => return Ok(None),
            (None, Some(serde_json::Value::String(s))) => s.clone(),
            (None, Some(serde_json::Value::Array(list))) => {
                let named = |want: &str| {
                    list.iter()
                        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(want))
                };
                let entry = named("default")
                    .or_else(|| list.first())
                    .ok_or_else(|| ChatError::Config("chat_template is an empty list".into()))?;
                entry
                    .get("template")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| ChatError::Config("chat_template entry has no \"template\" string".into()))?
                    .to_string()
            }
            (None, Some(other)) => {
                return Err(ChatError::Config(format!(
                    "chat_template must be a string or a list, found {other}"
                )))
            }
        };
        ChatTemplate::new(
            &source,
            token_text("bos_token").as_deref(),
            token_text("eos_token").as_deref(),
        )
        .map(Some)
    }

    /// The built-in template `name` (see [`BUILTIN_TEMPLATES`]) with the
    /// texts of the model's BOS and EOS tokens.
    pub fn builtin(name: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<ChatTemplate, ChatError> {
        let (_, source) = BUILTIN_TEMPLATES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| ChatError::UnknownBuiltin {
                name: name.to_string(),
                known: builtin_template_names(),
            })?;
        ChatTemplate::new(source, bos_token, eos_token)
    }

    /// The built-in template `name` with the texts of `tok`'s BOS and EOS.
    pub fn builtin_for(name: &str, tok: &crate::tokenizer::Tokenizer) -> Result<ChatTemplate, ChatError> {
        let text = |id: Option<u32>| id.and_then(|id| tok.token_str(id));
        ChatTemplate::builtin(name, text(tok.bos_id()), text(tok.eos_id()))
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), if it has
    /// one, with the texts of its BOS and EOS tokens.
    pub fn from_gguf(gguf: &Gguf) -> Result<Option<ChatTemplate>, ChatError> {
        let Some(source) = gguf.get(GGUF_CHAT_TEMPLATE).and_then(|v| v.as_str()) else {
            return Ok(None);
        };
        let token_text = |key: &str| -> Option<String> {
            let id = gguf.get(key)?.as_u64()? as usize;
            let tokens = gguf.get("tokenizer.ggml.tokens")?.as_array()?;
            tokens.get(id)?.as_str().map(str::to_string)
        };
        ChatTemplate::new(
            source,
            token_text("tokenizer.ggml.bos_token_id").as_deref(),
            token_text("tokenizer.ggml.eos_token_id").as_deref(),
        )
        .map(Some)
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with
    /// the header of an assistant turn, ready for the model to continue.
    /// The result contains special-token texts (`<|im_start|>`, and BOS when
    /// the template writes it): tokenize it with special-token parsing and
    /// without adding another BOS.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::Syntax(describe(&e)))?;
        let context = minijinja::context! {
            messages => messages
                .iter()
                .map(|m| minijinja::context! { role => &m.role, content => &m.content })
                .collect::<Vec<_>>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        let mut out = CappedWriter(Vec::new());
        let rendered = crate::heap_cap::with_cap(RENDER_HEAP_CAP, "the chat template", || {
            template.render_captured_to(context, &mut out)
        });
        rendered.map_err(|e| {
            if out.0.len() >= MAX_RENDERED_BYTES {
                ChatError::Render(format!("the rendered text exceeds {MAX_RENDERED_BYTES} bytes"))
            } else {
                ChatError::Render(describe(&e))
            }
        })?;
        String::from_utf8(out.0).map_err(|_| ChatError::Render("the rendered text is not UTF-8".into()))
    }

    /// Texts that end the assistant's turn: EOS, then the end-of-turn
    /// markers the template writes, without duplicates.
    pub fn stop_strings(&self) -> Vec<String> {
        let mut stops = Vec::new();
        if !self.eos_token.is_empty() {
            stops.push(self.eos_token.clone());
        }
        for marker in END_OF_TURN_MARKERS {
            if self.source.contains(marker) && !stops.iter().any(|s| s == marker) {
                stops.push(marker.to_string());
            }
        }
        stops
    }

    /// [`Self::stop_strings`] as token ids, through `token_id` (the
    /// tokenizer's text → id lookup); texts that are not one token are skipped.
    pub fn stop_token_ids(&self, token_id: impl Fn(&str) -> Option<u32>) -> Vec<u32> {
        let mut ids: Vec<u32> = self.stop_strings().iter().filter_map(|s| token_id(s)).collect();
        ids.dedup();
        ids
    }
}

/// A minijinja error with its cause chain on one line.
fn describe(e: &minijinja::Error) -> String {
    let mut text = match e.detail() {
        Some(detail) if e.kind() == ErrorKind::InvalidOperation => detail.to_string(),
        _ => e.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A conversation rendered with `template` (generation prompt added) and
/// tokenized with special tokens recognized: the prompt ids, and the ids that
/// end the model's turn (the template's stop tokens and EOS).
pub fn encode_chat(
    tok: &crate::tokenizer::Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
) -> Result<(Vec<u32>, Vec<u32>), ChatError> {
    let text = template.render(messages, true)?;
    // Templates that write BOS themselves must not get a second one.
    let writes_bos = !template.bos_token().is_empty() && text.starts_with(template.bos_token());
    let ids = tok.encode_with(
        &text,
        crate::tokenizer::EncodeOptions {
            add_bos: tok.add_bos_default() && !writes_bos,
            parse_special: true,
        },
    );
    let mut stops = template.stop_token_ids(|t| tok.token_id(t));
    if let Some(id) = tok.eos_id().filter(|id| !stops.contains(id)) {
        stops.push(id);
    }
    Ok((ids, stops))
}

/// A render target that refuses to grow past [`MAX_RENDERED_BYTES`].
struct CappedWriter(Vec<u8>);

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
            self.0.resize(MAX_RENDERED_BYTES, 0);
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}ok",
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.render(&[Message::user("x")], false).unwrap(), "ok");
        let err = t.render(&[Message::assistant("x")], false).unwrap_err();
        assert_eq!(
            err,
            ChatError::Render("Conversations must start with a user message".into())
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = ChatTemplate::new("{% for m in messages %}", None, None).unwrap_err();
        assert!(matches!(err, ChatError::Syntax(_)), "{err}");
    }

    #[test]
    fn python_methods_and_block_trimming() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {{ m.content.strip().upper() }}|{{ m.content.startswith(' a') }}\n{% endfor %}",
            None,
            None,
        )
        .unwrap();
        // As Jinja2 with trim_blocks + lstrip_blocks: the newline after a
        // block tag goes, indentation before an expression stays.
        assert_eq!(t.render(&[Message::user(" ab ")], false).unwrap(), "  AB|True\n");
    }

    #[test]
    fn list_of_named_templates_and_token_objects() {
        let config = r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D"}],
                         "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"}"#;
        let t = ChatTemplate::from_tokenizer_config(config, None).unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "<s>D");
        assert_eq!(t.stop_strings(), vec!["</s>".to_string()]);
        assert!(ChatTemplate::from_tokenizer_config("{}", None).unwrap().is_none());
    }
}
