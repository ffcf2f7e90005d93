//! The part of a tokenizer every kind shares: token texts and types, the
//! text → id map, the special ids, and the pre-split of raw text around
//! user-defined (and optionally control) tokens.
//!
//! SPM and BPE tokenizers both hold one [`Vocab`]; it is built from GGUF
//! metadata ([`Vocab::from_gguf`]) or from parts another format supplies
//! ([`VocabParts`], for Hugging Face `tokenizer.json`).

use super::hash::FastBuild;
use super::{keys, TokenType, TokenizerError};
use crate::format::gguf::{Gguf, Value};
use std::collections::HashMap;

/// Text → id, with a fixed-key hasher (see [`super::hash`]).
type IdMap = HashMap<String, u32, FastBuild>;

/// Most tokens a vocabulary may hold (the largest real ones have ~260k).
pub const MAX_VOCAB: usize = 1 << 20;

/// Token texts that end generation even when the file names no EOT id
/// (llama.cpp recognises the same texts).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
];

/// Default special ids of a kind, used when the file does not name them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpecialDefaults {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: bool,
}

/// What a vocabulary is made of, before the derived tables are built.
#[derive(Debug, Clone, Default)]
pub(crate) struct VocabParts {
    pub texts: Vec<String>,
    pub types: Vec<TokenType>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    /// End-of-turn token named by the source (besides the texts in [`EOG_TEXTS`]).
    pub eot: Option<u32>,
    pub add_bos: bool,
    /// Specials that swallow the whitespace after them.
    pub rstrip: Vec<u32>,
}

/// Token texts, types and special ids.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// Token text by id (as stored in the file; SPM spaces are `▁`).
    texts: Vec<String>,
    types: Vec<TokenType>,
    /// Text → id; when two ids share a text the last one wins (as in llama.cpp).
    ids: IdMap,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    /// Ids that end generation (EOS, EOT, and the texts in [`EOG_TEXTS`]), sorted.
    eog: Vec<u32>,
    add_bos: bool,
    /// User-defined, control and unknown tokens, longest text first: the
    /// candidates for [`Vocab::split_special`].
    specials: Vec<u32>,
    /// Specials that swallow the whitespace after them when matched, sorted.
    rstrip: Vec<u32>,
}

/// A piece of the input after [`Vocab::split_special`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'t> {
    /// Raw text still to be tokenized (never empty).
    Text(&'t str),
    /// A token matched verbatim in the text.
    Token(u32),
}

impl Vocab {
    pub(crate) fn from_gguf(g: &Gguf, defaults: SpecialDefaults) -> Result<Vocab, TokenizerError> {
        let tokens = require_array(g, keys::TOKENS)?;
        if tokens.is_empty() {
            return Err(TokenizerError::BadKey {
                key: keys::TOKENS,
                reason: "the vocabulary is empty".into(),
            });
        }
        if tokens.len() > MAX_VOCAB {
            return Err(TokenizerError::BadKey {
                key: keys::TOKENS,
                reason: format!("{} tokens, above the limit {MAX_VOCAB}", tokens.len()),
            });
        }
        let n = tokens.len();

        let mut texts = Vec::with_capacity(n);
        for (i, v) in tokens.iter().enumerate() {
            let s = v.as_str().ok_or_else(|| TokenizerError::BadKey {
                key: keys::TOKENS,
                reason: format!("entry {i} is a {}, expected a string", v.type_name()),
            })?;
            // llama.cpp gives empty tokens a placeholder text so they never match.
            texts.push(if s.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                s.to_string()
            });
        }

        let types = match g.get(keys::TOKEN_TYPE) {
            None => vec![TokenType::Normal; n],
            Some(v) => {
                let arr = as_array(keys::TOKEN_TYPE, v)?;
                check_len(keys::TOKEN_TYPE, arr.len(), n)?;
                let mut types = Vec::with_capacity(n);
                for (i, v) in arr.iter().enumerate() {
                    let t = v.as_i64().ok_or_else(|| TokenizerError::BadKey {
                        key: keys::TOKEN_TYPE,
                        reason: format!("entry {i} is a {}, expected an integer", v.type_name()),
                    })?;
                    types.push(TokenType::from_gguf(t));
                }
                types
            }
        };

        let bos = special_id(g, keys::BOS_ID, defaults.bos, n)?;
        let eos = special_id(g, keys::EOS_ID, defaults.eos, n)?;
        let unk = special_id(g, keys::UNK_ID, defaults.unk, n)?;
        let eot = special_id(g, keys::EOT_ID, None, n)?;
        let add_bos = optional_bool(g, keys::ADD_BOS)?.unwrap_or(defaults.add_bos);
        let mut vocab = Vocab::from_parts(VocabParts {
            texts,
            types,
            bos,
            eos,
            unk,
            eot,
            add_bos,
            rstrip: Vec::new(),
        });

