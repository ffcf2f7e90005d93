//! SentencePiece (BPE-style SPM) tokenizer, as llama.cpp runs it for GGUF
//! files with `tokenizer.ggml.model = "llama"`.
//!
//! Encoding one raw-text fragment:
//! 1. spaces become `▁` (U+2581), and a `▁` is put in front when
//!    `add_space_prefix` is on and the fragment starts the text or follows a
//!    special token (a `tokenizer.json` may say otherwise: [`SpacePrefix`]);
//! 2. the text is split into UTF-8 characters, the initial symbols;
//! 3. every adjacent pair whose concatenation is a vocabulary token is a
//!    candidate; the candidate with the highest token score is merged first
//!    (ties: the leftmost), and the new neighbours become candidates, until no
//!    candidate is left (a priority queue: O(n log n));
//! 4. each final symbol is its token; a symbol that is not in the vocabulary
//!    (only single characters can be) falls back to one `<0xNN>` byte token
//!    per UTF-8 byte, or to the unknown token if the vocabulary has no byte
//!    tokens.

use super::vocab::{check_len, optional_bool, Fragment, SpecialDefaults, Vocab};
use super::{keys, EncodeOptions, TokenType, TokenizerError};
use crate::format::gguf::Gguf;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// SentencePiece's visible space.
const SPACE: char = '\u{2581}';
const NONE: usize = usize::MAX;

/// A SentencePiece tokenizer loaded from GGUF metadata.
#[derive(Debug, Clone)]
pub struct SpmTokenizer {
    vocab: Vocab,
    /// Merge priority of each token (higher merges first).
    scores: Vec<f32>,
    /// Where encoding puts a `▁` before the text; unless `Never`, decoding
    /// drops the leading space of the first piece.
    space_prefix: SpacePrefix,
    /// Whether prompts end with EOS (`tokenizer.ggml.add_eos_token`).
    add_eos: bool,
    /// The token each byte value falls back to (`<0xNN>`, else the one-byte
    /// text, else unk); `None`: the byte is dropped.
    byte_ids: Vec<Option<u32>>,
    /// The bytes each token decodes to, concatenated: token `i` is
    /// `piece_bytes[piece_offsets[i]..piece_offsets[i + 1]]`.
    piece_bytes: Vec<u8>,
    piece_offsets: Vec<u32>,
}

/// What a source supplies besides the vocabulary.
pub(crate) struct SpmParts {
    pub vocab: Vocab,
    /// One per token: the merge priority (higher merges first).
    pub scores: Vec<f32>,
    pub space_prefix: SpacePrefix,
    pub add_eos: bool,
}

/// Which text fragments encoding puts a `▁` in front of (a fragment is raw
/// text between special tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpacePrefix {
    /// None.
    Never,
    /// Every fragment that starts the text or follows a special token:
    /// SentencePiece's `add_dummy_prefix` as llama.cpp applies it
    /// (`tokenizer.ggml.add_space_prefix`), and Hugging Face's "legacy"
    /// `Prepend("▁")` normalizer.
    Always,
    /// Hugging Face's `Metaspace` pre-tokenizer: only a fragment that does
    /// not already start with a space; with `first_only`
    /// (`prepend_scheme: "first"`), only the fragment at the text's start.
    Metaspace { first_only: bool },
}

impl SpmTokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<SpmTokenizer, TokenizerError> {
        // llama.cpp's SPM defaults: <unk> = 0, <s> = 1, </s> = 2, BOS added.
        let defaults = SpecialDefaults {
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            add_bos: true,
        };
        let vocab = Vocab::from_gguf(g, defaults)?;
        let n = vocab.len();

        let scores_v = g
            .get(keys::SCORES)
            .ok_or(TokenizerError::MissingKey { key: keys::SCORES })?;
        let scores_arr = scores_v.as_array().ok_or_else(|| TokenizerError::BadKey {
            key: keys::SCORES,
            reason: format!("is a {}, expected an array", scores_v.type_name()),
        })?;
        check_len(keys::SCORES, scores_arr.len(), n)?;
        let mut scores = Vec::with_capacity(n);
        for (i, v) in scores_arr.iter().enumerate() {
            let s = v.as_f64().ok_or_else(|| TokenizerError::BadKey {
                key: keys::SCORES,
                reason: format!("entry {i} is a {}, expected a number", v.type_name()),
            })?;
            scores.push(s as f32);
        }

