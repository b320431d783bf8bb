//! Attention, layer norm, rotary, embedding, linear and cross-entropy backward.

use crate::{check_grads, dot, random, rng};
use tf_ref::{
    attention, attention_backward, cross_entropy, embedding_backward, layer_norm, layer_norm_backward, linear,
    linear_backward, rotary, rotary_backward, Error, MatRef, Tensor4Ref,
};

// ---------------------------------------------------------------- attention

fn t4(v: &[f64], shape: [usize; 4]) -> Tensor4Ref<'_, f64> {
    Tensor4Ref::new(v, shape).unwrap()
}

/// `(B, Tq, Tk, H, D)`.
type Dims = (usize, usize, usize, usize, usize);

fn check_attention((b, t_q, t_k, h, d): Dims, causal: bool, scale: Option<f64>, seed: u64) {
    let (sq, sk) = ([b, t_q, h, d], [b, t_k, h, d]);
    let mut r = rng(seed);
    let inputs = vec![
        random(&mut r, b * t_q * h * d, 1.5),
        random(&mut r, b * t_k * h * d, 1.5),
        random(&mut r, b * t_k * h * d, 1.0),
    ];
    let w = random(&mut r, b * t_q * h * d, 1.0);
    let g = attention_backward(t4(&inputs[0], sq), t4(&inputs[1], sk), t4(&inputs[2], sk), t4(&w, sq), causal, scale)
        .unwrap();
    let loss =
        |v: &[Vec<f64>]| dot(&attention(t4(&v[0], sq), t4(&v[1], sk), t4(&v[2], sk), causal, scale).unwrap().o, &w);
    let what = format!("attention B={b} Tq={t_q} Tk={t_k} H={h} D={d} causal={causal} scale={scale:?}");
    let sig = check_grads(&what, &loss, &inputs, &[g.dq, g.dk, g.dv], &mut r, 3, 3);
    assert!(sig >= 6, "{what}: only {sig} non-negligible checks");
}

#[test]
fn attention_backward_matches_finite_differences() {
    for causal in [true, false] {
        // Tq < Tk (bottom-right: query i sees keys ≤ i + 2), odd head dim.
        check_attention((2, 3, 5, 2, 3), causal, None, 1 + causal as u64);
        // Tq > Tk: the first two query rows see no key when causal.
        check_attention((1, 5, 3, 1, 5), causal, Some(0.7), 3 + causal as u64);
        // Tq = Tk, head dim 1, three heads.
        check_attention((1, 4, 4, 3, 1), causal, None, 5 + causal as u64);
    }
}

#[test]
fn causal_attention_backward_sends_nothing_to_unseen_keys_or_blind_rows() {
    // Tq = 5 > Tk = 3: rows 0 and 1 see nothing, row 2 sees key 0 only.
    let (sq, sk) = ([1, 5, 1, 2], [1, 3, 1, 2]);
    let mut r = rng(7);
    let (q, k, v, d_o) =
        (random(&mut r, 10, 1.0), random(&mut r, 6, 1.0), random(&mut r, 6, 1.0), random(&mut r, 10, 1.0));
    let g = attention_backward(t4(&q, sq), t4(&k, sk), t4(&v, sk), t4(&d_o, sq), true, None).unwrap();
    assert_eq!(&g.dq[..4], &[0.0; 4]);
    // Row 2 sees only key 0: softmax of one score is constant, so dq of row 2 is 0.
    assert_eq!(&g.dq[4..6], &[0.0; 2]);
    // If only row 2 had a gradient, keys 1 and 2 would get none.
    let mut d_o2 = vec![0.0; 10];
    d_o2[4..6].copy_from_slice(&d_o[4..6]);
    let g = attention_backward(t4(&q, sq), t4(&k, sk), t4(&v, sk), t4(&d_o2, sq), true, None).unwrap();
    assert_eq!(&g.dk[2..], &[0.0; 4]);
    assert_eq!(&g.dv[2..], &[0.0; 4]);
    assert_eq!(&g.dv[..2], &d_o[4..6]);
    let err = attention_backward(t4(&q, sq), t4(&k, sk), t4(&v, sk), t4(&k, sk), true, None).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}

