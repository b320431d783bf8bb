//! What keeps an emulator launch from hanging or killing the test process
//! (kernels/emu/guard.cpp): faults in kernel code become launch errors on any
//! thread, whatever signal stack the thread had; a fault inside the fault handler
//! ends the process with a message instead of recursing; a kernel that never
//! yields is stopped by the watchdog with an error saying where each thread stands.
//!
//! The cases that could kill or hang a process run in a child process (this test
//! binary, re-run on one test with `TF_GUARD_CHILD` set), which the parent kills
//! after a time limit: a regression fails the test instead of hanging the suite.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tf_kernels::emu::{launch, EmuError, LaneOrder, LaunchConfig};
use tf_kernels::sys::tf_test_params;

/// The kernel error modes of `tf_test_errors` used here (kernels/test/emu_misc.cu).
const PAST_DYNAMIC_SMEM: i32 = 16;
const STACK_OVERFLOW: i32 = 17;
const WILD_POINTER: i32 = 18;
const SPIN_WITHOUT_RENDEZVOUS: i32 = 19;

/// Runs mode `mode` of `tf_test_errors` on 6 blocks of `block` threads with
/// `os_threads` workers; the error message, or "" when the launch succeeded.
fn error_of(mode: i32, arg: i32, block: u32, os_threads: u32, timeout_ms: u32) -> String {
    let src = [7u8; 64];
    let mut out = vec![0f32; 1024];
    let mut sink = vec![0u8; 64];
    let p = tf_test_params {
        in0: src.as_ptr() as u64,
        out0: out.as_mut_ptr() as u64,
        out1: sink.as_mut_ptr() as u64,
        mode,
        arg,
        ..Default::default()
    };
    let c = LaunchConfig {
        lane_order: LaneOrder::Forward,
        os_threads,
        dynamic_smem_bytes: 256,
        timeout_ms,
        ..LaunchConfig::new([6, 1, 1], [block, 1, 1])
    };
    // SAFETY: every pointer in `p` is a live buffer of this function, larger than
    // what the kernel touches for 64 threads (out0: one f32 per thread; out1: a flag;
    // in0: 16 bytes); in2 is null on purpose (mode 18 reads through it and must fault).
    match unsafe { launch("tf_test_errors", &c, &p) } {
        Ok(()) => String::new(),
        Err(EmuError { code, message }) => {
            assert_eq!(code, 2, "a kernel failure is code 2: {message}");
            message
        }
    }
}

/// Checks the three fault kinds and a clean launch after them.
fn check_faults(os_threads: u32) {
    assert_eq!(error_of(PAST_DYNAMIC_SMEM, 255, 64, os_threads, 0), "", "the last byte of dynamic shared memory");
    let msg = error_of(PAST_DYNAMIC_SMEM, 256 + 40, 64, os_threads, 0);
    assert!(
        msg.contains("past the end of the block's dynamic shared memory") && msg.contains("thread (9,0,0)"),
        "{msg}"
    );
    let msg = error_of(STACK_OVERFLOW, 0, 64, os_threads, 0);
    assert!(msg.contains("stack overflow") && msg.contains("thread (3,0,0)"), "{msg}");
    let msg = error_of(WILD_POINTER, 0, 64, os_threads, 0);
    assert!(msg.contains("invalid memory access") && msg.contains("thread (40,0,0)"), "{msg}");
    assert_eq!(error_of(0, 0, 64, os_threads, 0), "", "a clean launch after faults");
}

/// The smallest signal stack the kernel accepts on this machine: far too small for
/// a handler that formats messages on it, as Rust's own per-thread stack can be
/// for a frame with AVX-512 state.
fn tiny_sigstack_bytes() -> usize {
    // SAFETY: getauxval only reads the auxiliary vector.
    let min = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    min.max(libc::MINSIGSTKSZ)
}

/// The calling thread's signal stack (`ss_sp`, `ss_size`, `ss_flags`).
fn current_sigstack() -> (usize, usize, i32) {
    // SAFETY: a query (null new stack) into a zeroed stack_t we own.
    unsafe {
        let mut cur: libc::stack_t = std::mem::zeroed();
        assert_eq!(libc::sigaltstack(std::ptr::null(), &mut cur), 0);
        (cur.ss_sp as usize, cur.ss_size, cur.ss_flags)
    }
}

/// Parent side: runs test `name` of this binary in a child with `TF_GUARD_CHILD=1`
/// and `env`, killed after `limit`; returns (exit status, stderr, elapsed).
fn run_child(name: &str, env: &[(&str, &str)], limit: Duration) -> (std::process::ExitStatus, String, Duration) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("TF_GUARD_CHILD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn the child test process");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the child") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child test {name} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    (status, reader.join().unwrap_or_default(), elapsed)
}

