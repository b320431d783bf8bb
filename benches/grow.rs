//! The row-append growth copy for a whole 1.5B-config model's parameter tokens
//! (40 layers × 5 Pattentions × keys and values, bf16), grown by 25%, in ONE
//! launch, against a device-to-device copy of the same bytes. GB/s count what
//! must move: old rows read and written, new rows written. The case and the
//! measurement are `tf_host::bench_internals`'s (shared with `tokenformer bench`).
//! Without a CUDA device the bench prints why and measures nothing.

mod common;

use common::{criterion, gpu, hook, peaks, report};
use tf_host::bench_internals::run_grow;

fn main() {
    let Some(dev) = gpu("grow") else { return };
    let peaks = peaks(&dev);
    let mut c = criterion();
    let rows = {
        let mut h = hook(&mut c, &dev);
        run_grow(&dev, &mut h).expect("grow case")
    };
    let b = |v: &str| rows.iter().find(|r| r.variant == v).map_or(0.0, |r| r.min_bytes / r.time.as_secs_f64() / 1e9);
    eprintln!(
        "grow: one launch; zeros {:.0} GB/s, normal {:.0} GB/s, dtod copy {:.0} GB/s",
        b("grow zeros"),
        b("grow normal"),
        b("memcpy dtod")
    );
    report(&rows, &peaks);
    c.final_summary();
}
