//! Byte-level BPE conformance: llama.cpp's tokenizer test vectors for every
//! BPE vocabulary in `testdata/vocab` that has them, and the Qwen2 / Llama 3
//! vectors against the Hugging Face tokenizer.json files in
//! `testdata/tokenizers`.
//!

use icllm_engine::chat::{encode_chat, ChatTemplate, Message};
use icllm_engine::format::gguf::{writer, Gguf, Value};
use icllm_engine::tokenizer::{EncodeOptions, GgufVocabOptions, StreamDecoder, Tokenizer};
use std::path::PathBuf;
use std::sync::OnceLock;

mod common;
use common::{read, testdata, vectors, vocab_file};

fn load_gguf(name: &str) -> Tokenizer {
    let bytes = read(vocab_file(name));
    Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap()
}

fn hf_dir(model: &str) -> PathBuf {
    testdata("tokenizers").join(model)
}

fn load_hf(model: &str) -> Tokenizer {
    let json = String::from_utf8(read(hf_dir(model).join("tokenizer.json"))).unwrap();
    let config = String::from_utf8(read(hf_dir(model).join("tokenizer_config.json"))).unwrap();
    Tokenizer::from_hf_json(&json, Some(&config)).unwrap()
}

fn qwen() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load_hf("qwen2.5"))
}

fn llama3() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| load_hf("llama3.2"))
}

/// Runs the vectors of `name` through `tok`; returns the failing case
/// numbers and prints every failure. Also checks decode(encode(x)) == x.
fn run_vectors(tok: &Tokenizer, name: &str) -> Vec<usize> {
    let cases = vectors(name);
    assert_eq!(cases.len(), 46, "{name}");
    let mut failed = Vec::new();
    for (i, (text, want)) in cases.iter().enumerate() {
        let got = tok.encode(text, false);
        let back = tok.decode(&got);
        if &got != want {
            eprintln!("{name} case {i} {text:?}: encode\n  got  {got:?}\n  want {want:?}");
            failed.push(i);
        }
        assert_eq!(&back, text, "{name} case {i}: decode(encode(x)) != x");
    }
    eprintln!("{name}: {} of {} cases pass", cases.len() - failed.len(), cases.len());
    failed
}

fn check_gguf(name: &str) {
    let tok = load_gguf(name);
    assert_eq!(tok.model_name(), "gpt2");
    let failed = run_vectors(&tok, name);
    assert!(failed.is_empty(), "{name}: cases {failed:?} fail");
}

#[test]
fn gpt2_vectors() {
    check_gguf("ggml-vocab-gpt-2.gguf");
}

#[test]
fn deepseek_llm_vectors() {
    check_gguf("ggml-vocab-deepseek-llm.gguf");
}

#[test]
fn deepseek_coder_vectors() {
    check_gguf("ggml-vocab-deepseek-coder.gguf");
}

#[test]
fn falcon_vectors() {
    check_gguf("ggml-vocab-falcon.gguf");
}

#[test]
fn mpt_vectors() {
    check_gguf("ggml-vocab-mpt.gguf");
}

#[test]
fn refact_vectors() {
    check_gguf("ggml-vocab-refact.gguf");
}

#[test]
fn starcoder_vectors() {
    check_gguf("ggml-vocab-starcoder.gguf");
}

#[test]
fn qwen2_vectors_with_qwen25_tokenizer_json() {
    let failed = run_vectors(qwen(), "ggml-vocab-qwen2.gguf");
    assert!(failed.is_empty(), "qwen2: cases {failed:?} fail");
}

/// The Hugging Face tokenizer (whose Llama 3.2 tokenizer.json has
/// `ignore_merges: false`) gives a different answer from the vectors, which
/// come from an implementation that skips merges for words in the
/// vocabulary, on exactly one case: 43, "Cửa Việt".
#[test]
fn llama_bpe_vectors_with_llama32_tokenizer_json() {
    let name = "ggml-vocab-llama-bpe.gguf";
    let failed = run_vectors(llama3(), name);
    assert_eq!(failed, [43], "llama-bpe: only case 43 may differ");
    let (text, want) = &vectors(name)[43];
    let got = llama3().encode(text, false);
    eprintln!("llama-bpe case 43 {text:?}: Hugging Face gives {got:?}, the vector says {want:?}");
    assert_eq!(text, "Cửa Việt");
}

