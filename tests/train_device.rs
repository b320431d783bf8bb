//! The whole model's loss and gradients on the device
//! (`Tokenformer::<f32>::loss_and_grads`, crates/tf-host/src/train.rs) against
//! tf-ref's f64 `loss_and_grads` on the same parameters: the tiny config, a
//! random model, random tokens and targets, every parameter tensor; then a
//! preserving growth, after which the loss is unchanged and the gradients still
//! agree; and bad input. On every backend (the emulator; CUDA where it works).

mod common;

use common::{assert_close, on_backends, seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tf_host::{Checks, Device, EmuOptions, Error, SlotCounts, Tokenformer, TokenformerConfig};
use tf_ref::{ModelParams, Slot};

/// Relative Frobenius error allowed per parameter tensor: f32 through two blocks
/// of Pattention, attention and layer norms (measured: at most 2.1e-6).
const RTOL: f64 = 2e-5;

fn tokens(r: &mut StdRng, t: usize, vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let all: Vec<u32> = (0..=t).map(|_| r.random_range(0..vocab as u32)).collect();
    (all[..t].to_vec(), all[1..].to_vec())
}

/// Every parameter tensor of `got` against `want`, by name; the worst error.
fn compare(what: &str, got: &ModelParams, want: &ModelParams) -> f64 {
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let mut worst = 0f64;
    let mut one = |name: String, g: &[f64], w: &[f64]| {
        worst = worst.max(assert_close(&format!("{what} {name}"), &f32s(g), w, RTOL).0);
    };
    one("embedding".into(), &got.embedding, &want.embedding);
    one("final_norm_weight".into(), &got.final_norm_weight, &want.final_norm_weight);
    one("final_norm_bias".into(), &got.final_norm_bias, &want.final_norm_bias);
    for (l, (gb, wb)) in got.blocks.iter().zip(&want.blocks).enumerate() {
        for slot in Slot::ALL {
            let (gk, gv) = gb.tokens(slot);
            let (wk, wv) = wb.tokens(slot);
            one(format!("block {l} {slot:?} keys"), gk, wk);
            one(format!("block {l} {slot:?} values"), gv, wv);
        }
    }
    worst
}

#[test]
fn loss_and_gradients_match_tf_ref() {
    on_backends("loss_and_gradients_match_tf_ref", loss_and_gradients_match_tf_ref_on);
}

fn loss_and_gradients_match_tf_ref_on(dev: &Device) {
    let cfg = TokenformerConfig::by_name("tiny").unwrap();
    let mut r = StdRng::seed_from_u64(seed() ^ 0x7a_0001);
    let mut model = Tokenformer::<f32>::new(dev, &cfg, r.random()).unwrap();
    for t in [1, 13, 40] {
        let (x, y) = tokens(&mut r, t, cfg.vocab);
        let params = model.to_params().unwrap();
        let (loss, grads) = model.loss_and_grads(&x, &y).unwrap();
        let (want_loss, want) = tf_ref::loss_and_grads(&params, &cfg, &x, &y).unwrap();
        assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "t {t}: loss {loss}, tf-ref {want_loss}");
        let worst = compare(&format!("t {t}"), &grads.to_params(&params).unwrap(), &want);
        eprintln!("t {t}: loss {loss:.6} (tf-ref {want_loss:.6}), worst gradient error {worst:.2e}");
    }
    // after a preserving growth: the same loss, and gradients for the new rows too
    let (x, y) = tokens(&mut r, 20, cfg.vocab);
    let before = model.loss_and_grads(&x, &y).unwrap().0;
    let s = model.slot_counts();
    model.grow_preserving(SlotCounts { qkv: s.qkv + 16, proj: s.proj + 8, ffn: s.ffn + 32 }, 5).unwrap();
    let params = model.to_params().unwrap();
    let (after, grads) = model.loss_and_grads(&x, &y).unwrap();
    assert!((after - before).abs() <= 1e-6 * before.abs(), "growth changed the loss: {before} -> {after}");
    let grown_cfg = model.config().clone();
    let (want_loss, want) = tf_ref::loss_and_grads(&params, &grown_cfg, &x, &y).unwrap();
    assert!((after - want_loss).abs() <= 1e-5 * want_loss.abs());
    compare("grown", &grads.to_params(&params).unwrap(), &want);
}

