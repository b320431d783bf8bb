//! `--tokenizer FILE` of `train` and `generate`: a Hugging Face tokenizer.json
//! (byte-level BPE, read by tf-tokenizer) checked against the model's
//! vocabulary, the text corpus encoded with it, and ids printed as text.

use std::path::Path;

use tf_ref::Corpus;
use tf_tokenizer::Tokenizer;

use crate::util::{s, CliResult};

/// Reads `path`; its vocabulary (largest id + 1) must fit config `name`'s `vocab`.
pub fn load(path: &Path, name: &str, vocab: usize) -> CliResult<Tokenizer> {
    let tok = Tokenizer::from_file(path).map_err(|e| match e {
        tf_tokenizer::TokenizerError::Io { .. } => format!("--tokenizer {e}"),
        e => format!("--tokenizer {}: {e}", path.display()),
    })?;
    if tok.vocab_size() > vocab {
        return Err(format!(
            "--tokenizer {}: its vocabulary has {} tokens, more than config {name}'s vocab of {vocab}",
            path.display(),
            tok.vocab_size()
        ));
    }
    Ok(tok)
}

/// The corpus of the UTF-8 text file `data`, encoded with `tok`, and the file's size in bytes.
pub fn corpus(data: &Path, tok: &Tokenizer, vocab: usize) -> CliResult<(Corpus, usize)> {
    if data.extension().is_some_and(|e| e == "bin") {
        return Err(format!(
            "--tokenizer: --data {} is a .bin of token ids, already tokenized; give a text corpus or drop --tokenizer",
            data.display()
        ));
    }
    let bytes = std::fs::read(data).map_err(|e| format!("--data {}: {e}", data.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "--data {}: not UTF-8 text (invalid byte at offset {}), which --tokenizer needs",
            data.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let corpus = Corpus::new(tok.encode(&text), vocab).map_err(|e| format!("--data {}: {}", data.display(), s(e)))?;
    Ok((corpus, text.len()))
}

/// `ids` as text: runs of the tokenizer's ids decoded (invalid UTF-8 as
/// U+FFFD), each id it does not know (the model's vocab can be larger) as U+FFFD.
pub fn text(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut out = String::new();
    for run in ids.split(|&id| tok.decode(&[id]).is_err()) {
        out.push_str(&tok.decode(run).unwrap_or_default());
        out.push('\u{fffd}');
    }
    out.pop(); // the split leaves one run more than there are separators
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ids_print_as_replacement_characters() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer-small.json");
        let tok = load(&path, "tiny", 512).unwrap();
        let mut ids = tok.encode("Hi there");
        ids.insert(1, 511);
        ids.push(600);
        assert_eq!(text(&tok, &ids), "H\u{fffd}i there\u{fffd}");
        assert_eq!(text(&tok, &[]), "");
        let e = load(&path, "micro", 100).unwrap_err();
        assert!(e.contains(&format!("{} tokens, more than config micro's vocab of 100", tok.vocab_size())), "{e}");
    }
}
