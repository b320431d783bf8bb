//! `cargo xtask`: the project's entry points.
//!
//! - `setup`: finds (or installs, project-locally) nvcc 13.0 and libclang. Idempotent.
//! - `test`:  setup, the check of the committed bindings against
//!   `kernels/tf_kernels.h`, then `cargo test --workspace` with the toolchain in
//!   the environment (so every test run compiles the kernels through nvcc and
//!   ptxas), the quickstart example on the emulator, and the SASS checks of the
//!   compiled fatbin.
//! - `bindgen`: regenerates `kernels/tf_kernels_sys.rs` from the header
//!   (`--check`: fails when they disagree).
//! - `bench`: setup, then `tokenformer bench` (the Pattention-vs-dense table,
//!   attention and growth on the GPU; without one, the emulator check);
//!   `bench --criterion` runs the criterion benches instead.
//! - `perf`: the GPU-free performance model (estimates): SASS analysis and
//!   time estimates at the TokenFormer shapes (docs/performance-model.md).

mod bindings;
mod checked;
mod limits;
mod perf;
#[path = "../../build/toolchain.rs"]
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
        Some("bindgen") => return bindgen_command(&root, &args[1..]),
        Some("bench") => bench(&root, &args[1..]),
        Some("device-kit") => device_kit(&root),
        Some("sass") => sass_checks(&root),
        Some("perf") => perf::command(&root, &args[1..]),
        Some("features") => features(&root),
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
  test [args]     setup, bindgen --check, cargo test --workspace [args], the
                  quickstart example on the emulator, then the SASS checks;
                  a test binary running past TF_TEST_BINARY_TIMEOUT_S (600 s) or the
                  whole run past TF_TEST_TIMEOUT_S (2700 s) is killed and named
  bench [args]    setup, then `tokenformer bench [args]` (release build; without a
                  GPU it says so and runs `tokenformer check` on the emulator);
                  `bench --criterion [args]` runs `cargo bench [args]` instead
  bindgen         regenerate kernels/tf_kernels_sys.rs (the Rust mirror of
                  kernels/tf_kernels.h) with bindgen; needs libclang, which it
                  installs like setup when missing
  bindgen --check fail when the committed bindings and the header disagree
                  (exit code 3 when no libclang is found)
  sass            check the last built fatbin: ptxas spills, HMMA/LDSM/LDGSTS,
                  the issue ratchet (instructions per HMMA of each hot loop)
  perf [args]     performance model, no GPU needed (estimates): SASS analysis
                  and times at the TokenFormer shapes on A100/H100/H200;
                  [--fatbin PATH] [--json FILE] [--calibrate RESULTS] [--gpu NAME]
  features        type-check tf-host with its non-default cudarc features
                  (a CUDA 12 version, dynamic-linking) and tests/outside-crate
                  beside a cudarc with dynamic-linking, as candle uses it; then
                  build and run tests/outside-crate with nvcc, and without nvcc
                  (fails, saying what to do; with emulator-only: runs)
  device-kit      build release test and bench binaries, the fatbin, the ptxas
                  report and the run script into device-kit/ (< 64 MiB), to run
                  on any GPU machine: device-kit/run.sh OUT_DIR";

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

    let libclang = ensure_libclang(root)?;
    Ok(Toolchain { nvcc: Some(nvcc), libclang: Some(libclang) })
}

/// The folder of libclang (for bindgen), installed as setup does when missing.
fn ensure_libclang(root: &Path) -> Result<PathBuf, String> {
    let libclang = match toolchain::find_libclang(root) {
        Some(p) => p,
        None => {
            install_libclang(root)?;
            toolchain::find_libclang(root).ok_or("installed libclang but no libclang.so was found afterwards")?
        }
    };
    println!("xtask: libclang  {}", libclang.display());
    Ok(libclang)
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
    if let Some(dir) = &tc.libclang {
        use_libclang(dir);
    }
    check_bindings(root)?;
    limits::run_tests(cargo(root, &tc).args(["test", "--workspace"]).args(extra))?;
    quickstart(root, &tc)?;
    // With test filters or options given, only what was asked for runs.
    if extra.is_empty() {
        checked::run(root, || cargo(root, &tc))?;
    }
    sass_checks(root)
}

