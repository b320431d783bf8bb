//! The whole model (tf-host `Tokenformer`) against tf-ref on the emulator (and
//! CUDA when present): forward, KV-cache decoding, growth, checkpoints.
//!
//! Tolerances (relative Frobenius error of the logits against tf-ref's f64
//! model): bf16 storage 1e-2, f32 storage 1e-4. The f32 bound is looser than
//! docs/design.md's per-kernel 1e-5 because some 30 kernels chain here (layer norms,
//! five Pattentions and an attention per block, residual adds, the logits
//! product), each rounding to f32 storage.
//!
//! The `tiny` config (2 layers, d 64, 4 heads of 16) exercises the padded
//! attention path (head dim 16 runs in the 64 kernel); `tiny64` (1 layer, d 128,
//! 2 heads of 64) the direct one, where the cache holds k and v unpadded.

mod common;

use common::{assert_close, backends, seed, tiny, tiny64};
use rand::{Rng, SeedableRng};
use tf_host::{bf16, DType, Device, Sampling, SlotCounts, Tokenformer};
use tf_ref::{Element, ModelParams, TokenformerConfig};

/// The parameters rounded to `T` (what the device model holds), so the
/// comparison measures the kernels, not the rounding of the weights.
fn rounded<T: Element>(p: &ModelParams) -> ModelParams {
    let r = |v: &Vec<f64>| v.iter().map(|&x| T::from_f64(x).to_f64()).collect::<Vec<f64>>();
    let mut q = p.clone();
    q.embedding = r(&p.embedding);
    for b in &mut q.blocks {
        for slot in tf_ref::Slot::ALL {
            let (k, v) = b.tokens_mut(slot);
            *k = r(k);
            *v = r(v);
        }
    }
    q.final_norm_weight = r(&p.final_norm_weight);
    q.final_norm_bias = r(&p.final_norm_bias);
    q
}

fn logits<T: DType>(m: &Tokenformer<T>, tokens: &[u32]) -> Vec<f32> {
    m.forward(tokens).unwrap().to_vec().unwrap().iter().map(|x| x.to_f32()).collect()
}

