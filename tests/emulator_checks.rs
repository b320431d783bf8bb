//! The emulator's memory checks (racecheck, memcheck, initcheck) and its profiler,
//! on the seeded bugs of `kernels/test/emu_check.cu`: each bug passes the plain
//! emulator, is reported by its check with the source line of both sides, and its
//! fixed variant runs clean under every check. Run: `cargo test --test emulator_checks`.

use rand::{Rng, SeedableRng};
use tf_kernels::emu::{last_profile, launch, Checks, DeviceBuffer, EmuError, LaneOrder, LaunchConfig, WarpOrder};
use tf_kernels::sys::tf_test_params;

const KERNEL: &str = "tf_test_check";
const SRC: &str = "kernels/test/emu_check.cu";

fn seed() -> u64 {
    let s = std::env::var("TF_TEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("seed {s} (TF_TEST_SEED={s} reproduces)");
    s
}

fn random_f32(n: usize, s: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    (0..n).map(|_| rng.random_range(-100..=100) as f32 + 0.5).collect()
}

fn cfg(grid: u32, block: u32, checks: Checks) -> LaunchConfig {
    LaunchConfig { checks, lane_order: LaneOrder::Shuffled, seed: 7, ..LaunchConfig::new([grid, 1, 1], [block, 1, 1]) }
}

fn run(c: &LaunchConfig, p: &tf_test_params) -> Result<(), EmuError> {
    // SAFETY: every pointer in `p` is a live DeviceBuffer of the calling test, sized
    // for what the mode touches (kernels/test/emu_check.cu), except where a test
    // seeds an out-of-bounds or freed access on purpose: those land in the emulator
    // allocator's redzones or in memory memcheck stops the kernel before touching.
    unsafe { launch(KERNEL, c, p) }
}

/// The source lines of `SRC` that contain `needle` (1-based), to name in messages.
fn line_of(needle: &str) -> usize {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/test/emu_check.cu")).unwrap();
    let hits: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.contains(needle)).map(|(i, _)| i + 1).collect();
    assert_eq!(hits.len(), 1, "{needle:?} must occur once in {SRC}: {hits:?}");
    hits[0]
}

fn site(needle: &str) -> String {
    format!("{SRC}:{}", line_of(needle))
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, EmuError>, parts: &[&str]) -> String {
    let e = r.expect_err("the check must report the seeded bug").message;
    for p in parts {
        assert!(e.contains(p), "expected {p:?} in:\n{e}");
    }
    e
}

#[test]
fn removed_barrier_in_a_cp_async_ring_is_a_write_after_read_hazard() {
    let n = 6usize;
    let x = random_f32(n * 64, seed());
    let input = DeviceBuffer::from_slice(&x).unwrap();
    let pair = |ph: usize, t: usize| x[ph * 64 + t] + x[ph * 64 + (t ^ 32)];
    let want: Vec<f32> =
        (0..n).flat_map(|ph| (0..64).map(move |t| (ph, t))).map(|(ph, t)| pair(ph, t) + pair(ph, t ^ 1)).collect();
    let go = |arg: i32, checks: Checks, warps: WarpOrder| {
        let out = DeviceBuffer::uninit(n * 64 * 4).unwrap();
        let p = tf_test_params { in0: input.addr(), out0: out.addr(), n: n as i64, mode: 0, arg, ..Default::default() };
        let c = LaunchConfig { warp_order: warps, ..cfg(1, 64, checks) };
        run(&c, &p).map(|()| out.to_vec::<f32>())
    };
    // The plain emulator's default schedule does not see it: right results, no error.
    assert_eq!(go(0, Checks::NONE, WarpOrder::RoundRobin).unwrap(), want);
    // racecheck does, under any schedule, naming the refill and the read.
    for warps in [WarpOrder::RoundRobin, WarpOrder::Ahead] {
        let e = expect_err(
            go(0, Checks::ALL, warps),
            &[
                "write-after-read hazard",
                &site("if (ph + 2 < p.n) tf::cp_async_4"),
                &site("float v = cur[t] + cur[t ^ 32]"),
                "kernel `tf_test_check`",
            ],
        );
        assert!(!e.contains("{pc:"), "source lines symbolised: {e}");
    }
    // With the barrier: clean under every check and every schedule.
    for warps in WarpOrder::ALL {
        assert_eq!(go(1, Checks::ALL, warps).unwrap(), want, "{warps:?}");
    }
}

