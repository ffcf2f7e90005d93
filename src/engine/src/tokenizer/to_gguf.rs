//! Writing a tokenizer as GGUF metadata (`tokenizer.ggml.*`), so that
//! [`Tokenizer::from_gguf`] reads back a tokenizer that encodes and decodes
//! exactly like the one written — the tokenizer half of converting a
//! Hugging Face checkpoint to GGUF (see `format::convert`).
//!
//! SentencePiece tokenizers (from an SPM-style `tokenizer.json`) are written
//! as llama.cpp writes a `tokenizer.model`: tokens, scores, types (see
//! `spm_metadata`); a Metaspace prefix that skips text starting with a
//! space, and `rstrip` added tokens, are refused. For byte-level BPE, what
//! GGUF metadata cannot say is refused with the reason rather than
//! approximated:
//! - the pre-tokenizer is a *name* in GGUF (`tokenizer.ggml.pre`): the
//!   tokenizer's splitting patterns and its `ignore_merges` must be exactly
//!   those of a name this engine (and llama.cpp) knows
//!   ([`PreTokenizerSpec::gguf_name_for`]). Llama 3 `tokenizer.json` files
//!   with `ignore_merges: false` get `smaug-bpe` (Llama 3's pattern, merges
//!   always applied, as Hugging Face does), not `llama-bpe` (which skips
//!   merging for words that are whole tokens, as llama.cpp does for Llama 3,
//!   and differs on a few words, e.g. "Cửa Việt");
//! - a `ByteLevel` pre-tokenizer with `add_prefix_space`, and added tokens
//!   with `rstrip`, have no GGUF key.
//!
//! BOS and EOS: a GGUF BPE vocabulary without `tokenizer.ggml.bos_token_id`
//! (or `eos_token_id`) falls back to token 11, as llama.cpp does, which in
//! a real vocabulary is an ordinary token. So an id is always written: the
//! tokenizer's own, else the one `config.json` names (what llama.cpp's
//! converter does: Qwen2.5 gets BOS `<|endoftext|>`), else BOS falls back
//! to EOS. `add_bos_token` is written as the tokenizer decided it, so a
//! fallback BOS is never added to prompts.

use super::pretok::PreTokenizerSpec;
use super::spm::{SpacePrefix, SpmTokenizer};
use super::{keys, TokenType, Tokenizer, TokenizerError};
use crate::format::gguf::Value;

/// What the model around the tokenizer adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GgufVocabOptions {
    /// Pad the vocabulary with unused `[PAD{id}]` tokens up to this many
    /// (the model's embedding rows, as llama.cpp's converter does).
    pub pad_to: usize,
    /// BOS / EOS ids of `config.json`, used when the tokenizer names none.
    pub config_bos: Option<u32>,
    pub config_eos: Option<u32>,
}

impl Tokenizer {
    /// The `tokenizer.ggml.*` metadata of this tokenizer (see the module doc).
    pub fn gguf_metadata(&self, opts: GgufVocabOptions) -> Result<Vec<(String, Value)>, TokenizerError> {
        let bpe = match self {
            Tokenizer::Bpe(t) => t,
            Tokenizer::Spm(t) => return self.spm_metadata(t, opts),
        };
        let not_gguf = |what: String| TokenizerError::NotGguf(what);
        let vocab = bpe.vocab();
        let pre = bpe.pre_tokenizer();
        if pre.add_prefix_space {
            return Err(not_gguf(
                "its ByteLevel pre-tokenizer adds a prefix space, which no tokenizer.ggml.pre name does".into(),
            ));
        }
        if let Some(&id) = vocab.rstrip_ids().first() {
            return Err(not_gguf(format!(
                "added token {:?} strips the whitespace after it (rstrip), which GGUF metadata cannot say",
                vocab.text(id).unwrap_or_default()
            )));
        }
        let patterns = pre.patterns();
        let pre_name = PreTokenizerSpec::gguf_name_for(&patterns, bpe.ignore_merges()).ok_or_else(|| {
            not_gguf(format!(
                "its pre-tokenizer (split patterns {patterns:?}, ignore_merges {}) matches no tokenizer.ggml.pre \
                 name this engine knows (llama-bpe, smaug-bpe, qwen2, gpt-2, smollm, deepseek-llm, …)",
                bpe.ignore_merges()
            ))
        })?;

        let n = vocab.len();
        let total = n.max(opts.pad_to);
        let (bos, eos) = special_ids(self, opts, total);
        let (Some(bos), Some(eos)) = (bos, eos) else {
            return Err(not_gguf(
                "it names no EOS token (tokenizer_config.json eos_token or config.json eos_token_id), and a GGUF \
                 BPE vocabulary without one would take token 11"
                    .into(),
            ));
        };

        let mut tokens = Vec::with_capacity(total);
        let mut types = Vec::with_capacity(total);
        for id in 0..n as u32 {
            tokens.push(Value::String(vocab.text(id).unwrap_or_default().to_string()));
            types.push(Value::I32(
                vocab.token_type(id).unwrap_or(TokenType::Undefined).to_gguf(),
            ));
        }
        for id in n..total {
            tokens.push(Value::String(format!("[PAD{id}]")));
            types.push(Value::I32(TokenType::Unused.to_gguf()));
        }

        let mut merges = Vec::new();
        for (left, right) in bpe.merges_by_rank() {
            let (l, r) = (
                vocab.text(left).unwrap_or_default(),
                vocab.text(right).unwrap_or_default(),
            );
            let line = format!("{l} {r}");
            // Read back, "l r" splits at the first space after the first character.
            if super::bpe::split_merge(&line) != Some((l, r)) {
                return Err(not_gguf(format!(
                    "merge ({l:?}, {r:?}) cannot be written as one \"left right\" string"
                )));
            }
            merges.push(Value::String(line));
        }

        let mut md = vec![
            (keys::MODEL.to_string(), Value::String("gpt2".into())),
            (keys::PRE.to_string(), Value::String(pre_name.into())),
            (keys::TOKENS.to_string(), Value::Array(tokens)),
            (keys::TOKEN_TYPE.to_string(), Value::Array(types)),
            (keys::MERGES.to_string(), Value::Array(merges)),
            (keys::BOS_ID.to_string(), Value::U32(bos)),
            (keys::EOS_ID.to_string(), Value::U32(eos)),
        ];
        if let Some(unk) = vocab.unk() {
            md.push((keys::UNK_ID.to_string(), Value::U32(unk)));
        }
        md.push((keys::ADD_BOS.to_string(), Value::Bool(self.add_bos_default())));
        md.push((keys::ADD_EOS.to_string(), Value::Bool(self.add_eos_default())));
        Ok(md)
    }
}

