//! `tokenformer`: the project's command line.
//!
//! - `bench`: Pattention against dense layers, attention and growth on the GPU
//!   (the benchmarks issue's cases, `tf_host::bench`), as a table and optionally
//!   JSON lines and an SVG chart; without a GPU it says so and runs `check` on
//!   the emulator instead.
//! - `check`: every kernel against tf-ref on every available backend.
//! - `grow`: grows a model's Pattentions, reporting the logits' change and the time.
//! - `generate`: token ids in, token ids out.
//! - `golden`: tf-ref's golden files.
//! - `info`: driver, device, compiled archs, nvcc, ptxas summary.
//!
//! Errors are one line on stderr and a non-zero exit, never a panic trace.

mod bench;
mod check;
mod commands;
mod util;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "tokenformer", version, about = "TokenFormer CUDA kernels: benchmarks, checks, growth, generation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CUDA device 0 when usable, else the CPU emulator.
    Auto,
    /// The CPU SIMT emulator.
    Emulator,
    /// CUDA device 0.
    Cuda,
}

/// Storage type of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pattention vs dense, attention and growth on the GPU (without one: `check` on the emulator).
    Bench(BenchArgs),
    /// Every kernel against tf-ref on every available backend; non-zero exit on any failure.
    Check(CheckArgs),
    /// Grow a model's Pattentions and report the logits' change and the time.
    Grow(GrowArgs),
    /// Continue a sequence of token ids.
    Generate(GenerateArgs),
    /// Write tf-ref's golden safetensors files.
    Golden(GoldenArgs),
    /// Driver, device, compiled archs, nvcc version and the ptxas summary.
    Info,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Write the rows as JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Write an SVG chart of Pattention TFLOP/s against n to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<std::path::PathBuf>,
    /// The device kit's short set of cases instead of all of them.
    #[arg(long)]
    pub quick: bool,
    /// Families to run (comma-separated): pattention, attention, grow.
    #[arg(long, value_delimiter = ',', default_values = ["pattention", "attention", "grow"])]
    pub only: Vec<String>,
    /// Seed of the `check` run used as the fallback without a GPU.
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Seed of the random inputs (default: fresh, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Backends: auto = the emulator and CUDA when usable.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct GrowArgs {
    /// Config to start from: 150m 450m 900m 1.5b 354m 757m tiny.
    #[arg(long)]
    pub config: String,
    /// A released config to grow to (same shape, more slots), e.g. 757m.
    #[arg(long, conflicts_with = "to_slots")]
    pub to: Option<String>,
    /// Target slot counts qkv,proj,ffn, e.g. 128,128,256.
    #[arg(long, value_name = "QKV,PROJ,FFN")]
    pub to_slots: Option<String>,
    /// Zero keys and pinned n_ref: the logits must not change.
    #[arg(long)]
    pub preserving: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DtypeArg,
    /// Seed of the initial model, the tokens and the new rows.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tokens in the forward pass compared before and after.
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    /// Save the grown model as a safetensors checkpoint.
    #[arg(long, value_name = "FILE")]
    pub save: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model config: 150m 450m 900m 1.5b 354m 757m tiny.
    #[arg(long)]
    pub config: String,
    /// Safetensors checkpoint with the official GPT-NeoX key names (default: random init).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Slot counts of a grown checkpoint, qkv,proj,ffn (default: the config's).
    #[arg(long, value_name = "QKV,PROJ,FFN")]
    pub slots: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_name = "IDS")]
    pub tokens: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    pub max_new: usize,
    /// Sample at this temperature instead of greedy decoding.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Seed of the random init (without --checkpoint) and of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
}

#[derive(Args, Debug)]
pub struct GoldenArgs {
    /// Folder to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
    #[arg(long, default_value_t = 2024)]
    pub seed: u64,
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        // stdout closed early (`tokenformer check | head`): stop quietly, as a
        // program killed by SIGPIPE would.
        if msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        eprintln!("tokenformer: internal error: {}", util::one_line(&msg));
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // clap's message up to its first blank line, on one line.
            let text = e.to_string();
            let head = text.split("\n\n").next().unwrap_or("invalid arguments");
            let head = util::one_line(head.strip_prefix("error: ").unwrap_or(head));
            eprintln!("tokenformer: {head} (see tokenformer --help)");
            return ExitCode::from(2);
        }
    };
    let result = std::panic::catch_unwind(|| match cli.command {
        Command::Bench(a) => bench::run(&a),
        Command::Check(a) => check::run(&a),
        Command::Grow(a) => commands::grow(&a),
        Command::Generate(a) => commands::generate(&a),
        Command::Golden(a) => commands::golden(&a),
        Command::Info => commands::info(),
    });
    match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("tokenformer: {}", util::one_line(&e));
            ExitCode::FAILURE
        }
        // The panic hook already printed one line.
        Err(_) => ExitCode::from(101),
    }
}
