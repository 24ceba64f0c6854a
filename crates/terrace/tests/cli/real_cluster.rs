//! terrace against a real Kubernetes API server: what the fakes of
//! `terrace-kube` (`crates/terrace-kube/tests/sync.rs`) show, checked on
//! the server itself.
//!
//! - hooks and sync waves reach the server in order, and hooks run anew;
//! - a CRD and a custom resource of it apply together the first time;
//! - the conflict policies against a second field manager;
//! - prune, and the annotations that opt out of it;
//! - changes by hand shown as drift and healed;
//! - the health of custom resources whose conditions the test sets;
//! - hooks marked `Skip` neither applied nor planned;
//! - an object that names no namespace pruned where it was applied.
//!
//! Each test runs when `TERRACE_TEST_KUBECONFIG` names a kubeconfig, and
//! says it is skipped otherwise. It works in namespaces and API groups of
//! its own (`terrace-rt-…`, `….rt.terrace.dev`), first deletes what an
//! earlier run left there and waits until it is gone, and destroys what it
//! made; whatever is still there when it ends, passed or failed, is
//! deleted then. Order on the server is read from
//! `metadata.resourceVersion`, the etcd revision of an object's last write,
//! which grows with every write (timestamps have only second resolution).
//! Nothing here needs a pod, so the tests pass on an API server without
//! nodes.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{code, kubectl, real_cluster, std_command, stderr, stdout, unit, write_files};

const HOOK: &str = "argocd.argoproj.io/hook";
const WAVE: &str = "argocd.argoproj.io/sync-wave";

/// kubectl, which must succeed; what it printed.
fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let o = kubectl(kubeconfig, args);
    assert_eq!(
        code(&o),
        0,
        "kubectl {}: {}{}",
        args.join(" "),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// The live object (with its managed fields), or `None` when there is
/// none.
fn live(kubeconfig: &Path, namespace: Option<&str>, kind: &str, name: &str) -> Option<Value> {
    let mut args = vec![
        "get",
        kind,
        name,
        "--ignore-not-found",
        "--show-managed-fields",
        "-o",
        "json",
    ];
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    let out = kubectl_ok(kubeconfig, &args);
    (!out.trim().is_empty()).then(|| serde_json::from_str(&out).expect("kubectl prints JSON"))
}

/// A live object that must exist.
fn existing(kubeconfig: &Path, namespace: Option<&str>, kind: &str, name: &str) -> Value {
    live(kubeconfig, namespace, kind, name)
        .unwrap_or_else(|| panic!("{kind} {name} in {namespace:?} exists"))
}

/// The resource version of a live object: the etcd revision of its last
/// write.
fn version(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a numeric resourceVersion in {v}"))
}

fn uid(v: &Value) -> String {
    v["metadata"]["uid"].as_str().expect("a uid").to_owned()
}

/// Asserts that `written` (name, resource version) are in increasing order.
fn assert_in_order(what: &str, written: &[(&str, u64)]) {
    for pair in written.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "{what}: {} was written after {}: {written:?}",
            pair[0].0,
            pair[1].0
        );
    }
}

/// Whether field manager `manager` of a live object owns the field at
/// `path` (`["f:data", "f:color"]`).
fn owns(v: &Value, manager: &str, path: &[&str]) -> bool {
    v["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["manager"] == manager)
        .any(|m| {
            path.iter()
                .try_fold(&m["fieldsV1"], |at, key| at.get(*key))
                .is_some()
        })
}

/// Polls `f` every 200 ms until it is true; fails saying `what` after
/// `limit`.
fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The namespaces and CustomResourceDefinitions a test works in. Made by
/// [`Sandbox::clear`], which first deletes what an earlier run left there
/// and waits until it is gone; when dropped (the test passed or failed) it
/// deletes them again without waiting, so hooks, objects kept from prune
/// and whatever a failed test left do not outlive the test.
#[derive(Debug)]
struct Sandbox {
    kubeconfig: PathBuf,
    namespaces: &'static [&'static str],
    crds: &'static [&'static str],
}

impl Sandbox {
    fn clear(
        kubeconfig: &Path,
        namespaces: &'static [&'static str],
        crds: &'static [&'static str],
    ) -> Sandbox {
        let sandbox = Sandbox {
            kubeconfig: kubeconfig.to_owned(),
            namespaces,
            crds,
        };
        for o in sandbox.delete(true) {
            assert_eq!(
                code(&o),
                0,
                "clearing what an earlier run left: {}{}",
                stdout(&o),
                stderr(&o)
            );
        }
        sandbox
    }

    fn delete(&self, wait: bool) -> Vec<Output> {
        let wait = if wait { "--wait=true" } else { "--wait=false" };
        let mut outputs = Vec::new();
        for (kind, names) in [
            ("namespace", self.namespaces),
            ("customresourcedefinition", self.crds),
        ] {
            if names.is_empty() {
                continue;
            }
            let mut args = vec!["delete", kind, "--ignore-not-found", wait, "--timeout=120s"];
            args.extend_from_slice(names);
            outputs.push(kubectl(&self.kubeconfig, &args));
        }
        outputs
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.delete(false);
    }
}

/// Asserts that a namespace is gone or going.
fn assert_namespace_destroyed(kubeconfig: &Path, name: &str) {
    if let Some(ns) = live(kubeconfig, None, "namespace", name) {
        assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    }
}

/// A project in a temporary directory whose cluster target `k3s` is bound
/// to a kubeconfig, with layers `base` and `apps`.
#[derive(Debug)]
struct Project {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    /// Whether workloads are waited for (`TERRACE_KUBE_WAIT`): not where
    /// pods would have to start.
    wait: bool,
    /// The helm binary helm units run.
    helm: Option<PathBuf>,
}

impl Project {
    fn new(name: &str, kubeconfig: &Path) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let config =
            format!("name: {name}\nlayers: [base, apps]\ntargets:\n  k3s:\n    type: cluster\n");
        write_files(dir.path(), &[("terrace.yaml", &config)]);
        Project {
            dir,
            kubeconfig: kubeconfig.to_owned(),
            wait: true,
            helm: None,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, path: &str, content: &str) {
        write_files(self.root(), &[(path, content)]);
    }

