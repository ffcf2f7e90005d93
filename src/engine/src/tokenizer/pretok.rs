//! Pre-tokenization for byte-level BPE: cutting raw text into the words that
//! BPE merges never cross, and the GPT-2 byte ↔ character mapping.
//!
//! A [`PreTokenizer`] is a list of splitting regexes applied in turn, as in
//! llama.cpp's `unicode_regex_split` and Hugging Face's `Sequence` of `Split`
//! pre-tokenizers with the `Isolated` behaviour: every regex cuts each piece
//! left by the previous ones into its matches *and* the text between them;
//! nothing is dropped, so the pieces always concatenate back to the input.
//!
//! The patterns use look-ahead (`\s+(?!\S)`), which the `regex` crate lacks;
//! they run on `fancy-regex` (pure Rust, builds for wasm32), which hands the
//! look-around-free parts of a pattern to `regex` and backtracks only at the
//! look-arounds. Its matching is leftmost-first, like Oniguruma's (Hugging
//! Face) and PCRE's.

use super::TokenizerError;
use fancy_regex::Regex;

/// The GPT-2 pattern (Hugging Face `ByteLevel` with `use_regex`).
pub(crate) const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3 (`tokenizer.json` spells the contractions `(?i:'s|…)`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2: Llama 3's pattern with single digits.
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The patterns each `tokenizer.ggml.pre` name stands for, following the
/// pre-tokenizers of the models these names come from (as llama.cpp's
/// `llm_tokenizer_bpe` lists them), plus whether the name makes BPE emit a
/// word that is a whole vocabulary token without merging (`ignore_merges`)
/// and whether BOS is added by default.
pub(crate) struct PreTokenizerSpec {
    pub patterns: Vec<String>,
    pub ignore_merges: bool,
    pub add_bos: bool,
}

impl PreTokenizerSpec {
    pub fn for_gguf_name(name: &str) -> Result<PreTokenizerSpec, TokenizerError> {
        let spec = |patterns: &[&str]| PreTokenizerSpec {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ignore_merges: false,
            add_bos: false,
        };
        let deepseek_cjk = r"[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+";
        Ok(match name {
            "default" => spec(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", "[0-9][0-9][0-9]"]),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => PreTokenizerSpec {
                ignore_merges: true,
                add_bos: true,
                ..spec(&[LLAMA3_PATTERN])
            },
            "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => spec(&[LLAMA3_PATTERN]),
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" => spec(&[QWEN2_PATTERN]),
            "deepseek-llm" => spec(&[
                r"[\r\n]",
                concat!(
                    r"\s?[",
                    r"A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}",
                    r"\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}",
                    r"\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}",
                    r"\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}",
                    r"\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}",
                    r"\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}",
                    r"\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}",
                    r"\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}",
                    r"\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}",
                    r"\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}",
                    r"\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}",
                    r"\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}",
                    r"\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}",
                    r"\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}",
                    r"\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}",
                    r"\u{1E900}-\u{1E943}",
                    "]+"
                ),
                r"\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+",
                r"\s+$",
                deepseek_cjk,
                r"\p{N}+",
            ]),
            "deepseek-coder" => spec(&[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", deepseek_cjk, r"\p{N}"]),
            "falcon" => spec(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, "[0-9][0-9][0-9]"]),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
                spec(&[r"\p{N}", GPT2_PATTERN])
            }
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "jina-v1-en" | "jina-v2-es" | "jina-v2-de" | "jina-v2-code"
            | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion" | "gigachat" | "exaone4" => spec(&[GPT2_PATTERN]),
            "poro-chat" | "bloom" | "gpt3-finnish" => spec(&[r" ?[^(\s|.,!?…。，、।۔،)]+"]),
            "viking" => spec(&[r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"]),
            "chameleon" => PreTokenizerSpec {
                add_bos: true,
                ..spec(&[
                    "<sentinel:[0-9]+>",
                    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                    r"([\t\n]|    |  )",
                    r"\p{N}",
                    r"[\p{P}!-/:-@\[-`{-~]",
                    GPT2_PATTERN,
                ])
            },
            "gpt-4o" | "llama4" => spec(&[concat!(
                r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            )]),
            "tekken" => PreTokenizerSpec {
                ignore_merges: true,
                add_bos: true,
                ..spec(&[concat!(
                    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
                    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
                    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                )])
            },
            other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
        })
    }
}

/// The `tokenizer.ggml.pre` names a converter may write, one per distinct
/// behaviour, in order of preference (the name llama.cpp's converter gives
/// the best-known model with that behaviour). Aliases with the same
/// patterns and flags (`llama3`, `starcoder`, …) are left out.
const GGUF_NAMES_BY_PREFERENCE: &[&str] = &[
    "llama-bpe",
    "smaug-bpe",
    "qwen2",
    "gpt-2",
    "smollm",
    "deepseek-llm",
    "deepseek-coder",
    "falcon",
    "default",
    "gpt-4o",
    "tekken",
    "chameleon",
    "poro-chat",
    "viking",
];

impl PreTokenizerSpec {
    /// The `tokenizer.ggml.pre` name whose patterns are exactly `patterns`
    /// and whose `ignore_merges` is `ignore_merges`: the name under which a
    /// GGUF file gives the same words and the same merging as the source.
    pub fn gguf_name_for(patterns: &[&str], ignore_merges: bool) -> Option<&'static str> {
        GGUF_NAMES_BY_PREFERENCE.iter().copied().find(|name| {
            Self::for_gguf_name(name)
                .is_ok_and(|spec| spec.ignore_merges == ignore_merges && spec.patterns.iter().eq(patterns.iter()))
        })
    }
}

/// A compiled list of splitting patterns (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct PreTokenizer {
    splits: Vec<Regex>,
    /// Hugging Face `ByteLevel { add_prefix_space }`: put a space before a
    /// fragment of text that does not start with one.
    pub add_prefix_space: bool,
}

impl PreTokenizer {
    pub fn new(patterns: &[String], add_prefix_space: bool) -> Result<PreTokenizer, TokenizerError> {
        let splits = patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| TokenizerError::BadPattern {
                    pattern: p.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(PreTokenizer {
            splits,
            add_prefix_space,
        })
    }

    /// The splitting patterns, in the order they apply.
    pub fn patterns(&self) -> Vec<&str> {
        self.splits.iter().map(Regex::as_str).collect()
    }

    /// Cuts `text` into words, appending them to `words` (cleared first);
    /// `scratch` is reused storage.
    pub fn split<'t>(&self, text: &'t str, words: &mut Vec<&'t str>, scratch: &mut Vec<&'t str>) {
        words.clear();
        if text.is_empty() {
            return;
        }
        words.push(text);
        for re in &self.splits {
            scratch.clear();
            for &piece in words.iter() {
                split_isolated(re, piece, scratch);
            }
            std::mem::swap(words, scratch);
        }
    }
}

/// Appends the matches of `re` in `piece` and the gaps between them.
fn split_isolated<'t>(re: &Regex, piece: &'t str, out: &mut Vec<&'t str>) {
    let mut last = 0;
    for m in re.find_iter(piece) {
        let Ok(m) = m else {
            // Only a runaway backtrack can fail; keep the rest whole.
            break;
        };
        if m.start() == m.end() {
            continue;
        }
        if m.start() > last {
            out.push(&piece[last..m.start()]);
        }
        out.push(m.as_str());
        last = m.end();
    }
    if last < piece.len() {
        out.push(&piece[last..]);
    }
}

