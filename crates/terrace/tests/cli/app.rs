//! `kind: app`: eight specs rendered to their objects (golden files), and
//! the same objects checked by the real API server: every object valid
//! (server-side dry run, strict field validation), and every pod they make
//! admitted by Pod Security admission in a namespace enforcing the
//! `restricted` standard, where a pod without the defaults is refused.

use std::path::Path;

use serde_json::Value;

use crate::{code, kubectl, real_cluster, std_command, stderr, stdout, write_files};

/// (unit, unit.yaml) of the eight specs, each in namespace `apps`.
const SPECS: [(&str, &str); 8] = [
    (
        "web",
        "layer: apps\nkind: app\napp:\n  namespace: apps\n  image: ghcr.io/example/web:1.4.2\n  ports: [8080]\n  env:\n    LOG_LEVEL: info\n    WORKERS: 4\n  host:\n    name: web.example.org\n    class: traefik\n    issuer: letsencrypt\n    auth: apps-basic-auth@kubernetescrd\n    annotations:\n      traefik.ingress.kubernetes.io/router.entrypoints: websecure\n  replicas: 2\n  probes:\n    liveness: {http: /healthz}\n    readiness: {http: /ready, periodSeconds: 5}\n  tier: 2-apps\n",
    ),
    (
        "worker",
        "layer: apps\nkind: app\napp:\n  namespace: apps\n  image: ghcr.io/example/worker:3.1.0\n  command: [/bin/worker]\n  args: [--queue, jobs]\n  env:\n    QUEUE_URL: redis://queue.apps:6379\n  resources:\n    requests: {cpu: 200m, memory: 128Mi}\n    limits: {cpu: '1', memory: 512Mi}\n  network:\n    allowFrom: []\n",
    ),
    (
        "nightly",
        "layer: apps\nkind: app\napp:\n  namespace: apps\n  image: ghcr.io/example/report:0.9.0\n  schedule: \"0 3 * * *\"\n  command: [/bin/report, --since, 24h]\n  config:\n    report.yaml: \"format: pdf\\nrecipients: [ops@example.org]\\n\"\n",
    ),
    (
        "db",
        "layer: apps\nkind: app\napp:\n  namespace: apps\n  image: docker.io/library/postgres:16.4\n  ports: [{name: postgres, port: 5432}]\n  stateful: true\n  volumes:\n    data: {path: /var/lib/postgresql/data, size: 10Gi, storageClass: local-path}\n  security:\n    runAsUser: 999\n    runAsGroup: 999\n    fsGroup: 999\n  network:\n    allowFrom: [tenants-a, tenants-b]\n",
    ),
    (
        "tenants",
        "layer: apps\nkind: app\napp:\n  namespace: apps\n  image: ghcr.io/example/shop:5.2.0\n  ports: [{name: http, port: 8000}]\n  env:\n    PLAN: basic\n  instances:\n    a:\n      env: {TENANT: a}\n      host: a.shop.example.org\n    b:\n      env: {TENANT: b, PLAN: pro}\n      replicas: 3\n      host: b.shop.example.org\n      volumes:\n        uploads: {path: /uploads, size: 5Gi}\n",
    ),
    (
        "api",
        "layer: apps\nkind: app\napp:\n  namespace: apps\n  image: ghcr.io/example/api:2.0.1\n  ports: [9000]\n  env:\n    DB_HOST: db.apps\n  secrets:\n    DB_PASSWORD: ${secret.secrets/web.yaml#db_password}\n  network:\n    allowFrom: [web]\n",
    ),
    (
        "proxy",
        "layer: apps\nkind: app\napp:\n  namespace: apps\n  image: docker.io/library/nginx:1.27.2\n  ports: [{name: http, port: 80}]\n  security:\n    readOnlyRootFilesystem: false\n    addCapabilities: [NET_BIND_SERVICE]\n    runAsUser: 101\n    reason: nginx writes its cache under /var/cache/nginx and binds port 80\n",
    ),
    (
        "media",
        "layer: apps\nkind: app\napp:\n  namespace: apps\n  image: ghcr.io/example/media:1.0.0\n  ports: [8096]\n  volumes:\n    library: {path: /media, size: 500Gi, nfs: {server: 192.168.1.10, path: /export/media}, readOnly: true}\n    cache: {path: /cache, emptyDir: true}\n",
    ),
];

