//! Philox4x32-10 known answers, the normal stream, and row-append growth.

use half::{bf16, f16};
use tf_ref::{grow, philox4x32_10, philox_normal, Error, Init, MatRef};

#[test]
fn philox_known_answers() {
    // Random123 kat_vectors, philox4x32_10.
    assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    assert_eq!(philox4x32_10([0xffff_ffff; 4], [0xffff_ffff; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
    assert_eq!(
        philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

/// The normal stream recomputed from the documented definition.
fn normal_by_definition(seed: u64, e: u64, std: f32) -> f32 {
    let w = philox4x32_10([e as u32, (e >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32]);
    let u1 = (f64::from(w[0]) + 1.0) / 4294967296.0;
    let u2 = f64::from(w[1]) / 4294967296.0;
    (f64::from(std) * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[test]
fn philox_normal_follows_its_definition() {
    for (seed, e) in [(0u64, 0u64), (1, 1), (0xdead_beef_0123_4567, 5), (42, 0x1_0000_0003), (u64::MAX, u64::MAX)] {
        assert_eq!(
            philox_normal(seed, e, 0.02).to_bits(),
            normal_by_definition(seed, e, 0.02).to_bits(),
            "seed {seed:#x} element {e:#x}"
        );
    }
    // The high words of seed and element matter.
    assert_ne!(philox_normal(1, 7, 1.0), philox_normal(1 | (1 << 32), 7, 1.0));
    assert_ne!(philox_normal(1, 7, 1.0), philox_normal(1, 7 | (1 << 32), 1.0));
    assert_eq!(philox_normal(9, 9, 0.0), 0.0);
}

#[test]
fn philox_normal_has_the_right_moments() {
    let n = 40_000u64;
    let xs: Vec<f64> = (0..n).map(|e| f64::from(philox_normal(2024, e, 0.5))).collect();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
    // Standard errors: mean 0.5/200 = 0.0025, variance 0.25·sqrt(2/n) ≈ 0.0018.
    assert!(mean.abs() < 0.0125, "mean {mean}");
    assert!((var - 0.25).abs() < 0.01, "variance {var}");
    let within_1sd = xs.iter().filter(|x| x.abs() < 0.5).count() as f64 / n as f64;
    assert!((within_1sd - 0.6827).abs() < 0.01, "P(|x| < σ) = {within_1sd}");
}

fn old_rows(rows: usize, cols: usize) -> Vec<f32> {
    // Includes values whose bit patterns matter: -0, subnormal, NaN payload.
    let mut v: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin() * 0.02).collect();
    v[0] = -0.0;
    v[1] = f32::from_bits(1);
    v[2] = f32::from_bits(0x7fc0_1234);
    v
}

#[test]
fn growth_keeps_old_rows_bit_identical() {
    let (n_old, cols, n_new) = (50, 24, 77);
    let old = old_rows(n_old, cols);
    let m = MatRef::new(&old, n_old, cols).unwrap();
    let rows: Vec<f64> = (0..(n_new - n_old) * cols).map(|i| i as f64 * 0.5).collect();
    for init in [Init::Zeros, Init::Rows(&rows), Init::Normal { std: 0.02, seed: 99 }] {
        let new = grow(m, n_new, &init).unwrap();
        assert_eq!(new.len(), n_new * cols, "{init:?}");
        let same = new[..old.len()].iter().zip(&old).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{init:?}: old rows changed");
        let tail = &new[old.len()..];
        match init {
            Init::Zeros => assert!(tail.iter().all(|v| v.to_bits() == 0)),
            Init::Rows(r) => assert!(tail.iter().zip(r).all(|(a, b)| f64::from(*a) == *b)),
            Init::Normal { std, seed } => {
                for (i, v) in tail.iter().enumerate() {
                    // Absolute element index in the NEW tensor.
                    let e = (old.len() + i) as u64;
                    assert_eq!(v.to_bits(), philox_normal(seed, e, std).to_bits());
                }
            }
        }
    }
}

#[test]
fn normal_growth_is_deterministic_and_step_independent() {
    let (cols, std) = (24, 0.02);
    let old = old_rows(50, cols);
    let m = MatRef::new(&old, 50, cols).unwrap();
    let init = Init::Normal { std, seed: 7 };
    let a = grow(m, 77, &init).unwrap();
    let b = grow(m, 77, &init).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    let c = grow(m, 77, &Init::Normal { std, seed: 8 }).unwrap();
    assert_ne!(a[old.len()..], c[old.len()..]);
    // Growing 50 → 60 → 77 gives the same tensor as 50 → 77 (absolute indices).
    let mid = grow(m, 60, &init).unwrap();
    let two = grow(MatRef::new(&mid, 60, cols).unwrap(), 77, &init).unwrap();
    assert!(a.iter().zip(&two).all(|(x, y)| x.to_bits() == y.to_bits()));
    // No-op growth.
    let same = grow(m, 50, &init).unwrap();
    assert!(same.iter().zip(&old).all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn growth_rounds_to_the_storage_type() {
    let old = [f16::from_f32(1.0); 2];
    let m = MatRef::new(&old, 1, 2).unwrap();
    let new = grow(m, 2, &Init::Rows(&[1.0 + 2f64.powi(-11) + 2f64.powi(-30), -3.0])).unwrap();
    assert_eq!(new[2].to_f64(), 1.0 + 2f64.powi(-10));
    assert_eq!(new[3].to_f64(), -3.0);
    let old = [bf16::ZERO; 3];
    let m = MatRef::new(&old, 1, 3).unwrap();
    let new = grow(m, 4, &Init::Normal { std: 1.0, seed: 5 }).unwrap();
    for (i, v) in new.iter().enumerate().skip(3) {
        assert_eq!(*v, bf16::from_f32(philox_normal(5, i as u64, 1.0)));
    }
}

#[test]
fn growth_errors() {
    let old = vec![0.5f32; 50 * 24];
    let m = MatRef::new(&old, 50, 24).unwrap();
    match grow(m, 49, &Init::Zeros) {
        Err(Error::InvalidArgument { msg, .. }) => {
            assert!(msg.contains("[50, 24]") && msg.contains("49"), "{msg}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let rows = vec![0.0; 26 * 24 + 1];
    match grow(m, 77, &Init::Rows(&rows)) {
        Err(Error::Shape { msg, .. }) => {
            assert!(msg.contains("648") && msg.contains("625") && msg.contains("[77, 24]"), "{msg}")
        }
        other => panic!("expected Shape, got {other:?}"),
    }
    for std in [-1.0f32, f32::NAN, f32::INFINITY] {
        assert!(matches!(grow(m, 77, &Init::Normal { std, seed: 0 }), Err(Error::InvalidArgument { .. })));
    }
    assert!(grow(m, usize::MAX, &Init::Zeros).is_err());
    let lying = MatRef { data: &old[..5], rows: 50, cols: 24 };
    let e = grow(lying, 77, &Init::Zeros).unwrap_err().to_string();
    assert!(e.starts_with("grow: ") && e.contains("[50, 24]") && e.contains('5'), "{e}");
}
