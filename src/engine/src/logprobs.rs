//! Log-probabilities of generated tokens, as OpenAI (and llama.cpp's server
//! with `post_sampling_probs: false`) report them: the log-softmax of the
//! model's **raw** logits, before temperature, penalties, logit bias and
//! top-k/top-p, for the chosen token and the `top_n` most likely ones.
//!
//! A job that asks keeps one row per generated token in [`Logprobs`]: a
//! fixed-stride byte string (4 + 8·top_n bytes a token, 44 at most), kept
//! with the job's tokens in its state. A job that does not ask has none.

use serde::{Deserialize, Serialize};

/// Most alternatives a token may keep (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 5;

/// What OpenAI reports for a token whose probability is 0 (a logit of −∞):
/// JSON has no −∞.
pub const MIN_LOGPROB: f32 = -9999.0;

/// One generated token's log-probability and its most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// `(token, logprob)`, most likely first; ties by lower token id.
    pub top: Vec<(u32, f32)>,
}

/// ln Σ exp(logits), shifted by the max and summed in f64 (a vocabulary of
/// 262 K small terms loses nothing; f32 would drift by ~1e-4).
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln()
}

/// Ids of the `k` highest logits, highest first; ties by lower id, NaN lowest.
pub fn top_ids(logits: &[f32], k: usize) -> Vec<u32> {
    let rank = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    // (logit, id) sorted descending; scanning ids upwards, a strict `>`
    // keeps the lower id first among equal logits.
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (id, &l) in logits.iter().enumerate() {
        let l = rank(l);
        if best.len() == k && best.last().is_none_or(|&(w, _)| l <= w) {
            continue;
        }
        let at = best.iter().position(|&(w, _)| l > w).unwrap_or(best.len());
        best.insert(at, (l, id as u32));
        best.truncate(k);
    }
    best.into_iter().map(|(_, id)| id).collect()
}

/// The chosen token's log-probability and the `top_n` most likely tokens'
/// under the log-softmax of the raw `logits` (vocab_size).
pub fn token_logprobs(logits: &[f32], chosen: u32, top_n: usize) -> TokenLogprobs {
    let lse = log_sum_exp(logits);
    let logprob = |id: u32| logits.get(id as usize).map_or(MIN_LOGPROB, |&l| clamp(l as f64 - lse));
    TokenLogprobs {
        logprob: logprob(chosen),
        top: top_ids(logits, top_n).into_iter().map(|id| (id, logprob(id))).collect(),
    }
}

/// As f32, with −∞ (and NaN) as [`MIN_LOGPROB`].
fn clamp(lp: f64) -> f32 {
    (lp as f32).max(MIN_LOGPROB)
}

/// The log-probabilities a job keeps: one row per generated token, each
/// `logprob: f32`, then `top_n` × (`token: u32`, `logprob: f32`), little-endian.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logprobs {
    top_n: u8,
    #[serde(with = "crate::serde_bytes")]
    rows: Vec<u8>,
}

/// More alternatives than [`MAX_TOP_LOGPROBS`] were asked for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {0}")]
pub struct TooManyAlternatives(pub usize);

impl Logprobs {
    pub fn new(top_n: usize) -> Result<Logprobs, TooManyAlternatives> {
        if top_n > MAX_TOP_LOGPROBS {
            return Err(TooManyAlternatives(top_n));
        }
        Ok(Logprobs {
            top_n: top_n as u8,
            rows: Vec::new(),
        })
    }

    /// Alternatives kept per token.
    pub fn top_n(&self) -> usize {
        self.top_n as usize
    }

    fn stride(&self) -> usize {
        4 + 8 * self.top_n()
    }

