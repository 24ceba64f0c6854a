//! Cluster targets bound to a live cluster, against the real API server a
//! kubeconfig in `TERRACE_TEST_KUBECONFIG` names (skipped, saying so, when
//! it is not set; `.ci/run` starts one). They pass on an API server without
//! nodes: workloads are not waited for there (`TERRACE_KUBE_WAIT=false`),
//! and health waits are tested on a custom resource whose conditions the
//! test sets. `real_cluster.rs` has the rest; the tests here need no
//! cluster at all, or use the example project.

use std::path::Path;
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{code, homelab, kubectl, real_cluster, std_command, stderr, stdout, unit, write_files};

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
            {"address": "networking.k8s.io/v1 Ingress apps/web", "action": "delete",
             "object": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress", "namespace": "apps", "name": "web"}},
            {"address": "v1 Service apps/web", "action": "delete",
             "object": {"version": "v1", "kind": "Service", "namespace": "apps", "name": "web"}}
        ]),
        "{plan}"
    );
    must(on_cluster(d, kubeconfig, &["apply"]), "apply the prune");
    assert_eq!(plan_on(d, kubeconfig).0, 0);
    dir
}

#[test]
fn the_shell_kubeconfig_never_redirects_the_example() {
    // A listener that would see any connection the shell's KUBECONFIG led
    // terrace to make.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let dir = homelab();
    let kubeconfig = dir.path().join("shell-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: trap\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: u\n  user:\n    token: not-a-secret\ncontexts:\n- name: trap\n  context:\n    cluster: trap\n    user: u\ncurrent-context: trap\n"
        ),
    )
    .expect("kubeconfig");
    let o = std_command(dir.path())
        .args(["apply", "--unit", "status"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("terrace runs");
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        dir.path()
            .join(".terrace/rendered/homelab/k3s/status/v1_configmap_apps_status-page.yaml")
            .is_file()
    );
    assert!(
        listener.accept().is_err(),
        "terrace connected to the shell's KUBECONFIG"
    );
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
    // Server-side apply as `terrace`, stamped with the project.
    let o = kubectl(
        &path,
        &[
            "-n",
            "apps",
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager} {.metadata.annotations.terrace\\.dev/project}",
        ],
    );
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        shown.contains("terrace") && shown.ends_with(" homelab"),
        "{shown}"
    );
    // The Secret reached the API decrypted; nothing under .terrace holds
    // its value.
    let o = kubectl(
        &path,
        &[
            "-n",
            "apps",
            "get",
            "secret",
            "dashboard-admin",
            "-o",
            "jsonpath={.data.ADMIN_PASSWORD}",
        ],
    );
    let encoded = String::from_utf8_lossy(&o.stdout).into_owned();
    let decoded = StdCommand::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(encoded.as_bytes())?;
            child.wait_with_output()
        })
        .expect("base64 runs");
    let password = String::from_utf8_lossy(&decoded.stdout).into_owned();
    assert!(password.contains("dashboard-demo-password"), "{encoded}");
    let grep = StdCommand::new("grep")
        .args(["-r", &password, ".terrace"])
        .current_dir(d)
        .output()
        .expect("grep");
    assert_eq!(
        grep.status.code(),
        Some(1),
        "the password is under .terrace"
    );

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

#[test]
fn real_cluster_a_saved_plan_is_applied_to_the_cluster_it_was_made_for() {
    let Some(path) =
        real_cluster("real_cluster_a_saved_plan_is_applied_to_the_cluster_it_was_made_for")
    else {
        return;
    };
    let ns = "terrace-rt-saved";
    settle_namespaces(&path, &[ns]);
    let kc = Bound {
        kubeconfig: &path,
        wait: false,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_files(
        d,
        &[
            (
                "terrace.yaml",
                "name: saved\nlayers: [apps]\ntargets:\n  k3s: { type: cluster }\n",
            ),
            ("apps/cm/unit.yaml", "layer: apps\nkind: manifests\n"),
            (
                "apps/cm/objects.yaml",
                &format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {ns}\ndata:\n  mode: fast\n"
                ),
            ),
        ],
    );
    let o = on_cluster(d, kc, &["plan", "--out", "plan.json"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    // Nothing reached the cluster while planning.
    let o = kubectl(&path, &["get", "namespace", ns]);
    assert_ne!(o.status.code(), Some(0), "planning created the namespace");
    // Applied where the kubeconfig sits elsewhere (another CI job), to
    // the same cluster: the plan holds.
    let copied = d.join("ci-kubeconfig");
    std::fs::copy(&path, &copied).expect("copy the kubeconfig");
    let elsewhere = Bound {
        kubeconfig: &copied,
        wait: false,
    };
    must(
        on_cluster(d, elsewhere, &["apply", "plan.json"]),
        "apply the saved plan",
    );
    let o = kubectl(
        &path,
        &[
            "-n",
            ns,
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.data.mode}",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "fast", "{}", stderr(&o));
    // Applied once, the saved plan no longer holds.
    let o = on_cluster(d, kc, &["apply", "plan.json"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("no longer holds"), "{}", stderr(&o));
    // A plan whose object was changed on the cluster since is refused too.
    must(on_cluster(d, kc, &["plan", "--out", "second.json"]), "plan");
    let o = kubectl(
        &path,
        &[
            "-n",
            ns,
            "patch",
            "configmap",
            "settings",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"mode":"slow"}}"#,
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = on_cluster(d, kc, &["apply", "second.json"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("its changes differ"), "{}", stderr(&o));
    must(on_cluster(d, kc, &["destroy", "--yes"]), "destroy");
}

/// A live unit starts connecting while it renders. When the render fails
/// and the kubeconfig's credential plugin never answers, terrace still
/// reports the error and exits: nothing waits for that connection.
#[test]
fn a_failed_render_does_not_wait_for_a_hanging_credential_plugin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("bench")).expect("mkdir");
    std::fs::write(
        root.join("terrace.yaml"),
        "name: hang\nlayers: [apps]\ntargets:\n  k3s:\n    type: cluster\n",
    )
    .expect("write");
    std::fs::write(
        root.join("bench/unit.yaml"),
        "layer: apps\nkind: manifests\n",
    )
    .expect("write");
    std::fs::write(
        root.join("bench/a.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: [broken\n",
    )
    .expect("write");
    // The plugin notes its process id, so the test stops it afterwards.
    let kubeconfig = root.join("kc.yaml");
    let pid_file = root.join("plugin.pid");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://127.0.0.1:1\"}}\n\
             contexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user:\n\
             \x20   exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: sh\n\
             \x20     args: [\"-c\", \"echo $$ > {}; exec sleep 600\"]\n      interactiveMode: Never\n",
            pid_file.display()
        ),
    )
    .expect("write");
    let mut child = std_command(root)
        .args([
            "--cluster",
            &format!("k3s={}", kubeconfig.display()),
            "plan",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("terrace starts");
    // Generous: the point is that it ends at all, long before the plugin.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("terrace waited for the credential plugin after its render failed");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // Stop the plugin if it was started (it may not have been yet).
    std::thread::sleep(std::time::Duration::from_millis(200));
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
    assert_eq!(status.code(), Some(1));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("stdout");
    assert!(out.contains("bench/a.yaml:3"), "{out}");
}
