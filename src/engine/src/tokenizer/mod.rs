//! Text ↔ token ids.
//!
//! [`Tokenizer`] is the seam the rest of the engine uses: it is built from the
//! tokenizer metadata of a GGUF file ([`Tokenizer::from_gguf`]) or from a
//! Hugging Face `tokenizer.json` ([`Tokenizer::from_hf_json`]) and dispatches
//! on its kind: SentencePiece ([`SpmTokenizer`], `tokenizer.ggml.model =
//! "llama"`) or byte-level BPE ([`BpeTokenizer`], `"gpt2"`). Both hold a
//! [`Vocab`]; BPE adds its merges and pre-tokenizer.
//!
//! Decoding is byte-oriented: every token renders to a fixed byte string
//! (its *piece*; control tokens render to nothing), and text is the UTF-8 of
//! the concatenated pieces. [`StreamDecoder`] does this incrementally for
//! generation, holding back incomplete UTF-8 sequences (a character split
//! across `<0xNN>` byte tokens) until they complete; [`Tokenizer::decode`] is
//! the same decoder run over a whole sequence, so both always agree.
//!
//! Behaviour follows llama.cpp (`llama-vocab.cpp`), checked against its test
//! vectors, with one documented difference in decoding: like llama2.c (and
//! SentencePiece itself), the leading space of the first piece after BOS is
//! dropped, not only at the very start of the sequence. A tokenizer.json is
//! read the way Hugging Face `tokenizers` reads it (its `ignore_merges`, its
//! post-processor's BOS), which is where the two can differ.
//!
//! In both kinds, control tokens (BOS, `<|im_end|>`, …) decode to nothing and
//! user-defined tokens to their text.

mod bpe;
mod hash;
mod hf;
mod pretok;
mod spm;
mod to_gguf;
mod vocab;

pub use bpe::BpeTokenizer;
pub use spm::{SpacePrefix, SpmTokenizer};
pub use to_gguf::GgufVocabOptions;
pub use vocab::{Vocab, MAX_VOCAB};

use crate::format::gguf::Gguf;
use serde::{Deserialize, Serialize};

/// The GGUF metadata keys the tokenizers read.
pub mod keys {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    /// BPE: the merge rules, `"left right"`, in rank order.
    pub const MERGES: &str = "tokenizer.ggml.merges";
    /// BPE: the name of the pre-tokenizer (`"llama-bpe"`, `"qwen2"`, …).
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    /// Read only to recognise models with tokenizer quirks (Phi-3).
    pub const GENERAL_NAME: &str = "general.name";
}

/// Why a tokenizer could not be built from the metadata.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata key {key:?} is missing")]
    MissingKey { key: &'static str },
    #[error("tokenizer metadata key {key:?}: {reason}")]
    BadKey { key: &'static str, reason: String },
    #[error("tokenizer metadata key {key:?} has {found} entries but tokenizer.ggml.tokens has {expected}")]
    LengthMismatch {
        key: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("tokenizer metadata key {key:?} names token id {id}, outside the vocabulary of {vocab_size} tokens")]
    BadTokenId {
        key: &'static str,
        id: u64,
        vocab_size: usize,
    },
    #[error("unsupported tokenizer model {0:?} (supported: \"llama\" (SentencePiece), \"gpt2\" (byte-level BPE))")]
    UnsupportedModel(String),
    #[error("unknown BPE pre-tokenizer {0:?} (tokenizer.ggml.pre); known: default, llama-bpe, qwen2, gpt-2, deepseek-llm, deepseek-coder, falcon, mpt, starcoder, refact, command-r, …")]
    UnsupportedPreTokenizer(String),
    #[error("pre-tokenizer pattern {pattern:?} does not compile: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("tokenizer.json: {0}")]
    HfJson(String),
    #[error("tokenizer.json: unsupported {what} (supported: byte-level BPE as used by GPT-2, Llama 3, Qwen2; SentencePiece-style BPE with byte_fallback as used by Llama 2, TinyLlama, Mistral, Phi-3)")]
    HfUnsupported { what: String },
    #[error("tokenizer.json: a Unigram model (SentencePiece Unigram, as T5 and ALBERT use) picks the most likely segmentation by token scores, which this engine does not implement; supported are BPE models (byte-level, or SentencePiece-style with byte_fallback)")]
    HfUnigram,
    #[error("the tokenizer cannot be written as GGUF metadata: {0}")]
    NotGguf(String),
}

/// A token's type, as `tokenizer.ggml.token_type` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenType {
    /// 0, or any value not listed below.
    Undefined,
    /// 1: ordinary text.
    Normal,
    /// 2: `<unk>`.
    Unknown,
    /// 3: BOS, EOS and other markers that are not text.
    Control,
    /// 4: added tokens matched verbatim in the input text.
    UserDefined,
    /// 5: reserved, never produced.
    Unused,
    /// 6: `<0xNN>` byte-fallback tokens.
    Byte,
}

