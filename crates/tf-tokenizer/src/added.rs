//! Added tokens (`added_tokens` of tokenizer.json): strings that become one id
//! each, found in the text before BPE. At each position the longest token that
//! starts there matches (leftmost-longest); `single_word` rejects a match with
//! a word character (alphanumeric or `_`) right before or after it, `lstrip` and
//! `rstrip` swallow the whitespace on that side into the token.

/// One entry of `added_tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    pub id: u32,
    pub content: String,
    pub single_word: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    /// Matched in the normalised text (else in the raw text).
    pub normalized: bool,
    pub special: bool,
}

/// A piece of text after splitting on added tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Token(u32),
}

/// A set of added tokens to find, with the patterns they are matched by.
pub struct Matcher {
    /// (pattern, token), longest pattern first.
    patterns: Vec<(String, AddedToken)>,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Matcher {
    /// `tokens` with the patterns they are matched by (their content, or its
    /// normalised form); empty patterns are dropped.
    pub fn new(tokens: Vec<(String, AddedToken)>) -> Self {
        let mut patterns: Vec<_> = tokens.into_iter().filter(|(p, _)| !p.is_empty()).collect();
        patterns.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Matcher { patterns }
    }

    /// The longest pattern that starts at byte `i` of `text`.
    fn longest_at(&self, text: &str, i: usize) -> Option<&(String, AddedToken)> {
        self.patterns.iter().find(|(p, _)| text[i..].starts_with(p.as_str()))
    }

    /// Splits `text` into text pieces (never empty) and added tokens, appending to `out`.
    pub fn split<'a>(&self, text: &'a str, out: &mut Vec<Piece<'a>>) {
        if self.patterns.is_empty() {
            if !text.is_empty() {
                out.push(Piece::Text(text));
            }
            return;
        }
        let (mut done, mut i) = (0, 0);
        while i < text.len() {
            let Some((pattern, token)) = self.longest_at(text, i) else {
                i += text[i..].chars().next().map_or(1, char::len_utf8);
                continue;
            };
            let (mut start, mut end) = (i, i + pattern.len());
            i = end;
            if token.single_word {
                let before = text[..start].chars().next_back().is_some_and(is_word_char);
                let after = text[end..].chars().next().is_some_and(is_word_char);
                if before || after {
                    continue;
                }
            }
            if token.lstrip {
                let kept = text[done..start].trim_end_matches(char::is_whitespace).len();
                start = done + kept;
            }
            if token.rstrip {
                end = text.len() - text[end..].trim_start_matches(char::is_whitespace).len();
                i = end;
            }
            if done < start {
                out.push(Piece::Text(&text[done..start]));
            }
            out.push(Piece::Token(token.id));
            done = end;
        }
        if done < text.len() {
            out.push(Piece::Text(&text[done..]));
        }
    }
}
