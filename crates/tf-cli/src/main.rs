//! `tokenformer`: the project's command line.
//!
//! - `bench`: Pattention against dense layers, attention and growth on the GPU
//!   (the benchmarks issue's cases, `tf_host::bench_internals`), as a table and optionally
//!   JSON lines and an SVG chart; without a GPU it says so and runs `check` on
//!   the emulator instead.
//! - `check`: every kernel against tf-ref on every available backend.
//! - `grow`: grows a model's Pattentions, reporting the logits' change and the time.
//! - `generate`: token ids in, token ids out.
//! - `golden`: tf-ref's golden files.
//! - `info`: driver, device, compiled archs, nvcc, ptxas summary.
//! - `train`: training on the f64 reference backend, with growth mid-run,
//!   exact checkpoints and resume (see `docs/training.md`).
//!
//! Errors are one line on stderr and a non-zero exit, never a panic trace.

mod bench;
mod check;
mod commands;
mod profile;
mod tokenize;
mod train;
mod util;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "tokenformer",
    version,
    about = "TokenFormer CUDA kernels: benchmarks, checks, growth, generation, training"
)]
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

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// One op at one shape on the emulator's memory profiler: per kernel, requests,
    /// sectors, coalescing and bank conflicts per source line.
    Profile(ProfileArgs),
    /// Train a model on a byte, u16-token or tokenized text corpus, with tf-ref's exact f64 gradients
    /// and AdamW on the CPU or (--device) everything on a device in f32, optionally
    /// growing it mid-run; save and resume bit-exactly.
    Train(TrainArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Config to start from (e.g. tiny; its vocab must be >= 256 for a byte corpus).
    #[arg(long)]
    pub config: Option<String>,
    /// Corpus: a `.bin` of little-endian u16 token ids, else plain text read as bytes
    /// (or, with --tokenizer, UTF-8 text encoded with it). The last 10 % is held out
    /// for --eval-every.
    #[arg(long, value_name = "FILE")]
    pub data: std::path::PathBuf,
    /// Encode the text corpus with this Hugging Face tokenizer.json (byte-level BPE,
    /// e.g. GPT-NeoX-20B's) instead of reading it as bytes; its vocabulary must fit
    /// the config's vocab. Not with a `.bin` corpus (already token ids). --resume
    /// needs the same --tokenizer again (the corpus's tokens are checked).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<std::path::PathBuf>,
    /// Total optimizer steps (the length of the cosine schedule).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Stop (and --save) after this many completed steps, keeping the schedule of --steps.
    #[arg(long, value_name = "STEP")]
    pub stop_at: Option<u64>,
    /// Sequences per step [default: 8].
    #[arg(long, value_name = "B")]
    pub batch: Option<usize>,
    /// Tokens per sequence, at most the config's context length [default: 64].
    #[arg(long, value_name = "T")]
    pub seq: Option<usize>,
    /// Peak learning rate [default: 6e-4]; AdamW betas (0.9, 0.95), weight decay 0.1,
    /// clipping 1.0, 1 % warm-up, cosine to 6e-5.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of the init, the new rows of a growth and the batches [default: 0].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Before step STEP (0-based) grow every block's Pattentions to QKV,PROJ,FFN slots.
    #[arg(long, value_name = "STEP:QKV,PROJ,FFN")]
    pub grow_at: Option<String>,
    /// Zero new keys and pinned n_ref: the growth leaves the loss bitwise unchanged.
    #[arg(long)]
    pub preserving: bool,
    /// Write a training checkpoint (weights, optimizer state, step, run settings) at the end.
    #[arg(long, value_name = "CKPT")]
    pub save: Option<std::path::PathBuf>,
    /// Continue the run saved in CKPT (same --data); the result is bitwise that of an uninterrupted run.
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<std::path::PathBuf>,
    /// Held-out loss every K steps (and at the end).
    #[arg(long, value_name = "K")]
    pub eval_every: Option<u64>,
    /// Print a line every K steps.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub log_every: u64,
    /// Write one JSON object per step to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Write the loss curve as an SVG to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<std::path::PathBuf>,
    /// Where the run trains: `reference` (tf-ref, f64, CPU), or on `emulator`,
    /// `cuda` or `auto` (CUDA when usable): model, f32 gradients, f32 master
    /// weights and AdamW on the device.
    #[arg(long, default_value = "reference")]
    pub device: String,
    /// CPU threads of the reference backend (the results do not depend on it).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Device backend: keep only each block's input and run its forward again in
    /// the backward (activation recomputation: less memory, the same results).
    #[arg(long)]
    pub recompute: bool,
    /// Device backend: the l2_norm_gelu Pattentions' forward keeps its scores and
    /// their backward reads them instead of recomputing them (one product fewer
    /// per Pattention; t·n more elements of memory per Pattention).
    #[arg(long)]
    pub keep_scores: bool,
    /// Device backend: loss scaling: off, dynamic (start at 2^16, halve and retake
    /// the step when a gradient is not finite, double after 2000 finite steps) or
    /// a fixed factor N [default: dynamic for --dtype f16, else off; on --resume,
    /// the checkpoint's rule and state].
    #[arg(long, value_name = "off|dynamic|N")]
    pub loss_scale: Option<String>,
    /// Storage type of the device backend's model: f32, f16 or bf16 (activations
    /// in it; gradients, master weights and moments f32 on the device).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// The op: pattention, attention, linear, grow, layer_norm, rotary, add or embedding.
    pub op: String,
    /// Shape keys, e.g. t=64,d=1024,n=1024 (pattention: t d n d_out; attention:
    /// b h tq tk hd causal; linear: t d_in d_out; grow: rows_old rows_new cols;
    /// layer_norm, add: t d; rotary: t heads head_dim rot_dim; embedding: t vocab d).
    /// Unnamed keys keep their defaults.
    #[arg(long, value_name = "K=V,...")]
    pub shape: Option<String>,
    /// Storage type.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DtypeArg,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
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
    /// Families to run (comma-separated): pattention, attention, grow, decode (one
    /// token through a whole model, uncaptured and as a replayed decode graph),
    /// pattention_backward (recomputing A and from kept scores, and the recompute product).
    #[arg(
        long,
        value_delimiter = ',',
        default_values = ["pattention", "attention", "grow", "decode", "pattention_backward"]
    )]
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