impl TokenType {
    pub fn from_gguf(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }

    /// The value `tokenizer.ggml.token_type` stores for this type.
    pub fn to_gguf(self) -> i32 {
        match self {
            TokenType::Undefined => 0,
            TokenType::Normal => 1,
            TokenType::Unknown => 2,
            TokenType::Control => 3,
            TokenType::UserDefined => 4,
            TokenType::Unused => 5,
            TokenType::Byte => 6,
        }
    }
}

/// How to encode text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EncodeOptions {
    /// Put the BOS token first (if the vocabulary has one).
    pub add_bos: bool,
    /// Turn control-token texts written in the input (`<s>`, `<|im_end|>`) into
    /// those tokens. Off for untrusted text. User-defined tokens are matched
    /// either way, as in llama.cpp.
    pub parse_special: bool,
}

/// A tokenizer of any supported kind.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    Spm(SpmTokenizer),
    Bpe(BpeTokenizer),
}

impl Tokenizer {
    /// Builds the tokenizer that `tokenizer.ggml.model` names.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, TokenizerError> {
        let v = g
            .get(keys::MODEL)
            .ok_or(TokenizerError::MissingKey { key: keys::MODEL })?;
        let model = v.as_str().ok_or_else(|| TokenizerError::BadKey {
            key: keys::MODEL,
            reason: format!("is a {}, expected a string", v.type_name()),
        })?;
        match model {
            "llama" => Ok(Tokenizer::Spm(SpmTokenizer::from_gguf(g)?)),
            "gpt2" => Ok(Tokenizer::Bpe(BpeTokenizer::from_gguf(g)?)),
            other => Err(TokenizerError::UnsupportedModel(other.to_string())),
        }
    }

    /// Builds a tokenizer from a Hugging Face `tokenizer.json` (byte-level
    /// BPE, or SentencePiece-style BPE with byte fallback) and, when at
    /// hand, its `tokenizer_config.json` (which names BOS/EOS and may
    /// switch BOS on or off).
    pub fn from_hf_json(
        tokenizer_json: &str,
        tokenizer_config_json: Option<&str>,
    ) -> Result<Tokenizer, TokenizerError> {
        hf::from_hf_json(tokenizer_json, tokenizer_config_json)
    }

    /// The vocabulary shared by all kinds.
    pub fn vocab(&self) -> &Vocab {
        match self {
            Tokenizer::Spm(t) => t.vocab(),
            Tokenizer::Bpe(t) => t.vocab(),
        }
    }

    /// The kind's name as GGUF spells it.
    pub fn model_name(&self) -> &'static str {
        match self {
            Tokenizer::Spm(_) => "llama",
            Tokenizer::Bpe(_) => "gpt2",
        }
    }

    /// Encodes `text` without special-token parsing, with BOS first if `add_bos`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.encode_with(
            text,
            EncodeOptions {
                add_bos,
                parse_special: false,
            },
        )
    }

    pub fn encode_with(&self, text: &str, opts: EncodeOptions) -> Vec<u32> {
        match self {
            Tokenizer::Spm(t) => t.encode(text, opts),
            Tokenizer::Bpe(t) => t.encode(text, opts),
        }
    }

    /// Decodes a whole sequence (which may start with BOS). Control tokens
    /// render as nothing; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut d = StreamDecoder::new(self, None);
        let mut text = String::new();
        for &id in ids {
            text.push_str(&d.push(self, id));
        }
        text.push_str(&d.finish());
        text
    }

    /// The bytes token `id` renders to on its own (no space stripping).
    pub fn piece(&self, id: u32) -> &[u8] {
        match self {
            Tokenizer::Spm(t) => t.piece(id),
            Tokenizer::Bpe(t) => t.piece(id),
        }
    }

    /// Whether decoding drops the leading space of the first piece (at the
    /// start and after BOS), undoing the space the encoder puts in front.
    pub fn strips_leading_space(&self) -> bool {
        match self {
            Tokenizer::Spm(t) => t.add_space_prefix(),
            Tokenizer::Bpe(_) => false,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab().len()
    }

    /// The token's text as stored in the file (SPM spaces shown as `▁`).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.vocab().text(id)
    }

    /// The id whose stored text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab().id(text)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.vocab().token_type(id)
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == Some(TokenType::Control)
    }

    /// Whether generating `id` ends the text (EOS, EOT, `<|end|>`, …).
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab().is_eog(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.vocab().bos()
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.vocab().eos()
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.vocab().unk()
    }

    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`;
    /// when absent: true for SPM, and for BPE as llama.cpp decides by
    /// pre-tokenizer (Llama 3: yes, GPT-2: no); for tokenizer.json, what its
    /// post-processor adds).
    pub fn add_bos_default(&self) -> bool {
        self.vocab().add_bos() && self.bos_id().is_some()
    }

    /// Whether prompts should end with EOS (`tokenizer.ggml.add_eos_token`,
    /// or a tokenizer.json post-processor that appends one). Callers append
    /// it themselves: [`EncodeOptions`] only covers BOS.
    pub fn add_eos_default(&self) -> bool {
        let add = match self {
            Tokenizer::Spm(t) => t.add_eos(),
            Tokenizer::Bpe(t) => t.add_eos(),
        };
        add && self.eos_id().is_some()
    }
}

/// Incremental decoding of generated tokens: each [`push`](Self::push) returns
/// only complete UTF-8 text, so that the pushes concatenated equal the
/// decoding of the whole generated sequence in its context.
///
/// Plain data (serializable), so that a generation job can store it between
/// steps; the tokenizer is passed in on each call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDecoder {
    /// Drop a leading space from the next piece (we are at the start of the
    /// text, or right after BOS).
    strip_space: bool,
    /// The bytes of an incomplete UTF-8 sequence (at most 3).
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder for the tokens that follow `context`, the last token before
    /// them (the last prompt token), or `None` at the start of a sequence.
    pub fn new(tok: &Tokenizer, context: Option<u32>) -> StreamDecoder {
        let at_start = context.is_none() || context == tok.bos_id();
        StreamDecoder {
            strip_space: at_start && tok.strips_leading_space(),
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text that became complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        if Some(id) == tok.bos_id() {
            self.strip_space = tok.strips_leading_space();
            return String::new();
        }
        let mut piece = tok.piece(id);
        if piece.is_empty() {
            return String::new();
        }
        if self.strip_space {
            self.strip_space = false;
            if piece[0] == b' ' && tok.token_type(id) == Some(TokenType::Normal) {
                piece = &piece[1..];
            }
        }
        self.pending.extend_from_slice(piece);
        self.take_complete()
    }

    /// Ends the stream: any incomplete sequence left becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }

    /// Bytes held back waiting for the rest of a UTF-8 sequence.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Moves the complete UTF-8 prefix of `pending` out (invalid bytes as
    /// U+FFFD, like `from_utf8_lossy`), keeping an incomplete tail.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("checked valid"));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }
}

#[cfg(test)]
mod tests;