    /// Tokens kept.
    pub fn len(&self) -> usize {
        self.rows.len() / self.stride()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whole rows of a valid width (it may have been restored from storage).
    pub fn is_consistent(&self) -> bool {
        self.top_n() <= MAX_TOP_LOGPROBS && self.rows.len().is_multiple_of(self.stride())
    }

    /// Appends a token's row; alternatives beyond `top_n` are dropped, missing ones
    /// (a vocabulary smaller than `top_n`) written as token 0 at [`MIN_LOGPROB`].
    pub fn push(&mut self, t: &TokenLogprobs) {
        self.rows.extend_from_slice(&t.logprob.to_le_bytes());
        for i in 0..self.top_n() {
            let (id, lp) = t.top.get(i).copied().unwrap_or((0, MIN_LOGPROB));
            self.rows.extend_from_slice(&id.to_le_bytes());
            self.rows.extend_from_slice(&lp.to_le_bytes());
        }
    }

    /// The row of generated token `i`.
    pub fn get(&self, i: usize) -> Option<TokenLogprobs> {
        let row = self.rows.get(i * self.stride()..(i + 1) * self.stride())?;
        let word = |at: usize| [row[at], row[at + 1], row[at + 2], row[at + 3]];
        Some(TokenLogprobs {
            logprob: f32::from_le_bytes(word(0)),
            top: (0..self.top_n())
                .map(|k| {
                    let at = 4 + 8 * k;
                    (u32::from_le_bytes(word(at)), f32::from_le_bytes(word(at + 4)))
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent log-softmax: probabilities by plain division in f64,
    /// no shift (fine for the small logits it is given), then ln.
    fn naive_log_softmax(logits: &[f32]) -> Vec<f64> {
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        logits.iter().map(|&l| ((l as f64).exp() / z).ln()).collect()
    }

    #[test]
    fn logprobs_are_the_log_softmax_of_the_raw_logits() {
        // A vocabulary-sized row of small logits with a pseudo-random spread.
        let logits: Vec<f32> = (0..32000u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 8) % 2000) as f32 / 200.0 - 5.0)
            .collect();
        let want = naive_log_softmax(&logits);
        let got = token_logprobs(&logits, 123, 5);
        assert!(
            (got.logprob as f64 - want[123]).abs() < 1e-5,
            "{} vs {}",
            got.logprob,
            want[123]
        );
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
        assert_eq!(got.top.len(), 5);
        for (k, &(id, lp)) in got.top.iter().enumerate() {
            assert_eq!(id as usize, order[k]);
            assert!((lp as f64 - want[order[k]]).abs() < 1e-5);
        }
        let mass: f64 = want.iter().map(|l| l.exp()).sum();
        assert!((mass - 1.0).abs() < 1e-9);
    }

    #[test]
    fn large_logits_do_not_overflow() {
        // exp(1000) overflows f32 and f64; shifted by the max it is exact.
        let got = token_logprobs(&[1000.0, 999.0, f32::NEG_INFINITY], 1, 3);
        let p0 = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((got.top[0].1 as f64 - p0.ln()).abs() < 1e-6);
        assert!((got.logprob as f64 - (1.0 - p0).ln()).abs() < 1e-6);
        assert_eq!(got.top[2], (2, MIN_LOGPROB));
    }

    #[test]
    fn ties_go_to_the_lower_id() {
        assert_eq!(top_ids(&[1.0, 3.0, 2.0, 3.0, f32::NAN, 3.0], 3), vec![1, 3, 5]);
        assert_eq!(top_ids(&[f32::NAN, 0.0], 2), vec![1, 0]);
        assert_eq!(top_ids(&[1.0, 2.0], 5), vec![1, 0]);
        assert!(top_ids(&[1.0], 0).is_empty());
    }

    #[test]
    fn rows_round_trip_compactly() {
        let mut kept = Logprobs::new(2).unwrap();
        let a = token_logprobs(&[0.5, 2.0, -1.0], 0, 2);
        let b = token_logprobs(&[3.0, 2.0, 1.0], 2, 2);
        kept.push(&a);
        kept.push(&b);
        assert_eq!(
            (kept.len(), kept.get(0), kept.get(1), kept.get(2)),
            (2, Some(a), Some(b), None)
        );
        let mut cbor = Vec::new();
        ciborium::into_writer(&kept, &mut cbor).unwrap();
        assert!(cbor.len() < 2 * 20 + 24, "{} bytes", cbor.len());
        let back: Logprobs = ciborium::from_reader(&cbor[..]).unwrap();
        assert_eq!(back, kept);
        assert!(back.is_consistent());
        assert_eq!(Logprobs::new(6), Err(TooManyAlternatives(6)));
    }
}
