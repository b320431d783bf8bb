//! The captured decode step (`Tokenformer::capture_decode`, `DecodeGraph`)
//! against the uncaptured one (`forward_cached_into` with one token), on the
//! emulator (and CUDA when present).
//!
//! A replay runs the launches with the params they were captured with; the
//! token id, its position and the key count come from the cache's step buffer.
//! The captured attention chooses split-KV once, for the cache's capacity, so
//! where the uncaptured step (which chooses for the current length) picks the
//! same number of splits the logits must be the same bits, and elsewhere equal
//! within the storage type's rounding (relative Frobenius error 1e-2 for bf16,
//! 2e-3 for f16: the split combine rounds differently and the difference goes
//! through every later layer). f32 never splits: always the same bits.

mod common;

use common::{backends, seed, tiny, tiny64};
use rand::{Rng, SeedableRng};
use tf_host::ops::attention::{num_splits_heuristic, tiles_for};
use tf_host::{bf16, f16, DType, Device, EmuOptions, Tokenformer, TokenformerConfig};

/// `Device::allocations` counts every emulator allocation in the process, and
/// [`compare`] checks that the graph's steps allocate nothing: a test allocating
/// beside it would fail it. The tests of this file run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn f32s<T: DType>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

fn rel(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (f64::from(g) - f64::from(w)).powi(2);
        den += f64::from(w).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The number of splits attention chooses for one query row against `t_k` keys.
fn splits<T: DType>(dev: &Device, cfg: &TokenformerConfig, t_k: usize) -> usize {
    if T::NAME == "f32" {
        return 1;
    }
    let hd = [64, 80, 96, 128].into_iter().find(|&k| k >= cfg.d / cfg.heads).unwrap();
    let (_, bn, _) = tiles_for::<T>(hd, 1).unwrap();
    let max = tf_kernels::sys::TF_ATTN_MAX_SPLITS as usize;
    num_splits_heuristic(cfg.heads, dev.sm_count() as usize, t_k.div_ceil(bn), max)
}

/// Runs `prompt` and then `steps` tokens one at a time, uncaptured on one cache
/// and through a decode graph on another; compares every step's logits. Returns
/// (steps compared bitwise, steps compared within `tol`).
fn compare<T: DType>(
    dev: &Device,
    cfg: &TokenformerConfig,
    prompt: usize,
    steps: usize,
    max_len: usize,
    tol: f64,
    s: u64,
) -> (usize, usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    let m = Tokenformer::<T>::new(dev, cfg, s).unwrap();
    let tokens: Vec<u32> = (0..prompt + steps).map(|_| rng.random_range(0..cfg.vocab as u32)).collect();
    let v = cfg.vocab;
    let what = format!("{} {} prompt {prompt} max_len {max_len}", cfg.name, T::NAME);

    let mut plain_cache = m.new_cache(max_len).unwrap();
    let mut logits = dev.zeros::<T>(&[1, v]).unwrap();
    m.forward_cached_into(&tokens[..prompt], &mut plain_cache, &mut logits.view_mut()).unwrap();
    let mut plain = Vec::new();
    for &tok in &tokens[prompt..] {
        m.forward_cached_into(&[tok], &mut plain_cache, &mut logits.view_mut()).unwrap();
        plain.push(f32s(&logits.to_vec().unwrap()));
    }

    let mut cache = m.new_cache(max_len).unwrap();
    m.forward_cached_into(&tokens[..prompt], &mut cache, &mut logits.view_mut()).unwrap();
    let mut graph = m.capture_decode(&mut cache).unwrap();
    assert!(graph.launches() > 10, "{what}: {graph:?}");
    let before = dev.allocations();
    let (mut same, mut close, mut worst) = (0, 0, 0f64);
    for (i, &tok) in tokens[prompt..].iter().enumerate() {
        let got = f32s(&graph.step(tok).unwrap().to_vec().unwrap());
        let pos = prompt + i;
        assert_eq!(graph.cache_len(), pos + 1);
        if splits::<T>(dev, cfg, pos + 1) == splits::<T>(dev, cfg, max_len) {
            let diff = got.iter().zip(&plain[i]).position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(diff.is_none(), "{what}: step at position {pos} differs at logit {diff:?} (same splits)");
            same += 1;
        } else {
            let r = rel(&got, &plain[i]);
            assert!(r <= tol, "{what}: step at position {pos}: relative error {r:.2e} > {tol:.0e}");
            worst = worst.max(r);
            close += 1;
        }
    }
    assert_eq!(dev.allocations(), before, "{what}: the steps allocated");
    eprintln!("{what}: {same} steps bitwise, {close} within {tol:.0e} (worst {worst:.2e})");
    drop(graph);
    // The appended keys and values are the uncaptured ones: one more
    // uncaptured token on each cache gives the same logits.
    if cache.len() < max_len {
        let tok = tokens[0];
        let mut a = dev.zeros::<T>(&[1, v]).unwrap();
        m.forward_cached_into(&[tok], &mut cache, &mut a.view_mut()).unwrap();
        m.forward_cached_into(&[tok], &mut plain_cache, &mut logits.view_mut()).unwrap();
        assert_eq!(a.to_vec().unwrap(), logits.to_vec().unwrap(), "{what}: the caches differ");
    }
    (same, close)
}

#[test]
fn graph_steps_equal_uncaptured_steps() {
    let _one = one_at_a_time();
    let s = seed();
    for (dev, name) in backends() {
        eprintln!("backend {name}");
        // f32 (no split-KV): the same bits at every step, padded and direct head dims.
        assert_eq!(compare::<f32>(&dev, &tiny(), 3, 70, 80, 0.0, s), (70, 0));
        assert_eq!(compare::<f32>(&dev, &tiny64(), 1, 9, 12, 0.0, s ^ 1), (9, 0));
        // 16-bit: the decode kernel, split-KV for a 130-position capacity (3 key
        // blocks) while the uncaptured step splits less below 129 keys; steps
        // across the 64-key blocks.
        let (same, close) = compare::<bf16>(&dev, &tiny(), 50, 80, 130, 1e-2, s ^ 2);
        eprintln!("bf16 tiny: {same} steps bitwise, {close} within 1e-2");
        assert!(same > 0 && close > 0, "both cases run: {same} bitwise, {close} close");
        let (same, close) = compare::<f16>(&dev, &tiny64(), 50, 10, 64, 2e-3, s ^ 3);
        assert_eq!((same, close), (10, 0), "one key block: no split either way");
    }
}

#[test]
fn graph_steps_run_under_the_emulators_checks() {
    let _one = one_at_a_time();
    // The checked pass (xtask) runs this with racecheck, memcheck and initcheck.
    let s = seed();
    let dev = Device::emulator_with(EmuOptions { seed: s, ..Default::default() });
    compare::<bf16>(&dev, &tiny(), 2, 3, 70, 1e-2, s);
    compare::<f32>(&dev, &tiny64(), 1, 2, 4, 0.0, s);
}

#[test]
fn bad_steps_are_errors_and_change_nothing() {
    let _one = one_at_a_time();
    let s = seed();
    let dev = Device::emulator();
    let cfg = tiny();
    let m = Tokenformer::<f32>::new(&dev, &cfg, s).unwrap();
    let mut cache = m.new_cache(3).unwrap();
    let mut graph = m.capture_decode(&mut cache).unwrap();
    // An id past the vocabulary: refused, nothing runs.
    let e = graph.step(cfg.vocab as u32).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    assert_eq!(graph.cache_len(), 0);
    let first = graph.step(7).unwrap().to_vec().unwrap();
    graph.step(8).unwrap();
    graph.step(9).unwrap();
    // Full: refused, the cache keeps its 3 positions and the logits stay.
    let last = graph.logits().to_vec().unwrap();
    let e = graph.step(1).unwrap_err().to_string();
    assert!(e.contains("full"), "{e}");
    assert_eq!(graph.cache_len(), 3);
    assert_eq!(graph.logits().to_vec().unwrap(), last);
    drop(graph);
    // The first step was position 0: the same bits as a one-token forward.
    assert_eq!(first, m.forward(&[7]).unwrap().to_vec().unwrap());

    // A cache of another model's shape is refused at capture.
    let other = Tokenformer::<f32>::new(&dev, &tiny64(), s).unwrap();
    let mut wrong = other.new_cache(4).unwrap();
    let e = m.capture_decode(&mut wrong).unwrap_err().to_string();
    assert!(e.contains("KV cache"), "{e}");
    // A cache of another device too.
    let mut elsewhere = Tokenformer::<f32>::new(&Device::emulator(), &cfg, s).unwrap().new_cache(4).unwrap();
    assert!(m.capture_decode(&mut elsewhere).is_err());
    // The device still works after the refused captures.
    let mut ok = m.new_cache(2).unwrap();
    let mut g = m.capture_decode(&mut ok).unwrap();
    assert_eq!(g.step(7).unwrap().to_vec().unwrap(), first);
}

#[test]
fn generate_replays_the_captured_step() {
    let _one = one_at_a_time();
    // generate's steps are a decode graph's: the same ids as a loop of
    // DecodeGraph::step with the argmax taken here (bf16: split-KV for the
    // capacity, which the uncaptured steps would not choose at every length).
    let s = seed();
    let dev = Device::emulator();
    let cfg = tiny();
    let m = Tokenformer::<bf16>::new(&dev, &cfg, s).unwrap();
    let prompt = [3u32, 1, 4, 1, 5];
    let n = 12;
    let ids = m.generate(&prompt, n, tf_host::Sampling::Greedy).unwrap();
    let mut cache = m.new_cache(prompt.len() + n).unwrap();
    let mut logits = dev.zeros::<bf16>(&[1, cfg.vocab]).unwrap();
    m.forward_cached_into(&prompt, &mut cache, &mut logits.view_mut()).unwrap();
    let argmax = |v: Vec<bf16>| {
        let f = f32s(&v);
        f.iter().enumerate().fold(0, |b, (i, &x)| if x > f[b] { i } else { b }) as u32
    };
    let mut want = vec![argmax(logits.to_vec().unwrap())];
    let mut graph = m.capture_decode(&mut cache).unwrap();
    while want.len() < n {
        let next = argmax(graph.step(*want.last().unwrap()).unwrap().to_vec().unwrap());
        want.push(next);
    }
    assert_eq!(ids, want);
}