#[test]
fn cp_async_destination_read_before_its_wait() {
    let x = random_f32(32, seed());
    let input = DeviceBuffer::from_slice(&x).unwrap();
    let go = |arg: i32, checks: Checks| {
        let out = DeviceBuffer::uninit(32 * 4).unwrap();
        let p = tf_test_params { in0: input.addr(), out0: out.addr(), mode: 1, arg, ..Default::default() };
        run(&cfg(1, 32, checks), &p).map(|()| out.to_vec::<f32>())
    };
    // Plain: the early read sees the emulator's poison, and the launch succeeds.
    assert!(go(0, Checks::NONE).is_ok());
    expect_err(
        go(0, Checks { race: true, ..Checks::NONE }),
        &[
            "cp.async destination read before the cp.async.wait_group",
            &site("if (!p.arg) early = tile[t]"),
            &site("tf::cp_async_4(&tile[t]"),
        ],
    );
    assert_eq!(go(1, Checks::ALL).unwrap(), x);
}

#[test]
fn one_element_past_the_end_is_out_of_bounds() {
    let s = seed();
    for n in [1usize, 63, 64, 65, 200] {
        let x = random_f32(n, s ^ n as u64);
        let input = DeviceBuffer::from_slice(&x).unwrap();
        let go = |arg: i32, checks: Checks| {
            let out = DeviceBuffer::uninit(n * 4).unwrap();
            let p =
                tf_test_params { in0: input.addr(), out0: out.addr(), n: n as i64, mode: 2, arg, ..Default::default() };
            run(&cfg(n.div_ceil(64) as u32, 64, checks), &p).map(|()| out.to_vec::<f32>())
        };
        // Plain: the read lands in the allocation's redzone, no fault, a wrong value.
        let plain = go(0, Checks::NONE).expect("no fault without memcheck");
        assert_eq!(&plain[..n - 1], &x[..n - 1]);
        let e = expect_err(
            go(0, Checks { memory: true, ..Checks::NONE }),
            &[
                "memcheck",
                "out of bounds",
                &format!("bytes [{}, {}) of allocation", n * 4, n * 4 + 4),
                &format!("which has {} bytes", n * 4),
                &site("reinterpret_cast<float*>(p.out0)[t] = in[i]"),
            ],
        );
        assert!(e.contains(&format!("thread ({},0,0)", (n - 1) % 64)), "the last thread: {e}");
        assert_eq!(go(1, Checks::ALL).unwrap(), x, "n = {n}");
    }
}

#[test]
fn use_after_free_and_misaligned_vectors() {
    let x = random_f32(16, seed());
    let input = DeviceBuffer::from_slice(&x).unwrap();
    let stale = input.addr();
    let out = DeviceBuffer::uninit(16).unwrap();
    let mem = Checks { memory: true, ..Checks::NONE };
    let p = tf_test_params { in0: input.addr(), out0: out.addr(), mode: 7, arg: 16, ..Default::default() };
    run(&cfg(1, 1, mem), &p).unwrap();
    assert_eq!(out.to_vec::<f32>(), x[4..8]);
    // 4 bytes off a 16-byte boundary: the CPU does not mind, a GPU faults.
    let p4 = tf_test_params { arg: 4, ..p };
    expect_err(
        run(&cfg(1, 1, mem), &p4),
        &["memcheck: misaligned access of", "float4", "16-byte alignment", &site("const float4 v = ")],
    );
    drop(input);
    // Freed: memcheck stops the kernel before it reads.
    let pf = tf_test_params { in0: stale, ..p };
    expect_err(run(&cfg(1, 1, mem), &pf), &["memcheck", "has been freed", &site("const float4 v = ")]);
}

