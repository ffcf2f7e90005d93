//! Byte-level BPE (GPT-2 style), as llama.cpp runs it for GGUF files with
//! `tokenizer.ggml.model = "gpt2"` and Hugging Face `tokenizers` for a
//! `tokenizer.json` whose model is `BPE` with a `ByteLevel` pre-tokenizer.
//!
//! Encoding one raw-text fragment (special tokens already cut out):
//! 1. the pre-tokenizer cuts it into words ([`pretok`](super::pretok));
//! 2. each byte of a word becomes its byte-level token (the token whose text
//!    is the GPT-2 character for that byte);
//! 3. adjacent pairs listed in the merges are candidates; the one with the
//!    lowest merge rank is merged first (ties: the leftmost), and the new
//!    neighbours become candidates, until none is left (a priority queue
//!    over a linked list of symbols: O(n log n) per word);
//! 4. with `ignore_merges` (Llama 3 in llama.cpp), a word whose byte-level
//!    text is itself a token is emitted whole, without merging.
//!
//! Merging works on token ids: a merge rule `a b` is stored as the id pair
//! (a, b) → (rank, id of "ab"), so no string is built while encoding.
//!
//! Decoding maps each normal token's characters back to bytes; user-defined
//! tokens render as their text and control tokens as nothing (as SPM does,
//! and as llama.cpp's detokenizer without `special`).

use super::hash::FastBuild;
use super::pretok::{PreTokenizer, PreTokenizerSpec, BYTE_TO_CHAR};
use super::vocab::{check_len, optional_bool, Fragment, SpecialDefaults, Vocab};
use super::{keys, EncodeOptions, TokenType, TokenizerError};
use crate::format::gguf::Gguf;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

const NONE: u32 = u32::MAX;

/// A byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct BpeTokenizer {
    vocab: Vocab,
    /// (left id, right id) packed as `left << 32 | right` → the merge.
    merges: MergeMap,
    pre: PreTokenizer,
    /// The name of the pre-tokenizer (`tokenizer.ggml.pre`, or `"hf"`).
    pre_name: String,
    ignore_merges: bool,
    add_eos: bool,
    /// The byte-level token of each byte (NONE if the vocabulary lacks it).
    byte_ids: Box<[u32; 256]>,
    /// The bytes each token decodes to, concatenated (as in SPM).
    piece_bytes: Vec<u8>,
    piece_offsets: Vec<u32>,
}

/// One merge rule, found by the ids of its two halves.
#[derive(Debug, Clone, Copy)]
struct Merge {
    rank: u32,
    id: u32,
}

type MergeMap = HashMap<u64, Merge, FastBuild>;

fn pair_key(left: u32, right: u32) -> u64 {
    (left as u64) << 32 | right as u64
}

/// What a source supplies besides the vocabulary.
pub(crate) struct BpeParts<'m> {
    pub vocab: Vocab,
    /// Merge rules in rank order, as (left text, right text).
    pub merges: Box<dyn Iterator<Item = Result<(&'m str, &'m str), TokenizerError>> + 'm>,
    pub pre: PreTokenizer,
    pub pre_name: String,
    pub ignore_merges: bool,
    pub add_eos: bool,
}

