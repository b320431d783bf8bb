//! Captured launch sequences, replayed as one: a CUDA graph on a GPU, the list
//! of recorded launches on the emulator. The model's decode step
//! ([`crate::DecodeGraph`]) is the user: one replay per generated token instead
//! of a few hundred launches.
//!
//! While a device captures, its kernel launches are recorded instead of run,
//! and everything that is not a launch (allocations, copies between host and
//! device, argument-table uploads, synchronisation) is refused with
//! [`Error::InvalidArgument`]: a CUDA stream in capture mode cannot do those
//! either, and the emulator refuses them too so that a mistake shows without a
//! GPU. Values that change from one replay to the next (a token id, the cache's
//! length) are read by the kernels from device memory ([`DevCounter`]).

use std::sync::atomic::Ordering;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use crate::device::{Backend, Device};
use crate::error::{Error, Result};

/// An int32 in device memory that kernels read at run time, holding a value in
/// `0..=max`. Whatever it holds, no access leaves its buffer: rotary and
/// attention clamp the value to that range, the head copy skips rows outside
/// its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DevCounter {
    /// Its device address (host address on the emulator), 4-byte aligned.
    pub(crate) addr: u64,
    /// The largest value it may hold.
    pub(crate) max: usize,
}

/// One launch recorded by the emulator: the launch itself, to run again.
pub(crate) type Recorded = Box<dyn Fn() -> Result<()> + Send + Sync>;

/// A captured launch sequence.
pub(crate) enum Graph {
    Cuda(CudaGraph),
    Emulator(Vec<Recorded>),
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Graph::Cuda(_) => write!(f, "Graph(CUDA)"),
            Graph::Emulator(l) => write!(f, "Graph(emulator, {} launches)", l.len()),
        }
    }
}

impl Graph {
    /// Runs the captured launches again, in order, on the device's stream.
    ///
    /// # Safety
    /// Every buffer the captured launches address must still be alive, and hold
    /// what their kernels expect (the captured pointers are replayed as they were).
    pub(crate) unsafe fn launch(&self) -> Result<()> {
        match self {
            Graph::Cuda(g) => Ok(g.launch()?),
            Graph::Emulator(l) => l.iter().try_for_each(|f| f()),
        }
    }
}

impl Device {
    /// Runs `body` with this device capturing, and returns the captured
    /// launches with `body`'s result and the number of launches. The capture
    /// ends whether `body` succeeds or not; an error in `body` is returned (and
    /// nothing captured is kept).
    pub(crate) fn capture<R>(&self, body: impl FnOnce() -> Result<R>) -> Result<(Graph, R, usize)> {
        const OP: &str = "capture";
        if self.0.capturing.swap(true, Ordering::AcqRel) {
            return Err(Error::InvalidArgument { op: OP, msg: "this device is already capturing".into() });
        }
        self.0.captured.store(0, Ordering::Relaxed);
        let out = match &self.0.backend {
            Backend::Cuda(c) => c
                .stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(Error::from)
                .and_then(|()| body()),
            Backend::Emulator(e) => {
                e.recorded.lock().unwrap_or_else(|p| p.into_inner()).clear();
                body()
            }
        };
        // The capture ends whatever happened in body.
        let graph = match &self.0.backend {
            Backend::Cuda(c) => match c.stream.end_capture(CUgraphInstantiate_flags(0)) {
                Ok(Some(g)) => Ok(Graph::Cuda(g)),
                Ok(None) => Err(Error::InvalidArgument { op: OP, msg: "the capture recorded no graph".into() }),
                Err(e) => Err(Error::from(e)),
            },
            Backend::Emulator(e) => {
                Ok(Graph::Emulator(std::mem::take(&mut *e.recorded.lock().unwrap_or_else(|p| p.into_inner()))))
            }
        };
        self.0.capturing.store(false, Ordering::Release);
        let launches = self.0.captured.load(Ordering::Relaxed) as usize;
        let out = out?;
        Ok((graph?, out, launches))
    }

    /// Refuses `op` while this device captures (see the module docs).
    pub(crate) fn refuse_in_capture(&self, op: &'static str) -> Result<()> {
        if self.0.capturing.load(Ordering::Acquire) {
            return Err(Error::InvalidArgument {
                op,
                msg: "not allowed while the device captures a graph: only kernel launches are captured".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::block::add_assign;

    #[test]
    fn a_capture_records_launches_and_refuses_the_rest() {
        let dev = Device::emulator();
        let mut y = dev.upload(&[1.0f32, 2.0, 3.0, 4.0], &[1, 4]).unwrap();
        let x = dev.upload(&[10.0f32; 4], &[1, 4]).unwrap();
        // Not launches: refused, and each capture ends.
        let refused = |e: Error| assert!(e.to_string().contains("captures a graph"), "{e}");
        refused(dev.capture(|| dev.zeros::<f32>(&[4]).map(drop)).unwrap_err());
        refused(dev.capture(|| y.write(&[0.0; 4])).unwrap_err());
        refused(dev.capture(|| y.to_vec().map(drop)).unwrap_err());
        refused(dev.capture(|| dev.synchronize()).unwrap_err());
        let e = dev.capture(|| dev.capture(|| Ok(())).map(drop)).unwrap_err();
        assert!(e.to_string().contains("already capturing"), "{e}");
        // The device works again; a capture records without running.
        let (g, (), n) = dev.capture(|| add_assign(&dev, &mut y.view_mut(), &x.view())).unwrap();
        assert_eq!(n, 1);
        assert_eq!(y.to_vec().unwrap(), [1.0, 2.0, 3.0, 4.0]);
        for want in [[11.0, 12.0, 13.0, 14.0], [21.0, 22.0, 23.0, 24.0]] {
            // SAFETY: y and x, which the captured launch addresses, are alive.
            unsafe { g.launch() }.unwrap();
            assert_eq!(y.to_vec().unwrap(), want);
        }
    }
}
