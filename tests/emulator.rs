//! The SIMT emulator itself (kernels/emu), through the test kernels of
//! `kernels/test/*.cu`: mma / ldmatrix / cp.async against the PTX ISA tables of
//! docs/ptx-fragments.md (expected values computed here, from the tables, never from
//! emulator code), warp collectives against the CUDA semantics, barriers, shared
//! memory poison, atomics, conversions against the `half` crate, and every error
//! path. Run: `cargo test --test emulator` (timings: `-- --ignored --nocapture`).

// Thread-indexed loops read several per-thread arrays at once: indices are clearer.
#![allow(clippy::needless_range_loop)]

use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tf_kernels::emu::{kernel_names, launch, launch_raw, EmuError, LaneOrder, LaunchConfig, WarpOrder};
use tf_kernels::sys::{tf_emu_launch_args, tf_test_params};

const ORDERS: [LaneOrder; 3] = [LaneOrder::Forward, LaneOrder::Reverse, LaneOrder::Shuffled];
const POISON32: u32 = 0xFFFF_FFFF;

/// The seed of this run's random inputs: `TF_TEST_SEED`, else fresh (printed).
fn seed() -> u64 {
    let s = std::env::var("TF_TEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("seed {s} (TF_TEST_SEED={s} reproduces)");
    s
}

fn addr<T>(v: &[T]) -> u64 {
    v.as_ptr() as u64
}

fn addr_mut<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

fn cfg(grid: u32, block: u32, order: LaneOrder) -> LaunchConfig {
    LaunchConfig {
        lane_order: order,
        seed: 0x5EED ^ grid as u64 ^ ((block as u64) << 20),
        ..LaunchConfig::new([grid, 1, 1], [block, 1, 1])
    }
}

/// Launches a test kernel. Every buffer named in `p` is a live Vec of this test,
/// sized for what the kernel touches under this configuration.
fn run(kernel: &str, c: &LaunchConfig, p: &tf_test_params) -> Result<(), EmuError> {
    // SAFETY: the callers pass params whose pointers are live buffers large enough
    // for the kernel's documented accesses (kernels/test/*.cu) and not otherwise
    // borrowed during the call.
    unsafe { launch(kernel, c, p) }
}

fn params() -> tf_test_params {
    tf_test_params::default()
}

// ------------------------------------------------------------------ 16-bit floats

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dt {
    F16,
    Bf16,
}

impl Dt {
    fn bits(self, x: f32) -> u16 {
        match self {
            Dt::F16 => half::f16::from_f32(x).to_bits(),
            Dt::Bf16 => half::bf16::from_f32(x).to_bits(),
        }
    }
    fn value(self, b: u16) -> f64 {
        match self {
            Dt::F16 => half::f16::from_bits(b).to_f64(),
            Dt::Bf16 => half::bf16::from_bits(b).to_f64(),
        }
    }
    fn kernel(self) -> &'static str {
        match self {
            Dt::F16 => "tf_test_mma_f16",
            Dt::Bf16 => "tf_test_mma_bf16",
        }
    }
}

// ------------------------------------------------------------------ mma

/// One 16x16 A, 16x8 B (B[k][n]) and 16x8 C tile, as bits / f32.
struct Tile {
    a: Vec<u16>,
    b: Vec<u16>,
    c: Vec<f32>,
    what: String,
}

/// D = A*B + C in f64 (a plain matrix product).
fn product(dt: Dt, t: &Tile) -> Vec<f64> {
    let mut d = vec![0.0; 128];
    for i in 0..16 {
        for j in 0..8 {
            let mut acc = t.c[i * 8 + j] as f64;
            for k in 0..16 {
                acc += dt.value(t.a[i * 16 + k]) * dt.value(t.b[k * 8 + j]);
            }
            d[i * 8 + j] = acc;
        }
    }
    d
}

fn run_mma(dt: Dt, tiles: &[Tile], order: LaneOrder) -> Vec<f32> {
    let a: Vec<u16> = tiles.iter().flat_map(|t| t.a.iter().copied()).collect();
    let b: Vec<u16> = tiles.iter().flat_map(|t| t.b.iter().copied()).collect();
    let c: Vec<f32> = tiles.iter().flat_map(|t| t.c.iter().copied()).collect();
    let mut d = vec![f32::NAN; tiles.len() * 128];
    let p = tf_test_params {
        in0: addr(&a),
        in1: addr(&b),
        in2: addr(&c),
        out0: addr_mut(&mut d),
        n: tiles.len() as i64,
        ..params()
    };
    let warps = 4;
    let grid = tiles.len().div_ceil(warps) as u32;
    run(dt.kernel(), &cfg(grid, 32 * warps as u32, order), &p).unwrap();
    d
}

fn one_hot_tiles(dt: Dt) -> Vec<Tile> {
    let mut tiles = Vec::new();
    // A one-hot at every (i, k); B[k][n] = 8k + n + 1 (exact in bf16 and f16), C[i][n] = i/4 + n/8.
    for i in 0..16 {
        for k in 0..16 {
            let mut a = vec![0u16; 256];
            a[i * 16 + k] = dt.bits(1.0);
            let b = (0..128).map(|e| dt.bits((e + 1) as f32)).collect();
            let c = (0..128).map(|e| (e / 8) as f32 * 0.25 + (e % 8) as f32 * 0.125).collect();
            tiles.push(Tile { a, b, c, what: format!("A one-hot at ({i},{k})") });
        }
    }
    // B one-hot at every (k, n); A[i][k] = 16i + k + 1 (<= 256: exact in bf16).
    for k in 0..16 {
        for n in 0..8 {
            let a = (0..256).map(|e| dt.bits((e + 1) as f32)).collect();
            let mut b = vec![0u16; 128];
            b[k * 8 + n] = dt.bits(1.0);
            tiles.push(Tile { a, b, c: vec![0.0; 128], what: format!("B one-hot at ({k},{n})") });
        }
    }
    tiles
}

