//! The production kernels under the emulator's racecheck, memcheck and initcheck
//! (`TF_EMU_CHECK=all`), as part of `cargo xtask test`: a few existing tests per
//! kernel family, chosen for their shapes with tails in every dimension, rerun with
//! every launch checked. Any finding fails its test with both source lines. The
//! emulator logs each checked launch (`TF_EMU_CHECK_LOG`); every kernel source of
//! `kernels/*.cu` must have had at least one of its kernels checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::limits;

/// (test target, test-name filters): each family once, with tails.
const CHECKED: &[(&str, &[&str])] = &[
    (
        "pattention",
        &[
            "every_norm_and_dtype_with_tails",
            "decode_and_tiled_paths_at_their_boundary",
            "strided_views_with_partial_chunks",
            "decode_product_one_split_over_d_in",
            "out_kernel_row_tiles",
        ],
    ),
    (
        "pattention_backward",
        &[
            "gradients_match_tf_ref_for_every_norm_and_dtype",
            "rows_at_numerical_edges",
            "tensor_core_products_over_many_k_tiles",
            "norm_backward_row_lengths_across_its_register_caches",
            "kept_scores_from_the_split_decode_path",
        ],
    ),
    (
        "block_backward",
        &["layer_norm_backward_matches_tf_ref", "embedding_backward_matches_tf_ref", "cross_entropy_matches_tf_ref"],
    ),
    (
        "attention",
        &[
            "head_dims_dtypes_causal_and_not",
            "tails_in_both_sequence_lengths",
            "fewer_queries_than_keys_decode_and_chunked_prefill",
            "decode_kernel_for_up_to_16_query_rows",
        ],
    ),
    (
        "attention_backward",
        &[
            "gradients_match_tf_ref",
            "strided_operands",
            "training_forward_matches_tf_ref",
            "tensor_core_path_matches_tf_ref",
        ],
    ),
    ("grow", &["growth_matches_tf_ref_with_tails", "unaligned_pitches_take_the_scalar_path"]),
    (
        "block_ops",
        &[
            "layer_norm_matches_tf_ref",
            "rotary_matches_tf_ref",
            "embedding_matches_plain_rust",
            "add_assign_matches_plain_rust",
        ],
    ),
    ("baseline", &["linear_matches_tf_ref_with_tails", "standalone_norm_matches_tf_ref"]),
    ("model", &["kv_cache_decode_equals_full_forward"]),
    ("decode_graph", &["graph_steps_run_under_the_emulators_checks"]),
    ("adamw", &["three_steps_match_tf_ref_with_tails_and_clipping", "unaligned_views_take_the_scalar_path"]),
];

/// Runs the checked tests (`cargo` builds the command with the toolchain's
/// environment) and verifies the family coverage.
pub fn run(root: &Path, cargo: impl FnOnce() -> Command) -> Result<(), String> {
    let dir = root.join("target");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = dir.join("tf_emu_checked_launches.txt");
    let _ = std::fs::remove_file(&log);
    let exes = test_executables(root, cargo())?;
    for (target, filters) in CHECKED {
        println!("xtask: checked   {target}: {}", filters.join(", "));
        let exe = exes.get(*target).ok_or_else(|| format!("cargo built no test executable for tests/{target}.rs"))?;
        let mut cmd = Command::new(exe);
        cmd.current_dir(root).args(*filters);
        cmd.env("TF_EMU_CHECK", "all").env("TF_EMU_CHECK_LOG", &log);
        limits::run_test_binary(&mut cmd, &format!("tests/{target}.rs ({})", exe.display()))?;
    }
    let text = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e} (no launch was checked?)", log.display()))?;
    let checked: BTreeSet<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let mut missing = Vec::new();
    let mut families = 0;
    for (file, kernels) in kernel_families(&root.join("kernels"))? {
        families += 1;
        if !kernels.iter().any(|k| checked.contains(k.as_str())) {
            missing.push(format!("{file} ({})", kernels.join(", ")));
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "no kernel of these sources ran under the emulator's checks: {}; add a test of them to xtask/src/checked.rs",
            missing.join("; ")
        ));
    }
    println!(
        "xtask: checked   {} launches of {} kernels, every one of the {families} kernel sources covered, no finding",
        text.lines().count(),
        checked.len()
    );
    Ok(())
}

/// The executables of the root package's integration tests (`tests/NAME.rs`, by
/// NAME) that `cargo test --workspace` built. Asked of cargo with the main run's
/// arguments, so nothing is compiled again: a narrower selection such as
/// `--test NAME` activates fewer dev-dependency features and rebuilds half the
/// dependency graph (a minute or two on two cores).
fn test_executables(root: &Path, mut cargo: Command) -> Result<BTreeMap<String, PathBuf>, String> {
    cargo.args(["test", "--workspace", "--no-run", "--message-format=json"]);
    let out = cargo.output().map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cargo:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    let tests = root.join("tests");
    let mut exes = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (Some(src), Some(exe)) = (json_str(line, "src_path"), json_str(line, "executable")) else { continue };
        let src = PathBuf::from(src);
        if src.parent() == Some(tests.as_path()) {
            if let Some(name) = src.file_stem() {
                exes.insert(name.to_string_lossy().into_owned(), PathBuf::from(exe));
            }
        }
    }
    Ok(exes)
}

/// The string value of `"key":"..."` in one line of cargo's JSON (paths here hold
/// no escaped quotes; a value with a backslash escape is not taken).
fn json_str<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.split(&format!("\"{key}\":\"")).nth(1)?;
    let value = rest.split('"').next()?;
    (!value.contains('\\')).then_some(value)
}

/// The `extern "C"` kernels of each `kernels/*.cu`, by file name.
fn kernel_families(dir: &Path) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<_> =
        rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "cu")).collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let names: Vec<String> =
            text.lines().filter(|l| l.starts_with("extern \"C\"")).filter_map(kernel_name).collect();
        if !names.is_empty() {
            out.push((f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), names));
        }
    }
    Ok(out)
}

/// `extern "C" __global__ void __launch_bounds__(128) NAME(...)` -> NAME.
fn kernel_name(line: &str) -> Option<String> {
    let rest = line.split_once("void ")?.1.trim_start();
    let rest = match rest.strip_prefix("__launch_bounds__") {
        Some(r) => r.split_once(')')?.1.trim_start(),
        None => rest,
    };
    let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::{json_str, kernel_name};

    #[test]
    fn json_strings_of_cargo_messages() {
        let l = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"grow","src_path":"/r/tests/grow.rs"},"executable":"/r/target/debug/deps/grow-1a2b","fresh":true}"#;
        assert_eq!(json_str(l, "src_path"), Some("/r/tests/grow.rs"));
        assert_eq!(json_str(l, "executable"), Some("/r/target/debug/deps/grow-1a2b"));
        assert_eq!(json_str(r#"{"executable":null}"#, "executable"), None);
        assert_eq!(json_str(r#"{"src_path":"C:\\x.rs"}"#, "src_path"), None);
    }

    #[test]
    fn kernel_names_with_and_without_launch_bounds() {
        let a = "extern \"C\" __global__ void __launch_bounds__(128) attn_fwd_f16_hd64(const tf_attn_params p) {";
        assert_eq!(kernel_name(a).as_deref(), Some("attn_fwd_f16_hd64"));
        assert_eq!(
            kernel_name("extern \"C\" __global__ void grow_rows(const tf_grow_params p)").as_deref(),
            Some("grow_rows")
        );
        assert_eq!(kernel_name("extern \"C\" {"), None);
    }
}
