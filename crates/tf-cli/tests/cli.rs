//! The `tokenformer` binary, run as a user runs it (emulator; CUDA when present).
//! Every command succeeds on small inputs, and bad arguments fail cleanly: a
//! non-zero exit, one line on stderr, no panic.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn tokenformer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokenformer")).args(args).output().expect("the tokenformer binary runs")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn ok(args: &[&str]) -> String {
    let o = tokenformer(args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "tokenformer {args:?} failed ({:?}):\n{out}\n{err}", o.status.code());
    assert!(!err.contains("panicked"), "{err}");
    out
}

/// A clean failure: non-zero exit, exactly one line on stderr starting with
/// `tokenformer:`, no panic; returns that line.
fn fails(args: &[&str]) -> String {
    let o = tokenformer(args);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "tokenformer {args:?} succeeded:\n{out}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "tokenformer {args:?}: expected one error line, got:\n{err}");
    assert!(lines[0].starts_with("tokenformer: "), "{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    lines[0].to_string()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tf-cli-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn info_reports_device_archs_and_ptxas() {
    let out = ok(&["info"]);
    for key in ["cuda:", "emulator:", "kernels:", "nvcc:", "ptxas:"] {
        assert!(out.contains(key), "info lacks {key}:\n{out}");
    }
}

#[test]
fn check_passes_on_every_backend() {
    let out = ok(&["check", "--seed", "7"]);
    assert!(out.contains("seed 7"), "{out}");
    for kernel in ["pattention", "attention", "grow", "linear", "layer_norm", "rotary", "add", "embedding", "model"] {
        assert!(out.lines().any(|l| l.contains(kernel) && l.ends_with("ok")), "no passing {kernel} row:\n{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
    assert!(out.contains("checks ok"), "{out}");
}

#[test]
fn golden_writes_the_files() {
    let dir = tmp("golden");
    let out = ok(&["golden", "--out", dir.to_str().unwrap()]);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert!(files.len() >= 9, "{out}");
    assert!(files.iter().all(|f| f.path().extension().is_some_and(|e| e == "safetensors")));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn generate_greedy_and_sampled() {
    let out = ok(&["generate", "--config", "tiny", "--tokens", "1,2,3", "--max-new", "6", "--device", "emulator"]);
    let ids: Vec<u32> = out.trim().split(',').map(|t| t.parse().unwrap()).collect();
    assert_eq!(ids.len(), 6);
    assert!(ids.iter().all(|&i| i < 512));
    // Same seed, same ids.
    let args = [
        "generate",
        "--config",
        "tiny",
        "--tokens",
        "5",
        "--max-new",
        "4",
        "--temperature",
        "0.9",
        "--sample-seed",
        "3",
    ];
    assert_eq!(ok(&args), ok(&args));
}

#[test]
fn grow_preserving_then_generate_from_the_checkpoint() {
    let dir = tmp("grow");
    let ckpt = dir.join("grown.safetensors");
    let out = ok(&[
        "grow",
        "--config",
        "tiny",
        "--to-slots",
        "128,128,256",
        "--preserving",
        "--device",
        "emulator",
        "--save",
        ckpt.to_str().unwrap(),
    ]);
    assert!(out.contains("bitwise identical"), "{out}");
    assert!(out.contains("max |change| 0.000e0"), "{out}");
    let out = ok(&["grow", "--config", "tiny", "--to-slots", "96,64,200"]);
    assert!(!out.contains("bitwise identical"), "plain growth should change the logits:\n{out}");
    let ids = ok(&[
        "generate",
        "--config",
        "tiny",
        "--slots",
        "128,128,256",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--tokens",
        "1,2",
        "--max-new",
        "3",
    ]);
    assert_eq!(ids.trim().split(',').count(), 3);
    // The grown checkpoint does not fit the ungrown slot counts: refused naming the key.
    let e = fails(&[
        "generate",
        "--config",
        "tiny",
        "--slots",
        "64,64,128",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--tokens",
        "1",
    ]);
    assert!(e.contains("sequential.2.attention.query.key_param_tokens"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_without_a_gpu_says_so_and_checks() {
    if tf_host::Device::cuda(0).is_ok() {
        eprintln!(
            "a CUDA device is present: the no-GPU path of bench is not exercised (its GPU run is the device kit's)"
        );
        return;
    }
    let out = ok(&["bench", "--seed", "11"]);
    assert!(out.contains("no usable GPU"), "{out}");
    assert!(out.contains("not performance"), "{out}");
    assert!(out.contains("checks ok"), "{out}");
}

#[test]
fn bad_arguments_fail_cleanly() {
    fails(&["frobnicate"]);
    fails(&["check", "--seed", "x"]);
    fails(&["grow", "--config", "tiny"]);
    fails(&["grow", "--config", "nope", "--to", "757m"]);
    fails(&["grow", "--config", "tiny", "--to-slots", "32,64,128"]);
    fails(&["grow", "--config", "tiny", "--to", "757m"]);
    let e = fails(&["grow", "--config", "354m", "--to", "757m", "--device", "emulator"]);
    assert!(e.contains("too slow on the CPU emulator"), "{e}");
    let e = fails(&["generate", "--config", "tiny", "--tokens", "1,600"]);
    assert!(e.contains("token id 600"), "{e}");
    fails(&["generate", "--config", "tiny", "--tokens", "1,x"]);
    let e = fails(&["generate", "--config", "tiny", "--tokens", "1", "--temperature", "-1"]);
    assert!(e.contains("--temperature=-1"), "{e}");
    let e = fails(&["generate", "--config", "tiny", "--tokens", "1", "--temperature=-1"]);
    assert!(e.contains("must be finite and > 0"), "{e}");
    let e = fails(&["generate", "--config", "tiny", "--tokens", "1", "--seed", "3"]);
    assert!(e.contains("--init-seed") && e.contains("--sample-seed"), "{e}");
    fails(&["generate", "--config", "tiny", "--tokens", "1", "--checkpoint", "/nonexistent/model.safetensors"]);
    fails(&["bench", "--only", "nothing"]);
    fails(&["golden"]);
}

fn run_with(args: &[&str], stdout: Stdio) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokenformer"))
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tokenformer binary runs");
    // A piped stdout is closed before the command writes anything.
    drop(child.stdout.take());
    child.wait_with_output().expect("it exits")
}

/// One error line on stderr, a non-zero exit, no panic.
fn one_error_line(o: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!o.status.success(), "{what}: exit 0\n{err}");
    assert_eq!(lines.len(), 1, "{what}: expected one line on stderr:\n{err}");
    assert!(lines[0].starts_with("tokenformer: ") && !err.contains("internal error"), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    lines[0].to_string()
}

#[test]
fn a_closed_or_full_stdout_is_a_one_line_error() {
    let args = ["generate", "--config", "tiny", "--tokens", "1,2", "--max-new", "2", "--device", "emulator"];
    let o = run_with(&args, Stdio::piped());
    let e = one_error_line(&o, "closed pipe");
    assert!(e.contains("stdout") && e.contains("Broken pipe"), "{e}");
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let o = run_with(&["info"], Stdio::from(full));
    let e = one_error_line(&o, "/dev/full");
    assert!(e.contains("stdout") && e.contains("No space left"), "{e}");
}

#[test]
fn generate_checks_the_context_length_before_allocating() {
    let start = std::time::Instant::now();
    for n in ["128", "10000000", "1000000000000", &usize::MAX.to_string()] {
        let e = fails(&["generate", "--config", "tiny", "--tokens", "1", "--max-new", n, "--device", "emulator"]);
        assert!(e.contains(&format!("--max-new {n}")) && e.contains("(seq) of 128"), "{e}");
        assert!(e.contains("at most 127 new tokens"), "{e}");
    }
    // Validation, not work: every refusal above is immediate.
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
    // Exactly the context length is accepted: 126 prompt tokens + 2 new = 128.
    let prompt = vec!["7"; 126].join(",");
    let out = ok(&["generate", "--config", "tiny", "--tokens", &prompt, "--max-new", "2", "--device", "emulator"]);
    assert_eq!(out.trim().split(',').count(), 2, "{out}");
    let long = vec!["7"; 129].join(",");
    let e = fails(&["generate", "--config", "tiny", "--tokens", &long, "--max-new", "0"]);
    assert!(e.contains("129 prompt tokens"), "{e}");
}

#[test]
fn grow_refuses_shrinking_and_says_when_nothing_grew() {
    let start = std::time::Instant::now();
    let e = fails(&["grow", "--config", "757m", "--to", "354m", "--device", "emulator"]);
    assert!(e.contains("--to: qkv slots 1792 -> 768") && e.contains("only appends"), "{e}");
    let e = fails(&["grow", "--config", "tiny", "--to-slots", "64,32,128"]);
    assert!(e.contains("--to-slots: proj slots 64 -> 32"), "{e}");
    let e = fails(&["grow", "--config", "tiny", "--to-slots", "64,64,128", "--tokens", "100000000000"]);
    assert!(e.contains("--tokens 100000000000") && e.contains("seq"), "{e}");
    // Refused before the (slow, 757m) model is made.
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
    let out = ok(&["grow", "--config", "tiny", "--to", "tiny", "--device", "emulator"]);
    assert!(out.contains("nothing to grow") && !out.contains("grew") && !out.contains("one launch"), "{out}");
}

#[test]
fn output_paths_are_checked_before_any_compute() {
    let start = std::time::Instant::now();
    let args = ["grow", "--config", "tiny", "--to-slots", "96,64,128", "--save", "/nonexistent/dir/g.safetensors"];
    let e = fails(&args);
    assert!(e.contains("--save") && e.contains("/nonexistent/dir"), "{e}");
    // Refused before the model was made or grown: nothing on stdout.
    assert_eq!(text(&tokenformer(&args)).0, "", "grow ran before refusing its --save path");
    let e = fails(&["bench", "--json", "/nonexistent/dir/rows.jsonl"]);
    assert!(e.contains("--json") && e.contains("/nonexistent/dir"), "{e}");
    let dir = tmp("outdir");
    let e = fails(&["bench", "--svg", dir.to_str().unwrap()]);
    assert!(e.contains("--svg") && e.contains("directory"), "{e}");
    // bench without a GPU would run every check: refused well before that.
    assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_file_size_limit_leaves_the_old_checkpoint_intact() {
    let dir = tmp("fsize");
    let ckpt = dir.join("model.safetensors");
    let c = ckpt.to_str().unwrap();
    ok(&["grow", "--config", "tiny", "--to-slots", "64,64,128", "--device", "emulator", "--save", c]);
    let old = std::fs::read(&ckpt).unwrap();
    assert!(old.len() > 400_000, "{}", old.len());
    // The grown checkpoint is larger than the old one and than the limit (100 blocks
    // of at most 1 KiB): the write fails part-way.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -f 100 && exec \"$0\" grow --config tiny --to-slots 128,128,256 --device emulator --save '{c}'"
        ))
        .arg(env!("CARGO_BIN_EXE_tokenformer"))
        .output()
        .unwrap();
    let e = one_error_line(&o, "ulimit -f");
    assert!(e.contains("--save") && e.contains("model.safetensors") && e.contains("too large"), "{e}");
    assert!(std::fs::read(&ckpt).unwrap() == old, "the old checkpoint changed");
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "a temporary file was left: {names:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_grown_checkpoint_records_how_it_was_made_and_grows_again() {
    let dir = tmp("provenance");
    let a = dir.join("a.safetensors");
    let b = dir.join("b.safetensors");
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let out = ok(&[
        "grow",
        "--config",
        "tiny",
        "--to-slots",
        "96,64,160",
        "--preserving",
        "--dtype",
        "bf16",
        "--init-seed",
        "5",
        "--device",
        "emulator",
        "--save",
        a_s,
    ]);
    assert!(out.contains("bitwise identical"), "{out}");
    // Growing the checkpoint further (slots read from the file, dtype from its metadata).
    let out = ok(&[
        "grow",
        "--config",
        "tiny",
        "--checkpoint",
        a_s,
        "--to-slots",
        "128,128,256",
        "--preserving",
        "--device",
        "emulator",
        "--save",
        b_s,
    ]);
    assert!(out.contains("qkv 96 -> 128") && out.contains("bf16") && out.contains("bitwise identical"), "{out}");
    let e = fails(&["grow", "--config", "tiny", "--checkpoint", a_s, "--to-slots", "64,64,128"]);
    assert!(e.contains("qkv slots 96 -> 64"), "{e}");
    // generate on the twice-grown checkpoint gives the original model's tokens
    // without being told the dtype or the slot counts.
    let prompt = ["--config", "tiny", "--tokens", "1,2,3", "--max-new", "5", "--device", "emulator"];
    let original = ok(&[&["generate", "--init-seed", "5", "--dtype", "bf16"][..], &prompt[..]].concat());
    let grown = ok(&[&["generate", "--checkpoint", b_s][..], &prompt[..]].concat());
    assert_eq!(original, grown);
    // (and the flags matter: another init seed gives other tokens)
    let other = ok(&[&["generate", "--init-seed", "6", "--dtype", "bf16"][..], &prompt[..]].concat());
    assert_ne!(original, other);
    let e = fails(&[&["generate", "--checkpoint", b_s, "--init-seed", "5"][..], &prompt[..]].concat());
    assert!(e.contains("--init-seed") && e.contains("--checkpoint"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_checkpoints_are_refused_naming_file_tensor_and_index() {
    let dir = tmp("badckpt");
    let good = dir.join("good.safetensors");
    ok(&["grow", "--config", "tiny", "--to", "tiny", "--device", "emulator", "--save", good.to_str().unwrap()]);
    let cfg = tf_ref::TokenformerConfig::by_name("tiny").unwrap();
    let mut p = tf_ref::ModelParams::load_safetensors(&cfg, &good).unwrap();
    // Query key tokens [64, 64]: row 2, column 5.
    p.blocks[0].q.0[2 * 64 + 5] = f64::NAN;
    let nan = dir.join("nan.safetensors");
    p.save_safetensors(&cfg, &nan).unwrap();
    let n = nan.to_str().unwrap();
    let args = ["generate", "--config", "tiny", "--checkpoint", n, "--tokens", "1,2", "--max-new", "2"];
    let e = fails(&args);
    assert!(e.contains(n) && e.contains("sequential.2.attention.query.key_param_tokens"), "{e}");
    assert!(e.contains("NaN at index [2, 5]"), "{e}");
    // The opt-out loads it (what the NaN then does is the user's business).
    let o = tokenformer(&[&args[..], &["--allow-non-finite"]].concat());
    let (_, err) = text(&o);
    assert!(!err.contains("non-finite weights"), "{err}");
    // A truncated file: named, with the tensor whose data is cut.
    let mut bytes = std::fs::read(&good).unwrap();
    bytes.truncate(bytes.len() - 100);
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes).unwrap();
    let e = fails(&["generate", "--config", "tiny", "--checkpoint", cut.to_str().unwrap(), "--tokens", "1"]);
    assert!(e.contains("cut.safetensors") && e.contains("truncated") && e.contains("tensor \"sequential."), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn profile_prints_the_memory_table_of_every_launch() {
    // Pattention with tails in t, d, n and d_out: at t = 37 the scores, decode and
    // combine kernels (the tiled output path starts at larger t).
    let out = ok(&["profile", "pattention", "--shape", "t=37,d=72,n=100,d_out=40"]);
    for k in ["kernel pattention_scores_bf16", "kernel pattention_decode_bf16", "kernel pattention_combine_bf16"] {
        assert!(out.contains(k), "{k} in:\n{out}");
    }
    assert!(out.contains("shared ldmatrix") && out.contains("global cp.async-read"), "{out}");
    assert!(out.contains("kernels/pattention_scores.cu:"), "source lines: {out}");
    // The SIMT f32 attention and growth too.
    assert!(ok(&["profile", "attention", "--dtype", "f32", "--shape", "tq=9,tk=13,hd=64"])
        .contains("kernel attn_fwd_f32_hd64"));
    assert!(ok(&["profile", "grow", "--shape", "rows_old=3,rows_new=11,cols=24"]).contains("kernel grow_rows"));
    for (op, kernel) in [("rotary", "rotary_bf16"), ("add", "residual_add_bf16"), ("embedding", "embedding_bf16")] {
        let out = ok(&["profile", op, "--shape", "t=5"]);
        assert!(out.contains(&format!("kernel {kernel}")), "{op}: {out}");
    }
    assert!(fails(&["profile", "softmax"]).contains("unknown op"));
    assert!(fails(&["profile", "linear", "--shape", "q=3"]).contains("unknown key \"q\""));
    assert!(fails(&["profile", "linear", "--shape", "t"]).contains("not KEY=VALUE"));
}