fn check_one_hot(dt: Dt) {
    let tiles = one_hot_tiles(dt);
    for order in ORDERS {
        let d = run_mma(dt, &tiles, order);
        for (t, tile) in tiles.iter().enumerate() {
            let want = product(dt, tile);
            for e in 0..128 {
                let got = d[t * 128 + e];
                assert_eq!(
                    got as f64,
                    want[e],
                    "{dt:?} {}: D[{}][{}] = {got}, want {} ({order:?})",
                    tile.what,
                    e / 8,
                    e % 8,
                    want[e]
                );
            }
        }
    }
}

#[test]
fn mma_one_hot_f16() {
    check_one_hot(Dt::F16);
}

#[test]
fn mma_one_hot_bf16() {
    check_one_hot(Dt::Bf16);
}

#[test]
fn mma_random() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    for dt in [Dt::F16, Dt::Bf16] {
        let tiles: Vec<Tile> = (0..37)
            .map(|t| Tile {
                a: (0..256).map(|_| dt.bits(rng.random_range(-2.0..2.0))).collect(),
                b: (0..128).map(|_| dt.bits(rng.random_range(-2.0..2.0))).collect(),
                c: (0..128).map(|_| rng.random_range(-4.0..4.0)).collect(),
                what: format!("random tile {t}"),
            })
            .collect();
        let d = run_mma(dt, &tiles, LaneOrder::Shuffled);
        for (t, tile) in tiles.iter().enumerate() {
            let want = product(dt, tile);
            for e in 0..128 {
                let got = d[t * 128 + e] as f64;
                assert!(
                    (got - want[e]).abs() <= 1e-5 * (1.0 + want[e].abs()),
                    "{dt:?} {}: D[{}][{}] = {got}, want {} (seed {s})",
                    tile.what,
                    e / 8,
                    e % 8,
                    want[e]
                );
            }
        }
    }
}

// ------------------------------------------------------------------ ldmatrix

