//! A chat template as a model file or `tokenizer_config.json` carries it:
//! compiled and rendered with a short conversation. A hostile template must
//! end with a value or an error, in bounded time and output.
#![no_main]

use icllm_engine::chat::{ChatTemplate, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(source) = std::str::from_utf8(input) else { return };
    let Ok(template) = ChatTemplate::new(source, Some("<s>"), Some("</s>")) else { return };
    let messages = [
        Message::system("You are helpful."),
        Message::user("Hi {{ there }} {% raw %}"),
        Message::assistant("Hello!"),
        Message::user("Tell me a story."),
    ];
    for add_generation_prompt in [false, true] {
        let _ = template.render(&messages, add_generation_prompt);
    }
    let _ = template.stop_strings();
});
