//! `terrace ci` on a Git repository with a change: the units the change
//! affects are checked and planned without secret keys; the comment and
//! the JUnit XML are compared with golden files, the XML checked against
//! a JUnit schema, and a comment that would be too long is cut.

use std::path::Path;

use crate::{code, std_command, stderr, stdout, write_files};

fn git(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.email=ci@example.org", "-c", "user.name=ci"])
        .args(args)
        .env_remove("GIT_DIR")
        .output()
        .expect("git runs");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

const POLICY: &str = "policy:\n  default: off\n  rules: {pss-restricted: enforce, resources: audit, probes: audit}\n";

fn app(image: &str) -> String {
    format!("layer: apps\nkind: app\napp:\n  namespace: shop\n  image: {image}\n  ports: [8080]\n")
}

const LEGACY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: legacy
  namespace: shop
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata: {labels: {app: legacy}}
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: legacy
        image: ghcr.io/example/legacy:2.1.0
        securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
VOLUMES";

/// A repository on `main`, then a branch `change` that touches three
/// units (one of which needs keys, one of which breaks an enforced rule)
/// and leaves the others alone.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let example = crate::repo_root().join("examples/homelab");
    for f in ["secrets/web.yaml", ".sops.yaml"] {
        std::fs::create_dir_all(d.join(f).parent().expect("parent")).expect("mkdir");
        std::fs::copy(example.join(f), d.join(f)).expect("copy");
    }
    write_files(
        d,
        &[
            (
                "terrace.yaml",
                &format!(
                    "name: shop\nlayers: [platform, apps]\ntargets:\n  k8s: {{ type: cluster }}\n{POLICY}"
                ),
            ),
            (
                "platform/ns/unit.yaml",
                "layer: platform\nkind: manifests\n",
            ),
            (
                "platform/ns/ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n",
            ),
            ("apps/web/unit.yaml", &app("ghcr.io/example/web:1.0.0")),
            (
                "apps/api/unit.yaml",
                &format!(
                    "{}  secrets:\n    DB_PASSWORD: ${{secret.secrets/web.yaml#db_password}}\n",
                    app("ghcr.io/example/api:3.0.0")
                ),
            ),
            ("apps/legacy/unit.yaml", "layer: apps\nkind: manifests\n"),
            (
                "apps/legacy/deployment.yaml",
                &LEGACY.replace("VOLUMES", ""),
            ),
            ("apps/big/unit.yaml", "layer: apps\nkind: manifests\n"),
            ("apps/big/cm.yaml", &big_config_map('a')),
        ],
    );
    git(d, &["init", "-q", "-b", "main"]);
    git(d, &["add", "-A"]);
    git(d, &["commit", "-qm", "base"]);
    git(d, &["checkout", "-q", "-b", "change"]);
    write_files(
        d,
        &[
            ("apps/web/unit.yaml", &app("ghcr.io/example/web:1.1.0")),
            (
                "apps/api/unit.yaml",
                &format!("{}  replicas: 2\n  secrets:\n    DB_PASSWORD: ${{secret.secrets/web.yaml#db_password}}\n", app("ghcr.io/example/api:3.0.0")),
            ),
            (
                "apps/legacy/deployment.yaml",
                &LEGACY.replace(
                    "VOLUMES",
                    "        volumeMounts: [{name: logs, mountPath: /logs}]\n      volumes:\n      - name: logs\n        hostPath: {path: /var/log}\n",
                ),
            ),
        ],
    );
    git(d, &["commit", "-qam", "change"]);
    dir
}

/// A ConfigMap whose every value is made of `fill`.
fn big_config_map(fill: char) -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\n  namespace: shop\ndata:\n",
    );
    for i in 0..400 {
        s.push_str(&format!("  k{i}: \"{}\"\n", fill.to_string().repeat(200)));
    }
    s
}

fn ci(d: &Path, extra: &[&str]) -> std::process::Output {
    std_command(d)
        .args([
            "ci",
            "--base",
            "main",
            "--markdown",
            "comment.md",
            "--junit",
            "junit.xml",
            "--json",
            "ci.json",
        ])
        .args(extra)
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("GITHUB_BASE_REF")
        .env("HOME", d)
        .output()
        .expect("terrace runs")
}

/// Validates the file against the schema, then checks that every count
/// attribute matches the test cases it counts.
const JUNIT_CHECK: &str = r#"
import sys, xmlschema, xml.etree.ElementTree as ET
xmlschema.XMLSchema(sys.argv[1]).validate(sys.argv[2])
root = ET.parse(sys.argv[2]).getroot()
total = 0
for s in root.findall("testsuite"):
    cases = s.findall("testcase")
    assert int(s.get("tests")) == len(cases), s.get("name")
    assert int(s.get("failures")) == sum(1 for c in cases if c.find("failure") is not None), s.get("name")
    assert int(s.get("skipped")) == sum(1 for c in cases if c.find("skipped") is not None), s.get("name")
    total += len(cases)
