//! Small helpers shared by the commands.

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tf_host::{Device, TokenformerConfig};

use crate::DeviceArg;

/// The commands' error: one readable line.
pub type CliResult<T> = Result<T, String>;

/// Writes `args` to stdout and flushes: a closed pipe (`| head`) or a full disk
/// (`> /dev/full`) is an error naming stdout, never a panic. The `out!` and
/// `outln!` macros call this and return the error with `?`.
pub fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) -> CliResult<()> {
    let mut o = std::io::stdout().lock();
    o.write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| o.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

/// `print!` that returns a closed or full stdout as the command's error.
macro_rules! out {
    ($($arg:tt)*) => { $crate::util::write_stdout(format_args!($($arg)*), false)? };
}

/// `println!` that returns a closed or full stdout as the command's error.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::util::write_stdout(format_args!($($arg)*), true)? };
}
pub(crate) use {out, outln};

/// `msg` on one line (newlines joined with "; ").
pub fn one_line(msg: &str) -> String {
    msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// Any displayable error as a string (for `?` on tf-host / tf-ref results).
pub fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The device `arg` names: CUDA device 0, the emulator, or (auto) CUDA when
/// usable else the emulator. Also returns why CUDA was not taken, for auto.
pub fn device(arg: DeviceArg) -> CliResult<(Device, Option<String>)> {
    match arg {
        DeviceArg::Emulator => Ok((Device::emulator(), None)),
        DeviceArg::Cuda => Device::cuda(0).map(|d| (d, None)).map_err(|e| format!("--device cuda: {e}")),
        DeviceArg::Auto => match Device::cuda(0) {
            Ok(d) => Ok((d, None)),
            Err(e) => Ok((Device::emulator(), Some(e.to_string()))),
        },
    }
}

/// A released config by name, as a one-line error listing the names.
pub fn config(name: &str) -> CliResult<TokenformerConfig> {
    TokenformerConfig::by_name(name).map_err(s)
}

/// A progress bar of `len` steps on stderr (hidden when stderr is not a
/// terminal), with a message.
pub fn bar(len: u64, msg: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg:<40} [{bar:30}] {pos}/{len} {elapsed}") {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(msg.to_string());
    b.enable_steady_tick(Duration::from_millis(120));
    b
}

/// A spinner with a message, for one long step.
pub fn spinner(msg: &str) -> ProgressBar {
    let b = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        b.set_style(style);
    }
    b.set_message(msg.to_string());
    b.enable_steady_tick(Duration::from_millis(120));
    b
}

/// A fresh seed (time and process id) when none is given.
pub fn seed_or_fresh(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ u64::from(std::process::id()).rotate_left(32)
    })
}

/// "1,2,3" as token ids.
pub fn parse_ids(s: &str) -> CliResult<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().map_err(|_| format!("--tokens: {t:?} is not a token id (a non-negative integer)")))
        .collect()
}

/// "a,b,c" as three counts; errors name the flag.
pub fn parse_slots(flag: &str, s: &str) -> CliResult<(usize, usize, usize)> {
    let v: Vec<usize> = s
        .split(',')
        .map(|t| t.trim().parse::<usize>().map_err(|_| format!("{flag}: {t:?} is not a count")))
        .collect::<CliResult<_>>()?;
    match v[..] {
        [q, p, f] => Ok((q, p, f)),
        _ => Err(format!("{flag} needs three counts QKV,PROJ,FFN, got {s:?}")),
    }
}

/// Checks before any compute that `path` can be written (its directory exists
/// and takes a new file), as a one-line error naming `flag`.
pub fn check_output(flag: &str, path: &std::path::Path) -> CliResult<()> {
    tf_ref::atomic::check_writable(path).map_err(|e| format!("{flag}: {e}"))
}

/// Replaces `path` with `bytes` atomically (temporary file, fsync, rename): on
/// error the old file is unchanged.
pub fn write_file(flag: &str, path: &std::path::Path, bytes: &[u8]) -> CliResult<()> {
    tf_ref::atomic::write_atomic(path, bytes).map_err(|e| format!("{flag}: {e}"))
}

/// If the raw arguments hold a negative number after a space (`--temperature -1`),
/// the one-line message saying how to pass it (`--temperature=-1`).
pub fn negative_value_hint(args: &[String]) -> Option<String> {
    args.windows(2).find_map(|w| {
        let (flag, value) = (&w[0], &w[1]);
        let negative = value.len() > 1
            && value.starts_with('-')
            && value[1..].starts_with(|c: char| c.is_ascii_digit() || c == '.')
            && value.parse::<f64>().is_ok();
        (flag.starts_with("--") && !flag.contains('=') && negative).then(|| {
            format!(
                "{flag} {value}: a value starting with '-' after a space reads as a flag; write {flag}={value} \
                 (see tokenformer --help)"
            )
        })
    })
}

/// Human-readable parameter count.
pub fn millions(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else {
        format!("{:.1}k", n as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(parse_ids("1, 2,3").unwrap(), vec![1, 2, 3]);
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids("-1").is_err());
        assert_eq!(parse_slots("--to-slots", "128,128,256").unwrap(), (128, 128, 256));
        assert!(parse_slots("--slots", "1,2").unwrap_err().contains("--slots"));
        assert_eq!(one_line("a\n\n b \nc"), "a; b; c");
    }

    #[test]
    fn negative_values_after_a_space_get_a_hint() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let hint = negative_value_hint(&args(&["generate", "--temperature", "-1"])).unwrap();
        assert!(hint.contains("--temperature=-1"), "{hint}");
        assert!(negative_value_hint(&args(&["--max-new", "-0.5"])).unwrap().contains("--max-new=-0.5"));
        assert_eq!(negative_value_hint(&args(&["--temperature=-1"])), None);
        assert_eq!(negative_value_hint(&args(&["--preserving", "--device", "cuda"])), None);
        assert_eq!(negative_value_hint(&args(&["--tokens", "-x"])), None);
    }
}
