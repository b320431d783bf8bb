//! The standalone Pattention layer's API on the emulator: construction refuses
//! what no forward could run.

use tf_host::{bf16, f16, DType, Device, Error, Pattention, PattentionOptions, PattentionShape};

fn layer<T: DType>(dev: &Device, n: usize, d_in: usize, d_out: usize, opts: PattentionOptions) -> tf_host::Result<()> {
    let k = dev.upload_f32::<T>(&vec![0.5; n * d_in], &[n, d_in])?;
    let v = dev.upload_f32::<T>(&vec![0.25; n * d_out], &[n, d_out])?;
    Pattention::new(dev, k, v, opts).map(|_| ())
}

#[test]
fn construction_refuses_what_no_forward_could_run() {
    let dev = Device::emulator();
    let o = PattentionOptions::default();
    // 16-bit rows must be 16 bytes apart: d_in and d_out multiples of 8.
    for (d_in, d_out, bad) in [(12, 16, "d_in = 12"), (16, 20, "d_out = 20")] {
        for e in
            [layer::<f16>(&dev, 4, d_in, d_out, o).unwrap_err(), layer::<bf16>(&dev, 4, d_in, d_out, o).unwrap_err()]
        {
            assert!(matches!(e, Error::Alignment { .. }), "{e:?}");
            assert!(e.to_string().contains(bad) && e.to_string().contains("multiple of 8"), "{e}");
        }
    }
    // ... which f32 does not need, and which a layer of one token needs all the same.
    layer::<f32>(&dev, 4, 12, 20, o).unwrap();
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
}

#[test]
fn set_n_ref_refuses_zero_and_keeps_the_pin() {
    let dev = Device::emulator();
    let k = dev.upload_f32::<f32>(&[0.5; 6 * 8], &[6, 8]).unwrap();
    let v = dev.upload_f32::<f32>(&[0.25; 6 * 8], &[6, 8]).unwrap();
    let mut l = Pattention::new(&dev, k, v, PattentionOptions::default()).unwrap();
    assert_eq!(l.shape(), PattentionShape { n: 6, d_in: 8, d_out: 8 });
    l.set_n_ref(Some(4)).unwrap();
    assert!(matches!(l.set_n_ref(Some(0)), Err(Error::InvalidArgument { .. })));
    assert_eq!(l.options().n_ref, Some(4), "a refused pin leaves the old one");
    l.set_n_ref(None).unwrap();
    assert_eq!(l.options().n_ref, None);
}