/// Parent side of a test that must pass in its child: runs it, checks that it
/// exited 0 and printed `marker` (it reached the end of its checks); returns how
/// long it took.
fn passes_in_child(name: &str, env: &[(&str, &str)], limit: Duration, marker: &str) -> Duration {
    let (st, err, took) = run_child(name, env, limit);
    assert!(st.success(), "child failed ({st}):\n{err}");
    assert!(err.contains(marker), "the child did not reach its checks ({marker:?} missing):\n{err}");
    took
}

fn in_child() -> bool {
    std::env::var_os("TF_GUARD_CHILD").is_some()
}

#[test]
fn faults_are_reported_with_a_tiny_borrowed_signal_stack() {
    if !in_child() {
        let name = "faults_are_reported_with_a_tiny_borrowed_signal_stack";
        passes_in_child(name, &[], Duration::from_secs(120), "child: faults reported");
        return;
    }
    // A thread that already has a tiny alternate signal stack runs the launches
    // itself (one worker: the calling thread), as a Rust thread with its runtime's
    // stack does.
    std::thread::spawn(|| {
        let size = tiny_sigstack_bytes();
        let mut mem = vec![0u8; size];
        // SAFETY: `mem` outlives its use as the signal stack: it is disabled below
        // before `mem` is dropped.
        unsafe {
            let st = libc::stack_t { ss_sp: mem.as_mut_ptr().cast(), ss_flags: 0, ss_size: size };
            assert_eq!(libc::sigaltstack(&st, std::ptr::null_mut()), 0, "install a {size}-byte signal stack");
        }
        check_faults(1);
        check_faults(3);
        // The thread's own signal stack is back after the launches.
        assert_eq!(current_sigstack(), (mem.as_ptr() as usize, size, 0), "the borrowed stack is restored");
        // SAFETY: disables the signal stack (the kernel ignores ss_sp and ss_size).
        unsafe {
            let st = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
            assert_eq!(libc::sigaltstack(&st, std::ptr::null_mut()), 0);
        }
        drop(mem);
    })
    .join()
    .expect("the launching thread");
    eprintln!("child: faults reported");
}

#[test]
fn a_fault_inside_the_fault_handler_ends_the_process_with_a_message() {
    if !in_child() {
        let (st, err, _) =
            run_child("a_fault_inside_the_fault_handler_ends_the_process_with_a_message", &[], Duration::from_secs(60));
        assert_eq!(st.signal(), Some(libc::SIGABRT), "the child must abort ({st}):\n{err}");
        assert!(err.contains("a fault inside the emulator's own fault handler"), "no message:\n{err}");
        assert!(!err.contains("child: survived"), "the child went on after the fault:\n{err}");
        return;
    }
    // SAFETY: a test hook with no preconditions.
    unsafe { tf_kernels::sys::tf_emu_test_fault_in_handler(1) };
    let msg = error_of(WILD_POINTER, 0, 64, 1, 0);
    eprintln!("child: survived: {msg}");
}

#[test]
fn a_kernel_that_never_yields_is_stopped_by_the_watchdog() {
    if !in_child() {
        let name = "a_kernel_that_never_yields_is_stopped_by_the_watchdog";
        let took = passes_in_child(name, &[], Duration::from_secs(60), "child: stopped 2 launches");
        assert!(took < Duration::from_secs(30), "{took:?}");
        return;
    }
    for os_threads in [1, 2] {
        let start = Instant::now();
        let msg = error_of(SPIN_WITHOUT_RENDEZVOUS, 0, 64, os_threads, 300);
        let took = start.elapsed();
        for w in [
            "tf_test_errors",
            "thread (0,0,0)",
            "no progress for 0.3 s",
            "TF_EMU_TIMEOUT_S",
            "thread 0 is running",
            "threads 1-63 are runnable",
        ] {
            assert!(msg.contains(w), "{w:?} missing from: {msg}");
        }
        assert!(took < Duration::from_secs(30), "the watchdog took {took:?}");
        assert_eq!(error_of(0, 0, 64, os_threads, 300), "", "a clean launch after a stopped one");
    }
    eprintln!("child: stopped 2 launches");
}

#[test]
fn the_watchdog_limit_comes_from_tf_emu_timeout_s() {
    if !in_child() {
        let name = "the_watchdog_limit_comes_from_tf_emu_timeout_s";
        let env = [("TF_EMU_TIMEOUT_S", "0.25")];
        let took = passes_in_child(name, &env, Duration::from_secs(60), "child: stopped after");
        assert!(took < Duration::from_secs(30), "{took:?}");
        return;
    }
    let msg = error_of(SPIN_WITHOUT_RENDEZVOUS, 0, 64, 1, 0);
    assert!(msg.contains("no progress for 0.25 s"), "{msg}");
    eprintln!("child: stopped after: {msg}");
}