fn random_tokens(rng: &mut impl Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

/// tf-ref's model with every activation rounded to `T` where the device model
/// stores one (after each layer norm, Pattention, rotary, attention, residual
/// add, and the logits): a same-precision CPU computation, to tell the kernels'
/// error from the storage type's.
fn storage_reference<T: Element>(cfg: &TokenformerConfig, p: &ModelParams, tokens: &[u32]) -> Vec<f64> {
    use tf_ref::{attention, layer_norm, linear, pattention, rotary, Mat, MatRef, PattentionOpts, Slot, Tensor4Ref};
    let (d, t, heads, hd) = (cfg.d, tokens.len(), cfg.heads, cfg.head_dim());
    let r = |m: Mat| Mat { data: m.data.iter().map(|&x| T::from_f64(x).to_f64()).collect(), ..m };
    let add = |a: &Mat, b: &Mat| r(Mat { data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(), ..a.clone() });
    let data = tokens.iter().flat_map(|&id| p.embedding[id as usize * d..(id as usize + 1) * d].to_vec()).collect();
    let mut x = Mat { data, rows: t, cols: d };
    for b in &p.blocks {
        let pat = |slot: Slot, inp: &Mat| {
            let n = cfg.slots(slot);
            let (k, v) = b.tokens(slot);
            let opts = PattentionOpts { norm: cfg.norm, n_ref: b.n_ref(slot), eps: 0.0 };
            let y = pattention(inp.view(), MatRef::new(k, n, d).unwrap(), MatRef::new(v, n, d).unwrap(), &opts);
            r(y.unwrap())
        };
        let rope = |m: Mat| r(rotary(m.view(), heads, hd, cfg.rotary_pct, cfg.rotary_base, 0).unwrap());
        let h = r(layer_norm(x.view(), None, None, cfg.ln_eps).unwrap());
        let (q, k, v) = (rope(pat(Slot::Query, &h)), rope(pat(Slot::Key, &h)), pat(Slot::Value, &h));
        let shape = [1, t, heads, hd];
        let o = attention(
            Tensor4Ref::new(&q.data, shape).unwrap(),
            Tensor4Ref::new(&k.data, shape).unwrap(),
            Tensor4Ref::new(&v.data, shape).unwrap(),
            true,
            Some(1.0 / (hd as f64).sqrt()),
        )
        .unwrap();
        let ctx = r(Mat { data: o.o, rows: t, cols: d });
        x = add(&x, &pat(Slot::Proj, &ctx));
        let h1 = r(layer_norm(x.view(), None, None, cfg.ln_eps).unwrap());
        x = add(&x, &pat(Slot::Ffn, &h1));
    }
    let h = r(layer_norm(x.view(), Some(&p.final_norm_weight), Some(&p.final_norm_bias), cfg.ln_eps).unwrap());
    r(linear(h.view(), MatRef::new(&p.embedding, cfg.vocab, d).unwrap()).unwrap()).data
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

/// The model's logits against tf-ref's (f64 activations), with a non-trivial
/// final norm affine. The bound is `tol`, or twice the error of the
/// same-precision CPU computation ([`storage_reference`]) when that is larger:
/// for bf16 the storage rounding of some 30 chained ops alone reaches 0.5-0.9e-2
/// on the tiny configs, so a fixed 1e-2 would fail now and then on a sound model.
fn check_forward<T: DType + Element>(dev: &Device, cfg: &TokenformerConfig, t: usize, tol: f64, s: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    let mut params = ModelParams::init(cfg, s).unwrap();
    for (w, b) in params.final_norm_weight.iter_mut().zip(&mut params.final_norm_bias) {
        *w = rng.random_range(0.5..1.5);
        *b = rng.random_range(-0.1..0.1);
    }
    let params = rounded::<T>(&params);
    let tokens = random_tokens(&mut rng, t, cfg.vocab);
    let m = Tokenformer::<T>::from_params(dev, cfg, &params).unwrap();
    let got = logits(&m, &tokens);
    let want = tf_ref::model_forward(cfg, &params, &tokens).unwrap();
    let cpu = rel_err(&storage_reference::<T>(cfg, &params, &tokens), &want.data);
    let bound = tol.max(2.0 * cpu);
    let what = format!("{} {} t={t}", cfg.name, <T as DType>::NAME);
    let (rel, max_abs) = assert_close(&what, &got, &want.data, bound);
    eprintln!("{what}: rel {rel:.2e} (same-precision CPU {cpu:.2e}, bound {bound:.1e}), max abs {max_abs:.2e}");
}

#[test]
fn forward_matches_reference() {
    let s = seed();
    for (dev, name) in backends() {
        eprintln!("backend {name}");
        check_forward::<bf16>(&dev, &tiny(), 13, 1e-2, s);
        check_forward::<f32>(&dev, &tiny(), 13, 1e-4, s ^ 1);
        check_forward::<bf16>(&dev, &tiny64(), 9, 1e-2, s ^ 2);
    }
}

/// The official init made on the device equals tf-ref's (Philox, one launch),
/// up to one f32 rounding of the device's log/cos.
#[test]
fn device_init_matches_reference_init() {
    let s = seed();
    let dev = Device::emulator();
    let cfg = tiny();
    let got = Tokenformer::<f32>::new(&dev, &cfg, s).unwrap().to_params().unwrap();
    let want = ModelParams::init(&cfg, s).unwrap();
    let flat = |p: &ModelParams| {
        let mut v = p.embedding.clone();
        for b in &p.blocks {
            for slot in tf_ref::Slot::ALL {
                v.extend(&b.tokens(slot).0);
                v.extend(&b.tokens(slot).1);
            }
        }
        v.extend(&p.final_norm_weight);
        v.extend(&p.final_norm_bias);
        v
    };
    let (g, w) = (flat(&got), flat(&want));
    assert_eq!(g.len(), w.len());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= b.abs() * 1e-6 + 1e-30, "element {i}: device {a}, tf-ref {b} (seed {s})");
    }
}

