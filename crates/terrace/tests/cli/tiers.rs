//! Tiers: terrace.yaml's `tiers:` become PriorityClasses (a `tiers`
//! unit), every namespace of a tier gets its LimitRange and
//! ResourceQuota, and pods of a tier its `priorityClassName` — at render
//! time, in the plan, and enforced by the real API server.

use std::path::Path;

use serde_json::Value;

use crate::{code, kubectl, real_cluster, std_command, stderr, stdout, write_files};

fn project(namespace: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            (
                "terrace.yaml",
                "name: tiered\nlayers: [platform, apps]\ntargets:\n  k8s: { type: cluster }\ntiers:\n  0-core:\n    priority: 100000\n    description: what everything else needs\n  2-apps:\n    priority: 1000\n    defaults:\n      requests: {cpu: 20m, memory: 32Mi}\n      limits: {memory: 64Mi}\n    max: {memory: 128Mi}\n    quota: {requests.memory: 100Mi, limits.memory: 200Mi, pods: 10}\n",
            ),
            ("platform/tiers/unit.yaml", "layer: platform\nkind: tiers\n"),
            (
                "platform/namespaces/unit.yaml",
                "layer: platform\nkind: manifests\n",
            ),
            (
                "platform/namespaces/ns.yaml",
                &format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels:\n    terrace.dev/tier: 2-apps\n"
                ),
            ),
            ("apps/job/unit.yaml", "layer: apps\nkind: manifests\n"),
            (
                "apps/job/job.yaml",
                &format!(
                    "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: once\n  namespace: {namespace}\nspec:\n  template:\n    metadata:\n      labels:\n        terrace.dev/tier: 2-apps\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: once\n        image: registry.k8s.io/pause:3.10\n"
                ),
            ),
            (
                "apps/web/unit.yaml",
                &format!(
                    "layer: apps\nkind: app\napp:\n  namespace: {namespace}\n  image: ghcr.io/example/web:1.0.0\n  ports: [8080]\n  tier: 2-apps\n"
                ),
            ),
        ],
    );
    dir
}

fn rendered(dir: &Path, unit: &str, file: &str) -> String {
    std::fs::read_to_string(
        dir.join(".terrace/rendered/default/k8s")
            .join(unit)
            .join(file),
    )
    .unwrap_or_else(|e| panic!("{unit}/{file}: {e}"))
}

#[test]
fn tiers_bring_priority_classes_quotas_and_pod_priorities_into_the_plan() {
    let dir = project("shop");
    let d = dir.path();
    let o = std_command(d).arg("plan").output().expect("terrace runs");
    let out = stdout(&o);
    assert_eq!(code(&o), 2, "{out}{}", stderr(&o));
    for line in [
        "+ scheduling.k8s.io/v1 PriorityClass 0-core",
        "+ scheduling.k8s.io/v1 PriorityClass 2-apps",
        "+ v1 LimitRange shop/terrace-tier",
        "+ v1 ResourceQuota shop/terrace-tier",
    ] {
        assert!(out.contains(line), "`{line}` in the plan: {out}");
    }
    let o = std_command(d).arg("apply").output().expect("terrace runs");
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let pc = rendered(d, "tiers", "scheduling.k8s.io_v1_priorityclass_2-apps.yaml");
    assert!(
        pc.contains("value: 1000") && pc.contains("globalDefault: false"),
        "{pc}"
    );
    let limits = rendered(d, "namespaces", "v1_limitrange_shop_terrace-tier.yaml");
    assert!(
        limits.contains("defaultRequest:") && limits.contains("memory: 128Mi"),
        "{limits}"
    );
    let quota = rendered(d, "namespaces", "v1_resourcequota_shop_terrace-tier.yaml");
    assert!(
        quota.contains("pods: '10'") || quota.contains("pods: \"10\""),
        "{quota}"
    );
    let job = rendered(d, "job", "batch_v1_job_shop_once.yaml");
    assert!(job.contains("priorityClassName: 2-apps"), "{job}");
    let web = rendered(d, "web", "apps_v1_deployment_shop_web.yaml");
    assert!(web.contains("priorityClassName: 2-apps"), "{web}");
    assert!(
        web.contains("cpu: 20m"),
        "the tier's default requests: {web}"
    );

    // A tier terrace.yaml does not define.
    write_files(
        d,
        &[(
            "platform/namespaces/ns.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    terrace.dev/tier: 9-nope\n",
        )],
    );
    let o = std_command(d).arg("plan").output().expect("terrace runs");
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(code(&o), 1, "{out}");
    assert!(
        out.contains("tier `9-nope`") && out.contains("platform/namespaces/ns.yaml"),
        "{out}"
    );
}