    fn remove(&self, path: &str) {
        std::fs::remove_file(self.root().join(path)).expect("remove a manifest");
    }

    /// The unit `ns` (layer `base`), which makes `names`.
    fn namespaces(&self, names: &[&str]) {
        self.write("ns/unit.yaml", "layer: base\nkind: manifests\n");
        let objects: Vec<Value> = names
            .iter()
            .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
            .collect();
        self.write("ns/namespaces.yaml", &documents(&objects));
    }

    /// terrace with `args`, the target bound to `kubeconfig`.
    fn run_with(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let binding = format!("k3s={}", kubeconfig.display());
        let mut cmd = std_command(self.root());
        cmd.args(["--cluster", &binding])
            .args(args)
            .env("TERRACE_KUBE_POLL_MS", "200");
        if let Some(helm) = &self.helm {
            cmd.env("TERRACE_HELM", helm);
        }
        if !self.wait {
            cmd.env("TERRACE_KUBE_WAIT", "false");
        }
        cmd.output().expect("terrace runs")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(&self.kubeconfig, args)
    }

    /// terrace with `args`, which must succeed.
    fn must(&self, args: &[&str]) {
        let o = self.run(args);
        assert_eq!(
            code(&o),
            0,
            "terrace {}: {}{}",
            args.join(" "),
            stdout(&o),
            stderr(&o)
        );
    }

    /// terrace with `args`, which must fail; all it printed.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert_eq!(code(&o), 1, "terrace {}: {all}", args.join(" "));
        all
    }

    /// The plan as JSON, and the exit code (0: nothing to do, 2: changes,
    /// 1: failed).
    fn plan_with(&self, kubeconfig: &Path) -> (i32, Value) {
        let o = self.run_with(kubeconfig, &["plan", "--output", "json"]);
        let v = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("plan JSON: {e}\n{}{}", stdout(&o), stderr(&o)));
        (code(&o), v)
    }

    fn plan(&self) -> (i32, Value) {
        self.plan_with(&self.kubeconfig)
    }
}

/// Objects as one YAML file of several documents (JSON is YAML).
fn documents(objects: &[Value]) -> String {
    let docs: Vec<String> = objects
        .iter()
        .map(|o| serde_json::to_string_pretty(o).expect("values serialize"))
        .collect();
    docs.join("\n---\n") + "\n"
}

fn config_map(namespace: &str, name: &str, annotations: Value, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "data": data,
    })
}

