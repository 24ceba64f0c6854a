//! Cluster targets bound to a live cluster.
//!
//! Two kinds of tests:
//! - against `tests/fake_apiserver.py`, a small fake of the API over HTTP
//!   (always run): the command line, the kubeconfig, state and prune across
//!   runs, and that the shell's `KUBECONFIG` never redirects anything;
//! - against the real API server a kubeconfig in `TERRACE_TEST_KUBECONFIG`
//!   names (skipped, saying so, when it is not set). They pass on an API
//!   server without nodes: workloads are not waited for there
//!   (`TERRACE_KUBE_WAIT=false`), and health waits are tested on a custom
//!   resource whose conditions the test sets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{code, homelab, repo_root, std_command, stderr, stdout, write_files};

/// The fake API server, stopped when dropped.
struct FakeApi {
    child: Child,
    dir: tempfile::TempDir,
}

impl FakeApi {
    fn start(extra: &[&str]) -> FakeApi {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_file = dir.path().join("port");
        let child = StdCommand::new("python3")
            .arg(repo_root().join("crates/terrace/tests/fake_apiserver.py"))
            .arg(&port_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the fake API server");
        let started = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the fake API server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: tester\n  user:\n    token: not-a-secret\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: default\ncurrent-context: fake\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("kubeconfig");
        FakeApi { child, dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Every request so far.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("port.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line"))
            .collect()
    }

    fn writes(&self) -> Vec<(String, String)> {
        self.requests()
            .iter()
            .filter(|r| {
                (r["method"] == "PATCH" && !r["query"].as_str().unwrap_or("").contains("dryRun"))
                    || r["method"] == "DELETE"
            })
            .map(|r| {
                (
                    r["method"].as_str().unwrap_or("").to_owned(),
                    r["path"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster to run on: its kubeconfig, and whether workloads are waited
/// for (not on an API server without nodes).
#[derive(Clone, Copy)]
struct Bound<'a> {
    kubeconfig: &'a Path,
    wait: bool,
}

/// terrace in `dir`, with the target `k3s` bound to `cluster`.
fn on_cluster(dir: &Path, cluster: Bound<'_>, args: &[&str]) -> std::process::Output {
    let binding = format!("k3s={}", cluster.kubeconfig.display());
    std_command(dir)
        .args(["--cluster", &binding])
        .args(args)
        .env("TERRACE_KUBE_POLL_MS", "200")
        .env(
            "TERRACE_KUBE_WAIT",
            if cluster.wait { "true" } else { "false" },
        )
        .output()
        .expect("terrace runs")
}

fn unit<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["unit"] == name)
        .unwrap_or_else(|| panic!("unit {name} in {plan}"))
}

fn plan_on(dir: &Path, cluster: Bound<'_>) -> (i32, Value) {
    let o = on_cluster(dir, cluster, &["plan", "--output", "json"]);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("plan JSON: {e}\n{}{}", stdout(&o), stderr(&o)));
    (code(&o), v)
}

fn must(o: std::process::Output, what: &str) {
    assert_eq!(code(&o), 0, "{what}: {}{}", stdout(&o), stderr(&o));
}

/// The example's cluster layers on the cluster `kubeconfig` names: apply,
/// apply again (nothing), one field changed (one object updated), one
/// object removed (pruned), then destroy.
fn example_lifecycle(kubeconfig: Bound<'_>) -> tempfile::TempDir {
    let dir = homelab();
    let d = dir.path();
    must(on_cluster(d, kubeconfig, &["apply"]), "first apply");
    assert!(
        !d.join(".terrace/rendered/homelab/k3s").exists(),
        "a bound cluster target writes no rendered files"
    );
    let (c, plan) = plan_on(d, kubeconfig);
    assert_eq!(c, 0, "a second plan is clean: {plan}");

    // One field: the web app's replicas.
    let vars = d.join("vars/homelab.yaml");
    let text = std::fs::read_to_string(&vars).expect("vars");
    let changed = text.replace("web_replicas: 2", "web_replicas: 3");
    assert_ne!(text, changed, "the example sets web_replicas: 2");
    std::fs::write(&vars, changed).expect("write vars");
    let (c, plan) = plan_on(d, kubeconfig);
    assert_eq!(c, 2, "{plan}");
    let web = unit(&plan, "web");
    let changes = web["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{web}");
    assert_eq!(changes[0]["action"], "update");
    assert_eq!(changes[0]["address"], "apps/v1 Deployment apps/web");
    assert!(
        changes[0]["diff"]
            .as_str()
            .is_some_and(|d| d.contains("~ spec.replicas: 2 → 3")),
        "{web}"
    );
    let others: usize = plan["units"]
        .as_array()
        .expect("units")
        .iter()
        .filter(|u| u["unit"] != "web")
        .map(|u| u["changes"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(others, 0, "{plan}");
    must(on_cluster(d, kubeconfig, &["apply"]), "apply one change");
    assert_eq!(plan_on(d, kubeconfig).0, 0);

    // Objects removed from the repository (the file holds the Service and
    // its Ingress): pruned, in reverse apply order.
    std::fs::remove_file(d.join("apps/web/service.yaml")).expect("rm");
    let (c, plan) = plan_on(d, kubeconfig);
    assert_eq!(c, 2);
    let changes = unit(&plan, "web")["changes"].clone();
    assert_eq!(
        changes,
        serde_json::json!([
            {"address": "networking.k8s.io/v1 Ingress apps/web", "action": "delete"},
            {"address": "v1 Service apps/web", "action": "delete"}
        ]),
        "{plan}"
    );
    must(on_cluster(d, kubeconfig, &["apply"]), "apply the prune");
    assert_eq!(plan_on(d, kubeconfig).0, 0);
    dir
}

#[test]
fn the_example_lives_on_a_cluster_through_a_kubeconfig() {
    let api = FakeApi::start(&[]);
    let kc = api.kubeconfig();
    let kc = Bound {
        kubeconfig: &kc,
        wait: true,
    };
    let dir = example_lifecycle(kc);
    let writes = api.writes();
    // Server-side apply as `terrace`, every time.
    for r in api.requests() {
        if r["method"] == "PATCH" {
            let q = r["query"].as_str().unwrap_or("");
            assert!(q.contains("fieldManager=terrace"), "{r}");
            assert_eq!(
                r["body"]["metadata"]["annotations"]["terrace.dev/project"],
                "homelab"
            );
        }
    }
    assert!(writes.contains(&(
        "DELETE".into(),
        "/api/v1/namespaces/apps/services/web".into()
    )));
    // The Secret went to the API decrypted (the fake keeps it in memory
    // only); nothing under .terrace holds the password.
    let sent = api.requests().iter().any(|r| {
        r["method"] == "PATCH"
            && r["body"]["kind"] == "Secret"
            && r["body"].to_string().contains("dashboard-demo-password")
    });
    assert!(sent, "the decrypted Secret reached the API");
    let grep = StdCommand::new("grep")
        .args(["-r", "dashboard-demo-password", ".terrace"])
        .current_dir(dir.path())
        .output()
        .expect("grep");
    assert_eq!(
        grep.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );

    // Destroy deletes everything the units applied.
    let before = api.writes().len();
    must(on_cluster(dir.path(), kc, &["destroy", "--yes"]), "destroy");
    let deletes = api.writes()[before..]
        .iter()
        .filter(|(m, _)| m == "DELETE")
        .count();
    assert!(deletes >= 10, "{:?}", &api.writes()[before..]);
}

#[test]
fn the_shell_kubeconfig_never_redirects_the_example() {
    let api = FakeApi::start(&[]);
    let dir = homelab();
    let o = std_command(dir.path())
        .args(["apply", "--unit", "status"])
        .env("KUBECONFIG", api.kubeconfig())
        .output()
        .expect("terrace runs");
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        dir.path()
            .join(".terrace/rendered/homelab/k3s/status/v1_configmap_apps_status-page.yaml")
            .is_file()
    );
    assert!(api.requests().is_empty(), "{:?}", api.requests());
}

#[test]
fn bad_cluster_bindings_are_explained() {
    let dir = homelab();
    let d = dir.path();
    let o = std_command(d)
        .args(["--cluster", "k3s", "plan"])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("not of the form TARGET=VALUE"),
        "{}",
        stderr(&o)
    );
    let o = std_command(d)
        .args(["--cluster", "nas=/tmp/kc", "plan"])
        .output()
        .expect("runs");
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("`nas`, which is not a cluster target") && stderr(&o).contains("k3s"),
        "{}",
        stderr(&o)
    );
    // From the environment too.
    let o = std_command(d)
        .args(["plan", "--unit", "status"])
        .env("TERRACE_CLUSTER", "k3s=/nonexistent/kubeconfig")
        .output()
        .expect("runs");
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        all.contains("/nonexistent/kubeconfig") && all.contains("does not exist"),
        "{all}"
    );
}

/// A project with a CRD, a custom resource whose `Ready` condition the
/// test sets, and a unit depending on it.
fn health_project(root: &Path, ready: &str, size: u32) {
    let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.test.terrace.dev\nspec:\n  group: test.terrace.dev\n  scope: Namespaced\n  names:\n    kind: Gadget\n    plural: gadgets\n    singular: gadget\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n";
    let cr = format!(
        "apiVersion: test.terrace.dev/v1\nkind: Gadget\nmetadata:\n  name: g1\n  namespace: terrace-health-test\nspec:\n  size: {size}\nstatus:\n  conditions:\n  - type: Ready\n    status: \"{ready}\"\n    reason: Warming\n    message: the gadget warms up\n"
    );
    write_files(
        root,
        &[
            (
                "terrace.yaml",
                "name: healthcheck\nlayers: [platform, apps]\ntargets:\n  k3s:\n    type: cluster\n",
            ),
            (
                "gadgets/unit.yaml",
                "layer: platform\nkind: manifests\nmanifests:\n  apply:\n    timeout: 3s\n",
            ),
            ("gadgets/crd.yaml", crd),
            (
                "gadgets/namespace.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: terrace-health-test\n",
            ),
            ("gadgets/gadget.yaml", &cr),
            (
                "after/unit.yaml",
                "layer: apps\nkind: manifests\ndependsOn: [gadgets]\n",
            ),
            (
                "after/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: after\n  namespace: terrace-health-test\ndata:\n  k: v\n",
            ),
        ],
    );
}

/// CRD established, then a custom resource waited for: not ready names it
/// and its reason, and its dependent does not start; ready lets it.
fn health_lifecycle(kubeconfig: Bound<'_>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    health_project(d, "False", 1);
    let o = on_cluster(d, kubeconfig, &["apply"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        all.contains(
            "test.terrace.dev/v1 Gadget terrace-health-test/g1: Warming: the gadget warms up"
        ),
        "{all}"
    );
    let o = on_cluster(d, kubeconfig, &["apply", "--output", "json"]);
    let report: Value = serde_json::from_slice(&o.stdout).expect("json");
    let after = unit(&report, "after");
    assert_eq!(after["outcome"], "skipped", "{report}");

    health_project(d, "True", 2);
    must(on_cluster(d, kubeconfig, &["apply"]), "apply once ready");
    assert_eq!(plan_on(d, kubeconfig).0, 0);
    must(on_cluster(d, kubeconfig, &["destroy", "--yes"]), "destroy");
}

#[test]
fn health_waits_on_crds_and_conditions() {
    let api = FakeApi::start(&[]);
    health_lifecycle(Bound {
        kubeconfig: &api.kubeconfig(),
        wait: true,
    });
    let writes = api.writes();
    let crd = writes
        .iter()
        .position(|(_, p)| p.contains("customresourcedefinitions"))
        .expect("crd");
    let cr = writes
        .iter()
        .position(|(_, p)| p.contains("/gadgets/g1"))
        .expect("cr");
    assert!(crd < cr);
}

/// The kubeconfig of a real cluster, or why the test is skipped.
fn real_cluster(test: &str) -> Option<PathBuf> {
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

/// Waits (up to two minutes) until none of `names` is still terminating
/// from an earlier run's destroy.
fn settle_namespaces(kubeconfig: &Path, names: &[&str]) {
    let started = Instant::now();
    for ns in names {
        loop {
            let o = kubectl(
                kubeconfig,
                &["get", "namespace", ns, "-o", "jsonpath={.status.phase}"],
            );
            if String::from_utf8_lossy(&o.stdout) != "Terminating" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "namespace {ns} is still terminating from an earlier run"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    StdCommand::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs")
}

#[test]
fn real_cluster_example_lifecycle_and_drift() {
    let Some(kc) = real_cluster("real_cluster_example_lifecycle_and_drift") else {
        return;
    };
    // No pod starts on an API server without nodes: workloads are not
    // waited for here (their health is tested on the fake).
    let path = kc;
    settle_namespaces(&path, &["platform", "databases", "apps"]);
    let kc = Bound {
        kubeconfig: &path,
        wait: false,
    };
    let dir = example_lifecycle(kc);
    let d = dir.path();
    let gone = kubectl(&path, &["-n", "apps", "get", "service", "web"]);
    assert_ne!(gone.status.code(), Some(0), "the Service was pruned");

    // A change by hand shows as drift and the next apply heals it.
    let o = kubectl(
        &path,
        &[
            "-n",
            "apps",
            "patch",
            "configmap",
            "status-page",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"title":"changed by hand"}}"#,
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (c, plan) = plan_on(d, kc);
    assert_eq!(c, 2, "{plan}");
    let diff = unit(&plan, "status")["changes"][0]["diff"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(diff.contains("changed by hand"), "{plan}");
    must(on_cluster(d, kc, &["apply"]), "heal");
    let o = kubectl(
        &path,
        &[
            "-n",
            "apps",
            "get",
            "configmap",
            "status-page",
            "-o",
            "jsonpath={.data.title}",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Status of home.arpa");
    assert_eq!(plan_on(d, kc).0, 0);
    must(on_cluster(d, kc, &["destroy", "--yes"]), "destroy");
}

#[test]
fn real_cluster_health_waits() {
    let Some(kc) = real_cluster("real_cluster_health_waits") else {
        return;
    };
    // Only a CRD, a Namespace, a custom resource and a ConfigMap: no pods.
    settle_namespaces(&kc, &["terrace-health-test"]);
    health_lifecycle(Bound {
        kubeconfig: &kc,
        wait: true,
    });
}
