//! Sampling: logits → next token, with an explicit, serializable RNG.
//!
//! Order of the filters (as llama.cpp's default chain): repetition penalty,
//! then greedy if `temperature == 0`, else top-k → top-p → min-p →
//! temperature → draw. Every step is deterministic given the logits and the
//! RNG state; ties are broken by the lower token id.

use crate::kernels;
use serde::{Deserialize, Serialize};

/// Sampling settings of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 = greedy (argmax); otherwise logits are divided by it before the draw.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 = off.
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability sums to ≥ `top_p`; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one; 0 = off.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens; 1 = off.
    pub repeat_penalty: f32,
    /// How many of the last tokens (prompt included) the penalty looks at.
    pub repeat_last_n: u32,
    /// Seed of the job's RNG.
    pub seed: u64,
    /// Subtracted once from the logit of every token generated so far (as
    /// OpenAI's `presence_penalty`); 0 = off.
    #[serde(default)]
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated so far
    /// (as OpenAI's `frequency_penalty`); 0 = off.
    #[serde(default)]
    pub frequency_penalty: f32,
    /// `(token, bias)` added to those tokens' logits before sampling (as
    /// OpenAI's `logit_bias`); -100 in effect bans a token, 100 forces it.
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (argmax), no penalty.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), SamplingError> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(SamplingError::Temperature(t));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP(self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(SamplingError::MinP(self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(SamplingError::RepeatPenalty(self.repeat_penalty));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(SamplingError::Penalty(name, v));
            }
        }
        if let Some(&(token, bias)) = self.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(b)) {
            return Err(SamplingError::LogitBias(token, bias));
        }
        Ok(())
    }
}

/// A sampling setting that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error("temperature must be a finite number ≥ 0 (0 = greedy), got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1] (1 = off), got {0}")]
    TopP(f32),
    #[error("min_p must be in [0, 1] (0 = off), got {0}")]
    MinP(f32),
    #[error("repeat_penalty must be a finite number > 0 (1 = off), got {0}")]
    RepeatPenalty(f32),
    #[error("{0} must be between -2 and 2 (0 = off), got {1}")]
    Penalty(&'static str, f32),
    #[error("the logit bias of token {0} must be between -100 and 100, got {1}")]
    LogitBias(u32, f32),
}

/// xorshift64* generator; its state is plain data saved with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// Seeds through splitmix64, so any seed (including 0) gives a non-zero state.
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng {
            state: if z == 0 { 0x2545_F491_4F6C_DD1D } else { z },
        }
    }

    pub fn next_u32(&mut self) -> u32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16_777_216.0
    }
}

/// Index of the largest value; the first one on ties. NaN counts as smallest.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best
}

/// Applies the repetition penalty in place to the tokens among the last
/// `repeat_last_n` of `history` (each distinct token once).
pub fn apply_repeat_penalty(logits: &mut [f32], history: &[u32], params: &SamplingParams) {
    if params.repeat_penalty == 1.0 || params.repeat_last_n == 0 {
        return;
    }
    let start = history.len().saturating_sub(params.repeat_last_n as usize);
    let mut seen: Vec<u32> = history[start..].to_vec();
    seen.sort_unstable();
    seen.dedup();
    for &t in &seen {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 {
                *l / params.repeat_penalty
            } else {
                *l * params.repeat_penalty
            };
        }
    }
}

/// Applies OpenAI's presence and frequency penalties (over the `generated`
/// tokens only, as OpenAI counts them) and the logit bias, in place.
pub fn apply_penalties_and_bias(logits: &mut [f32], generated: &[u32], params: &SamplingParams) {
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        let mut seen: Vec<u32> = generated.to_vec();
        seen.sort_unstable();
        for run in seen.chunk_by(|a, b| a == b) {
            if let Some(l) = logits.get_mut(run[0] as usize) {
                *l -= params.presence_penalty + params.frequency_penalty * run.len() as f32;
            }
        }
    }
    for &(token, bias) in &params.logit_bias {
        if let Some(l) = logits.get_mut(token as usize) {
            *l += bias;
        }
    }
}

/// Temperatures below this sample greedily: dividing logits by a tinier
/// (or subnormal) one overflows to infinities, and softmax of those is NaN.
/// At 1e-6 a logit gap of 1e-4 is already e^100 to 1, so nothing is lost.
pub const GREEDY_BELOW: f32 = 1e-6;

