//! End-to-end tests of the `terrace` binary on copies of
//! `examples/homelab` and small projects written by the tests.

mod app;
mod ci;
mod cluster;
mod compose;
mod errors;
mod example;
mod helm;
mod hostile;
mod hosts;
mod import;
mod kustomize;
mod policy;
mod real_cluster;
mod reuse;
mod saved_plan;
mod schema;
mod secrets;
mod serve;
mod state_etcd;
mod state_s3;
mod substitute;
mod terraform;
mod tiers;
mod upgrade;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh copy of `examples/homelab` in a temporary directory.
pub fn homelab() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&repo_root().join("examples/homelab"), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read example") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == ".terrace" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Runs terrace in `dir` with `args`.
pub fn terrace(dir: &Path, args: &[&str]) -> Output {
    command(dir).args(args).output().expect("terrace runs")
}

/// The terrace binary in `dir`, with keys only from the example's demo key
/// (when the directory has one), never from the user's own.
pub fn command(dir: &Path) -> Command {
    Command::from_std(std_command(dir))
}

/// [`command`] as a plain `std::process::Command` (to spawn it).
pub fn std_command(dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("terrace"));
    cmd.current_dir(dir)
        .env_remove("TERRACE_ENV")
        .env_remove("TERRACE_CLUSTER")
        .env_remove("TERRACE_CLUSTER_CONTEXT")
        .env_remove("TERRACE_KUBE_WAIT")
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY_CMD")
        .env("SOPS_AGE_SSH_PRIVATE_KEY_FILE", "/nonexistent")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .env("NO_COLOR", "1")
        // terraform offline and quiet.
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_CLI_CONFIG_FILE", "");
    let demo = dir.join("keys/demo.agekey");
    if demo.is_file() {
        cmd.env("SOPS_AGE_KEY_FILE", demo);
    }
    cmd
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

/// Writes files (path, content) under `root`.
/// The ConfigMap of [`two_file_units`]' `settings` unit.
pub const SETTINGS_CONFIG_MAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: apps\ndata:\n  mode: ${input.mode}\n";

/// A project `name` of one environment with two file-rendering units:
/// `settings` (a ConfigMap from its input `mode`) and `docs` (a template
/// that reads nothing of it).
pub fn two_file_units(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            (
                "terrace.yaml",
                &format!("name: {name}\nlayers: [apps]\ntargets:\n  k8s: {{ type: cluster }}\n"),
            ),
            (
                "apps/settings/unit.yaml",
                "layer: apps\nkind: manifests\ninputs:\n  mode: fast\n",
            ),
            ("apps/settings/cm.yaml", SETTINGS_CONFIG_MAP),
            ("apps/docs/unit.yaml", "layer: apps\nkind: template\n"),
            ("apps/docs/templates/README.md.j2", "# {{ unit }}\n"),
        ],
    );
    dir
}

pub fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (p, c) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, c).expect("write");
    }
}

/// The plan as JSON.
pub fn plan_json(dir: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["plan", "--output", "json"];
    args.extend_from_slice(extra);
    let o = terrace(dir, &args);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "plan JSON: {e}\nstdout: {}\nstderr: {}",
            stdout(&o),
            stderr(&o)
        )
    });
    (code(&o), v)
}

/// Unit `name` of a plan or apply report (`--output json`).
pub fn unit<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["unit"] == name)
        .unwrap_or_else(|| panic!("unit {name} in {report}"))
}

/// The kubeconfig of a real cluster, or `None` after saying why `test` is
/// skipped.
pub fn real_cluster(test: &str) -> Option<PathBuf> {
    match std::env::var_os("TERRACE_TEST_KUBECONFIG") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!(
                "skipped {test}: TERRACE_TEST_KUBECONFIG does not name a kubeconfig (set it to run this test against a real API server)"
            );
            None
        }
    }
}

/// kubectl against the cluster of `kubeconfig`.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs")
}

/// `terrace status`: every unit layer by layer, from the local state.
#[test]
fn status_shows_every_unit_and_why_it_waits() {
    let dir = two_file_units("st");
    let o = terrace(dir.path(), &["status", "--output", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let units = v["units"].as_array().expect("units");
    assert_eq!(units.len(), 2);
    assert!(
        units
            .iter()
            .all(|u| u["state"] == "not applied" && u["layer"] == "apps"),
        "{v}"
    );
    assert_eq!(code(&terrace(dir.path(), &["apply"])), 0);
    let o = terrace(dir.path(), &["status"]);
    assert_eq!(code(&o), 0);
    let text = stdout(&o);
    assert!(
        text.contains("apps\n") && text.contains("settings") && text.contains("applied"),
        "{text}"
    );
    assert!(!text.contains("not applied"), "{text}");
    let o = terrace(dir.path(), &["status", "--output", "markdown"]);
    assert!(
        stdout(&o).contains("| unit | kind | state | revision | why |"),
        "{}",
        stdout(&o)
    );
}
