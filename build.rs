//! Builds the kernels of `tf-kernels`:
//!
//! 1. nvcc → ONE fatbin holding every `kernels/*.cu` (SASS sm_80 + sm_90a and PTX
//!    compute_80 by default), with the ptxas report saved and spills warned about.
//!    No nvcc: the build FAILS with a message saying what to install or set, unless
//!    CUDA kernels were turned off on purpose (the `emulator-only` feature, or
//!    `TF_NO_NVCC=1`): then `FATBIN` is `None`. Nothing is ever downloaded here.
//! 2. g++ (cc crate) → the CPU SIMT emulator library running the same sources
//!    (`kernels/emu/build_emu.rs`).
//!
//! The Rust mirror of `kernels/tf_kernels.h` is not made here: `cargo xtask
//! bindgen` generates `kernels/tf_kernels_sys.rs`, which is committed, so a build
//! needs no libclang.

#[path = "kernels/emu/build_emu.rs"]
mod build_emu;
#[allow(dead_code)]
#[path = "build/toolchain.rs"]
mod toolchain;

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every environment variable this script reads (each gets `rerun-if-env-changed`),
/// except `PATH`: nvcc is also looked for there, but a change of `PATH` (a new
/// shell, a virtual environment) is no reason to recompile every kernel. The nvcc
/// found is a rerun trigger itself; to switch compilers, set `NVCC` or `CUDA_HOME`.
/// (The `emulator-only` feature needs no trigger: cargo rebuilds on a feature change.)
const ENV_VARS: &[&str] =
    &["NVCC", "CUDA_HOME", "CUDA_PATH", "TF_CUDA_ARCHS", "CUDA_COMPUTE_CAP", "TF_NO_NVCC", "TF_FATBIN_EXTERNAL", "CI"];

/// Extensions of the kernel sources and headers nvcc and the emulator build read.
const SOURCE_EXTS: &[&str] = &["cu", "h", "cuh", "hpp", "hh", "inc", "inl"];

/// Default targets: SASS for Ampere and Hopper (sm_90a enables the arch-specific
/// features later kernels may use), plus PTX for compute_80 so newer GPUs JIT.
const DEFAULT_ARCHS: &str = "80,90a";

/// nvcc flags shared by every compilation.
const NVCC_FLAGS: &[&str] = &["-O3", "-std=c++17", "--threads", "0", "-Xptxas", "-v", "--expt-relaxed-constexpr"];

/// Warnings are errors in CI (`CI` set, as CI services do), so the project's own
/// checks catch them; a user's build with a newer nvcc that warns still succeeds.
fn werror() -> bool {
    env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels = root.join("kernels");
    // Decided first, so a build that cannot get kernels stops with nothing but the
    // reason on its output.
    let cuda = cuda_build(&root).unwrap_or_else(|message| fail(&message));

    for v in ENV_VARS {
        println!("cargo:rerun-if-env-changed={v}");
    }
    // Exactly the inputs: this script (its modules `build/toolchain.rs` and
    // `kernels/emu/build_emu.rs` recompile and rerun it through cargo), the kernel
    // sources and headers (`kernels/include/` and `kernels/test/` as folders, so a
    // file added there counts), the nvcc used; the emulator build adds its own
    // files. Not `kernels/*.rs` or the notes: editing them recompiles no kernel. A
    // NEW top-level `kernels/*.cu` is seen at the next rerun (`touch build.rs`);
    // the `kernel_sources_are_the_built_ones` test of tf-kernels fails until then.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", kernels.join("include").display());
    for f in walk(&kernels).iter().filter(|f| !f.starts_with(kernels.join("emu")) && has_ext(f, SOURCE_EXTS)) {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let cu_files = kernel_sources(&kernels);
    // nvcc and the emulator's g++ compiles run side by side: nvcc's front end is
    // one thread for a while, and the two are the longest step of the build.
    let fatbin = std::thread::scope(|scope| {
        let fatbin = scope.spawn(|| match &cuda {
            CudaBuild::Nvcc(nvcc) => Some(build_fatbin(&root, &out_dir, nvcc, &cu_files)),
            CudaBuild::OptedOut(why) => {
                if *why == OptOut::Env {
                    println!("cargo:warning=TF_NO_NVCC is set: kernels not compiled for CUDA (FATBIN is None)");
                }
                None
            }
        });
        if let Err(e) = build_emu::build(&build_emu::BuildEmu { root: &root, out_dir: &out_dir }) {
            fail(&format!("building the SIMT emulator failed:\n{e}"));
        }
        fatbin.join().unwrap_or_else(|_| fail("the nvcc build thread panicked"))
    });
    write_generated(&out_dir, fatbin.as_ref(), &cu_files);
}

/// Ends the build with `message` (cargo shows this script's stderr): a clean
/// error, not a panic's backtrace hint.
fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1);
}