assert int(root.get("tests")) == total
print("valid")
"#;

/// Durations differ from run to run.
fn stable(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("time=\"") {
        out.push_str(&rest[..i + 6]);
        rest = &rest[i + 6..];
        let end = rest.find('"').unwrap_or(0);
        out.push_str("[t]");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn ci_plans_the_change_without_keys_and_writes_a_comment_and_junit() {
    let dir = repo();
    let d = dir.path();
    let o = ci(d, &["--output", "json"]);
    // The enforced rule broken by `legacy` fails the check.
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(report["base"], "main");
    assert_eq!(report["changedFiles"], 3, "{report}");
    assert_eq!(report["needsKeys"], serde_json::json!(["api"]), "{report}");
    let planned: Vec<&str> = report["plan"]["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| u["unit"].as_str().expect("unit"))
        .collect();
    assert_eq!(
        planned,
        vec!["api", "legacy", "web"],
        "only the affected units"
    );
    let comment = std::fs::read_to_string(d.join("comment.md")).expect("comment");
    insta::assert_snapshot!("ci_comment", comment);
    let junit = std::fs::read_to_string(d.join("junit.xml")).expect("junit");
    insta::assert_snapshot!("ci_junit", stable(&junit));
    assert_eq!(
        std::fs::read_to_string(d.join("ci.json"))
            .expect("json")
            .trim(),
        stdout(&o).trim()
    );
    // Nothing was applied, nor any secret shown.
    assert!(!d.join(".terrace/rendered").exists());
    assert!(comment.contains("needs secret keys"), "{comment}");

    // The JUnit XML is valid against a JUnit schema (Jenkins' and
    // GitLab's reading of the format).
    let check = std::process::Command::new("python3")
        .args(["-c", JUNIT_CHECK])
        .arg(crate::repo_root().join("crates/terrace/tests/fixtures/junit.xsd"))
        .arg(d.join("junit.xml"))
        .output()
        .expect("python3 runs");
    if String::from_utf8_lossy(&check.stderr).contains("No module named 'xmlschema'") {
        eprintln!(
            "skipped the JUnit schema check: no Python xmlschema (scripts/setup-tools.sh installs it)"
        );
    } else {
        assert!(
            check.status.success() && stdout(&check).contains("valid"),
            "{}{}",
            stdout(&check),
            stderr(&check)
        );
    }
}

#[test]
fn a_comment_that_would_be_too_long_is_cut_with_a_note() {
    let dir = repo();
    let d = dir.path();
    write_files(
        d,
        &[
            ("apps/big/cm.yaml", &big_config_map('b')),
            (
                "apps/legacy/deployment.yaml",
                &LEGACY.replace("VOLUMES", ""),
            ),
        ],
    );
    git(d, &["commit", "-qam", "a big change"]);
    let o = ci(d, &[]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    let comment = std::fs::read_to_string(d.join("comment.md")).expect("comment");
    assert!(comment.len() <= 65_536, "{} characters", comment.len());
    assert!(
        comment.contains("were cut to keep this comment under 65536"),
        "{comment}"
    );
    assert!(comment.contains("| `big` |"), "the table keeps every unit");
    // The text summary says the same.
    assert!(stdout(&o).contains("needs secret keys"), "{}", stdout(&o));
}

/// Every terrace command the example workflows run is one this terrace
/// parses (its flags exist): each is run with `--help` appended.
#[test]
fn the_example_workflows_run_commands_that_exist() {
    let mut seen = 0;
    for file in ["github-actions.yml", "gitlab-ci.yml"] {
        let text = std::fs::read_to_string(crate::repo_root().join("examples/ci").join(file))
            .expect("example");
        for line in text.lines() {
            // Step names are not commands.
            if line.contains("name:") {
                continue;
            }
            let Some(at) = line.find("terrace ") else {
                continue;
            };
            let cmd = &line[at + "terrace ".len()..];
            let cmd = cmd.split(" ||").next().unwrap_or(cmd);
            if cmd.starts_with("ci") || cmd.starts_with("plan") || cmd.starts_with("apply") {
                let args: Vec<&str> = cmd
                    .split_whitespace()
                    .map(|a| a.trim_matches('"'))
                    // A shell variable stands for a value.
                    .map(|a| if a.contains('$') { "dev" } else { a })
                    .collect();
                let o = std_command(Path::new("."))
                    .args(&args)
                    .arg("--help")
                    .output()
                    .expect("terrace runs");
                assert_eq!(code(&o), 0, "{file}: `terrace {cmd}`: {}", stderr(&o));
                seen += 1;
            }
        }
    }
    assert!(seen >= 8, "{seen} commands checked");
}
