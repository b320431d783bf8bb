//! Configurations outside the byte-level BPE family, and malformed files, are
//! refused with a one-line error naming the field; nothing panics.

use std::path::PathBuf;

use serde_json::{json, Value};
use tf_tokenizer::{Tokenizer, TokenizerError};

fn base() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A change to a tokenizer.json.
type Edit = Box<dyn FnOnce(&mut Value)>;

/// The error of `base()` changed by `edit`; checks it is one line.
fn error_of(edit: impl FnOnce(&mut Value)) -> TokenizerError {
    let mut v = base();
    edit(&mut v);
    let e = Tokenizer::from_json_str(&v.to_string()).expect_err("refused");
    assert!(!e.to_string().contains('\n'), "{e}");
    e
}

#[test]
fn unsupported_configurations_name_the_field() {
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|v| v["model"]["type"] = json!("WordPiece")), "model.type \"WordPiece\""),
        (Box::new(|v| v["model"]["type"] = json!("Unigram")), "model.type \"Unigram\""),
        (Box::new(|v| v["model"]["byte_fallback"] = json!(true)), "model.byte_fallback"),
        (Box::new(|v| v["model"]["dropout"] = json!(0.1)), "model.dropout"),
        (Box::new(|v| v["model"]["continuing_subword_prefix"] = json!("##")), "model.continuing_subword_prefix"),
        (Box::new(|v| v["model"]["end_of_word_suffix"] = json!("</w>")), "model.end_of_word_suffix"),
        (Box::new(|v| v["model"]["ignore_merges"] = json!(true)), "model.ignore_merges"),
        (Box::new(|v| v["normalizer"] = json!({"type": "Lowercase"})), "normalizer.type \"Lowercase\""),
        (Box::new(|v| v["normalizer"] = json!({"type": "NFKC"})), "normalizer.type \"NFKC\""),
        (Box::new(|v| v["pre_tokenizer"] = json!({"type": "Whitespace"})), "pre_tokenizer.type \"Whitespace\""),
        (Box::new(|v| v["pre_tokenizer"] = Value::Null), "pre_tokenizer = null"),
        (
            Box::new(|v| {
                let bl = v["pre_tokenizer"].clone();
                v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [{"type": "Digits"}, bl]});
            }),
            "pre_tokenizer: a Sequence",
        ),
        (
            Box::new(|v| v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [{"type": "Metaspace"}]})),
            "pre_tokenizer.pretokenizers[0].type \"Metaspace\"",
        ),
        (Box::new(|v| v["decoder"] = json!({"type": "WordPiece"})), "decoder.type \"WordPiece\""),
        (Box::new(|v| v["decoder"] = Value::Null), "decoder = null"),
        (Box::new(|v| v["post_processor"] = json!({"type": "TemplateProcessing"})), "post_processor.type"),
        (Box::new(|v| v["truncation"] = json!({"max_length": 8})), "truncation"),
        (Box::new(|v| v["padding"] = json!({"strategy": "BatchLongest"})), "padding"),
    ];
    for (edit, want) in cases {
        let e = error_of(edit);
        assert!(matches!(e, TokenizerError::Unsupported(_)), "{e:?}");
        assert!(e.to_string().contains(want), "expected {want:?} in {e}");
    }
}

