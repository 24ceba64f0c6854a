//! The conformance corpus: every case under `conformance/cases/` is built
//! by terrace and compared with what `kubectl kustomize` (kustomize v5.5.0)
//! printed for it (`expected.yaml`: the same objects, in the same order,
//! with the same content; formatting may differ). Error cases must fail
//! with a message containing `error.txt`. Regenerate the expected outputs
//! with `python3 crates/terrace-kustomize/tests/conformance/make_cases.py`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use terrace_kustomize::{DiskFs, build};

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/cases");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("the corpus exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

fn run(case: &Path) -> Result<(), String> {
    let target = match std::fs::read_to_string(case.join("build")) {
        Ok(b) => case.join(b.trim()),
        Err(_) => case.to_owned(),
    };
    let got = build(&DiskFs, &target);
    if let Ok(want) = std::fs::read_to_string(case.join("error.txt")) {
        return match got {
            Ok(_) => Err("built, but kustomize rejects it".into()),
            Err(e) if e.to_string().contains(want.trim()) => Ok(()),
            Err(e) => Err(format!("error `{e}` does not say `{}`", want.trim())),
        };
    }
    let got = got.map_err(|e| format!("failed: {e}"))?;
    let expected_text =
        std::fs::read_to_string(case.join("expected.yaml")).map_err(|e| e.to_string())?;
    let expected: Vec<Value> =
        terrace_yaml::tree::parse_stream(&expected_text, Path::new("expected.yaml"))
            .map_err(|e| e.to_string())?
            .iter()
            .map(terrace_yaml::tree::Node::to_json)
            .filter(|v| !v.is_null())
            .collect();
    if got.len() != expected.len() {
        return Err(format!(
            "{} objects, kustomize has {}",
            got.len(),
            expected.len()
        ));
    }
    for (i, (g, w)) in got.iter().zip(&expected).enumerate() {
        if g != w {
            return Err(format!(
                "object {i} differs:\n--- terrace\n{}--- kustomize\n{}",
                terrace_yaml::to_string(g),
                terrace_yaml::to_string(w)
            ));
        }
    }
    Ok(())
}

#[test]
fn the_corpus_matches_kubectl_kustomize() {
    let cases = cases();
    let mut failed = Vec::new();
    for case in &cases {
        if let Err(why) = run(case) {
            failed.push(format!(
                "{}: {why}",
                case.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
        }
    }
    let passed = cases.len() - failed.len();
    println!(
        "kustomize conformance: {passed}/{} cases pass ({:.1} %)",
        cases.len(),
        100.0 * passed as f64 / cases.len() as f64
    );
    assert!(cases.len() >= 50, "the corpus has {} cases", cases.len());
    assert!(
        failed.is_empty(),
        "{} failing:\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}
