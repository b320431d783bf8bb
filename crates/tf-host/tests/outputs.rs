//! Outputs that overlap themselves are refused by every op that writes one (two
//! threads would write the same element: a data race from safe code), and an
//! allocation that cannot be satisfied is an out-of-memory error. The refusals
//! happen in validation, before any launch.

use tf_host::ops::block::{add_assign, embedding_into, layer_norm_into, rotary_into, LayerNormArgs, RotaryArgs};
use tf_host::ops::rownorm::pattention_norm_into;
use tf_host::{
    grow_batch, linear_into, pattention_into, Device, Error, GrowInit, GrowItem, PattentionArgs, PattentionOptions,
    Tensor, ViewMut,
};

const T: usize = 4;
const D: usize = 64;

/// `[T, D]` rows at a row stride of 32 < D: row i and row i+1 share 32 elements.
fn overlapping(buf: &mut Tensor<f32>) -> ViewMut<'_, f32> {
    buf.strided_mut(0, &[T, D], &[32, 1]).expect("a view inside the tensor")
}

fn refused(what: &str, r: tf_host::Result<()>) {
    match r {
        Err(Error::Shape { msg, .. }) if msg.contains("overlaps itself") => {}
        other => panic!("{what}: expected an overlap error, got {other:?}"),
    }
}

#[test]
fn every_op_refuses_an_output_that_overlaps_itself() {
    let dev = Device::emulator();
    let x: Tensor<f32> = dev.upload(&vec![0.5; T * D], &[T, D]).unwrap();
    let w: Tensor<f32> = dev.upload(&vec![0.25; D * D], &[D, D]).unwrap();
    let mut buf: Tensor<f32> = dev.zeros(&[T * D]).unwrap();
    let opts = PattentionOptions::default();

    refused(
        "pattention_into",
        pattention_into(
            &dev,
            &PattentionArgs { x: x.view(), k_p: w.view(), v_p: w.view(), opts },
            &mut overlapping(&mut buf),
            None,
        ),
    );
    refused("linear_into", linear_into(&dev, &x.view(), &w.view(), &mut overlapping(&mut buf)));
    refused(
        "layer_norm_into",
        layer_norm_into(
            &dev,
            &LayerNormArgs { x: x.view(), weight: None, bias: None, eps: 1e-5 },
            &mut overlapping(&mut buf),
        ),
    );
    refused(
        "rotary_into",
        rotary_into(
            &dev,
            &mut overlapping(&mut buf),
            &RotaryArgs { heads: 4, head_dim: 16, rot_dim: 4, base: 10000.0, pos_offset: 0 },
        ),
    );
    refused("add_assign", add_assign(&dev, &mut overlapping(&mut buf), &x.view()));
    refused("embedding_into", embedding_into(&dev, &w.view(), &[1, 2, 3, 4], &mut overlapping(&mut buf)));
    refused("pattention_norm_into", pattention_norm_into(&dev, &mut overlapping(&mut buf), &opts));
    let item = GrowItem { src: None, dst: overlapping(&mut buf), rows_old: 0, init: GrowInit::Zeros };
    match grow_batch(&dev, vec![item]) {
        Err(Error::Shape { msg, .. }) if msg.contains("overlaps itself") => {}
        other => panic!("grow_batch: expected an overlap error, got {other:?}"),
    }

    // The same calls with disjoint rows (stride D, and a padded stride D + 8) pass validation.
    let mut ok_buf: Tensor<f32> = dev.zeros(&[T * (D + 8)]).unwrap();
    for stride in [D, D + 8] {
        let mut y = ok_buf.strided_mut(0, &[T, D], &[stride, 1]).unwrap();
        linear_into(&dev, &x.view(), &w.view(), &mut y).expect("disjoint rows");
        pattention_into(&dev, &PattentionArgs { x: x.view(), k_p: w.view(), v_p: w.view(), opts }, &mut y, None)
            .expect("disjoint rows");
    }
}

#[test]
fn an_impossible_allocation_is_out_of_memory() {
    let dev = Device::emulator();
    // 2^60 f32 = 4 EiB: a valid size, far beyond any machine.
    match dev.zeros::<f32>(&[1 << 30, 1 << 30]) {
        Err(e @ Error::OutOfMemory { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with("out of memory: 4611686018427387904 bytes for"), "{msg}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // A product that does not fit usize is still a size overflow.
    assert!(matches!(dev.zeros::<f32>(&[usize::MAX, 2]), Err(Error::SizeOverflow { .. })));
}