/// The README's example program on the emulator (about a second), under the
/// test limits. Its binary is the one `cargo test --workspace` just built:
/// `cargo build --workspace` resolves the same features, so nothing is compiled
/// again (`cargo run -p tf-host` resolves tf-host's alone and rebuilt tf-host and
/// its dependents, about 30 s).
fn quickstart(root: &Path, tc: &Toolchain) -> Result<(), String> {
    let args = ["--device", "emulator"];
    let json = run_capture(cargo(root, tc).args([
        "build",
        "--quiet",
        "--workspace",
        "--profile",
        "test",
        "--example",
        "quickstart",
        "--message-format=json",
    ]))?;
    let exe = example_executable(&json, "quickstart")
        .ok_or("cargo built the quickstart example but named no executable for it")?;
    println!("xtask: quickstart {} {}", exe.display(), args.join(" "));
    limits::run_program(Command::new(&exe).args(args).current_dir(root), "the quickstart example")
}

/// The executable of the example `name` in cargo's `--message-format=json` output.
fn example_executable(json: &str, name: &str) -> Option<PathBuf> {
    json.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|m| {
        let target = m.get("target")?;
        let is_example = target.get("kind")?.as_array()?.iter().any(|k| k == "example");
        if m.get("reason")? != "compiler-artifact" || !is_example || target.get("name")? != name {
            return None;
        }
        m.get("executable")?.as_str().map(PathBuf::from)
    })
}

/// Exit code of `bindgen --check` when no libclang is found (its test then skips).
const NO_LIBCLANG: u8 = 3;

