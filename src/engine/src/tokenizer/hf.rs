//! Reading a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) into a
//! [`BpeTokenizer`] (byte-level BPE) or an [`SpmTokenizer`]
//! (SentencePiece-style BPE: `byte_fallback`, spaces as `▁`; see
//! [`sentencepiece_bpe`]). A Unigram model is refused.
//!
//! Byte-level BPE: `model.type = "BPE"` without byte fallback, merges as
//! `"a b"` strings or `["a", "b"]` pairs, `ignore_merges`; pre-tokenizers
//! `Split` (Regex or String pattern, `Isolated`), `ByteLevel`, `Digits`,
//! `Punctuation` and `Sequence`s of them; post-processors
//! `TemplateProcessing`, `RobertaProcessing`, `BertProcessing`, `ByteLevel`
//! and `Sequence`s of them (they decide whether BOS/EOS are added); decoder
//! `ByteLevel`; `added_tokens` (`special: true` → control token, matched in
//! text only with `parse_special`; otherwise user-defined, always matched).
//!
//! Not applied: an `NFC` normalizer (accepted: text already in NFC — nearly
//! all text — is unchanged by it; llama.cpp does not apply it either), and
//! the `lstrip`/`single_word`/`normalized` flags of added tokens (`rstrip` is).
//!
//! The file is large (Qwen2.5: 11 MB, 151k tokens, 151k merges): vocabulary
//! texts are parsed straight into the final `Vec<String>`, and merges borrow
//! from the JSON text where it has no escapes.

use super::bpe::{split_merge, BpeParts, BpeTokenizer};
use super::pretok::{PreTokenizer, GPT2_PATTERN};
use super::spm::{parse_byte_token, SpacePrefix, SpmParts, SpmTokenizer};
use super::vocab::{Vocab, VocabParts, MAX_VOCAB};
use super::{TokenType, Tokenizer, TokenizerError};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

#[derive(Deserialize)]
struct TokenizerJson<'a> {
    #[serde(borrow)]
    model: ModelJson<'a>,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    #[serde(default)]
    normalizer: Option<Value>,
    #[serde(default)]
    pre_tokenizer: Option<Value>,
    #[serde(default)]
    post_processor: Option<Value>,
    #[serde(default)]
    decoder: Option<Value>,
}

#[derive(Deserialize)]
struct ModelJson<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    vocab: VocabTexts,
    #[serde(borrow)]
    merges: Merges<'a>,
    #[serde(default)]
    ignore_merges: bool,
    #[serde(default)]
    byte_fallback: bool,
    #[serde(default)]
    unk_token: Option<String>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
    #[serde(default)]
    end_of_word_suffix: Option<String>,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    special: bool,
    #[serde(default)]
    rstrip: bool,
}

/// `model.vocab`, `{"text": id, …}`, as texts indexed by id.
struct VocabTexts(Vec<Option<String>>);

impl<'de> Deserialize<'de> for VocabTexts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VocabTexts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from token text to id")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VocabTexts, A::Error> {
                let mut texts: Vec<Option<String>> = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((text, id)) = map.next_entry::<String, u32>()? {
                    let i = id as usize;
                    if i >= MAX_VOCAB {
                        return Err(de::Error::custom(format!("token id {id} above the limit {MAX_VOCAB}")));
                    }
                    if i >= texts.len() {
                        texts.resize(i + 1, None);
                    }
                    texts[i] = Some(text);
                }
                Ok(VocabTexts(texts))
            }
        }
        d.deserialize_map(V)
    }
}

/// `model.merges`: `["a b", …]` or `[["a", "b"], …]`.
struct Merges<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

/// A string that borrows from the JSON text when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_string())))
            }
        }
        let t: Text<'de> = d.deserialize_str(V)?;
        Ok(t)
    }
}