// ---------------------------------------------------------------- layer norm, rotary

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let (rows, cols) = (5, 7);
    for (case, affine) in [false, true].into_iter().enumerate() {
        for eps in [1e-5, 0.0, 0.3] {
            let mut r = rng(20 + case as u64);
            let mut inputs = vec![random(&mut r, rows * cols, 2.0)];
            if affine {
                inputs.push(random(&mut r, cols, 1.5));
                inputs.push(random(&mut r, cols, 1.0));
            }
            let w = random(&mut r, rows * cols, 1.0);
            let x = MatRef::new(&inputs[0], rows, cols).unwrap();
            let dy = MatRef::new(&w, rows, cols).unwrap();
            let (wt, bs) = if affine { (Some(&inputs[1][..]), Some(&inputs[2][..])) } else { (None, None) };
            let g = layer_norm_backward(x, wt, bs, dy, eps).unwrap();
            assert_eq!(g.dweight.is_some(), affine);
            assert_eq!(g.dbias.is_some(), affine);
            let mut grads = vec![g.dx.data];
            grads.extend(g.dweight);
            grads.extend(g.dbias);
            let loss = |v: &[Vec<f64>]| {
                let (wt, bs) = if affine { (Some(&v[1][..]), Some(&v[2][..])) } else { (None, None) };
                dot(&layer_norm(MatRef::new(&v[0], rows, cols).unwrap(), wt, bs, eps).unwrap().data, &w)
            };
            check_grads(&format!("layer_norm affine={affine} eps={eps}"), &loss, &inputs, &grads, &mut r, 2, 3);
        }
    }
}

#[test]
fn rotary_backward_matches_finite_differences_and_inverts() {
    // head_dim 7 at 60 %: 4 rotated dims and 3 passed through; positions from 3.
    let (t, heads, hd, pct, base, off) = (5, 3, 7, 0.6, 100.0, 3);
    let mut r = rng(30);
    let x = random(&mut r, t * heads * hd, 1.0);
    let w = random(&mut r, t * heads * hd, 1.0);
    let dx = rotary_backward(MatRef::new(&w, t, heads * hd).unwrap(), heads, hd, pct, base, off).unwrap();
    let loss = |v: &[Vec<f64>]| {
        dot(&rotary(MatRef::new(&v[0], t, heads * hd).unwrap(), heads, hd, pct, base, off).unwrap().data, &w)
    };
    check_grads("rotary", &loss, std::slice::from_ref(&x), &[dx.data], &mut r, 2, 4);
    // The rotation is orthogonal: the backward undoes the forward.
    let y = rotary(MatRef::new(&x, t, heads * hd).unwrap(), heads, hd, pct, base, off).unwrap();
    let back = rotary_backward(y.view(), heads, hd, pct, base, off).unwrap();
    for (a, b) in back.data.iter().zip(&x) {
        assert!((a - b).abs() < 1e-14, "{a} vs {b}");
    }
    assert!(rotary_backward(MatRef::new(&w, t, heads * hd).unwrap(), heads, 6, pct, base, off).is_err());
}

// ---------------------------------------------------------------- embedding, logits, loss

