//! `kind: helm` through the binary, with the real helm binary: the
//! conformance corpus (`crates/terrace-drivers/tests/helm`, expected
//! outputs made by `helm template` through its `make_cases.py`), values
//! that hold secrets, and remote charts pinned in terrace.lock.
//!
//! Each test needs helm (`TERRACE_HELM`, `helm` on the PATH, or where
//! `scripts/setup-tools.sh` installs it) and says it is skipped without.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{code, command, repo_root, stderr, stdout, write_files};

/// The helm binary the tests run, or `None` (the test says it skips).
pub fn helm(test: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("TERRACE_HELM").map(PathBuf::from),
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("helm"))
                .find(|c| c.is_file())
        }),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/terrace-tools/bin/helm")),
    ];
    match candidates.into_iter().flatten().find(|p| p.is_file()) {
        Some(p) => Some(p),
        None => {
            eprintln!(
                "skipped {test}: no helm binary (set TERRACE_HELM, or run scripts/setup-tools.sh)"
            );
            None
        }
    }
}

/// terrace with `helm` as its helm binary.
pub fn terrace_helm(dir: &Path, helm: &Path, args: &[&str]) -> std::process::Output {
    command(dir)
        .env("TERRACE_HELM", helm)
        .args(args)
        .output()
        .expect("terrace runs")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The objects of a YAML stream, empty documents left out.
fn objects_of(yaml: &str) -> Vec<Value> {
    terrace_yaml::tree::parse_stream_with(yaml, Path::new("x"), terrace_yaml::tree::Schema::Kyaml)
        .expect("valid YAML")
        .iter()
        .map(terrace_yaml::tree::Node::to_json)
        .filter(|v| v.is_object() && v.as_object().is_some_and(|m| !m.is_empty()))
        .collect()
}

fn id(v: &Value) -> String {
    format!(
        "{} {} {}",
        v["apiVersion"].as_str().unwrap_or(""),
        v["kind"].as_str().unwrap_or(""),
        v["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// A demo age key (`keys/demo.agekey`, which [`command`] hands to
/// terrace) and a `.sops.yaml` sealing every file to it.
pub fn with_demo_key(root: &Path) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    write_files(
        root,
        &[
            ("keys/demo.agekey", identity.to_string().expose_secret()),
            (
                ".sops.yaml",
                &format!("creation_rules:\n  - age: {}\n", identity.to_public()),
            ),
        ],
    );
}

/// The objects of rendered documents, sealed ones decrypted by `terrace
/// secrets decrypt`.
fn open_documents(root: &Path, out: &Value) -> Vec<Value> {
    let mut objects = Vec::new();
    for (i, d) in out["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .enumerate()
    {
        let content = d["content"].as_str().expect("content");
        if content.contains("\nsops:\n") {
            let rel = format!("sealed-{i}.yaml");
            std::fs::write(root.join(&rel), content).expect("write");
            let o = command(root)
                .args(["secrets", "decrypt", &rel])
                .output()
                .expect("runs");
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            objects.extend(objects_of(&stdout(&o)));
        } else {
            objects.extend(objects_of(content));
        }
    }
    objects
}

/// What a case renders, as terrace renders it.
fn render_case(helm: &Path, case: &Path) -> Result<Vec<Value>, String> {
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.yaml")).expect("case.yaml"))
            .expect("case.yaml is JSON");
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&case.join("chart"), &dir.path().join("apps/rel/chart"));
    let mut block = json!({
        "chart": "./chart",
        "releaseName": settings["releaseName"],
        "namespace": settings["namespace"],
    });
    for key in ["includeCRDs", "kubeVersion", "apiVersions", "values"] {
        if !settings[key].is_null() {
            block[key] = settings[key].clone();
        }
    }
    let unit = json!({"layer": "apps", "kind": "helm", "helm": block});
    with_demo_key(dir.path());
    write_files(
        dir.path(),
        &[
            (
                "terrace.yaml",
                "name: corpus\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\n",
            ),
            ("apps/rel/unit.yaml", &unit.to_string()),
        ],
    );
    let o = terrace_helm(dir.path(), helm, &["render", "rel", "--output", "json"]);
    if code(&o) != 0 {
        return Err(format!("{}{}", stdout(&o), stderr(&o)));
    }
    let out: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    Ok(open_documents(dir.path(), &out))
}

/// Every case of the corpus: the objects terrace would apply are the
/// objects `helm template` printed for the same chart and values (test
/// hooks left out: terrace never applies them), in the same order.
#[test]
fn conformance_corpus_matches_helm_template() {
    let Some(helm) = helm("conformance_corpus_matches_helm_template") else {
        return;
    };
    let cases_dir = repo_root().join("crates/terrace-drivers/tests/helm/cases");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&cases_dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("case.yaml").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let expected: Vec<Value> = objects_of(
            &std::fs::read_to_string(case.join("expected.yaml")).expect("expected.yaml"),
        )
        .into_iter()
        .filter(|v| {
            let hooks = v["metadata"]["annotations"]["helm.sh/hook"]
                .as_str()
                .unwrap_or("");
            !hooks.split(',').any(|h| h.trim().starts_with("test"))
        })
        .collect();
        match render_case(&helm, case) {
            Err(e) => failures.push(format!("{name}: terrace failed: {e}")),
            Ok(got) if got == expected => {}
            Ok(got) => {
                let g: Vec<String> = got.iter().map(id).collect();
                let e: Vec<String> = expected.iter().map(id).collect();
                let first = got
                    .iter()
                    .zip(&expected)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("\n  terrace: {a}\n  helm:    {b}"))
                    .unwrap_or_default();
                failures.push(format!(
                    "{name}: objects differ\n  terrace: {g:?}\n  helm:    {e:?}{first}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