/// The embedding's and every parameter token's gradient in `got`, divided by
/// `scale` (a power of two: exact), against `want` within `tol`; the worst error.
fn embedding_and_tokens_within(what: &str, got: &ModelParams, want: &ModelParams, tol: f64, scale: f32) -> f64 {
    let f32s = |v: &[f64]| v.iter().map(|&x| (x / f64::from(scale)) as f32).collect::<Vec<f32>>();
    let mut worst = assert_close(&format!("{what} embedding"), &f32s(&got.embedding), &want.embedding, tol).0;
    for (l, (gb, wb)) in got.blocks.iter().zip(&want.blocks).enumerate() {
        for slot in Slot::ALL {
            for (which, g, w) in
                [("keys", &gb.tokens(slot).0, &wb.tokens(slot).0), ("values", &gb.tokens(slot).1, &wb.tokens(slot).1)]
            {
                worst = worst.max(assert_close(&format!("{what} block {l} {slot:?} {which}"), &f32s(g), w, tol).0);
            }
        }
    }
    worst
}

/// A 16-bit model: the same chain with activations in the storage type (every
/// op's input rounded to it) and f32 gradients, against tf-ref in f64 on the same
/// (16-bit) parameters; f16 with the trainer's initial loss scale (2^16, exact to
/// divide out), as it trains. Bounds: the forward's tolerances of the storage
/// type (1e-2 bf16, 2e-3 f16) on the loss; per gradient tensor (relative
/// Frobenius error, so small tensors with cancelling terms err most), at about
/// twice the worst of 40 seeds:
/// - `heads` 4 (the tiny config: head dim 16, the SIMT attention): 8e-2 (bf16)
///   and 1e-2 (f16); measured bf16 1.5e-2 to 3.5e-2, f16 1.8e-3 to 4.6e-3.
/// - `heads` 1 (head dim 64, `t` tokens over two 64-row blocks: the attention
///   forward and backward on tensor cores, which round P and dS to the type as
///   FlashAttention-2 does): 1.5e-1 (bf16) and 2.5e-2 (f16); measured bf16
///   1.2e-2 to 7.3e-2, f16 1.4e-3 to 1.1e-2. Unscaled, f16's gradients of ~1e-5
///   fall among its subnormals (below 6.1e-5): 1.95e-2 at one seed where the
///   scaled run measures 6.9e-3.
fn sixteen_bit<T: tf_host::DType>(dev: &Device, heads: usize, t: usize, loss_tol: f64, grad_tol: f64, scale: f32) {
    let cfg = TokenformerConfig { heads, ..TokenformerConfig::by_name("tiny").unwrap() };
    let mut r = StdRng::seed_from_u64(seed() ^ 0x7a_0003);
    let model = Tokenformer::<T>::new(dev, &cfg, r.random()).unwrap();
    let (x, y) = tokens(&mut r, t, cfg.vocab);
    let params = model.to_params().unwrap();
    let opts = tf_host::GradOptions { loss_scale: scale, ..Default::default() };
    let (loss, grads) = model.loss_and_grads_with(&x, &y, &opts).unwrap();
    let (want_loss, want) = tf_ref::loss_and_grads(&params, &cfg, &x, &y).unwrap();
    assert!((loss - want_loss).abs() <= loss_tol * want_loss.abs(), "{}: loss {loss}, tf-ref {want_loss}", T::NAME);
    let got = grads.to_params(&params).unwrap();
    let worst = embedding_and_tokens_within(T::NAME, &got, &want, grad_tol, scale);
    eprintln!(
        "{} hd {}: loss {loss:.5} (tf-ref {want_loss:.5}), worst gradient error {worst:.2e}",
        T::NAME,
        cfg.d / heads
    );
}

#[test]
fn sixteen_bit_models() {
    on_backends("sixteen_bit_models", sixteen_bit_models_on);
}

fn sixteen_bit_models_on(dev: &Device) {
    for (heads, t, bf16_tol, f16_tol) in [(4, 24, 8e-2, 1e-2), (1, 70, 1.5e-1, 2.5e-2)] {
        sixteen_bit::<tf_host::bf16>(dev, heads, t, 1e-2, bf16_tol, 1.0);
        sixteen_bit::<tf_host::f16>(dev, heads, t, 2e-3, f16_tol, 65536.0);
    }
}