/// BOS and EOS to write: the tokenizer's own, else config.json's; BOS falls
/// back to EOS (see the module doc).
fn special_ids(tok: &Tokenizer, opts: GgufVocabOptions, total: usize) -> (Option<u32>, Option<u32>) {
    let in_range = |id: Option<u32>| id.filter(|&id| (id as usize) < total);
    let vocab = tok.vocab();
    let eos = in_range(vocab.eos()).or(in_range(opts.config_eos));
    let bos = in_range(vocab.bos()).or(in_range(opts.config_bos)).or(eos);
    (bos, eos)
}

impl Tokenizer {
    /// SentencePiece metadata as llama.cpp's converter writes it for a
    /// `tokenizer.model` (`tokenizer.ggml.model = "llama"`, `pre = "default"`,
    /// tokens, scores, token types, padding `[PAD1]`… unused at score
    /// -1000), with this tokenizer's scores: the merge ranks of a
    /// tokenizer.json (see `hf::merge_scores`), in the same order as
    /// SentencePiece's own.
    fn spm_metadata(&self, spm: &SpmTokenizer, opts: GgufVocabOptions) -> Result<Vec<(String, Value)>, TokenizerError> {
        let vocab = spm.vocab();
        if let SpacePrefix::Metaspace { .. } = spm.space_prefix() {
            return Err(TokenizerError::NotGguf(
                "its Metaspace pre-tokenizer adds \"▁\" only where the text does not start with a space (the \
                 non-legacy Llama scheme), which tokenizer.ggml.add_space_prefix cannot say"
                    .into(),
            ));
        }
        if let Some(&id) = vocab.rstrip_ids().first() {
            return Err(TokenizerError::NotGguf(format!(
                "added token {:?} strips the whitespace after it (rstrip), which GGUF metadata cannot say",
                vocab.text(id).unwrap_or_default()
            )));
        }
        let n = vocab.len();
        let total = n.max(opts.pad_to);
        let (bos, eos) = special_ids(self, opts, total);

        let mut tokens = Vec::with_capacity(total);
        let mut scores = Vec::with_capacity(total);
        let mut types = Vec::with_capacity(total);
        for id in 0..n as u32 {
            tokens.push(Value::String(vocab.text(id).unwrap_or_default().to_string()));
            scores.push(Value::F32(spm.score(id).unwrap_or(0.0)));
            types.push(Value::I32(
                vocab.token_type(id).unwrap_or(TokenType::Undefined).to_gguf(),
            ));
        }
        for i in 1..=total - n {
            tokens.push(Value::String(format!("[PAD{i}]")));
            scores.push(Value::F32(-1000.0));
            types.push(Value::I32(TokenType::Unused.to_gguf()));
        }

        let mut md = vec![
            (keys::MODEL.to_string(), Value::String("llama".into())),
            (keys::PRE.to_string(), Value::String("default".into())),
            (keys::TOKENS.to_string(), Value::Array(tokens)),
            (keys::SCORES.to_string(), Value::Array(scores)),
            (keys::TOKEN_TYPE.to_string(), Value::Array(types)),
        ];
        // Absent ids would read back as llama.cpp's SPM defaults (1, 2, 0).
        for (key, id) in [(keys::BOS_ID, bos), (keys::EOS_ID, eos), (keys::UNK_ID, vocab.unk())] {
            if let Some(id) = id {
                md.push((key.to_string(), Value::U32(id)));
            }
        }
        md.push((keys::ADD_BOS.to_string(), Value::Bool(self.add_bos_default())));
        md.push((keys::ADD_EOS.to_string(), Value::Bool(self.add_eos_default())));
        if !spm.add_space_prefix() {
            md.push((keys::ADD_SPACE_PREFIX.to_string(), Value::Bool(false)));
        }
        Ok(md)
    }
}
