//! Unit tests on a small synthetic SentencePiece vocabulary. The conformance
//! tests against llama.cpp's vectors are in `tests/tokenizer_spm.rs`.

use super::*;
use crate::format::gguf::writer::write;
use crate::format::gguf::Value;

const BYTE0: u32 = 3; // <0x00>; byte b is BYTE0 + b

/// <unk> <s> </s> <0x00>..<0xFF>, then the normal tokens below, then `<|user|>`.
fn metadata() -> Vec<(String, Value)> {
    let mut tokens = vec![
        ("<unk>".to_string(), 0.0f32, 2),
        ("<s>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
    ];
    for b in 0..=255u8 {
        tokens.push((format!("<0x{b:02X}>"), 0.0, 6));
    }
    for (t, s) in [
        ("▁", -10.0),
        ("a", -10.0),
        ("b", -10.0),
        ("c", -10.0),
        ("▁a", -1.0),
        ("ab", -2.0),
        ("▁ab", -3.0),
        ("cc", -5.0),
    ] {
        tokens.push((t.to_string(), s, 1));
    }
    tokens.push(("<|user|>".into(), 0.0, 4));
    vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| Value::String(t.0.clone())).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(tokens.iter().map(|t| Value::F32(t.1)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(tokens.iter().map(|t| Value::I32(t.2)).collect()),
        ),
    ]
}

fn load(md: &[(String, Value)]) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_gguf(&Gguf::parse(&write(md, &[])).unwrap())
}

fn tok() -> Tokenizer {
    load(&metadata()).unwrap()
}

fn id(t: &Tokenizer, s: &str) -> u32 {
    t.token_id(s).unwrap_or_else(|| panic!("{s:?} not in vocab"))
}

fn set(md: &mut Vec<(String, Value)>, key: &str, v: Value) {
    md.retain(|(k, _)| k != key);
    md.push((key.to_string(), v));
}

#[test]
fn merges_by_score_then_leftmost() {
    let t = tok();
    // ▁a (-1) merges before ab (-2), then ▁a+b = ▁ab.
    assert_eq!(t.encode("ab", false), vec![id(&t, "▁ab")]);
    assert_eq!(t.encode("ab", true), vec![1, id(&t, "▁ab")]);
    // Two equal-score "cc" candidates: the leftmost wins.
    assert_eq!(t.encode("ccc", false), vec![id(&t, "▁"), id(&t, "cc"), id(&t, "c")]);
    assert_eq!(t.encode("", false), Vec::<u32>::new());
    assert_eq!(t.encode("", true), vec![1]);
}

#[test]
fn byte_fallback_and_decode() {
    let t = tok();
    let ids = t.encode("aé", false);
    assert_eq!(ids, vec![id(&t, "▁a"), BYTE0 + 0xC3, BYTE0 + 0xA9]);
    assert_eq!(t.decode(&ids), "aé");
    assert_eq!(t.decode(&[1, id(&t, "▁a"), id(&t, "b"), 2]), "ab");
    assert_eq!(t.piece(BYTE0 + 0x41), b"A");
    assert_eq!(t.piece(1), b"");
    assert_eq!(t.token_type(BYTE0), Some(TokenType::Byte));
    assert!(t.is_control(1) && t.is_eog(2) && !t.is_eog(1));
}