/// Storage type of a model made from scratch (`grow` and `generate` share it);
/// with --checkpoint the default is the type the checkpoint was made with.
pub const DEFAULT_DTYPE: DtypeArg = DtypeArg::F32;
/// Seed of the random init of a model made from scratch (`grow` and `generate`).
pub const DEFAULT_INIT_SEED: u64 = 0;

#[derive(Args, Debug)]
pub struct GrowArgs {
    /// Config to start from: 150m 450m 900m 1.5b 354m 757m tiny.
    #[arg(long)]
    pub config: String,
    /// Start from this safetensors checkpoint (e.g. a trained or already grown
    /// model) instead of a random init.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Slot counts of the model, qkv,proj,ffn (default: read from the checkpoint, else the config's).
    #[arg(long, value_name = "QKV,PROJ,FFN")]
    pub slots: Option<String>,
    /// A released config to grow to (same shape, more slots), e.g. 757m.
    #[arg(long, conflicts_with = "to_slots")]
    pub to: Option<String>,
    /// Target slot counts qkv,proj,ffn, e.g. 128,128,256 (each at least the current count).
    #[arg(long, value_name = "QKV,PROJ,FFN")]
    pub to_slots: Option<String>,
    /// Zero keys and pinned n_ref: the logits must not change (checked before --save).
    #[arg(long)]
    pub preserving: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Storage type [default: the checkpoint's, else f32].
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Seed of the random init (without --checkpoint) [default: 0].
    #[arg(long, value_name = "S", conflicts_with = "checkpoint")]
    pub init_seed: Option<u64>,
    /// Seed of the new rows and of the tokens of the compared forward pass.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub grow_seed: u64,
    /// Tokens in the forward pass compared before and after (at most the config's seq).
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    /// Save the grown model as a safetensors checkpoint (the storage type and init
    /// seed are recorded in its metadata).
    #[arg(long, value_name = "FILE")]
    pub save: Option<std::path::PathBuf>,
    /// Load a checkpoint even if it holds NaN or infinite weights.
    #[arg(long, requires = "checkpoint")]
    pub allow_non_finite: bool,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model config: 150m 450m 900m 1.5b 354m 757m tiny.
    #[arg(long)]
    pub config: String,
    /// Safetensors checkpoint with the official GPT-NeoX key names (default: random init).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<std::path::PathBuf>,
    /// Slot counts of the model, qkv,proj,ffn (default: read from the checkpoint, else the config's).
    #[arg(long, value_name = "QKV,PROJ,FFN")]
    pub slots: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_name = "IDS", required_unless_present = "text", conflicts_with = "text")]
    pub tokens: Option<String>,
    /// Prompt as text, one token per byte (the byte-level vocabulary `tokenformer
    /// train` uses for a plain-text corpus; the config's vocab must be >= 256). The
    /// prompt and its continuation are printed as text: the bytes as UTF-8 (invalid
    /// sequences, and ids >= 256, as U+FFFD). With --tokenizer the prompt is encoded,
    /// and the output decoded, with it instead. With --tokens only the new ids print.
    #[arg(long, value_name = "STRING")]
    pub text: Option<String>,
    /// Hugging Face tokenizer.json (byte-level BPE, e.g. GPT-NeoX-20B's) for --text
    /// (not --tokens); its vocabulary must fit the config's vocab. Ids it lacks print
    /// as U+FFFD.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<std::path::PathBuf>,
    /// Tokens to generate: the prompt plus these must fit the config's context length (seq).
    #[arg(long, default_value_t = 32)]
    pub max_new: usize,
    /// Sample at this temperature instead of greedy decoding.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Seed of the random init (without --checkpoint) [default: 0].
    #[arg(long, value_name = "S", conflicts_with = "checkpoint")]
    pub init_seed: Option<u64>,
    /// Seed of the sampling (with --temperature).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub sample_seed: u64,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Storage type [default: the checkpoint's, else f32].
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Load a checkpoint even if it holds NaN or infinite weights.
    #[arg(long, requires = "checkpoint")]
    pub allow_non_finite: bool,
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
    // A file-size limit makes writes fail with EFBIG (an error and the old file
    // kept) instead of killing the process.
    // SAFETY: setting a signal's disposition to SIG_IGN, before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        // Output the commands write goes through `outln!`, which returns errors;
        // a write elsewhere (a library's print) failing is still one line, no trace.
        if msg.contains("Broken pipe") || msg.contains("No space left") {
            eprintln!("tokenformer: cannot write to stdout: {}", util::one_line(&msg));
            std::process::exit(1);
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
            let raw: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
            if let Some(hint) = util::negative_value_hint(&raw) {
                eprintln!("tokenformer: {hint}");
                return ExitCode::from(2);
            }
            if raw.iter().any(|a| a == "--seed" || a.starts_with("--seed="))
                && matches!(raw.first().map(String::as_str), Some("generate" | "grow"))
            {
                eprintln!(
                    "tokenformer: --seed is not a flag of {}: use --init-seed (the random init) or {} \
                     (see tokenformer {} --help)",
                    raw[0],
                    if raw[0] == "generate" { "--sample-seed (the sampling)" } else { "--grow-seed (the new rows)" },
                    raw[0]
                );
                return ExitCode::from(2);
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
        Command::Profile(a) => profile::run(&a),
        Command::Train(a) => train::run(&a),
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