#[test]
fn ldmatrix_matches_the_ptx_tables() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    for nmat in [1usize, 2, 4] {
        for trans in [false, true] {
            for order in ORDERS {
                let rows: Vec<u16> = (0..256).map(|_| rng.random()).collect();
                let mut perm: Vec<i32> = (0..32).collect();
                perm.shuffle(&mut rng);
                let mut out = vec![0xDEAD_BEEFu32; 32 * 4];
                let p = tf_test_params {
                    in0: addr(&rows),
                    in1: addr(&perm),
                    out0: addr_mut(&mut out),
                    mode: nmat as i32,
                    arg: trans as i32,
                    ..params()
                };
                run("tf_test_ldmatrix", &cfg(1, 32, order), &p).unwrap();
                // Matrix m, row r is the row lane 8m + r pointed at.
                let m_at = |m: usize, r: usize, c: usize| rows[perm[8 * m + r] as usize * 8 + c] as u32;
                for l in 0..32 {
                    let (g, q) = (l >> 2, l % 4);
                    for m in 0..4 {
                        let want = if m >= nmat {
                            0
                        } else if trans {
                            m_at(m, 2 * q, g) | (m_at(m, 2 * q + 1, g) << 16)
                        } else {
                            m_at(m, g, 2 * q) | (m_at(m, g, 2 * q + 1) << 16)
                        };
                        assert_eq!(
                            out[l * 4 + m],
                            want,
                            "ldmatrix .x{nmat}{} lane {l} register {m} ({order:?}, seed {s})",
                            if trans { ".trans" } else { "" }
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn ldmatrix_feeds_mma() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    for (mode, dt) in [(1, Dt::F16), (2, Dt::Bf16)] {
        for order in ORDERS {
            let a: Vec<u16> = (0..256).map(|_| dt.bits(rng.random_range(-1.0..1.0))).collect();
            let b: Vec<u16> = (0..128).map(|_| dt.bits(rng.random_range(-1.0..1.0))).collect();
            let mut d0 = vec![f32::NAN; 128];
            let mut d1 = vec![f32::NAN; 128];
            let p = tf_test_params {
                in0: addr(&a),
                in1: addr(&b),
                out0: addr_mut(&mut d0),
                out1: addr_mut(&mut d1),
                mode,
                ..params()
            };
            let mut c = cfg(1, 32, order);
            c.dynamic_smem_bytes = 2048;
            run("tf_test_ldsm_mma", &c, &p).unwrap();
            let want = product(dt, &Tile { a, b, c: vec![0.0; 128], what: String::new() });
            for e in 0..128 {
                for (path, d) in [("ldmatrix.x2.trans B", &d0), ("ldmatrix.x2 of B^T", &d1)] {
                    assert!(
                        (d[e] as f64 - want[e]).abs() <= 1e-5 * (1.0 + want[e].abs()),
                        "{dt:?} via {path}: D[{}][{}] = {}, want {} ({order:?}, seed {s})",
                        e / 8,
                        e % 8,
                        d[e],
                        want[e]
                    );
                }
            }
        }
    }
}

// ------------------------------------------------------------------ warp collectives

/// CUDA's shuffle semantics (programming guide, "Warp Shuffle Functions"), for lane
/// `l` of a warp holding `v`: Some(source lane) or None for "own value".
fn shfl_src(kind: i32, l: usize, arg: i64, width: usize) -> usize {
    let seg = l / width * width;
    match kind {
        0 => seg + (arg.rem_euclid(width as i64) as usize),
        1 => {
            let d = arg as usize;
            if l - seg >= d {
                l - d
            } else {
                l
            }
        }
        2 => {
            let d = arg as usize;
            if l - seg + d < width {
                l + d
            } else {
                l
            }
        }
        _ => {
            let j = l ^ arg as usize;
            if j < seg + width {
                j
            } else {
                l
            }
        }
    }
}

/// Runs tf_test_collectives (mode, arg, width) on 2 blocks of 64 threads.
fn collective(
    mode: i32,
    arg: i32,
    width: i64,
    vals: &[u32],
    src: &[i32],
    order: LaneOrder,
) -> (Vec<u32>, Vec<u64>, Vec<u32>) {
    let mut out = vec![0xABAB_ABABu32; vals.len()];
    let mut out1 = vec![0xABABu64; vals.len()];
    let mut out2 = vec![0xABAB_ABABu32; vals.len()];
    let p = tf_test_params {
        in0: addr(vals),
        in1: addr(src),
        out0: addr_mut(&mut out),
        out1: addr_mut(&mut out1),
        out2: addr_mut(&mut out2),
        n: width,
        mode,
        arg,
        ..params()
    };
    run("tf_test_collectives", &cfg(2, 64, order), &p).unwrap();
    (out, out1, out2)
}

#[test]
fn shuffles_follow_cuda_semantics() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    let vals: Vec<u32> = (0..128).map(|_| rng.random()).collect();
    let src: Vec<i32> = (0..128).map(|_| rng.random_range(-40..80)).collect();
    let warp = |t: usize| t / 32 * 32;
    let mut cases: Vec<(i32, i32, i64)> = Vec::new();
    for w in [32, 16, 8, 4, 2, 1] {
        cases.push((0, 0, w));
    }
    for (d, w) in [(0, 32), (1, 32), (3, 32), (16, 32), (31, 32), (1, 8), (3, 8), (2, 4)] {
        cases.push((1, d, w));
        cases.push((2, d, w));
    }
    for (m, w) in [(1, 32), (2, 32), (4, 32), (8, 32), (16, 32), (31, 32), (3, 8), (4, 4), (1, 2), (6, 4)] {
        cases.push((3, m, w));
    }
    for order in ORDERS {
        for &(kind, arg, w) in &cases {
            let (out, _, _) = collective(kind, arg, w, &vals, &src, order);
            for t in 0..128 {
                let l = t % 32;
                let a = if kind == 0 { src[t] as i64 } else { arg as i64 };
                let j = shfl_src(kind, l, a, w as usize);
                assert_eq!(
                    out[t],
                    vals[warp(t) + j],
                    "shuffle kind {kind} arg {a} width {w}: thread {t} (lane {l}) should read lane {j} ({order:?}, seed {s})"
                );
            }
        }
    }
}

#[test]
fn votes_typed_shuffles_and_reductions() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    let mut vals: Vec<u32> = (0..128).map(|_| rng.random()).collect();
    let src = vec![0i32; 128];
    let w = |t: usize| t / 32 * 32;
    for order in ORDERS {
        // ballot / any / all
        let (out, _, _) = collective(4, 0, 32, &vals, &src, order);
        for t in 0..128 {
            let want = (0..32).filter(|&l| vals[w(t) + l] & 1 == 1).fold(0u32, |m, l| m | 1 << l);
            assert_eq!(out[t], want, "__ballot_sync thread {t} ({order:?})");
        }
        let present = (vals[40] % 32) as i32;
        let (out, _, _) = collective(5, present, 32, &vals, &src, order);
        for t in 0..128 {
            let want = (0..32).any(|l| (vals[w(t) + l] % 32) as i32 == present) as u32;
            assert_eq!(out[t], want, "__any_sync thread {t} ({order:?})");
        }
        let (out, _, _) = collective(5, 99, 32, &vals, &src, order);
        assert!(out.iter().all(|&x| x == 0), "__any_sync of a false predicate");
        let (out, _, _) = collective(6, 0, 32, &vals, &src, order);
        for t in 0..128 {
            let want = (0..32).all(|l| vals[w(t) + l] & 1 == 1) as u32;
            assert_eq!(out[t], want, "__all_sync thread {t} ({order:?})");
        }
        let odd: Vec<u32> = vals.iter().map(|v| v | 1).collect();
        let (out, _, _) = collective(6, 0, 32, &odd, &src, order);
        assert!(out.iter().all(|&x| x == 1), "__all_sync of a true predicate");
        // 64-bit, __half2 and float shuffles
        let (_, out1, _) = collective(7, 5, 32, &vals, &src, order);
        for t in 0..128 {
            let j = w(t) + ((t % 32) ^ 5);
            assert_eq!(out1[t], ((vals[j] as u64) << 32) | (!vals[j]) as u64, "64-bit shuffle thread {t}");
        }
        let (out, _, _) = collective(8, 3, 32, &vals, &src, order);
        for t in 0..128 {
            let j = if t % 32 + 3 < 32 { t + 3 } else { t };
            assert_eq!(out[t], vals[j], "__half2 __shfl_down_sync thread {t}");
        }
        let (out, _, _) = collective(9, 17, 32, &vals, &src, order);
        for t in 0..128 {
            let want = vals[w(t) + 17];
            let same = out[t] == want || (f32::from_bits(want).is_nan() && f32::from_bits(out[t]).is_nan());
            assert!(same, "float __shfl_sync thread {t}: {:#x} vs {want:#x}", out[t]);
        }
        // two disjoint groups in flight at once
        let (out, _, _) = collective(10, 5, 32, &vals, &src, order);
        for t in 0..128 {
            let l = t % 32;
            let j = if l < 16 {
                w(t) + (l ^ 5)
            } else if l < 31 {
                t + 1
            } else {
                t
            };
            assert_eq!(out[t], vals[j], "disjoint masks: thread {t} ({order:?})");
        }
        // reductions and match
        let (out, out1, _) = collective(11, 0, 32, &vals, &src, order);
        for t in 0..128 {
            let lanes = &vals[w(t)..w(t) + 32];
            assert_eq!(out[t], lanes.iter().fold(0u32, |a, &b| a.wrapping_add(b)), "__reduce_add_sync");
            assert_eq!(out1[t], *lanes.iter().max().unwrap() as u64, "__reduce_max_sync");
        }
        let (out, _, _) = collective(12, 3, 32, &vals, &src, order);
        for t in 0..128 {
            let want = (0..32).filter(|&l| vals[w(t) + l] % 3 == vals[t] % 3).fold(0u32, |m, l| m | 1 << l);
            assert_eq!(out[t], want, "__match_any_sync thread {t}");
        }
        let (out, _, _) = collective(13, 0, 32, &vals, &src, order);
        for t in 0..128 {
            let (parity, bit) = if t % 2 == 0 { (0, 1) } else { (1, 2) };
            let want = (0..32).filter(|&l| l % 2 == parity && vals[w(t) + l] & bit != 0).fold(0u32, |m, l| m | 1 << l);
            assert_eq!(out[t], want, "split ballot thread {t} ({order:?})");
        }
        // barrier reductions over each 64-thread block
        let (out, out1, out2) = collective(14, 0, 32, &vals, &src, order);
        for t in 0..128 {
            let blk = &vals[t / 64 * 64..t / 64 * 64 + 64];
            let count = blk.iter().filter(|v| *v & 1 == 1).count() as u32;
            assert_eq!(out[t], count, "__syncthreads_count");
            assert_eq!(out1[t], (count == 64) as u64, "__syncthreads_and");
            assert_eq!(out2[t], (count > 0) as u32, "__syncthreads_or");
        }
        vals.iter_mut().for_each(|v| *v = v.rotate_left(7));
    }
    let _ = s;
}

// ------------------------------------------------------------------ blocks, barriers, atomics

#[test]
fn block_reduction_with_barriers_on_several_os_threads() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    let (blocks, threads) = (13usize, 256usize);
    let x: Vec<f32> = (0..blocks * threads).map(|_| rng.random_range(-100..=100) as f32).collect();
    for os_threads in [1, 2, 4] {
        for order in ORDERS {
            let mut sums = vec![f32::NAN; blocks];
            let mut total = vec![0.0f32];
            let mut counters = vec![0u32; 3];
            let p = tf_test_params {
                in0: addr(&x),
                out0: addr_mut(&mut sums),
                out1: addr_mut(&mut total),
                out2: addr_mut(&mut counters),
                ..params()
            };
            let mut c = cfg(blocks as u32, threads as u32, order);
            c.os_threads = os_threads;
            run("tf_test_block_reduce", &c, &p).unwrap();
            for b in 0..blocks {
                let want: f32 = x[b * threads..(b + 1) * threads].iter().sum();
                assert_eq!(sums[b], want, "block {b} ({os_threads} OS threads, {order:?}, seed {s})");
            }
            assert_eq!(total[0], x.iter().sum::<f32>(), "atomicAdd f32 total");
            assert_eq!(counters[0], (blocks * threads) as u32, "atomicAdd u32");
            assert_eq!(counters[1], x.iter().map(|v| v.to_bits()).max().unwrap(), "atomicMax u32");
            assert_eq!(counters[2], (blocks * threads) as u32, "atomicAdd i32");
        }
    }
}

#[test]
fn implicit_warp_lockstep_is_a_race() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    let (blocks, threads) = (8usize, 128usize);
    let x: Vec<f32> = (0..blocks * threads).map(|_| rng.random_range(-50..=50) as f32).collect();
    let want: Vec<f32> = x.chunks(32).map(|w| w.iter().sum()).collect();
    let run_race = |mode: i32, order: LaneOrder| {
        let mut out = vec![0.0f32; want.len()];
        let p = tf_test_params { in0: addr(&x), out0: addr_mut(&mut out), mode, ..params() };
        let mut c = cfg(blocks as u32, threads as u32, order);
        c.seed = s;
        run("tf_test_warp_race", &c, &p).unwrap();
        out
    };
    for order in ORDERS {
        assert_eq!(run_race(1, order), want, "with __syncwarp every order is right ({order:?})");
    }
    let fwd = run_race(0, LaneOrder::Forward);
    assert!(fwd.iter().all(|v| v.is_nan()), "forward order, no __syncwarp: lane 0 reads poison: {fwd:?}");
    let shuffled = run_race(0, LaneOrder::Shuffled);
    let wrong = shuffled.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
    assert!(wrong > 0, "shuffled order, no __syncwarp: some warp must go wrong (seed {s})");
}

/// A missing `__syncthreads` between the warps' last reads of a shared tile and one
/// warp's overwrite of it (plain stores or cp.async) is caught only by the
/// warp-major orders that run the writing warp first: the round-robin order keeps
/// the warps within one collective of each other, so the reader always reads first.
#[test]
fn missing_barrier_before_a_tile_overwrite_is_a_race() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    let (blocks, phases) = (8usize, 8usize);
    let mut x: Vec<f32> = (0..phases * 64).map(|_| rng.random_range(-50..=50) as f32).collect();
    for ph in 0..phases {
        x[ph * 64] += 10_000.0 * (ph + 1) as f32; // consecutive tiles' sums differ
    }
    let sums: Vec<f32> = x.chunks(64).map(|c| c.iter().sum()).collect();
    let want: Vec<f32> = (0..blocks).flat_map(|_| sums.iter().flat_map(|&v| [v, v])).collect();
    let run_tiles = |mode: i32, arg: i32, order: LaneOrder, warps: WarpOrder| {
        let mut out = vec![0.0f32; want.len()];
        let p = tf_test_params { in0: addr(&x), out0: addr_mut(&mut out), n: phases as i64, mode, arg, ..params() };
        let mut c = cfg(blocks as u32, 64, order);
        c.seed = s;
        c.warp_order = warps;
        run("tf_test_tile_overwrite_race", &c, &p).unwrap();
        out
    };
    for arg in [0, 1] {
        let what = if arg == 0 { "stores" } else { "cp.async" };
        for order in ORDERS {
            for warps in WarpOrder::ALL {
                assert_eq!(
                    run_tiles(1, arg, order, warps),
                    want,
                    "with the barrier every schedule is exact ({what}, {order:?}, {warps:?}, seed {s})"
                );
            }
            // The race goes unseen when the warps take turns, or when the reading
            // warp (1) is the one that runs ahead.
            for warps in [WarpOrder::RoundRobin, WarpOrder::AheadReverse] {
                assert_eq!(
                    run_tiles(0, arg, order, warps),
                    want,
                    "no barrier, {warps:?}: warp 1 reads before warp 0 overwrites ({what}, {order:?})"
                );
            }
            // Warp 0 first: it overwrites the tile before warp 1 reads it.
            let got = run_tiles(0, arg, order, WarpOrder::Ahead);
            for b in 0..blocks {
                for ph in 0..phases {
                    let (w0, w1) = (got[(b * phases + ph) * 2], got[(b * phases + ph) * 2 + 1]);
                    assert_eq!(w0, sums[ph], "warp 0 reads its own tile ({what}, {order:?})");
                    if ph + 1 == phases {
                        assert_eq!(w1, sums[ph], "no overwrite after the last phase");
                    } else if arg == 0 {
                        assert_eq!(
                            w1,
                            sums[ph + 1],
                            "no barrier, Ahead, stores: warp 1 reads the next tile ({order:?})"
                        );
                    } else {
                        assert!(w1.is_nan(), "no barrier, Ahead, cp.async: warp 1 reads poison, got {w1} ({order:?})");
                    }
                }
            }
            // Warp order drawn per barrier: 8 blocks x 7 overwrites, each caught
            // when warp 0 is drawn first.
            let got = run_tiles(0, arg, order, WarpOrder::AheadShuffled);
            assert!(
                got.iter().zip(&want).any(|(g, w)| g.to_bits() != w.to_bits()),
                "no barrier, AheadShuffled: some phase must go wrong ({what}, {order:?}, seed {s})"
            );
        }
    }
}

