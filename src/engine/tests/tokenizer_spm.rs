//! SentencePiece conformance: llama.cpp's tokenizer test vectors (from
//! `testdata/vocab`), the stories260K golden prompt, and Hugging Face's
//! SentencePiece-style tokenizer.json files of the same vocabularies.

use icllm_engine::format::gguf::{writer, Gguf};
use icllm_engine::tokenizer::{EncodeOptions, GgufVocabOptions, StreamDecoder, TokenType, Tokenizer, TokenizerError};
use std::path::PathBuf;

mod common;
use common::{read, root, testdata, vectors, vocab_file};

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

// ---- SentencePiece-style tokenizer.json (Llama 2, Phi-3) ----
//
// `testdata/tokenizers/{llama-spm,phi-3}` were made by Hugging Face's own
// converter from the vocabularies above (see testdata/README.md); the
// `hf-cases.json` beside each holds the Hugging Face `tokenizers` library's
// ids for framed prompts (BOS added, special tokens in the text matched).

fn hf_json(model: &str) -> Tokenizer {
    let dir = testdata("tokenizers").join(model);
    let json = String::from_utf8(read(dir.join("tokenizer.json"))).unwrap();
    let config = String::from_utf8(read(dir.join("tokenizer_config.json"))).unwrap();
    Tokenizer::from_hf_json(&json, Some(&config)).unwrap()
}

/// (text, ids) pairs the Hugging Face library gave, BOS first.
fn hf_cases(model: &str) -> Vec<(String, Vec<u32>)> {
    let bytes = read(testdata("tokenizers").join(model).join("hf-cases.json"));
    let cases: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
    cases
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32);
            (c["text"].as_str().unwrap().to_string(), ids.collect())
        })
        .collect()
}

const FRAMED: EncodeOptions = EncodeOptions {
    add_bos: true,
    parse_special: true,
};

