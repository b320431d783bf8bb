//! `cargo test` under time limits, so that `cargo xtask test` always ends.
//!
//! cargo's output is passed through line by line while it is read: cargo's
//! "Running <target> (<binary>)" and "Doc-tests <crate>" lines say which test
//! binary runs now, libtest's "test <name> ... ok" lines which of its tests have
//! finished. A binary running past its limit (`TF_TEST_BINARY_TIMEOUT_S`, default
//! 600 s), or the whole command past its own (`TF_TEST_TIMEOUT_S`, default 2700 s,
//! the build included), is killed with its process group, and the error names the
//! binary and its tests that had not finished.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY_LIMIT_S: u64 = 600;
const TOTAL_LIMIT_S: u64 = 2700;

/// Seconds from the environment variable `var`, else `default`.
fn limit(var: &str, default: u64) -> Result<Duration, String> {
    match std::env::var(var) {
        Err(_) => Ok(Duration::from_secs(default)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => Err(format!("{var}={v:?} is not a positive number of seconds")),
        },
    }
}

enum Line {
    Out(String),
    Err(String),
}

/// Echoes `r` to our stdout or stderr line by line and sends each line on.
fn pump<R: Read + Send + 'static>(
    r: R,
    to_err: bool,
    echo: bool,
    tx: mpsc::Sender<Line>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if echo && to_err {
                let _ = std::io::stderr().write_all(&buf);
            } else if echo {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&buf);
                let _ = o.flush();
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if tx.send(if to_err { Line::Err(line) } else { Line::Out(line) }).is_err() {
                break;
            }
        }
    })
}

/// The test binary being run, as cargo announced it.
struct Current {
    what: String,
    binary: Option<String>,
    since: Instant,
    finished: BTreeSet<String>,
}

/// Runs `cmd` (a `cargo test` command) under the limits; Err names what ran past one.
pub fn run_tests(cmd: &mut Command) -> Result<(), String> {
    let per_binary = limit("TF_TEST_BINARY_TIMEOUT_S", BINARY_LIMIT_S)?;
    let total = limit("TF_TEST_TIMEOUT_S", TOTAL_LIMIT_S)?;
    run_limited(cmd, per_binary, total, true)
}

/// Runs one test executable directly (not through cargo: `what` names it in
/// errors) under the same limits as [`run_tests`].
pub fn run_test_binary(cmd: &mut Command, what: &str) -> Result<(), String> {
    let per_binary = limit("TF_TEST_BINARY_TIMEOUT_S", BINARY_LIMIT_S)?;
    let total = limit("TF_TEST_TIMEOUT_S", TOTAL_LIMIT_S)?;
    let first = Current {
        what: what.to_string(),
        binary: Some(cmd.get_program().to_string_lossy().into_owned()),
        since: Instant::now(),
        finished: BTreeSet::new(),
    };
    run_limited_from(cmd, per_binary, total, true, Some(first))
}

/// Runs a program that is not a test binary (an example) under the same limits:
/// past one, the error names `what`, with no test list to consult.
pub fn run_program(cmd: &mut Command, what: &str) -> Result<(), String> {
    let per_binary = limit("TF_TEST_BINARY_TIMEOUT_S", BINARY_LIMIT_S)?;
    let total = limit("TF_TEST_TIMEOUT_S", TOTAL_LIMIT_S)?;
    run_limited_from(cmd, per_binary, total, true, Some(program(what)))
}

/// A running program with no test list, named `what` in errors.
fn program(what: &str) -> Current {
    Current { what: what.to_string(), binary: None, since: Instant::now(), finished: BTreeSet::new() }
}

/// `echo`: pass the command's output through (off in this module's tests, whose
/// stand-in output would otherwise look like cargo's to an enclosing run).
fn run_limited(cmd: &mut Command, per_binary: Duration, total: Duration, echo: bool) -> Result<(), String> {
    run_limited_from(cmd, per_binary, total, echo, None)
}

/// [`run_limited`], with the test binary `first` running from the start (a
/// binary run directly, with no cargo announcing it).
fn run_limited_from(
    cmd: &mut Command,
    per_binary: Duration,
    total: Duration,
    echo: bool,
    first: Option<Current>,
) -> Result<(), String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let out = pump(child.stdout.take().ok_or("no stdout pipe")?, false, echo, tx.clone());
    let err = pump(child.stderr.take().ok_or("no stderr pipe")?, true, echo, tx);
    let mut cur: Option<Current> = first;
    let mut lines_open = true;
    loop {
        if lines_open {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Line::Err(l)) => {
                    let t = l.trim();
                    if let Some(rest) = t.strip_prefix("Running ") {
                        let binary = rest.rsplit_once(" (").map(|(_, b)| b.trim_end_matches(')').to_string());
                        cur = Some(Current {
                            what: rest.to_string(),
                            binary,
                            since: Instant::now(),
                            finished: BTreeSet::new(),
                        });
                    } else if t.starts_with("Doc-tests ") {
                        cur = Some(Current {
                            what: t.to_string(),
                            binary: None,
                            since: Instant::now(),
                            finished: BTreeSet::new(),
                        });
                    }
                }
                Ok(Line::Out(l)) => {
                    if let (Some(c), Some(rest)) = (cur.as_mut(), l.strip_prefix("test ")) {
                        if let Some((name, _)) = rest.rsplit_once(" ... ") {
                            c.finished.insert(name.to_string());
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => lines_open = false,
            }
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for cargo test: {e}"))? {
            drop(rx);
            let _ = out.join();
            let _ = err.join();
            return if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed: {status}")) };
        }
        let over_binary = cur.as_ref().is_some_and(|c| c.since.elapsed() > per_binary);
        let over_total = start.elapsed() > total;
        if over_binary || over_total {
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            let which = if over_binary {
                format!("ran past its {} s limit (TF_TEST_BINARY_TIMEOUT_S)", per_binary.as_secs())
            } else {
                format!("was running when `cargo test` reached its {} s limit (TF_TEST_TIMEOUT_S)", total.as_secs())
            };
            return Err(match &cur {
                Some(c) => format!("test binary {} {which}; {}", c.what, unfinished(c)),
                None => format!("`cargo test` {which} before any test binary started (still building)"),
            });
        }
    }
}