#[test]
fn unk_when_no_byte_tokens() {
    let mut md = metadata();
    let tokens = ["<unk>", "<s>", "</s>", "▁", "a"];
    set(
        &mut md,
        "tokenizer.ggml.tokens",
        Value::Array(tokens.iter().map(|s| Value::String(s.to_string())).collect()),
    );
    set(&mut md, "tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0); 5]));
    set(
        &mut md,
        "tokenizer.ggml.token_type",
        Value::Array([2, 3, 3, 1, 1].map(Value::I32).to_vec()),
    );
    let t = load(&md).unwrap();
    assert_eq!(t.encode("aé", false), vec![3, 4, 0, 0]);
}

#[test]
fn stream_decoder_holds_split_characters() {
    let t = tok();
    let mut d = StreamDecoder::new(&t, Some(1));
    assert_eq!(d.push(&t, id(&t, "▁a")), "a"); // leading space dropped after BOS
    assert_eq!(d.push(&t, BYTE0 + 0xC3), "");
    assert_eq!(d.pending_len(), 1);
    // A job may store the decoder between the two halves.
    let json = serde_json::to_string(&d).unwrap();
    let mut d: StreamDecoder = serde_json::from_str(&json).unwrap();
    assert_eq!(d.push(&t, BYTE0 + 0xA9), "é");
    assert_eq!(d.push(&t, id(&t, "▁ab")), " ab");
    // A 4-byte character (🦙, F0 9F A6 99) over four tokens.
    let mut got = String::new();
    for b in "🦙".bytes() {
        got.push_str(&d.push(&t, BYTE0 + b as u32));
    }
    assert_eq!(got, "🦙");
    // Invalid bytes become U+FFFD; an unfinished tail is flushed by finish().
    assert_eq!(d.push(&t, BYTE0 + 0xFF), "\u{FFFD}");
    assert_eq!(d.push(&t, BYTE0 + 0xE2), "");
    assert_eq!(d.finish(), "\u{FFFD}");
}

#[test]
fn stream_decoder_context() {
    let t = tok();
    let a = id(&t, "▁a");
    assert_eq!(StreamDecoder::new(&t, None).push(&t, a), "a");
    assert_eq!(StreamDecoder::new(&t, Some(1)).push(&t, a), "a");
    assert_eq!(StreamDecoder::new(&t, Some(a)).push(&t, a), " a");
    // Control tokens are transparent; a BOS mid-stream starts a new text.
    let mut d = StreamDecoder::new(&t, Some(a));
    assert_eq!(d.push(&t, 2), "");
    assert_eq!(d.push(&t, 1), "");
    assert_eq!(d.push(&t, a), "a");
}

#[test]
fn user_defined_and_special_tokens() {
    let t = tok();
    let user = id(&t, "<|user|>");
    // User-defined tokens are matched in raw text; the text after them gets a
    // space prefix again (llama.cpp).
    assert_eq!(t.encode("<|user|>ab", false), vec![user, id(&t, "▁ab")]);
    assert_eq!(t.encode("a<|user|>", false), vec![id(&t, "▁a"), user]);
    assert_eq!(t.decode(&[user, id(&t, "▁ab")]), "<|user|> ab");
    // Control tokens only with parse_special.
    let parsed = t.encode_with(
        "<s>a",
        EncodeOptions {
            add_bos: false,
            parse_special: true,
        },
    );
    assert_eq!(parsed, vec![1, id(&t, "▁a")]);
    let raw = t.encode("<s>a", false);
    assert!(!raw.contains(&1), "{raw:?}");
    assert_eq!(t.decode(&raw), "<s>a");
}

#[test]
fn add_space_prefix_off() {
    let mut md = metadata();
    set(&mut md, "tokenizer.ggml.add_space_prefix", Value::Bool(false));
    let t = load(&md).unwrap();
    assert_eq!(t.encode("ab", false), vec![id(&t, "ab")]);
    assert_eq!(t.decode(&[1, id(&t, "▁ab")]), " ab");
}

#[test]
fn metadata_errors() {
    let mut md = metadata();
    set(&mut md, "tokenizer.ggml.model", Value::String("bert".into()));
    let e = load(&md).unwrap_err();
    assert_eq!(e, TokenizerError::UnsupportedModel("bert".into()));
    assert!(e.to_string().contains("unsupported tokenizer model \"bert\""), "{e}");

    // BPE needs merges, and a pre-tokenizer it knows.
    let mut md = metadata();
    set(&mut md, "tokenizer.ggml.model", Value::String("gpt2".into()));
    assert_eq!(load(&md).unwrap_err(), TokenizerError::MissingKey { key: keys::MERGES });
    set(
        &mut md,
        "tokenizer.ggml.merges",
        Value::Array(vec![Value::String("a b".into())]),
    );
    set(&mut md, "tokenizer.ggml.pre", Value::String("no-such-pre".into()));
    assert_eq!(
        load(&md).unwrap_err(),
        TokenizerError::UnsupportedPreTokenizer("no-such-pre".into())
    );
    set(&mut md, "tokenizer.ggml.pre", Value::String("gpt-2".into()));
    let t = load(&md).unwrap();
    assert_eq!(t.model_name(), "gpt2");
    assert_eq!(t.encode("ab", false), vec![id(&t, "ab")], "the merge a b applies");

    let mut md = metadata();
    md.retain(|(k, _)| k != "tokenizer.ggml.model");
    assert_eq!(load(&md).unwrap_err(), TokenizerError::MissingKey { key: keys::MODEL });

    let mut md = metadata();
    md.retain(|(k, _)| k != "tokenizer.ggml.scores");
    assert_eq!(load(&md).unwrap_err(), TokenizerError::MissingKey { key: keys::SCORES });

    let mut md = metadata();
    set(&mut md, "tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0); 3]));
    let e = load(&md).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::LengthMismatch {
                key: keys::SCORES,
                found: 3,
                ..
            }
        ),
        "{e}"
    );

    let mut md = metadata();
    set(&mut md, "tokenizer.ggml.eos_token_id", Value::U32(100_000));
    let e = load(&md).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::BadTokenId {
                key: keys::EOS_ID,
                id: 100_000,
                ..
            }
        ),
        "{e}"
    );

    let mut md = metadata();
    set(&mut md, "tokenizer.ggml.tokens", Value::Array(vec![]));
    assert!(matches!(
        load(&md).unwrap_err(),
        TokenizerError::BadKey { key: keys::TOKENS, .. }
    ));

    let mut md = metadata();
    set(&mut md, "tokenizer.ggml.add_bos_token", Value::U8(1));
    assert!(matches!(
        load(&md).unwrap_err(),
        TokenizerError::BadKey { key: keys::ADD_BOS, .. }
    ));

    let mut md = metadata();
    set(&mut md, "tokenizer.ggml.add_bos_token", Value::Bool(false));
    assert!(!load(&md).unwrap().add_bos_default());
    assert!(tok().add_bos_default());
}

