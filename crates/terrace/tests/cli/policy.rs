//! Policy over rendered objects: the enforce, audit and exempt paths
//! through `plan` and `validate`, and the Pod Security rules' verdicts
//! compared with the real API server's Pod Security admission on the
//! same pods.

use serde_json::{Value, json};

use crate::{code, kubectl, real_cluster, std_command, stderr, stdout, write_files};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: agent
  namespace: ops
ANNOTATIONS
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
      - name: agent
        image: ghcr.io/example/agent:1.0.0
        securityContext: {privileged: true}
";

fn project(policy: &str, annotations: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            (
                "terrace.yaml",
                &format!(
                    "name: pol\nlayers: [platform]\ntargets:\n  k8s: {{ type: cluster }}\n{policy}"
                ),
            ),
            (
                "platform/agent/unit.yaml",
                "layer: platform\nkind: manifests\n",
            ),
            (
                "platform/agent/deployment.yaml",
                &DEPLOYMENT.replace("ANNOTATIONS\n", annotations),
            ),
        ],
    );
    dir
}

fn run(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let o = std_command(dir).args(args).output().expect("terrace runs");
    (code(&o), format!("{}{}", stdout(&o), stderr(&o)))
}

#[test]
fn enforced_rules_fail_the_plan_audited_ones_are_listed_and_exemptions_need_a_reason() {
    // No policy: nothing is checked.
    let dir = project("", "");
    let (c, out) = run(dir.path(), &["plan"]);
    assert_eq!(c, 2, "{out}");
    assert!(!out.contains("policy"), "{out}");

    // Enforced: the plan fails naming the object, file, field and rule;
    // validate says the same; nothing is applied.
    let enforce =
        "policy:\n  default: off\n  rules: {pss-baseline: enforce, best-practices: audit}\n";
    let dir = project(enforce, "");
    let (c, out) = run(dir.path(), &["plan"]);
    assert_eq!(c, 1, "{out}");
    for needle in [
        "apps/v1 Deployment ops/agent",
        "platform/agent/deployment.yaml",
        "spec.template.spec.containers[0].securityContext.privileged",
        "privileged (no privileged containers)",
        "terrace.dev/policy-exempt",
    ] {
        assert!(out.contains(needle), "`{needle}` in {out}");
    }
    let (c, out) = run(dir.path(), &["validate"]);
    assert_ne!(c, 0, "{out}");
    assert!(out.contains("securityContext.privileged"), "{out}");
    let (c, out) = run(dir.path(), &["apply"]);
    assert_ne!(c, 0, "{out}");
    assert!(
        !dir.path().join(".terrace/rendered").exists(),
        "nothing applied"
    );

    // Exempted with a reason: planned, the audits listed.
    let exempt = "  annotations:\n    terrace.dev/policy-exempt: \"privileged  # the agent configures the node\"\n";
    let dir = project(enforce, exempt);
    let (c, out) = run(dir.path(), &["plan"]);
    assert_eq!(c, 2, "{out}");
    assert!(out.contains("policy audit:"), "{out}");
    assert!(out.contains("resources ("), "{out}");
    assert!(!out.contains("privileged (no privileged"), "{out}");

    // An exemption without a reason is refused.
    let dir = project(
        enforce,
        "  annotations:\n    terrace.dev/policy-exempt: privileged\n",
    );
    let (c, out) = run(dir.path(), &["plan"]);
    assert_eq!(c, 1, "{out}");
    assert!(out.contains("gives no reason"), "{out}");

    // Per layer and namespace: off where the operator says so.
    let dir = project(
        "policy:\n  rules: {pss-baseline: enforce}\n  namespaces:\n    ops: {privileged: audit}\n",
        "",
    );
    let (c, out) = run(dir.path(), &["plan"]);
    assert_eq!(c, 2, "{out}");
    assert!(
        out.contains("policy audit: apps/v1 Deployment ops/agent: privileged"),
        "{out}"
    );

    // A rule that does not exist.
    let dir = project("policy:\n  rules: {run-as-nonroot: enforce}\n", "");
    let (c, out) = run(dir.path(), &["plan"]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("`run-as-nonroot`") && out.contains("terrace.yaml"),
        "{out}"
    );
}