/// The eight specs in a project (with the example's secret and key).
fn project(namespace: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let example = crate::repo_root().join("examples/homelab");
    for f in ["keys/demo.agekey", "secrets/web.yaml", ".sops.yaml"] {
        std::fs::create_dir_all(d.join(f).parent().expect("parent")).expect("mkdir");
        std::fs::copy(example.join(f), d.join(f)).expect("copy");
    }
    let mut files = vec![(
        "terrace.yaml".to_owned(),
        // terrace's own Pod Security rules, enforced: every app passes.
        "name: apps\nlayers: [apps]\ntargets:\n  k8s: { type: cluster }\npolicy:\n  default: off\n  rules: {pss-restricted: enforce, image-tag: enforce, resources: enforce, read-only-root-filesystem: audit}\n".to_owned(),
    )];
    for (unit, yaml) in SPECS {
        files.push((
            format!("apps/{unit}/unit.yaml"),
            yaml.replace("namespace: apps", &format!("namespace: {namespace}"))
                .replace(".apps", &format!(".{namespace}")),
        ));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_files(d, &refs);
    dir
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    std_command(dir)
        .args(args)
        .env("SOPS_AGE_KEY_FILE", dir.join("keys/demo.agekey"))
        .output()
        .expect("terrace runs")
}

/// Every rendered file of `unit`, in name order, as one text.
fn rendered(dir: &Path, unit: &str) -> String {
    let base = dir.join(".terrace/rendered/default/k8s").join(unit);
    let mut names: Vec<String> = std::fs::read_dir(&base)
        .expect("rendered")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = String::new();
    for n in names {
        let text = std::fs::read_to_string(base.join(&n)).expect("read");
        out.push_str(&format!("# {n}\n"));
        if text.contains("ENC[AES256_GCM") {
            out.push_str("(sealed: SOPS-encrypted)\n");
        } else {
            out.push_str(&text);
        }
    }
    out
}

#[test]
fn eight_app_specs_render_their_objects_with_secure_defaults() {
    let dir = project("apps");
    let d = dir.path();
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    for (unit, _) in SPECS {
        insta::assert_snapshot!(format!("app_{unit}"), rendered(d, unit));
    }
    // The secret reaches the Secret only, which is sealed; the pod reads
    // it through envFrom.
    let api = rendered(d, "api");
    assert!(
        api.contains("# v1_secret_apps_api-secrets.yaml\n(sealed"),
        "{api}"
    );
    assert!(
        api.contains("secretRef:\n            name: api-secrets"),
        "{api}"
    );
    let plain = std::fs::read_to_string(d.join("secrets/web.yaml")).expect("secret");
    assert!(!plain.is_empty());
    let o = run(d, &["plan"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("8 of 8 units unchanged"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn app_specs_that_would_deploy_something_unsafe_are_refused() {
    let cases = [
        (
            "image: ghcr.io/example/web:1.4.2",
            "image: ghcr.io/example/web",
            "no tag",
        ),
        (
            "image: ghcr.io/example/web:1.4.2",
            "image: ghcr.io/example/web:latest",
            "`latest`",
        ),
        (
            "  replicas: 2\n",
            "  replicas: 2\n  security: {runAsNonRoot: false}\n",
            "security.reason: is missing",
        ),
        (
            "  env:\n    LOG_LEVEL: info\n",
            "  env:\n    LOG_LEVEL: ${secret.secrets/web.yaml#db_password}\n",
            "holds a secret value",
        ),
        (
            "  replicas: 2\n",
            "  replicas: 2\n  schedule: every night\n",
            "not a cron schedule",
        ),
        (
            "name: web.example.org",
            "name: Web_Example",
            "not a host name",
        ),
        (
            "class: traefik",
            "class: haproxy",
            "host.auth: is not known",
        ),
        (
            "  replicas: 2\n",
            "  replicas: 2\n  volumes:\n    data: {path: data, size: 1Gi}\n",
            "not an absolute path",
        ),
        (
            "  replicas: 2\n",
            "  replicas: 2\n  volumes:\n    data: {path: /data}\n",
            "exactly one of",
        ),
        (
            "  replicas: 2\n",
            "  replicas: 2\n  colour: blue\n",
            "colour",
        ),
        (
            "  replicas: 2\n",
            "  replicas: 2\n  name: ../../etc\n",
            "not a valid object name",
        ),
        (
            "  replicas: 2\n",
            "  replicas: 2\n  volumes:\n    ../x: {path: /x, emptyDir: true}\n",
            "not a usable volume name",
        ),
        (
            "  replicas: 2\n",
            "  replicas: 2\n  instances:\n    A_B: {replicas: 1}\n",
            "is not a valid name",
        ),
    ];
    for (from, to, expected) in cases {
        let dir = project("apps");
        let d = dir.path();
        let web = SPECS[0].1;
        assert!(web.contains(from), "{from}");
        write_files(d, &[("apps/web/unit.yaml", &web.replace(from, to))]);
        let o = run(d, &["plan", "--unit", "web"]);
        let out = format!("{}{}", stdout(&o), stderr(&o));
        assert_ne!(code(&o), 0, "{to}: {out}");
        assert!(
            out.contains(expected),
            "{to}: expected `{expected}` in {out}"
        );
        assert!(out.contains("apps/web/unit.yaml"), "names the file: {out}");
    }
}

/// The pod a workload makes, as the API server would create it.
fn pod_of(workload: &Value, namespace: &str) -> Option<Value> {
    let template = match workload["kind"].as_str()? {
        "Deployment" | "StatefulSet" => &workload["spec"]["template"],
        "CronJob" => &workload["spec"]["jobTemplate"]["spec"]["template"],
        _ => return None,
    };
    let mut pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
    });
    pod["metadata"]["name"] =
        Value::String(format!("{}-pod", workload["metadata"]["name"].as_str()?));
    pod["metadata"]["namespace"] = Value::String(namespace.to_owned());
    // A StatefulSet's controller adds a claim per template to its pods.
    for t in workload["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = t["metadata"]["name"].as_str()?;
        pod["spec"]["volumes"]
            .as_array_mut()?
            .push(serde_json::json!({"name": name, "persistentVolumeClaim": {"claimName": format!("{name}-0")}}));
    }
    Some(pod)
}

#[test]
fn real_cluster_app_objects_are_valid_and_pass_the_restricted_pod_security_standard() {
    let Some(kubeconfig) = real_cluster(
        "real_cluster_app_objects_are_valid_and_pass_the_restricted_pod_security_standard",
    ) else {
        return;
    };
    let ns = "terrace-rt-app-pss";
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
    let o = kubectl(&kubeconfig, &["create", "namespace", ns]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = kubectl(
        &kubeconfig,
        &[
            "label",
            "namespace",
            ns,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let dir = project(ns);
    let d = dir.path();
    let o = run(d, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let mut checked = 0;
    let mut pods = 0;
    let mut objects = Vec::new();
    for (unit, _) in SPECS {
        let base = d.join(".terrace/rendered/default/k8s").join(unit);
        for entry in std::fs::read_dir(&base).expect("rendered") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            if text.contains("ENC[AES256_GCM") {
                continue;
            }
            let value = terrace_yaml::documents(&text, &path)
                .expect("yaml")
                .into_iter()
                .next()
                .expect("one document")
                .1;
            objects.push((unit, path, value));
        }
    }
    // Pods are admitted only with their service account there: those are
    // created for real, first.
    for (_, path, value) in &objects {
        if value["kind"] == "ServiceAccount" {
            let o = kubectl(&kubeconfig, &["apply", "-f", path.to_str().expect("utf-8")]);
            assert_eq!(code(&o), 0, "{}", stderr(&o));
        }
    }
    for (unit, path, value) in objects {
        {
            // Every object, as the server validates it (unknown fields
            // are errors).
            let o = kubectl(
                &kubeconfig,
                &[
                    "apply",
                    "--dry-run=server",
                    "--validate=strict",
                    "-f",
                    path.to_str().expect("utf-8"),
                ],
            );
            assert_eq!(
                code(&o),
                0,
                "{}: {}{}",
                path.display(),
                stdout(&o),
                stderr(&o)
            );
            checked += 1;
            if let Some(pod) = pod_of(&value, ns) {
                let file = d.join(format!("{unit}-pod.json"));
                std::fs::write(&file, pod.to_string()).expect("write");
                let o = kubectl(
                    &kubeconfig,
                    &[
                        "create",
                        "--dry-run=server",
                        "-f",
                        file.to_str().expect("utf-8"),
                    ],
                );
                assert_eq!(
                    code(&o),
                    0,
                    "{unit}'s pod is refused by Pod Security admission: {}{}",
                    stdout(&o),
                    stderr(&o)
                );
                pods += 1;
                // The control: without the defaults, the same pod is
                // refused, so the namespace does enforce.
                let mut bare = pod.clone();
                bare["spec"]["containers"][0]
                    .as_object_mut()
                    .expect("container")
                    .remove("securityContext");
                let file = d.join(format!("{unit}-bare.json"));
                std::fs::write(&file, bare.to_string()).expect("write");
                let o = kubectl(
                    &kubeconfig,
                    &[
                        "create",
                        "--dry-run=server",
                        "-f",
                        file.to_str().expect("utf-8"),
                    ],
                );
                assert_ne!(code(&o), 0, "a pod without the defaults was admitted");
                assert!(
                    stderr(&o).contains("violates PodSecurity"),
                    "{}",
                    stderr(&o)
                );
            }
        }
    }
    assert!(checked >= 40, "{checked} objects checked");
    assert_eq!(pods, 9, "one pod per workload (the factory makes two)");
    let _ = kubectl(&kubeconfig, &["delete", "namespace", ns, "--wait=false"]);
}