/// The chain takes the tensor-core attention, forward and backward, for a 16-bit
/// model at head dim 64 and the SIMT one at head dim 16 (the emulator's launch
/// profiles name the kernels).
#[test]
fn sixteen_bit_attention_takes_the_tensor_cores_at_head_dim_64() {
    let dev = Device::emulator_with(EmuOptions { checks: Checks::PROFILE, ..Default::default() });
    let mut r = StdRng::seed_from_u64(seed() ^ 0x7a_0006);
    for (heads, tc) in [(1, true), (4, false)] {
        let cfg = TokenformerConfig { heads, ..TokenformerConfig::by_name("tiny").unwrap() };
        let model = Tokenformer::<tf_host::bf16>::new(&dev, &cfg, r.random()).unwrap();
        let (x, y) = tokens(&mut r, 20, cfg.vocab); // above 16: the prefill kernel, not decode's
        let _ = dev.take_profiles();
        model.loss_and_grads(&x, &y).unwrap();
        let ran: Vec<String> = dev.take_profiles().into_iter().map(|p| p.kernel).collect();
        for k in ["attn_fwd_bf16_hd64", "attn_bwd_dkv_bf16_hd64", "attn_bwd_dq_bf16_hd64"] {
            assert_eq!(ran.iter().any(|r| r.starts_with(k)), tc, "heads {heads}: {k} in {ran:?}");
        }
        assert_eq!(ran.iter().any(|r| r.starts_with("attn_backward_dq")), !tc, "heads {heads}: the SIMT backward");
    }
}

/// `GradOptions::keep_scores`: the forward keeps every Pattention's scores (the
/// tiny config's are all l2_norm_gelu) and the backward reads them. The loss is
/// the same bits (the forward's outputs do not change); the gradients match
/// tf-ref within the same bounds as the recomputing backward (f32: 2e-5; bf16:
/// 8e-2, see `sixteen_bit`); recomputing the activations as well gives the same
/// bits.
#[test]
fn kept_scores_match_tf_ref() {
    on_backends("kept_scores_match_tf_ref", kept_scores_on);
}

fn kept_scores_on(dev: &Device) {
    kept_scores::<f32>(dev, RTOL);
    kept_scores::<tf_host::bf16>(dev, 8e-2);
}

fn kept_scores<T: tf_host::DType>(dev: &Device, grad_tol: f64) {
    let cfg = TokenformerConfig::by_name("tiny").unwrap();
    let mut r = StdRng::seed_from_u64(seed() ^ 0x7a_0007);
    let model = Tokenformer::<T>::new(dev, &cfg, r.random()).unwrap();
    let (x, y) = tokens(&mut r, 23, cfg.vocab);
    let params = model.to_params().unwrap();
    let keep = tf_host::GradOptions { keep_scores: true, ..Default::default() };
    let (loss_plain, _) = model.loss_and_grads(&x, &y).unwrap();
    let (loss, grads) = model.loss_and_grads_with(&x, &y, &keep).unwrap();
    assert_eq!(loss.to_bits(), loss_plain.to_bits(), "{}: keeping the scores changed the loss", T::NAME);
    let (want_loss, want) = tf_ref::loss_and_grads(&params, &cfg, &x, &y).unwrap();
    assert!((loss - want_loss).abs() <= 1e-2 * want_loss.abs(), "{}: loss {loss}, tf-ref {want_loss}", T::NAME);
    let got = grads.to_params(&params).unwrap();
    let worst = embedding_and_tokens_within(&format!("{} kept", T::NAME), &got, &want, grad_tol, 1.0);
    let (loss_r, again) = model.loss_and_grads_with(&x, &y, &tf_host::GradOptions { recompute: true, ..keep }).unwrap();
    assert_eq!(loss_r.to_bits(), loss.to_bits(), "{}: kept scores with recomputation: the loss", T::NAME);
    assert!(grad_bits(&again) == grad_bits(&grads), "{}: kept scores with recomputation: the gradients", T::NAME);
    eprintln!("{} kept scores: worst gradient error {worst:.2e}", T::NAME);
}