fn base_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "serviceAccountName": "default",
            "automountServiceAccountToken": false,
            "securityContext": {},
            "containers": [{
                "name": "c", "image": "registry.k8s.io/pause:3.10",
                "securityContext": {
                    "allowPrivilegeEscalation": false, "runAsNonRoot": true,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
            }],
        },
    })
}

/// Pods, each the compliant one with one change (or none). Privileged
/// containers are not among them: this API server refuses them before
/// Pod Security admission (`--allow-privileged=false`); the unit tests of
/// `terrace_core::policy` cover that rule.
fn variants() -> Vec<(&'static str, Value)> {
    type Change = fn(&mut Value);
    let changes: Vec<(&'static str, Change)> = vec![
        ("compliant", |_| {}),
        ("hostNetwork", |p| p["spec"]["hostNetwork"] = json!(true)),
        ("hostPID", |p| p["spec"]["hostPID"] = json!(true)),
        ("hostIPC", |p| p["spec"]["hostIPC"] = json!(true)),
        ("add SYS_ADMIN", |p| {
            p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                json!(["SYS_ADMIN"])
        }),
        ("add NET_RAW", |p| {
            p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                json!(["NET_RAW"])
        }),
        ("add CHOWN", |p| {
            p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["CHOWN"])
        }),
        ("add NET_BIND_SERVICE", |p| {
            p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                json!(["NET_BIND_SERVICE"])
        }),
        ("no drop ALL", |p| {
            p["spec"]["containers"][0]["securityContext"]["capabilities"] =
                json!({"drop": ["NET_RAW"]})
        }),
        ("hostPath", |p| {
            p["spec"]["volumes"] = json!([{"name": "h", "hostPath": {"path": "/var/log"}}])
        }),
        (
            "nfs",
            |p| {
                p["spec"]["volumes"] =
                    json!([{"name": "n", "nfs": {"server": "10.0.0.1", "path": "/x"}}])
            },
        ),
        ("emptyDir", |p| {
            p["spec"]["volumes"] = json!([{"name": "e", "emptyDir": {}}])
        }),
        ("projected", |p| {
            p["spec"]["volumes"] = json!([{"name": "e", "projected": {"sources": []}}])
        }),
        ("hostPort", |p| {
            p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080, "hostPort": 8080}])
        }),
        ("containerPort only", |p| {
            p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080}])
        }),
        ("appArmor Unconfined", |p| {
            p["spec"]["containers"][0]["securityContext"]["appArmorProfile"] =
                json!({"type": "Unconfined"})
        }),
        ("appArmor RuntimeDefault", |p| {
            p["spec"]["securityContext"]["appArmorProfile"] = json!({"type": "RuntimeDefault"})
        }),
        ("SELinux spc_t", |p| {
            p["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "spc_t"})
        }),
        ("SELinux user", |p| {
            p["spec"]["containers"][0]["securityContext"]["seLinuxOptions"] =
                json!({"user": "system_u"})
        }),
        ("SELinux container_t", |p| {
            p["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "container_t"})
        }),
        ("seccomp Unconfined pod", |p| {
            p["spec"]["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"})
        }),
        ("seccomp Localhost", |p| {
            p["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                json!({"type": "Localhost", "localhostProfile": "profiles/a.json"})
        }),
        ("seccomp unset", |p| {
            p["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .expect("sc")
                .remove("seccompProfile");
        }),
        ("seccomp pod only", |p| {
            p["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .expect("sc")
                .remove("seccompProfile");
            p["spec"]["securityContext"]["seccompProfile"] = json!({"type": "RuntimeDefault"});
        }),
        ("unsafe sysctl", |p| {
            p["spec"]["securityContext"]["sysctls"] =
                json!([{"name": "kernel.msgmax", "value": "65536"}])
        }),
        ("safe sysctl", |p| {
            p["spec"]["securityContext"]["sysctls"] =
                json!([{"name": "net.ipv4.tcp_syncookies", "value": "1"}])
        }),
        ("escalation true", |p| {
            p["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true)
        }),
        ("escalation unset", |p| {
            p["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .expect("sc")
                .remove("allowPrivilegeEscalation");
        }),
        ("runAsNonRoot false", |p| {
            p["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = json!(false)
        }),
        ("runAsNonRoot pod only", |p| {
            p["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .expect("sc")
                .remove("runAsNonRoot");
            p["spec"]["securityContext"]["runAsNonRoot"] = json!(true);
        }),
        ("runAsNonRoot unset", |p| {
            p["spec"]["containers"][0]["securityContext"]
                .as_object_mut()
                .expect("sc")
                .remove("runAsNonRoot");
        }),
        ("runAsUser 0", |p| {
            p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0)
        }),
        ("runAsUser 1000", |p| {
            p["spec"]["securityContext"]["runAsUser"] = json!(1000)
        }),
        ("procMount Unmasked", |p| {
            p["spec"]["hostUsers"] = json!(false);
            p["spec"]["containers"][0]["securityContext"]["procMount"] = json!("Unmasked");
        }),
    ];
    changes
        .into_iter()
        .map(|(name, change)| {
            let mut p = base_pod();
            change(&mut p);
            (name, p)
        })
        .collect()
}

/// Whether terrace's Pod Security rules admit the pod at `level`.
fn terrace_admits(pod: &Value, level: &str) -> bool {
    use terrace_core::policy::{Group, findings};
    !findings(pod).iter().any(|f| match f.rule.group() {
        Group::Baseline => true,
        Group::Restricted => level == "restricted",
        Group::BestPractices => false,
    })
}

#[test]
fn real_cluster_pod_security_verdicts_agree_with_the_api_servers_admission() {
    let Some(kubeconfig) =
        real_cluster("real_cluster_pod_security_verdicts_agree_with_the_api_servers_admission")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let levels = ["baseline", "restricted"];
    for level in levels {
        let ns = format!("terrace-rt-pss-{level}");
        let _ = kubectl(
            &kubeconfig,
            &[
                "delete",
                "namespace",
                &ns,
                "--wait=true",
                "--ignore-not-found",
            ],
        );
        let o = kubectl(&kubeconfig, &["create", "namespace", &ns]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let o = kubectl(
            &kubeconfig,
            &[
                "label",
                "namespace",
                &ns,
                &format!("pod-security.kubernetes.io/enforce={level}"),
                "pod-security.kubernetes.io/enforce-version=latest",
            ],
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        // Pods are admitted only with their service account there (no
        // controller manager makes `default` here).
        let o = kubectl(
            &kubeconfig,
            &["create", "serviceaccount", "default", "-n", &ns],
        );
        assert!(
            code(&o) == 0 || stderr(&o).contains("already exists"),
            "{}",
            stderr(&o)
        );
    }
    let mut compared = 0;
    let mut refused = 0;
    for (name, pod) in variants() {
        for level in levels {
            let ns = format!("terrace-rt-pss-{level}");
            let mut p = pod.clone();
            p["metadata"]["namespace"] = json!(ns);
            let file = dir.path().join("pod.json");
            std::fs::write(&file, p.to_string()).expect("write");
            let o = kubectl(
                &kubeconfig,
                &[
                    "create",
                    "--dry-run=server",
                    "-f",
                    file.to_str().expect("utf-8"),
                ],
            );
            let server = code(&o) == 0;
            if !server {
                assert!(
                    stderr(&o).contains("violates PodSecurity"),
                    "`{name}` is refused for another reason than Pod Security: {}",
                    stderr(&o)
                );
                refused += 1;
            }
            assert_eq!(
                terrace_admits(&p, level),
                server,
                "`{name}` at {level}: terrace and the API server disagree ({})",
                stderr(&o)
            );
            compared += 1;
        }
    }
    assert!(compared >= 60, "{compared} verdicts compared");
    assert!(
        refused >= 20,
        "the server refused {refused}: the namespaces enforce"
    );
    for level in levels {
        let _ = kubectl(
            &kubeconfig,
            &[
                "delete",
                "namespace",
                &format!("terrace-rt-pss-{level}"),
                "--wait=false",
            ],
        );
    }
}
