//! A project applied by an older terrace keeps working after an upgrade:
//! its state records are read in their old format, and the first plan
//! says nothing changed.

use std::path::Path;

use serde_json::Value;

use crate::{code, homelab, plan_json, repo_root, stderr, stdout, terrace};

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn record(dir: &Path, unit: &str) -> Value {
    let path = dir.join(format!(".terrace/state/homelab/units/{unit}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("record")).expect("json")
}

#[test]
fn a_project_applied_in_state_format_1_upgrades_and_plans_clean() {
    let dir = homelab();
    let d = dir.path();
    // The fixture was applied before the example had helm units.
    for newer in [
        "bootstrap/cni",
        "platform/cni",
        "platform/metrics",
        "apps/whoami",
        "services/analytics-db",
        "os/k3s-server",
        "os/k3s-agents",
    ] {
        std::fs::remove_dir_all(d.join(newer)).expect("remove a newer unit");
    }
    // ... nor the web app's reading of the compose unit's address.
    for (file, newer) in [
        ("apps/web/unit.yaml", "analytics"),
        ("apps/web/deployment.yaml", "ANALYTICS_DB"),
        ("apps/web/deployment.yaml", "input.analytics_db"),
    ] {
        let text = std::fs::read_to_string(d.join(file)).expect("read");
        let kept: String = text
            .lines()
            .filter(|l| !l.contains(newer))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(d.join(file), kept).expect("write");
    }
    copy(
        &repo_root().join("crates/terrace/tests/fixtures/state-format-1/dot-terrace"),
        &d.join(".terrace"),
    );
    assert_eq!(record(d, "web")["format"], 1);
    assert_eq!(record(d, "network")["format"], 1);

    let (c, plan) = plan_json(d, &[]);
    assert_eq!(c, 0, "the upgraded project plans clean: {plan}");
    let units = plan["units"].as_array().expect("units");
    assert_eq!(units.len(), 11);
    assert!(units.iter().all(|u| u["action"] == "no-op"), "{plan}");

    // The next apply that writes a record writes the new format; nothing
    // changed, so nothing is written yet.
    let o = terrace(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("11 of 11 units unchanged"),
        "{}",
        stdout(&o)
    );
    // Planning the destruction of a Terraform unit reads its format-1
    // module entry (its directory, binary and backend).
    let o = terrace(d, &["--output", "json", "destroy", "--unit", "vms"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let vms = report["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["unit"] == "vms")
        .expect("vms planned")
        .clone();
    assert!(
        vms["changes"].to_string().contains("terraform_data.vm"),
        "{vms}"
    );
    // A leaf unit destroyed and applied again is written in format 2.
    let o = terrace(d, &["destroy", "--unit", "status", "--yes"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = terrace(d, &["apply", "--unit", "status"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let upgraded = record(d, "status");
    assert_eq!(upgraded["format"], 2);
    assert_eq!(upgraded["inventory"][0]["type"], "file", "{upgraded}");
    assert_eq!(plan_json(d, &[]).0, 0);
}