#[test]
fn reads_of_never_written_global_memory() {
    let n = 100usize;
    let mut input = DeviceBuffer::uninit(n * 4).unwrap();
    let out = DeviceBuffer::uninit(n * 4).unwrap();
    let p = tf_test_params { in0: input.addr(), out0: out.addr(), n: n as i64, mode: 4, ..Default::default() };
    let init = Checks { init: true, ..Checks::NONE };
    // Plain: reads zeros, no error.
    run(&cfg(2, 64, Checks::NONE), &p).unwrap();
    // The unchecked launch may have written `out`: it now counts as written. `input`
    // too (the emulator cannot tell reads from writes without checks), so mark it
    // unwritten again.
    input.mark_initialized(false);
    let e = expect_err(
        run(&cfg(2, 64, init), &p),
        &[
            "initcheck: read of global memory never written",
            "(400 bytes)",
            &site("if (t < p.n) reinterpret_cast<float*>(p.out0)[t] ="),
        ],
    );
    assert!(e.contains(&format!("{} problem(s)", n)), "one per element read: {e}");
    // Written from the host: clean.
    let x = random_f32(n, seed());
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    input.as_mut_slice().copy_from_slice(&bytes);
    run(&cfg(2, 64, Checks::ALL), &p).unwrap();
    let want: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
    assert_eq!(out.to_vec::<f32>(), want);
}

#[test]
fn shared_memory_not_written_in_the_block() {
    let go = |arg: i32, checks: Checks| {
        let out = DeviceBuffer::uninit(32 * 4).unwrap();
        let p = tf_test_params { out0: out.addr(), mode: 5, arg, ..Default::default() };
        run(&cfg(3, 32, checks), &p).map(|()| out.to_vec::<f32>())
    };
    let plain = go(0, Checks::NONE).unwrap();
    assert!(plain[31].is_nan(), "the plain emulator's poison shows, unattributed");
    expect_err(
        go(0, Checks { init: true, ..Checks::NONE }),
        &[
            "initcheck: read of shared memory not written in this block",
            "thread (31,0,0)",
            &site("reinterpret_cast<float*>(p.out0)[t] = tile[(t + 1) % 32]"),
        ],
    );
    let want: Vec<f32> = (0..32).map(|t| ((t + 1) % 32) as f32).collect();
    assert_eq!(go(1, Checks::ALL).unwrap(), want);
}

#[test]
fn lanes_of_a_warp_need_a_syncwarp_between_write_and_read() {
    let go = |arg: i32, checks: Checks| {
        let out = DeviceBuffer::uninit(32 * 4).unwrap();
        let p = tf_test_params { out0: out.addr(), mode: 6, arg, ..Default::default() };
        let c = LaunchConfig { lane_order: LaneOrder::Reverse, ..cfg(1, 32, checks) };
        run(&c, &p).map(|()| out.to_vec::<f32>())
    };
    assert!(go(0, Checks::NONE).is_ok());
    expect_err(
        go(0, Checks { race: true, ..Checks::NONE }),
        &["read-after-write hazard", &site("tile[t] = (float)(t * 3)"), &site("= tile[t ^ 1]"), "__syncwarp"],
    );
    let want: Vec<f32> = (0..32u32).map(|t| ((t ^ 1) * 3) as f32).collect();
    assert_eq!(go(1, Checks::ALL).unwrap(), want);
}

#[test]
fn shared_access_outside_the_blocks_shared_memory() {
    let out = DeviceBuffer::uninit(32 * 4).unwrap();
    let p = tf_test_params { out0: out.addr(), mode: 8, arg: 64, ..Default::default() };
    let c = LaunchConfig { dynamic_smem_bytes: 256, ..cfg(1, 32, Checks::NONE) };
    run(&c, &p).expect("inside the emulator's window: no fault");
    let c = LaunchConfig { checks: Checks { memory: true, ..Checks::NONE }, ..c };
    expect_err(
        run(&c, &p),
        &[
            "memcheck: shared-memory read of 4 bytes",
            "outside the block's shared memory",
            "256 bytes of dynamic shared memory",
        ],
    );
}