/// Prefill then one token per step through the KV cache: each step's logits
/// equal the corresponding row of one full forward.
fn check_decode<T: DType>(dev: &Device, cfg: &TokenformerConfig, s: u64, tol: f64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    let m = Tokenformer::<T>::new(dev, cfg, s).unwrap();
    let tokens = random_tokens(&mut rng, 7, cfg.vocab);
    let full = logits(&m, &tokens);
    let v = cfg.vocab;
    let mut cache = m.new_cache(tokens.len()).unwrap();
    let pre = 4;
    let first = m.forward_cached(&tokens[..pre], &mut cache).unwrap().to_vec().unwrap();
    let first: Vec<f32> = first.iter().map(|x| x.to_f32()).collect();
    let want: Vec<f64> = full[..pre * v].iter().map(|&x| f64::from(x)).collect();
    assert_close("prefill", &first, &want, tol);
    for i in pre..tokens.len() {
        let step = m.forward_cached(&tokens[i..=i], &mut cache).unwrap();
        assert_eq!(step.shape(), [1, v]);
        let got: Vec<f32> = step.to_vec().unwrap().iter().map(|x| x.to_f32()).collect();
        let want: Vec<f64> = full[i * v..(i + 1) * v].iter().map(|&x| f64::from(x)).collect();
        let (rel, _) = assert_close(&format!("{} {} decode step {i}", cfg.name, T::NAME), &got, &want, tol);
        eprintln!("{} {} decode step {i}: rel {rel:.2e} against the full forward", cfg.name, T::NAME);
    }
    assert_eq!(cache.len(), tokens.len());
    // The cache is full: one more token is refused.
    let err = m.forward_cached(&[1], &mut cache).unwrap_err().to_string();
    assert!(err.contains("max_len"), "{err}");
}

#[test]
fn kv_cache_decode_equals_full_forward() {
    let s = seed();
    for (dev, name) in backends() {
        eprintln!("backend {name}");
        // Different kernel paths (t = 1 decode Pattention, split-KV attention),
        // so equal within rounding rather than bitwise.
        check_decode::<bf16>(&dev, &tiny(), s, 1e-2);
        check_decode::<f32>(&dev, &tiny64(), s ^ 3, 1e-5);
    }
}

#[test]
fn generate_is_greedy_argmax_and_reproducible() {
    let s = seed();
    let dev = Device::emulator();
    let cfg = tiny();
    let m = Tokenformer::<f32>::new(&dev, &cfg, s).unwrap();
    let prompt = [1u32, 2, 3];
    let out = m.generate(&prompt, 3, Sampling::Greedy).unwrap();
    assert_eq!(out.len(), 3);
    // Greedy: each new id is the argmax of the full forward's last row.
    let mut seq = prompt.to_vec();
    for &tok in &out {
        let l = logits(&m, &seq);
        let last = &l[(seq.len() - 1) * cfg.vocab..];
        let best = last.iter().enumerate().fold(0, |b, (i, &x)| if x > last[b] { i } else { b });
        assert_eq!(tok as usize, best);
        seq.push(tok);
    }
    let a = m.generate(&prompt, 4, Sampling::Temperature { t: 1.5, seed: 9 }).unwrap();
    let b = m.generate(&prompt, 4, Sampling::Temperature { t: 1.5, seed: 9 }).unwrap();
    assert_eq!(a, b);
    assert!(a.iter().all(|&x| (x as usize) < cfg.vocab));
    for bad in [0.0, -1.0, f32::NAN] {
        assert!(m.generate(&prompt, 2, Sampling::Temperature { t: bad, seed: 1 }).is_err());
    }
}