// ---- SentencePiece-style tokenizer.json: where the ▁ prefix goes ----

/// A tiny SentencePiece-style tokenizer.json; `space` is its normalizer and
/// pre-tokenizer fields. Token 3 is the only byte token, `<0x41>` ("A").
fn spm_json(space: &str) -> String {
    let specials: Vec<String> = ["<unk>", "<s>", "</s>"]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                r#"{{"id": {i}, "content": "{c}", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#
            )
        })
        .collect();
    format!(
        r#"{{"version": "1.0", "added_tokens": [{}], {space}, "post_processor": null,
        "decoder": {{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": false}},
        "model": {{"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true,
          "vocab": {{"<unk>": 0, "<s>": 1, "</s>": 2, "<0x41>": 3, "▁": 4, "a": 5, "b": 6, "▁a": 7, "ab": 8, "▁ab": 9, "▁▁": 10}},
          "merges": [["▁", "a"], ["a", "b"], ["▁a", "b"], ["▁", "ab"], ["▁", "▁"]]}}}}"#,
        specials.join(", ")
    )
}

fn metaspace(scheme: &str, split: bool) -> String {
    format!(
        r#""normalizer": null, "pre_tokenizer": {{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "{scheme}", "split": {split}}}"#
    )
}

const LEGACY: &str = r#""normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
    {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}, "pre_tokenizer": null"#;