/// One merge, either form.
struct MergeEntry<'a>(Cow<'a, str>, Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for MergeEntry<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MergeEntry<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a merge, \"a b\" or [\"a\", \"b\"]")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<MergeEntry<'de>, E> {
                let (a, b) = split_merge(s).ok_or_else(|| E::custom(format!("bad merge {s:?}")))?;
                Ok(MergeEntry(Cow::Borrowed(a), Cow::Borrowed(b)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<MergeEntry<'de>, E> {
                let (a, b) = split_merge(s).ok_or_else(|| E::custom(format!("bad merge {s:?}")))?;
                Ok(MergeEntry(Cow::Owned(a.to_string()), Cow::Owned(b.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MergeEntry<'de>, A::Error> {
                let a: Text<'de> = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b: Text<'de> = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(MergeEntry(a.0, b.0))
            }
        }
        let m: MergeEntry<'de> = d.deserialize_any(V)?;
        Ok(m)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Merges<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries: Vec<MergeEntry<'a>> = Vec::deserialize(d)?;
        Ok(Merges(entries.into_iter().map(|m| (m.0, m.1)).collect()))
    }
}

/// SentencePiece's visible space.
const META: &str = "\u{2581}";

fn unsupported(what: impl Into<String>) -> TokenizerError {
    TokenizerError::HfUnsupported { what: what.into() }
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn from_hf_json(json: &str, config_json: Option<&str>) -> Result<Tokenizer, TokenizerError> {
    let tj: TokenizerJson = serde_json::from_str(json).map_err(|e| {
        // Models of another kind (Unigram, WordPiece) have another shape:
        // name the kind rather than the first field that does not fit.
        let kind = serde_json::from_str::<Value>(json)
            .ok()
            .and_then(|v| Some(v.get("model")?.get("type")?.as_str()?.to_string()));
        match kind.as_deref() {
            Some("Unigram") => TokenizerError::HfUnigram,
            Some(kind) if kind != "BPE" => unsupported(format!("model type {kind:?}")),
            _ => TokenizerError::HfJson(e.to_string()),
        }
    })?;
    let config: Option<Value> = match config_json {
        Some(c) => {
            Some(serde_json::from_str(c).map_err(|e| TokenizerError::HfJson(format!("tokenizer_config.json: {e}")))?)
        }
        None => None,
    };

    let model = &tj.model;
    match model.kind.as_deref() {
        Some("BPE") | None => {}
        Some("Unigram") => return Err(TokenizerError::HfUnigram),
        Some(other) => return Err(unsupported(format!("model type {other:?}"))),
    }
    for (name, v) in [
        ("continuing_subword_prefix", &model.continuing_subword_prefix),
        ("end_of_word_suffix", &model.end_of_word_suffix),
    ] {
        if v.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(unsupported(format!("model.{name} {v:?}")));
        }
    }
    if model.byte_fallback {
        sentencepiece_bpe(tj, config.as_ref()).map(Tokenizer::Spm)
    } else {
        byte_level_bpe(tj, config.as_ref()).map(Tokenizer::Bpe)
    }
}

/// GPT-2-style BPE: bytes as characters, a regex pre-tokenizer.
fn byte_level_bpe(mut tj: TokenizerJson<'_>, config: Option<&Value>) -> Result<BpeTokenizer, TokenizerError> {
    check_normalizer(tj.normalizer.as_ref())?;
    match tj.decoder.as_ref().map(type_of) {
        None | Some("ByteLevel") => {}
        Some(other) => return Err(unsupported(format!("decoder {other:?}"))),
    }

    // Pre-tokenizer.
    let mut patterns = Vec::new();
    let mut add_prefix_space = false;
    if let Some(p) = &tj.pre_tokenizer {
        collect_pre_tokenizer(p, &mut patterns, &mut add_prefix_space)?;
    }
    let pre = PreTokenizer::new(&patterns, add_prefix_space)?;

    let (parts, add_eos) = vocab_parts(&mut tj, config, None)?;
    let vocab = Vocab::from_parts(parts);
    let model = tj.model;
    let merges = model.merges.0;
    BpeTokenizer::from_parts(BpeParts {
        vocab,
        merges: Box::new(merges.iter().map(|(a, b)| Ok((a.as_ref(), b.as_ref())))),
        pre,
        pre_name: "hf".to_string(),
        ignore_merges: model.ignore_merges,
        add_eos,
    })
}

/// SentencePiece's BPE as Hugging Face writes it (Llama 2, Mistral, Phi-3):
/// spaces escaped as `▁`, characters not in the vocabulary as `<0xNN>`
/// byte tokens, merges in rank order.
///
/// It runs on the SentencePiece tokenizer, whose merge priority is a score
/// per token: each token scores by the first merge that makes it
/// ([`merge_scores`]). Hugging Face's converter writes every split of a
/// token into two tokens as a merge, ordered by SentencePiece score, so
/// both choose the same merges. They can differ where one text holds two
/// different splits of the same token at once (one score here, two ranks
/// there), and on files whose merges leave some split out (not made by
/// that converter): SentencePiece merges any pair that makes a token.
fn sentencepiece_bpe(mut tj: TokenizerJson<'_>, config: Option<&Value>) -> Result<SpmTokenizer, TokenizerError> {
    let space_prefix = space_prefix(tj.normalizer.as_ref(), tj.pre_tokenizer.as_ref())?;
    check_spm_decoder(tj.decoder.as_ref())?;
    let unk_text = tj.model.unk_token.clone();
    let (mut parts, add_eos) = vocab_parts(&mut tj, config, unk_text.as_deref())?;
    // Byte tokens are the model's `<0xNN>`; the unknown token is the model's.
    for (i, text) in parts.texts.iter().enumerate() {
        if parts.types[i] == TokenType::Normal && parse_byte_token(text).is_some() {
            parts.types[i] = TokenType::Byte;
        }
    }
    if let Some(unk) = parts.unk {
        parts.types[unk as usize] = TokenType::Unknown;
    }
    let vocab = Vocab::from_parts(parts);
    let scores = merge_scores(&vocab, &tj.model.merges.0);
    SpmTokenizer::from_parts(SpmParts {
        vocab,
        scores,
        space_prefix,
        add_eos,
    })
}

/// SentencePiece scores from BPE merges in rank order: the token the k-th
/// merge makes first scores -(k + 1) (higher merges first), so
/// SentencePiece's "highest score first" picks what "lowest rank first"
/// does. Tokens no merge makes (characters, bytes, specials) score below
/// all of them.
fn merge_scores(vocab: &Vocab, merges: &[(Cow<'_, str>, Cow<'_, str>)]) -> Vec<f32> {
    let mut scores: Vec<Option<f32>> = vec![None; vocab.len()];
    let mut made = 0u32;
    let mut joined = String::new();
    for (left, right) in merges {
        if vocab.id(left).is_none() || vocab.id(right).is_none() {
            continue;
        }
        joined.clear();
        joined.push_str(left);
        joined.push_str(right);
        if let Some(id) = vocab.id(&joined) {
            let score = &mut scores[id as usize];
            if score.is_none() {
                made += 1;
                *score = Some(-(made as f32));
            }
        }
    }
    let lowest = -(made as f32 + 1.0);
    scores.into_iter().map(|s| s.unwrap_or(lowest)).collect()
}

/// How spaces become `▁`: the "legacy" `Prepend` + `Replace` normalizer
/// (Llama 2, Mistral, Phi-3), or a `Metaspace` pre-tokenizer.
fn space_prefix(normalizer: Option<&Value>, pre: Option<&Value>) -> Result<SpacePrefix, TokenizerError> {
    let (mut prepend, mut replace) = (false, false);
    if let Some(n) = normalizer.filter(|n| !n.is_null()) {
        let list = match type_of(n) {
            "Sequence" => n
                .get("normalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            _ => vec![n.clone()],
        };
        for n in &list {
            let str_field = |k: &str| n.get(k).and_then(Value::as_str);
            match type_of(n) {
                "Prepend" if str_field("prepend") == Some(META) => prepend = true,
                "Replace"
                    if n.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str) == Some(" ")
                        && str_field("content") == Some(META) =>
                {
                    replace = true
                }
                other => {
                    return Err(unsupported(format!(
                        "normalizer {other:?} in a SentencePiece-style tokenizer"
                    )))
                }
            }
        }
    }
    let mut metaspace = None;
    if let Some(p) = pre.filter(|p| !p.is_null()) {
        if type_of(p) != "Metaspace" {
            return Err(unsupported(format!(
                "pre_tokenizer {:?} in a SentencePiece-style tokenizer (expected Metaspace or none)",
                type_of(p)
            )));
        }
        if p.get("replacement").and_then(Value::as_str).unwrap_or(META) != META {
            return Err(unsupported("Metaspace with a replacement other than \"▁\""));
        }
        // Splitting into words at each ▁ stops merges across words, which
        // SentencePiece does not do.
        if p.get("split").and_then(Value::as_bool).unwrap_or(true) {
            return Err(unsupported(
                "Metaspace with split: true (SentencePiece does not split at spaces)",
            ));
        }
        let scheme = match p.get("prepend_scheme").and_then(Value::as_str) {
            Some(s) => s.to_string(),
            None => match p.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true) {
                true => "always".into(),
                false => "never".into(),
            },
        };
        metaspace = Some(match scheme.as_str() {
            "always" => SpacePrefix::Metaspace { first_only: false },
            "first" => SpacePrefix::Metaspace { first_only: true },
            "never" => SpacePrefix::Never,
            other => return Err(unsupported(format!("Metaspace prepend_scheme {other:?}"))),
        });
    }
    match (prepend, replace, metaspace) {
        (_, _, Some(_)) if prepend || replace => Err(unsupported(
            "both a Metaspace pre-tokenizer and a ▁ normalizer (the prefix would be added twice)",
        )),
        (_, _, Some(m)) => Ok(m),
        (true, true, None) => Ok(SpacePrefix::Always),
        (false, true, None) => Ok(SpacePrefix::Never),
        (_, false, None) => Err(unsupported(
            "SentencePiece-style tokenizer whose spaces are not written as \"▁\" (no Replace normalizer, no Metaspace)",
        )),
    }
}