/// `cargo xtask bindgen [--check]`.
fn bindgen_command(root: &Path, args: &[String]) -> ExitCode {
    let check = match args {
        [] => false,
        [a] if a == "--check" => true,
        _ => {
            eprintln!("xtask: usage: cargo xtask bindgen [--check]");
            return ExitCode::FAILURE;
        }
    };
    let libclang = if check {
        toolchain::find_libclang(root).ok_or_else(|| {
            "no libclang found: set LIBCLANG_PATH to the folder of libclang.so, or run `cargo xtask setup`".to_string()
        })
    } else {
        ensure_libclang(root)
    };
    let result = match libclang {
        Ok(dir) => {
            use_libclang(&dir);
            if check {
                check_bindings(root)
            } else {
                bindings::write(root).map(|written| {
                    let state = if written { "written" } else { "unchanged" };
                    println!("xtask: bindgen   {} {state}", bindings::OUTPUT);
                })
            }
        }
        Err(e) if check => {
            eprintln!("xtask: bindgen --check: {e}");
            return ExitCode::from(NO_LIBCLANG);
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Points bindgen (clang-sys reads `LIBCLANG_PATH` when it loads libclang) at
/// `dir`. Called before this process starts any thread.
fn use_libclang(dir: &Path) {
    env::set_var("LIBCLANG_PATH", dir);
}

/// Fails when `kernels/tf_kernels_sys.rs` is not what bindgen makes of the header.
fn check_bindings(root: &Path) -> Result<(), String> {
    match bindings::check(root)? {
        bindings::Check::UpToDate => {
            println!("xtask: bindgen   {} matches {}", bindings::OUTPUT, bindings::HEADER);
            Ok(())
        }
        bindings::Check::Differs { line, committed, generated } => Err(format!(
            "{} does not match {} (run `cargo xtask bindgen` and commit the result); first difference at line \
             {line}:\n  committed: {committed}\n  generated: {generated}",
            bindings::OUTPUT,
            bindings::HEADER
        )),
    }
}

/// `tokenformer bench` (release build) with `extra` passed on; on a machine
/// without a GPU the CLI says so and runs its emulator check. `--criterion`
/// first runs the criterion benches (`cargo bench`) instead.
fn bench(root: &Path, extra: &[String]) -> Result<(), String> {
    let tc = setup(root)?;
    if extra.first().is_some_and(|a| a == "--criterion") {
        return run(cargo(root, &tc).args(["bench", "--workspace"]).args(&extra[1..]));
    }
    run(cargo(root, &tc)
        .args(["run", "--release", "--quiet", "-p", "tf-cli", "--bin", "tokenformer", "--", "bench"])
        .args(extra))
}

/// The crate outside the workspace that uses tf-host by path.
const OUTSIDE: &str = "tests/outside-crate/Cargo.toml";

/// Builds tf-host the ways a program outside the workspace does. Type-checks
/// the feature combinations a program beside another cudarc user needs (no GPU
/// or libcuda needed for a check): a CUDA 12 version instead of the default
/// 13.0, `dynamic-linking`, and `tests/outside-crate` with `beside-candle` (its
/// own cudarc with `dynamic-linking` and CUDA 12.8 in the same graph). Then
/// builds and runs `tests/outside-crate` as its README section says it behaves:
/// with nvcc (kernels built), and where no nvcc can be found, without the
/// `emulator-only` feature (the build fails, saying what to install or set) and
/// with it (built, runs on the emulator). Shares `target/` so unchanged crates
/// are not rebuilt.
fn features(root: &Path) -> Result<(), String> {
    let tc = setup(root)?;
    let checks: [&[&str]; 3] = [
        &["check", "-p", "tf-host", "--no-default-features", "--features", "cuda-12080"],
        &["check", "-p", "tf-host", "--features", "dynamic-linking"],
        &[
            "check",
            "--manifest-path",
            OUTSIDE,
            "--target-dir",
            "target",
            "--no-default-features",
            "--features",
            "beside-candle",
        ],
    ];
    for args in checks {
        println!("xtask: cargo {}", args.join(" "));
        run(cargo(root, &tc).args(args))?;
    }
    println!("xtask: features  tf-host type-checks with CUDA 12.8, dynamic-linking, and beside another cudarc user");

    println!("xtask: cargo run --manifest-path {OUTSIDE} (with nvcc)");
    let out = run_capture(
        cargo(root, &tc)
            .args(["run", "--quiet", "--manifest-path", OUTSIDE, "--target-dir", "target"])
            .env_remove("TF_NO_NVCC"),
    )?;
    print!("{out}");
    if !out.contains("CUDA kernels built: yes") {
        return Err(format!("{OUTSIDE} built with nvcc has no CUDA kernels"));
    }
    outside_without_nvcc(root)
}

/// `tests/outside-crate` where no nvcc can be found: from a copy of the
/// repository's files (the repository's own `.toolchain/` would be found),
/// with `NVCC`, `CUDA_HOME`, `CUDA_PATH` and `TF_NO_NVCC` unset and no nvcc on
/// `PATH`. Without `emulator-only` the build must fail with the message; with
/// it, the program must build and run on the emulator.
fn outside_without_nvcc(root: &Path) -> Result<(), String> {
    let system = Path::new("/usr/local/cuda/bin/nvcc");
    if system.is_file() {
        println!("xtask: features  without nvcc: skipped, {} exists on this machine", system.display());
        return Ok(());
    }
    let repo = root.join("target/no-nvcc/repository");
    if repo.exists() {
        std::fs::remove_dir_all(&repo).map_err(|e| format!("{}: {e}", repo.display()))?;
    }
    let files = run_capture(Command::new("git").current_dir(root).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]))?;
    for rel in files.split('\0').filter(|f| !f.is_empty()) {
        let from = root.join(rel);
        if !from.is_file() {
            continue; // deleted in the working tree, or a submodule
        }
        let to = repo.join(rel);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        copy(&from, &to)?;
    }
    let manifest = repo.join(OUTSIDE);
    let no_nvcc_cargo = |extra: &[&str]| {
        let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.current_dir(&repo)
            .args(["run", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(root.join("target"))
            .args(extra)
            .env_remove("NVCC")
            .env_remove("CUDA_HOME")
            .env_remove("CUDA_PATH")
            .env_remove("TF_NO_NVCC");
        if let Some(path) = env::var_os("PATH") {
            let dirs = env::split_paths(&path).filter(|d| !d.join("nvcc").is_file());
            if let Ok(p) = env::join_paths(dirs) {
                c.env("PATH", p);
            }
        }
        c
    };

    println!("xtask: cargo run --manifest-path {OUTSIDE} (no nvcc: must fail and say what to do)");
    let out = no_nvcc_cargo(&[]).output().map_err(|e| format!("cannot run cargo: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = ["nvcc (the CUDA compiler) was not found", "NVCC=", "CUDA_HOME=", "cargo xtask setup", "emulator-only"]
        .iter()
        .all(|w| stderr.contains(w));
    if out.status.success() || !said {
        return Err(format!(
            "{OUTSIDE} without nvcc: expected a failed build naming nvcc, NVCC, CUDA_HOME, `cargo xtask setup` and \
             `emulator-only`; got {} with:\n{stderr}",
            out.status
        ));
    }
    println!("xtask: features  without nvcc the build fails and says what to install or set");

    println!("xtask: cargo run --manifest-path {OUTSIDE} --features emulator-only (no nvcc)");
    let out = no_nvcc_cargo(&["--features", "emulator-only"]).output().map_err(|e| format!("cannot run cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() || !stdout.contains("CUDA kernels built: no") || !stdout.contains("SIMT emulator") {
        return Err(format!(
            "{OUTSIDE} with emulator-only and no nvcc: expected a run on the emulator; got {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    println!("xtask: features  without nvcc and with emulator-only it builds and runs on the emulator");
    Ok(())
}

/// Tests the GPU run kit carries (the CUDA half of each; the emulator half is
/// skipped there through TF_TEST_BACKENDS=cuda).
const KIT_TESTS: &[&str] = &[
    "pattention",
    "attention",
    "grow",
    "baseline",
    "model",
    "decode_graph",
    "adamw",
    "pattention_backward",
    "attention_backward",
    "block_backward",
    "train_device",
    "trainer",
];
/// tf-host's tests the kit carries: its CUDA interop tests, `#[ignore]`d on
/// machines without a GPU and run there by `run.sh --include-ignored`.
const KIT_HOST_TESTS: &[&str] = &["interop"];
/// Benches the kit carries.
const KIT_BENCHES: &[&str] = &["pattention", "attention", "grow", "decode", "pattention_backward"];
/// Largest kit the GPU machine accepts.
const KIT_LIMIT: u64 = 64 << 20;

/// Builds `device-kit/`: stripped release binaries (gzipped), the fatbin, the
/// ptxas report, PyTorch's baselines and the run script; checks the run script
/// here in its `--check` mode.
fn device_kit(root: &Path) -> Result<(), String> {
    let tc = setup(root)?;
    let kit = root.join("device-kit");
    if kit.exists() {
        std::fs::remove_dir_all(&kit).map_err(|e| format!("{}: {e}", kit.display()))?;
    }
    for sub in ["tests", "benches", "tools"] {
        std::fs::create_dir_all(kit.join(sub)).map_err(|e| format!("{}: {e}", kit.display()))?;
    }
    let mut tests = cargo(root, &tc);
    tests.args(["test", "--release", "--no-run", "--message-format=json"]);
    for t in KIT_TESTS {
        tests.args(["--test", t]);
    }
    // tf-host's CUDA-only tests (ignored without a GPU; run.sh includes them).
    let mut host_tests = cargo(root, &tc);
    host_tests.args(["test", "--release", "--no-run", "--message-format=json", "-p", "tf-host"]);
    for t in KIT_HOST_TESTS {
        host_tests.args(["--test", t]);
    }
    let mut benches = cargo(root, &tc);
    benches.args(["bench", "--no-run", "--message-format=json"]);
    for b in KIT_BENCHES {
        benches.args(["--bench", b]);
    }
    // The CLI, for a short training run at 150m scale (tokens/s and MFU).
    let mut tools = cargo(root, &tc);
    tools.args(["build", "--release", "--message-format=json", "-p", "tf-cli", "--bin", "tokenformer"]);
    for (cmd, names, dir) in [
        (&mut tests, KIT_TESTS, "tests"),
        (&mut host_tests, KIT_HOST_TESTS, "tests"),
        (&mut benches, KIT_BENCHES, "benches"),
        (&mut tools, &["tokenformer"][..], "tools"),
    ] {
        // The binaries load the kit's one fatbin (run.sh sets TF_FATBIN) instead
        // of each embedding a copy: 15 copies of it were most of the kit.
        cmd.env("TF_FATBIN_EXTERNAL", "1")
            .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
            .env("CARGO_PROFILE_BENCH_STRIP", "symbols")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_BENCH_DEBUG", "false");
        let json = run_capture(cmd)?;
        for name in names {
            let exe =
                executable_of(&json, name).ok_or_else(|| format!("cargo built no executable for {dir}/{name}"))?;
            let to = kit.join(dir).join(name);
            copy(&exe, &to)?;
            // gzip: the binaries (each embeds the emulator) compress about 3x;
            // run.sh unpacks them into its output folder.
            run(Command::new("gzip").arg("-9").arg("-n").arg(&to))?;
        }
    }
    let fatbin = newest(&root.join("target/release"), "tf_kernels.fatbin")
        .ok_or("no release fatbin: the kernels were not compiled by nvcc")?;
    copy(&fatbin, &kit.join("tf_kernels.fatbin"))?;
    if let Some(dir) = fatbin.parent() {
        copy(&dir.join("ptxas.txt"), &kit.join("ptxas.txt"))?;
    }
    copy(&root.join("benches/torch_baseline.py"), &kit.join("torch_baseline.py"))?;
    copy(&root.join("xtask/kit/summarize.py"), &kit.join("summarize.py"))?;
    copy(&root.join("xtask/kit/run.sh"), &kit.join("run.sh"))?;
    // The training run's corpus: the project's own documentation, read as bytes.
    let mut corpus = std::fs::read(root.join("README.md")).map_err(|e| format!("README.md: {e}"))?;
    for doc in ["design", "kernel-design", "performance-model", "tokenformer", "training"] {
        let path = root.join("docs").join(format!("{doc}.md"));
        corpus.extend(std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    std::fs::write(kit.join("corpus.txt"), &corpus).map_err(|e| format!("corpus.txt: {e}"))?;
    let size = dir_size(&kit);
    println!("xtask: device-kit {} ({:.1} MiB)", kit.display(), size as f64 / (1u64 << 20) as f64);
    if size > KIT_LIMIT {
        return Err(format!("device-kit is {size} bytes, over the {KIT_LIMIT}-byte limit"));
    }
    // The run script's GPU check, here: on a machine without a GPU it must stop
    // with a clear message and exit code 2; with one, --check exits 0.
    let check_out = root.join("target/kit-check");
    let out = Command::new(kit.join("run.sh"))
        .arg(&check_out)
        .arg("--check")
        .output()
        .map_err(|e| format!("cannot run run.sh: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    match out.status.code() {
        Some(0) | Some(2) if text.contains("GPU") => Ok(()),
        other => Err(format!("run.sh --check ended with {other:?} and no GPU verdict")),
    }
}

/// The `"executable"` of the cargo JSON message for target `name`.
fn executable_of(json: &str, name: &str) -> Option<PathBuf> {
    json.lines()
        .filter(|l| l.contains(&format!("\"name\":\"{name}\"")) && l.contains("\"executable\":\""))
        .filter_map(|l| {
            let rest = l.split("\"executable\":\"").nth(1)?;
            Some(PathBuf::from(rest.split('"').next()?))
        })
        .next_back()
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to).map(|_| ()).map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
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
    // One disassembly (about 200 MB of text, 13 s) for both checks.
    let Some(sass) = perf::sass_of(root, &fatbin).transpose()? else {
        println!("xtask: SASS      skipped, and the ratchet with it: no cuobjdump beside nvcc");
        return Ok(());
    };
    sass_instructions(&sass)?;
    perf::sass_check(root, &sass, &report)
}

/// Tensor-core kernels (16-bit Pattention products and attention) must use the
/// tensor cores (HMMA), ldmatrix (LDSM) and cp.async (LDGSTS) in the SASS of
/// every arch, as `cuobjdump -sass` shows (`sass`).
fn sass_instructions(sass: &str) -> Result<(), String> {
    // the kernels of the ratchet's tensor-core families (one list of them)
    let needs_tensor_cores = |name: &str| perf::ratchet::family(name).is_some();
    // (kernel name, its SASS) for every function of every arch
    let mut functions: Vec<(String, String)> = Vec::new();
    for line in sass.lines() {
        if let Some(name) = line.trim().strip_prefix("Function : ") {
            functions.push((name.trim().to_string(), String::new()));
        } else if let Some((_, body)) = functions.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let mut checked = 0;
    let mut missing = Vec::new();
    for (name, body) in functions.iter().filter(|(n, _)| needs_tensor_cores(n)) {
        checked += 1;
        for op in ["HMMA", "LDSM", "LDGSTS"] {
            if !body.contains(op) {
                missing.push(format!("{name}: no {op}"));
            }
        }
    }
    if checked == 0 {
        return Err("SASS check found no tensor-core kernel in the fatbin".into());
    }
    if !missing.is_empty() {
        return Err(format!("SASS check failed:\n{}", missing.join("\n")));
    }
    println!("xtask: SASS      HMMA, LDSM, LDGSTS present in all {checked} tensor-core kernel compilations");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// cargo's JSON lines for a build of tf-host's examples: the quickstart's
    /// executable is found, a library artifact or another example is not taken.
    #[test]
    fn finds_the_example_executable_in_cargo_json() {
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"quickstart"},"executable":null}"#;
        let other = r#"{"reason":"compiler-artifact","target":{"kind":["example"],"name":"generate"},"executable":"/t/generate"}"#;
        let ex = r#"{"reason":"compiler-artifact","target":{"kind":["example"],"name":"quickstart"},"executable":"/t/examples/quickstart"}"#;
        let done = r#"{"reason":"build-finished","success":true}"#;
        let json = [lib, "not json", other, ex, done].join("\n");
        assert_eq!(example_executable(&json, "quickstart"), Some(PathBuf::from("/t/examples/quickstart")));
        assert_eq!(example_executable(&[lib, other, done].join("\n"), "quickstart"), None);
    }
}
