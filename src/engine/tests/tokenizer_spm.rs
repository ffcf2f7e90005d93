//! SentencePiece conformance: llama.cpp's tokenizer test vectors (from
//! `testdata/vocab`) and the stories260K golden prompt.

use icllm_engine::format::gguf::Gguf;
use icllm_engine::tokenizer::{EncodeOptions, StreamDecoder, Tokenizer};
use std::path::PathBuf;

mod common;
use common::{read, root, vectors, vocab_file};

fn load(path: PathBuf) -> Tokenizer {
    let bytes = read(path);
    Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap()
}

fn stories() -> Tokenizer {
    load(root().join("models/stories260Ktok512.gguf"))
}

fn check_vectors(name: &str) {
    let tok = load(vocab_file(name));
    let cases = vectors(name);
    let mut failures = Vec::new();
    for (i, (text, want)) in cases.iter().enumerate() {
        let got = tok.encode(text, false);
        if &got != want {
            failures.push(format!("case {i} {text:?}: encode\n  got  {got:?}\n  want {want:?}"));
        }
        let back = tok.decode(&got);
        if &back != text {
            failures.push(format!("case {i} {text:?}: decode gave {back:?}"));
        }
        // With BOS the same text comes back too.
        let mut with_bos = tok.encode(text, true);
        assert_eq!(with_bos.remove(0), tok.bos_id().unwrap());
        assert_eq!(&with_bos, &got);
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(cases.len(), 46);
}

#[test]
fn llama_spm_vectors() {
    check_vectors("ggml-vocab-llama-spm.gguf");
}

#[test]
fn phi3_vectors() {
    check_vectors("ggml-vocab-phi-3.gguf");
}

#[test]
fn phi3_special_tokens() {
    let tok = load(vocab_file("ggml-vocab-phi-3.gguf"));
    let id = |s: &str| tok.token_id(s).unwrap();
    let (user, end, assistant) = (id("<|user|>"), id("<|end|>"), id("<|assistant|>"));
    assert!(tok.is_eog(end) && tok.is_eog(tok.eos_id().unwrap()));
    // Control tokens only with parse_special; Phi-3's specials eat the
    // whitespace after them (llama.cpp), so the newlines vanish.
    let chat = "<|user|>\nHi<|end|>\n<|assistant|>\n";
    let parsed = tok.encode_with(
        chat,
        EncodeOptions {
            add_bos: true,
            parse_special: true,
        },
    );
    assert_eq!(parsed, [1, user, id("▁Hi"), end, assistant]);
    let raw = tok.encode(chat, false);
    assert!(!raw.contains(&user) && !raw.contains(&end), "{raw:?}");
    assert_eq!(tok.decode(&raw), chat);
    // "</s>" is user-defined in this vocabulary: matched even in raw text.
    assert_eq!(tok.encode("a</s>", false), [id("▁a"), 2]);
}

#[test]
fn stories_prompt_encodes_like_llama_cpp() {
    let tok = stories();
    assert_eq!(tok.vocab_size(), 512);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(tok.add_bos_default());
    assert_eq!(tok.token_str(1), Some("<s>"));
    assert!(tok.is_control(1));
    let ids = tok.encode("Joe loves writing stories", tok.add_bos_default());
    assert_eq!(
        ids,
        [1, 410, 454, 414, 411, 401, 360, 419, 263, 420, 275, 299, 349, 304, 417, 406]
    );
    assert_eq!(tok.decode(&ids), "Joe loves writing stories");
}

#[test]
fn stories_generation_streams_like_llama_cpp() {
    let tok = stories();
    let prompt = tok.encode("Joe loves writing stories", true);
    let generated = [426, 346, 397, 355, 267, 337, 335, 345, 267, 422];
    let want = ". He liked to play with his toy";

    let mut d = StreamDecoder::new(&tok, prompt.last().copied());
    let streamed: String = generated.iter().map(|&id| d.push(&tok, id)).collect();
    assert_eq!(streamed, want);
    assert_eq!(d.finish(), "");

    let all: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
    assert_eq!(tok.decode(&all), format!("Joe loves writing stories{want}"));

    // After a BOS-only prompt the first word has no leading space.
    let once = tok.token_id("▁Once").unwrap();
    let mut d = StreamDecoder::new(&tok, Some(1));
    assert_eq!(d.push(&tok, once), "Once");
    assert_eq!(tok.decode(&[1, once, once]), "Once Once");
}

#[test]
fn encode_speed() {
    let tok = load(vocab_file("ggml-vocab-llama-spm.gguf"));
    let cases = vectors("ggml-vocab-llama-spm.gguf");
    let mut text = String::new();
    while text.len() < 10 * 1024 {
        for (t, _) in &cases {
            text.push_str(t);
            text.push(' ');
        }
    }
    let start = std::time::Instant::now();
    let ids = tok.encode(&text, true);
    let took = start.elapsed();
    eprintln!("encoded {} bytes into {} tokens in {took:?}", text.len(), ids.len());
    assert_eq!(tok.decode(&ids), text);
    assert!(took.as_secs_f64() < 2.0, "encoding 10 KB took {took:?}");
}