/// The decoders that undo SentencePiece's escaping (what decoding does here).
fn check_spm_decoder(decoder: Option<&Value>) -> Result<(), TokenizerError> {
    let Some(d) = decoder.filter(|d| !d.is_null()) else {
        return Ok(());
    };
    let list = match type_of(d) {
        "Sequence" => d.get("decoders").and_then(Value::as_array).cloned().unwrap_or_default(),
        _ => vec![d.clone()],
    };
    for d in &list {
        match type_of(d) {
            "Replace" | "ByteFallback" | "Fuse" | "Strip" | "Metaspace" => {}
            other => {
                return Err(unsupported(format!(
                    "decoder {other:?} in a SentencePiece-style tokenizer"
                )))
            }
        }
    }
    Ok(())
}

/// Texts, types and special ids by id: the model's vocabulary, then the
/// added tokens (moved out of `tj`). Also whether prompts end with EOS. `model_unk` is the
/// model's `unk_token`, the unknown token unless the config names one.
fn vocab_parts(
    tj: &mut TokenizerJson<'_>,
    config: Option<&Value>,
    model_unk: Option<&str>,
) -> Result<(VocabParts, bool), TokenizerError> {
    // Moved out, not copied: the vocabulary is large and read only here.
    let mut texts = std::mem::take(&mut tj.model.vocab.0);
    let max_added = tj.added_tokens.iter().map(|t| t.id as usize + 1).max().unwrap_or(0);
    if max_added > MAX_VOCAB {
        return Err(TokenizerError::HfJson(format!(
            "added token id {} above the limit {MAX_VOCAB}",
            max_added - 1
        )));
    }
    if texts.len() < max_added {
        texts.resize(max_added, None);
    }
    let mut types: Vec<TokenType> = texts
        .iter()
        .map(|t| {
            if t.is_some() {
                TokenType::Normal
            } else {
                TokenType::Unused
            }
        })
        .collect();
    let mut rstrip = Vec::new();
    for t in &tj.added_tokens {
        let i = t.id as usize;
        texts[i] = Some(t.content.clone());
        types[i] = if t.special {
            TokenType::Control
        } else {
            TokenType::UserDefined
        };
        if t.rstrip {
            rstrip.push(t.id);
        }
    }
    if texts.is_empty() {
        return Err(TokenizerError::HfJson("the vocabulary is empty".into()));
    }
    let texts: Vec<String> = texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[EMPTY_{i}]")))
        .collect();

    // Special ids. The post-processor says which tokens frame a sequence;
    // tokenizer_config.json names BOS/EOS and may override adding them.
    let find = |text: &str| texts.iter().position(|t| t == text).map(|i| i as u32);
    let mut framing = Framing::default();
    if let Some(p) = &tj.post_processor {
        collect_post_processor(p, &mut framing)?;
    }
    let frame_id = |f: &Option<FrameToken>| -> Option<u32> {
        match f {
            Some(FrameToken { id: Some(id), .. }) => Some(*id),
            Some(FrameToken { text, .. }) => find(text),
            None => None,
        }
    };
    let first_id = frame_id(&framing.first);
    let last_id = frame_id(&framing.last);
    let config_token = |key: &str| -> Option<u32> {
        let v = config?.get(key)?;
        let text = match v {
            Value::String(s) => s.as_str(),
            Value::Object(o) => o.get("content")?.as_str()?,
            _ => return None,
        };
        find(text)
    };
    let config_bool = |key: &str| config.and_then(|c| c.get(key)).and_then(Value::as_bool);
    // BOS: the token the template puts first, else the config's; EOS (what
    // ends generation): the config's, else the token the template puts last.
    let bos = first_id.or(config_token("bos_token"));
    let eos = config_token("eos_token").or(last_id);
    let unk = config_token("unk_token").or(model_unk.and_then(find));
    let add_bos = config_bool("add_bos_token").unwrap_or(first_id.is_some());
    let add_eos = config_bool("add_eos_token").unwrap_or(last_id.is_some());
    let n = texts.len();
    for id in [bos, eos, unk].into_iter().flatten() {
        if id as usize >= n {
            return Err(TokenizerError::HfJson(format!(
                "special token id {id} outside the vocabulary"
            )));
        }
    }
    let parts = VocabParts {
        texts,
        types,
        bos,
        eos,
        unk,
        eot: None,
        add_bos,
        rstrip,
    };
    Ok((parts, add_eos))
}

