//! The GPT-2 pre-tokenization pattern and the byte-to-unicode table, on cases
//! whose expected splits follow from the pattern by hand.

use tf_tokenizer::{byte_to_char, pre_tokenize};

#[test]
fn splits_follow_the_pattern() {
    let cases: &[(&str, &[&str])] = &[
        ("", &[]),
        ("Hello world", &["Hello", " world"]),
        // contractions are their own pieces, lower case only
        ("I'm here", &["I", "'m", " here"]),
        ("don't", &["don", "'t"]),
        ("WE'RE", &["WE", "'", "RE"]),
        ("'s'll'x", &["'s", "'ll", "'", "x"]),
        // a contraction is not found inside a run of punctuation
        ("?'s", &["?'", "s"]),
        (" 's", &[" '", "s"]),
        // letters, numbers and other runs, each with an optional leading space
        ("abc123def", &["abc", "123", "def"]),
        (" 123 x", &[" 123", " x"]),
        ("hi!!! ok", &["hi", "!!!", " ok"]),
        (" !?", &[" !?"]),
        ("½x²", &["½", "x", "²"]),
        ("😀👍 ok", &["😀👍", " ok"]),
        // \s+(?!\S): a run of whitespace gives up its last character to the next piece
        ("a  b", &["a", " ", " b"]),
        ("  !", &[" ", " !"]),
        ("a   \nb", &["a", "   ", "\n", "b"]),
        ("x \ty", &["x", " ", "\t", "y"]),
        // ... unless it reaches the end, or is one character (then \s+)
        ("end   ", &["end", "   "]),
        ("a\nb", &["a", "\n", "b"]),
        ("\n\n", &["\n\n"]),
        // Unicode whitespace: no-break space and ideographic space are \s, not the prefix
        ("\u{a0}y", &["\u{a0}", "y"]),
        ("a\u{3000} b", &["a", "\u{3000}", " b"]),
        // combining marks are not letters: they split words
        ("nai\u{308}ve", &["nai", "\u{308}", "ve"]),
        ("naïve", &["naïve"]),
        ("नमस्ते", &["नमस", "्", "त", "े"]),
        ("Привет, мир", &["Привет", ",", " мир"]),
    ];
    for (text, want) in cases {
        assert_eq!(pre_tokenize(text), *want, "{text:?}");
    }
}

#[test]
fn the_pieces_tile_the_text() {
    let text = "  It's 42°C\t\u{2028}— naïve 中文!! \n ";
    assert_eq!(pre_tokenize(text).concat(), text);
}

#[test]
fn byte_to_unicode_table() {
    let table = byte_to_char();
    let mut seen: Vec<char> = table.to_vec();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 256, "256 distinct characters");
    for (b, &c) in table.iter().enumerate() {
        assert!(!c.is_whitespace() && !c.is_control(), "byte {b:#04x} -> {c:?} is not printable");
    }
    assert_eq!(table[b'A' as usize], 'A');
    assert_eq!(table[b'~' as usize], '~');
    assert_eq!(table[0xe9], 'é');
    assert_eq!(table[0x00], '\u{100}');
    assert_eq!(table[b' ' as usize], 'Ġ');
    assert_eq!(table[b'\n' as usize], 'Ċ');
    assert_eq!(table[0xad], '\u{143}', "the last of the remapped bytes");
}
