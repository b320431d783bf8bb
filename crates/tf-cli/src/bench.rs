//! `tokenformer bench`: the benchmarks issue's cases on the GPU, through
//! `tf_host::bench_internals` (the same code the criterion benches run). Without a GPU:
//! says so, then runs `check` on the emulator (emulator timings are not
//! performance, so nothing is timed there).

use std::process::ExitCode;

use tf_host::bench_internals::{
    attention_cases, backward_cases, decode_cases, json_lines, measure_peaks, pattention_cases, pattention_ratios,
    run_attention_case, run_backward, run_decode, run_grow, run_pattention_case, svg, table, BenchSet, Variant,
};
use tf_host::Device;

use crate::util::{bar, check_output, out, outln, s, spinner, write_file, CliResult};
use crate::{BenchArgs, CheckArgs, DeviceArg};

const FAMILIES: [&str; 5] = ["pattention", "attention", "grow", "decode", "pattention_backward"];

pub fn run(args: &BenchArgs) -> CliResult<ExitCode> {
    if let Some(bad) = args.only.iter().find(|f| !FAMILIES.contains(&f.as_str())) {
        return Err(format!("--only: unknown family {bad:?}; expected some of {FAMILIES:?}"));
    }
    // Output paths are checked before anything runs.
    if let Some(path) = &args.json {
        check_output("--json", path)?;
    }
    if let Some(path) = &args.svg {
        check_output("--svg", path)?;
    }
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            outln!("bench: no usable GPU ({e}).");
            outln!(
                "bench: the benchmarks need a CUDA device; emulator timings are not performance, so nothing is timed. \
                 Running `tokenformer check` on the emulator instead."
            );
            if args.json.is_some() || args.svg.is_some() {
                outln!("bench: --json / --svg not written: nothing was measured.");
            }
            let code = crate::check::run(&CheckArgs { seed: args.seed, device: DeviceArg::Emulator })?;
            return Ok(code);
        }
    };
    let set = if args.quick { BenchSet::Quick } else { BenchSet::Full };
    outln!("bench: {} ({} SMs), {:?} set", dev.name(), dev.sm_count(), set);
    let sp = spinner("measuring peaks (8192³ cuBLAS bf16, 1 GiB copy)");
    let peaks = measure_peaks(&dev).map_err(s)?;
    sp.finish_and_clear();
    outln!(
        "peaks: cuBLAS bf16 {:.1} TFLOP/s (8192³), device copy {:.0} GB/s (1 GiB, read + write)",
        peaks.flops / 1e12,
        peaks.bytes / 1e9
    );
    let want = |f: &str| args.only.iter().any(|o| o == f);
    let pcases = if want("pattention") { pattention_cases(set) } else { Vec::new() };
    let acases = if want("attention") { attention_cases(set) } else { Vec::new() };
    let dcases = if want("decode") { decode_cases(set) } else { Vec::new() };
    let bcases = if want("pattention_backward") { backward_cases(set) } else { Vec::new() };
    let total = pcases.len() + acases.len() + usize::from(want("grow")) + dcases.len() + bcases.len();
    let pb = bar(total as u64, "benchmarking");
    let mut no_hook = |_: &mut Variant<'_>| {};
    let mut rows = Vec::new();
    for c in &pcases {
        pb.set_message(format!("pattention {} {} d{} n{} t{}", c.dtype, c.norm.name(), c.d, c.n, c.t));
        rows.extend(run_pattention_case(&dev, c, &mut no_hook).map_err(s)?);
        pb.inc(1);
    }
    for c in &acases {
        pb.set_message(format!("attention {} hd{} s{}", c.dtype, c.head_dim, c.seq));
        rows.extend(run_attention_case(&dev, c, &mut no_hook).map_err(s)?);
        pb.inc(1);
    }
    if want("grow") {
        pb.set_message("grow 1.5b x1.25".to_string());
        rows.extend(run_grow(&dev, &mut no_hook).map_err(s)?);
        pb.inc(1);
    }
    for c in &dcases {
        pb.set_message(format!("decode step {} kv {}", c.config, c.kv));
        rows.extend(run_decode(&dev, c, &mut no_hook).map_err(s)?);
        pb.inc(1);
    }
    for c in &bcases {
        pb.set_message(format!("pattention backward d{} n{} t{}", c.d, c.n, c.t));
        rows.extend(run_backward(&dev, c, &mut no_hook).map_err(s)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    outln!("\n{}", table(&rows, &peaks));
    out!("{}", pattention_ratios(&rows));
    if let Some(path) = &args.json {
        write_file("--json", path, json_lines(&rows, &peaks).as_bytes())?;
        outln!("bench: wrote {} rows to {}", rows.len(), path.display());
    }
    if let Some(path) = &args.svg {
        write_file("--svg", path, svg(&rows, Some(&peaks)).as_bytes())?;
        outln!("bench: wrote the chart to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