fn check_normalizer(n: Option<&Value>) -> Result<(), TokenizerError> {
    let Some(n) = n else { return Ok(()) };
    if n.is_null() {
        return Ok(());
    }
    match type_of(n) {
        "NFC" => Ok(()),
        "Sequence" => {
            for n in n.get("normalizers").and_then(Value::as_array).into_iter().flatten() {
                check_normalizer(Some(n))?;
            }
            Ok(())
        }
        other => Err(unsupported(format!("normalizer {other:?}"))),
    }
}

fn collect_pre_tokenizer(
    p: &Value,
    patterns: &mut Vec<String>,
    add_prefix_space: &mut bool,
) -> Result<(), TokenizerError> {
    if p.is_null() {
        return Ok(());
    }
    match type_of(p) {
        "Sequence" => {
            let list = p
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or_else(|| TokenizerError::HfJson("pre_tokenizer Sequence without pretokenizers".into()))?;
            for q in list {
                collect_pre_tokenizer(q, patterns, add_prefix_space)?;
            }
        }
        "Split" => {
            let behavior = p.get("behavior").and_then(Value::as_str).unwrap_or("");
            if behavior != "Isolated" {
                return Err(unsupported(format!("Split behavior {behavior:?}")));
            }
            if p.get("invert").and_then(Value::as_bool).unwrap_or(false) {
                return Err(unsupported("inverted Split"));
            }
            let pattern = p.get("pattern");
            if let Some(re) = pattern.and_then(|v| v.get("Regex")).and_then(Value::as_str) {
                patterns.push(re.to_string());
            } else if let Some(s) = pattern.and_then(|v| v.get("String")).and_then(Value::as_str) {
                patterns.push(escape_literal(s));
            } else {
                return Err(TokenizerError::HfJson("Split without a Regex or String pattern".into()));
            }
        }
        "ByteLevel" => {
            *add_prefix_space |= p.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false);
            if p.get("use_regex").and_then(Value::as_bool).unwrap_or(true) {
                patterns.push(GPT2_PATTERN.to_string());
            }
        }
        "Digits" => {
            let individual = p.get("individual_digits").and_then(Value::as_bool).unwrap_or(false);
            patterns.push(if individual { r"\p{N}" } else { r"\p{N}+" }.to_string());
        }
        "Punctuation" => {
            let class = r"[\p{P}!-/:-@\[-`{-~]";
            match p.get("behavior").and_then(Value::as_str).unwrap_or("Isolated") {
                "Isolated" => patterns.push(class.to_string()),
                "Contiguous" => patterns.push(format!("{class}+")),
                other => return Err(unsupported(format!("Punctuation behavior {other:?}"))),
            }
        }
        other => return Err(unsupported(format!("pre_tokenizer {other:?}"))),
    }
    Ok(())
}

