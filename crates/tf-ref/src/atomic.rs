//! Writing files so that no file is ever half-written and an old file is never lost.
//!
//! [`write_atomic`] writes to a temporary file in the target's directory
//! (`.NAME.tmp-PID-N`), flushes and fsyncs it, renames it over the target and
//! fsyncs the directory. On any error before the rename the temporary file is
//! removed and the target is left as it was, byte for byte; a process killed
//! mid-write (SIGTERM, SIGKILL, a file-size limit) leaves the old file intact
//! and at most a recognisable `.NAME.tmp-PID-N` beside it. Every file the
//! project writes (checkpoints, golden files, JSON and SVG outputs) goes
//! through here.
//!
//! [`check_writable`] is the cheap up-front check commands run before any
//! compute: the directory exists and a file can be created in it.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the temporary files of one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Failures injected into [`write_atomic`] on the current thread (tests only:
/// they show that a failure at each step leaves the old file intact).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Fail the write once this many bytes have reached the temporary file.
    pub fail_after_bytes: Option<usize>,
    /// Fail after the temporary file is complete and synced, before the rename.
    pub fail_before_rename: bool,
}

thread_local! {
    static FAULTS: Cell<Faults> = const { Cell::new(Faults { fail_after_bytes: None, fail_before_rename: false }) };
}

/// Sets the failures injected into the following [`write_atomic`] calls on this
/// thread (`Faults::default()` turns them off). For tests.
#[doc(hidden)]
pub fn inject_faults(f: Faults) {
    FAULTS.with(|c| c.set(f));
}

/// A writer that fails once `limit` bytes have gone through (injected faults).
struct Limited<W> {
    inner: W,
    written: usize,
    limit: Option<usize>,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let buf = match self.limit {
            Some(l) if self.written >= l => return Err(io::Error::other(format!("injected failure after {l} bytes"))),
            Some(l) => &buf[..buf.len().min(l - self.written)],
            None => buf,
        };
        let n = self.inner.write(buf)?;
        self.written += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The directory holding `path` and its file name, or an error if `path` names
/// no file (empty, `..`, a trailing `/`, an existing directory).
fn split(path: &Path) -> io::Result<(PathBuf, &std::ffi::OsStr)> {
    let name = path
        .file_name()
        .filter(|_| !path.as_os_str().to_string_lossy().ends_with('/'))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    if path.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "is a directory"));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// A fresh temporary path beside `name` in `dir`: `.NAME.tmp-PID-N`.
fn temp_path(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id()))
}

/// `e` with `path` in its message (the kind kept).
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Checks, before any compute, that `path` can be written: it is not a
/// directory, its directory exists, and a file can be created there (a probe
/// file is created and removed). Errors name the path.
pub fn check_writable(path: &Path) -> io::Result<()> {
    let (dir, name) = split(path).map_err(|e| at(path, e))?;
    if !dir.is_dir() {
        return Err(at(path, io::Error::new(io::ErrorKind::NotFound, format!("no directory {}", dir.display()))));
    }
    let probe = temp_path(&dir, name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| at(path, io::Error::new(e.kind(), format!("cannot create a file in {}: {e}", dir.display()))))?;
    std::fs::remove_file(&probe).map_err(|e| at(&probe, e))
}

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes what `fill` writes to `path` atomically (see the module documentation).
/// Errors name the path; on error the target is unchanged and the temporary
/// file removed.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let faults = FAULTS.with(Cell::get);
    let (dir, name) = split(path).map_err(|e| at(path, e))?;
    let tmp = temp_path(&dir, name);
    let file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| {
        at(path, io::Error::new(e.kind(), format!("cannot create a temporary file in {}: {e}", dir.display())))
    })?;
    let result = (|| {
        // An existing target keeps its permissions.
        if let Ok(meta) = std::fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
        }
        let mut w = BufWriter::new(Limited { inner: &file, written: 0, limit: faults.fail_after_bytes });
        fill(&mut w)?;
        w.flush()?;
        drop(w);
        file.sync_all()?;
        if faults.fail_before_rename {
            return Err(io::Error::other("injected failure before the rename"));
        }
        std::fs::rename(&tmp, path)
    })();
    drop(file);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(at(path, e));
    }
    // The rename is durable once the directory is synced.
    File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| at(&dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tf-ref-atomic-{}-{name}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_and_leaves_nothing_else() {
        let d = dir("ok");
        let p = d.join("f.bin");
        std::fs::write(&p, b"old contents").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(entries(&d), ["f.bin"]);
        write_atomic(&d.join("g.bin"), &[7u8; 100_000]).unwrap();
        assert_eq!(std::fs::read(d.join("g.bin")).unwrap(), vec![7u8; 100_000]);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_failure_mid_write_or_before_the_rename_keeps_the_old_file() {
        let d = dir("faults");
        let p = d.join("ckpt.safetensors");
        let old: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&p, &old).unwrap();
        let new = vec![0xabu8; 300_000];
        for faults in [
            Faults { fail_after_bytes: Some(0), fail_before_rename: false },
            Faults { fail_after_bytes: Some(1000), fail_before_rename: false },
            Faults { fail_after_bytes: Some(299_999), fail_before_rename: false },
            Faults { fail_after_bytes: None, fail_before_rename: true },
        ] {
            inject_faults(faults);
            let e = write_atomic(&p, &new).unwrap_err();
            inject_faults(Faults::default());
            assert!(e.to_string().contains("injected failure"), "{faults:?}: {e}");
            assert!(e.to_string().contains("ckpt.safetensors"), "the error names the file: {e}");
            assert!(std::fs::read(&p).unwrap() == old, "{faults:?}: the old file changed");
            assert_eq!(entries(&d), ["ckpt.safetensors"], "{faults:?}: a temporary file was left");
        }
        // A new file that fails is not created at all.
        inject_faults(Faults { fail_after_bytes: Some(10), fail_before_rename: false });
        assert!(write_atomic(&d.join("fresh"), &new).is_err());
        inject_faults(Faults::default());
        assert_eq!(entries(&d), ["ckpt.safetensors"]);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn bad_targets_are_refused_up_front() {
        let d = dir("targets");
        assert!(check_writable(&d.join("out.json")).is_ok());
        assert_eq!(entries(&d), Vec::<String>::new(), "the probe file was removed");
        let e = check_writable(&d.join("missing/out.json")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(check_writable(&d).is_err(), "a directory is not a file");
        assert!(write_atomic(&d, b"x").is_err());
        assert!(check_writable(Path::new("")).is_err());
        std::fs::remove_dir_all(&d).ok();
    }
}