/// SIGKILL to the process group `pgid` (cargo and the test binary it runs: the
/// child was made a group leader with `process_group(0)`). Called with the
/// libc function, not the `kill` program: procps' `kill -KILL -PID` does not take
/// `-PID` as a group and signalled every process of the session instead.
fn kill_group(pgid: u32) {
    match i32::try_from(pgid) {
        // never 0 (our own group) or 1 (-1: every process we may signal)
        Ok(g) if g > 1 => {
            // SAFETY: kill(2) with a negative pid signals that process group only.
            unsafe { libc::kill(-g, libc::SIGKILL) };
        }
        _ => {}
    }
}

/// "tests not finished: a, b" from the binary's own list minus the finished ones.
fn unfinished(c: &Current) -> String {
    let Some(bin) = &c.binary else { return "it has no test list (doc tests, or not a test binary)".into() };
    let listed = Command::new(bin).args(["--list", "--format", "terse"]).stdin(Stdio::null()).output();
    let names: Vec<String> = match listed {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .filter(|n| !c.finished.contains(*n))
            .map(str::to_string)
            .collect(),
        Err(e) => return format!("its tests could not be listed: {e}"),
    };
    match names.len() {
        0 => "every test it lists had finished (the hang is outside the tests)".into(),
        n if n <= 12 => format!("tests not finished: {}", names.join(", ")),
        n => format!("tests not finished ({n}): {}, ...", names[..12].join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake test binary: lists tests `a` and `b`, else sleeps `$1` seconds. Written
    /// once, before any test spawns it (a file being written while another thread
    /// forks cannot be executed: ETXTBSY).
    fn fake_binary() -> &'static std::path::Path {
        static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
        BIN.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("xtask-limits-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let bin = dir.join("fake-test-binary");
            std::fs::write(
                &bin,
                "#!/bin/sh\nif [ \"$1\" = --list ]; then printf 'a: test\\nb: test\\n'; exit 0; fi\nsleep \"$1\"\n",
            )
            .unwrap();
            std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            bin
        })
    }

    /// A stand-in for cargo: announces the fake test binary, reports its test `a`
    /// finished, then runs it for `sleep_s` seconds. The pause keeps the stderr
    /// announcement ahead of the stdout report, as with cargo, where the binary
    /// starts after the announcement (two pipes keep no order between them).
    fn fake_cargo(sleep_s: u32) -> Command {
        let bin = fake_binary().display().to_string();
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "echo '     Running tests/fake.rs ({bin})' >&2; sleep 0.3; echo 'test a ... ok'; exec {bin} {sleep_s}"
        ));
        c
    }

    #[test]
    fn a_test_binary_past_its_limit_is_killed_and_named() {
        let start = Instant::now();
        let e = run_limited(&mut fake_cargo(60), Duration::from_secs(1), Duration::from_secs(120), false).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
        assert!(e.contains("tests/fake.rs") && e.contains("ran past its 1 s limit"), "{e}");
        assert!(e.contains("tests not finished: b"), "{e}");
    }

    #[test]
    fn the_whole_run_has_a_limit_too() {
        let e = run_limited(&mut fake_cargo(60), Duration::from_secs(100), Duration::from_secs(1), false).unwrap_err();
        assert!(e.contains("TF_TEST_TIMEOUT_S") && e.contains("tests/fake.rs"), "{e}");
    }

    #[test]
    fn a_binary_run_directly_has_the_per_binary_limit() {
        let mut cmd = Command::new(fake_binary());
        cmd.arg("60");
        let first = Current {
            what: "tests/direct.rs".into(),
            binary: Some(fake_binary().display().to_string()),
            since: Instant::now(),
            finished: BTreeSet::new(),
        };
        let start = Instant::now();
        let e = run_limited_from(&mut cmd, Duration::from_secs(1), Duration::from_secs(120), false, Some(first))
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
        assert!(e.contains("tests/direct.rs") && e.contains("ran past its 1 s limit"), "{e}");
        assert!(e.contains("tests not finished: a, b"), "{e}");
    }

    #[test]
    fn a_program_past_its_limit_is_killed_and_named() {
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let start = Instant::now();
        let e =
            run_limited_from(&mut cmd, Duration::from_secs(1), Duration::from_secs(120), false, Some(program("ex")))
                .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
        assert!(e.contains("test binary ex ran past its 1 s limit") && e.contains("it has no test list"), "{e}");
    }

    #[test]
    fn a_run_within_its_limits_passes_and_a_failing_one_fails() {
        assert_eq!(run_limited(&mut fake_cargo(0), Duration::from_secs(60), Duration::from_secs(60), false), Ok(()));
        let mut failing = Command::new("sh");
        failing.args(["-c", "exit 3"]);
        assert!(run_limited(&mut failing, Duration::from_secs(60), Duration::from_secs(60), false).is_err());
    }
}
