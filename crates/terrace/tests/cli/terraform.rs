//! `terraform` units against the real terraform on this machine (only the
//! built-in `terraform_data` resource, variables and outputs: no provider
//! is downloaded).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{code, plan_json, std_command, stderr, stdout, terrace, unit, write_files};

const NETWORK: &str = r#"variable "cidr" {
  type = string
}
resource "terraform_data" "net" {
  input = var.cidr
}
output "id" {
  value = terraform_data.net.id
}
output "cidr" {
  value = var.cidr
}
"#;

const VMS: &str = r#"variable "network_id" {
  type = string
}
variable "vm_count" {
  type = number
}
resource "terraform_data" "vm" {
  count = var.vm_count
  input = { net = var.network_id, index = count.index }
}
output "names" {
  value = [for i in range(var.vm_count) : "vm${i}"]
}
output "root_password" {
  value     = "pw-${terraform_data.vm[0].id}"
  sensitive = true
}
"#;

const DNS: &str = r#"variable "names" {
  type = list(string)
}
variable "password" {
  type      = string
  sensitive = true
}
resource "terraform_data" "record" {
  for_each = toset(var.names)
  input    = "${each.key}.home.arpa"
}
output "fqdns" {
  value = [for r in terraform_data.record : r.input]
}
output "password_length" {
  value = nonsensitive(length(var.password))
}
"#;

/// Three units: network -> vms -> dns, passing outputs (one sensitive).
fn chain() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            ("terrace.yaml", "name: tf\nlayers: [infra, platform]\n"),
            (
                "infra/network/unit.yaml",
                "layer: infra\nkind: terraform\ninputs:\n  cidr: 10.0.0.0/24\n",
            ),
            ("infra/network/main.tf", NETWORK),
            (
                "infra/vms/unit.yaml",
                "layer: infra\nkind: terraform\ninputs:\n  network_id: ${unit.network.outputs.id}\n  vm_count: 2\n",
            ),
            ("infra/vms/main.tf", VMS),
            (
                "platform/dns/unit.yaml",
                "layer: platform\nkind: terraform\ninputs:\n  names: ${unit.vms.outputs.names}\n  password: ${unit.vms.outputs.root_password}\n",
            ),
            ("platform/dns/main.tf", DNS),
        ],
    );
    dir
}