/// GPT-2's `bytes_to_unicode`: the printable Latin-1 bytes stand for
/// themselves, every other byte for a character from U+0100 on, in order.
pub(crate) const BYTE_TO_CHAR: [char; 256] = byte_to_char_table();

const fn is_printable_byte(b: u32) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

const fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    let mut b = 0u32;
    while b < 256 {
        let c = if is_printable_byte(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = match char::from_u32(c) {
            Some(c) => c,
            None => panic!("below U+0200"),
        };
        b += 1;
    }
    table
}

/// The characters [`BYTE_TO_CHAR`] uses all lie below this code point.
const BYTE_CHAR_END: usize = 0x144;

/// Inverse of [`BYTE_TO_CHAR`]: code point → byte + 1 (0: not a byte character).
const CHAR_TO_BYTE: [u16; BYTE_CHAR_END] = char_to_byte_table();

const fn char_to_byte_table() -> [u16; BYTE_CHAR_END] {
    let mut table = [0u16; BYTE_CHAR_END];
    let mut b = 0;
    while b < 256 {
        table[BYTE_TO_CHAR[b] as usize] = b as u16 + 1;
        b += 1;
    }
    table
}

/// The byte a character of a byte-level token stands for.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    match CHAR_TO_BYTE.get(c as usize) {
        Some(&v) if v > 0 => Some((v - 1) as u8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_mapping_round_trips() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn gguf_names_are_found_by_their_patterns() {
        for name in GGUF_NAMES_BY_PREFERENCE {
            let spec = PreTokenizerSpec::for_gguf_name(name).unwrap();
            let patterns: Vec<&str> = spec.patterns.iter().map(String::as_str).collect();
            assert_eq!(
                PreTokenizerSpec::gguf_name_for(&patterns, spec.ignore_merges),
                Some(*name),
                "{name} is shadowed by an earlier name with the same behaviour"
            );
        }
        // Llama 3's pattern: merged always (Hugging Face) or not for whole-token words (llama.cpp).
        assert_eq!(
            PreTokenizerSpec::gguf_name_for(&[LLAMA3_PATTERN], false),
            Some("smaug-bpe")
        );
        assert_eq!(
            PreTokenizerSpec::gguf_name_for(&[r"\p{N}", GPT2_PATTERN], false),
            Some("smollm")
        );
        assert_eq!(PreTokenizerSpec::gguf_name_for(&[r"\p{N}+"], false), None);
    }

    #[test]
    fn splits_keep_every_byte() {
        let pre = PreTokenizer::new(&[LLAMA3_PATTERN.to_string()], false).unwrap();
        let (mut words, mut scratch) = (Vec::new(), Vec::new());
        let text = "Hello world's  12345 \n\n  ok!!  ";
        pre.split(text, &mut words, &mut scratch);
        assert_eq!(
            words,
            ["Hello", " world", "'s", " ", " ", "123", "45", " \n\n", " ", " ok", "!!", "  "]
        );
        assert_eq!(words.concat(), text);
    }

    /// `\b` is a Unicode word boundary, as in the Oniguruma patterns of
    /// Hugging Face's `Split` (found by the `tokenizer_json` fuzz target:
    /// without the boundary tables the regex engine panicked mid-match).
    #[test]
    fn word_boundaries_are_unicode_aware() {
        let pre = PreTokenizer::new(&[r"\b\w+\b(?!\S)".to_string(), r"\b+(?!\S)|\s+".to_string()], false).unwrap();
        let (mut words, mut scratch) = (Vec::new(), Vec::new());
        let text = "héllo wörld née ";
        pre.split(text, &mut words, &mut scratch);
        assert_eq!(words, ["héllo", " ", "wörld", " ", "née", " "]);
    }
}