/// Picks the next token from `logits` (vocab_size), modified in place.
/// `history` is the sequence so far (prompt + generated), for the penalty.
pub fn sample(logits: &mut [f32], history: &[u32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    apply_repeat_penalty(logits, history, params);
    if params.temperature < GREEDY_BELOW || logits.len() <= 1 {
        return kernels::argmax(logits) as u32;
    }

    // Candidates sorted by logit, descending (ties: lower id first).
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let k = params.top_k as usize;
    if k > 0 && k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by_logit);
        ids.truncate(k);
    }
    ids.sort_unstable_by(by_logit);

    // top-p and min-p on the untempered distribution.
    let mut probs: Vec<f32> = ids.iter().map(|&i| logits[i as usize]).collect();
    kernels::softmax(&mut probs);
    if params.top_p < 1.0 {
        let mut cum = 0.0f32;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= params.top_p {
                keep = i + 1;
                break;
            }
        }
        ids.truncate(keep);
        probs.truncate(keep);
    }
    if params.min_p > 0.0 {
        let threshold = params.min_p * probs[0];
        let keep = probs.iter().take_while(|&&p| p >= threshold).count().max(1);
        ids.truncate(keep);
    }

    // Temperature, then draw.
    let mut weights: Vec<f32> = ids.iter().map(|&i| logits[i as usize] / params.temperature).collect();
    kernels::softmax(&mut weights);
    let r = rng.next_f32();
    let mut cum = 0.0f32;
    for (i, w) in weights.iter().enumerate() {
        cum += w;
        if r < cum {
            return ids[i];
        }
    }
    ids[ids.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_frequency_and_bias_follow_openai() {
        let p = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            logit_bias: vec![(3, -100.0), (9, 1.0)],
            ..params(1.0)
        };
        let mut logits = [1.0, 1.0, 1.0, 1.0];
        apply_penalties_and_bias(&mut logits, &[1, 1, 2], &p);
        assert_eq!(logits, [1.0, 1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25, -99.0]);
        assert!(SamplingParams {
            presence_penalty: 2.5,
            ..p.clone()
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            logit_bias: vec![(0, 101.0)],
            ..p
        }
        .validate()
        .is_err());
    }

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn tiny_and_subnormal_temperatures_are_greedy() {
        for t in [1e-38, f32::MIN_POSITIVE / 2.0, 1e-7] {
            let mut rng = Rng::new(7);
            let mut logits = [0.5, 30.0, -2.0, 29.9];
            assert_eq!(sample(&mut logits, &[], &params(t), &mut rng), 1, "temperature {t}");
        }
    }

    #[test]
    fn greedy_takes_argmax_first_on_ties() {
        let mut rng = Rng::new(1);
        assert_eq!(sample(&mut [0.1, 3.0, 3.0, -1.0], &[], &params(0.0), &mut rng), 1);
    }

    #[test]
    fn validation_rejects_bad_values_with_clear_messages() {
        let bad = [
            SamplingParams {
                temperature: -0.5,
                ..params(1.0)
            },
            SamplingParams {
                temperature: f32::NAN,
                ..params(1.0)
            },
            SamplingParams {
                top_p: 0.0,
                ..params(1.0)
            },
            SamplingParams {
                top_p: 1.5,
                ..params(1.0)
            },
            SamplingParams {
                min_p: -0.1,
                ..params(1.0)
            },
            SamplingParams {
                repeat_penalty: 0.0,
                ..params(1.0)
            },
        ];
        for p in bad {
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains("must be"), "{err}");
        }
        assert!(SamplingParams::default().validate().is_ok());
        assert!(SamplingParams::greedy().validate().is_ok());
    }

    #[test]
    fn rng_is_plain_data_and_reproducible() {
        let mut a = Rng::new(42);
        a.next_u32();
        let saved = serde_json::to_string(&a).unwrap();
        let mut b: Rng = serde_json::from_str(&saved).unwrap();
        for _ in 0..100 {
            let (x, y) = (a.next_f32(), b.next_f32());
            assert_eq!(x, y);
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(Rng::new(0).next_u32(), Rng::new(0).next_u32() ^ 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut rng = Rng::new(7);
        let p = SamplingParams {
            top_k: 1,
            ..params(5.0)
        };
        for _ in 0..20 {
            assert_eq!(sample(&mut [0.0, 1.0, 0.5, 0.9], &[], &p, &mut rng), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities ≈ [0.84, 0.11, 0.04, 0.01]: top_p 0.5 keeps only token 0.
        let mut rng = Rng::new(9);
        let p = SamplingParams {
            top_p: 0.5,
            ..params(1.0)
        };
        for _ in 0..50 {
            assert_eq!(sample(&mut [4.0, 2.0, 1.0, -0.5], &[], &p, &mut rng), 0);
        }
    }

    #[test]
    fn temperature_sampling_follows_the_distribution() {
        let mut rng = Rng::new(3);
        let mut counts = [0u32; 3];
        let logits = [0.0f32, (2.0f32).ln(), f32::NEG_INFINITY]; // p = 1/3, 2/3, 0
        for _ in 0..3000 {
            counts[sample(&mut logits.clone(), &[], &params(1.0), &mut rng) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((900..1100).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn repeat_penalty_discourages_seen_tokens() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            repeat_last_n: 4,
            ..params(0.0)
        };
        let mut rng = Rng::new(1);
        // Token 0 (logit 3) was seen: 3 / 2 = 1.5 < 2.
        assert_eq!(sample(&mut [3.0, 2.0], &[0], &p, &mut rng), 1);
    }
}
