//! The shortest program on tf-host: it picks the device (CUDA GPU 0 when it can,
//! else the CPU emulator, and prints which and why), a model size that suits that
//! device (a released size on a GPU, the tiny config on the emulator), and
//! generates a few tokens.
//!
//! ```sh
//! cargo run --release -p tf-host --example quickstart                   # CUDA if it can, else the emulator
//! cargo run -p tf-host --example quickstart -- --device emulator        # what `cargo xtask test` runs
//! cargo run -p tf-host --example quickstart -- --device cuda            # fails if CUDA cannot be used
//! ```

use std::process::ExitCode;
use std::time::Instant;

use tf_host::{bf16, Device, Sampling, Tokenformer, TokenformerConfig};

const USAGE: &str = "usage: quickstart [--device auto|cuda|emulator]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let choice = match args.as_slice() {
        [] => "auto",
        [flag, d] if flag == "--device" => d.as_str(),
        [one] => one.strip_prefix("--device=").ok_or(USAGE)?,
        _ => return Err(USAGE.into()),
    };
    let dev = match choice {
        "auto" => match Device::cuda(0) {
            Ok(d) => d,
            Err(e) => {
                println!("CUDA is not used: {e}");
                Device::emulator()
            }
        },
        "cuda" => Device::cuda(0)?,
        "emulator" => Device::emulator(),
        other => return Err(format!("unknown device '{other}'\n{USAGE}").into()),
    };
    // The emulator runs the same kernels on the CPU, far slower than a GPU: the
    // tiny config keeps it to a second.
    let size = if dev.is_cuda() {
        println!("device: {} (CUDA)", dev.name());
        "354m"
    } else {
        println!("device: {}: the same kernels on the CPU, far slower than a GPU", dev.name());
        "tiny"
    };
    let cfg = TokenformerConfig::by_name(size)?;
    println!("model:  {} ({} parameters, {} layers, d = {})", cfg.name, cfg.param_count(), cfg.layers, cfg.d);

    let start = Instant::now();
    let model = Tokenformer::<bf16>::new(&dev, &cfg, 42)?; // the official random init, seed 42
    let prompt = [1u32, 2, 3];
    let ids = model.generate(&prompt, 8, Sampling::Greedy)?; // through the KV cache
    println!("greedy: {prompt:?} -> {ids:?} ({:.2} s)", start.elapsed().as_secs_f64());
    Ok(())
}
