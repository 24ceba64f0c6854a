//! `terrace plan --out FILE` and `terrace apply FILE`: the plan CI makes on
//! a pull request, carried out exactly on merge, or refused naming what
//! moved.

use std::path::Path;

use serde_json::Value;

use crate::{code, homelab, stderr, stdout, terrace, two_file_units, write_files};

fn project() -> tempfile::TempDir {
    two_file_units("saved")
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    terrace(dir, args)
}

fn all(o: &std::process::Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

#[test]
fn a_saved_plan_is_carried_out_and_then_refused_as_stale() {
    let dir = project();
    let d = dir.path();
    let o = run(d, &["plan", "--out", "plan.json"]);
    assert_eq!(code(&o), 2, "{}", all(&o));
    assert!(
        stderr(&o).contains("Saved the plan of 2 unit(s)"),
        "{}",
        all(&o)
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("plan.json")).expect("plan file"))
            .expect("json");
    assert_eq!(saved["format"], 1);
    assert_eq!(saved["environment"], "default");
    assert_eq!(saved["units"].as_array().map(Vec::len), Some(2));

    let o = run(d, &["--output", "json", "apply", "plan.json"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let outcomes: Vec<&str> = report["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| u["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes, ["applied", "applied"], "{report}");
    assert!(
        d.join(".terrace/rendered/default/k8s/settings/v1_configmap_apps_settings.yaml")
            .is_file()
    );

    // Applied once, the plan no longer describes the project's state.
    let o = run(d, &["apply", "plan.json"]);
    assert_eq!(code(&o), 1, "{}", all(&o));
    let text = all(&o);
    assert!(
        text.contains("no longer holds; nothing was applied"),
        "{text}"
    );
    assert!(text.contains("`settings`: its state changed"), "{text}");
    assert!(text.contains("`docs`: its state changed"), "{text}");
}

#[test]
fn a_saved_plan_is_refused_when_a_source_or_an_input_changed() {
    let dir = project();
    let d = dir.path();
    assert_eq!(code(&run(d, &["plan", "--out", "plan.json"])), 2);
    // A source file and an input change after the plan was reviewed.
    write_files(
        d,
        &[
            (
                "apps/docs/templates/README.md.j2",
                "# {{ unit }} (edited)\n",
            ),
            (
                "apps/settings/unit.yaml",
                "layer: apps\nkind: manifests\ninputs:\n  mode: slow\n",
            ),
        ],
    );
    let o = run(d, &["apply", "plan.json"]);
    assert_eq!(code(&o), 1, "{}", all(&o));
    let text = all(&o);
    assert!(
        text.contains("`docs`: what it renders changed (its sources)"),
        "{text}"
    );
    assert!(
        text.contains("`settings`: its inputs (or the dependency outputs they use)"),
        "{text}"
    );
    // Nothing was applied: no state, no rendered files.
    assert!(!d.join(".terrace/state/default/units/docs.json").exists());
    assert!(!d.join(".terrace/rendered").exists());
}

#[test]
fn a_saved_plan_carries_out_only_what_it_could_plan() {
    // The example: the VMs wait for the network's outputs, the node
    // configs for the VMs', and the platform is applied after the node
    // configs. A saved plan applies what it could plan and says what
    // waits; plan-and-apply rounds then converge.
    let dir = homelab();
    let d = dir.path();
    let o = run(d, &["plan", "--out", "first.json"]);
    assert_eq!(code(&o), 2, "{}", all(&o));
    let o = run(d, &["apply", "first.json"]);
    assert_eq!(code(&o), 0, "{}", all(&o));
    assert!(
        stdout(&o).contains("Not in the saved plan's reach (deferred, or waiting for a dependency's outputs): vms, node-configs, k3s-server, k3s-agents, namespaces"),
        "{}",
        all(&o)
    );
    assert!(d.join(".terrace/state/homelab/units/network.json").exists());
    assert!(!d.join(".terrace/state/homelab/units/vms.json").exists());
    let mut rounds = 1;
    loop {
        let o = run(d, &["plan", "--out", "next.json"]);
        if code(&o) == 0 {
            break;
        }
        assert_eq!(code(&o), 2, "{}", all(&o));
        rounds += 1;
        assert!(rounds <= 6, "saved plans did not converge: {}", all(&o));
        let o = run(d, &["apply", "next.json"]);
        assert_eq!(code(&o), 0, "{}", all(&o));
    }
    // network first, then vms, then the node configs and all after them
    // but the K3s server (which puts the configs it reads on its node),
    // then the server, then the agents (which take its token).
    assert_eq!(rounds, 5);
}

#[test]
fn a_file_that_is_not_a_plan_of_this_project_is_refused() {
    let dir = project();
    let d = dir.path();
    write_files(
        d,
        &[
            ("garbage.json", "{\"units\": 3}\n"),
            ("future.json", "{\"format\": 99}\n"),
        ],
    );
    let o = run(d, &["apply", "garbage.json"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("garbage.json"), "{}", all(&o));
    assert!(stderr(&o).contains("not a saved plan"), "{}", all(&o));
    let o = run(d, &["apply", "future.json"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("saved plan format 99"), "{}", all(&o));
    let o = run(d, &["apply", "missing.json"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("missing.json"), "{}", all(&o));

    // A plan of another environment, or with selection flags.
    assert_eq!(code(&run(d, &["plan", "--out", "plan.json"])), 2);
    let o = run(d, &["--env", "staging", "apply", "plan.json"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("is a plan of environment `default`, not `staging`"),
        "{}",
        all(&o)
    );
    let o = run(d, &["apply", "plan.json", "--unit", "docs"]);
    assert_eq!(code(&o), 1, "{}", all(&o));
}

#[test]
fn hostile_plan_files_are_refused_without_harm() {
    let dir = project();
    let d = dir.path();
    // Nesting far past any budget: an error, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    write_files(d, &[("deep.json", &deep)]);
    let o = run(d, &["apply", "deep.json"]);
    assert_eq!(code(&o), 1, "{}", all(&o));
    assert!(stderr(&o).contains("not a saved plan"), "{}", all(&o));
    // Larger than a plan can be: refused before it is read.
    let big = std::fs::File::create(d.join("big.json")).expect("create");
    big.set_len(65 * 1024 * 1024).expect("sparse file");
    let o = run(d, &["apply", "big.json"]);
    assert_eq!(code(&o), 1, "{}", all(&o));
    assert!(
        stderr(&o).contains("a saved plan is at most"),
        "{}",
        all(&o)
    );
    // A plan naming a unit the project does not have, and one whose
    // fingerprint was edited: refused, naming the unit, nothing applied.
    assert_eq!(code(&run(d, &["plan", "--out", "plan.json"])), 2);
    let text = std::fs::read_to_string(d.join("plan.json")).expect("plan");
    let mut plan: Value = serde_json::from_str(&text).expect("json");
    plan["units"][0]["unit"] = Value::from("intruder");
    plan["units"][1]["fingerprint"]["inputs"] = Value::from("sha256:0");
    std::fs::write(d.join("edited.json"), plan.to_string()).expect("write");
    let o = run(d, &["apply", "edited.json"]);
    assert_eq!(code(&o), 1, "{}", all(&o));
    let text = all(&o);
    assert!(
        text.contains("`intruder`: it is no longer in the project"),
        "{text}"
    );
    assert!(!d.join(".terrace/state").exists(), "{text}");
}