/// Each style's ids for the same texts, as the Hugging Face `tokenizers`
/// library (0.20.3 and 0.23.3) gives them for this file (special tokens
/// in the text matched, no BOS).
#[test]
fn spm_json_space_prefix_follows_hugging_face() {
    let texts = [" a", "a", "ab b", "<s>a", "a<s>a", " ab<s> b", "A"];
    let cases: [(String, [&[u32]; 7]); 4] = [
        (
            LEGACY.to_string(),
            [
                &[4, 7],
                &[7],
                &[9, 4, 6],
                &[1, 7],
                &[7, 1, 7],
                &[4, 9, 1, 10, 6],
                &[4, 3],
            ],
        ),
        (
            metaspace("always", false),
            [&[7], &[7], &[9, 4, 6], &[1, 7], &[7, 1, 7], &[9, 1, 4, 6], &[4, 3]],
        ),
        (
            metaspace("first", false),
            [&[7], &[7], &[9, 4, 6], &[1, 5], &[7, 1, 5], &[9, 1, 4, 6], &[4, 3]],
        ),
        (
            metaspace("never", false),
            [&[7], &[5], &[8, 4, 6], &[1, 5], &[5, 1, 5], &[9, 1, 4, 6], &[3]],
        ),
    ];
    let opts = EncodeOptions {
        add_bos: false,
        parse_special: true,
    };
    for (space, want) in &cases {
        let tok = Tokenizer::from_hf_json(&spm_json(space), None).unwrap();
        assert_eq!(tok.model_name(), "llama");
        for (text, want) in texts.iter().zip(want) {
            assert_eq!(tok.encode_with(text, opts), *want, "{space}: {text:?}");
        }
    }
}

#[test]
fn spm_json_scores_follow_merge_ranks() {
    let Tokenizer::Spm(t) = Tokenizer::from_hf_json(&spm_json(LEGACY), None).unwrap() else {
        panic!("not SentencePiece");
    };
    let score = |id| t.score(id).unwrap();
    // ▁a (rank 0) > ab > ▁ab (ranks 2 and 3: one token, the first counts) > ▁▁.
    assert!(score(7) > score(8) && score(8) > score(9) && score(9) > score(10));
    // Tokens no merge makes score below all of them.
    for id in [0, 1, 3, 4, 5] {
        assert!(score(id) < score(10), "token {id}");
    }
}

#[test]
fn spm_json_what_sentencepiece_cannot_do_is_refused() {
    let err = Tokenizer::from_hf_json(&spm_json(&metaspace("always", true)), None).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::HfUnsupported { what } if what.contains("split")),
        "{err}"
    );
    let no_escape = r#""normalizer": null, "pre_tokenizer": null"#;
    let err = Tokenizer::from_hf_json(&spm_json(no_escape), None).unwrap_err();
    assert!(matches!(err, TokenizerError::HfUnsupported { .. }), "{err}");
    // Only the legacy prefix (after every special token) has a GGUF key.
    let first = Tokenizer::from_hf_json(&spm_json(&metaspace("first", false)), None).unwrap();
    let err = first.gguf_metadata(GgufVocabOptions::default()).unwrap_err();
    assert!(matches!(err, TokenizerError::NotGguf(_)), "{err}");
    for space in [LEGACY.to_string(), metaspace("never", false)] {
        let tok = Tokenizer::from_hf_json(&spm_json(&space), None).unwrap();
        let md = tok.gguf_metadata(GgufVocabOptions::default()).unwrap();
        let g = crate::format::gguf::Gguf::parse(&write(&md, &[])).unwrap();
        let back = Tokenizer::from_gguf(&g).unwrap();
        for text in [" a", "ab b", "A", " ab<s> b"] {
            assert_eq!(back.encode(text, false), tok.encode(text, false), "{space}: {text:?}");
        }
    }
}