/// With kept scores the backward skips the product A = X·K_Pᵀ: for f32 (one
/// SIMT gemm launch per product), exactly 5 gemm launches a layer fewer
/// (the emulator's launch profiles name the kernels).
#[test]
fn kept_scores_skip_one_product_per_pattention() {
    let dev = Device::emulator_with(EmuOptions { checks: Checks::PROFILE, ..Default::default() });
    let cfg = TokenformerConfig::by_name("tiny").unwrap();
    let mut r = StdRng::seed_from_u64(seed() ^ 0x7a_0008);
    let model = Tokenformer::<f32>::new(&dev, &cfg, r.random()).unwrap();
    let (x, y) = tokens(&mut r, 23, cfg.vocab);
    let gemms = |p: Vec<tf_host::Profile>| p.iter().filter(|p| p.kernel.starts_with("gemm")).count();
    let _ = dev.take_profiles();
    model.loss_and_grads(&x, &y).unwrap();
    let plain = gemms(dev.take_profiles());
    model.loss_and_grads_with(&x, &y, &tf_host::GradOptions { keep_scores: true, ..Default::default() }).unwrap();
    let kept = gemms(dev.take_profiles());
    assert_eq!(plain, kept + 5 * cfg.layers, "gemm launches: {plain} recomputing, {kept} keeping");
}

/// Every gradient as bits, in parameter order.
fn grad_bits(g: &tf_host::ModelGrads) -> Vec<u32> {
    g.views().iter().flat_map(|v| v.to_vec().unwrap().into_iter().map(f32::to_bits)).collect()
}

fn recomputed_is_bitwise<T: tf_host::DType>(dev: &Device) {
    let cfg = TokenformerConfig::by_name("tiny").unwrap();
    let mut r = StdRng::seed_from_u64(seed() ^ 0x7a_0004);
    let model = Tokenformer::<T>::new(dev, &cfg, r.random()).unwrap();
    let (x, y) = tokens(&mut r, 21, cfg.vocab);
    let kept_opts = tf_host::GradOptions::default();
    let (loss, kept) = model.loss_and_grads_with(&x, &y, &kept_opts).unwrap();
    let (loss_r, again) =
        model.loss_and_grads_with(&x, &y, &tf_host::GradOptions { recompute: true, ..kept_opts }).unwrap();
    assert_eq!(loss.to_bits(), loss_r.to_bits(), "{}: the loss with recomputation", T::NAME);
    let (a, b) = (grad_bits(&kept), grad_bits(&again));
    assert_eq!(a.len(), b.len());
    let differ = a.iter().zip(&b).filter(|(p, q)| p != q).count();
    assert_eq!(differ, 0, "{}: {differ} of {} gradient elements differ with recomputation", T::NAME, a.len());
    assert_eq!(model.loss(&x, &y).unwrap().to_bits(), loss.to_bits(), "{}: loss() alone", T::NAME);
}

#[test]
fn activation_recomputation_gives_the_same_bits() {
    on_backends("activation_recomputation_gives_the_same_bits", activation_recomputation_gives_the_same_bits_on);
}

fn activation_recomputation_gives_the_same_bits_on(dev: &Device) {
    recomputed_is_bitwise::<f32>(dev);
    recomputed_is_bitwise::<tf_host::bf16>(dev);
}

#[test]
fn bad_input_is_an_error() {
    on_backends("bad_input_is_an_error", bad_input_is_an_error_on);
}

fn bad_input_is_an_error_on(dev: &Device) {
    let cfg = TokenformerConfig::by_name("tiny").unwrap();
    let model = Tokenformer::<f32>::new(dev, &cfg, 1).unwrap();
    assert!(matches!(model.loss_and_grads(&[], &[]), Err(Error::Shape { .. })));
    assert!(matches!(model.loss_and_grads(&[1, 2], &[3]), Err(Error::Shape { .. })));
    let e = model.loss_and_grads(&[1, 600], &[2, 3]).unwrap_err();
    assert!(e.to_string().contains("600"), "{e}");
    let e = model.loss_and_grads(&[1, 2], &[2, 512]).unwrap_err();
    assert!(e.to_string().contains("512"), "{e}");
    let long = vec![1u32; cfg.seq + 1];
    assert!(matches!(model.loss_and_grads(&long, &long), Err(Error::InvalidArgument { .. })));
}