#[test]
fn embedding_backward_scatter_adds_repeated_ids() {
    let (vocab, d) = (6, 3);
    let tokens = [3u32, 1, 3, 0, 4];
    let mut r = rng(40);
    let e = random(&mut r, vocab * d, 1.0);
    let w = random(&mut r, tokens.len() * d, 1.0);
    let de = embedding_backward(&tokens, MatRef::new(&w, tokens.len(), d).unwrap(), vocab).unwrap();
    let gather = |e: &[f64]| -> Vec<f64> { tokens.iter().flat_map(|&id| e[id as usize * d..][..d].to_vec()).collect() };
    let loss = |v: &[Vec<f64>]| dot(&gather(&v[0]), &w);
    check_grads("embedding", &loss, &[e], std::slice::from_ref(&de.data), &mut r, 2, 4);
    // Row 3 is the sum of positions 0 and 2; unused ids (2, 5) get 0.
    for c in 0..d {
        assert_eq!(de.data[3 * d + c], w[c] + w[2 * d + c]);
    }
    assert!(de.data[2 * d..3 * d].iter().chain(&de.data[5 * d..]).all(|&v| v == 0.0));
    let err = embedding_backward(&[6], MatRef::new(&w[..d], 1, d).unwrap(), vocab).unwrap_err();
    assert!(err.to_string().contains("token id 6 at position 0"), "{err}");
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (t, d_in, d_out) = (5, 3, 7);
    let mut r = rng(50);
    let inputs = vec![random(&mut r, t * d_in, 1.0), random(&mut r, d_out * d_in, 1.0)];
    let w = random(&mut r, t * d_out, 1.0);
    let g = linear_backward(
        MatRef::new(&inputs[0], t, d_in).unwrap(),
        MatRef::new(&inputs[1], d_out, d_in).unwrap(),
        MatRef::new(&w, t, d_out).unwrap(),
    )
    .unwrap();
    let loss = |v: &[Vec<f64>]| {
        dot(&linear(MatRef::new(&v[0], t, d_in).unwrap(), MatRef::new(&v[1], d_out, d_in).unwrap()).unwrap().data, &w)
    };
    check_grads("linear", &loss, &inputs, &[g.dx.data, g.dw.data], &mut r, 2, 3);
}

#[test]
fn cross_entropy_value_and_gradient() {
    // Uniform logits: the loss is ln V; the gradient (1/V − onehot)/T.
    let (t, v) = (2, 4);
    let (loss, dz) = cross_entropy(MatRef::new(&[0.5; 8], t, v).unwrap(), &[1, 3]).unwrap();
    assert!((loss - 4f64.ln()).abs() < 1e-15);
    assert!((dz.data[1] - (0.25 - 1.0) / 2.0).abs() < 1e-16 && (dz.data[0] - 0.125).abs() < 1e-16);
    // A hand case: logits [0, ln 3] with target 1 gives −ln(3/4).
    let (loss, _) = cross_entropy(MatRef::new(&[0.0, 3f64.ln()], 1, 2).unwrap(), &[1]).unwrap();
    assert!((loss + 0.75f64.ln()).abs() < 1e-15);

    let (t, v) = (5, 7);
    let targets = [6u32, 0, 3, 3, 1];
    let mut r = rng(60);
    let z = random(&mut r, t * v, 3.0);
    let (_, dz) = cross_entropy(MatRef::new(&z, t, v).unwrap(), &targets).unwrap();
    for row in dz.data.chunks(v) {
        assert!(row.iter().sum::<f64>().abs() < 1e-15, "each gradient row sums to 0");
    }
    let loss = |x: &[Vec<f64>]| cross_entropy(MatRef::new(&x[0], t, v).unwrap(), &targets).unwrap().0;
    check_grads("cross_entropy", &loss, std::slice::from_ref(&z), &[dz.data], &mut r, 2, 4);
    // Huge logits do not overflow.
    let (loss, _) = cross_entropy(MatRef::new(&[1e308, 0.0], 1, 2).unwrap(), &[0]).unwrap();
    assert_eq!(loss, 0.0);
    let empty: [f64; 0] = [];
    assert!(cross_entropy(MatRef::new(&empty, 0, 3).unwrap(), &[]).is_err());
    assert!(cross_entropy(MatRef::new(&z, t, v).unwrap(), &targets[..4]).is_err());
    let err = cross_entropy(MatRef::new(&z[..v], 1, v).unwrap(), &[7]).unwrap_err();
    assert!(err.to_string().contains("target id 7 at position 0"), "{err}");
}
