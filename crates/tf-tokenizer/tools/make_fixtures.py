#!/usr/bin/env python3
"""Makes tf-tokenizer's golden fixtures with the Hugging Face `tokenizers` library.

Run from anywhere, in a throwaway virtual environment outside the repository:

    python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install tokenizers
    /tmp/tokvenv/bin/python crates/tf-tokenizer/tools/make_fixtures.py

It writes, under crates/tf-tokenizer/tests/data/:
- tokenizer.json: a byte-level BPE (vocab 2000) trained on the repository's
  README.md and docs/*.md, with GPT-NeoX-20B-like added tokens (<|endoftext|>,
  <|padding|> special; runs of 2..8 spaces and of 2..8 tabs as non-special,
  normalized tokens) and an NFC normalizer;
- tokenizer-variant.json: the same with merges in the other format ("a b"
  strings instead of ["a", "b"] pairs, or the reverse) and add_prefix_space true;
- fixtures.json and fixtures-variant.json: {text, ids, decoded} for each test
  string, as the library encodes and decodes it (decoded keeps special tokens);
- fixtures-options.json: added tokens using lstrip, rstrip, single_word and a
  non-NFC normalized token, to append to tokenizer.json's, and cases encoded
  with them;
- meta.json: the library version;
and crates/tf-cli/tests/data/tokenizer-small.json: the same recipe at vocab 400,
small enough for the `tiny` config (vocab 512) of the CLI tests.

The tokenizers are trained on the docs as they are when this runs, so running it
after the docs changed gives other merges and ids; the tests read the tokenizers
and the fixtures together and assert no id that depends on the training.
"""

import json
import pathlib
import random
import unicodedata

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ROOT = pathlib.Path(__file__).resolve().parents[3]
OUT = ROOT / "crates/tf-tokenizer/tests/data"
CLI_OUT = ROOT / "crates/tf-cli/tests/data"
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def train(vocab_size):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(p) for p in DOCS], trainer)
    runs = [" " * n for n in range(2, 9)] + ["\t" * n for n in range(2, 9)]
    tok.add_tokens([AddedToken(r, normalized=True, special=False) for r in runs])
    return tok


def other_merge_format(config):
    model = config["model"]
    merges = model["merges"]
    if merges and isinstance(merges[0], list):
        model["merges"] = [" ".join(m) for m in merges]
    else:
        model["merges"] = [m.split(" ") for m in merges]
    config["pre_tokenizer"]["add_prefix_space"] = True
    return config


def paragraph():
    text = (ROOT / "docs/tokenformer.md").read_text(encoding="utf-8")
    paras = [p for p in text.split("\n\n") if len(p) > 400 and not p.startswith(("|", "```"))]
    return paras[0]


def random_strings(n, seed=7):
    pool = (
        list("abcXYZ019 ") + [" ", " ", "  ", "\t", "\n", "\r\n", "'s", "'ll", "'RE", "'t", "'"]
        + list(".,!?-_()[]{}<>/\\\"#$%&*+=:;@^`|~")
        + ["é", "e\u0301", "ñ", "ß", "Ω", "ж", "中", "文", "क", "ि", "्", "ع", "٣", "²", "Ⅻ", "½"]
        + ["\u00a0", "\u3000", "\u2028", "\u200b", "\u200d", "😀", "👍🏽", "\u0000", "\x7f", "\ufeff"]
        + ["<|endoftext|>", "<|padding|>", "<|endof", "\t\t\t", "        "]
    )
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randrange(0, 24))) for _ in range(n)]


