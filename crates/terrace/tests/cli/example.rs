//! The example repository through plan, apply, change, prune, lock,
//! affected-since and destroy.

use std::process::Command as Std;

use serde_json::Value;

use crate::{code, homelab, plan_json, stderr, stdout, terrace, write_files};

fn units_with(report: &Value, action: &str) -> Vec<String> {
    report["units"]
        .as_array()
        .expect("units")
        .iter()
        .filter(|u| u["action"] == action)
        .map(|u| u["unit"].as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn applied_twice_the_second_plan_has_no_changes() {
    let dir = homelab();
    let (c, plan) = plan_json(dir.path(), &[]);
    assert_eq!(c, 2, "a fresh plan has changes");
    assert_eq!(units_with(&plan, "create").len(), 14);
    // The VMs wait for the network's first apply, the node configs for the
    // VMs' outputs: no placeholder reaches a plan.
    assert_eq!(
        units_with(&plan, "deferred"),
        ["vms", "node-configs", "k3s-server", "k3s-agents"]
    );

    let o = terrace(dir.path(), &["apply", "-j", "2"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("55 created"), "{}", stdout(&o));

    let o = terrace(dir.path(), &["plan"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("18 of 18 units unchanged"),
        "{}",
        stdout(&o)
    );

    let o = terrace(dir.path(), &["apply"]);
    assert_eq!(code(&o), 0);
    assert!(
        stdout(&o).contains("0 created, 0 updated, 0 deleted; 18 of 18 units unchanged"),
        "{}",
        stdout(&o)
    );

    // Typed substitution: replicas is a number in the rendered object.
    let deploy = std::fs::read_to_string(
        dir.path()
            .join(".terrace/rendered/homelab/k3s/web/apps_v1_deployment_apps_web.yaml"),
    )
    .expect("rendered deployment");
    assert!(deploy.contains("replicas: 2\n"), "{deploy}");
    // `$${` wrote a literal `${`.
    let cm = std::fs::read_to_string(
        dir.path()
            .join(".terrace/rendered/homelab/k3s/status/v1_configmap_apps_status-page.yaml"),
    )
    .expect("rendered configmap");
    assert!(cm.contains("${STATUS_URL}"), "{cm}");

    // Outputs pass across layers: the template's content hash reaches the nodes.
    let o = terrace(
        dir.path(),
        &[
            "output",
            "cluster-config",
            r#"files["cluster.yaml"].sha256"#,
        ],
    );
    let sha = stdout(&o).trim().to_owned();
    assert_eq!(sha.len(), 64, "{sha}");
    let user_data = std::fs::read_to_string(
        dir.path()
            .join(".terrace/generated/homelab/nodes/node1/user-data.yaml"),
    )
    .expect("user data");
    assert!(user_data.contains(&sha));

    // A second environment has its own state and outputs.
    let (c, plan) = plan_json(dir.path(), &["--env", "staging"]);
    assert_eq!(c, 2);
    assert_eq!(
        units_with(&plan, "create").len() + units_with(&plan, "deferred").len(),
        17,
        "status is homelab-only"
    );
}

/// The example's helm units: a bootstrap chart applied once, a vendored
/// platform chart with values per environment, and an app from the
/// shared app chart with a post-render patch.
#[test]
fn helm_units_render_charts_with_values_per_environment() {
    let dir = homelab();
    let o = terrace(dir.path(), &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let rendered = dir.path().join(".terrace/rendered/homelab/k3s");
    let read = |rel: &str| std::fs::read_to_string(rendered.join(rel)).expect(rel);
    // valuesFiles: values.yaml, then values-homelab.yaml; values: from vars.
    let daemon = read("metrics/apps_v1_daemonset_node-metrics.yaml");
    assert!(
        daemon.contains("--collector.netdev") && daemon.contains("memory: 128Mi"),
        "{daemon}"
    );
    assert!(read("metrics/v1_service_node-metrics.yaml").contains("cluster: k3s-home"));
    // `tpl` in the chart, `${env}` in the unit, and the post-render patch.
    let whoami = read("whoami/apps_v1_deployment_whoami.yaml");
    assert!(whoami.contains("value: whoami in homelab"), "{whoami}");
    assert!(whoami.contains("NET_BIND_SERVICE"), "{whoami}");
    assert!(
        read("whoami/networking.k8s.io_v1_ingress_whoami.yaml").contains("host: whoami.home.arpa")
    );

    // The bootstrap chart is applied once: a change to it plans nothing.
    let unit = dir.path().join("bootstrap/cni/unit.yaml");
    let text = std::fs::read_to_string(&unit).expect("unit");
    std::fs::write(
        &unit,
        text.replace("podCIDR: ${var.pod_cidr}", "podCIDR: 10.99.0.0/16"),
    )
    .expect("write");
    let (c, plan) = plan_json(dir.path(), &[]);
    assert_eq!(c, 0, "{plan}");
    let boot = crate::unit(&plan, "pod-network");
    assert!(
        boot["notes"][0]
            .as_str()
            .is_some_and(|n| n.starts_with("once: applied ")),
        "{boot}"
    );

    // Staging: its own values file, and the override of `values`.
    let (_, plan) = plan_json(dir.path(), &["--env", "staging"]);
    let whoami = crate::unit(&plan, "whoami");
    let made: Vec<&str> = whoami["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["address"].as_str())
        .collect();
    assert_eq!(
        made,
        ["v1 Service whoami", "apps/v1 Deployment whoami"],
        "no ingress in staging"
    );
    let metrics = crate::unit(&plan, "metrics").to_string();
    assert!(
        metrics.contains("memory: 64Mi") && !metrics.contains("collector.netdev"),
        "{metrics}"
    );
}

#[test]
fn an_input_change_shows_exactly_the_changed_objects() {
    let dir = homelab();
    assert_eq!(code(&terrace(dir.path(), &["apply"])), 0);
    let vars = dir.path().join("vars/homelab.yaml");
    let text = std::fs::read_to_string(&vars).expect("vars");
    std::fs::write(&vars, text.replace("web_replicas: 2", "web_replicas: 3")).expect("write");

    let (c, plan) = plan_json(dir.path(), &[]);
    assert_eq!(c, 2);
    assert_eq!(units_with(&plan, "update"), ["web"]);
    let web = plan["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["unit"] == "web")
        .expect("web");
    let changes = web["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["address"], "apps/v1 Deployment apps/web");
    let diff = changes[0]["diff"].as_str().expect("diff");
    assert!(diff.contains("-  replicas: 2\n+  replicas: 3\n"), "{diff}");
    assert_eq!(web["unchanged"], 3, "the sealed Secret stays as it was");

    assert_eq!(code(&terrace(dir.path(), &["apply"])), 0);
    assert_eq!(plan_json(dir.path(), &[]).0, 0);
}

#[test]
fn objects_that_no_longer_render_are_pruned() {
    let dir = homelab();
    assert_eq!(code(&terrace(dir.path(), &["apply"])), 0);
    let rendered = dir
        .path()
        .join(".terrace/rendered/homelab/k3s/status/v1_configmap_apps_status-page.yaml");
    assert!(rendered.exists());
    std::fs::write(
        dir.path().join("apps/status/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: status-v2\n  namespace: apps\n",
    )
    .expect("write");
    let (c, plan) = plan_json(dir.path(), &["--unit", "status"]);
    assert_eq!(c, 2);
    let changes = &plan["units"][0]["changes"];
    let actions: Vec<(&str, &str)> = changes
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["action"].as_str().expect("a"),
                c["address"].as_str().expect("b"),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("create", "v1 ConfigMap apps/status-v2"),
            ("delete", "v1 ConfigMap apps/status-page")
        ]
    );
    assert_eq!(
        code(&terrace(dir.path(), &["apply", "--unit", "status"])),
        0
    );
    assert!(!rendered.exists(), "the removed object's file is pruned");
}

#[test]
fn unapplied_dependencies_are_known_after_apply() {
    let dir = homelab();
    let o = terrace(dir.path(), &["plan", "--unit", "web", "--full-diff"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("(known after apply)"), "{out}");
    assert!(
        out.contains("some inputs are known only after a dependency is applied"),
        "{out}"
    );

    // Applying it alone is refused, naming what is missing.
    let o = terrace(dir.path(), &["apply", "--unit", "web"]);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("ingress, postgres which have never been applied"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_failure_stops_only_its_dependents() {
    let dir = homelab();
    write_files(
        dir.path(),
        &[(
            "services/postgres/broken.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
        )],
    );
    let o = terrace(dir.path(), &["apply", "-j", "3", "--output", "json"]);
    assert_eq!(code(&o), 1);
    let report: Value = serde_json::from_slice(&o.stdout).expect("json");
    let outcome = |name: &str| {
        report["units"]
            .as_array()
            .expect("units")
            .iter()
            .find(|u| u["unit"] == name)
            .map(|u| {
                (
                    u["outcome"].as_str().expect("o").to_owned(),
                    u["skippedBecause"].clone(),
                )
            })
            .expect("unit reported")
    };
    assert_eq!(outcome("postgres").0, "failed");
    assert_eq!(
        outcome("web"),
        ("skipped".to_owned(), Value::from("postgres"))
    );
    for independent in ["status", "ingress", "namespaces"] {
        assert_eq!(outcome(independent).0, "applied", "{independent}");
    }
    let err = report["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["unit"] == "postgres")
        .expect("postgres")["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(err.contains("services/postgres/broken.yaml:3:11"), "{err}");
    let text = terrace(dir.path(), &["apply"]);
    assert!(
        stdout(&text).contains("skipped: postgres failed"),
        "{}",
        stdout(&text)
    );
}

#[test]
fn a_locked_unit_names_its_holder_until_unlocked() {
    let dir = homelab();
    // Another live process (this test) holds the lock on `status`.
    let lock = dir.path().join(".terrace/state/homelab/locks/status.lock");
    std::fs::create_dir_all(lock.parent().expect("parent")).expect("mkdir");
    let holder = serde_json::json!({
        "pid": std::process::id(),
        "host": gethostname(),
        "command": "apply",
        "acquiredAt": "2026-11-21T10:00:00Z",
        "runId": "other-run",
    });
    std::fs::write(&lock, holder.to_string()).expect("lock");
    let o = terrace(dir.path(), &["apply"]);
    assert_eq!(code(&o), 1);
    let out = stdout(&o);
    assert!(
        out.contains(&format!("locked by pid {}", std::process::id())),
        "{out}"
    );
    assert!(out.contains("status") && out.contains("FAILED"), "{out}");

    let o = terrace(dir.path(), &["state", "unlock", "status"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("other-run"), "{}", stdout(&o));
    assert_eq!(code(&terrace(dir.path(), &["apply"])), 0);
}

fn gethostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Std::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .expect("git runs")
        .success();
    assert!(ok, "git {args:?}");
}

#[test]
fn affected_since_maps_changed_files_to_units_and_dependents() {
    let dir = homelab();
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "init"]);
    let names = |v: &Value| -> Vec<String> {
        v["units"]
            .as_array()
            .expect("units")
            .iter()
            .map(|u| u["unit"].as_str().expect("n").to_owned())
            .collect()
    };
    let (_, v) = plan_json(dir.path(), &["--affected-since", "HEAD"]);
    assert!(names(&v).is_empty(), "nothing changed: {v}");

    // A file outside every unit's directory affects the units that read
    // it when they were last planned: the shared chart, only `whoami`.
    let (_, _) = plan_json(dir.path(), &[]);
    let template = dir
        .path()
        .join("charts/app-template/templates/service.yaml");
    let text = std::fs::read_to_string(&template).expect("chart");
    std::fs::write(&template, text.replace("port: 80", "port: 8080")).expect("write");
    let (_, v) = plan_json(dir.path(), &["--affected-since", "HEAD"]);
    assert_eq!(names(&v), ["whoami"]);
    std::fs::write(&template, text).expect("write back");

    write_files(
        dir.path(),
        &[(
            "apps/web/extra.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra, namespace: apps}\n",
        )],
    );
    let (_, v) = plan_json(dir.path(), &["--affected-since", "HEAD"]);
    assert_eq!(names(&v), ["web"]);

    std::fs::write(
        dir.path().join("platform/namespaces/namespaces.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n",
    )
    .expect("write");
    let (_, v) = plan_json(dir.path(), &["--affected-since", "HEAD"]);
    assert_eq!(
        names(&v),
        [
            "namespaces",
            "ingress",
            "metrics",
            "postgres",
            "dashboard",
            "status",
            "web",
            "whoami"
        ]
    );

    let o = terrace(dir.path(), &["plan", "--affected-since", "no-such-ref"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("unknown revision `no-such-ref`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn destroy_plans_then_removes_dependents_first() {
    let dir = homelab();
    assert_eq!(code(&terrace(dir.path(), &["apply"])), 0);
    let o = terrace(dir.path(), &["destroy", "--unit", "postgres"]);
    assert_eq!(
        code(&o),
        2,
        "without --yes destroy plans, with changes: {}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("re-run with --yes"), "{}", stdout(&o));
    assert!(
        dir.path()
            .join(".terrace/rendered/homelab/k3s/postgres")
            .exists()
    );

    let o = terrace(
        dir.path(),
        &["destroy", "--unit", "postgres", "--yes", "--output", "json"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let order: Vec<&str> = v["units"]
        .as_array()
        .expect("u")
        .iter()
        .map(|u| u["unit"].as_str().expect("n"))
        .collect();
    assert_eq!(order, ["web", "postgres"], "dependents first");
    assert!(
        !dir.path()
            .join(".terrace/rendered/homelab/k3s/postgres")
            .exists()
    );
    let (_, plan) = plan_json(dir.path(), &[]);
    assert_eq!(units_with(&plan, "create"), ["postgres", "web"]);

    let o = terrace(dir.path(), &["state", "history", "--output", "json"]);
    let runs: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        runs.as_array().expect("runs").len(),
        2,
        "apply and destroy recorded"
    );
}

#[test]
fn markdown_and_graph_formats() {
    let dir = homelab();
    let o = terrace(dir.path(), &["plan", "--output", "markdown"]);
    assert_eq!(code(&o), 2);
    let md = stdout(&o);
    assert!(
        md.contains("| `web` | apps | manifests | create | +4 |"),
        "{md}"
    );
    assert!(md.contains("```diff"), "{md}");
    let dot = stdout(&terrace(dir.path(), &["graph", "--format", "dot"]));
    assert!(dot.contains("\"web\" -> \"postgres\";"), "{dot}");
    let mm = stdout(&terrace(dir.path(), &["graph", "--format", "mermaid"]));
    assert!(mm.contains("postgres --> web"), "{mm}");
}

#[test]
fn init_creates_a_project_that_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = terrace(dir.path(), &["init", "lab", "--name", "lab"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lab = dir.path().join("lab");
    assert_eq!(code(&terrace(&lab, &["validate"])), 0);
    let o = terrace(&lab, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert_eq!(code(&terrace(&lab, &["plan"])), 0);
    // From a subdirectory, the root is found upwards.
    assert_eq!(code(&terrace(&lab.join("apps/hello"), &["plan"])), 0);
    let o = terrace(&lab, &["init"]);
    assert_eq!(code(&o), 1, "refuses to overwrite");
}

#[test]
fn every_command_has_help_with_an_example() {
    let dir = tempfile::tempdir().expect("tempdir");
    for cmd in [
        vec!["init"],
        vec!["validate"],
        vec!["graph"],
        vec!["render"],
        vec!["plan"],
        vec!["apply"],
        vec!["destroy"],
        vec!["output"],
        vec!["state", "list"],
        vec!["state", "show"],
        vec!["state", "unlock"],
        vec!["state", "history"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let o = terrace(dir.path(), &args);
        assert_eq!(code(&o), 0, "{cmd:?}");
        assert!(
            stdout(&o).contains("Example"),
            "{cmd:?} --help has no example"
        );
    }
}

#[test]
fn kustomize_build_prints_what_kubectl_kustomize_prints() {
    let case = crate::repo_root()
        .join("crates/terrace-kustomize/tests/conformance/cases/generator-reference-with-prefix");
    let o = terrace(&case, &["kustomize", "build", "overlay"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let parse = |t: &str| -> Vec<Value> {
        terrace_yaml::tree::parse_stream(t, std::path::Path::new("x"))
            .expect("yaml")
            .iter()
            .map(terrace_yaml::tree::Node::to_json)
            .collect()
    };
    let expected = std::fs::read_to_string(case.join("expected.yaml")).expect("expected");
    assert_eq!(parse(&stdout(&o)), parse(&expected));
    let o = terrace(&case, &["kustomize", "build", "nowhere"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("no kustomization file"),
        "{}",
        stderr(&o)
    );
}