#[test]
fn real_cluster_a_tiers_namespace_refuses_a_pod_over_its_quota() {
    let Some(kubeconfig) =
        real_cluster("real_cluster_a_tiers_namespace_refuses_a_pod_over_its_quota")
    else {
        return;
    };
    let ns = "terrace-rt-tiers";
    let _ = kubectl(
        &kubeconfig,
        &[
            "delete",
            "namespace",
            ns,
            "--wait=true",
            "--ignore-not-found",
        ],
    );
    let dir = project(ns);
    let d = dir.path();
    let o = std_command(d)
        .args(["--cluster", &format!("k8s={}", kubeconfig.display())])
        .args(["apply", "--unit", "tiers", "--unit", "namespaces"])
        .env("TERRACE_KUBE_POLL_MS", "200")
        .output()
        .expect("terrace runs");
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let get = |args: &[&str]| -> Value {
        let o = kubectl(&kubeconfig, args);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).expect("json")
    };
    let pc = get(&["get", "priorityclass", "2-apps", "-o", "json"]);
    assert_eq!(pc["value"], 1000);
    let quota = get(&[
        "get",
        "resourcequota",
        "terrace-tier",
        "-n",
        ns,
        "-o",
        "json",
    ]);
    assert_eq!(quota["spec"]["hard"]["pods"], "10");
    get(&["get", "limitrange", "terrace-tier", "-n", ns, "-o", "json"]);
    // This server runs no quota controller: its first count (nothing used)
    // is written as the controller would, then admission keeps it.
    let status = serde_json::json!({"status": {
        "hard": quota["spec"]["hard"],
        "used": {"limits.memory": "0", "requests.memory": "0", "pods": "0"},
    }});
    let o = kubectl(
        &kubeconfig,
        &[
            "patch",
            "resourcequota",
            "terrace-tier",
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let _ = kubectl(
        &kubeconfig,
        &["create", "serviceaccount", "default", "-n", ns],
    );

    let pod = |name: &str, memory: Option<&str>| {
        let mut p = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"priorityClassName": "2-apps", "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
        });
        if let Some(m) = memory {
            p["spec"]["containers"][0]["resources"] =
                serde_json::json!({"requests": {"memory": m}, "limits": {"memory": m}});
        }
        let file = d.join(format!("{name}.json"));
        std::fs::write(&file, p.to_string()).expect("write");
        file
    };
    // Within the quota, without resources: the LimitRange's defaults and
    // the class's priority are filled in by the server.
    let small = pod("small", None);
    let o = kubectl(
        &kubeconfig,
        &[
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            small.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let created: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(created["spec"]["priority"], 1000, "{created}");
    assert_eq!(
        created["spec"]["containers"][0]["resources"]["requests"]["memory"], "32Mi",
        "{created}"
    );
    // Above the container maximum and the namespace's quota: refused.
    let big = pod("big", Some("150Mi"));
    let o = kubectl(&kubeconfig, &["create", "-f", big.to_str().expect("utf-8")]);
    assert_ne!(code(&o), 0, "a pod over the tier's limits was admitted");
    assert!(stderr(&o).contains("forbidden"), "{}", stderr(&o));
    // Two pods of 60Mi fit the container maximum but not the quota's
    // 100Mi of requests together.
    let first = pod("first", Some("60Mi"));
    let o = kubectl(
        &kubeconfig,
        &["create", "-f", first.to_str().expect("utf-8")],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let second = pod("second", Some("60Mi"));
    let o = kubectl(
        &kubeconfig,
        &["create", "-f", second.to_str().expect("utf-8")],
    );
    assert_ne!(code(&o), 0, "a pod over the quota was admitted");
    assert!(stderr(&o).contains("exceeded quota"), "{}", stderr(&o));
    let _ = kubectl(&kubeconfig, &["delete", "namespace", ns, "--wait=false"]);
    let _ = kubectl(
        &kubeconfig,
        &["delete", "priorityclass", "0-core", "2-apps"],
    );
}