def cases():
    fixed = [
        "Hello, world! This is plain ASCII prose about Pattention and token parameters.",
        "It's John's book; we'll see, they're here, I've done it, I'm sure, he'd go, don't.",
        "CONTRACTIONS IN CAPS: IT'S, WE'LL, THEY'RE, 'RE, 'S, 'Ll.",
        "'s at the start, and ''s doubled, and 'sup, and rock 'n' roll",
        "Version 3.14159, 2024-12-02, 1,000,000 tokens, x86_64, sm_90a, 4096x4096, abc123def 0x1F.",
        "½ ² Ⅻ ٣ ४ 〇: numbers that are not ASCII digits",
        "line one\nline two\n\nline four\r\n\ttabbed\t\tdouble tab\n",
        "a  b   c    d     e      f       g        h         i          j",
        "trailing spaces   ",
        "   leading spaces",
        " one leading space",
        "\n\n\n",
        "   ",
        " ",
        "\t",
        "spaces before newline   \n   and after",
        "tabs\t\t\t\tand\t \tmixed \t whitespace\u00a0nbsp\u3000ideographic\u2028line sep",
        "Ελληνικά: Καλημέρα κόσμε, ΤΟΚΕΝ.",
        "Русский текст: Привет, мир! Ёж и ёлка.",
        "中文文本：你好，世界！日本語のテキスト、한국어 텍스트。",
        "हिन्दी: नमस्ते दुनिया, क्षत्रिय, स्त्री।",
        "العربية: مرحبا بالعالم، ١٢٣ كتاب.",
        "emoji 😀👍🏽 and ZWJ family 👨\u200d👩\u200d👧\u200d👦 and flag 🇩🇪 and ❤️",
        "composed: café naïve Å ñ",
        "decomposed: cafe\u0301 nai\u0308ve A\u030a n\u0303",
        "e\u0301e\u0301e\u0301 \u1e9b\u0323 \u0041\u030a\u0301",
        "before<|endoftext|>after",
        "<|endoftext|>",
        "a <|endoftext|> b<|padding|><|padding|>c <|endoftext|",
        "code: fn main() { println!(\"{}\", x[0] >= 1 && y != -2); } // done",
        "URLs https://example.com/a?b=c&d=e#f and emails name@example.org",
        "mixed: abc123 123abc a1b2c3 CamelCaseWords snake_case_words ALLCAPS",
        "control \x00 \x01 \x7f chars and a BOM \ufeff here",
        "zero\u200bwidth\u200cnon\u200djoiner",
        "",
        paragraph(),
    ]
    lines = [l for l in (ROOT / "docs/training.md").read_text(encoding="utf-8").splitlines() if l.strip()]
    return fixed, lines[:50] + random_strings(200)


def fixtures(tok, texts):
    out = []
    for text in texts:
        ids = tok.encode(text).ids
        out.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    return out


def dump(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=None) + "\n", encoding="utf-8")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    fixed, more = cases()
    texts = fixed + more
    # The NFC normalizer must matter: the decomposed cases are not NFC.
    assert any(unicodedata.normalize("NFC", t) != t for t in texts)

    tok = train(2000)
    tok.save(str(OUT / "tokenizer.json"))
    dump(OUT / "fixtures.json", fixtures(tok, texts))

    variant = other_merge_format(json.loads((OUT / "tokenizer.json").read_text(encoding="utf-8")))
    dump(OUT / "tokenizer-variant.json", variant)
    tok_v = Tokenizer.from_file(str(OUT / "tokenizer-variant.json"))
    # The variant on the hand-written cases and a share of the random ones.
    dump(OUT / "fixtures-variant.json", fixtures(tok_v, fixed + more[-80:]))

    # Added-token options NeoX does not use: lstrip, rstrip, single_word and a
    # normalized token whose content is not NFC.
    opts = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    opts.add_special_tokens([AddedToken("<mask>", lstrip=True), AddedToken("<r>", rstrip=True)])
    opts.add_tokens([AddedToken("word", single_word=True), AddedToken("cafe\u0301!", normalized=True)])
    # Stored as the added tokens beyond tokenizer.json's (the tests append them).
    path = OUT / "tokenizer-options.json"
    opts.save(str(path))
    extra = json.loads(path.read_text(encoding="utf-8"))["added_tokens"][len(tok.get_added_tokens_decoder()):]
    path.unlink()
    opt_texts = [
        "a <mask> b", "a   <mask>b", "<mask>", "x\t\n<mask> y", "a <r>   b", "a<r>\n\nb", "<r>",
        "word", "a word here", "words", "sword", "a word, word_x word1 (word)", "wordword",
        "café! cafe\u0301! café!!", " <mask> <r> word café! ",
    ]
    dump(OUT / "fixtures-options.json", {"added_tokens": extra, "cases": fixtures(opts, opt_texts)})

    dump(OUT / "meta.json", {"tokenizers_version": tokenizers.__version__})

    small = train(400)
    small.save(str(CLI_OUT / "tokenizer-small.json"))
    print(f"tokenizers {tokenizers.__version__}: wrote {OUT} and {CLI_OUT / 'tokenizer-small.json'}")


if __name__ == "__main__":
    main()
