//! Sampling token by token: [`Tokenformer::generate`], the prompt in one
//! pass and then one captured decode step replayed per token.

use super::Tokenformer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// How [`Tokenformer::generate`] picks each next token from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on ties).
    Greedy,
    /// A draw from `softmax(logits / t)`, reproducible for a given `seed`.
    Temperature {
        /// The temperature, finite and > 0.
        t: f32,
        /// Seed of the draws.
        seed: u64,
    },
}

impl<T: DType> Tokenformer<T> {
    /// `max_new` token ids continuing `prompt`, each chosen by `sampling` from the
    /// logits of the last position: the prompt in one pass, then one token per
    /// step through the KV cache, the steps as one captured decode step replayed
    /// per token ([`capture_decode`](Self::capture_decode); should a GPU refuse
    /// the capture, the steps run uncaptured). Returns the new ids only. The device
    /// memory (cache, scratch, logits, the graph's buffers) is allocated before
    /// the steps; the steps allocate none.
    pub fn generate(&self, prompt: &[u32], max_new: usize, sampling: Sampling) -> Result<Vec<u32>> {
        self.generate_with(prompt, max_new, sampling, |_| {})
    }

    /// [`generate`](Self::generate), calling `on_token` with each new id as it is chosen.
    pub fn generate_with(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampling: Sampling,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        const OP: &str = "Tokenformer::generate";
        let mut rng = match sampling {
            Sampling::Greedy => None,
            Sampling::Temperature { t, seed } => {
                if !(t.is_finite() && t > 0.0) {
                    return Err(Error::InvalidArgument {
                        op: OP,
                        msg: format!("temperature must be finite and > 0, got {t}"),
                    });
                }
                Some((t, SplitMix64(seed)))
            }
        };
        self.check_tokens(OP, prompt)?;
        let total = prompt.len().checked_add(max_new).ok_or_else(|| Error::SizeOverflow {
            op: OP,
            msg: format!("{} prompt tokens + {max_new} new", prompt.len()),
        })?;
        if max_new == 0 {
            return Ok(Vec::new());
        }
        // The cache (total positions) is allocated first: it fails cleanly for a
        // huge max_new, and once it exists the ids fit too.
        let mut cache = self.new_cache(total)?;
        let mut out = Vec::with_capacity(max_new);
        let mut logits = self.dev.output::<T>(&[1, self.geo.vocab])?;
        self.run(prompt, &mut cache, &mut logits.view_mut())?;
        let mut choose = |logits: &Tensor<T>, pos: usize| -> Result<u32> {
            let row: Vec<f32> = logits.to_vec()?.iter().map(|x| x.to_f32()).collect();
            let tok = match &mut rng {
                None => argmax(&row),
                Some((t, r)) => sample_temperature(&row, *t, r),
            }
            .ok_or_else(|| Error::InvalidArgument {
                op: OP,
                msg: format!("the logits at position {pos} are not finite"),
            })?;
            out.push(tok);
            on_token(tok);
            Ok(tok)
        };
        // The steps' graph is captured before the first id is chosen, so that
        // nothing is allocated once ids flow. The emulator refuses nothing a GPU
        // would accept: there a failed capture is a bug to report, not to work
        // around.
        let graph = if max_new > 1 {
            match self.capture_decode(&mut cache) {
                Ok(g) => Some(g),
                Err(e) if !self.dev.is_cuda() => return Err(e),
                Err(_) => None,
            }
        } else {
            None
        };
        let mut tok = choose(&logits, prompt.len() - 1)?;
        match graph {
            Some(mut graph) => {
                for _ in 1..max_new {
                    let pos = graph.cache_len();
                    tok = choose(graph.step(tok)?, pos)?;
                }
            }
            None => {
                for _ in 1..max_new {
                    self.run(&[tok], &mut cache, &mut logits.view_mut())?;
                    tok = choose(&logits, cache.len() - 1)?;
                }
            }
        }
        Ok(out)
    }
}

/// Index of the largest value (the first on ties); None if any value is not finite.
fn argmax(v: &[f32]) -> Option<u32> {
    if v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    u32::try_from(best).ok()
}

/// A draw from softmax(v / t); None if any value is not finite.
fn sample_temperature(v: &[f32], t: f32, rng: &mut SplitMix64) -> Option<u32> {
    if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = v.iter().map(|&x| ((f64::from(x) - f64::from(m)) / f64::from(t)).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut u = rng.uniform() * total;
    for (i, &wi) in w.iter().enumerate() {
        if u < wi {
            return u32::try_from(i).ok();
        }
        u -= wi;
    }
    // Rounding left u just past the last weight: the last token with weight > 0.
    w.iter().rposition(|&x| x > 0.0).and_then(|i| u32::try_from(i).ok())
}

/// SplitMix64 (Steele et al.): the sampler's small, seedable generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_helpers() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, -1.0]), Some(1));
        assert_eq!(argmax(&[0.0, f32::NAN]), None);
        let mut r = SplitMix64(7);
        // A very low temperature is greedy.
        assert_eq!(sample_temperature(&[0.0, 5.0, 1.0], 1e-3, &mut r), Some(1));
        // Draws follow the weights roughly.
        let mut counts = [0usize; 2];
        for _ in 0..4000 {
            counts[sample_temperature(&[0.0, (3.0f32).ln()], 1.0, &mut r).unwrap() as usize] += 1;
        }
        let frac = counts[1] as f64 / 4000.0;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
    }
}
