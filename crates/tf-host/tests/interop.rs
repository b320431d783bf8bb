//! Zero-copy interop with a program's own cudarc stream and buffers: device
//! identity, tensors and views over caller-owned CUDA memory, and the CUDA-only
//! functions refusing the emulator. The emulator tests run everywhere. The CUDA
//! ones need a GPU, the driver and the kernels built by nvcc, and check nothing
//! without them, so they are `#[ignore]`d (reported as ignored, not as passed):
//! `cargo test -p tf-host --test interop -- --include-ignored` runs them, as the
//! GPU run kit does, and there they fail if CUDA is unusable.

use std::sync::Arc;

use tf_host::cudarc::driver::{CudaContext, CudaStream};
use tf_host::{Device, EmuOptions, Error, Tensor, View, ViewMut};

#[test]
fn emulator_devices_are_the_same_only_as_clones() {
    let a = Device::emulator();
    let b = a.clone();
    assert!(a.same(&b) && b.same(&a) && a == b);
    // Same options, another emulator: another device.
    let c = Device::emulator_with(EmuOptions::default());
    assert!(!a.same(&c) && !c.same(&a) && a != c);
    let t = a.zeros::<f32>(&[2, 3]).unwrap();
    assert_eq!(t.device(), &b);
    assert_eq!(t.view().device(), &a);
    assert_ne!(t.view().device(), &c);
    // Ops and copies refuse another emulator's tensors.
    let mut u = c.zeros::<f32>(&[2, 3]).unwrap();
    assert!(matches!(u.copy_from(&t), Err(Error::DeviceMismatch { .. })));
}

#[test]
fn cuda_only_functions_refuse_the_emulator() {
    let dev = Device::emulator();
    assert!(!dev.is_cuda() && dev.cuda_stream().is_none());
    let t = dev.upload(&[1.0f32, 2.0, 3.0], &[3]).unwrap();
    assert!(t.as_cuda_slice().is_none());
    let e = t.into_cuda_slice().unwrap_err();
    assert!(matches!(e, Error::NotCuda { op: "into_cuda_slice" }), "{e:?}");
    assert_eq!(e.to_string(), "into_cuda_slice: needs a CUDA device; this is the CPU emulator");
}

/// CUDA device 0 and its stream; panics (the test fails) when CUDA is unusable.
fn cuda() -> (Device, Arc<CudaStream>) {
    let d = Device::cuda(0).unwrap_or_else(|e| panic!("this test needs a CUDA GPU and nvcc-built kernels: {e}"));
    let s = d.cuda_stream().cloned().expect("a CUDA device has a stream");
    (d, s)
}

#[test]
#[ignore = "needs a CUDA GPU; run with --include-ignored (the GPU run kit does)"]
fn cuda_device_identity_is_context_and_stream() {
    let (dev, stream) = cuda();
    // Device::cuda: a stream of its own (not the legacy default one), no event tracking.
    assert!(!stream.cu_stream().is_null(), "Device::cuda uses a non-default stream");
    assert!(!stream.context().is_event_tracking());
    assert_ne!(Device::cuda(0).unwrap(), dev, "each Device::cuda is another stream");
    // Another handle on the same stream is the same device.
    let again = Device::from_stream(stream.clone()).unwrap();
    assert!(again.same(&dev) && again == dev);
    // The default stream through two cudarc context objects: one stream.
    let (c1, c2) = (CudaContext::new(0).unwrap(), CudaContext::new(0).unwrap());
    let d1 = Device::from_stream(c1.default_stream()).unwrap();
    let d2 = Device::from_stream(c2.default_stream()).unwrap();
    assert_eq!(d1, d2);
    assert_ne!(d1, dev);
    assert_ne!(d1, Device::emulator());
    // Tensors of the same device mix: a copy between the two handles.
    let x = dev.upload(&[1.0f32, 2.0], &[2]).unwrap();
    let mut y = again.zeros::<f32>(&[2]).unwrap();
    y.copy_from(&x).unwrap();
    assert_eq!(y.to_vec().unwrap(), [1.0, 2.0]);
}

#[test]
#[ignore = "needs a CUDA GPU; run with --include-ignored (the GPU run kit does)"]
fn cuda_slices_go_in_and_out_without_copies() {
    let (dev, stream) = cuda();
    let data: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let buf = stream.clone_htod(&data).unwrap();
    let n = buf.len();
    let t = Tensor::from_cuda_slice(&dev, buf, &[2, 3]).unwrap();
    assert_eq!((t.shape(), t.to_vec().unwrap()), (&[2, 3][..], data.clone()));
    let back = t.into_cuda_slice().unwrap();
    assert_eq!(back.len(), n);
    assert_eq!(stream.clone_dtoh(&back).unwrap(), data);
    // Wrong sizes and the emulator are typed errors.
    let e = Tensor::from_cuda_slice(&dev, back, &[4, 2]).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "from_cuda_slice", .. }), "{e:?}");
    let buf = stream.clone_htod(&data).unwrap();
    let e = Tensor::from_cuda_slice(&Device::emulator(), buf, &[6]).unwrap_err();
    assert!(matches!(e, Error::NotCuda { op: "from_cuda_slice" }), "{e:?}");
    // A slice of the program's own context object on the same CUDA context.
    let own = CudaContext::new(0).unwrap().default_stream();
    let buf = own.clone_htod(&data).unwrap();
    own.synchronize().unwrap(); // the program orders its stream before tf-host's
    let t = Tensor::from_cuda_slice(&dev, buf, &[3, 2]).unwrap();
    assert_eq!(t.to_vec().unwrap(), data);
}