        SpmTokenizer::from_parts(SpmParts {
            vocab,
            scores,
            space_prefix: match optional_bool(g, keys::ADD_SPACE_PREFIX)?.unwrap_or(true) {
                true => SpacePrefix::Always,
                false => SpacePrefix::Never,
            },
            add_eos: optional_bool(g, keys::ADD_EOS)?.unwrap_or(false),
        })
    }

    /// Builds the byte fallback and decoding tables (`parts.scores` has one
    /// entry per token).
    pub(crate) fn from_parts(parts: SpmParts) -> Result<SpmTokenizer, TokenizerError> {
        let SpmParts {
            vocab,
            scores,
            space_prefix,
            add_eos,
        } = parts;
        let n = vocab.len();
        check_len(keys::SCORES, scores.len(), n)?;

        let byte_ids = (0..=255u8)
            .map(|b| {
                vocab
                    .id(&format!("<0x{b:02X}>"))
                    .or_else(|| {
                        if b.is_ascii() {
                            vocab.id(&(b as char).to_string())
                        } else {
                            None
                        }
                    })
                    .or(vocab.unk())
            })
            .collect();

        let mut piece_bytes = Vec::new();
        let mut piece_offsets = Vec::with_capacity(n + 1);
        piece_offsets.push(0);
        for id in 0..n as u32 {
            let text = vocab.text(id).expect("id in range");
            match vocab.token_type(id).expect("id in range") {
                TokenType::Normal => {
                    let mut buf = [0u8; 4];
                    for c in text.chars() {
                        let c = if c == SPACE { ' ' } else { c };
                        piece_bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
                TokenType::Byte => piece_bytes.push(parse_byte_token(text).ok_or_else(|| TokenizerError::BadKey {
                    key: keys::TOKENS,
                    reason: format!("byte token {id} has text {text:?}, expected <0xNN>"),
                })?),
                TokenType::UserDefined => piece_bytes.extend_from_slice(text.as_bytes()),
                // Control, unknown, unused and undefined tokens render as nothing.
                _ => {}
            }
            let end = u32::try_from(piece_bytes.len()).map_err(|_| TokenizerError::BadKey {
                key: keys::TOKENS,
                reason: "token texts exceed 4 GiB".into(),
            })?;
            piece_offsets.push(end);
        }

        Ok(SpmTokenizer {
            vocab,
            scores,
            space_prefix,
            add_eos,
            byte_ids,
            piece_bytes,
            piece_offsets,
        })
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Whether encoding puts a `▁` in front of text.
    pub fn add_space_prefix(&self) -> bool {
        self.space_prefix != SpacePrefix::Never
    }

    pub fn space_prefix(&self) -> SpacePrefix {
        self.space_prefix
    }

    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// The bytes token `id` decodes to on its own (no space stripping); empty
    /// for control/unknown/unused tokens and ids out of range.
    pub fn piece(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i + 1 >= self.piece_offsets.len() {
            return &[];
        }
        &self.piece_bytes[self.piece_offsets[i] as usize..self.piece_offsets[i + 1] as usize]
    }

    pub fn encode(&self, text: &str, opts: EncodeOptions) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if opts.add_bos {
            out.extend(self.vocab.bos());
        }
        let mut after_special = true;
        let mut escaped = String::new();
        for (i, fragment) in self
            .vocab
            .split_special(text, opts.parse_special)
            .into_iter()
            .enumerate()
        {
            match fragment {
                Fragment::Text(t) => {
                    escaped.clear();
                    if self.prefixes(t, i, after_special) {
                        escaped.push(SPACE);
                    }
                    escaped.extend(t.chars().map(|c| if c == ' ' { SPACE } else { c }));
                    self.encode_escaped(&escaped, &mut out);
                    after_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
            }
        }
        out
    }

    /// Whether fragment number `i`, text `t`, gets a `▁` in front.
    fn prefixes(&self, t: &str, i: usize, after_special: bool) -> bool {
        match self.space_prefix {
            SpacePrefix::Never => false,
            SpacePrefix::Always => after_special,
            SpacePrefix::Metaspace { first_only } => (i == 0 || !first_only) && !t.starts_with(' '),
        }
    }

    /// Steps 2–4 of the module doc on text whose spaces are already `▁`.
    fn encode_escaped(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let i = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.wrapping_sub(1),
                next: i + 1,
            });
        }
        // `i.wrapping_sub(1)` made the first `prev` NONE already.
        symbols.last_mut().expect("non-empty").next = NONE;

        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for i in 1..symbols.len() {
            self.try_add_bigram(text, &symbols, i - 1, i, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (b.left, b.right);
            // Stale if either side has changed since the pair was queued.
            if symbols[l].len == 0 || symbols[r].len == 0 || symbols[l].len + symbols[r].len != b.size {
                continue;
            }
            symbols[l].len += symbols[r].len;
            symbols[r].len = 0;
            let next = symbols[r].next;
            symbols[l].next = next;
            if next != NONE {
                symbols[next].prev = l;
            }
            self.try_add_bigram(text, &symbols, symbols[l].prev, l, &mut queue);
            self.try_add_bigram(text, &symbols, l, next, &mut queue);
        }

        let mut i = 0;
        while i != NONE {
            let s = &symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.vocab.id(piece) {
                Some(id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.byte_ids[b as usize])),
            }
            i = s.next;
        }
    }

    fn try_add_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        if left == NONE || right == NONE {
            return;
        }
        let start = symbols[left].start;
        let size = symbols[left].len + symbols[right].len;
        if let Some(id) = self.vocab.id(&text[start..start + size]) {
            queue.push(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                size,
            });
        }
    }
}

/// `<0xNN>` → the byte.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A run of the text during merging; `len == 0` once merged into its left
/// neighbour. `prev`/`next` link the live symbols (NONE at the ends).
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug, Clone, Copy)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text, to detect stale entries.
    size: usize,
}

impl Ord for Bigram {
    /// The max-heap pops the highest score first, and of equal scores the
    /// leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}