/// A unit's changes as (address, action), sorted.
fn changes(unit: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = unit["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["address"].as_str().unwrap_or_default().to_owned(),
                c["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The diff a unit shows for `address`.
fn diff_of(unit: &Value, address: &str) -> String {
    unit["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["address"] == address)
        .and_then(|c| c["diff"].as_str())
        .unwrap_or_else(|| panic!("a diff of {address} in {unit}"))
        .to_owned()
}

fn notes(unit: &Value) -> Vec<String> {
    unit["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn real_cluster_hooks_and_sync_waves_reach_the_server_in_order() {
    const NS: &str = "terrace-rt-waves";
    let Some(kc) = real_cluster("real_cluster_hooks_and_sync_waves_reach_the_server_in_order")
    else {
        return;
    };
    let _sandbox = Sandbox::clear(&kc, &[NS], &[]);
    let p = Project::new("rt-waves", &kc);
    // The namespace comes from a unit of its own: a PreSync hook runs
    // before everything else of its unit.
    p.namespaces(&[NS]);
    p.write(
        "app/unit.yaml",
        "layer: apps\nkind: manifests\ndependsOn: [ns]\n",
    );
    // ConfigMaps as hooks: they need no pod, and are healthy once they
    // exist. Given in the worst order on purpose.
    let objects = |middle: &str| {
        documents(&[
            config_map(NS, "post", json!({HOOK: "PostSync"}), json!({"k": "v"})),
            config_map(NS, "late", json!({WAVE: "1"}), json!({"k": "v"})),
            config_map(NS, "middle", json!({WAVE: "0"}), json!({"k": middle})),
            config_map(NS, "early", json!({WAVE: "-1"}), json!({"k": "v"})),
            config_map(NS, "pre", json!({HOOK: "PreSync"}), json!({"k": "v"})),
        ])
    };
    p.write("app/objects.yaml", &objects("1"));
    let (c, plan) = p.plan();
    assert_eq!(c, 2, "{plan}");
    // Hooks are not changes.
    assert_eq!(
        changes(unit(&plan, "app")),
        pairs(&[
            ("v1 ConfigMap terrace-rt-waves/early", "create"),
            ("v1 ConfigMap terrace-rt-waves/late", "create"),
            ("v1 ConfigMap terrace-rt-waves/middle", "create"),
        ]),
        "{plan}"
    );
    p.must(&["apply"]);
    let at = |name: &str| existing(&kc, Some(NS), "configmap", name);
    let first: Vec<(&str, Value)> = ["pre", "early", "middle", "late", "post"]
        .into_iter()
        .map(|n| (n, at(n)))
        .collect();
    let versions: Vec<(&str, u64)> = first.iter().map(|(n, v)| (*n, version(v))).collect();
    assert_in_order("PreSync, waves -1, 0 and 1, then PostSync", &versions);
    // Every object is stamped with its owner.
    let early = &first[1].1;
    assert_eq!(
        early["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "terrace"
    );
    assert_eq!(early["metadata"]["annotations"]["terrace.dev/unit"], "app");
    assert_eq!(
        early["metadata"]["annotations"]["terrace.dev/project"],
        "rt-waves"
    );
    assert!(owns(early, "terrace", &["f:data", "f:k"]), "{early}");
    assert_eq!(p.plan().0, 0, "hooks are not compared");

    // One object changed: the unit is applied again, its hooks run anew
    // around the change, and unchanged objects are not written.
    p.write("app/objects.yaml", &objects("2"));
    let (c, plan) = p.plan();
    assert_eq!(c, 2, "{plan}");
    assert_eq!(
        changes(unit(&plan, "app")),
        pairs(&[("v1 ConfigMap terrace-rt-waves/middle", "update")]),
    );
    p.must(&["apply"]);
    let (pre, middle, late, post) = (at("pre"), at("middle"), at("late"), at("post"));
    assert_eq!(middle["data"]["k"], "2");
    assert_ne!(
        uid(&pre),
        uid(&first[0].1),
        "the PreSync hook was made anew"
    );
    assert_ne!(
        uid(&post),
        uid(&first[4].1),
        "the PostSync hook was made anew"
    );
    assert_eq!(
        version(&at("early")),
        versions[1].1,
        "early was not written"
    );
    assert_eq!(version(&late), versions[3].1, "late was not written");
    assert_in_order(
        "the second apply",
        &[
            ("late (first apply)", version(&late)),
            ("pre", version(&pre)),
            ("middle", version(&middle)),
            ("post", version(&post)),
        ],
    );

    p.must(&["destroy", "--yes"]);
    assert_namespace_destroyed(&kc, NS);
}

#[test]
fn real_cluster_a_crd_and_its_custom_resource_apply_together_the_first_time() {
    const NS: &str = "terrace-rt-crd";
    const CRD: &str = "widgets.crd.rt.terrace.dev";
    let Some(kc) =
        real_cluster("real_cluster_a_crd_and_its_custom_resource_apply_together_the_first_time")
    else {
        return;
    };
    let _sandbox = Sandbox::clear(&kc, &[NS], &[CRD]);
    let p = Project::new("rt-crd", &kc);
    p.namespaces(&[NS]);
    p.write(
        "app/unit.yaml",
        "layer: apps\nkind: manifests\ndependsOn: [ns]\n",
    );
    // The custom resource before its CRD, on purpose.
    p.write(
        "app/objects.yaml",
        &documents(&[
            json!({"apiVersion": "crd.rt.terrace.dev/v1", "kind": "Widget",
                "metadata": {"name": "w1", "namespace": NS}, "spec": {"size": 3}}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": CRD},
                "spec": {"group": "crd.rt.terrace.dev", "scope": "Namespaced",
                    "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {"type": "object",
                            "x-kubernetes-preserve-unknown-fields": true}}}]}}),
        ]),
    );
    // The plan needs no CRD on the server yet.
    let (c, plan) = p.plan();
    assert_eq!(c, 2, "{plan}");
    assert_eq!(
        changes(unit(&plan, "app")),
        pairs(&[
            (
                "apiextensions.k8s.io/v1 CustomResourceDefinition widgets.crd.rt.terrace.dev",
                "create"
            ),
            ("crd.rt.terrace.dev/v1 Widget terrace-rt-crd/w1", "create"),
        ]),
        "{plan}"
    );
    p.must(&["apply"]);

    let crd = existing(&kc, None, "customresourcedefinition", CRD);
    let established = crd["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established, "{crd}");
    let w1 = existing(&kc, Some(NS), "widgets.crd.rt.terrace.dev", "w1");
    assert_eq!(w1["spec"]["size"], 3);
    assert_eq!(
        w1["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "terrace"
    );
    assert_eq!(w1["metadata"]["annotations"]["terrace.dev/unit"], "app");
    assert_eq!(
        w1["metadata"]["annotations"]["terrace.dev/environment"],
        "default"
    );
    let applied = w1["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["manager"] == "terrace" && m["operation"] == "Apply");
    assert!(applied, "server-side apply as `terrace`: {w1}");
    let (c, plan) = p.plan();
    assert_eq!(c, 0, "{plan}");

    p.must(&["destroy", "--yes"]);
    eventually("the CRD is deleted", Duration::from_secs(30), || {
        live(&kc, None, "customresourcedefinition", CRD).is_none()
    });
    assert_namespace_destroyed(&kc, NS);
}

#[test]
fn real_cluster_a_field_of_another_manager_follows_the_conflict_policy() {
    const NS: &str = "terrace-rt-conflicts";
    let Some(kc) =
        real_cluster("real_cluster_a_field_of_another_manager_follows_the_conflict_policy")
    else {
        return;
    };
    let _sandbox = Sandbox::clear(&kc, &[NS], &[]);
    let p = Project::new("rt-conflicts", &kc);
    p.namespaces(&[NS]);
    let policy = |conflicts: &str| {
        p.write(
            "app/unit.yaml",
            &format!(
                "layer: apps\nkind: manifests\ndependsOn: [ns]\nmanifests:\n  apply:\n    conflicts: {conflicts}\n"
            ),
        );
    };
    policy("yield");
    p.write(
        "app/settings.yaml",
        &documents(&[config_map(
            NS,
            "settings",
            json!({}),
            json!({"color": "blue", "size": "small"}),
        )]),
    );
    p.must(&["apply"]);

    // A controller, field manager `other`, takes `data.color` over with
    // server-side apply.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let theirs = elsewhere.path().join("other.yaml");
    std::fs::write(
        &theirs,
        documents(&[json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": NS}, "data": {"color": "red"}})]),
    )
    .expect("write");
    let theirs = theirs.to_str().expect("a UTF-8 path");
    kubectl_ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            theirs,
        ],
    );
    let settings = || existing(&kc, Some(NS), "configmap", "settings");
    assert!(owns(&settings(), "other", &["f:data", "f:color"]));
    const ADDRESS: &str = "v1 ConfigMap terrace-rt-conflicts/settings";

    // yield: no drift; the plan says what is left to `other`; apply
    // leaves it.
    let (c, plan) = p.plan();
    assert_eq!(c, 0, "{plan}");
    let app = unit(&plan, "app");
    assert!(
        notes(app).iter().any(|n| n.contains(ADDRESS)
            && n.contains("left to the controllers")
            && n.contains(".data.color")),
        "{app}"
    );
    p.must(&["apply"]);
    assert_eq!(settings()["data"]["color"], "red");

    // error: plan and apply fail, naming the field and its owner.
    policy("error");
    let (c, plan) = p.plan();
    assert_eq!(c, 1, "{plan}");
    let app = unit(&plan, "app");
    assert_eq!(app["outcome"], "failed", "{app}");
    let message = app["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(ADDRESS)
            && message.contains(r#".data.color (conflict with "other")"#)
            && message.contains("apply.conflicts"),
        "{message}"
    );
    let all = p.fails(&["apply"]);
    assert!(
        all.contains(r#".data.color (conflict with "other")"#),
        "{all}"
    );
    assert_eq!(settings()["data"]["color"], "red");

    // force: taken back.
    policy("force");
    let (c, plan) = p.plan();
    assert_eq!(c, 2, "{plan}");
    let app = unit(&plan, "app");
    assert_eq!(changes(app), pairs(&[(ADDRESS, "update")]));
    assert!(
        diff_of(app, ADDRESS).contains("~ data.color: red → blue"),
        "{app}"
    );
    p.must(&["apply"]);
    let now = settings();
    assert_eq!(now["data"], json!({"color": "blue", "size": "small"}));
    assert!(owns(&now, "terrace", &["f:data", "f:color"]), "{now}");
    assert!(!owns(&now, "other", &["f:data", "f:color"]), "{now}");
    let (c, plan) = p.plan();
    assert_eq!(c, 0, "{plan}");

    p.must(&["destroy", "--yes"]);
    assert_namespace_destroyed(&kc, NS);
}

#[test]
fn real_cluster_objects_that_left_the_unit_are_pruned_unless_they_opt_out() {
    const NS: &str = "terrace-rt-prune";
    let Some(kc) =
        real_cluster("real_cluster_objects_that_left_the_unit_are_pruned_unless_they_opt_out")
    else {
        return;
    };
    let _sandbox = Sandbox::clear(&kc, &[NS], &[]);
    let p = Project::new("rt-prune", &kc);
    p.namespaces(&[NS]);
    p.write(
        "app/unit.yaml",
        "layer: apps\nkind: manifests\ndependsOn: [ns]\n",
    );
    // terrace's own opt-out, Flux's and Argo CD's (among other options).
    let kept = [
        ("kept-terrace", json!({"terrace.dev/prune": "disabled"})),
        (
            "kept-flux",
            json!({"kustomize.toolkit.fluxcd.io/prune": "disabled"}),
        ),
        (
            "kept-argo",
            json!({"argocd.argoproj.io/sync-options": "ServerSideApply=true,Prune=false"}),
        ),
    ];
    let mut all = vec![
        ("stays", json!({})),
        ("gone", json!({"note": "pruned when it leaves the unit"})),
    ];
    all.extend(kept.iter().cloned());
    for (name, annotations) in &all {
        p.write(
            &format!("app/{name}.yaml"),
            &documents(&[config_map(NS, name, annotations.clone(), json!({"k": "v"}))]),
        );
    }
    p.must(&["apply"]);
    for (name, _) in &all {
        existing(&kc, Some(NS), "configmap", name);
    }

    for name in ["gone", "kept-terrace", "kept-flux", "kept-argo"] {
        p.remove(&format!("app/{name}.yaml"));
    }
    let (c, plan) = p.plan();
    assert_eq!(c, 2, "{plan}");
    let app = unit(&plan, "app");
    assert_eq!(
        changes(app),
        pairs(&[("v1 ConfigMap terrace-rt-prune/gone", "delete")])
    );
    for (name, _) in &kept {
        assert!(
            notes(app).iter().any(|n| n
                .contains(&format!("v1 ConfigMap terrace-rt-prune/{name}:"))
                && n.contains("disable pruning")),
            "{name}: {app}"
        );
    }
    p.must(&["apply"]);
    assert!(live(&kc, Some(NS), "configmap", "gone").is_none());
    existing(&kc, Some(NS), "configmap", "stays");
    for (name, _) in &kept {
        let v = existing(&kc, Some(NS), "configmap", name);
        assert_eq!(v["data"]["k"], "v", "{v}");
    }
    // The kept objects are no longer the unit's: the next plan is clean
    // and says nothing of them.
    let (c, plan) = p.plan();
    assert_eq!(c, 0, "{plan}");
    assert!(notes(unit(&plan, "app")).is_empty(), "{plan}");

    p.must(&["destroy", "--yes"]);
    assert_namespace_destroyed(&kc, NS);
}

#[test]
fn real_cluster_changes_by_hand_are_drift_and_apply_heals_them() {
    const NS: &str = "terrace-rt-drift";
    let Some(kc) = real_cluster("real_cluster_changes_by_hand_are_drift_and_apply_heals_them")
    else {
        return;
    };
    let _sandbox = Sandbox::clear(&kc, &[NS], &[]);
    let mut p = Project::new("rt-drift", &kc);
    // The Deployment's pods never start on a server without nodes.
    p.wait = false;
    p.namespaces(&[NS]);
    p.write(
        "app/unit.yaml",
        "layer: apps\nkind: manifests\ndependsOn: [ns]\n",
    );
    p.write(
        "app/objects.yaml",
        &documents(&[
            config_map(NS, "page", json!({}), json!({"title": "as committed"})),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": NS},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]}}}}),
        ]),
    );
    p.must(&["apply"]);
    assert_eq!(p.plan().0, 0);

    // By hand: `kubectl patch` (field manager `kubectl-patch`), `kubectl
    // scale` (`kubectl`, through the scale subresource), and an annotation
    // the unit does not set.
    kubectl_ok(
        &kc,
        &[
            "-n",
            NS,
            "patch",
            "configmap",
            "page",
            "--type=merge",
            "-p",
            r#"{"data":{"title":"changed by hand"}}"#,
        ],
    );
    kubectl_ok(
        &kc,
        &["-n", NS, "scale", "deployment", "web", "--replicas=5"],
    );
    kubectl_ok(
        &kc,
        &[
            "-n",
            NS,
            "annotate",
            "configmap",
            "page",
            "example.com/owner=someone",
        ],
    );
    let page = existing(&kc, Some(NS), "configmap", "page");
    assert!(
        owns(&page, "kubectl-patch", &["f:data", "f:title"]),
        "{page}"
    );

    let (c, plan) = p.plan();
    assert_eq!(c, 2, "{plan}");
    let app = unit(&plan, "app");
    const PAGE: &str = "v1 ConfigMap terrace-rt-drift/page";
    const WEB: &str = "apps/v1 Deployment terrace-rt-drift/web";
    assert_eq!(changes(app), pairs(&[(WEB, "update"), (PAGE, "update")]));
    // Each change also names its object as a typed reference.
    let web_change = app["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["address"] == WEB)
        .expect("the Deployment's change");
    assert_eq!(
        web_change["object"],
        json!({"group": "apps", "version": "v1", "kind": "Deployment", "namespace": NS, "name": "web"})
    );
    let page_diff = diff_of(app, PAGE);
    assert!(
        page_diff.contains("~ data.title: changed by hand → as committed"),
        "{app}"
    );
    assert!(!page_diff.contains("example.com/owner"), "{app}");
    assert!(
        diff_of(app, WEB).contains("~ spec.replicas: 5 → 2"),
        "{app}"
    );
    let said = notes(app);
    for field in [".data.title", ".spec.replicas"] {
        assert!(
            said.iter()
                .any(|n| n.contains("changed by hand, taken back") && n.contains(field)),
            "{field}: {said:?}"
        );
    }

    p.must(&["apply"]);
    let page = existing(&kc, Some(NS), "configmap", "page");
    assert_eq!(page["data"]["title"], "as committed");
    assert_eq!(
        page["metadata"]["annotations"]["example.com/owner"], "someone",
        "what the unit does not set is left alone"
    );
    let web = existing(&kc, Some(NS), "deployment", "web");
    assert_eq!(web["spec"]["replicas"], 2);
    let (c, plan) = p.plan();
    assert_eq!(c, 0, "{plan}");

    p.must(&["destroy", "--yes"]);
    assert_namespace_destroyed(&kc, NS);
}

/// The namespace of the health test's probes.
const PROBES_NS: &str = "terrace-rt-health";
/// Their resource.
const PROBES: &str = "probes.health.rt.terrace.dev";

/// Sets the conditions of probe `name` through the status subresource, as
/// its controller would; the resource version of that write.
fn set_conditions(kubeconfig: &Path, name: &str, conditions: Value) -> u64 {
    let patch = json!({"status": {"conditions": conditions}}).to_string();
    let out = kubectl_ok(
        kubeconfig,
        &[
            "-n",
            PROBES_NS,
            "patch",
            PROBES,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    );
    out.trim().parse().expect("a resourceVersion")
}

#[test]
fn real_cluster_custom_resources_are_waited_for_until_ready_and_named_when_not() {
    const NS: &str = PROBES_NS;
    const CRD: &str = PROBES;
    let Some(kc) =
        real_cluster("real_cluster_custom_resources_are_waited_for_until_ready_and_named_when_not")
    else {
        return;
    };
    let _sandbox = Sandbox::clear(&kc, &[NS], &[CRD]);
    let p = Project::new("rt-health", &kc);
    // The namespace and a CRD whose status is a subresource, as
    // controllers' are: what a manifest says of status is never applied.
    p.write("base/unit.yaml", "layer: base\nkind: manifests\n");
    p.write(
        "base/objects.yaml",
        &documents(&[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": CRD},
                "spec": {"group": "health.rt.terrace.dev", "scope": "Namespaced",
                    "names": {"kind": "Probe", "plural": "probes", "singular": "probe"},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                        "subresources": {"status": {}},
                        "schema": {"openAPIV3Schema": {"type": "object",
                            "x-kubernetes-preserve-unknown-fields": true}}}]}}),
        ]),
    );
    p.write(
        "g1/unit.yaml",
        "layer: apps\nkind: manifests\ndependsOn: [base]\nmanifests:\n  apply:\n    timeout: 20s\n",
    );
    p.write(
        "g2/unit.yaml",
        "layer: apps\nkind: manifests\ndependsOn: [base]\nmanifests:\n  apply:\n    timeout: 3s\n",
    );
    let probe = |name: &str, size: u32| {
        json!({"apiVersion": "health.rt.terrace.dev/v1", "kind": "Probe",
            "metadata": {"name": name, "namespace": NS}, "spec": {"size": size}})
    };
    p.write("g1/probe.yaml", &documents(&[probe("g1", 1)]));
    p.write("g2/probe.yaml", &documents(&[probe("g2", 1)]));
    // No conditions yet: ready once they exist.
    p.must(&["apply"]);

    // g1 changes while it is not Ready: apply waits for it, and its next
    // wave starts only once it is Ready.
    set_conditions(
        &kc,
        "g1",
        json!([{"type": "Ready", "status": "False", "reason": "Warming", "message": "the probe warms up"}]),
    );
    p.write(
        "g1/probe.yaml",
        &documents(&[
            probe("g1", 2),
            config_map(NS, "after-g1", json!({WAVE: "1"}), json!({"k": "v"})),
        ]),
    );
    let controller = {
        let kc = kc.clone();
        std::thread::spawn(move || {
            // Once terrace applied the change, the "controller" reports
            // Ready a moment later.
            eventually("terrace applies g1", Duration::from_secs(30), || {
                live(&kc, Some(PROBES_NS), PROBES, "g1").is_some_and(|g| g["spec"]["size"] == 2)
            });
            std::thread::sleep(Duration::from_secs(1));
            set_conditions(
                &kc,
                "g1",
                json!([{"type": "Ready", "status": "True", "reason": "Warm", "message": "ready"}]),
            )
        })
    };
    p.must(&["apply", "--unit", "g1"]);
    let ready_at = controller.join().expect("the status thread");
    let after = existing(&kc, Some(NS), "configmap", "after-g1");
    assert!(
        version(&after) > ready_at,
        "wave 1 was applied (revision {}) before g1 was Ready (revision {ready_at})",
        version(&after)
    );

    // g2 changes and stays not Ready: apply fails at the unit's timeout,
    // naming it and its reason.
    set_conditions(
        &kc,
        "g2",
        json!([{"type": "Ready", "status": "False", "reason": "OutOfProbes", "message": "no probes left"}]),
    );
    p.write("g2/probe.yaml", &documents(&[probe("g2", 2)]));
    let all = p.fails(&["apply", "--unit", "g2"]);
    assert!(
        all.contains("not healthy within the unit's timeout")
            && all.contains(
                "health.rt.terrace.dev/v1 Probe terrace-rt-health/g2: OutOfProbes: no probes left"
            ),
        "{all}"
    );
    // Stalled: a failure at once (the failed unit is applied again).
    set_conditions(
        &kc,
        "g2",
        json!([
            {"type": "Ready", "status": "False", "reason": "OutOfProbes", "message": "no probes left"},
            {"type": "Stalled", "status": "True", "reason": "GaveUp", "message": "will not retry"}
        ]),
    );
    let all = p.fails(&["apply", "--unit", "g2"]);
    assert!(
        all.contains(
            "unhealthy: health.rt.terrace.dev/v1 Probe terrace-rt-health/g2: GaveUp: will not retry"
        ) && !all.contains("within the unit's timeout"),
        "{all}"
    );

    p.must(&["destroy", "--yes"]);
    assert_namespace_destroyed(&kc, NS);
}

#[test]
fn real_cluster_skipped_hooks_are_neither_applied_nor_planned() {
    const NS: &str = "terrace-rt-skip";
    let Some(kc) = real_cluster("real_cluster_skipped_hooks_are_neither_applied_nor_planned")
    else {
        return;
    };
    let _sandbox = Sandbox::clear(&kc, &[NS], &[]);
    let p = Project::new("rt-skip", &kc);
    p.namespaces(&[NS]);
    p.write(
        "app/unit.yaml",
        "layer: apps\nkind: manifests\ndependsOn: [ns]\n",
    );
    p.write(
        "app/objects.yaml",
        &documents(&[
            config_map(NS, "plain", json!({}), json!({"k": "v"})),
            config_map(NS, "never", json!({HOOK: "Skip"}), json!({"k": "v"})),
        ]),
    );
    let (_, first) = p.plan();
    p.must(&["apply"]);
    existing(&kc, Some(NS), "configmap", "plain");
    assert!(live(&kc, Some(NS), "configmap", "never").is_none());
    assert_eq!(
        changes(unit(&first, "app")),
        pairs(&[("v1 ConfigMap terrace-rt-skip/plain", "create")]),
        "a skipped hook is no change: {first}"
    );
    let (c, plan) = p.plan();
    assert_eq!(
        c, 0,
        "a skipped hook is not planned again and again: {plan}"
    );

    p.must(&["destroy", "--yes"]);
    assert_namespace_destroyed(&kc, NS);
}

/// A copy of `kubeconfig` (self-contained) in `dir` whose context's
/// default namespace is `namespace`.
fn kubeconfig_in(kubeconfig: &Path, dir: &Path, namespace: &str) -> PathBuf {
    let copy = dir.join(format!("kubeconfig-{namespace}"));
    let text = kubectl_ok(kubeconfig, &["config", "view", "--flatten", "--raw"]);
    std::fs::write(&copy, text).expect("write a kubeconfig");
    kubectl_ok(
        &copy,
        &[
            "config",
            "set-context",
            "--current",
            "--namespace",
            namespace,
        ],
    );
    copy
}

#[test]
fn real_cluster_an_object_without_a_namespace_is_pruned_where_it_was_applied() {
    const A: &str = "terrace-rt-ns-a";
    const B: &str = "terrace-rt-ns-b";
    let Some(kc) =
        real_cluster("real_cluster_an_object_without_a_namespace_is_pruned_where_it_was_applied")
    else {
        return;
    };
    let _sandbox = Sandbox::clear(&kc, &[A, B], &[]);
    let configs = tempfile::tempdir().expect("tempdir");
    let in_a = kubeconfig_in(&kc, configs.path(), A);
    let in_b = kubeconfig_in(&kc, configs.path(), B);
    let p = Project::new("rt-ns", &in_a);
    p.namespaces(&[A, B]);
    p.write(
        "app/unit.yaml",
        "layer: apps\nkind: manifests\ndependsOn: [ns]\n",
    );
    // `homeless` names no namespace: it goes to the context's.
    p.write(
        "app/homeless.yaml",
        &documents(&[json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "homeless"}, "data": {"k": "v"}})]),
    );
    p.write(
        "app/anchor.yaml",
        &documents(&[config_map(A, "anchor", json!({}), json!({"k": "v"}))]),
    );
    p.must(&["apply", "--unit", "ns"]);
    // An object of the same name in the other namespace, not terrace's.
    kubectl_ok(
        &kc,
        &[
            "-n",
            B,
            "create",
            "configmap",
            "homeless",
            "--from-literal=k=bystander",
        ],
    );
    p.must(&["apply"]);
    let ours = existing(&kc, Some(A), "configmap", "homeless");
    assert_eq!(ours["metadata"]["annotations"]["terrace.dev/unit"], "app");
    let bystander = || live(&kc, Some(B), "configmap", "homeless");
    let before = bystander().expect("the bystander");

    // The object leaves the unit while the context names the other
    // namespace.
    p.remove("app/homeless.yaml");
    let (c, plan) = p.plan_with(&in_b);
    assert_eq!(c, 2, "{plan}");
    let o = p.run_with(&in_b, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let after = bystander().unwrap_or_else(|| {
        panic!("the ConfigMap terrace never applied, in {B}, was deleted; the plan was {plan}")
    });
    assert_eq!(after["data"]["k"], "bystander");
    assert_eq!(version(&after), version(&before), "{B} was not touched");
    assert!(
        live(&kc, Some(A), "configmap", "homeless").is_none(),
        "the ConfigMap terrace applied in {A} is pruned; the plan was {plan}"
    );
    let deletes = changes(unit(&plan, "app"));
    assert!(
        deletes.len() == 1
            && deletes[0].1 == "delete"
            && deletes[0].0.contains("terrace-rt-ns-a/homeless"),
        "the plan names what it deletes, in {A}: {plan}"
    );
    // The object that names its namespace is where it was, whatever the
    // context says.
    let (c, plan) = p.plan_with(&in_b);
    assert_eq!(c, 0, "{plan}");

    p.must(&["destroy", "--yes"]);
    assert_namespace_destroyed(&kc, A);
    assert_namespace_destroyed(&kc, B);
}

/// The chart of [`real_cluster_helm_chart_adopted_upgraded_pruned`]: a
/// CRD in `crds/`, a custom resource of it, a ConfigMap whose `color` is
/// a value, and a ConfigMap that only `extra: true` renders.
fn widget_chart(root: &Path) {
    write_files(
        root,
        &[
            (
                "platform/widgets/chart/Chart.yaml",
                "apiVersion: v2\nname: widgets\nversion: 1.0.0\n",
            ),
            (
                "platform/widgets/chart/values.yaml",
                "color: blue\nsize: 3\nextra: true\n",
            ),
            (
                "platform/widgets/chart/crds/widgets.yaml",
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.helm.rt.terrace.dev\nspec:\n  group: helm.rt.terrace.dev\n  scope: Namespaced\n  names: {plural: widgets, singular: widget, kind: Widget}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n",
            ),
            (
                "platform/widgets/chart/templates/config.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-config\ndata:\n  color: {{ .Values.color | quote }}\n",
            ),
            (
                "platform/widgets/chart/templates/widget.yaml",
                "apiVersion: helm.rt.terrace.dev/v1\nkind: Widget\nmetadata:\n  name: {{ .Release.Name }}-widget\nspec:\n  size: {{ .Values.size }}\n",
            ),
            (
                "platform/widgets/chart/templates/caps.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-caps\ndata:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n  coordination: {{ .Capabilities.APIVersions.Has \"coordination.k8s.io/v1/Lease\" | quote }}\n",
            ),
            (
                "platform/widgets/chart/templates/extra.yaml",
                "{{- if .Values.extra }}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-extra\ndata:\n  on: \"yes\"\n{{- end }}\n",
            ),
        ],
    );
}

fn widget_unit(values: &str) -> String {
    format!(
        "layer: apps\nkind: helm\nhelm:\n  chart: ./chart\n  releaseName: shop\n  namespace: terrace-rt-helm\n  deleteHelmReleaseRecords: true\n  values: {values}\n"
    )
}

/// A chart with a CRD and a custom resource: objects `helm install` made
/// are adopted (same uid, nothing recreated), a values change updates the
/// one field it moves, and a template that leaves the chart is pruned.
#[test]
fn real_cluster_helm_chart_adopted_upgraded_pruned() {
    const TEST: &str = "real_cluster_helm_chart_adopted_upgraded_pruned";
    let Some(kubeconfig) = real_cluster(TEST) else {
        return;
    };
    let Some(helm) = crate::helm::helm(TEST) else {
        return;
    };
    let _sandbox = Sandbox::clear(
        &kubeconfig,
        &["terrace-rt-helm"],
        &["widgets.helm.rt.terrace.dev"],
    );
    let mut p = Project::new("rt-helm", &kubeconfig);
    p.helm = Some(helm.clone());
    p.namespaces(&["terrace-rt-helm"]);
    widget_chart(p.root());
    p.write("platform/widgets/unit.yaml", &widget_unit("{}"));

    // Installed by Helm first, as a repository moving to terrace has it.
    let installed = std::process::Command::new(&helm)
        .args([
            "install",
            "shop",
            "platform/widgets/chart",
            "--namespace",
            "terrace-rt-helm",
            "--create-namespace",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .current_dir(p.root())
        .env("HELM_CACHE_HOME", p.root().join(".helm/cache"))
        .env("HELM_CONFIG_HOME", p.root().join(".helm/config"))
        .env("HELM_DATA_HOME", p.root().join(".helm/data"))
        .output()
        .expect("helm runs");
    assert_eq!(
        code(&installed),
        0,
        "helm install: {}{}",
        stdout(&installed),
        stderr(&installed)
    );
    let config_uid = uid(&existing(
        &kubeconfig,
        Some("terrace-rt-helm"),
        "configmap",
        "shop-config",
    ));
    let widget_uid = uid(&existing(
        &kubeconfig,
        Some("terrace-rt-helm"),
        "widget",
        "shop-widget",
    ));

    let (c, plan) = p.plan();
    assert_eq!(c, 2, "{plan}");
    let widgets = unit(&plan, "widgets");
    let said = notes(widgets).join("\n");
    assert!(
        said.contains(
            "v1 ConfigMap terrace-rt-helm/shop-config: adopting it from field manager(s) helm"
        ),
        "{said}"
    );
    assert!(said.contains("shop-widget: adopting it"), "{said}");
    // Helm's own record of the release goes, on request.
    assert!(
        changes(widgets).contains(&(
            "v1 Secret terrace-rt-helm/sh.helm.release.v1.shop.v1".to_owned(),
            "delete".to_owned()
        )),
        "{widgets}"
    );
    assert!(
        live(
            &kubeconfig,
            Some("terrace-rt-helm"),
            "secret",
            "sh.helm.release.v1.shop.v1"
        )
        .is_some()
    );
    p.must(&["apply"]);
    assert!(
        live(
            &kubeconfig,
            Some("terrace-rt-helm"),
            "secret",
            "sh.helm.release.v1.shop.v1"
        )
        .is_none()
    );
    let config = existing(
        &kubeconfig,
        Some("terrace-rt-helm"),
        "configmap",
        "shop-config",
    );
    assert_eq!(uid(&config), config_uid, "adopted, not recreated");
    assert_eq!(
        config["metadata"]["annotations"]["terrace.dev/unit"], "widgets",
        "{config}"
    );
    assert!(owns(&config, "terrace", &["f:data", "f:color"]), "{config}");
    assert_eq!(
        uid(&existing(
            &kubeconfig,
            Some("terrace-rt-helm"),
            "widget",
            "shop-widget"
        )),
        widget_uid
    );
    let (c, plan) = p.plan();
    assert_eq!(c, 0, "adopted and applied: nothing left to do: {plan}");
    // `.Capabilities` are the cluster's, as Helm itself finds them.
    let server: Value =
        serde_json::from_str(&kubectl_ok(&kubeconfig, &["version", "-o", "json"])).expect("json");
    let caps = existing(
        &kubeconfig,
        Some("terrace-rt-helm"),
        "configmap",
        "shop-caps",
    );
    assert_eq!(
        caps["data"]["kube"], server["serverVersion"]["gitVersion"],
        "{caps}"
    );
    assert_eq!(caps["data"]["coordination"], "true", "{caps}");
    assert!(
        caps["metadata"]["annotations"]["terrace.dev/unit"] == "widgets",
        "{caps}"
    );

    // One value moves one field.
    p.write("platform/widgets/unit.yaml", &widget_unit("{color: green}"));
    let (c, plan) = p.plan();
    assert_eq!(c, 2, "{plan}");
    let widgets = unit(&plan, "widgets");
    assert_eq!(
        changes(widgets),
        pairs(&[("v1 ConfigMap terrace-rt-helm/shop-config", "update")])
    );
    let diff = diff_of(widgets, "v1 ConfigMap terrace-rt-helm/shop-config");
    assert!(
        diff.contains("data.color") && diff.contains("green"),
        "{diff}"
    );
    p.must(&["apply"]);
    let config = existing(
        &kubeconfig,
        Some("terrace-rt-helm"),
        "configmap",
        "shop-config",
    );
    assert_eq!(config["data"]["color"], "green");
    assert_eq!(uid(&config), config_uid);

    // A template that no longer renders is pruned; the rest stays.
    p.write(
        "platform/widgets/unit.yaml",
        &widget_unit("{color: green, extra: false}"),
    );
    let (c, plan) = p.plan();
    assert_eq!(c, 2, "{plan}");
    assert_eq!(
        changes(unit(&plan, "widgets")),
        pairs(&[("v1 ConfigMap terrace-rt-helm/shop-extra", "delete")])
    );
    p.must(&["apply"]);
    assert!(
        live(
            &kubeconfig,
            Some("terrace-rt-helm"),
            "configmap",
            "shop-extra"
        )
        .is_none()
    );
    assert_eq!(
        uid(&existing(
            &kubeconfig,
            Some("terrace-rt-helm"),
            "widget",
            "shop-widget"
        )),
        widget_uid
    );
    p.must(&["destroy", "--yes"]);
}

/// A bootstrap chart applied once (`lifecycle: once`) hands its objects
/// over to a platform unit: later plans leave the once unit alone, the
/// platform unit's first apply adopts the objects (same uid), and
/// destroying the bootstrap unit deletes only what was not handed over.
#[test]
fn real_cluster_once_unit_hands_its_objects_over() {
    const TEST: &str = "real_cluster_once_unit_hands_its_objects_over";
    let Some(kubeconfig) = real_cluster(TEST) else {
        return;
    };
    let Some(helm) = crate::helm::helm(TEST) else {
        return;
    };
    let _sandbox = Sandbox::clear(&kubeconfig, &["terrace-rt-once"], &[]);
    let mut p = Project::new("rt-once", &kubeconfig);
    p.helm = Some(helm);
    p.namespaces(&["terrace-rt-once"]);
    write_files(
        p.root(),
        &[
            (
                "boot/cni/chart/Chart.yaml",
                "apiVersion: v2\nname: cni\nversion: 0.1.0\n",
            ),
            ("boot/cni/chart/values.yaml", "mode: bootstrap\n"),
            (
                "boot/cni/chart/templates/config.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cni-config\ndata:\n  mode: {{ .Values.mode | quote }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cni-bootstrap-only\ndata:\n  x: \"1\"\n",
            ),
        ],
    );
    let boot = |values: &str, hand_over: &str| {
        format!(
            "layer: apps\nkind: helm\ndependsOn: [ns]\nlifecycle: once\n{hand_over}helm:\n  chart: ./chart\n  namespace: terrace-rt-once\n  values: {values}\n"
        )
    };
    p.write("boot/cni/unit.yaml", &boot("{}", ""));
    p.must(&["apply", "--unit", "ns", "--unit", "cni"]);
    let config = existing(
        &kubeconfig,
        Some("terrace-rt-once"),
        "configmap",
        "cni-config",
    );
    let config_uid = uid(&config);
    assert_eq!(config["metadata"]["annotations"]["terrace.dev/unit"], "cni");

    // Once applied, a change to it plans nothing.
    p.write("boot/cni/unit.yaml", &boot("{mode: changed}", ""));
    let (c, plan) = p.plan();
    assert_eq!(c, 0, "{plan}");
    let cni = unit(&plan, "cni");
    assert!(changes(cni).is_empty(), "{cni}");
    assert!(
        notes(cni).iter().any(|n| n.starts_with("once: applied ")),
        "{cni}"
    );

    // The platform unit takes the config over, when the bootstrap unit
    // hands it over.
    p.write(
        "boot/cni/unit.yaml",
        &boot("{mode: changed}", "handOver: {to: platform-cni}\n"),
    );
    p.write(
        "platform/cni/unit.yaml",
        "name: platform-cni\nlayer: apps\nkind: manifests\ndependsOn: [ns]\n",
    );
    p.write(
        "platform/cni/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cni-config\n  namespace: terrace-rt-once\ndata:\n  mode: gitops\n",
    );
    let (c, plan) = p.plan();
    assert_eq!(c, 2, "{plan}");
    let platform = unit(&plan, "platform-cni");
    assert!(
        notes(platform)
            .iter()
            .any(|n| n.contains("adopting it from unit `cni`, which handed it over")),
        "{platform}"
    );
    p.must(&["apply"]);
    let config = existing(
        &kubeconfig,
        Some("terrace-rt-once"),
        "configmap",
        "cni-config",
    );
    assert_eq!(uid(&config), config_uid, "adopted, not recreated");
    assert_eq!(config["data"]["mode"], "gitops");
    assert_eq!(
        config["metadata"]["annotations"]["terrace.dev/unit"],
        "platform-cni"
    );
    let (c, plan) = p.plan();
    assert_eq!(c, 0, "settled: {plan}");

    // The bootstrap unit goes: what it handed over stays.
    p.must(&["destroy", "--unit", "cni", "--yes"]);
    assert_eq!(
        uid(&existing(
            &kubeconfig,
            Some("terrace-rt-once"),
            "configmap",
            "cni-config"
        )),
        config_uid
    );
    assert!(
        live(
            &kubeconfig,
            Some("terrace-rt-once"),
            "configmap",
            "cni-bootstrap-only"
        )
        .is_none()
    );
}
