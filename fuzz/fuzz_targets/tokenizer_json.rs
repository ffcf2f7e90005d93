//! A Hugging Face `tokenizer.json` (and, after a NUL byte, its
//! `tokenizer_config.json`): loaded, then used to encode and decode texts
//! with special tokens, bytes outside the vocabulary and long runs.
#![no_main]

use icllm_engine::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

const TEXTS: &[&str] = &[
    "Hello world in the end\n\n123 4567!",
    "<|im_start|>user\nhi<|im_end|>\n<s></s>",
    "Cửa Việt 🦙 naïve\t\r\n  spaces",
];

fuzz_target!(|input: &[u8]| {
    let split = input.iter().position(|&b| b == 0).unwrap_or(input.len());
    let Ok(json) = std::str::from_utf8(&input[..split]) else { return };
    let config = input.get(split + 1..).and_then(|c| std::str::from_utf8(c).ok());
    let Ok(tokenizer) = Tokenizer::from_hf_json(json, config) else { return };
    for text in TEXTS.iter().copied().chain([json.get(..json.len().min(256)).unwrap_or("")]) {
        let ids = tokenizer.encode(text, true);
        let _ = tokenizer.decode(&ids);
    }
});
