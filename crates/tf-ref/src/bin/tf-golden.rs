//! `tf-golden --out DIR [--seed S]`: writes the tf-ref golden safetensors files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: tf-golden --out DIR [--seed S]\n\
    Writes one safetensors file per golden case (pattention, attention, grow) into DIR.\n\
    Without --seed, a seed is taken from the clock and printed.";

fn main() -> ExitCode {
    let mut out: Option<PathBuf> = None;
    let mut seed: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" | "-o" => match args.next() {
                Some(v) => out = Some(PathBuf::from(v)),
                None => return fail("--out needs a directory"),
            },
            "--seed" | "-s" => match args.next().map(|v| v.parse::<u64>()) {
                Some(Ok(v)) => seed = Some(v),
                Some(Err(e)) => return fail(&format!("--seed: {e}")),
                None => return fail("--seed needs a number"),
            },
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return fail(&format!("unexpected argument {other:?}")),
        }
    }
    let Some(out) = out else {
        return fail("--out DIR is required");
    };
    let seed =
        seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
    println!("seed = {seed}");
    match tf_ref::golden::write_all(&out, seed) {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tf-golden: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("tf-golden: {msg}\n{USAGE}");
    ExitCode::from(2)
}
