//! Device scratch memory: kernels' intermediates (a caller may keep one
//! [`Workspace`] and reuse it across calls) and small argument tables (growth
//! descriptors, token ids), uploaded into one buffer the [`Device`] keeps and
//! reuses.

use std::sync::Mutex;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use crate::device::{Backend, Device};
use crate::error::{Error, Result};
use crate::tensor::{DevPtr, HostBuf};

enum Buf {
    Cuda(CudaSlice<u8>),
    /// u64 elements: 8-byte granules, 256-byte aligned base.
    Host(HostBuf<u64>),
}

impl Buf {
    /// `bytes` (at least 1) of device memory the kernels write before they read:
    /// uninitialised on CUDA; on the emulator zero-filled but never written as far
    /// as initcheck is concerned.
    fn new(dev: &Device, bytes: usize) -> Result<Buf> {
        dev.count_allocation()?;
        Ok(match &dev.0.backend {
            // SAFETY: the memory is only ever accessed by kernels (and by
            // `write`, which overwrites it); nothing on the host reads it back.
            Backend::Cuda(c) => Buf::Cuda(unsafe { c.stream.alloc::<u8>(bytes.max(1)) }.map_err(|e| {
                if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                    Error::OutOfMemory { bytes, what: "a device workspace".into() }
                } else {
                    Error::Driver(e)
                }
            })?),
            Backend::Emulator(_) => Buf::Host(HostBuf::unwritten(bytes.div_ceil(8).max(1))?),
        })
    }

    /// Bytes it holds.
    fn capacity(&self) -> usize {
        match self {
            Buf::Cuda(s) => s.len(),
            Buf::Host(h) => h.as_slice().len() * 8,
        }
    }

    /// Copies `raw` to the start of the buffer (at most `capacity` bytes).
    fn write(&mut self, dev: &Device, raw: &[u8]) -> Result<()> {
        dev.refuse_in_capture("upload")?;
        match (self, &dev.0.backend) {
            (Buf::Cuda(s), Backend::Cuda(c)) => {
                if !raw.is_empty() {
                    let mut view = s.slice_mut(0..raw.len());
                    c.stream.memcpy_htod(raw, &mut view)?;
                }
                Ok(())
            }
            (Buf::Host(h), _) => {
                let dst = h.as_mut_slice();
                // SAFETY: the caller checked that dst has at least raw.len() bytes.
                let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), raw.len()) };
                dst.copy_from_slice(raw);
                Ok(())
            }
            _ => Err(Error::DeviceMismatch { op: "workspace" }),
        }
    }

    fn ptr<'a>(&'a self, dev: &'a Device) -> DevPtr<'a> {
        match (self, &dev.0.backend) {
            (Buf::Cuda(s), Backend::Cuda(c)) => {
                let (p, g) = s.device_ptr(&c.stream);
                DevPtr { addr: p, _guard: Some(g) }
            }
            (Buf::Host(h), _) => DevPtr { addr: h.addr(), _guard: None },
            (Buf::Cuda(_), Backend::Emulator(_)) => DevPtr { addr: 0, _guard: None },
        }
    }

    fn ptr_mut<'a>(&'a mut self, dev: &'a Device) -> DevPtr<'a> {
        match (self, &dev.0.backend) {
            (Buf::Cuda(s), Backend::Cuda(c)) => {
                let (p, g) = s.device_ptr_mut(&c.stream);
                DevPtr { addr: p, _guard: Some(g) }
            }
            (Buf::Host(h), _) => DevPtr { addr: h.addr(), _guard: None },
            (Buf::Cuda(_), Backend::Emulator(_)) => DevPtr { addr: 0, _guard: None },
        }
    }
}

/// A block of device memory of a given size, 256-byte aligned, for kernels'
/// intermediates. Sized by each family's `*_workspace_bytes` function; an op
/// given a workspace too small for the call refuses it (`Error::InvalidArgument`
/// naming both sizes).
pub struct Workspace {
    dev: Device,
    buf: Buf,
    bytes: usize,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Workspace({} bytes on {:?})", self.bytes, self.dev)
    }
}

impl Workspace {
    /// `bytes` of device memory. No kernel relies on its contents (a workspace is
    /// reused across calls), so it is not cleared: uninitialised on CUDA; on the
    /// emulator zero-filled but counted as never written, so that initcheck reports
    /// a kernel that reads workspace memory before writing it.
    pub fn new(dev: &Device, bytes: usize) -> Result<Workspace> {
        Ok(Workspace { dev: dev.clone(), buf: Buf::new(dev, bytes)?, bytes })
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The base address for one launch that writes it.
    pub(crate) fn ptr_mut(&mut self) -> DevPtr<'_> {
        self.buf.ptr_mut(&self.dev)
    }

    /// Copies `raw` to its first bytes (at most [`bytes`](Self::bytes)), queued
    /// on the device's stream.
    pub(crate) fn write_bytes(&mut self, raw: &[u8]) -> Result<()> {
        if raw.len() > self.bytes {
            return Err(Error::InvalidArgument {
                op: "workspace",
                msg: format!("{} bytes do not fit a workspace of {}", raw.len(), self.bytes),
            });
        }
        self.buf.write(&self.dev, raw)
    }
}

/// The buffer a [`Device`] keeps for small argument tables (growth descriptors,
/// token ids): reused by every call, reallocated only when a table is larger
/// than any before (to the next power of two, at least 4 KiB).
#[derive(Default)]
pub(crate) struct TableBuf(Mutex<Option<Buf>>);

impl Device {
    /// Copies `data` (plain-old-data structs, e.g. kernel descriptor tables) into
    /// the device's table buffer and runs `launch` with its device address. The
    /// buffer stays locked until `launch` returns, so another call on this device
    /// cannot overwrite the table first: launches are synchronous on the emulator
    /// and stream-ordered on CUDA, where the next upload is queued after them.
    pub(crate) fn with_table<P: Copy, R>(&self, data: &[P], launch: impl FnOnce(u64) -> Result<R>) -> Result<R> {
        let bytes = std::mem::size_of_val(data);
        // SAFETY: P is Copy plain data (kernel descriptors generated by bindgen,
        // token ids); viewing it as bytes for a copy is sound.
        let raw = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), bytes) };
        let mut slot = self.0.tables.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|b| b.capacity() < bytes) {
            *slot = None; // freed before the larger one is allocated
            let cap = bytes.checked_next_power_of_two().unwrap_or(bytes).max(4096);
            *slot = Some(Buf::new(self, cap)?);
        }
        let Some(buf) = slot.as_mut() else {
            return Err(Error::InvalidArgument { op: "workspace", msg: "internal: no table buffer".into() });
        };
        buf.write(self, raw)?;
        let p = buf.ptr(self);
        let r = launch(p.addr);
        drop(p);
        r
    }
}
