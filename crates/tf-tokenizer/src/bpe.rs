//! Byte-pair encoding of one pre-token: its bytes as byte-level characters,
//! each a symbol, then the adjacent pair of lowest merge rank (the leftmost on a
//! tie) merged until no adjacent pair has a merge.

use std::collections::HashMap;

/// The model: vocabulary ids of the byte-level characters and the merges.
pub struct Bpe {
    /// Id of each byte's character.
    pub byte_ids: [u32; 256],
    /// `(left, right)` -> `(rank, merged id)`.
    pub merges: HashMap<(u32, u32), (u32, u32)>,
}

impl Bpe {
    /// Appends the ids of `bytes` (one pre-token) to `out`.
    pub fn encode(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(rank, id)| (rank, i, id)))
                .min();
            let Some((_, i, id)) = best else { break };
            symbols[i] = id;
            symbols.remove(i + 1);
        }
        out.extend_from_slice(&symbols);
    }
}