/// Every llama.cpp vector and every Hugging Face framed case through `tok`;
/// returns the failures.
fn spm_json_failures(tok: &Tokenizer, model: &str, vectors_name: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, (text, want)) in vectors(vectors_name).iter().enumerate() {
        let got = tok.encode(text, false);
        if &got != want {
            failures.push(format!("vector {i} {text:?}:\n  got  {got:?}\n  want {want:?}"));
        }
        if &tok.decode(&got) != text {
            failures.push(format!("vector {i} {text:?}: decodes to {:?}", tok.decode(&got)));
        }
    }
    for (text, want) in hf_cases(model) {
        let got = tok.encode_with(&text, FRAMED);
        if got != want {
            failures.push(format!("framed {text:?}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    failures
}

#[test]
fn llama2_and_phi3_tokenizer_json_give_hugging_face_ids() {
    for (model, vectors_name) in [
        ("llama-spm", "ggml-vocab-llama-spm.gguf"),
        ("phi-3", "ggml-vocab-phi-3.gguf"),
    ] {
        let tok = hf_json(model);
        assert_eq!(tok.model_name(), "llama", "{model}: runs as SentencePiece");
        assert_eq!((tok.bos_id(), tok.unk_id()), (Some(1), Some(0)), "{model}");
        assert!(tok.add_bos_default() && !tok.add_eos_default(), "{model}");
        let failures = spm_json_failures(&tok, model, vectors_name);
        assert!(failures.is_empty(), "{model}:\n{}", failures.join("\n"));
        eprintln!(
            "{model}: {} vectors and {} framed cases give the Hugging Face ids",
            vectors(vectors_name).len(),
            hf_cases(model).len()
        );
    }
    let phi3 = hf_json("phi-3");
    assert_eq!(phi3.eos_id(), phi3.token_id("<|endoftext|>"));
    assert!(phi3.is_eog(phi3.token_id("<|end|>").unwrap()));
}

/// The tokenizer.json and llama.cpp's GGUF of the same vocabulary agree on
/// texts, types and special ids, and encode 10 KB alike.
#[test]
fn llama2_tokenizer_json_loads_like_its_gguf() {
    let json = hf_json("llama-spm");
    let gguf = load(vocab_file("ggml-vocab-llama-spm.gguf"));
    assert_eq!(json.vocab_size(), gguf.vocab_size());
    for id in 0..gguf.vocab_size() as u32 {
        assert_eq!(json.token_str(id), gguf.token_str(id), "token {id}");
        assert_eq!(json.token_type(id), gguf.token_type(id), "token {id} type");
    }
    assert_eq!(
        (json.bos_id(), json.eos_id(), json.unk_id()),
        (gguf.bos_id(), gguf.eos_id(), gguf.unk_id())
    );
    let text = ten_kb();
    assert_eq!(json.encode(&text, true), gguf.encode(&text, true));
}

fn ten_kb() -> String {
    let cases = vectors("ggml-vocab-llama-spm.gguf");
    let mut text = String::new();
    while text.len() < 10 * 1024 {
        for (t, _) in &cases {
            text.push_str(t);
            text.push(' ');
        }
    }
    text
}

/// tokenizer.json → GGUF metadata (as `icllm convert` writes it, padded to
/// a model's vocabulary) → tokenizer: llama.cpp's keys, and the same ids.
#[test]
fn llama2_tokenizer_json_converts_to_gguf_with_the_same_ids() {
    let hf = hf_json("llama-spm");
    let md = hf
        .gguf_metadata(GgufVocabOptions {
            pad_to: 32_008,
            config_bos: Some(1),
            config_eos: Some(2),
        })
        .unwrap();
    let bytes = writer::write(&md, &[]);
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "llama");
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "default");
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 32_008);
    assert_eq!(tok.token_str(32_000), Some("[PAD1]"));
    assert_eq!(tok.token_type(32_007), Some(TokenType::Unused));
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.unk_id()), (Some(1), Some(2), Some(0)));
    assert!(tok.add_bos_default() && !tok.add_eos_default());
    let failures = spm_json_failures(&tok, "llama-spm", "ggml-vocab-llama-spm.gguf");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let text = ten_kb();
    assert_eq!(tok.encode(&text, true), hf.encode(&text, true));

    // Scores keep SentencePiece's order: a token llama.cpp's GGUF scores
    // higher (and above its -1e9 whitespace pieces) scores higher here too.
    let real = match load(vocab_file("ggml-vocab-llama-spm.gguf")) {
        Tokenizer::Spm(t) => t,
        _ => unreachable!(),
    };
    let ours = match &tok {
        Tokenizer::Spm(t) => t,
        _ => unreachable!(),
    };
    let mut merged: Vec<u32> = (259..32_000u32)
        .filter(|&id| real.score(id).unwrap() > -1e8 && tok.token_str(id).unwrap().chars().count() > 1)
        .collect();
    merged.sort_by(|&a, &b| real.score(b).unwrap().total_cmp(&real.score(a).unwrap()));
    assert!(merged.len() > 29_000, "{}", merged.len());
    assert!(
        merged.windows(2).all(|w| ours.score(w[0]) > ours.score(w[1])),
        "score order differs from SentencePiece's"
    );
}

#[test]
fn phi3_tokenizer_json_strips_after_chat_markers_and_is_not_converted() {
    let tok = hf_json("phi-3");
    let id = |s: &str| tok.token_id(s).unwrap();
    let chat = "<|user|>\nHi<|end|>\n<|assistant|>\n";
    assert_eq!(
        tok.encode_with(chat, FRAMED),
        [1, id("<|user|>"), id("▁Hi"), id("<|end|>"), id("<|assistant|>")]
    );
    // rstrip has no GGUF key (llama.cpp infers it from the model name).
    let err = tok.gguf_metadata(GgufVocabOptions::default()).unwrap_err();
    assert!(matches!(err, TokenizerError::NotGguf(_)), "{err}");
}

#[test]
fn unigram_tokenizer_json_is_refused_with_the_reason() {
    let unigram = r#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Metaspace"},
        "post_processor": null, "decoder": {"type": "Metaspace"},
        "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["▁a", -1.5]], "byte_fallback": true}}"#;
    let err = Tokenizer::from_hf_json(unigram, None).unwrap_err();
    assert_eq!(err, TokenizerError::HfUnigram);
    assert!(err.to_string().contains("Unigram"), "{err}");
}
