//! `cargo xtask`: the project's entry points.
//!
//! - `setup`: finds (or installs, project-locally) nvcc 13.0 and libclang. Idempotent.
//! - `test`:  setup, then `cargo test --workspace` with the toolchain in the
//!   environment (so every test run compiles the kernels through nvcc and ptxas),
//!   then the SASS checks of the compiled fatbin.
//! - `bench`: setup, then the benchmarks.

mod toolchain;

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The CUDA 13.0 compiler from the Python package index, matching the CUDA 13.0
/// driver of the machines the project is measured on. cuobjdump and nvdisasm
/// start at 13.2 on the index; they read 13.0 fatbins.
const CUDA_PACKAGES: &[&str] = &[
    "cuda-toolkit[nvcc,cudart,crt,nvvm,cccl]==13.0.2",
    "nvidia-cuda-cuobjdump==13.2.51",
    "nvidia-cuda-nvdisasm==13.2.51",
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = project_root();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(&root).map(|_| ()),
        Some("test") => test(&root, &args[1..]),
        Some("bench") => bench(&root, &args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command '{other}'\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  setup           find or install (into .toolchain/) nvcc 13.0 and libclang
  test [args]     setup, then cargo test --workspace [args], then the SASS checks
  bench [args]    setup, then cargo bench [args]";

fn project_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// What setup found.
struct Toolchain {
    nvcc: Option<PathBuf>,
    libclang: Option<PathBuf>,
}

impl Toolchain {
    /// Environment for cargo so build.rs finds exactly what setup found.
    fn envs(&self) -> Vec<(&'static str, OsString)> {
        let mut v = Vec::new();
        if let Some(n) = &self.nvcc {
            v.push(("NVCC", n.clone().into_os_string()));
        }
        if let Some(l) = &self.libclang {
            v.push(("LIBCLANG_PATH", l.clone().into_os_string()));
        }
        v
    }
}

fn setup(root: &Path) -> Result<Toolchain, String> {
    let nvcc = match toolchain::find_nvcc(root) {
        Some(p) => p,
        None => {
            install_cuda(root)?;
            toolchain::find_nvcc(root).ok_or_else(|| {
                format!(
                    "installed {} but nvcc is still not found under {}/cuda",
                    CUDA_PACKAGES[0],
                    toolchain::LOCAL_DIR
                )
            })?
        }
    };
    let version = run_capture(Command::new(&nvcc).arg("--version"))
        .map(|s| s.lines().last().unwrap_or("").to_string())
        .map_err(|e| format!("{} does not run: {e}", nvcc.display()))?;
    println!("xtask: nvcc      {} ({version})", nvcc.display());

    let libclang = match toolchain::find_libclang(root) {
        Some(p) => p,
        None => {
            install_libclang(root)?;
            toolchain::find_libclang(root)
                .ok_or("installed libclang but no libclang.so was found afterwards")?
        }
    };
    println!("xtask: libclang  {}", libclang.display());
    Ok(Toolchain {
        nvcc: Some(nvcc),
        libclang: Some(libclang),
    })
}

fn install_cuda(root: &Path) -> Result<(), String> {
    let venv = root.join(toolchain::LOCAL_DIR).join("cuda");
    println!(
        "xtask: nvcc not found; installing CUDA 13.0's compiler from the Python package index into {}",
        venv.display()
    );
    ensure_venv(&venv)?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(CUDA_PACKAGES))
}

fn install_libclang(root: &Path) -> Result<(), String> {
    let is_root = run_capture(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0");
    if is_root {
        println!("xtask: libclang not found; installing Debian's libclang-dev");
        let apt_ok = run(Command::new("apt-get").arg("update").arg("-qq")).is_ok()
            && run(Command::new("apt-get").args(["install", "-y", "-qq", "libclang-dev"])).is_ok();
        if apt_ok {
            return Ok(());
        }
        println!("xtask: apt-get failed; falling back to the libclang wheel");
    }
    let venv = root.join(toolchain::LOCAL_DIR).join("libclang");
    println!("xtask: installing the libclang wheel into {}", venv.display());
    ensure_venv(&venv)?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", "libclang"]))
}

fn ensure_venv(venv: &Path) -> Result<(), String> {
    if venv.join("bin/pip").is_file() {
        return Ok(());
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(venv))
}

fn test(root: &Path, extra: &[String]) -> Result<(), String> {
    let tc = setup(root)?;
    run(cargo(root, &tc).args(["test", "--workspace"]).args(extra))?;
    sass_checks(root)
}

fn bench(root: &Path, extra: &[String]) -> Result<(), String> {
    let tc = setup(root)?;
    run(cargo(root, &tc).args(["bench", "--workspace"]).args(extra))
}

/// The SASS of the fatbin the tests just used: what ptxas and cuobjdump say.
/// Kernels must not spill; tensor-core kernels must contain HMMA, LDSM, LDGSTS.
fn sass_checks(root: &Path) -> Result<(), String> {
    let out = root.join("target");
    let Some(fatbin) = newest(&out, "tf_kernels.fatbin") else {
        return Err("no tf_kernels.fatbin under target/: the kernels were not compiled by nvcc".into());
    };
    let Some(ptxas) = fatbin.parent().map(|d| d.join("ptxas.txt")) else {
        return Err("fatbin has no parent folder".into());
    };
    let report = std::fs::read_to_string(&ptxas).map_err(|e| format!("{}: {e}", ptxas.display()))?;
    let spills: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("bytes spill stores") && !l.contains(" 0 bytes spill stores, 0 bytes spill loads"))
        .collect();
    if !spills.is_empty() {
        return Err(format!("ptxas reports spills ({}):\n{}", ptxas.display(), spills.join("\n")));
    }
    let kernels = report.matches("Compiling entry function").count();
    println!("xtask: ptxas     {kernels} kernel compilations, 0 spill bytes ({})", ptxas.display());
    Ok(())
}

/// The most recently modified file called `name` under `dir`.
fn newest(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if e.file_name() == name {
                let t = e.metadata().and_then(|m| m.modified()).ok();
                if let Some(t) = t {
                    if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                        best = Some((t, p));
                    }
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

fn cargo(root: &Path, tc: &Toolchain) -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root).envs(tc.envs());
    c
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn run_capture(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
    }
}
