//! Byte-pair encoding of one pre-token: its bytes as byte-level characters,
//! each a symbol, then the adjacent pair of lowest merge rank (the leftmost on a
//! tie) merged until no adjacent pair has a merge. The symbols form a linked
//! list and the candidate pairs a heap (stale entries skipped), so a long
//! pre-token costs O(n log n), not O(n²).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The model: vocabulary ids of the byte-level characters and the merges.
pub struct Bpe {
    /// Id of each byte's character.
    pub byte_ids: [u32; 256],
    /// `(left, right)` -> `(rank, merged id)`.
    pub merges: HashMap<(u32, u32), (u32, u32)>,
}

/// No neighbour.
const NONE: usize = usize::MAX;

impl Bpe {
    /// Appends the ids of `bytes` (one pre-token) to `out`.
    pub fn encode(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let n = bytes.len();
        let mut id: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.checked_sub(1).unwrap_or(NONE)).collect();
        let mut next: Vec<usize> = (0..n).map(|i| if i + 1 < n { i + 1 } else { NONE }).collect();
        let mut alive = vec![true; n];
        // (rank, position of the left symbol, left id, right id), lowest first.
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, i: usize, a: u32, b: u32| {
            if let Some(&(rank, _)) = self.merges.get(&(a, b)) {
                heap.push(Reverse((rank, i, a, b)));
            }
        };
        for i in 1..n {
            push(&mut heap, i - 1, id[i - 1], id[i]);
        }
        while let Some(Reverse((_, i, a, b))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j == NONE || id[i] != a || id[j] != b {
                continue; // the pair no longer exists
            }
            id[i] = self.merges[&(a, b)].1;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
                push(&mut heap, i, id[i], id[next[j]]);
            }
            if prev[i] != NONE {
                push(&mut heap, prev[i], id[prev[i]], id[i]);
            }
        }
        let mut i = if n > 0 { 0 } else { NONE };
        while i != NONE {
            out.push(id[i]);
            i = next[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, quadratic: merge the lowest-ranked (then leftmost) pair.
    fn reference(bpe: &Bpe, bytes: &[u8]) -> Vec<u32> {
        let mut symbols: Vec<u32> = bytes.iter().map(|&b| bpe.byte_ids[b as usize]).collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| bpe.merges.get(&(w[0], w[1])).map(|&(rank, id)| (rank, i, id)))
                .min();
            let Some((_, i, id)) = best else { return symbols };
            symbols[i] = id;
            symbols.remove(i + 1);
        }
    }

    #[test]
    fn the_heap_merges_like_the_definition() {
        // Bytes a=0, b=1, c=2 (ids 0..3); merges in rank order:
        // "a b" -> 3, "b b" -> 4, "3 c" -> 5, "c c" -> 6, "a a" -> 7, "6 6" -> 8, "7 a" -> 9.
        let mut byte_ids = [0u32; 256];
        for (b, v) in byte_ids.iter_mut().enumerate() {
            *v = b as u32;
        }
        let list = [(0, 1, 3), (1, 1, 4), (3, 2, 5), (2, 2, 6), (0, 0, 7), (6, 6, 8), (7, 0, 9)];
        let merges = list.iter().enumerate().map(|(r, &(a, b, m))| ((a, b), (r as u32, m))).collect();
        let bpe = Bpe { byte_ids, merges };
        // every word over {a, b, c} up to length 7
        for len in 0..=7u32 {
            for code in 0..3u32.pow(len) {
                let word: Vec<u8> = (0..len).map(|k| (code / 3u32.pow(k) % 3) as u8).collect();
                let mut got = Vec::new();
                bpe.encode(&word, &mut got);
                assert_eq!(got, reference(&bpe, &word), "{word:?}");
            }
        }
    }

    #[test]
    fn the_heap_merges_like_the_definition_on_random_tables() {
        // A small LCG: fixed pseudo-random merge tables and words.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let mut byte_ids = [0u32; 256];
        for (b, v) in byte_ids.iter_mut().enumerate() {
            *v = b as u32;
        }
        for _ in 0..200 {
            // Tokens 0..4 are bytes; each merge joins two existing tokens into a new one.
            let mut merges = HashMap::new();
            let mut tokens = 4u32;
            for rank in 0..24 {
                let (a, b) = (rand(tokens as u64) as u32, rand(tokens as u64) as u32);
                if let std::collections::hash_map::Entry::Vacant(e) = merges.entry((a, b)) {
                    e.insert((rank, tokens + 256));
                    tokens += 1;
                }
            }
            // merged ids live above the byte ids; map the table into that space
            let merges = merges
                .into_iter()
                .map(|((a, b), (r, m))| {
                    let lift = |t: u32| if t < 4 { t } else { t + 256 };
                    ((lift(a), lift(b)), (r, m))
                })
                .collect();
            let bpe = Bpe { byte_ids, merges };
            for _ in 0..200 {
                let word: Vec<u8> = (0..rand(17)).map(|_| rand(4) as u8).collect();
                let mut got = Vec::new();
                bpe.encode(&word, &mut got);
                assert_eq!(got, reference(&bpe, &word), "{word:?}");
            }
        }
    }
}
