//! Reading tokenizer.json: checks that it describes a byte-level BPE this crate
//! implements (see the crate documentation for what is accepted) and builds
//! the parts of a [`Tokenizer`](crate::Tokenizer). Anything else is refused with
//! an error naming the field.

use std::collections::HashMap;

use serde_json::Value;

use crate::added::AddedToken;
use crate::bpe::Bpe;
use crate::bytes::byte_to_char;
use crate::TokenizerError;

/// What tokenizer.json configures.
pub struct Parsed {
    pub vocab: HashMap<String, u32>,
    pub bpe: Bpe,
    pub added: Vec<AddedToken>,
    pub nfc: bool,
    pub add_prefix_space: bool,
    pub use_regex: bool,
}

fn unsupported(msg: String) -> TokenizerError {
    TokenizerError::Unsupported(msg)
}

fn invalid(msg: String) -> TokenizerError {
    TokenizerError::Invalid(msg)
}

/// A JSON value in one short line, for messages.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// `obj[key]` as an object's `type`, naming `field` in errors.
fn type_of<'a>(v: &'a Value, field: &str) -> Result<&'a str, TokenizerError> {
    v.get("type").and_then(Value::as_str).ok_or_else(|| invalid(format!("{field}: no \"type\" string in {}", show(v))))
}

/// An optional boolean field (absent or null: `default`).
fn flag(obj: &Value, key: &str, default: bool, field: &str) -> Result<bool, TokenizerError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(invalid(format!("{field}.{key}: expected true or false, got {}", show(other)))),
    }
}

/// The fields of the ByteLevel pre-tokenizer: (add_prefix_space, use_regex).
fn byte_level(v: &Value, field: &str) -> Result<(bool, bool), TokenizerError> {
    match type_of(v, field)? {
        "ByteLevel" => Ok((flag(v, "add_prefix_space", true, field)?, flag(v, "use_regex", true, field)?)),
        "Sequence" => match v.get("pretokenizers").and_then(Value::as_array).map(Vec::as_slice) {
            Some([one]) => byte_level(one, &format!("{field}.pretokenizers[0]")),
            _ => Err(unsupported(format!(
                "{field}: a Sequence is supported only with exactly one ByteLevel pre-tokenizer, got {}",
                show(v)
            ))),
        },
        other => Err(unsupported(format!("{field}.type {other:?} is not supported (only ByteLevel)"))),
    }
}

fn id(v: &Value, field: &str) -> Result<u32, TokenizerError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| invalid(format!("{field}: expected a token id (0..2^32), got {}", show(v))))
}

/// The vocabulary and the merges in rank order.
type Model = (HashMap<String, u32>, Vec<(String, String)>);

fn model(m: &Value) -> Result<Model, TokenizerError> {
    let Some(obj) = m.as_object() else { return Err(invalid(format!("model: expected an object, got {}", show(m)))) };
    match obj.get("type").and_then(Value::as_str) {
        Some("BPE") => {}
        Some(other) => return Err(unsupported(format!("model.type {other:?} is not supported (only BPE)"))),
        None => return Err(invalid("model: no \"type\" string (expected \"BPE\")".into())),
    }
    for key in ["dropout", "continuing_subword_prefix", "end_of_word_suffix"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() && key != "dropout" => {}
            Some(v) => return Err(unsupported(format!("model.{key} = {} is not supported (expected null)", show(v)))),
        }
    }
    for key in ["byte_fallback", "ignore_merges"] {
        if flag(m, key, false, "model")? {
            return Err(unsupported(format!("model.{key} = true is not supported (expected false)")));
        }
    }
    let vocab_obj = obj
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("model.vocab: missing or not an object".into()))?;
    let mut vocab = HashMap::with_capacity(vocab_obj.len());
    for (token, v) in vocab_obj {
        vocab.insert(token.clone(), id(v, &format!("model.vocab[{token:?}]"))?);
    }
    let merges_v = obj
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("model.merges: missing or not an array".into()))?;
    let mut merges = Vec::with_capacity(merges_v.len());
    for (i, m) in merges_v.iter().enumerate() {
        let pair = match m {
            Value::String(s) => s.split_once(' ').filter(|(a, b)| !b.contains(' ') && !a.is_empty() && !b.is_empty()),
            Value::Array(a) => match a.as_slice() {
                [Value::String(x), Value::String(y)] => Some((x.as_str(), y.as_str())),
                _ => None,
            },
            _ => None,
        };
        let (a, b) = pair.ok_or_else(|| {
            invalid(format!("model.merges[{i}]: expected \"a b\" or [\"a\", \"b\"], got {}", show(m)))
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    Ok((vocab, merges))
}

fn added_tokens(v: Option<&Value>) -> Result<Vec<AddedToken>, TokenizerError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(invalid(format!("added_tokens: expected an array, got {}", show(other)))),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let field = format!("added_tokens[{i}]");
        let content = t
            .get("content")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(format!("{field}.content: missing or empty")))?;
        out.push(AddedToken {
            id: id(t.get("id").unwrap_or(&Value::Null), &format!("{field}.id"))?,
            content: content.to_string(),
            single_word: flag(t, "single_word", false, &field)?,
            lstrip: flag(t, "lstrip", false, &field)?,
            rstrip: flag(t, "rstrip", false, &field)?,
            normalized: flag(t, "normalized", true, &field)?,
            special: flag(t, "special", false, &field)?,
        });
    }
    Ok(out)
}