#[test]
fn thread_and_block_indices() {
    let (grid, block) = ([3u32, 2, 2], [4u32, 3, 2]);
    let nb = (grid[0] * grid[1] * grid[2]) as usize;
    let nt = (block[0] * block[1] * block[2]) as usize;
    let mut out = vec![0u32; nb * nt * 12];
    let p = tf_test_params { out0: addr_mut(&mut out), ..params() };
    let c = LaunchConfig { os_threads: 3, ..LaunchConfig::new(grid, block) };
    run("tf_test_indices", &c, &p).unwrap();
    let mut i = 0;
    for bz in 0..grid[2] {
        for by in 0..grid[1] {
            for bx in 0..grid[0] {
                for tz in 0..block[2] {
                    for ty in 0..block[1] {
                        for tx in 0..block[0] {
                            let want =
                                [tx, ty, tz, bx, by, bz, block[0], block[1], block[2], grid[0], grid[1], grid[2]];
                            assert_eq!(out[i * 12..i * 12 + 12], want, "thread {i}");
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn shared_memory_is_poisoned_per_block() {
    let (blocks, threads) = (5usize, 64usize);
    for os_threads in [1, 2] {
        let mut o0 = vec![0u32; blocks * 256];
        let mut o1 = vec![0u32; blocks * 256];
        let mut o2 = vec![0u32; blocks * 4];
        let p =
            tf_test_params { out0: addr_mut(&mut o0), out1: addr_mut(&mut o1), out2: addr_mut(&mut o2), ..params() };
        let mut c = cfg(blocks as u32, threads as u32, LaneOrder::Shuffled);
        c.os_threads = os_threads;
        c.dynamic_smem_bytes = 256;
        run("tf_test_smem_poison", &c, &p).unwrap();
        for b in 0..blocks {
            for t in 0..threads {
                assert_eq!(o0[b * 256 + t], POISON32, "static __shared__ read before write, block {b} thread {t}");
                let want = 1000 * b as u32 + ((t + 1) % threads) as u32;
                assert_eq!(o1[b * 256 + t], want, "static __shared__ after writes, block {b} thread {t}");
            }
            assert_eq!(o2[b * 4], POISON32, "dynamic shared memory read before write, block {b}");
            assert_eq!(o2[b * 4 + 1], 1, "dynamic shared memory is 16-byte aligned");
            assert_eq!(o2[b * 4 + 2], 1, "__align__(128) static __shared__ is 128-byte aligned");
            assert_eq!(o2[b * 4 + 3], POISON32, "static __shared__ double read before write");
        }
    }
}

// ------------------------------------------------------------------ cp.async

#[test]
fn cp_async_zero_fill_and_wait_group_order() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    let threads = 64usize;
    for size in [4usize, 8, 16] {
        for order in ORDERS {
            let src: Vec<u8> = (0..threads * 2 * size).map(|_| rng.random_range(0..0xFF)).collect();
            let nbytes: Vec<i32> = (0..threads).map(|_| rng.random_range(0..=size as i32)).collect();
            let mut out = vec![0x11u8; 5 * threads * 2 * size];
            let p = tf_test_params {
                in0: addr(&src),
                in1: addr(&nbytes),
                out0: addr_mut(&mut out),
                mode: size as i32,
                ..params()
            };
            let mut c = cfg(1, threads as u32, order);
            c.dynamic_smem_bytes = (threads * 2 * size) as u32;
            run("tf_test_cp_async", &c, &p).unwrap();
            for t in 0..threads {
                let mine = &src[t * 2 * size..(t + 1) * 2 * size];
                let a: Vec<u8> = (0..size).map(|i| if i < nbytes[t] as usize { mine[i] } else { 0 }).collect();
                let b = &mine[size..];
                let poison = vec![0xFFu8; size];
                let snap = |ph: usize| &out[(ph * threads + t) * 2 * size..(ph * threads + t + 1) * 2 * size];
                let expect: [(&[u8], &[u8], &str); 5] = [
                    (&poison, &poison, "before any wait: poison"),
                    (&a, &poison, "after wait_group 1: A landed (zero-filled), B pending"),
                    (&a, b, "after wait_group 0: both landed"),
                    (&a, &poison, "an uncommitted copy is not waited for"),
                    (&a, &mine[..size], "after commit + wait_group 0"),
                ];
                for (ph, (wa, wb, what)) in expect.iter().enumerate() {
                    assert_eq!(&snap(ph)[..size], *wa, "cp.async {size} B thread {t}: {what} (A half, seed {s})");
                    assert_eq!(&snap(ph)[size..], *wb, "cp.async {size} B thread {t}: {what} (B half, seed {s})");
                }
            }
        }
    }
}

// ------------------------------------------------------------------ conversions

/// Round-to-nearest-even of `x` into a 16-bit format, by search over all its
/// finite values (independent of any bit trick): `value` maps bits to f64.
fn rne_reference(x: f64, value: impl Fn(u16) -> f64, max_bits: u16, mant_bits: u32) -> u16 {
    if x.is_nan() {
        return 0x7fff;
    }
    let neg = x.is_sign_negative();
    let a = x.abs();
    let max = value(max_bits);
    let ulp_max = max - value(max_bits - 1);
    let sign = if neg { 0x8000 } else { 0 };
    if a >= max + ulp_max / 2.0 {
        // at or past the halfway point to the next binade step: infinity (ties go to
        // the even neighbour, which is infinity since max's mantissa is all ones)
        return sign | (max_bits + 1);
    }
    // positive finite values are monotonic in their bits
    let (mut lo, mut hi) = (0u16, max_bits);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if value(mid) <= a {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let below = lo;
    let r = if value(below) == a || below == max_bits {
        below
    } else {
        let above = below + 1;
        let (db, da) = (a - value(below), value(above) - a);
        if db < da || (db == da && below & 1 == 0) {
            below
        } else {
            above
        }
    };
    let _ = mant_bits;
    sign | r
}

#[test]
fn conversions_round_to_nearest_even() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    // f32 -> f16 / bf16 against the half crate, on specials and random bit patterns.
    let mut x: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.99,
        65520.0,
        -65520.0,
        1e-8,
        2.98e-8,
        5.96e-8,
        6.1e-5,
        3.0e38,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
    ];
    x.extend((0..200_000).map(|_| f32::from_bits(rng.random())));
    let mut h = vec![0u16; x.len()];
    let mut b = vec![0u16; x.len()];
    let p =
        tf_test_params { in0: addr(&x), out0: addr_mut(&mut h), out1: addr_mut(&mut b), n: x.len() as i64, ..params() };
    run("tf_test_convert", &cfg(4, 256, LaneOrder::Forward), &p).unwrap();
    for (i, &v) in x.iter().enumerate() {
        let (wh, wb) = (half::f16::from_f32(v), half::bf16::from_f32(v));
        if v.is_nan() {
            assert!(half::f16::from_bits(h[i]).is_nan() && half::bf16::from_bits(b[i]).is_nan(), "NaN stays NaN");
        } else {
            assert_eq!(h[i], wh.to_bits(), "f32 {v:e} ({:#x}) -> f16 (seed {s})", v.to_bits());
            assert_eq!(b[i], wb.to_bits(), "f32 {v:e} ({:#x}) -> bf16 (seed {s})", v.to_bits());
        }
    }
    // every f16 / bf16 bit pattern -> f32, exactly
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let mut fh = vec![0f32; bits.len()];
    let mut fb = vec![0f32; bits.len()];
    let p = tf_test_params {
        in0: addr(&bits),
        out0: addr_mut(&mut fh),
        out1: addr_mut(&mut fb),
        n: bits.len() as i64,
        mode: 1,
        ..params()
    };
    run("tf_test_convert", &cfg(4, 256, LaneOrder::Forward), &p).unwrap();
    for &u in &bits {
        let (wh, wb) = (half::f16::from_bits(u).to_f32(), half::bf16::from_bits(u).to_f32());
        let i = u as usize;
        assert!(fh[i].to_bits() == wh.to_bits() || (fh[i].is_nan() && wh.is_nan()), "f16 {u:#x} -> f32");
        assert!(fb[i].to_bits() == wb.to_bits() || (fb[i].is_nan() && wb.is_nan()), "bf16 {u:#x} -> f32");
    }
    // f64 -> f16 / bf16 (one rounding from f64) against a search over all values.
    let mut d: Vec<f64> =
        vec![65519.999999, 65520.0, 1.0 + 1.0 / 2048.0 + 1e-12, 1.0 + 1.0 / 2048.0, 2.9802322387695312e-8];
    d.extend((0..20_000).map(|_| {
        let e = rng.random_range(-30..20);
        rng.random_range(-1.0f64..1.0) * 2f64.powi(e)
    }));
    d.extend((0..2_000).map(|_| {
        // exactly between two f16 values plus or minus a tiny bit
        let h = half::f16::from_bits(rng.random_range(0..0x7bff));
        let mid = (h.to_f64() + half::f16::from_bits(h.to_bits() + 1).to_f64()) / 2.0;
        mid + [-1e-12, 0.0, 1e-12][rng.random_range(0..3)] * mid
    }));
    let mut h = vec![0u16; d.len()];
    let mut b = vec![0u16; d.len()];
    let p = tf_test_params {
        in0: addr(&d),
        out0: addr_mut(&mut h),
        out1: addr_mut(&mut b),
        n: d.len() as i64,
        mode: 2,
        ..params()
    };
    run("tf_test_convert", &cfg(4, 256, LaneOrder::Forward), &p).unwrap();
    let f16v = |u: u16| half::f16::from_bits(u).to_f64();
    let bf16v = |u: u16| half::bf16::from_bits(u).to_f64();
    for (i, &v) in d.iter().enumerate() {
        assert_eq!(h[i], rne_reference(v, f16v, 0x7bff, 10), "f64 {v:e} -> f16 (seed {s})");
        assert_eq!(b[i], rne_reference(v, bf16v, 0x7f7f, 7), "f64 {v:e} -> bf16 (seed {s})");
    }
}

// ------------------------------------------------------------------ errors

fn error_of(mode: i32, block: u32, order: LaneOrder) -> String {
    error_of_arg(mode, 0, block, order)
}

fn error_of_arg(mode: i32, arg: i32, block: u32, order: LaneOrder) -> String {
    let src = [7u8; 64];
    let mut out = vec![0f32; 1024];
    let mut sink = vec![0u8; 64];
    let p =
        tf_test_params { in0: addr(&src), out0: addr_mut(&mut out), out1: addr_mut(&mut sink), mode, arg, ..params() };
    let mut c = cfg(6, block, order);
    c.os_threads = 2;
    c.dynamic_smem_bytes = 256;
    match run("tf_test_errors", &c, &p) {
        Ok(()) => String::new(),
        Err(e) => {
            assert_eq!(e.code, 2, "a kernel failure is code 2: {e}");
            e.message
        }
    }
}

#[test]
fn kernel_errors_are_reported_not_hung() {
    let cases: [(i32, u32, &[&str]); 15] = [
        (1, 64, &["divergent barrier", "__syncthreads"]),
        (2, 64, &["exited", "__syncthreads"]),
        (3, 64, &["disagree on the mask", "__shfl_sync"]),
        (4, 64, &["not in the mask", "lane"]),
        (5, 64, &["disagree on the operation"]),
        (6, 64, &["deadlock", "__shfl_sync", "__syncthreads"]),
        (7, 64, &["exited", "__shfl_sync"]),
        (8, 64, &["ldmatrix.x4", "lane 3", "not 16-byte aligned"]),
        (9, 64, &["ldmatrix.x4", "outside the block's shared memory"]),
        (10, 64, &["cp.async", "outside the block's shared memory"]),
        (11, 64, &["cp.async", "not 8-byte aligned"]),
        (12, 64, &["__trap()", "thread (7,0,0)"]),
        (13, 48, &["mma.sync", "do not exist"]),
        (14, 64, &["width 3"]),
        (15, 64, &["exited", "__syncthreads"]),
    ];
    for order in ORDERS {
        assert_eq!(error_of(0, 64, order), "", "mode 0 runs cleanly ({order:?})");
        for (mode, block, words) in cases {
            let msg = error_of(mode, block, order);
            assert!(!msg.is_empty(), "error mode {mode} must fail ({order:?})");
            for w in words.iter().chain(&["tf_test_errors", "emu_misc.cu:"]) {
                assert!(msg.contains(w), "error mode {mode} ({order:?}): {w:?} missing from: {msg}");
            }
        }
        // the emulator is usable after a failed launch
        assert_eq!(error_of(0, 64, order), "", "a clean launch after failures ({order:?})");
    }
}

#[test]
fn memory_faults_in_kernels_are_reported() {
    let msg = error_of_arg(16, 255, 64, LaneOrder::Forward);
    assert_eq!(msg, "", "the last byte of dynamic shared memory is fine");
    let msg = error_of_arg(16, 256 + 40, 64, LaneOrder::Forward);
    assert!(
        msg.contains("past the end of the block's dynamic shared memory") && msg.contains("thread (9,0,0)"),
        "{msg}"
    );
    let msg = error_of(17, 64, LaneOrder::Forward);
    assert!(msg.contains("stack overflow") && msg.contains("thread (3,0,0)"), "{msg}");
    let msg = error_of(18, 64, LaneOrder::Reverse);
    assert!(msg.contains("invalid memory access") && msg.contains("thread (40,0,0)"), "{msg}");
    assert_eq!(error_of(0, 64, LaneOrder::Shuffled), "", "a clean launch after faults");
}

#[test]
fn static_shared_memory_over_48k_fails() {
    let mut out = vec![0u8; 64];
    let p = tf_test_params { out0: addr_mut(&mut out), ..params() };
    let e = run("tf_test_big_static", &cfg(2, 64, LaneOrder::Forward), &p).unwrap_err();
    assert!(e.message.contains("static __shared__") && e.message.contains("48 KiB"), "{e}");
    assert!(e.message.contains("emu_misc.cu:"), "names the declaration: {e}");
}

#[test]
fn launch_errors_a_gpu_would_give() {
    let p = params();
    let bad = |kernel: &str, c: LaunchConfig, words: &[&str]| {
        let e = run(kernel, &c, &p).unwrap_err();
        assert_eq!(e.code, 1, "{e}");
        for w in words {
            assert!(e.message.contains(w), "{w:?} missing from: {e}");
        }
    };
    let k = "tf_test_errors";
    bad(k, LaunchConfig::new([1, 1, 1], [1025, 1, 1]), &["too many threads", "1025"]);
    bad(k, LaunchConfig::new([1, 1, 1], [32, 32, 2]), &["too many threads", "2048"]);
    bad(k, LaunchConfig::new([1, 1, 1], [1, 1, 65]), &["exceeds"]);
    bad(k, LaunchConfig::new([0, 1, 1], [32, 1, 1]), &["grid", "zero"]);
    bad(k, LaunchConfig::new([1, 1, 1], [32, 0, 1]), &["block", "zero"]);
    bad(k, LaunchConfig::new([1, 70000, 1], [32, 1, 1]), &["grid", "exceeds"]);
    let big = LaunchConfig { dynamic_smem_bytes: 227 * 1024 + 1, ..LaunchConfig::new([1, 1, 1], [32, 1, 1]) };
    bad(k, big, &["too much dynamic shared memory", "232449"]);
    bad("no_such_kernel", LaunchConfig::default(), &["unknown kernel", "no_such_kernel", "tf_test_errors"]);
    // a params struct of the wrong size
    let e = unsafe { launch(k, &LaunchConfig::default(), &0u32) }.unwrap_err();
    assert!(e.message.contains("params of 4 bytes") && e.message.contains("tf_test_params"), "{e}");
    // a null kernel name (only reachable through the raw arguments)
    let args = tf_emu_launch_args {
        kernel: std::ptr::null(),
        grid: [1, 1, 1],
        block: [1, 1, 1],
        params: (&p as *const tf_test_params).cast(),
        params_bytes: std::mem::size_of::<tf_test_params>(),
        ..Default::default()
    };
    // SAFETY: null name (the case under test), params point at a live struct.
    let e = unsafe { launch_raw(&args) }.unwrap_err();
    assert!(e.message.contains("null kernel name"), "{e}");
    // an out-of-range warp order (only reachable through the raw arguments)
    let name = c"tf_test_errors";
    let args = tf_emu_launch_args {
        kernel: name.as_ptr(),
        grid: [1, 1, 1],
        block: [32, 1, 1],
        params: (&p as *const tf_test_params).cast(),
        params_bytes: std::mem::size_of::<tf_test_params>(),
        warp_order: 5,
        ..Default::default()
    };
    // SAFETY: refused before running; the name and params are live.
    let e = unsafe { launch_raw(&args) }.unwrap_err();
    assert!(e.code == 1 && e.message.contains("unknown warp order 5"), "{e}");
    // a NUL inside the name never reaches the emulator
    let e = run("tf_test\0errors", &LaunchConfig::default(), &p).unwrap_err();
    assert_eq!(e.code, -1);
    // static + dynamic shared memory share the 227 KiB: the kernel's 1 KiB static
    // tile fits beside 226 KiB of dynamic memory, not beside 227 KiB
    let mut out = vec![0f32; 64];
    let p0 = tf_test_params { out0: addr_mut(&mut out), ..params() };
    let smem = |bytes: u32| LaunchConfig { dynamic_smem_bytes: bytes, ..LaunchConfig::new([1, 1, 1], [64, 1, 1]) };
    run(k, &smem(226 * 1024), &p0).unwrap();
    let e = run(k, &smem(227 * 1024), &p0).unwrap_err();
    assert!(e.message.contains("static (1024) + dynamic (232448)") && e.message.contains("emu_misc.cu:"), "{e}");
}

#[test]
fn registry_lists_every_kernel() {
    let names = kernel_names();
    for k in [
        "tf_test_mma_f16",
        "tf_test_mma_bf16",
        "tf_test_ldmatrix",
        "tf_test_ldsm_mma",
        "tf_test_collectives",
        "tf_test_block_reduce",
        "tf_test_warp_race",
        "tf_test_indices",
        "tf_test_smem_poison",
        "tf_test_cp_async",
        "tf_test_convert",
        "tf_test_errors",
        "tf_test_big_static",
        "tf_test_bench",
        "tf_test_tile_overwrite_race",
        "grow_rows",
    ] {
        assert!(names.iter().any(|n| n == k), "{k} missing from {names:?}");
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "kernel names are unique");
}

// ------------------------------------------------------------------ speed

/// Times of the emulator's primitives (printed; run with `-- --ignored --nocapture`).
#[test]
#[ignore = "timing report, not a check"]
fn emulator_speed() {
    let time_w = |mode: i32, n: i64, threads: u32, warps: WarpOrder| -> f64 {
        let mut out = vec![0f32; threads as usize];
        let p = tf_test_params { out0: addr_mut(&mut out), n, mode, ..params() };
        let mut c = cfg(1, threads, LaneOrder::Forward);
        c.os_threads = 1;
        c.warp_order = warps;
        run("tf_test_bench", &c, &p).unwrap(); // warm (stacks mapped)
        (0..7)
            .map(|_| {
                let t0 = Instant::now();
                run("tf_test_bench", &c, &p).unwrap();
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min) // the least disturbed of 7 runs
    };
    let time = |mode: i32, n: i64, threads: u32| time_w(mode, n, threads, WarpOrder::RoundRobin);
    let base = time(0, 0, 128);
    // two threads yielding (__nanosleep) in turn: one fiber-to-fiber switch per yield
    let sw = time(4, 100_000, 2) - time(4, 0, 2);
    println!("fiber switches (yield ping-pong): {:.1} M/s ({:.1} ns each)", 2e5 / sw / 1e6, sw / 2e5 * 1e9);
    let sync = time(0, 10_000, 128) - base;
    // each __syncwarp: every lane parks (one switch out) and is resumed (one switch in)
    println!(
        "__syncwarp, 128 threads: {:.2} us per warp ({:.1} ns per lane: rendezvous + 1 switch)",
        sync / 40_000.0 * 1e6,
        sync / (128.0 * 10_000.0) * 1e9
    );
    let bar = time(1, 1000, 128) - base;
    println!("128-thread block, 1,000 __syncthreads: {:.2} ms ({:.2} us per barrier)", bar * 1e3, bar * 1e3);
    let mma = time(2, 1000, 128) - base;
    println!(
        "128-thread block (4 warps), 1,000 mma.sync per warp: {:.2} ms ({:.2} us per warp-mma)",
        mma * 1e3,
        mma * 1e6 / 4000.0
    );
    let shfl = time(3, 1000, 128) - base;
    println!("128-thread block, 1,000 __shfl_xor_sync: {:.2} ms", shfl * 1e3);
    for warps in [WarpOrder::Ahead, WarpOrder::Mixed] {
        let base_w = time_w(0, 0, 128, warps);
        let bar_w = time_w(1, 1000, 128, warps) - base_w;
        let mma_w = time_w(2, 1000, 128, warps) - base_w;
        println!(
            "warp order {warps:?}: 1,000 __syncthreads {:.2} ms, 4,000 warp-mmas {:.2} ms ({:.2} us each)",
            bar_w * 1e3,
            mma_w * 1e3,
            mma_w * 1e6 / 4000.0
        );
    }
    println!("empty 128-thread launch: {:.1} us", base * 1e6);
}