fn resource_changes(u: &Value) -> Vec<(String, String)> {
    u["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| !c["address"].as_str().unwrap_or("").starts_with("output."))
        .map(|c| {
            (
                c["address"].as_str().unwrap_or("").to_owned(),
                c["action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_chain_of_three_units_plans_deferred_then_applies_passing_outputs() {
    let dir = chain();
    let d = dir.path();
    // Nothing applied yet: the first unit plans, the others wait.
    let (c, plan) = plan_json(d, &[]);
    assert_eq!(c, 2, "{plan}");
    assert_eq!(unit(&plan, "network")["action"], "create");
    for (name, waits) in [("vms", "network"), ("dns", "vms")] {
        let u = unit(&plan, name);
        assert_eq!(u["action"], "deferred", "{u}");
        assert_eq!(u["outcome"], "planned", "deferred is not a failure: {u}");
        let notes = u["notes"].to_string();
        assert!(
            notes.contains(&format!("deferred: waiting for {waits}")),
            "{notes}"
        );
    }
    assert!(
        unit(&plan, "vms")["notes"]
            .to_string()
            .contains("input vm_count = 2")
    );

    let o = terrace(d, &["apply", "-j", "2"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    // Outputs crossed the chain, the sensitive one included.
    let o = terrace(d, &["--output", "json", "output", "dns"]);
    let out: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(
        out["fqdns"],
        serde_json::json!(["vm0.home.arpa", "vm1.home.arpa"]),
        "{out}"
    );
    let tfstate =
        std::fs::read_to_string(d.join(".terrace/terraform/default/vms/terraform.tfstate"))
            .expect("tfstate");
    let password =
        serde_json::from_str::<Value>(&tfstate).expect("json")["outputs"]["root_password"]["value"]
            .as_str()
            .expect("password")
            .to_owned();
    assert_eq!(out["password_length"], password.len());
    // The sensitive output is not in terrace's state in plain text.
    let record =
        std::fs::read_to_string(d.join(".terrace/state/default/units/vms.json")).expect("record");
    assert!(!record.contains(&password), "{record}");
    let parsed: Value = serde_json::from_str(&record).expect("json");
    assert_eq!(
        parsed["sensitiveOutputs"],
        serde_json::json!(["root_password"]),
        "{record}"
    );
    // Nothing to do now.
    assert_eq!(plan_json(d, &[]).0, 0);

    // One input changes: exactly one resource changes.
    let unit_file = d.join("infra/vms/unit.yaml");
    let text = std::fs::read_to_string(&unit_file).expect("read");
    std::fs::write(&unit_file, text.replace("vm_count: 2", "vm_count: 3")).expect("write");
    let (c, plan) = plan_json(d, &["--unit", "vms"]);
    assert_eq!(c, 2);
    assert_eq!(
        resource_changes(unit(&plan, "vms")),
        [("terraform_data.vm[2]".to_owned(), "create".to_owned())]
    );
    let o = terrace(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = terrace(d, &["--output", "json", "output", "dns", "fqdns"]);
    assert!(stdout(&o).contains("vm2.home.arpa"), "{}", stdout(&o));

    // Destroy goes dependents first.
    let o = terrace(
        d,
        &["--output", "json", "destroy", "--unit", "network", "--yes"],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let order: Vec<&str> = report["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| u["unit"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(order, ["dns", "vms", "network"]);
    let tfstate: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join(".terrace/terraform/default/network/terraform.tfstate"))
            .expect("tfstate"),
    )
    .expect("json");
    assert_eq!(
        tfstate["resources"],
        serde_json::json!([]),
        "terraform destroyed the resources"
    );
}

#[test]
fn terraform_errors_are_shown_whole_per_unit() {
    let dir = chain();
    let d = dir.path();
    std::fs::write(
        d.join("infra/network/main.tf"),
        "resource \"terraform_data\" \"x\" {\n  input = var.missing\n}\n",
    )
    .expect("write");
    let o = terrace(d, &["plan"]);
    assert_eq!(code(&o), 1);
    let out = stdout(&o) + &stderr(&o);
    assert!(
        out.contains("terraform plan failed for unit `network`"),
        "{out}"
    );
    assert!(
        out.contains("Reference to undeclared input variable"),
        "{out}"
    );
}

#[test]
fn a_second_process_finds_the_unit_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_files(
        d,
        &[
            ("terrace.yaml", "name: tf\nlayers: [infra]\n"),
            ("infra/slow/unit.yaml", "layer: infra\nkind: terraform\n"),
            (
                "infra/slow/main.tf",
                "resource \"terraform_data\" \"slow\" {\n  provisioner \"local-exec\" {\n    command = \"sleep 4\"\n  }\n}\n",
            ),
        ],
    );
    let mut first = std_command(d)
        .args(["apply"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starts");
    let lock = d.join(".terrace/state/default/locks/slow.lock");
    let start = Instant::now();
    while !lock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the first apply never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = terrace(d, &["apply", "--lock-timeout", "0"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains(&format!("locked by pid {}", first.id())),
        "{}",
        stdout(&o)
    );
    assert!(first.wait().expect("first exits").success());
    assert_eq!(code(&terrace(d, &["plan"])), 0);
}

#[test]
fn environments_have_separate_state_and_the_module_is_untouched() {
    let dir = chain();
    let d = dir.path();
    std::fs::write(
        d.join("terrace.yaml"),
        "name: tf\nlayers: [infra, platform]\ndefaultEnvironment: a\nenvironments:\n  a: {}\n  b: {}\n",
    )
    .expect("write");
    for env in ["a", "b"] {
        let o = terrace(d, &["--env", env, "apply", "--unit", "network"]);
        assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    }
    let id = |env: &str| -> String {
        let o = terrace(
            d,
            &["--env", env, "--output", "json", "output", "network", "id"],
        );
        stdout(&o)
    };
    assert_ne!(id("a"), id("b"), "each environment has its own resources");
    // The module holds the user's file and terrace's one override only.
    let mut names: Vec<String> = std::fs::read_dir(d.join("infra/network"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["main.tf", "terrace_backend_override.tf.json", "unit.yaml"]
    );
    assert!(!Path::new(&d.join("infra/network/.terraform")).exists());
}

#[test]
fn init_runs_once_and_the_fast_path_skips_refresh() {
    let dir = chain();
    let d = dir.path();
    let o = terrace(d, &["apply", "--unit", "network"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let marker = d.join(".terrace/terraform/default/network/init.fingerprint");
    let first = std::fs::metadata(&marker)
        .expect("marker")
        .modified()
        .expect("mtime");
    // A resource change is not an init change.
    let main = d.join("infra/network/main.tf");
    let text = std::fs::read_to_string(&main).expect("read");
    std::fs::write(
        &main,
        text.replace("input = var.cidr", "input = \"${var.cidr}!\""),
    )
    .expect("write");
    let (c, plan) = plan_json(d, &["--unit", "network", "--refresh=false"]);
    assert_eq!(c, 2, "{plan}");
    assert_eq!(
        resource_changes(unit(&plan, "network")),
        [("terraform_data.net".to_owned(), "update".to_owned())]
    );
    let again = std::fs::metadata(&marker)
        .expect("marker")
        .modified()
        .expect("mtime");
    assert_eq!(first, again, "init did not run again");
}

#[test]
fn a_unit_may_keep_its_own_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_files(
        d,
        &[
            ("terrace.yaml", "name: tf\nlayers: [infra]\n"),
            (
                "infra/own/unit.yaml",
                "layer: infra\nkind: terraform\ninputs:\n  cidr: 10.1.0.0/24\nterraform:\n  backend: own\n",
            ),
            (
                "infra/own/main.tf",
                &format!(
                    "terraform {{\n  backend \"local\" {{\n    path = \"own.tfstate\"\n  }}\n}}\n{NETWORK}"
                ),
            ),
        ],
    );
    let o = terrace(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        d.join("infra/own/own.tfstate").is_file(),
        "the module's backend was used"
    );
    assert!(
        !d.join("infra/own/terrace_backend_override.tf.json")
            .exists()
    );
    let o = terrace(d, &["--output", "json", "output", "own", "cidr"]);
    assert_eq!(stdout(&o).trim(), "\"10.1.0.0/24\"");
    assert_eq!(code(&terrace(d, &["plan"])), 0);
}

#[test]
fn independent_units_plan_and_apply_in_parallel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut files = vec![(
        "terrace.yaml".to_owned(),
        "name: tf\nlayers: [infra]\n".to_owned(),
    )];
    for n in ["a", "b", "c", "d"] {
        files.push((
            format!("infra/{n}/unit.yaml"),
            format!(
                "layer: infra\nkind: terraform\ninputs:\n  cidr: 10.0.{}.0/24\n",
                n.as_bytes()[0]
            ),
        ));
        files.push((format!("infra/{n}/main.tf"), NETWORK.to_owned()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_files(d, &refs);
    let (c, plan) = plan_json(d, &["-j", "4"]);
    assert_eq!(c, 2, "{plan}");
    for n in ["a", "b", "c", "d"] {
        assert_eq!(unit(&plan, n)["action"], "create", "{plan}");
    }
    let o = terrace(d, &["apply", "-j", "4"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let (c, plan) = plan_json(d, &["-j", "4"]);
    assert_eq!(c, 0, "{plan}");
}

#[test]
fn a_sensitive_output_is_never_rendered_in_plain_text() {
    let dir = chain();
    let d = dir.path();
    write_files(
        d,
        &[
            (
                "terrace.yaml",
                "name: tf\nlayers: [infra, platform]\ntargets:\n  k8s: { type: cluster }\n",
            ),
            (
                "platform/app/unit.yaml",
                "layer: platform\nkind: manifests\ntarget: k8s\ninputs:\n  password: ${unit.vms.outputs.root_password}\n",
            ),
            (
                "platform/app/secret.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app\nstringData:\n  password: ${input.password}\n",
            ),
        ],
    );
    let o = terrace(d, &["apply", "--unit", "network"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = terrace(d, &["apply", "--unit", "vms"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = terrace(d, &["apply", "--unit", "app"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("holds a sensitive value (unit vms output root_password)"),
        "{}",
        stdout(&o)
    );
    assert!(!d.join(".terrace/rendered").exists(), "nothing was written");
}

#[test]
fn the_shell_environment_does_not_change_what_terraform_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_files(
        d,
        &[
            // The binary comes from the project's defaults for the kind.
            (
                "terrace.yaml",
                "name: tf\nlayers: [infra]\nterraform:\n  binary: terraform\n",
            ),
            ("infra/named/unit.yaml", "layer: infra\nkind: terraform\n"),
            (
                "infra/named/main.tf",
                "variable \"name\" {\n  type    = string\n  default = \"from-the-unit\"\n}\nresource \"terraform_data\" \"n\" {\n  input = var.name\n}\noutput \"name\" {\n  value = var.name\n}\n",
            ),
        ],
    );
    // Each of these would change the plan (or break it) if it reached
    // terraform: a variable, extra arguments, another workspace.
    let o = std_command(d)
        .args(["apply"])
        .env("TF_VAR_name", "from-the-shell")
        .env("TF_CLI_ARGS", "-no-such-flag")
        .env("TF_CLI_ARGS_plan", "-no-such-flag")
        .env("TF_WORKSPACE", "elsewhere")
        .output()
        .expect("terrace runs");
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = terrace(d, &["--output", "json", "output", "named"]);
    let out: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(out["name"], "from-the-unit", "{out}");
}

#[test]
fn a_command_past_its_timeout_is_stopped_and_the_unit_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_files(
        d,
        &[
            ("terrace.yaml", "name: tf\nlayers: [infra]\n"),
            (
                "infra/slow/unit.yaml",
                "layer: infra\nkind: terraform\nterraform:\n  timeout: 2s\n",
            ),
            (
                "infra/slow/main.tf",
                "resource \"terraform_data\" \"slow\" {\n  provisioner \"local-exec\" {\n    command = \"sleep 60\"\n  }\n}\n",
            ),
        ],
    );
    let started = Instant::now();
    let o = terrace(d, &["apply"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(text.contains("did not finish within 2s"), "{text}");
    // What terraform printed while it ran came out as it ran, by unit.
    assert!(
        stderr(&o).contains("slow │ terraform_data.slow"),
        "{}",
        stderr(&o)
    );
    // Stopped well before the provisioner's minute was up.
    assert!(started.elapsed() < Duration::from_secs(55), "{text}");
    // Terraform let go of its state lock: the next plan runs.
    let (c, _) = plan_json(d, &[]);
    assert_ne!(c, 1, "the unit can be planned again");
}