/// Parses and checks tokenizer.json's text.
pub fn parse(json: &str) -> Result<Parsed, TokenizerError> {
    let root: Value = serde_json::from_str(json).map_err(|e| TokenizerError::Json(e.to_string()))?;
    let Some(top) = root.as_object() else {
        return Err(invalid(format!("expected a JSON object at the top, got {}", show(&root))));
    };
    let get = |k: &str| top.get(k).filter(|v| !v.is_null());
    let (vocab, merge_list) = model(get("model").ok_or_else(|| invalid("model: missing".into()))?)?;
    for key in ["truncation", "padding"] {
        if let Some(v) = get(key) {
            return Err(unsupported(format!("{key} = {} is not supported (expected null)", show(v))));
        }
    }
    let nfc = match get("normalizer") {
        None => false,
        Some(n) => match type_of(n, "normalizer")? {
            "NFC" => true,
            other => return Err(unsupported(format!("normalizer.type {other:?} is not supported (only null or NFC)"))),
        },
    };
    let (add_prefix_space, use_regex) = match get("pre_tokenizer") {
        None => return Err(unsupported("pre_tokenizer = null is not supported (expected ByteLevel)".into())),
        Some(p) => byte_level(p, "pre_tokenizer")?,
    };
    match get("decoder") {
        None => return Err(unsupported("decoder = null is not supported (expected ByteLevel)".into())),
        Some(d) => match type_of(d, "decoder")? {
            "ByteLevel" => {}
            other => return Err(unsupported(format!("decoder.type {other:?} is not supported (only ByteLevel)"))),
        },
    }
    if let Some(p) = get("post_processor") {
        match type_of(p, "post_processor")? {
            "ByteLevel" => {}
            other => {
                return Err(unsupported(format!(
                    "post_processor.type {other:?} is not supported (only null or ByteLevel)"
                )))
            }
        }
    }
    let added = added_tokens(get("added_tokens"))?;

    let mut byte_ids = [0u32; 256];
    for (b, c) in byte_to_char().iter().enumerate() {
        byte_ids[b] = *vocab.get(&c.to_string()).ok_or_else(|| {
            invalid(format!(
                "model.vocab lacks {c:?}, the byte-level character of byte 0x{b:02x}: not a byte-level BPE"
            ))
        })?;
    }
    let mut merges = HashMap::with_capacity(merge_list.len());
    for (rank, (a, b)) in merge_list.iter().enumerate() {
        let look = |s: &str| {
            vocab
                .get(s)
                .copied()
                .ok_or_else(|| invalid(format!("model.merges[{rank}] \"{a} {b}\": {s:?} is not in the vocab")))
        };
        let (ia, ib, merged) = (look(a)?, look(b)?, look(&format!("{a}{b}"))?);
        // A pair listed twice keeps its first (lowest) rank.
        merges.entry((ia, ib)).or_insert((rank as u32, merged));
    }
    Ok(Parsed { vocab, bpe: Bpe { byte_ids, merges }, added, nfc, add_prefix_space, use_regex })
}