#[test]
#[ignore = "needs a CUDA GPU; run with --include-ignored (the GPU run kit does)"]
fn cuda_views_of_caller_buffers_are_op_operands() {
    let (dev, stream) = cuda();
    // y = x·wᵀ with w swapping the two columns.
    let x = stream.clone_htod(&[1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let w = stream.clone_htod(&[0.0f32, 1.0, 1.0, 0.0]).unwrap();
    let mut y = stream.alloc_zeros::<f32>(8).unwrap();
    {
        let xs = x.slice(..);
        let xv = View::from_cuda(&dev, &xs, &[2, 2]).unwrap(); // &CudaView
        assert_eq!(xv.to_vec().unwrap(), [1.0, 2.0, 3.0, 4.0]);
        let wv = View::from_cuda(&dev, w.slice(..), &[2, 2]).unwrap(); // CudaView
                                                                       // Rows 2 and 3 of a [4, 2] buffer (16 bytes in), through a CudaViewMut.
        let mut tail = y.slice_mut(4..);
        let mut yv = ViewMut::from_cuda(&dev, &mut tail, &[2, 2]).unwrap();
        tf_host::linear_into(&dev, &xv, &wv, &mut yv).unwrap();
        assert_eq!(yv.as_view().to_vec().unwrap(), [2.0, 1.0, 4.0, 3.0]);
        drop(yv);
        let tv = View::from_cuda(&dev, &tail, &[4]).unwrap(); // &CudaViewMut
        assert_eq!(tv.to_vec().unwrap(), [2.0, 1.0, 4.0, 3.0]);
    }
    dev.synchronize().unwrap();
    assert_eq!(stream.clone_dtoh(&y).unwrap(), [0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 4.0, 3.0]);
    {
        // Column 1 of x as a strided input, written into column 0 of y.
        let col = View::from_cuda_strided(&dev, &x, 1, &[2, 1], &[2, 1]).unwrap();
        assert_eq!(col.to_vec().unwrap(), [2.0, 4.0]);
        let one = stream.clone_htod(&[1.0f32]).unwrap();
        let ov = View::from_cuda(&dev, &one, &[1, 1]).unwrap();
        let mut yc = ViewMut::from_cuda_strided(&dev, y.slice_mut(..), 0, &[2, 1], &[2, 1]).unwrap();
        tf_host::linear_into(&dev, &col, &ov, &mut yc).unwrap();
    }
    assert_eq!(stream.clone_dtoh(&y).unwrap(), [2.0, 0.0, 4.0, 0.0, 2.0, 1.0, 4.0, 3.0]);

    // Typed errors: lengths, strides past the end, aliasing outputs, a start
    // the kernels' alignment checks could not see, the emulator.
    let e = View::from_cuda(&dev, &x, &[3, 2]).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "View::from_cuda", .. }), "{e:?}");
    let e = View::from_cuda(&dev, x.slice(1..), &[3]).unwrap_err();
    assert!(matches!(e, Error::Alignment { op: "View::from_cuda", .. }), "{e:?}");
    assert!(View::from_cuda_strided(&dev, &x, 1, &[3], &[1]).is_ok(), "the same elements by offset");
    assert!(matches!(ViewMut::from_cuda(&dev, y.slice_mut(2..), &[6]), Err(Error::Alignment { .. })));
    assert!(View::from_cuda_strided(&dev, &x, 1, &[2, 2], &[2, 1]).is_err());
    assert!(ViewMut::from_cuda(&dev, &mut y, &[7]).is_err());
    assert!(ViewMut::from_cuda_strided(&dev, &mut y, 0, &[2, 2], &[0, 1]).is_err());
    let emu = Device::emulator();
    assert!(matches!(View::from_cuda(&emu, &x, &[4]), Err(Error::NotCuda { .. })));
    assert!(matches!(ViewMut::from_cuda(&emu, &mut y, &[8]), Err(Error::NotCuda { .. })));
}

#[test]
#[ignore = "needs a CUDA GPU; run with --include-ignored (the GPU run kit does)"]
fn cuda_buffers_on_a_tracked_second_stream_are_ordered_by_cudarc() {
    let _ = cuda();
    // The program's context keeps cudarc's event tracking; its buffer lives on
    // one stream, tf-host's device on another.
    let ctx = CudaContext::new(0).unwrap();
    let (theirs, ours) = (ctx.new_stream().unwrap(), ctx.new_stream().unwrap());
    assert!(ctx.is_managing_stream_synchronization());
    let dev = Device::from_stream(ours).unwrap();
    let x = theirs.clone_htod(&[1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let w = theirs.clone_htod(&[1.0f32, 0.0, 0.0, 1.0]).unwrap();
    let mut y = theirs.alloc_zeros::<f32>(4).unwrap();
    {
        let xv = View::from_cuda(&dev, &x, &[2, 2]).unwrap();
        let wv = View::from_cuda(&dev, &w, &[2, 2]).unwrap();
        let mut yv = ViewMut::from_cuda(&dev, &mut y, &[2, 2]).unwrap();
        tf_host::linear_into(&dev, &xv, &wv, &mut yv).unwrap();
    }
    // The read on `theirs` waits for the write on tf-host's stream (events).
    assert_eq!(theirs.clone_dtoh(&y).unwrap(), [1.0, 2.0, 3.0, 4.0]);
}
