//! Golden files: write, read back, recompute.

use std::path::PathBuf;
use tf_ref::golden::{read, verify, write_all};
use tf_ref::{attention, pattention, MatRef, Norm, PattentionOpts, Tensor4Ref};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("tf-ref-golden-{tag}-{}-{nanos}", std::process::id()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mat<'a>(t: &'a tf_ref::golden::Tensors, name: &str) -> MatRef<'a, f32> {
    let (s, d) = &t[name];
    assert_eq!(s.len(), 2, "{name}");
    MatRef::new(d, s[0], s[1]).unwrap()
}

fn t4<'a>(t: &'a tf_ref::golden::Tensors, name: &str) -> Tensor4Ref<'a, f32> {
    let (s, d) = &t[name];
    Tensor4Ref::new(d, [s[0], s[1], s[2], s[3]]).unwrap()
}

#[test]
fn write_read_recompute() {
    let dir = TempDir::new("rt");
    let seed = 12345;
    let paths = write_all(&dir.0, seed).unwrap();
    let names: Vec<String> = paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in [
        "pattention_l2_norm_gelu.safetensors",
        "pattention_gelu_l2_norm.safetensors",
        "pattention_softmax.safetensors",
        "pattention_l2_norm_gelu_nref64.safetensors",
        "attention_causal.safetensors",
        "attention_noncausal.safetensors",
        "attention_causal_tq5_tk29.safetensors",
        "grow_zeros.safetensors",
        "grow_normal.safetensors",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    for p in &paths {
        assert_eq!(verify(p).unwrap(), 0.0, "{}", p.display());
        let (t, meta) = read(p).unwrap();
        assert_eq!(meta["seed"], seed.to_string());
        for (name, (shape, data)) in &t {
            assert_eq!(shape.iter().product::<usize>(), data.len(), "{name}");
            assert!(data.iter().all(|v| v.is_finite()), "{name} has non-finite values");
        }
        // Independent recomputation through the public API (not `verify`).
        match meta["op"].as_str() {
            "pattention" => {
                let opts = PattentionOpts {
                    norm: meta["norm"].parse::<Norm>().unwrap(),
                    n_ref: meta.get("n_ref").map(|s| s.parse().unwrap()),
                    eps: 0.0,
                };
                assert_eq!(t["x"].0, vec![37, 48]);
                assert_eq!(t["k_p"].0, vec![70, 48]);
                assert_eq!(t["v_p"].0, vec![70, 40]);
                let y = pattention(mat(&t, "x"), mat(&t, "k_p"), mat(&t, "v_p"), &opts).unwrap();
                assert_eq!(y.to_vec::<f32>(), t["y"].1);
                assert!(t["y"].1.iter().any(|&v| v != 0.0));
            }
            "attention" => {
                let causal: bool = meta["causal"].parse().unwrap();
                let scale: f64 = meta["scale"].parse().unwrap();
                assert_eq!(scale, 0.25);
                let out = attention(t4(&t, "q"), t4(&t, "k"), t4(&t, "v"), causal, None).unwrap();
                let o: Vec<f32> = out.o.iter().map(|&v| v as f32).collect();
                let lse: Vec<f32> = out.lse.iter().map(|&v| v as f32).collect();
                assert_eq!(o, t["o"].1);
                assert_eq!(lse, t["lse"].1);
                let [b, tq, h, _] = out.shape_o;
                assert_eq!(t["lse"].0, vec![b, h, tq]);
            }
            "grow" => {
                let (old, new) = (&t["old"], &t["new"]);
                assert_eq!((old.0.clone(), new.0.clone()), (vec![50, 24], vec![77, 24]));
                assert!(old.1.iter().zip(&new.1).all(|(a, b)| a.to_bits() == b.to_bits()));
                let tail = &new.1[old.1.len()..];
                match meta["init"].as_str() {
                    "zeros" => assert!(tail.iter().all(|&v| v == 0.0)),
                    "normal" => {
                        assert_eq!(meta["std"], "0.02");
                        for (i, v) in tail.iter().enumerate() {
                            let e = (old.1.len() + i) as u64;
                            assert_eq!(*v, tf_ref::philox_normal(seed, e, 0.02));
                        }
                    }
                    other => panic!("init {other}"),
                }
            }
            other => panic!("op {other}"),
        }
    }
    // Same seed, same contents (not necessarily the same bytes: the safetensors
    // crate writes the metadata map in hash order); another seed, other inputs.
    let again = TempDir::new("again");
    let paths2 = write_all(&again.0, seed).unwrap();
    for (a, b) in paths.iter().zip(&paths2) {
        let (ta, ma) = read(a).unwrap();
        let (tb, mb) = read(b).unwrap();
        assert!(ta == tb && ma == mb, "{} differs between runs", a.display());
    }
    let other = TempDir::new("other");
    let paths3 = write_all(&other.0, seed + 1).unwrap();
    assert!(read(&paths[0]).unwrap().0["x"].1 != read(&paths3[0]).unwrap().0["x"].1);
}

#[test]
fn pinned_n_ref_metadata_only_when_pinned() {
    let dir = TempDir::new("meta");
    let paths = write_all(&dir.0, 1).unwrap();
    for p in &paths {
        let (_, meta) = read(p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy();
        if name.starts_with("pattention") {
            assert_eq!(meta.contains_key("n_ref"), name.contains("nref64"), "{name}");
            if name.contains("nref64") {
                assert_eq!(meta["n_ref"], "64");
            }
        }
        if name.starts_with("attention") {
            assert_eq!(meta["causal"], (!name.contains("noncausal")).to_string());
        }
    }
}

#[test]
fn read_and_verify_report_bad_files() {
    let dir = TempDir::new("bad");
    std::fs::create_dir_all(&dir.0).unwrap();
    let missing = dir.0.join("nope.safetensors");
    assert!(matches!(read(&missing), Err(tf_ref::Error::Io(_))));
    let garbage = dir.0.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    assert!(matches!(read(&garbage), Err(tf_ref::Error::SafeTensors(_))));
    // A tampered output is detected by verify.
    let paths = write_all(&dir.0, 3).unwrap();
    let p = &paths[0];
    let mut bytes = std::fs::read(p).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x40; // flips an exponent bit of the last stored value
    std::fs::write(p, &bytes).unwrap();
    let d = verify(p).unwrap();
    assert!(d > 0.0 || d.is_nan(), "tampering not detected: {d}");
}