#[test]
fn special_tokens_and_end_of_generation() {
    let parse = EncodeOptions {
        add_bos: false,
        parse_special: true,
    };
    // Qwen2.5: no BOS, EOS (generation stop) = <|im_end|>, <|endoftext|> ends too.
    let q = qwen();
    let id = |t: &Tokenizer, s: &str| t.token_id(s).unwrap_or_else(|| panic!("{s:?} not in vocab"));
    let (im_start, im_end, eot) = (id(q, "<|im_start|>"), id(q, "<|im_end|>"), id(q, "<|endoftext|>"));
    assert_eq!((im_start, im_end, eot), (151644, 151645, 151643));
    assert!(!q.add_bos_default() && !q.add_eos_default());
    assert_eq!(q.bos_id(), None);
    assert_eq!(q.eos_id(), Some(im_end));
    assert!(q.is_eog(im_end) && q.is_eog(eot) && !q.is_eog(im_start));
    let chat = "<|im_start|>user\nHi<|im_end|>\n";
    let ids = q.encode_with(chat, parse);
    assert_eq!(ids[0], im_start);
    assert_eq!(ids.iter().filter(|&&i| i == im_end).count(), 1);
    assert_eq!(q.decode(&ids), "user\nHi\n", "control tokens decode to nothing");
    // Without parse_special the markers are plain text.
    let raw = q.encode(chat, false);
    assert!(!raw.contains(&im_start) && !raw.contains(&im_end));
    assert_eq!(q.decode(&raw), chat);
    // Non-special added tokens (user-defined) are matched either way and decode to their text.
    let think = id(q, "<think>");
    assert_eq!(q.encode("<think>x", false)[0], think);
    assert_eq!(q.decode(&[think]), "<think>");

    // Llama 3.2: BOS <|begin_of_text|> added by the post-processor; <|eot_id|> and <|end_of_text|> end.
    let l = llama3();
    assert!(l.add_bos_default());
    assert_eq!(l.bos_id(), Some(128000));
    assert_eq!(l.eos_id(), Some(128001));
    assert!(l.is_eog(128001) && l.is_eog(id(l, "<|eot_id|>")) && !l.is_eog(128000));
    let ids = l.encode("Hello", true);
    assert_eq!(ids[0], 128000);
    assert_eq!(l.decode(&ids), "Hello");
    let ids = l.encode_with("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", parse);
    assert_eq!(ids[0], id(l, "<|start_header_id|>"));
    assert_eq!(*ids.last().unwrap(), id(l, "<|eot_id|>"));
}

