//! Golden tests: encoding and decoding agree with the Hugging Face `tokenizers`
//! library on the fixtures `tools/make_fixtures.py` wrote (the library version
//! is in `tests/data/meta.json`).

use std::path::PathBuf;

use serde_json::Value;
use tf_tokenizer::Tokenizer;
use unicode_normalization::UnicodeNormalization;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn read_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(name)).unwrap()).unwrap()
}

struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn cases(v: &Value) -> Vec<Case> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            ids: c["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect(),
            decoded: c["decoded"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// Checks every case; with `round_trip`, also decode(encode(text)) == NFC(text).
/// Reports every mismatch at once.
fn check(tok: &Tokenizer, cases: &[Case], round_trip: bool) {
    let mut bad = Vec::new();
    for c in cases {
        let ids = tok.encode(&c.text);
        if ids != c.ids {
            bad.push(format!("encode {:?}:\n  got  {ids:?}\n  want {:?}", c.text, c.ids));
        }
        match tok.decode(&c.ids) {
            Ok(s) if s == c.decoded => {}
            other => bad.push(format!("decode {:?}: got {other:?}, want {:?}", c.ids, c.decoded)),
        }
        if round_trip {
            let nfc: String = c.text.nfc().collect();
            let back = tok.decode(&ids).unwrap();
            if back != nfc {
                bad.push(format!("round trip {:?}: got {back:?}", c.text));
            }
        }
    }
    assert!(bad.is_empty(), "{} of {} cases differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
}

#[test]
fn encodes_and_decodes_like_the_library() {
    let tok = Tokenizer::from_file(data("tokenizer.json")).unwrap();
    let cases = cases(&read_json("fixtures.json"));
    assert!(cases.len() > 250);
    // The normaliser matters for these fixtures: some texts are not NFC.
    assert!(cases.iter().any(|c| c.text.nfc().collect::<String>() != c.text));
    check(&tok, &cases, true);
}

#[test]
fn the_variant_merge_format_and_prefix_space() {
    let tok = Tokenizer::from_file(data("tokenizer-variant.json")).unwrap();
    let json = read_json("tokenizer-variant.json");
    assert!(json["model"]["merges"][0].is_string(), "the variant has \"a b\" merges");
    assert_eq!(json["pre_tokenizer"]["add_prefix_space"], true);
    check(&tok, &cases(&read_json("fixtures-variant.json")), false);
}

#[test]
fn added_token_options() {
    let fixture = read_json("fixtures-options.json");
    let mut json = read_json("tokenizer.json");
    let added = json["added_tokens"].as_array_mut().unwrap();
    added.extend(fixture["added_tokens"].as_array().unwrap().iter().cloned());
    let tok = Tokenizer::from_json_str(&json.to_string()).unwrap();
    check(&tok, &cases(&fixture["cases"]), false);
}

#[test]
fn vocabulary() {
    let tok = Tokenizer::from_file(data("tokenizer.json")).unwrap();
    // 2000 trained tokens and 14 added runs of spaces and tabs.
    assert_eq!(tok.vocab_size(), 2014);
    assert_eq!(tok.id_of("<|endoftext|>"), Some(0));
    assert_eq!(tok.id_of("<|padding|>"), Some(1));
    assert_eq!(tok.id_of("Ġt"), tok.encode(" t").first().copied());
    assert_eq!(tok.id_of("        "), Some(tok.vocab_size() as u32 - 8));
    assert_eq!(tok.id_of("not a token at all"), None);
    let meta = read_json("meta.json");
    assert!(meta["tokenizers_version"].is_string());
}

#[test]
fn decode_is_lossy_and_refuses_unknown_ids() {
    let tok = Tokenizer::from_file(data("tokenizer.json")).unwrap();
    // "é" is two bytes; its first byte alone is not UTF-8.
    let ids = tok.encode("é");
    let first = tok.id_of(&tf_tokenizer::byte_to_char()[0xc3].to_string()).unwrap();
    assert_eq!(tok.decode(&[first]).unwrap(), "\u{fffd}");
    assert_eq!(tok.decode(&ids).unwrap(), "é");
    let e = tok.decode(&[5, 2014]).unwrap_err();
    assert_eq!(e.to_string(), "token id 2014 is not in the vocabulary");
    assert_eq!(tok.decode(&[]).unwrap(), "");
}
