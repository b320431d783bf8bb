//! The GPT-2 pre-tokenization pattern, scanned by hand:
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! The alternatives are tried in order at each position (the first that matches
//! wins, each quantifier greedy with backtracking), and the matches tile the
//! text. `\p{L}` is Unicode general category L (letters), `\p{N}` category N
//! (numbers), `\s` the White_Space property (Rust's `char::is_whitespace`); the
//! optional prefix is the ASCII space only.

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// `\p{L}`.
pub fn is_letter(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Letter
}

/// `\p{N}`.
pub fn is_number(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Number
}

/// `[^\s\p{L}\p{N}]`.
fn is_other(c: char) -> bool {
    !c.is_whitespace() && !is_letter(c) && !is_number(c)
}

const CONTRACTIONS: [&str; 7] = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];

/// Splits `text` into the pattern's matches, in order; they concatenate to `text`.
pub fn split(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let n = match_len(rest);
        pieces.push(&rest[..n]);
        rest = &rest[n..];
    }
    pieces
}

/// Byte length of the leading run of characters in `s` that satisfy `f`.
fn run(s: &str, f: impl Fn(char) -> bool) -> usize {
    s.char_indices().find(|&(_, c)| !f(c)).map_or(s.len(), |(i, _)| i)
}

/// Byte length of the pattern's match at the start of `s` (not empty).
fn match_len(s: &str) -> usize {
    if let Some(c) = CONTRACTIONS.iter().find(|c| s.starts_with(**c)) {
        return c.len();
    }
    // ` ?X+` for the three classes in order. A leading space is taken when a run
    // follows it; without it the match would start at the space, which belongs
    // to none of the classes, so that backtracking never succeeds.
    let (space, after) = match s.strip_prefix(' ') {
        Some(after) => (1, after),
        None => (0, s),
    };
    for class in [is_letter as fn(char) -> bool, is_number, is_other] {
        let n = run(after, class);
        if n > 0 {
            return space + n;
        }
    }
    // `s` starts with whitespace. `\s+(?!\S)`: the whole run when it reaches the
    // end of the text, else the run less its last character when that leaves at
    // least one (whitespace follows it then); otherwise `\s+`: the whole run.
    let n = run(s, char::is_whitespace);
    debug_assert!(n > 0, "every character is whitespace, a letter, a number or other");
    if n == s.len() {
        return n;
    }
    let last = s[..n].chars().next_back().map_or(0, char::len_utf8);
    if n > last {
        n - last
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert!(is_letter('a') && is_letter('ж') && is_letter('中') && is_letter('ʰ'));
        // Devanagari vowel signs are marks (Mc/Mn): alphabetic, but not \p{L}.
        assert!(!is_letter('ि') && !is_letter('्') && 'ि'.is_alphabetic());
        assert!(is_number('7') && is_number('½') && is_number('Ⅻ') && is_number('٣'));
        assert!(is_other('!') && is_other('😀') && is_other('\u{200d}') && !is_other('\u{a0}'));
    }
}