        // llama.cpp's Phi-3 quirk (chosen by model name, as llama.cpp does):
        // every special token but <unk>, <s> and <|endoftext|> eats the
        // whitespace that follows it, so "<|user|>\nHi" encodes like "<|user|>Hi".
        let name = match g.get(keys::GENERAL_NAME) {
            Some(v) => v.as_str().unwrap_or("").to_ascii_lowercase(),
            None => String::new(),
        };
        if name.contains("phi-3") || name.contains("phi3") {
            let keep: Vec<u32> = ["<unk>", "<s>", "<|endoftext|>"]
                .iter()
                .filter_map(|t| vocab.id(t))
                .collect();
            let mut rstrip: Vec<u32> = vocab.specials.iter().copied().filter(|id| !keep.contains(id)).collect();
            rstrip.extend(vocab.id("</s>"));
            rstrip.sort_unstable();
            rstrip.dedup();
            vocab.rstrip = rstrip;
        }
        Ok(vocab)
    }

    /// Builds the text → id map, the end-of-generation set and the special
    /// token candidates from `parts` (whose `texts` and `types` have one entry
    /// per id and whose ids are in range).
    pub(crate) fn from_parts(parts: VocabParts) -> Vocab {
        let VocabParts {
            texts,
            types,
            bos,
            eos,
            unk,
            eot,
            add_bos,
            mut rstrip,
        } = parts;
        let n = texts.len();
        debug_assert_eq!(types.len(), n);

        let mut ids = IdMap::with_capacity_and_hasher(n, Default::default());
        for (i, t) in texts.iter().enumerate() {
            ids.insert(t.clone(), i as u32);
        }

        let mut eog: Vec<u32> = eos.into_iter().chain(eot).collect();
        eog.extend(EOG_TEXTS.iter().filter_map(|t| ids.get(*t).copied()));
        eog.sort_unstable();
        eog.dedup();

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                matches!(
                    types[id as usize],
                    TokenType::UserDefined | TokenType::Control | TokenType::Unknown
                )
            })
            .collect();
        // Longest first, so that "<|end|>" is not cut out of "<|endoftext|>";
        // stable, so equal lengths keep id order.
        specials.sort_by_key(|&id| std::cmp::Reverse(texts[id as usize].len()));
        rstrip.sort_unstable();
        rstrip.dedup();

        Vocab {
            texts,
            types,
            ids,
            bos,
            eos,
            unk,
            eog,
            add_bos,
            specials,
            rstrip,
        }
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    pub fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The id whose text is exactly `text`.
    pub fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Specials that swallow the whitespace after them, sorted.
    pub(crate) fn rstrip_ids(&self) -> &[u32] {
        &self.rstrip
    }

    /// Cuts `text` around verbatim occurrences of special tokens, as llama.cpp
    /// does before running the tokenizer proper: user-defined tokens are always
    /// matched; control and unknown tokens only when `parse_special` is set.
    /// Tokens are tried longest first; each one splits every text fragment
    /// left by the longer ones at its non-overlapping occurrences. Tokens
    /// marked rstrip (Phi-3) drop the whitespace that follows them.
    pub(crate) fn split_special<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(text));
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && ty != TokenType::UserDefined {
                continue;
            }
            let needle = self.texts[id as usize].as_str();
            let rstrip = self.rstrip.binary_search(&id).is_ok();
            if !text.contains(needle) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for f in fragments {
                match f {
                    Fragment::Text(mut rest) => {
                        while let Some(at) = rest.find(needle) {
                            if at > 0 {
                                next.push(Fragment::Text(&rest[..at]));
                            }
                            next.push(Fragment::Token(id));
                            rest = &rest[at + needle.len()..];
                            if rstrip {
                                rest = rest.trim_start_matches(is_c_space);
                            }
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    token => next.push(token),
                }
            }
            fragments = next;
        }
        fragments
    }
}

/// C's `isspace` in the "C" locale, which llama.cpp uses for rstrip.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

fn require_array<'g>(g: &'g Gguf, key: &'static str) -> Result<&'g [Value], TokenizerError> {
    let v = g.get(key).ok_or(TokenizerError::MissingKey { key })?;
    as_array(key, v)
}

fn as_array<'g>(key: &'static str, v: &'g Value) -> Result<&'g [Value], TokenizerError> {
    v.as_array().ok_or_else(|| TokenizerError::BadKey {
        key,
        reason: format!("is a {}, expected an array", v.type_name()),
    })
}

pub(crate) fn check_len(key: &'static str, found: usize, expected: usize) -> Result<(), TokenizerError> {
    if found != expected {
        return Err(TokenizerError::LengthMismatch { key, found, expected });
    }
    Ok(())
}

pub(crate) fn optional_bool(g: &Gguf, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| TokenizerError::BadKey {
            key,
            reason: format!("is a {}, expected a bool", v.type_name()),
        }),
    }
}

/// A special id from the file, or the kind's default when the key is absent.
/// A default outside the vocabulary means "none"; an id named by the file
/// must be inside it.
fn special_id(g: &Gguf, key: &'static str, default: Option<u32>, n: usize) -> Result<Option<u32>, TokenizerError> {
    let Some(v) = g.get(key) else {
        return Ok(default.filter(|&id| (id as usize) < n));
    };
    let id = v.as_u64().ok_or_else(|| TokenizerError::BadKey {
        key,
        reason: format!("is a {}, expected a non-negative integer", v.type_name()),
    })?;
    if id >= n as u64 {
        return Err(TokenizerError::BadTokenId { key, id, vocab_size: n });
    }
    Ok(Some(id as u32))
}