/// grow_preserving leaves the logits bitwise unchanged; grow changes them; the
/// grown parameters equal tf-ref's growth of the same parameters.
#[test]
fn growth_preserving_and_not() {
    let s = seed();
    for (dev, name) in backends() {
        eprintln!("backend {name}");
        let cfg = tiny();
        let mut rng = rand::rngs::StdRng::seed_from_u64(s);
        let tokens = random_tokens(&mut rng, 6, cfg.vocab);
        let mut m = Tokenformer::<bf16>::new(&dev, &cfg, s).unwrap();
        let before = logits(&m, &tokens);
        // 64 -> 200 passes the capacity (a reallocating copy) and a tile boundary.
        m.grow_preserving(SlotCounts { qkv: 200, proj: 72, ffn: 300 }, s ^ 5).unwrap();
        assert_eq!(m.config().qkv_slots, 200);
        assert_eq!(m.pattention(0, tf_ref::Slot::Ffn).unwrap().n(), 300);
        assert_eq!(m.pattention(1, tf_ref::Slot::Query).unwrap().options().n_ref, Some(64));
        let after = logits(&m, &tokens);
        let differing = before.iter().zip(&after).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differing, 0, "{name}: grow_preserving changed {differing} logits");

        // The same growth in tf-ref.
        let mut p = rounded::<bf16>(&ModelParams::init(&cfg, s).unwrap());
        p.grow(&cfg, 200, 72, 300, true, s ^ 5).unwrap();
        let want = rounded::<bf16>(&p);
        let got = m.to_params().unwrap();
        for (i, (g, w)) in got.blocks.iter().zip(&want.blocks).enumerate() {
            for slot in tf_ref::Slot::ALL {
                assert_eq!(g.n_ref(slot), w.n_ref(slot), "block {i} {slot:?} n_ref");
                for (part, a, b) in
                    [("key", &g.tokens(slot).0, &w.tokens(slot).0), ("value", &g.tokens(slot).1, &w.tokens(slot).1)]
                {
                    assert_eq!(a.len(), b.len());
                    for (j, (x, y)) in a.iter().zip(b).enumerate() {
                        assert!((x - y).abs() <= y.abs() * 1e-2, "block {i} {slot:?} {part} [{j}]: {x} vs {y}");
                    }
                }
            }
        }

        m.grow(SlotCounts { qkv: 256, proj: 80, ffn: 320 }, s ^ 6).unwrap();
        let grown = logits(&m, &tokens);
        let changed = before.iter().zip(&grown).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert!(changed > before.len() / 2, "{name}: plain grow changed only {changed} of {} logits", before.len());
        // Shrinking and softmax-preserving are refused.
        assert!(m.grow(SlotCounts { qkv: 100, proj: 80, ffn: 320 }, 1).is_err());
    }
}

