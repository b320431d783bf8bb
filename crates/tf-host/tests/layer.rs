//! The standalone Pattention layer's API on the emulator: construction refuses
//! what no forward could run, the random init is the model's, and a layer's
//! tokens read back.

use tf_host::{
    bf16, f16, DType, Device, Error, Init, Norm, Pattention, PattentionOptions, PattentionShape, RandomInit, Slot,
    Tokenformer, TokenformerConfig,
};

fn layer<T: DType>(dev: &Device, n: usize, d_in: usize, d_out: usize, opts: PattentionOptions) -> tf_host::Result<()> {
    let k = dev.upload_f32::<T>(&vec![0.5; n * d_in], &[n, d_in])?;
    let v = dev.upload_f32::<T>(&vec![0.25; n * d_out], &[n, d_out])?;
    Pattention::new(dev, k, v, opts).map(|_| ())
}

fn random<T: DType>(dev: &Device, n: usize, d_in: usize, d_out: usize) -> tf_host::Result<Pattention<T>> {
    let cfg = TokenformerConfig::by_name("tiny")?;
    let shape = PattentionShape { n, d_in, d_out };
    Pattention::random(dev, shape, RandomInit::official(&cfg, 3), PattentionOptions::default())
}

#[test]
fn construction_refuses_what_no_forward_could_run() {
    let dev = Device::emulator();
    let o = PattentionOptions::default();
    // 16-bit rows must be 16 bytes apart: d_in and d_out multiples of 8.
    for (d_in, d_out, bad) in [(12, 16, "d_in = 12"), (16, 20, "d_out = 20")] {
        for e in [
            layer::<f16>(&dev, 4, d_in, d_out, o).unwrap_err(),
            layer::<bf16>(&dev, 4, d_in, d_out, o).unwrap_err(),
            random::<bf16>(&dev, 4, d_in, d_out).unwrap_err(),
        ] {
            assert!(matches!(e, Error::Alignment { .. }), "{e:?}");
            assert!(e.to_string().contains(bad) && e.to_string().contains("multiple of 8"), "{e}");
        }
    }
    // ... which f32 does not need, and which a layer of one token needs all the same.
    layer::<f32>(&dev, 4, 12, 20, o).unwrap();
    random::<f32>(&dev, 4, 12, 20).unwrap();
    assert!(matches!(layer::<f16>(&dev, 1, 12, 16, o), Err(Error::Alignment { .. })));
    layer::<f16>(&dev, 4, 16, 24, o).unwrap();

    // Options every forward would refuse.
    for bad in [
        PattentionOptions { n_ref: Some(0), ..o },
        PattentionOptions { eps: -1.0, ..o },
        PattentionOptions { eps: f32::INFINITY, ..o },
    ] {
        let e = layer::<f32>(&dev, 4, 8, 8, bad).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { op: "Pattention::new", .. }), "{bad:?}: {e:?}");
    }
    // Shapes.
    let e = layer::<f32>(&dev, 0, 8, 8, o).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("n = 0"), "{e}");
    let k = dev.zeros::<f32>(&[4, 8]).unwrap();
    let v = dev.zeros::<f32>(&[5, 8]).unwrap();
    assert!(matches!(Pattention::new(&dev, k, v, o), Err(Error::Shape { .. })));
    let k = dev.zeros::<f32>(&[32]).unwrap();
    let v = dev.zeros::<f32>(&[4, 8]).unwrap();
    assert!(matches!(Pattention::new(&dev, k, v, o), Err(Error::Shape { .. })));
    // A tensor of another device.
    let k = Device::emulator().zeros::<f32>(&[4, 8]).unwrap();
    let v = dev.zeros::<f32>(&[4, 8]).unwrap();
    assert!(matches!(Pattention::new(&dev, k, v, o), Err(Error::DeviceMismatch { .. })));
    // Random init with a std that is not a std.
    let shape = PattentionShape { n: 4, d_in: 8, d_out: 8 };
    let init = RandomInit { key_std: f32::NAN, value_std: 0.1, key_seed: 1, value_seed: 2 };
    let e = Pattention::<f32>::random(&dev, shape, init, o).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("key_std"), "{e}");
    let init = RandomInit { key_std: 0.1, value_std: -1.0, ..init };
    assert!(matches!(Pattention::<f32>::random(&dev, shape, init, o), Err(Error::InvalidArgument { .. })));
}

#[test]
fn set_n_ref_refuses_zero_and_keeps_the_pin() {
    let dev = Device::emulator();
    let mut l = random::<f32>(&dev, 6, 8, 8).unwrap();
    l.set_n_ref(Some(4)).unwrap();
    assert!(matches!(l.set_n_ref(Some(0)), Err(Error::InvalidArgument { .. })));
    assert_eq!(l.options().n_ref, Some(4), "a refused pin leaves the old one");
    l.set_n_ref(None).unwrap();
    assert_eq!(l.options().n_ref, None);
}

#[test]
fn random_init_is_the_models_and_growth_continues_its_streams() {
    let dev = Device::emulator();
    let cfg = TokenformerConfig::by_name("tiny").unwrap();
    let seed = 11;
    let model = Tokenformer::<bf16>::new(&dev, &cfg, seed).unwrap();
    for (block, slot) in [(0, Slot::Query), (1, Slot::Ffn), (1, Slot::Proj)] {
        let theirs = model.pattention(block, slot).unwrap();
        let init = RandomInit::model_layer(&cfg, seed, block, slot);
        let ours = Pattention::<bf16>::random(&dev, theirs.shape(), init, *theirs.options()).unwrap();
        assert_eq!(ours.shape(), theirs.shape());
        let bits = |v: Vec<bf16>| v.into_iter().map(bf16::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(ours.keys().to_vec().unwrap()), bits(theirs.keys().to_vec().unwrap()), "{block} {slot:?}");
        assert_eq!(bits(ours.values().to_vec().unwrap()), bits(theirs.values().to_vec().unwrap()), "{block} {slot:?}");
    }

    // The official distribution: keys N(0, 0.02²), values N(0, (2/(L·√d))²).
    let l = random::<f32>(&dev, 256, cfg.d, cfg.d).unwrap();
    let std = |v: Vec<f32>| (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    let value_std = 2.0 / (cfg.layers as f64 * (cfg.d as f64).sqrt());
    let (ks, vs) = (std(l.keys().to_f32_vec().unwrap()), std(l.values().to_f32_vec().unwrap()));
    assert!((ks / 0.02 - 1.0).abs() < 0.03, "key std {ks}");
    assert!((vs / value_std - 1.0).abs() < 0.03, "value std {vs} vs {value_std}");

    // A growth with Init::Normal and the same seed continues both streams: a
    // random layer grown from 100 to 256 tokens is the random layer of 256.
    let init = RandomInit::official(&cfg, 3);
    let mut grown = random::<f32>(&dev, 100, cfg.d, cfg.d).unwrap();
    grown.grow(256, Init::Normal { key_std: init.key_std, value_std: init.value_std, seed: 3 }).unwrap();
    assert_eq!(grown.keys().to_vec().unwrap(), l.keys().to_vec().unwrap());
    assert_eq!(grown.values().to_vec().unwrap(), l.values().to_vec().unwrap());
    assert_eq!(grown.options().norm, Norm::L2NormGelu);
}