#[test]
fn profile_counts_bank_conflicts_and_sectors() {
    let wave = |stride: i32| {
        let out = DeviceBuffer::uninit(32 * 4).unwrap();
        let p = tf_test_params { out0: out.addr(), mode: 3, arg: stride, ..Default::default() };
        run(&cfg(1, 32, Checks::PROFILE), &p).unwrap();
        let want: Vec<f32> = (0..32).map(|l| (l * stride) as f32).collect();
        assert_eq!(out.to_vec::<f32>(), want);
        let prof = last_profile().expect("a profile");
        assert_eq!(prof.kernel, KERNEL);
        let line = site("reinterpret_cast<float*>(p.out0)[lane] = tile[lane * p.arg]");
        let l = prof
            .lines
            .iter()
            .find(|l| l.site == line && l.space == "shared" && l.kind == "load")
            .unwrap_or_else(|| panic!("{line} in {prof:#?}"));
        assert_eq!(l.requests, 1);
        assert_eq!(l.ideal_wavefronts, 1);
        l.wavefronts
    };
    // stride s words: lane l hits bank (l * s) % 32: gcd(s, 32)-way conflicts
    assert_eq!(wave(1), 1);
    assert_eq!(wave(33), 1);
    assert_eq!(wave(2), 2);
    assert_eq!(wave(4), 4);
    assert_eq!(wave(32), 32);
    // Global: 4-byte loads and stores by 64 consecutive threads, n = 100 (a tail).
    let n = 100usize;
    let x = random_f32(n, seed());
    let input = DeviceBuffer::from_slice(&x).unwrap();
    let out = DeviceBuffer::uninit(n * 4).unwrap();
    let p = tf_test_params { in0: input.addr(), out0: out.addr(), n: n as i64, mode: 4, ..Default::default() };
    run(&cfg(2, 64, Checks::PROFILE), &p).unwrap();
    let prof = last_profile().unwrap();
    let line = site("if (t < p.n) reinterpret_cast<float*>(p.out0)[t] =");
    let ld = prof.lines.iter().find(|l| l.site == line && l.kind == "load").unwrap_or_else(|| panic!("{prof:#?}"));
    let st = prof.lines.iter().find(|l| l.site == line && l.kind == "store").unwrap();
    // 4 warps: 3 full (4 sectors each), the last with 4 lanes (1 sector)
    assert_eq!((ld.requests, ld.bytes, ld.sectors, ld.ideal_sectors), (4, 400, 13, 13));
    assert_eq!((st.requests, st.sectors), (4, 13));
    assert_eq!(prof.unique_global_bytes, 800);
    assert_eq!(prof.warps, 4);
}

/// The cost of the checks and the profiler: one Pattention (bf16, t 128, d 256, n 384,
/// d_out 192: scores, norm and output kernels) and one attention (bf16, causal, hd 64,
/// t 256, 2 heads) through tf-host on the emulator, best of 5 per mode.
/// Run: `cargo test --release --test emulator_checks -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run explicitly"]
fn timing_of_checks_and_profile() {
    use tf_host::{attention, from_f32_vec, pattention, AttnArgs, AttnOptions, Device, EmuOptions, PattentionArgs};
    let modes = [
        ("off", Checks::NONE),
        ("racecheck", Checks { race: true, ..Checks::NONE }),
        ("memcheck", Checks { memory: true, ..Checks::NONE }),
        ("initcheck", Checks { init: true, ..Checks::NONE }),
        ("all three", Checks::ALL),
        ("profile", Checks::PROFILE),
    ];
    let mut base = [0.0f64; 2];
    for (name, checks) in modes {
        let dev = Device::emulator_with(EmuOptions { checks, ..Default::default() });
        let up = |shape: &[usize], s: u64| {
            let n: usize = shape.iter().product();
            dev.upload(&from_f32_vec::<half::bf16>(&random_f32(n, s)), shape).unwrap()
        };
        let (x, k, v) = (up(&[128, 256], 1), up(&[384, 256], 2), up(&[384, 192], 3));
        let (q, kk, vv) = (up(&[1, 256, 2, 64], 4), up(&[1, 256, 2, 64], 5), up(&[1, 256, 2, 64], 6));
        let mut best = [f64::MAX; 2];
        for _ in 0..5 {
            let t0 = std::time::Instant::now();
            let args = PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: Default::default() };
            pattention(&dev, &args).unwrap();
            best[0] = best[0].min(t0.elapsed().as_secs_f64());
            let t0 = std::time::Instant::now();
            let opts = AttnOptions { causal: true, ..Default::default() };
            attention(&dev, &AttnArgs { q: q.view(), k: kk.view(), v: vv.view(), opts }).unwrap();
            best[1] = best[1].min(t0.elapsed().as_secs_f64());
        }
        if name == "off" {
            base = best;
        }
        println!(
            "{name:>10}: pattention {:8.1} ms ({:5.1}x), attention {:8.1} ms ({:5.1}x)",
            best[0] * 1e3,
            best[0] / base[0],
            best[1] * 1e3,
            best[1] / base[1]
        );
    }
}
