//! Allocation-free steady state on the emulator: with caller outputs and
//! workspaces (and the KV cache's scratch for the model), a loop of calls
//! allocates no device memory after its first iteration, and computes what the
//! allocating forms compute, bit for bit. Counted with `Device::allocations`,
//! which on the emulator counts every allocation in the process: the tests of
//! this file hold one lock so that none allocates while another counts.

use std::sync::Mutex;

use tf_host::ops::attention::{attention_workspace_bytes, AttnShape};
use tf_host::ops::block::embedding_into;
use tf_host::{
    attention, attention_into, bf16, grow_batch, pattention, pattention_into, pattention_workspace_bytes, AttnArgs,
    AttnOptions, DType, Device, Error, GrowInit, GrowItem, Pattention, PattentionArgs, PattentionOptions,
    PattentionShape, RandomInit, Sampling, Tensor, Tokenformer, TokenformerConfig, Workspace,
};

static COUNTING: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    COUNTING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Device allocations made by `f`.
fn allocations_of(dev: &Device, f: impl FnOnce()) -> u64 {
    let before = dev.allocations();
    f();
    dev.allocations() - before
}

fn tiny() -> TokenformerConfig {
    TokenformerConfig::by_name("tiny").unwrap()
}

/// A config whose head dim (64) the attention kernels run directly.
fn tiny64() -> TokenformerConfig {
    TokenformerConfig {
        name: "tiny64".into(),
        layers: 1,
        d: 128,
        heads: 2,
        qkv_slots: 72,
        proj_slots: 64,
        ffn_slots: 136,
        vocab: 320,
        ..tiny()
    }
}

fn host<T: DType>(n: usize, seed: usize) -> Vec<T> {
    (0..n).map(|i| T::from_f32(((i * 37 + seed * 11) % 101) as f32 / 50.0 - 1.0)).collect()
}

fn bits<T: DType>(t: &Tensor<T>) -> Vec<u32> {
    t.to_f32_vec().unwrap().iter().map(|x| x.to_bits()).collect()
}

/// After a prompt of `prompt` tokens, decode steps through `forward_cached_into`
/// allocate nothing and give the logits `forward_cached` gives (which allocates
/// only its returned tensor).
fn decode_steps<T: DType>(cfg: &TokenformerConfig, prompt: usize, steps: usize) {
    let dev = Device::emulator();
    let model = Tokenformer::<T>::new(&dev, cfg, 3).unwrap();
    let ids: Vec<u32> = (0..prompt as u32).map(|i| (i * 7 + 1) % cfg.vocab as u32).collect();
    let (mut reused, mut fresh) = (model.new_cache(prompt + steps).unwrap(), model.new_cache(prompt + steps).unwrap());
    let mut logits = dev.zeros::<T>(&[1, cfg.vocab]).unwrap();
    model.forward_cached_into(&ids, &mut reused, &mut logits.view_mut()).unwrap();
    let want = model.forward_cached(&ids, &mut fresh).unwrap();
    assert_eq!(bits(&logits), bits(&want)[(prompt - 1) * cfg.vocab..], "prompt logits of the last position");
    for s in 0..steps {
        let tok = (s as u32 * 5 + 2) % cfg.vocab as u32;
        let n =
            allocations_of(&dev, || model.forward_cached_into(&[tok], &mut reused, &mut logits.view_mut()).unwrap());
        assert_eq!(n, 0, "{} {} prompt {prompt}: step {s} allocated {n} times", cfg.name, T::NAME);
        let mut want = None;
        let n = allocations_of(&dev, || want = Some(model.forward_cached(&[tok], &mut fresh).unwrap()));
        assert_eq!(n, 1, "forward_cached allocates its logits only");
        assert_eq!(bits(&logits), bits(&want.unwrap()), "{} {} step {s}", cfg.name, T::NAME);
    }
    assert_eq!(reused.len(), prompt + steps);
}

#[test]
fn decode_steps_allocate_nothing_after_the_prompt() {
    let _g = lock();
    // tiny: padded head dims (copies through the growth kernel); tiny64: direct.
    // 70 cached positions make the bf16 attention split its K range.
    for cfg in [tiny(), tiny64()] {
        for prompt in [3, 70] {
            decode_steps::<f32>(&cfg, prompt, 3);
            decode_steps::<bf16>(&cfg, prompt, 3);
        }
    }
}

