//! The depthwise causal convolution of LFM2's short-convolution blocks.

/// Convolves `xs` (n, dim) over time, channel by channel, continuing from
/// `state` ((taps - 1), dim): the inputs that preceded `xs`, oldest first
/// (zeros before a sequence's first token). `weight` (dim, taps) holds each
/// channel's taps, oldest position first, so output `t` of channel `i` is
/// `Σ_j weight[i][j] · input[t + j - (taps - 1)][i]`, summed in `j` order
/// from 0 (as ggml's `ssm_conv`). Writes `out` (n, dim) and leaves in
/// `state` the last `taps - 1` inputs, so that feeding a sequence in pieces
/// gives the bits of feeding it whole.
pub fn short_conv(state: &mut [f32], xs: &[f32], weight: &[f32], dim: usize, out: &mut [f32]) {
    let taps = weight.len() / dim;
    let kept = taps - 1;
    let n = xs.len() / dim;
    debug_assert_eq!(state.len(), kept * dim);
    debug_assert_eq!(out.len(), xs.len());
    // Input row `r` of the sequence state ++ xs.
    let input = |state: &[f32], r: usize, i: usize| {
        if r < kept {
            state[r * dim + i]
        } else {
            xs[(r - kept) * dim + i]
        }
    };
    for t in 0..n {
        for i in 0..dim {
            let taps_i = &weight[i * taps..(i + 1) * taps];
            let mut sum = 0.0f32;
            for (j, w) in taps_i.iter().enumerate() {
                sum += input(state, t + j, i) * w;
            }
            out[t * dim + i] = sum;
        }
    }
    // The new state is rows n..n + kept of state ++ xs; row r reads row
    // n + r > r, so ascending order never reads an overwritten row.
    for r in 0..kept {
        for i in 0..dim {
            state[r * dim + i] = input(state, n + r, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pseudo;

    /// The convolution written out for taps = 3 from zeros: out[t] =
    /// w0·x[t-2] + w1·x[t-1] + w2·x[t].
    #[test]
    fn three_taps_weigh_the_two_previous_inputs_and_the_current_one() {
        let dim = 2;
        let weight = [1.0, 10.0, 100.0, 2.0, 20.0, 200.0]; // (dim, taps)
        let xs = [1.0, -1.0, 2.0, -2.0, 3.0, -3.0]; // 3 tokens
        let mut state = vec![0.0; 2 * dim];
        let mut out = vec![0.0; 6];
        short_conv(&mut state, &xs, &weight, dim, &mut out);
        assert_eq!(out, [100.0, -200.0, 210.0, -420.0, 321.0, -642.0]);
        assert_eq!(state, [2.0, -2.0, 3.0, -3.0], "the last two inputs");
    }

    /// Any split of a sequence into pieces gives the same bits as one piece,
    /// including pieces shorter than the state.
    #[test]
    fn pieces_give_the_bits_of_the_whole() {
        let (dim, taps, n) = (5, 4, 11);
        let weight = pseudo(dim * taps, 1);
        let xs = pseudo(n * dim, 2);
        let mut whole_state = vec![0.0; (taps - 1) * dim];
        let mut whole = vec![0.0; n * dim];
        short_conv(&mut whole_state, &xs, &weight, dim, &mut whole);
        for pieces in [vec![1; n], vec![2, 1, 5, 3], vec![10, 1], vec![3, 3, 3, 2]] {
            let mut state = vec![0.0; (taps - 1) * dim];
            let mut got = Vec::new();
            let mut t0 = 0;
            for len in pieces {
                let mut out = vec![0.0; len * dim];
                short_conv(&mut state, &xs[t0 * dim..(t0 + len) * dim], &weight, dim, &mut out);
                got.extend(out);
                t0 += len;
            }
            assert_eq!(got, whole);
            assert_eq!(state, whole_state);
        }
    }
}
