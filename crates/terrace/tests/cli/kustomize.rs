//! `kind: kustomize` units, on the example's `apps/dashboard` (a base and
//! one overlay per environment, with a SOPS-encrypted Secret among the
//! base's resources).

use std::path::Path;
use std::process::Command as StdCommand;

use serde_json::Value;

use crate::{code, homelab, plan_json, stderr, stdout, terrace, unit};

const PASSWORD: &str = "dashboard-demo-password";

fn rendered(dir: &Path, env: &str) -> std::path::PathBuf {
    dir.join(format!(".terrace/rendered/{env}/k3s/dashboard"))
}

fn read_objects(dir: &Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("rendered")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            terrace_yaml::tree::parse_stream(&text, f).expect("yaml")[0].to_json()
        })
        .collect()
}

#[test]
fn an_overlay_per_environment_applies_and_settles() {
    let dir = homelab();
    for env in ["homelab", "staging"] {
        let o = terrace(dir.path(), &["apply", "-e", env, "--unit", "dashboard"]);
        assert_eq!(code(&o), 0, "{env}: {}{}", stdout(&o), stderr(&o));
        let (c, plan) = plan_json(dir.path(), &["-e", env, "--unit", "dashboard"]);
        assert_eq!(c, 0, "{env}: a second plan has no changes: {plan}");
    }
    let homelab = read_objects(&rendered(dir.path(), "homelab"));
    let deployment = homelab
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("deployment");
    assert_eq!(deployment["spec"]["replicas"], 2, "the homelab overlay");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/example/dashboard:1.1.0"
    );
    let cm = homelab
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("generated configmap");
    let cm_name = cm["metadata"]["name"].as_str().expect("name");
    assert!(cm_name.starts_with("dashboard-settings-"), "{cm_name}");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"],
        cm_name,
        "the reference follows the hash suffix"
    );
    let staging = read_objects(&rendered(dir.path(), "staging"));
    assert!(
        staging
            .iter()
            .any(|o| o["metadata"]["name"] == "dashboard-staging"),
        "the staging overlay's suffix"
    );

    // The Secret is written sealed, under the source file's rule, without
    // the build's bookkeeping, and nothing holds its plaintext.
    let secret_file = std::fs::read_dir(rendered(dir.path(), "homelab"))
        .expect("dir")
        .map(|e| e.expect("e").path())
        .find(|p| p.to_string_lossy().contains("_secret_"))
        .expect("secret file");
    let sealed = std::fs::read_to_string(&secret_file).expect("read");
    assert!(sealed.contains("ENC[AES256_GCM"), "{sealed}");
    assert!(sealed.contains("name: dashboard-admin"), "names stay plain");
    assert!(!sealed.contains("terrace.dev/sops-source"), "{sealed}");
    let o = terrace(
        dir.path(),
        &["secrets", "decrypt", secret_file.to_str().expect("utf-8")],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains(PASSWORD), "{}", stdout(&o));
    assert!(stdout(&o).contains("app.kubernetes.io/name: dashboard"));
    let leaked = StdCommand::new("grep")
        .args(["-r", "-l", PASSWORD])
        .arg(dir.path().join(".terrace"))
        .output()
        .expect("grep");
    assert!(
        leaked.stdout.is_empty(),
        "plaintext found in {}",
        String::from_utf8_lossy(&leaked.stdout)
    );

    // One change in the overlay updates exactly one object.
    let overlay = dir
        .path()
        .join("apps/dashboard/overlays/homelab/kustomization.yaml");
    let text = std::fs::read_to_string(&overlay).expect("overlay");
    std::fs::write(&overlay, text.replace("count: 2", "count: 3")).expect("write");
    let (c, plan) = plan_json(dir.path(), &["--unit", "dashboard"]);
    assert_eq!(c, 2);
    let changes = unit(&plan, "dashboard")["changes"]
        .as_array()
        .expect("changes")
        .clone();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["action"], "update");
    assert_eq!(changes[0]["address"], "apps/v1 Deployment apps/dashboard");
}