#[test]
fn a_decode_loop_from_an_empty_cache_allocates_on_its_first_step_only() {
    let _g = lock();
    let dev = Device::emulator();
    let cfg = tiny();
    let model = Tokenformer::<bf16>::new(&dev, &cfg, 5).unwrap();
    let mut cache = model.new_cache(8).unwrap();
    let mut logits = dev.zeros::<bf16>(&[1, cfg.vocab]).unwrap();
    let counts: Vec<u64> = (0..6)
        .map(|i| {
            allocations_of(&dev, || model.forward_cached_into(&[i + 1], &mut cache, &mut logits.view_mut()).unwrap())
        })
        .collect();
    assert!(counts[0] > 0 && counts[1..].iter().all(|&n| n == 0), "{counts:?}");
    // A cleared cache keeps its scratch.
    cache.clear();
    let n = allocations_of(&dev, || model.forward_cached_into(&[1], &mut cache, &mut logits.view_mut()).unwrap());
    assert_eq!(n, 0);
    // Growing the model needs a larger workspace: one pass allocates it, then none.
    let mut model = model;
    let s = model.slot_counts();
    model.grow_preserving(tf_host::SlotCounts { qkv: 4 * s.qkv, proj: 4 * s.proj, ffn: 4 * s.ffn }, 1).unwrap();
    cache.clear();
    let first = allocations_of(&dev, || model.forward_cached_into(&[1], &mut cache, &mut logits.view_mut()).unwrap());
    let next = allocations_of(&dev, || model.forward_cached_into(&[2], &mut cache, &mut logits.view_mut()).unwrap());
    assert!(first > 0 && next == 0, "after growth: {first} then {next}");
    // Logits of the wrong shape are refused.
    let mut bad = dev.zeros::<bf16>(&[2, cfg.vocab]).unwrap();
    let e = model.forward_cached_into(&[3], &mut cache, &mut bad.view_mut()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("[1, 512]"), "{e}");
}

#[test]
fn generate_steps_allocate_nothing() {
    let _g = lock();
    let dev = Device::emulator();
    let cfg = tiny64();
    let model = Tokenformer::<f32>::new(&dev, &cfg, 9).unwrap();
    let mut marks = Vec::new();
    let ids = model.generate_with(&[1, 2, 3], 5, Sampling::Greedy, |_| marks.push(dev.allocations())).unwrap();
    assert_eq!(ids.len(), 5);
    assert!(marks.windows(2).all(|w| w[0] == w[1]), "allocations after each token: {marks:?}");
}

fn pattention_loop<T: DType>(t: usize) {
    let dev = Device::emulator();
    let shape = PattentionShape { n: 96, d_in: 64, d_out: 80 };
    let init = RandomInit { key_std: 0.5, value_std: 0.5, key_seed: 1, value_seed: 2 };
    let layer = Pattention::<T>::random(&dev, shape, init, PattentionOptions::default()).unwrap();
    let x = dev.upload(&host::<T>(t * 64, 1), &[t, 64]).unwrap();
    let want = bits(&layer.forward(&x).unwrap());
    let mut y = dev.zeros::<T>(&[t, 80]).unwrap();
    let mut ws = Workspace::new(&dev, pattention_workspace_bytes::<T>(t, 96, 80).unwrap()).unwrap();
    let n = allocations_of(&dev, || {
        for _ in 0..3 {
            layer.forward_into(&x.view(), &mut y.view_mut(), Some(&mut ws)).unwrap();
        }
    });
    assert_eq!(n, 0, "Pattention::forward_into, {} t = {t}", T::NAME);
    assert_eq!(bits(&y), want);

    let args =
        PattentionArgs { x: x.view(), k_p: layer.keys(), v_p: layer.values(), opts: PattentionOptions::default() };
    let want = bits(&pattention(&dev, &args).unwrap());
    let mut y = dev.zeros::<T>(&[t, 80]).unwrap();
    let n = allocations_of(&dev, || {
        for _ in 0..3 {
            pattention_into(&dev, &args, &mut y.view_mut(), Some(&mut ws)).unwrap();
        }
    });
    assert_eq!(n, 0, "pattention_into, {} t = {t}", T::NAME);
    assert_eq!(bits(&y), want);

    let mut small = Workspace::new(&dev, ws.bytes() - 1).unwrap();
    let e = pattention_into(&dev, &args, &mut y.view_mut(), Some(&mut small)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains(&ws.bytes().to_string()), "{e}");
}

