//! Chat templates render the texts their models were trained on.
//!
//! Expected strings are written by hand from each template's documented
//! format, not taken from this project's output:
//! - `testdata/tokenizers/qwen2.5/tokenizer_config.json` carries the
//!   ChatML template of the Qwen3 generation (with `<think>` handling, and
//!   no default system prompt: with no system message the text starts at
//!   the user turn);
//! - Llama 3.2 Instruct's template (`testdata/templates`, see its README): a system
//!   header always comes first, dated "26 Jul 2024" because `strftime_now`
//!   is not defined (see `chat.rs`).

use icllm_engine::chat::{ChatTemplate, Message};
use icllm_engine::heap_cap::{self, print_and_abort, CappedAlloc};
use std::path::PathBuf;

/// As in the CLI and the canister: renders hold at most `RENDER_HEAP_CAP`.
#[global_allocator]
static ALLOCATOR: CappedAlloc<std::alloc::System> = CappedAlloc::new(std::alloc::System, print_and_abort);

fn testdata(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn qwen() -> ChatTemplate {
    ChatTemplate::from_tokenizer_config(&testdata("tokenizers/qwen2.5/tokenizer_config.json"), None)
        .unwrap()
        .expect("the Qwen tokenizer_config has a chat_template")
}

fn llama() -> ChatTemplate {
    let template = testdata("templates/llama3.2-instruct.chat_template.jinja");
    let config = testdata("tokenizers/llama3.2/tokenizer_config.json");
    // The base model's config has no template of its own …
    assert!(ChatTemplate::from_tokenizer_config(&config, None).unwrap().is_none());
    // … so the Instruct template is supplied as a separate file, with the config's tokens.
    ChatTemplate::from_tokenizer_config(&config, Some(&template))
        .unwrap()
        .unwrap()
}

#[test]
fn qwen_single_user_message() {
    assert_eq!(
        qwen().render(&[Message::user("Hi")], true).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen_system_message() {
    assert_eq!(
        qwen()
            .render(&[Message::system("You are a pirate."), Message::user("Hi")], true)
            .unwrap(),
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen_multi_turn() {
    let conversation = [
        Message::user("Hi"),
        Message::assistant("Hello! How can I help?"),
        Message::user("Tell me a joke."),
    ];
    assert_eq!(
        qwen().render(&conversation, true).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello! How can I help?<|im_end|>\n\
         <|im_start|>user\nTell me a joke.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn qwen_final_assistant_turn_gets_its_think_block() {
    // An assistant turn after the last user query is rendered with its
    // (empty or extracted) reasoning: exercises .strip/.lstrip/.split.
    let t = qwen();
    assert_eq!(
        t.render(&[Message::user("Hi"), Message::assistant("Hello!")], false)
            .unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n"
    );
    assert_eq!(
        t.render(
            &[
                Message::user("Hi"),
                Message::assistant("<think>\nponder\n</think>\n\nHello!")
            ],
            false
        )
        .unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nponder\n</think>\n\nHello!<|im_end|>\n"
    );
}

#[test]
fn qwen_stop_strings() {
    // eos_token is <|im_end|>; <|endoftext|> does not occur in the template.
    assert_eq!(qwen().stop_strings(), vec!["<|im_end|>".to_string()]);
}

#[test]
fn llama_single_user_message() {
    assert_eq!(
        llama().render(&[Message::user("Hi")], true).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn llama_system_message_and_multi_turn() {
    let conversation = [
        Message::system("  You are a pirate.\n"), // trimmed by the template
        Message::user("Hi"),
        Message::assistant("Arr!"),
        Message::user("Tell me a joke."),
    ];
    assert_eq!(
        llama().render(&conversation, true).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a pirate.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nArr!<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    // Without the generation prompt the text ends after the last turn.
    let text = llama().render(&conversation[..2], false).unwrap();
    assert!(
        text.ends_with("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"),
        "{text:?}"
    );
}

#[test]
fn llama_stop_strings() {
    let stops = llama().stop_strings();
    assert_eq!(stops, vec!["<|end_of_text|>".to_string(), "<|eot_id|>".to_string()]);
    let ids = llama().stop_token_ids(|t| match t {
        "<|end_of_text|>" => Some(128001),
        "<|eot_id|>" => Some(128009),
        _ => None,
    });
    assert_eq!(ids, vec![128001, 128009]);
}

/// `n` turns of a user asking and the assistant answering.
fn small_talk(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                Message::user("How are you today?")
            } else {
                Message::assistant("Fine, thanks.")
            }
        })
        .collect()
}

/// A template from a hostile model file cannot run without end or fill the
/// heap: loops stop at the fuel limit, output at `MAX_RENDERED_BYTES`, deep
/// recursion at minijinja's own depth limit, values that double or square
/// each round at the fuel their bytes cost; each with an error, soon. A long
/// real conversation is far from those limits.
#[test]
fn renders_are_bounded_in_time_and_output() {
    use icllm_engine::chat::{ChatError, MAX_RENDERED_BYTES};
    let conversation = small_talk(1000);
    let text = qwen().render(&conversation, true).unwrap();
    assert!(text.matches("<|im_start|>").count() > 1000, "every turn is rendered");

    let doubling = |step: &str| {
        format!(
            "{{% set ns = namespace(s='ab') %}}{{% for i in range(200) %}}{{% set ns.s = {step} %}}{{% endfor %}}{{{{ ns.s|length }}}}"
        )
    };
    let hostile = [
        (
            "endless loops",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}".to_string(),
        ),
        (
            "huge output",
            "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}".to_string(),
        ),
        (
            "recursion",
            "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}".to_string(),
        ),
        ("a doubling string", doubling("ns.s ~ ns.s")),
        ("a doubling format", doubling("'%s%s'|format(ns.s, ns.s)")),
        ("a doubling join", doubling("[ns.s, ns.s]|join('')")),
        ("a squaring replace", doubling("ns.s|replace('a', ns.s)")),
        (
            "a list held twice, written out",
            "{% set ns = namespace(s=[1]) %}{% for i in range(100) %}{% set ns.s = [ns.s, ns.s] %}{% endfor %}{{ ns.s }}"
                .to_string(),
        ),
        (
            "a repeated conversation",
            "{% for i in range(1000) %}{% set x = 0 ~ 8800 * messages %}{% endfor %}".to_string(),
        ),
    ];
    for (what, source) in hostile {
        let template = ChatTemplate::new(&source, None, None).unwrap();
        let started = std::time::Instant::now();
        let (result, held) = heap_cap::peak_of(|| template.render(&conversation[..2], true));
        eprintln!("{what}: {} MiB held at most", held >> 20);
        let Err(ChatError::Render(message)) = &result else {
            panic!("{what}: {result:?}")
        };
        assert!(started.elapsed().as_secs() < 10, "{what} took {:?}", started.elapsed());
        match what {
            "huge output" | "a list held twice, written out" => {
                assert!(message.contains(&MAX_RENDERED_BYTES.to_string()), "{message}")
            }
            "recursion" => {}
            _ => assert!(message.contains("ran out of fuel"), "{what}: {message}"),
        }
    }
}

/// The real templates (Qwen, Phi-3, Llama 3.2 and the built-ins) render the
/// longest conversations the bounds allow, 4,000 turns or one message of
/// nearly `MAX_RENDERED_BYTES`, within the fuel: the bounds stop hostile
/// templates, not real ones.
#[test]
fn real_templates_fit_the_render_bounds() {
    use icllm_engine::chat::{BUILTIN_TEMPLATES, MAX_RENDERED_BYTES, RENDER_HEAP_CAP};
    let phi3 = ChatTemplate::from_tokenizer_config(&testdata("tokenizers/phi-3/tokenizer_config.json"), None)
        .unwrap()
        .unwrap();
    let mut templates = vec![("qwen2.5", qwen()), ("llama3.2", llama()), ("phi-3", phi3)];
    for (name, _) in BUILTIN_TEMPLATES {
        templates.push((name, ChatTemplate::builtin(name, Some("<s>"), Some("</s>")).unwrap()));
    }
    let turns = small_talk(4000);
    let long = [Message::user(&"y".repeat(MAX_RENDERED_BYTES - (64 << 10)))];
    let mut most_held = 0;
    for (name, template) in &templates {
        for (what, conversation) in [("4,000 turns", &turns[..]), ("one long message", &long[..])] {
            let (text, held) = heap_cap::peak_of(|| template.render(conversation, true));
            let text = text.unwrap_or_else(|e| panic!("{name}, {what}: {e}"));
            let content: usize = conversation.iter().map(|m| m.content.len()).sum();
            assert!(text.len() > content, "{name}, {what}: every message is in the text");
            eprintln!("{name}, {what}: {} MiB held at most", held >> 20);
            most_held = most_held.max(held);
        }
    }
    assert!(most_held > 0, "the allocator counts");
    assert!(
        most_held < RENDER_HEAP_CAP / 8,
        "a real render holds {most_held} bytes: too close to the cap"
    );
}

/// The two minijinja paths that make data without paying fuel (flattening
/// a long chain of `+`-joined lists; writing out a value that holds another
/// twice per level) stop at `RENDER_HEAP_CAP`: the allocation that would
/// pass it is refused, the program ends with the reason, soon. Each runs in
/// a child process (this test binary, asked for one template), since
/// passing the cap ends the process.
#[test]
fn renders_that_make_data_without_fuel_stop_at_the_heap_cap() {
    use icllm_engine::chat::RENDER_HEAP_CAP;
    const CHILD: &str = "ICLLM_TEST_HOSTILE_TEMPLATE";
    let doubling = |step: &str, show: &str| {
        format!(
            "{{% set ns = namespace(s=[1]) %}}{{% for i in range(100) %}}{{% set ns.s = {step} %}}{{% endfor %}}{{{{ ns.s{show} }}}}"
        )
    };
    let hostile = [
        ("a list joined to itself", doubling("ns.s + ns.s", "|length")),
        (
            "a list held twice, written as JSON",
            doubling("[ns.s, ns.s]", "|tojson"),
        ),
    ];
    if let Ok(which) = std::env::var(CHILD) {
        let (_, source) = hostile.iter().find(|(what, _)| *what == which).unwrap();
        let result = ChatTemplate::new(source, None, None)
            .unwrap()
            .render(&small_talk(2), true);
        panic!("{which}: the render ended without passing the cap: {result:?}");
    }
    for (what, _) in &hostile {
        let started = std::time::Instant::now();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "renders_that_make_data_without_fuel_stop_at_the_heap_cap",
                "--test-threads=1",
            ])
            .env(CHILD, what)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert!(!child.status.success(), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the chat template tried to hold more than {} MiB of memory",
                RENDER_HEAP_CAP >> 20
            )),
            "{what}: {stderr}"
        );
        assert!(started.elapsed().as_secs() < 20, "{what} took {:?}", started.elapsed());
        eprintln!("{what}: stopped in {:?}", started.elapsed());
    }
}

/// Each built-in template renders what llama.cpp's built-in of that name
/// renders (testdata/templates/builtin-llama-cpp.json, made by
/// tools/reference/make-builtin-chat-vectors.py), with and without the
/// generation prompt; an unknown name lists the known ones.
#[test]
fn builtin_templates_render_as_llama_cpp_builtins() {
    let doc: serde_json::Value = serde_json::from_str(&testdata("templates/builtin-llama-cpp.json")).unwrap();
    let mut checked = 0;
    for (name, cases) in doc["templates"].as_object().unwrap() {
        let template = ChatTemplate::builtin(name, Some("<bos>"), Some("<eos>")).unwrap();
        for case in cases.as_array().unwrap() {
            let messages: Vec<Message> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let add = case["add_generation_prompt"].as_bool().unwrap();
            assert_eq!(
                template.render(&messages, add).unwrap(),
                case["text"].as_str().unwrap(),
                "{name} {messages:?} add_generation_prompt {add}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 40, "5 templates × 4 conversations × 2");
    let err = ChatTemplate::builtin("vicuna", None, None).unwrap_err().to_string();
    assert_eq!(
        err,
        "no built-in chat template is named \"vicuna\" (built in: chatml, gemma, llama3, phi3, zephyr)"
    );
    let gemma = ChatTemplate::builtin("gemma", None, None).unwrap();
    assert_eq!(gemma.stop_strings(), ["<end_of_turn>"]);
}
