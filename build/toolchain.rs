//! Where the CUDA compiler and libclang are: one definition, used by both the
//! root build script (`#[path]`-included, std only) and `cargo xtask`. It lives
//! beside the build script, inside the tf-kernels package, so a copy of that
//! package (a git or registry dependency) has it too.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The project-local toolchain folder `cargo xtask setup` fills.
pub const LOCAL_DIR: &str = ".toolchain";

/// nvcc, in the documented order: `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`,
/// `PATH`, `/usr/local/cuda/bin`, then the project-local toolchain under `root`.
pub fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC").map(PathBuf::from) {
        if p.is_file() {
            return Some(p);
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = PathBuf::from(home).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        if let Some(p) = env::split_paths(&path).map(|d| d.join("nvcc")).find(|p| p.is_file()) {
            return Some(p);
        }
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    if p.is_file() {
        return Some(p);
    }
    local_nvcc(root)
}

/// `.toolchain/cuda/lib/python3.*/site-packages/nvidia/cu13/bin/nvcc`, as the
/// PyPI `cuda-toolkit` 13.0 wheels lay it out.
pub fn local_nvcc(root: &Path) -> Option<PathBuf> {
    local_site_packages(root, "cuda").into_iter().map(|sp| sp.join("nvidia/cu13/bin/nvcc")).find(|p| p.is_file())
}

/// The `site-packages` folders of the venv `.toolchain/<venv>`.
pub fn local_site_packages(root: &Path, venv: &str) -> Vec<PathBuf> {
    let lib = root.join(LOCAL_DIR).join(venv).join("lib");
    let mut v: Vec<PathBuf> = fs::read_dir(lib)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
                .map(|p| p.join("site-packages"))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A folder holding `libclang.so*` for bindgen: `$LIBCLANG_PATH`, the system's
/// LLVM installs, then the project-local `libclang` wheel.
pub fn find_libclang(root: &Path) -> Option<PathBuf> {
    let has_lib = |d: &Path| {
        fs::read_dir(d).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("libclang") && n.contains(".so") && !n.starts_with("libclang-cpp"))
            })
        })
    };
    if let Some(p) = env::var_os("LIBCLANG_PATH").map(PathBuf::from) {
        if has_lib(&p) {
            return Some(p);
        }
    }
    let mut candidates: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("llvm-")))
                .map(|p| p.join("lib"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates.reverse();
    candidates.push(PathBuf::from("/usr/lib/x86_64-linux-gnu"));
    candidates.push(PathBuf::from("/usr/lib64"));
    candidates.push(PathBuf::from("/usr/local/lib"));
    for sp in local_site_packages(root, "libclang") {
        candidates.push(sp.join("clang/native"));
    }
    candidates.into_iter().find(|d| has_lib(d))
}