impl BpeTokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<BpeTokenizer, TokenizerError> {
        let pre_name = match g.get(keys::PRE) {
            None => "default".to_string(),
            Some(v) => v
                .as_str()
                .ok_or_else(|| TokenizerError::BadKey {
                    key: keys::PRE,
                    reason: format!("is a {}, expected a string", v.type_name()),
                })?
                .to_string(),
        };
        let spec = PreTokenizerSpec::for_gguf_name(&pre_name)?;
        // llama.cpp's BPE defaults: BOS = EOS = 11 (Falcon's <|endoftext|>).
        let defaults = SpecialDefaults {
            bos: Some(11),
            eos: Some(11),
            unk: None,
            add_bos: spec.add_bos,
        };
        let vocab = Vocab::from_gguf(g, defaults)?;
        let merges_v = g
            .get(keys::MERGES)
            .ok_or(TokenizerError::MissingKey { key: keys::MERGES })?;
        let merges = merges_v.as_array().ok_or_else(|| TokenizerError::BadKey {
            key: keys::MERGES,
            reason: format!("is a {}, expected an array", merges_v.type_name()),
        })?;
        let merges = merges.iter().enumerate().map(|(i, v)| {
            let s = v.as_str().ok_or_else(|| TokenizerError::BadKey {
                key: keys::MERGES,
                reason: format!("entry {i} is a {}, expected a string", v.type_name()),
            })?;
            split_merge(s).ok_or_else(|| TokenizerError::BadKey {
                key: keys::MERGES,
                reason: format!("entry {i} is {s:?}, expected two tokens separated by a space"),
            })
        });
        let add_eos = optional_bool(g, keys::ADD_EOS)?.unwrap_or(false);
        let pre = PreTokenizer::new(&spec.patterns, false)?;
        BpeTokenizer::from_parts(BpeParts {
            vocab,
            merges: Box::new(merges),
            pre,
            pre_name,
            ignore_merges: spec.ignore_merges,
            add_eos,
        })
    }

    pub(crate) fn from_parts(parts: BpeParts<'_>) -> Result<BpeTokenizer, TokenizerError> {
        let vocab = parts.vocab;
        let n = vocab.len();

        let mut merges = MergeMap::with_capacity_and_hasher(parts.merges.size_hint().0, Default::default());
        let mut joined = String::new();
        for (rank, m) in parts.merges.enumerate() {
            let (left, right) = m?;
            let (Some(l), Some(r)) = (vocab.id(left), vocab.id(right)) else {
                continue;
            };
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            // A rule whose result is not a token can never produce output.
            let Some(id) = vocab.id(&joined) else {
                continue;
            };
            // The first (lowest-ranked) rule for a pair wins.
            merges.entry(pair_key(l, r)).or_insert(Merge { rank: rank as u32, id });
        }

        let mut byte_ids = Box::new([NONE; 256]);
        let mut buf = [0u8; 4];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = vocab.id(BYTE_TO_CHAR[b].encode_utf8(&mut buf)).unwrap_or(NONE);
        }

        let mut piece_bytes = Vec::new();
        let mut piece_offsets = Vec::with_capacity(n + 1);
        piece_offsets.push(0);
        for id in 0..n as u32 {
            let text = vocab.text(id).expect("id in range");
            match vocab.token_type(id).expect("id in range") {
                TokenType::Normal | TokenType::Undefined | TokenType::Byte => {
                    for c in text.chars() {
                        match super::pretok::char_to_byte(c) {
                            Some(b) => piece_bytes.push(b),
                            // Not a byte-level character: keep it as text.
                            None => piece_bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                        }
                    }
                }
                TokenType::UserDefined => piece_bytes.extend_from_slice(text.as_bytes()),
                // Control, unknown and unused tokens render as nothing.
                TokenType::Control | TokenType::Unknown | TokenType::Unused => {}
            }
            let end = u32::try_from(piece_bytes.len()).map_err(|_| TokenizerError::BadKey {
                key: keys::TOKENS,
                reason: "token texts exceed 4 GiB".into(),
            })?;
            piece_offsets.push(end);
        }
        check_len(keys::TOKENS, piece_offsets.len() - 1, n)?;

        Ok(BpeTokenizer {
            vocab,
            merges,
            pre: parts.pre,
            pre_name: parts.pre_name,
            ignore_merges: parts.ignore_merges,
            add_eos: parts.add_eos,
            byte_ids,
            piece_bytes,
            piece_offsets,
        })
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The pre-tokenizer's name (`tokenizer.ggml.pre`; `"hf"` for tokenizer.json).
    pub fn pre_name(&self) -> &str {
        &self.pre_name
    }

    /// Number of usable merge rules.
    pub fn n_merges(&self) -> usize {
        self.merges.len()
    }

    /// Whether the model appends EOS to a prompt by default.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether a word that is itself a token is emitted without merging.
    pub fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    pub(crate) fn pre_tokenizer(&self) -> &PreTokenizer {
        &self.pre
    }

    /// The usable merge rules as (left id, right id), lowest rank first:
    /// the list that, read back, gives this tokenizer's merges (rules that
    /// can never apply, and later duplicates of a pair, are left out).
    pub fn merges_by_rank(&self) -> Vec<(u32, u32)> {
        let mut merges: Vec<(u32, u64)> = self.merges.iter().map(|(&key, m)| (m.rank, key)).collect();
        merges.sort_unstable();
        merges
            .into_iter()
            .map(|(_, key)| ((key >> 32) as u32, key as u32))
            .collect()
    }

    /// The bytes token `id` decodes to; empty for control tokens and ids out of range.
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
        let mut scratch = Scratch::default();
        for fragment in self.vocab.split_special(text, opts.parse_special) {
            match fragment {
                Fragment::Text(t) if self.pre.add_prefix_space && !t.starts_with(' ') => {
                    self.encode_text(&format!(" {t}"), &mut scratch, &mut out)
                }
                Fragment::Text(t) => self.encode_text(t, &mut scratch, &mut out),
                Fragment::Token(id) => out.push(id),
            }
        }
        out
    }

    /// Steps 1–4 of the module doc for a fragment of raw text.
    fn encode_text(&self, text: &str, s: &mut Scratch, out: &mut Vec<u32>) {
        let (mut words, mut tmp) = (Vec::new(), Vec::new());
        self.pre.split(text, &mut words, &mut tmp);
        for w in &words {
            self.encode_word(w.as_bytes(), s, out);
        }
    }

    /// Steps 2–4 of the module doc for one word.
    fn encode_word(&self, word: &[u8], s: &mut Scratch, out: &mut Vec<u32>) {
        if word.len() == 1 {
            out.extend(Some(self.byte_ids[word[0] as usize]).filter(|&id| id != NONE));
            return;
        }
        if self.ignore_merges {
            s.text.clear();
            s.text.extend(word.iter().map(|&b| BYTE_TO_CHAR[b as usize]));
            if let Some(id) = self.vocab.id(&s.text) {
                out.push(id);
                return;
            }
        }

        let syms = &mut s.symbols;
        syms.clear();
        for (i, &b) in word.iter().enumerate() {
            syms.push(Symbol {
                id: self.byte_ids[b as usize],
                prev: if i == 0 { NONE } else { i as u32 - 1 },
                next: if i + 1 == word.len() { NONE } else { i as u32 + 1 },
            });
        }
        let queue = &mut s.queue;
        queue.clear();
        for i in 1..syms.len() {
            self.push_candidate(syms, i as u32 - 1, queue);
        }
        while let Some(Reverse((_, left, want))) = queue.pop() {
            let l = left as usize;
            let right = syms[l].next;
            // Stale if the left symbol was absorbed or either side changed.
            if syms[l].id == NONE || right == NONE || pair_key(syms[l].id, syms[right as usize].id) != want {
                continue;
            }
            let merged = self.merges[&want].id;
            let after = syms[right as usize].next;
            syms[l].id = merged;
            syms[l].next = after;
            syms[right as usize].id = NONE;
            syms[right as usize].prev = NONE;
            if after != NONE {
                syms[after as usize].prev = left;
            }
            if syms[l].prev != NONE {
                self.push_candidate(syms, syms[l].prev, queue);
            }
            self.push_candidate(syms, left, queue);
        }
        let mut i = 0u32;
        while i != NONE {
            let sym = syms[i as usize];
            if sym.id != NONE {
                out.push(sym.id);
            }
            i = sym.next;
        }
    }

    /// Queues the merge of symbol `left` with its right neighbour, if any rule applies.
    fn push_candidate(&self, syms: &[Symbol], left: u32, queue: &mut BinaryHeap<Reverse<(u32, u32, u64)>>) {
        let l = syms[left as usize];
        if l.next == NONE || l.id == NONE {
            return;
        }
        let r = syms[l.next as usize].id;
        if r == NONE {
            return;
        }
        let key = pair_key(l.id, r);
        if let Some(m) = self.merges.get(&key) {
            queue.push(Reverse((m.rank, left, key)));
        }
    }
}

/// `"a b"` → (`"a"`, `"b"`), splitting at the first space after the first
/// character (as llama.cpp does; a token never starts with a plain space in
/// byte-level vocabularies, but this keeps a leading one with the left half).
pub(crate) fn split_merge(s: &str) -> Option<(&str, &str)> {
    let first = s.chars().next()?;
    let at = s[first.len_utf8()..].find(' ')? + first.len_utf8();
    Some((&s[..at], &s[at + 1..]))
}

/// A run of the word during merging: its token, or NONE once absorbed into
/// its left neighbour (or for a byte the vocabulary lacks).
#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    prev: u32,
    next: u32,
}

/// Buffers reused across the words of one `encode` call.
#[derive(Default)]
struct Scratch {
    symbols: Vec<Symbol>,
    /// Candidates: (rank, left symbol, packed pair); the min-heap pops the
    /// lowest rank first, then the leftmost.
    queue: BinaryHeap<Reverse<(u32, u32, u64)>>,
    text: String,
}
