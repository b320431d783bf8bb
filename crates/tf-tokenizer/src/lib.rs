//! Hugging Face `tokenizer.json` support for byte-level BPE tokenizers, the
//! GPT-2 / GPT-NeoX-20B family (the official TokenFormer models use
//! GPT-NeoX-20B's tokenizer), without the `tokenizers` crate.
//!
//! Encoding runs the same stages as the Hugging Face library:
//! 1. added tokens with `normalized: false` are found in the raw text;
//! 2. the text between them is normalised (NFC, when configured), and added
//!    tokens with `normalized: true` are found in it;
//! 3. each remaining piece gets a leading space if `add_prefix_space` is set and
//!    it has none, is split by the GPT-2 pattern ([`pre_tokenize`]; unless
//!    `use_regex` is false), and each split's UTF-8 bytes, as byte-level
//!    characters ([`byte_to_char`]), are merged by BPE in merge-rank order.
//!
//! Decoding maps each id to its token, each token's characters back to bytes
//! (a token with a character outside the byte-level alphabet, such as an added
//! run of spaces, stands for its own UTF-8 bytes) and reads the bytes as UTF-8,
//! invalid sequences as U+FFFD. Special tokens are kept.
//!
//! Accepted: `model.type` "BPE" with `vocab` and `merges` (as `"a b"` strings or
//! `["a", "b"]` pairs) holding all 256 byte-level characters, `dropout`,
//! `continuing_subword_prefix` and `end_of_word_suffix` null, `byte_fallback`
//! and `ignore_merges` false; `normalizer` null or NFC; `pre_tokenizer`
//! ByteLevel (`add_prefix_space`, `use_regex`) or a Sequence of one ByteLevel;
//! `decoder` ByteLevel; `post_processor` null or ByteLevel (which changes no
//! ids); `truncation` and `padding` null; `added_tokens` with `single_word`,
//! `lstrip`, `rstrip`, `normalized` and `special`. Anything else is a
//! [`TokenizerError::Unsupported`] naming the field.
//!
//! The tests compare every encoding and decoding with fixtures made by the
//! Hugging Face `tokenizers` Python library, version 0.23.3
//! (`tools/make_fixtures.py`; the version is recorded in `tests/data/meta.json`).

mod added;
mod bpe;
mod bytes;
mod config;
mod pretok;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use unicode_normalization::UnicodeNormalization;

pub use added::AddedToken;
use added::{Matcher, Piece};
pub use bytes::byte_to_char;
use bytes::CharToByte;
pub use pretok::split as pre_tokenize;

/// Why a tokenizer could not be read, or ids not decoded. Its message is one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerError {
    /// The file could not be read.
    Io { path: String, message: String },
    /// The text is not JSON.
    Json(String),
    /// A valid configuration this crate does not implement; names the field.
    Unsupported(String),
    /// A missing, mistyped or inconsistent field.
    Invalid(String),
    /// `decode` was given an id that no token has.
    UnknownId(u32),
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::Io { path, message } => write!(f, "{path}: {message}"),
            TokenizerError::Json(e) => write!(f, "not valid JSON: {e}"),
            TokenizerError::Unsupported(e) => write!(f, "unsupported tokenizer: {e}"),
            TokenizerError::Invalid(e) => write!(f, "invalid tokenizer.json: {e}"),
            TokenizerError::UnknownId(id) => write!(f, "token id {id} is not in the vocabulary"),
        }
    }
}

impl std::error::Error for TokenizerError {}

/// A byte-level BPE tokenizer read from a Hugging Face `tokenizer.json`.
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    /// Token of each id (added tokens, in their normalised form when they are
    /// `normalized`, take precedence over the model's vocab). A map: ids may be sparse.
    tokens: HashMap<u32, String>,
    /// Largest id + 1.
    size: usize,
    bpe: bpe::Bpe,
    raw_added: Matcher,
    normalized_added: Matcher,
    nfc: bool,
    add_prefix_space: bool,
    use_regex: bool,
    char_to_byte: CharToByte,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.bpe.merges.len())
            .field("nfc", &self.nfc)
            .field("add_prefix_space", &self.add_prefix_space)
            .field("use_regex", &self.use_regex)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Reads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| TokenizerError::Io { path: path.display().to_string(), message: e.to_string() })?;
        Tokenizer::from_json_str(&text)
    }

    /// Reads the text of a `tokenizer.json`.
    pub fn from_json_str(json: &str) -> Result<Tokenizer, TokenizerError> {
        let p = config::parse(json)?;
        let size = p.vocab.values().chain(p.added.iter().map(|t| &t.id)).map(|&id| id as usize + 1).max().unwrap_or(0);
        let mut tokens: HashMap<u32, String> = p.vocab.iter().map(|(t, &id)| (id, t.clone())).collect();
        let (mut raw, mut normalized) = (Vec::new(), Vec::new());
        let mut vocab = p.vocab;
        for t in &p.added {
            // A normalized token is matched, and decoded, in its normalised form.
            let pattern: String = if t.normalized && p.nfc { t.content.nfc().collect() } else { t.content.clone() };
            tokens.insert(t.id, pattern.clone());
            vocab.insert(t.content.clone(), t.id);
            vocab.insert(pattern.clone(), t.id);
            if t.normalized {
                normalized.push((pattern, t.clone()));
            } else {
                raw.push((pattern, t.clone()));
            }
        }
        Ok(Tokenizer {
            vocab,
            tokens,
            size,
            bpe: p.bpe,
            raw_added: Matcher::new(raw),
            normalized_added: Matcher::new(normalized),
            nfc: p.nfc,
            add_prefix_space: p.add_prefix_space,
            use_regex: p.use_regex,
            char_to_byte: CharToByte::new(),
        })
    }

    /// Largest token id plus one, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.size
    }

    /// The id of a token (a vocabulary entry in its byte-level spelling, e.g.
    /// `"Ġthe"`, or an added token's content).
    pub fn id_of(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// The token ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut raw = Vec::new();
        self.raw_added.split(text, &mut raw);
        for piece in raw {
            match piece {
                Piece::Token(id) => ids.push(id),
                Piece::Text(t) => {
                    let normal: String = if self.nfc { t.nfc().collect() } else { t.to_string() };
                    let mut pieces = Vec::new();
                    self.normalized_added.split(&normal, &mut pieces);
                    for p in pieces {
                        match p {
                            Piece::Token(id) => ids.push(id),
                            Piece::Text(t) => self.encode_text(t, &mut ids),
                        }
                    }
                }
            }
        }
        ids
    }

    /// Pre-tokenisation and BPE of text without added tokens.
    fn encode_text(&self, text: &str, ids: &mut Vec<u32>) {
        let prefixed;
        let text = if self.add_prefix_space && !text.starts_with(' ') {
            prefixed = format!(" {text}");
            prefixed.as_str()
        } else {
            text
        };
        if self.use_regex {
            for word in pre_tokenize(text) {
                self.bpe.encode(word.as_bytes(), ids);
            }
        } else {
            self.bpe.encode(text.as_bytes(), ids);
        }
    }

    /// The text of `ids` (invalid UTF-8 as U+FFFD); an unknown id is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            let token = self.tokens.get(&id).ok_or(TokenizerError::UnknownId(id))?;
            let mapped: Option<Vec<u8>> = token.chars().map(|c| self.char_to_byte.get(c)).collect();
            match mapped {
                Some(b) => bytes.extend_from_slice(&b),
                None => bytes.extend_from_slice(token.as_bytes()),
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