/// Why a build has no CUDA kernels on purpose.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OptOut {
    /// The `emulator-only` cargo feature.
    Feature,
    /// `TF_NO_NVCC` set (not empty, not `0`).
    Env,
}

/// What the CUDA half of the build does.
enum CudaBuild {
    /// Compile the kernels with this nvcc.
    Nvcc(PathBuf),
    /// No CUDA kernels, on purpose.
    OptedOut(OptOut),
}

/// The nvcc to use, no CUDA kernels on purpose, or (Err) the message of a build
/// that wants kernels and has no nvcc.
fn cuda_build(root: &Path) -> Result<CudaBuild, String> {
    if env::var_os("CARGO_FEATURE_EMULATOR_ONLY").is_some() {
        return Ok(CudaBuild::OptedOut(OptOut::Feature));
    }
    if env::var_os("TF_NO_NVCC").is_some_and(|v| !v.is_empty() && v != "0") {
        return Ok(CudaBuild::OptedOut(OptOut::Env));
    }
    let bad_nvcc = env::var_os("NVCC").filter(|p| !Path::new(p).is_file());
    if let Some(p) = &bad_nvcc {
        println!("cargo:warning=NVCC={} is not a file; looking elsewhere", Path::new(p).display());
    }
    match toolchain::find_nvcc(root) {
        Some(nvcc) => Ok(CudaBuild::Nvcc(nvcc)),
        None => Err(no_nvcc_message(root, bad_nvcc.as_deref().map(Path::new))),
    }
}

/// The error of a build without nvcc: where it looked, what to install or set,
/// how to build without CUDA kernels.
fn no_nvcc_message(root: &Path, bad_nvcc: Option<&Path>) -> String {
    // A checkout of the repository has `cargo xtask`; a copy cargo made of it (a
    // git or registry dependency, marked by `.cargo-ok`) is not where to run it.
    let in_repository = root.join("xtask/Cargo.toml").is_file() && !root.join(".cargo-ok").exists();
    let mut m =
        String::from("tf-kernels: nvcc (the CUDA compiler) was not found, so the CUDA kernels cannot be built.\n\n");
    m.push_str("Looked for: $NVCC, $CUDA_HOME/bin/nvcc, $CUDA_PATH/bin/nvcc, nvcc on PATH, /usr/local/cuda/bin/nvcc");
    if in_repository {
        let _ = write!(m, ", {}/{}", root.display(), toolchain::LOCAL_DIR);
    }
    m.push_str(".\n");
    if let Some(p) = bad_nvcc {
        let _ = writeln!(m, "NVCC is set to {}, which is not a file.", p.display());
    }
    m.push_str(
        "\nTo build the kernels: install the CUDA toolkit with nvcc (CUDA 13.0 is the version tested) and set \
         NVCC=/path/to/bin/nvcc or CUDA_HOME=/path/to/cuda (or put nvcc on PATH).\n",
    );
    if in_repository {
        m.push_str(
            "In this repository, `cargo xtask setup` installs CUDA 13.0's nvcc into .toolchain/, where the \
             build finds it.\n",
        );
    }
    m.push_str(
        "\nTo build without CUDA kernels (the CPU emulator only; Device::cuda then returns \
         Error::KernelsNotBuilt): turn on the `emulator-only` feature, e.g. \
         `tf-host = { ..., features = [\"emulator-only\"] }` (tf-host forwards it to tf-kernels), or set \
         TF_NO_NVCC=1.",
    );
    m
}