#[test]
fn safetensors_round_trip() {
    let s = seed();
    let dev = Device::emulator();
    let cfg = tiny();
    let dir = std::env::temp_dir().join(format!("tf-model-test-{}-{s}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.safetensors");
    let mut m = Tokenformer::<bf16>::new(&dev, &cfg, s).unwrap();
    m.grow_preserving(SlotCounts { qkv: 96, proj: 64, ffn: 160 }, 3).unwrap();
    m.save(&path).unwrap();
    let grown = m.config().clone();
    let back = Tokenformer::<bf16>::load(&dev, &grown, &path).unwrap();
    assert_eq!(back.to_params().unwrap(), m.to_params().unwrap());
    let tokens = [5u32, 1, 400, 9];
    let (a, b) = (logits(&m, &tokens), logits(&back, &tokens));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    std::fs::remove_dir_all(&dir).ok();
}

/// Writes a safetensors file by hand (f32 tensors), to make broken checkpoints.
fn write_safetensors(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = String::from("{");
    let mut offset = 0usize;
    for (i, (name, shape, data)) in tensors.iter().enumerate() {
        let bytes = data.len() * 4;
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
            offset + bytes
        ));
        offset += bytes;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    for (_, _, data) in tensors {
        for v in data {
            out.extend(v.to_le_bytes());
        }
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn bad_checkpoints_are_refused_naming_the_key() {
    let dev = Device::emulator();
    let cfg = tiny();
    let dir = std::env::temp_dir().join(format!("tf-model-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let all: Vec<(String, Vec<usize>, Vec<f32>)> = cfg
        .tensor_names()
        .into_iter()
        .map(|(n, shape)| {
            let len = shape.iter().product();
            (n, shape, vec![0.01f32; len])
        })
        .collect();
    let ok = dir.join("ok.safetensors");
    write_safetensors(&ok, &all);
    Tokenformer::<f32>::load(&dev, &cfg, &ok).unwrap();

    let missing_key = "sequential.3.attention.value.key_param_tokens";
    let missing: Vec<_> = all.iter().filter(|t| t.0 != missing_key).cloned().collect();
    let p = dir.join("missing.safetensors");
    write_safetensors(&p, &missing);
    let e = Tokenformer::<f32>::load(&dev, &cfg, &p).unwrap_err().to_string();
    assert!(e.contains(missing_key) && e.contains("missing"), "{e}");

    let wrong_key = "sequential.2.mlp.value_param_tokens";
    let wrong: Vec<_> = all
        .iter()
        .map(|t| if t.0 == wrong_key { (t.0.clone(), vec![100, 64], vec![0.0; 6400]) } else { t.clone() })
        .collect();
    let p = dir.join("wrong.safetensors");
    write_safetensors(&p, &wrong);
    let e = Tokenformer::<f32>::load(&dev, &cfg, &p).unwrap_err().to_string();
    assert!(e.contains(wrong_key) && e.contains("[100, 64]"), "{e}");

    let mut extra = all.clone();
    extra.push(("sequential.9.mlp.key_param_tokens".into(), vec![2, 2], vec![0.0; 4]));
    let p = dir.join("extra.safetensors");
    write_safetensors(&p, &extra);
    let e = Tokenformer::<f32>::load(&dev, &cfg, &p).unwrap_err().to_string();
    assert!(e.contains("sequential.9.mlp.key_param_tokens"), "{e}");

    let e = Tokenformer::<f32>::load(&dev, &cfg, dir.join("absent.safetensors")).unwrap_err().to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let dev = Device::emulator();
    let cfg = tiny();
    let m = Tokenformer::<f32>::new(&dev, &cfg, 1).unwrap();
    let e = m.forward(&[1, 512, 3]).unwrap_err().to_string();
    assert!(e.contains("token id 512 at position 1"), "{e}");
    assert!(m.forward(&[]).is_err());
    assert!(m.new_cache(0).is_err());
    let mut cache = m.new_cache(2).unwrap();
    let e = m.forward_cached(&[1, 2, 3], &mut cache).unwrap_err().to_string();
    assert!(e.contains("max_len"), "{e}");
    // A cache of another model shape is refused.
    let other = Tokenformer::<f32>::new(&dev, &tiny64(), 1).unwrap();
    let mut c2 = other.new_cache(4).unwrap();
    assert!(m.forward_cached(&[1], &mut c2).is_err());
    // Invalid configs.
    let mut bad = cfg.clone();
    bad.heads = 3;
    assert!(Tokenformer::<f32>::new(&dev, &bad, 1).is_err());
    let mut big = cfg.clone();
    big.d = 1024;
    big.heads = 4; // head dim 256: no attention kernel
    assert!(Tokenformer::<f32>::new(&dev, &big, 1).unwrap_err().to_string().contains("head dimension 256"));
    let mut odd = cfg;
    odd.d = 36;
    odd.heads = 2;
    assert!(Tokenformer::<bf16>::new(&dev, &odd, 1).is_err());
}
