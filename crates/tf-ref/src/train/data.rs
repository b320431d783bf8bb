//! Training data: a token corpus split into a training part and a held-out
//! evaluation part, and the deterministic batches drawn from it.

use crate::{philox4x32_10, Error, Result};
use std::path::Path;

const OP: &str = "Corpus";

/// Fraction of a corpus held out for evaluation: its last 10 %.
pub const EVAL_FRACTION: f64 = 0.1;

/// A token corpus: `tokens[..split]` trains, `tokens[split..]` is held out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corpus {
    tokens: Vec<u32>,
    split: usize,
}

impl Corpus {
    /// A corpus of token ids, each checked `< vocab`; the last
    /// [`EVAL_FRACTION`] of it (rounded down) is held out.
    ///
    /// Errors: no tokens, an id `≥ vocab` (naming it and its position).
    pub fn new(tokens: Vec<u32>, vocab: usize) -> Result<Self> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument { op: OP, msg: "the corpus is empty".into() });
        }
        if let Some((pos, id)) = tokens.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("token id {id} at position {pos} is out of range: the model's vocab is {vocab}"),
            });
        }
        let held = (tokens.len() as f64 * EVAL_FRACTION) as usize;
        let split = tokens.len() - held;
        Ok(Corpus { tokens, split })
    }

    /// Reads a corpus file: a `.bin` file is little-endian u16 token ids (the
    /// common GPT-2-style format); any other file is plain text read as bytes
    /// (token id = byte value, so `vocab` must be ≥ 256).
    ///
    /// Errors: I/O (naming the file), a `.bin` of odd length, byte tokens with a
    /// vocab below 256, and those of [`Corpus::new`].
    pub fn read(path: &Path, vocab: usize) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
        let named = |e: Error| match e {
            Error::InvalidArgument { op, msg } => {
                Error::InvalidArgument { op, msg: format!("{}: {msg}", path.display()) }
            }
            other => other,
        };
        let tokens = if path.extension().is_some_and(|e| e == "bin") {
            if bytes.len() % 2 != 0 {
                return Err(named(Error::InvalidArgument {
                    op: OP,
                    msg: format!("{} bytes is not a whole number of u16 token ids", bytes.len()),
                }));
            }
            bytes.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect()
        } else {
            if vocab < 256 {
                return Err(named(Error::InvalidArgument {
                    op: OP,
                    msg: format!("byte tokens need a vocab of at least 256, the model has {vocab}"),
                }));
            }
            bytes.into_iter().map(u32::from).collect()
        };
        Corpus::new(tokens, vocab).map_err(named)
    }

    /// The training tokens.
    pub fn train(&self) -> &[u32] {
        &self.tokens[..self.split]
    }

    /// The held-out tokens.
    pub fn eval(&self) -> &[u32] {
        &self.tokens[self.split..]
    }

    /// All tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Always false (an empty corpus is refused).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// A fingerprint of the tokens (FNV-1a over the ids and the length), kept in
    /// checkpoints so that a run cannot resume on other data unnoticed.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &t in &self.tokens {
            for b in t.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        h ^ self.tokens.len() as u64
    }

    /// Checks that windows of `seq + 1` tokens fit the training part (and the
    /// held-out part when `eval` is set). Errors say how long each part is.
    pub fn check_fits(&self, seq: usize, eval: bool) -> Result<()> {
        let need = seq.saturating_add(1);
        let bad = |msg: String| Err(Error::InvalidArgument { op: OP, msg });
        if self.train().len() < need {
            return bad(format!(
                "the corpus holds {} tokens, {} of them for training (90 %): fewer than seq + 1 = {need}",
                self.len(),
                self.train().len()
            ));
        }
        if eval && self.eval().len() < need {
            return bad(format!(
                "the held-out part (last 10 %) of the corpus holds {} tokens, fewer than seq + 1 = {need}: \
                 use a longer corpus or no evaluation",
                self.eval().len()
            ));
        }
        Ok(())
    }

    /// The training windows of step `step` (0-based): `batch` windows of
    /// `seq + 1` tokens. Window `b` starts at
    /// `philox4x32_10([step_lo, step_hi, b, 0], seed)[0..2] mod (train_len − seq)`
    /// (the two words as one u64): counter-based, so the data position is the
    /// step count and a resumed run draws the same windows. The caller has checked
    /// [`check_fits`](Self::check_fits).
    pub fn batch(&self, seed: u64, step: u64, batch: usize, seq: usize) -> Vec<&[u32]> {
        let train = self.train();
        let starts = (train.len() - seq) as u64;
        let key = [seed as u32, (seed >> 32) as u32];
        (0..batch)
            .map(|b| {
                let [w0, w1, _, _] = philox4x32_10([step as u32, (step >> 32) as u32, b as u32, 0], key);
                let start = ((u64::from(w1) << 32 | u64::from(w0)) % starts) as usize;
                &train[start..start + seq + 1]
            })
            .collect()
    }

    /// The evaluation windows: up to `batch` windows of `seq + 1` held-out tokens,
    /// evenly spaced from its start (the same every time).
    pub fn eval_batch(&self, batch: usize, seq: usize) -> Vec<&[u32]> {
        let eval = self.eval();
        if eval.len() < seq + 1 {
            return Vec::new();
        }
        let starts = eval.len() - seq;
        let n = batch.min(starts).max(1);
        (0..n).map(|i| i * starts / n).map(|s| &eval[s..s + seq + 1]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_deterministic_and_in_range() {
        let c = Corpus::new((0..1000).map(|i| i % 256).collect(), 256).unwrap();
        assert_eq!(c.train().len(), 900);
        let a = c.batch(7, 3, 4, 16);
        assert_eq!(a, c.batch(7, 3, 4, 16));
        assert_ne!(a, c.batch(7, 4, 4, 16));
        assert!(a.iter().all(|w| w.len() == 17));
        assert!(Corpus::new(vec![], 256).is_err());
        assert!(Corpus::new(vec![300], 256).unwrap_err().to_string().contains("300"));
        assert!(c.check_fits(899, false).is_ok() && c.check_fits(900, false).is_err());
        assert!(c.check_fits(99, true).is_ok() && c.check_fits(100, true).is_err());
        assert_eq!(c.eval_batch(4, 16).len(), 4);
    }
}