#[test]
fn inconsistent_files_name_the_field() {
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|v| v["model"]["merges"][0] = json!("Ġt")), "model.merges[0]"),
        (Box::new(|v| v["model"]["merges"][0] = json!(["Ġ", "t", "x"])), "model.merges[0]"),
        (
            Box::new(|v| v["model"]["merges"][3] = json!("zq xy")),
            "model.merges[3] \"zq xy\": \"zq\" is not in the vocab",
        ),
        (Box::new(|v| v["model"]["merges"] = json!({})), "model.merges"),
        (Box::new(|v| v["model"]["vocab"] = json!([])), "model.vocab"),
        (Box::new(|v| v["model"]["vocab"]["zz"] = json!(-1)), "model.vocab[\"zz\"]"),
        (Box::new(|v| v["model"]["vocab"]["zz"] = json!(1u64 << 40)), "model.vocab[\"zz\"]"),
        (
            Box::new(|v| {
                v["model"]["vocab"].as_object_mut().unwrap().remove("Ġ");
                v["model"]["merges"] = json!([]);
            }),
            "byte 0x20",
        ),
        (
            Box::new(|v| {
                v["model"].as_object_mut().unwrap().remove("type");
            }),
            "model: no \"type\"",
        ),
        (Box::new(|v| v["added_tokens"][0]["id"] = json!("zero")), "added_tokens[0].id"),
        (Box::new(|v| v["added_tokens"][1]["content"] = json!("")), "added_tokens[1].content"),
        (Box::new(|v| v["added_tokens"][1]["lstrip"] = json!("yes")), "added_tokens[1].lstrip"),
        (Box::new(|v| v["pre_tokenizer"]["add_prefix_space"] = json!(1)), "pre_tokenizer.add_prefix_space"),
        (Box::new(|v| v["normalizer"] = json!("NFC")), "normalizer"),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("model");
            }),
            "model: missing",
        ),
    ];
    for (edit, want) in cases {
        let e = error_of(edit);
        assert!(matches!(e, TokenizerError::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains(want), "expected {want:?} in {e}");
    }
}

#[test]
fn malformed_json_is_an_error() {
    for text in ["", "{", "{\"model\": }", "[]", "null", "42", "{\"model\": 3}", "\u{feff}{}", "{}"] {
        let e = Tokenizer::from_json_str(text).err().unwrap_or_else(|| panic!("{text:?} was accepted"));
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    let e = Tokenizer::from_json_str("{").unwrap_err();
    assert!(matches!(e, TokenizerError::Json(_)) && e.to_string().starts_with("not valid JSON"), "{e}");
}

#[test]
fn a_missing_file_names_the_path() {
    let e = Tokenizer::from_file("/nonexistent/dir/tokenizer.json").unwrap_err();
    assert!(matches!(e, TokenizerError::Io { .. }), "{e:?}");
    assert!(e.to_string().starts_with("/nonexistent/dir/tokenizer.json: "), "{e}");
}

#[test]
fn a_sequence_of_one_byte_level_and_no_normalizer_are_accepted() {
    let mut v = base();
    let bl = v["pre_tokenizer"].clone();
    v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [bl]});
    v["normalizer"] = Value::Null;
    v["post_processor"] = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true});
    let tok = Tokenizer::from_json_str(&v.to_string()).unwrap();
    let plain = Tokenizer::from_json_str(&base().to_string()).unwrap();
    assert_eq!(tok.encode("It's 2024, naïve"), plain.encode("It's 2024, naïve"));
    // Without NFC, a decomposed accent stays two characters.
    assert_ne!(tok.encode("cafe\u{301}"), plain.encode("cafe\u{301}"));
    assert_eq!(tok.decode(&tok.encode("cafe\u{301}")).unwrap(), "cafe\u{301}");
}

#[test]
fn use_regex_false_keeps_the_text_whole() {
    let mut v = base();
    v["pre_tokenizer"]["use_regex"] = json!(false);
    let tok = Tokenizer::from_json_str(&v.to_string()).unwrap();
    let text = "the kernels and the model";
    assert_eq!(tok.decode(&tok.encode(text)).unwrap(), text);
    // merges across the spaces are impossible only with the pattern's splits
    assert!(tok.encode(text).len() <= Tokenizer::from_json_str(&base().to_string()).unwrap().encode(text).len());
}

#[test]
fn a_sparse_large_id_is_accepted_without_a_dense_table() {
    let mut v = base();
    v["added_tokens"].as_array_mut().unwrap().push(json!({
        "id": 4_000_000_000u32, "content": "<|far|>", "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true
    }));
    let tok = Tokenizer::from_json_str(&v.to_string()).unwrap();
    assert_eq!(tok.vocab_size(), 4_000_000_001);
    assert_eq!(tok.encode("a<|far|>"), [tok.id_of("a").unwrap(), 4_000_000_000]);
    assert_eq!(tok.decode(&[4_000_000_000]).unwrap(), "<|far|>");
    assert!(tok.decode(&[3_000_000_000]).is_err());
}