/// All files under `dir`, recursively, sorted (for rerun-if-changed).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e))
}

/// The product kernels: `kernels/*.cu` (not the emulator-only `kernels/test/`).
fn kernel_sources(kernels: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(kernels)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "cu")).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// `-gencode` flags for the arch list: SASS for every arch, PTX for the lowest.
/// `TF_CUDA_ARCHS` ("90a" or "80,86,89,90a") wins over `CUDA_COMPUTE_CAP`
/// (candle's single number, e.g. "90"), which wins over the default.
fn gencode_flags() -> (String, Vec<String>) {
    let list = env::var("TF_CUDA_ARCHS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| env::var("CUDA_COMPUTE_CAP").ok().map(|s| s.trim().replace('.', "")).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_ARCHS.to_string());
    let archs: Vec<String> =
        list.split(',').map(|s| s.trim().trim_start_matches("sm_").to_string()).filter(|s| !s.is_empty()).collect();
    for a in &archs {
        let digits = a.trim_end_matches('a');
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            fail(&format!("invalid CUDA arch '{a}' in TF_CUDA_ARCHS / CUDA_COMPUTE_CAP '{list}': expected numbers like 80, 86, 90a"));
        }
        if digits.parse::<u32>().unwrap_or(0) < 80 {
            fail(&format!("CUDA arch '{a}' is below 80: the kernels need sm_80 tensor-core instructions"));
        }
    }
    let mut flags = Vec::new();
    for a in &archs {
        flags.push("-gencode".to_string());
        flags.push(format!("arch=compute_{a},code=sm_{a}"));
    }
    let lowest = archs
        .iter()
        .min_by_key(|a| a.trim_end_matches('a').parse::<u32>().unwrap_or(u32::MAX))
        .unwrap_or_else(|| fail(&format!("no CUDA arch in TF_CUDA_ARCHS / CUDA_COMPUTE_CAP '{list}'")));
    if !lowest.ends_with('a') {
        flags.push("-gencode".to_string());
        flags.push(format!("arch=compute_{lowest},code=compute_{lowest}"));
    }
    (archs.join(","), flags)
}

struct Fatbin {
    path: PathBuf,
    ptxas: PathBuf,
    archs: String,
    nvcc_version: String,
}

/// Compiles every kernel into one fatbin through a generated unity source
/// (`#include` of each `.cu`): one module, one load per context. File-local
/// helpers therefore live in a per-file namespace.
fn build_fatbin(root: &Path, out_dir: &Path, nvcc: &Path, cu_files: &[PathBuf]) -> Fatbin {
    let (archs, gencode) = gencode_flags();
    println!("cargo:rerun-if-changed={}", nvcc.display());

    let mut unity = String::from("// generated by build.rs: every kernels/*.cu in one module\n");
    for f in cu_files {
        writeln!(unity, "#include \"{}\"", f.display()).ok();
    }
    let unity_path = out_dir.join("tf_kernels_all.cu");
    fs::write(&unity_path, unity).expect("write unity source");

    let fatbin = out_dir.join("tf_kernels.fatbin");
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin")
        .args(NVCC_FLAGS)
        .args(&gencode)
        .arg("-I")
        .arg(root.join("kernels"))
        .arg("-I")
        .arg(root.join("kernels/include"))
        .arg("-o")
        .arg(&fatbin)
        .arg(&unity_path);
    if werror() {
        cmd.args(["-Werror", "all-warnings"]);
    }
    let out = cmd.output().unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", nvcc.display())));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        fail(&format!("nvcc failed ({}):\n{cmd:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status));
    }
    let report = format!("{stdout}{stderr}");
    let ptxas = out_dir.join("ptxas.txt");
    fs::write(&ptxas, &report).expect("write ptxas report");
    for line in spill_lines(&report) {
        println!("cargo:warning=register spill: {line} (see {})", ptxas.display());
    }
    let nvcc_version = Command::new(nvcc)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string())
        .unwrap_or_default();
    Fatbin { path: fatbin, ptxas, archs, nvcc_version }
}