/// A regex matching `s` literally.
fn escape_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~ \t\n\r".contains(c) {
            match c {
                '\t' => out.push_str(r"\t"),
                '\n' => out.push_str(r"\n"),
                '\r' => out.push_str(r"\r"),
                ' ' => out.push(' '),
                _ => {
                    out.push('\\');
                    out.push(c);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A token a post-processor puts before or after the sequence.
#[derive(Debug, Clone)]
struct FrameToken {
    text: String,
    id: Option<u32>,
}

#[derive(Debug, Default)]
struct Framing {
    first: Option<FrameToken>,
    last: Option<FrameToken>,
}

fn collect_post_processor(p: &Value, framing: &mut Framing) -> Result<(), TokenizerError> {
    if p.is_null() {
        return Ok(());
    }
    match type_of(p) {
        "Sequence" => {
            for q in p.get("processors").and_then(Value::as_array).into_iter().flatten() {
                collect_post_processor(q, framing)?;
            }
        }
        "ByteLevel" => {}
        "TemplateProcessing" => {
            let single = p
                .get("single")
                .and_then(Value::as_array)
                .ok_or_else(|| TokenizerError::HfJson("TemplateProcessing without `single`".into()))?;
            let specials = p.get("special_tokens");
            let token = |item: &Value| -> Option<FrameToken> {
                let name = item.get("SpecialToken")?.get("id")?.as_str()?;
                let id = specials
                    .and_then(|s| s.get(name))
                    .and_then(|s| s.get("ids"))
                    .and_then(Value::as_array)
                    .and_then(|ids| ids.first())
                    .and_then(Value::as_u64)
                    .map(|id| id as u32);
                Some(FrameToken {
                    text: name.to_string(),
                    id,
                })
            };
            let seq_at = single.iter().position(|i| i.get("Sequence").is_some());
            let Some(seq_at) = seq_at else {
                return Err(TokenizerError::HfJson(
                    "TemplateProcessing `single` has no sequence".into(),
                ));
            };
            if seq_at > 1 || single.len() > seq_at + 2 {
                return Err(unsupported("TemplateProcessing with more than one token on a side"));
            }
            framing.first = single[..seq_at].first().and_then(token);
            framing.last = single.get(seq_at + 1).and_then(token);
        }
        "RobertaProcessing" | "BertProcessing" => {
            let pair = |key: &str| -> Option<FrameToken> {
                let v = p.get(key)?.as_array()?;
                Some(FrameToken {
                    text: v.first()?.as_str()?.to_string(),
                    id: v.get(1).and_then(Value::as_u64).map(|id| id as u32),
                })
            };
            framing.first = pair("cls");
            framing.last = pair("sep");
        }
        other => return Err(unsupported(format!("post_processor {other:?}"))),
    }
    Ok(())
}
