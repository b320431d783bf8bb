//! Shared by the benches: the GPU (or the reason there is none) and criterion
//! wired to the cases and measurement of `tf_host::bench_internals`, which `tokenformer
//! bench` runs too.
//!
//! Nothing here times the emulator: its timings are not performance.
#![allow(dead_code)]

use std::time::Duration;

use criterion::{BenchmarkId, Throughput};
use tf_host::bench_internals::{
    append_env_json, measure_peaks, pattention_ratios, table, BenchSet, Hook, Peaks, Row, Variant, Work,
};
use tf_host::Device;

/// The CUDA device, or None after printing why the CUDA benches are skipped.
pub fn gpu(bench: &str) -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => {
            eprintln!("{bench}: benchmarking on {}", d.name());
            Some(d)
        }
        Err(e) => {
            eprintln!(
                "{bench}: skipped, no CUDA device ({e}); emulator timings are not performance, so nothing is measured"
            );
            None
        }
    }
}

/// Criterion configured for GPU timings: short warm-up, measurement time from
/// `TF_BENCH_SECONDS` (default 3 s; the kit uses less).
pub fn criterion() -> criterion::Criterion {
    let secs: f64 = std::env::var("TF_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    criterion::Criterion::default()
        .warm_up_time(Duration::from_secs_f64((secs / 3.0).max(0.2)))
        .measurement_time(Duration::from_secs_f64(secs.max(0.3)))
        .sample_size(10)
        .configure_from_args()
}

/// The peaks, printed.
pub fn peaks(dev: &Device) -> Peaks {
    let p = measure_peaks(dev).expect("measuring the peaks");
    eprintln!(
        "peaks: cuBLAS bf16 {:.1} TFLOP/s (8192³), device copy {:.0} GB/s (1 GiB, read + write)",
        p.flops / 1e12,
        p.bytes / 1e9
    );
    p
}

/// Registers each variant of a `tf_host::bench_internals` case runner as a criterion
/// benchmark (`iter_custom` with CUDA events) before the runner takes its median.
pub fn hook<'c>(c: &'c mut criterion::Criterion, dev: &'c Device) -> impl FnMut(&mut Variant<'_>) + 'c {
    move |v: &mut Variant<'_>| {
        let mut g = c.benchmark_group(&v.group);
        g.throughput(match v.work {
            Work::Flops(f) => Throughput::Elements(f as u64),
            Work::Bytes(b) => Throughput::Bytes(b as u64),
        });
        let run = &mut *v.run;
        g.bench_function(BenchmarkId::new(&v.function, &v.param), |b| {
            b.iter_custom(|iters| dev.time_iters(iters, &mut *run).expect("timed run"))
        });
        g.finish();
    }
}

/// Prints the roofline table (and the Pattention ratios) and appends JSON lines
/// to `$TF_BENCH_JSON` when set.
pub fn report(rows: &[Row], p: &Peaks) {
    println!("\n{}", table(rows, p));
    print!("{}", pattention_ratios(rows));
    if let Err(e) = append_env_json(rows, p) {
        eprintln!("TF_BENCH_JSON: {e}");
    }
}

/// The whole of a case-list bench: the GPU (or why there is none), its peaks,
/// each case of `cases(set)` through `run` as criterion benchmarks, then the
/// report.
pub fn run_cases<C>(
    bench: &str,
    cases: impl Fn(BenchSet) -> Vec<C>,
    run: impl Fn(&Device, &C, Hook<'_>) -> tf_host::Result<Vec<Row>>,
) {
    let Some(dev) = gpu(bench) else { return };
    let peaks = peaks(&dev);
    let mut c = criterion();
    let mut rows = Vec::new();
    {
        let mut h = hook(&mut c, &dev);
        for case in cases(BenchSet::from_env()) {
            rows.extend(run(&dev, &case, &mut h).unwrap_or_else(|e| panic!("{bench} case: {e}")));
        }
    }
    report(&rows, &peaks);
    c.final_summary();
}
