//! No-op plans reused while nothing they read changed
//! (`.terrace/cache/<env>/plans.json`): every kind of change still shows,
//! and a damaged or hostile records file costs only speed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::{SETTINGS_CONFIG_MAP, code, command, stderr, stdout, two_file_units, write_files};

const RECORDS: &str = ".terrace/cache/default/plans.json";

fn project() -> tempfile::TempDir {
    two_file_units("reuse")
}

/// `terrace plan --output json` with the reuse decisions logged: the exit
/// code, the report, and the units whose plan was reused.
fn plan(dir: &Path) -> (i32, Value, Vec<String>) {
    let o = command(dir)
        .args(["plan", "--output", "json"])
        .env("RUST_LOG", "terrace_engine::reuse=debug")
        .output()
        .expect("terrace runs");
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("plan JSON: {e}\n{}{}", stdout(&o), stderr(&o)));
    let mut reused: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.contains("plan reused"))
        .filter_map(|l| l.split("unit=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    reused.sort();
    (code(&o), report, reused)
}

fn apply(dir: &Path) {
    let o = command(dir).args(["apply"]).output().expect("terrace runs");
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
}

/// Applies, lets the written files settle, records a plan and checks that
/// the next plan reuses both units' records.
fn settled_and_reused(dir: &Path) {
    apply(dir);
    // terrace_fs::watch::SETTLE is one second.
    std::thread::sleep(Duration::from_millis(1100));
    let (c, _, _) = plan(dir);
    assert_eq!(c, 0);
    let (c, report, reused) = plan(dir);
    assert_eq!(c, 0, "{report}");
    assert_eq!(reused, ["docs", "settings"], "{report}");
}

fn rendered(dir: &Path) -> PathBuf {
    let mut found = Vec::new();
    let mut stack = vec![dir.join(".terrace/rendered")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read rendered") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p);
            }
        }
    }
    assert_eq!(found.len(), 1, "one rendered object: {found:?}");
    found.remove(0)
}

fn action(report: &Value, unit: &str) -> String {
    crate::unit(report, unit)["action"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_reused_plan_still_sees_every_change() {
    let dir = project();
    let d = dir.path();
    settled_and_reused(d);
    let records = std::fs::metadata(d.join(RECORDS)).expect("records written");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&records.permissions()) & 0o777,
        0o600
    );

    // Drift in a rendered file, same size: the change time still moves.
    let out = rendered(d);
    let text = std::fs::read_to_string(&out).expect("rendered");
    std::fs::write(&out, text.replace("fast", "FAST")).expect("drift");
    let (c, report, reused) = plan(d);
    assert_eq!(
        (c, action(&report, "settings")),
        (2, "update".to_owned()),
        "{report}"
    );
    assert_eq!(reused, ["docs"]);
    // The change names the object the file holds, typed.
    assert_eq!(
        crate::unit(&report, "settings")["changes"][0]["object"],
        serde_json::json!({"version": "v1", "kind": "ConfigMap", "namespace": "apps", "name": "settings"})
    );

    // A source edited.
    settled_and_reused(d);
    write_files(
        d,
        &[(
            "apps/settings/cm.yaml",
            &SETTINGS_CONFIG_MAP.replace("mode:", "kind: x\n  mode:"),
        )],
    );
    let (c, report, reused) = plan(d);
    assert_eq!(
        (c, action(&report, "settings")),
        (2, "update".to_owned()),
        "{report}"
    );
    assert_eq!(reused, ["docs"]);

    // A new file in a directory the unit lists.
    settled_and_reused(d);
    write_files(d, &[("apps/docs/templates/NEW.md.j2", "new\n")]);
    let (c, report, reused) = plan(d);
    assert_eq!(
        (c, action(&report, "docs")),
        (2, "update".to_owned()),
        "{report}"
    );
    assert_eq!(reused, ["settings"]);

    // An input changed in unit.yaml.
    settled_and_reused(d);
    write_files(
        d,
        &[(
            "apps/settings/unit.yaml",
            "layer: apps\nkind: manifests\ninputs:\n  mode: slow\n",
        )],
    );
    let (c, report, reused) = plan(d);
    assert_eq!(
        (c, action(&report, "settings")),
        (2, "update".to_owned()),
        "{report}"
    );
    assert_eq!(reused, ["docs"]);

    // A rendered file removed.
    settled_and_reused(d);
    std::fs::remove_file(rendered(d)).expect("remove");
    let (c, report, reused) = plan(d);
    assert_eq!(
        (c, action(&report, "settings")),
        (2, "update".to_owned()),
        "{report}"
    );
    assert_eq!(reused, ["docs"]);
}

#[test]
fn a_damaged_or_hostile_records_file_costs_only_speed() {
    let dir = project();
    let d = dir.path();
    settled_and_reused(d);
    let good = std::fs::read_to_string(d.join(RECORDS)).expect("records");

    // Garbage, and nesting deeper than the parser allows: ignored, then
    // written anew.
    for bad in ["{not json".to_owned(), "[".repeat(100_000)] {
        std::fs::write(d.join(RECORDS), bad).expect("write");
        let (c, _, reused) = plan(d);
        assert_eq!(c, 0);
        assert!(reused.is_empty());
        let again: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(RECORDS)).expect("rewritten"))
                .expect("valid JSON again");
        assert_eq!(again["units"].as_object().map(|m| m.len()), Some(2));
    }

    // A record pointing outside the project, or at nothing: never trusted.
    let mut escaped: Value = serde_json::from_str(&good).expect("json");
    for (_, entry) in escaped["units"].as_object_mut().expect("units").iter_mut() {
        for looked in entry["looked"].as_array_mut().expect("looked") {
            looked["path"] = Value::String("../outside".to_owned());
            looked["stat"] = Value::Null;
        }
    }
    std::fs::write(d.join(RECORDS), escaped.to_string()).expect("write");
    let (c, _, reused) = plan(d);
    assert_eq!((c, reused.len()), (0, 0));
    let mut emptied: Value = serde_json::from_str(&good).expect("json");
    for (_, entry) in emptied["units"].as_object_mut().expect("units").iter_mut() {
        entry["looked"] = Value::Array(Vec::new());
    }
    std::fs::write(d.join(RECORDS), emptied.to_string()).expect("write");
    let (c, _, reused) = plan(d);
    assert_eq!((c, reused.len()), (0, 0));

    // A symlink in its place is neither read nor written through.
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("plans.json");
    std::fs::write(&target, &good).expect("write");
    std::fs::remove_file(d.join(RECORDS)).expect("remove");
    std::os::unix::fs::symlink(&target, d.join(RECORDS)).expect("symlink");
    let (c, _, reused) = plan(d);
    assert_eq!((c, reused.len()), (0, 0));
    assert_eq!(std::fs::read_to_string(&target).expect("outside"), good);
}