#[test]
fn pattention_with_a_caller_workspace_allocates_nothing() {
    let _g = lock();
    pattention_loop::<f32>(5);
    pattention_loop::<bf16>(5); // decode path
    pattention_loop::<bf16>(70); // tiled path
}

fn attention_loop<T: DType>(shape: AttnShape, split: bool) {
    let dev = Device::emulator();
    let AttnShape { batch: b, t_q, t_k, heads: h, head_dim: d } = shape;
    let q = dev.upload(&host::<T>(b * t_q * h * d, 1), &[b, t_q, h, d]).unwrap();
    let k = dev.upload(&host::<T>(b * t_k * h * d, 2), &[b, t_k, h, d]).unwrap();
    let v = dev.upload(&host::<T>(b * t_k * h * d, 3), &[b, t_k, h, d]).unwrap();
    let opts = AttnOptions { causal: true, ..Default::default() };
    let args = AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts };
    let bytes = attention_workspace_bytes::<T>(&dev, &shape, &opts).unwrap();
    assert_eq!(bytes > 0, split, "{} {shape:?}: {bytes} workspace bytes", T::NAME);
    let (want_o, want_lse) = attention(&dev, &args).unwrap();
    let mut o = dev.zeros::<T>(&[b, t_q, h, d]).unwrap();
    let mut lse = dev.zeros::<f32>(&[b, h, t_q]).unwrap();
    let mut ws = Workspace::new(&dev, bytes).unwrap();
    let n = allocations_of(&dev, || {
        for _ in 0..3 {
            attention_into(&dev, &args, &mut o.view_mut(), &mut lse.view_mut(), Some(&mut ws)).unwrap();
        }
    });
    assert_eq!(n, 0, "attention_into, {} {shape:?}", T::NAME);
    assert_eq!((bits(&o), bits(&lse)), (bits(&want_o), bits(&want_lse)));
    if split {
        let mut small = Workspace::new(&dev, bytes - 1).unwrap();
        let e = attention_into(&dev, &args, &mut o.view_mut(), &mut lse.view_mut(), Some(&mut small)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        assert!(msg.contains(&format!("{} bytes", bytes - 1)) && msg.contains(&bytes.to_string()), "{msg}");
    }
}

#[test]
fn attention_with_a_caller_workspace_allocates_nothing() {
    let _g = lock();
    let decode = AttnShape { batch: 1, t_q: 1, t_k: 300, heads: 2, head_dim: 64 };
    attention_loop::<bf16>(decode, true);
    attention_loop::<f32>(decode, false); // no split-KV in f32: no workspace needed
    attention_loop::<bf16>(AttnShape { batch: 1, t_q: 3, t_k: 40, heads: 2, head_dim: 64 }, false);
}

#[test]
fn growth_and_embedding_reuse_the_device_table_buffer() {
    let _g = lock();
    let dev = Device::emulator();
    let src = dev.upload(&host::<f32>(6 * 16, 1), &[6, 16]).unwrap();
    let mut dst = dev.zeros::<f32>(&[9, 16]).unwrap();
    let table = dev.upload(&host::<f32>(10 * 16, 2), &[10, 16]).unwrap();
    let mut y = dev.zeros::<f32>(&[4, 16]).unwrap();
    let mut run = || {
        let item = GrowItem {
            src: Some(src.view()),
            dst: dst.view_mut(),
            rows_old: 6,
            init: GrowInit::Normal { std: 1.0, seed: 4 },
        };
        grow_batch(&dev, vec![item]).unwrap();
        embedding_into(&dev, &table.view(), &[3, 1, 4, 1], &mut y.view_mut()).unwrap();
    };
    run();
    let n = allocations_of(&dev, || {
        for _ in 0..3 {
            run();
        }
    });
    assert_eq!(n, 0);
    let (got, want) = (y.to_vec().unwrap(), table.to_vec().unwrap());
    assert_eq!(got[16..32], want[16..32], "row 1 of y is row 1 of the table");
    assert_eq!(dst.to_vec().unwrap()[..96], src.to_vec().unwrap()[..], "kept rows");
}