/// "function 'x' for 'sm_80': N bytes spill stores, M bytes spill loads" for every
/// kernel whose ptxas entry reports a non-zero spill.
fn spill_lines(report: &str) -> Vec<String> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function ").nth(1) {
            current = rest.trim().to_string();
        }
        if line.contains("bytes spill stores") {
            let nonzero = line
                .split(',')
                .filter(|p| p.contains("spill"))
                .any(|p| p.split_whitespace().next().is_some_and(|n| n != "0"));
            if nonzero {
                out.push(format!("{current}: {}", line.trim()));
            }
        }
    }
    out
}

/// `$OUT_DIR/kernels_gen.rs`: FATBIN, the ptxas report, the arch list, and (for
/// tf-kernels' own tests) the kernel sources compiled.
fn write_generated(out_dir: &Path, fatbin: Option<&Fatbin>, cu_files: &[PathBuf]) {
    let mut s = String::new();
    match fatbin {
        Some(f) => {
            // TF_FATBIN_EXTERNAL (the GPU run kit): the fatbin is compiled but not
            // embedded; the binaries load the file `TF_FATBIN` names at run time.
            if env::var_os("TF_FATBIN_EXTERNAL").is_some_and(|v| !v.is_empty() && v != "0") {
                writeln!(
                    s,
                    "/// None: built with TF_FATBIN_EXTERNAL, the fatbin ({}) is loaded from TF_FATBIN.",
                    f.archs
                )
                .ok();
                writeln!(s, "pub static FATBIN: Option<&[u8]> = None;").ok();
                writeln!(s, "/// The fatbin was compiled but not embedded (TF_FATBIN_EXTERNAL).").ok();
                writeln!(s, "pub static FATBIN_EXTERNAL: bool = true;").ok();
            } else {
                writeln!(s, "/// The fatbin of every kernel (SASS + PTX for {}).", f.archs).ok();
                writeln!(
                    s,
                    "pub static FATBIN: Option<&[u8]> = Some(include_bytes!({:?}));",
                    f.path.display().to_string()
                )
                .ok();
                writeln!(s, "/// The fatbin was compiled but not embedded (TF_FATBIN_EXTERNAL).").ok();
                writeln!(s, "pub static FATBIN_EXTERNAL: bool = false;").ok();
            }
            writeln!(s, "/// ptxas' verbose report (registers, shared memory, spills per kernel and arch).").ok();
            writeln!(s, "pub static PTXAS_REPORT: &str = include_str!({:?});", f.ptxas.display().to_string()).ok();
            writeln!(s, "/// The CUDA archs compiled (SASS), comma-separated.").ok();
            writeln!(s, "pub static CUDA_ARCHS: &str = {:?};", f.archs).ok();
            writeln!(s, "/// nvcc's version line.").ok();
            writeln!(s, "pub static NVCC_VERSION: &str = {:?};", f.nvcc_version).ok();
        }
        None => {
            s.push_str("/// None: built without CUDA kernels (the `emulator-only` feature or `TF_NO_NVCC`).\n");
            s.push_str("pub static FATBIN: Option<&[u8]> = None;\n");
            s.push_str("/// False: no fatbin was compiled.\n");
            s.push_str("pub static FATBIN_EXTERNAL: bool = false;\n");
            s.push_str("/// Empty: no kernels were compiled for CUDA.\n");
            s.push_str("pub static PTXAS_REPORT: &str = \"\";\n");
            s.push_str("/// Empty: no kernels were compiled for CUDA.\n");
            s.push_str("pub static CUDA_ARCHS: &str = \"\";\n");
            s.push_str("/// Empty: no kernels were compiled for CUDA.\n");
            s.push_str("pub static NVCC_VERSION: &str = \"\";\n");
        }
    }
    let names: Vec<String> = cu_files.iter().filter_map(|f| f.file_name()?.to_str().map(str::to_string)).collect();
    writeln!(s, "/// The `kernels/*.cu` files this build compiled.").ok();
    writeln!(s, "#[cfg(test)]\nstatic KERNEL_SOURCES: &[&str] = &{names:?};").ok();
    fs::write(out_dir.join("kernels_gen.rs"), s).expect("write kernels_gen.rs");
}
