//! The `tokenformer` binary, run as a user runs it (emulator; CUDA when present).
//! Every command succeeds on small inputs, and bad arguments fail cleanly: a
//! non-zero exit, one line on stderr, no panic.

use std::path::PathBuf;
use std::process::{Command, Output};

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
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("generate:")).collect();
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
    let args =
        ["generate", "--config", "tiny", "--tokens", "5", "--max-new", "4", "--temperature", "0.9", "--seed", "3"];
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
    let out = ok(&["grow", "--config", "tiny", "--to-slots", "96,64,200", "--dtype", "f32"]);
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
    // The grown checkpoint does not fit the ungrown config: refused naming the key.
    let e = fails(&["generate", "--config", "tiny", "--checkpoint", ckpt.to_str().unwrap(), "--tokens", "1"]);
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
    fails(&["generate", "--config", "tiny", "--tokens", "1", "--temperature", "-1"]);
    fails(&["generate", "--config", "tiny", "--tokens", "1", "--checkpoint", "/nonexistent/model.safetensors"]);
    fails(&["bench", "--only", "nothing"]);
    fails(&["golden"]);
}