#[test]
fn objects_match_kubectl_kustomize() {
    if StdCommand::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_err()
    {
        eprintln!("skipped: kubectl (the reference renderer) is not on the PATH");
        return;
    }
    let dir = homelab();
    let o = terrace(
        dir.path(),
        &["apply", "-e", "staging", "--unit", "dashboard"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let ours = read_objects(&rendered(dir.path(), "staging"));
    let reference = StdCommand::new("kubectl")
        .arg("kustomize")
        .arg(dir.path().join("apps/dashboard/overlays/staging"))
        .output()
        .expect("kubectl");
    assert!(reference.status.success());
    let text = String::from_utf8_lossy(&reference.stdout);
    let theirs: Vec<Value> = terrace_yaml::tree::parse_stream(&text, Path::new("kubectl"))
        .expect("yaml")
        .iter()
        .map(terrace_yaml::tree::Node::to_json)
        .collect();
    // kubectl cannot decrypt, so the Secret is compared by name only.
    assert_eq!(ours.len(), theirs.len());
    for t in &theirs {
        let found = ours
            .iter()
            .find(|o| o["kind"] == t["kind"] && o["metadata"]["name"] == t["metadata"]["name"])
            .unwrap_or_else(|| panic!("{} missing", t["metadata"]["name"]));
        if t["kind"] != "Secret" {
            assert_eq!(found, t);
        }
    }
}

#[test]
fn errors_name_the_kustomization() {
    let dir = homelab();
    let k = dir.path().join("apps/dashboard/base/kustomization.yaml");
    let text = std::fs::read_to_string(&k).expect("read");
    std::fs::write(&k, text.replace("resources:", "resourcez:")).expect("write");
    let o = terrace(dir.path(), &["plan", "--unit", "dashboard"]);
    assert_eq!(code(&o), 1);
    let err = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        err.contains("apps/dashboard/base/kustomization.yaml") && err.contains("resourcez"),
        "{err}"
    );
    assert!(
        !err.contains(&dir.path().display().to_string()),
        "paths are shown relative to the project: {err}"
    );

    let dir = homelab();
    std::fs::remove_dir_all(dir.path().join("apps/dashboard/overlays/staging")).expect("rm");
    let o = terrace(
        dir.path(),
        &["plan", "-e", "staging", "--unit", "dashboard"],
    );
    assert_eq!(code(&o), 1);
    let err = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        err.contains("kustomization directory `apps/dashboard/overlays/staging` does not exist in environment `staging`"),
        "{err}"
    );
}

#[test]
fn the_load_restrictor_can_be_turned_off_as_in_kustomize() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::write_files(
        dir.path(),
        &[
            (
                "shared/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\ndata:\n  a: \"1\"\n",
            ),
            (
                "app/kustomization.yaml",
                "resources: [../shared/cm.yaml]\nnamePrefix: app-\n",
            ),
        ],
    );
    // By default a file outside the kustomization's directory is refused.
    let o = terrace(dir.path(), &["kustomize", "build", "app"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let o = terrace(
        dir.path(),
        &[
            "kustomize",
            "build",
            "app",
            "--load-restrictor",
            "LoadRestrictionsNone",
            "--output",
            "json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let ours: Vec<Value> = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(ours[0]["metadata"]["name"], "app-shared");
    if StdCommand::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("skipped the comparison: kubectl (the reference renderer) is not on the PATH");
        return;
    }
    let reference = StdCommand::new("kubectl")
        .args([
            "kustomize",
            "--load-restrictor",
            "LoadRestrictionsNone",
            "app",
        ])
        .current_dir(dir.path())
        .output()
        .expect("kubectl");
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let theirs: Vec<Value> = terrace_yaml::tree::parse_stream(
        &String::from_utf8_lossy(&reference.stdout),
        Path::new("kubectl.yaml"),
    )
    .expect("yaml")
    .iter()
    .map(terrace_yaml::tree::Node::to_json)
    .collect();
    assert_eq!(ours, theirs);
}