/// tokenizer.json → GGUF metadata (as `icllm convert` writes it, padded to
/// the model's vocabulary, with config.json's BOS/EOS) → tokenizer: the same
/// ids as the tokenizer.json one on every vector (llama-bpe case 43
/// included, where Hugging Face and the vectors differ), with and without
/// special-token parsing, and the same chat prompts.
#[test]
fn tokenizer_json_converted_to_gguf_gives_the_same_ids() {
    // (model, vectors, embedding rows, config.json bos / eos, expected tokenizer.ggml.pre)
    for (model, vectors_name, pad_to, config_ids, pre) in [
        ("qwen2.5", "ggml-vocab-qwen2.gguf", 151_936, (151_643, 151_645), "qwen2"),
        (
            "llama3.2",
            "ggml-vocab-llama-bpe.gguf",
            128_256,
            (128_000, 128_001),
            "smaug-bpe",
        ),
    ] {
        let hf = if model == "qwen2.5" { qwen() } else { llama3() };
        let mut md = hf
            .gguf_metadata(GgufVocabOptions {
                pad_to,
                config_bos: Some(config_ids.0),
                config_eos: Some(config_ids.1),
            })
            .unwrap();
        let config = String::from_utf8(read(hf_dir(model).join("tokenizer_config.json"))).unwrap();
        // Llama 3.2's base config has no template: the Instruct one comes as a separate file.
        let separate = (model == "llama3.2")
            .then(|| String::from_utf8(read(testdata("templates/llama3.2-instruct.chat_template.jinja"))).unwrap());
        let hf_template = ChatTemplate::from_tokenizer_config(&config, separate.as_deref())
            .unwrap()
            .unwrap();
        md.push((
            "tokenizer.chat_template".into(),
            Value::String(hf_template.source().to_string()),
        ));
        let bytes = writer::write(&md, &[]);
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), pre, "{model}");
        let tok = Tokenizer::from_gguf(&g).unwrap();
        assert_eq!(tok.vocab_size(), pad_to.max(hf.vocab_size()), "{model}: padded");
        assert_eq!(tok.eos_id(), hf.eos_id(), "{model}");
        assert_eq!(tok.add_bos_default(), hf.add_bos_default(), "{model}");
        let mut texts: Vec<String> = vectors(vectors_name).into_iter().map(|(t, _)| t).collect();
        texts.push("<|im_start|>user\nHi<|im_end|>\n<think>x</think><|endoftext|>".into());
        texts.push("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>".into());
        for (i, text) in texts.iter().enumerate() {
            for parse_special in [false, true] {
                let opts = EncodeOptions {
                    add_bos: hf.add_bos_default(),
                    parse_special,
                };
                let want = hf.encode_with(text, opts);
                let got = tok.encode_with(text, opts);
                assert_eq!(got, want, "{model} text {i} {text:?} (parse_special {parse_special})");
                assert_eq!(tok.decode(&got), hf.decode(&want), "{model} text {i}");
            }
        }
        let template = ChatTemplate::from_gguf(&g).unwrap().unwrap();
        let chat = [Message::system("You are brief."), Message::user("Hello, 世界!")];
        assert_eq!(
            encode_chat(&tok, &template, &chat).unwrap(),
            encode_chat(hf, &hf_template, &chat).unwrap(),
            "{model}: chat prompt and stop tokens"
        );
        eprintln!(
            "{model}: {} texts give the same ids through GGUF (tokenizer.ggml.pre = {pre})",
            texts.len()
        );
    }
}

#[test]
fn gguf_bos_defaults_follow_llama_cpp() {
    let gpt2 = load_gguf("ggml-vocab-gpt-2.gguf");
    assert!(!gpt2.add_bos_default());
    assert!(gpt2.is_eog(50256));
    let ds = load_gguf("ggml-vocab-deepseek-llm.gguf");
    assert!(ds.add_bos_default());
    assert_eq!(ds.bos_id(), Some(100000));
    assert!(ds.is_eog(100001));
    let mut ids = ds.encode("Hello world", true);
    assert_eq!(ids.remove(0), 100000);
    assert_eq!(ids, ds.encode("Hello world", false));
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let q = qwen();
    let text = "Cửa Việt 🦙 naïve 你好";
    let ids = q.encode(text, false);
    let mut d = StreamDecoder::new(q, None);
    let mut streamed = String::new();
    for &id in &ids {
        let part = d.push(q, id);
        assert!(!part.contains('\u{FFFD}'), "{part:?}");
        streamed.push_str(&part);
    }
    streamed.push_str(&d.finish());
    assert_eq!(streamed, text);
}

/// 10 KB of the vector texts, mixed scripts and whitespace.
fn ten_kb(name: &str) -> String {
    let cases = vectors(name);
    let mut text = String::new();
    while text.len() < 10 * 1024 {
        for (t, _) in &cases {
            text.push_str(t);
            text.push(' ');
        }
    }
    text
}

#[test]
fn load_and_encode_speed() {
    for (model, vectors_name) in [
        ("qwen2.5", "ggml-vocab-qwen2.gguf"),
        ("llama3.2", "ggml-vocab-llama-bpe.gguf"),
    ] {
        let json = String::from_utf8(read(hf_dir(model).join("tokenizer.json"))).unwrap();
        let start = std::time::Instant::now();
        let tok = Tokenizer::from_hf_json(&json, None).unwrap();
        let load = start.elapsed();
        let text = ten_kb(vectors_name);
        let start = std::time::Instant::now();
        let ids = tok.encode(&text, false);
        let took = start.elapsed();
        eprintln!(
            "{model}: load {} tokens in {load:?}; encoded {} bytes into {} tokens in {took:?}",
            tok.vocab_size(),
            text.len(),
            ids.len()
        );
        assert_eq!(tok.decode(&ids), text);
        assert!(took.as_secs_f64() < 2.0, "encoding 10 KB took {took:?}");
    }
}
