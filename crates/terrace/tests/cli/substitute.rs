//! Flux's post-build substitution in `kustomize` and `manifests` units:
//! variables inline (terrace expressions allowed), from a cluster-settings
//! ConfigMap and from a SOPS-encrypted Secret, as a Flux tree has them;
//! the result equals `kubectl kustomize` with the same substitution, and
//! what a secret variable reaches is sealed.

use std::path::Path;

use crate::{code, homelab, stderr, stdout, terrace, write_files};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  labels:
    cluster: ${CLUSTER_NAME}
spec:
  replicas: ${REPLICAS:=1}
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      containers:
        - name: echo
          image: ghcr.io/example/echo:${ECHO_VERSION:=1.0.0}
          env:
            - name: HOST
              value: echo.${SECRET_DOMAIN}
            - name: LITERAL
              value: $${NOT_A_VAR}
            - name: REGION
              value: \"${REGION,,}\"
";

const CONFIG_MAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: echo-config
  annotations:
    kustomize.toolkit.fluxcd.io/substitute: disabled
data:
  template: ${LEFT_ALONE}
";

fn flux_tree(dir: &Path, strict: bool) {
    write_files(
        dir,
        &[
            (
                "kubernetes/flux/vars/cluster-settings.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cluster-settings\n  namespace: flux-system\ndata:\n  CLUSTER_NAME: home\n  REPLICAS: \"3\"\n  REGION: EU-Central\n",
            ),
            (
                "kubernetes/flux/vars/cluster-secrets.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cluster-secrets\n  namespace: flux-system\nstringData:\n  SECRET_DOMAIN: hidden-domain-7Qx.example\n",
            ),
            (
                "kubernetes/apps/default/echo/app/deployment.yaml",
                DEPLOYMENT,
            ),
            (
                "kubernetes/apps/default/echo/app/configmap.yaml",
                CONFIG_MAP,
            ),
            (
                "kubernetes/apps/default/echo/app/kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: default\nresources: [deployment.yaml, configmap.yaml]\n",
            ),
            (
                "apps/echo/unit.yaml",
                &format!(
                    "layer: apps\nkind: kustomize\ntarget: k3s\nkustomize:\n  path: ../../kubernetes/apps/default/echo/app\n  substitute:\n    strict: {strict}\n    vars:\n      ECHO_VERSION: \"2.1.0\"\n      CLUSTER_NAME: ${{var.domain}}\n    from:\n      - path: ../../kubernetes/flux/vars/cluster-settings.yaml\n      - path: ../../kubernetes/flux/vars/cluster-secrets.yaml\n      - path: ../../kubernetes/flux/vars/missing.yaml\n        optional: true\n"
                ),
            ),
        ],
    );
    let o = terrace(
        dir,
        &[
            "secrets",
            "encrypt",
            "-i",
            "kubernetes/flux/vars/cluster-secrets.yaml",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// Flux's text substitution of `${NAME}` and `${NAME:=default}` over
/// kubectl's output, the way kustomize-controller does it.
fn flux_substitute(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
        let re_default = format!("${{{k}:=");
        while let Some(at) = out.find(&re_default) {
            let end = out[at..].find('}').expect("closed") + at;
            out.replace_range(at..=end, v);
        }
    }
    out.replace("${REGION,,}", "eu-central")
        .replace("$${", "${")
}

fn out(o: &std::process::Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

fn objects(text: &str) -> Vec<serde_json::Value> {
    terrace_yaml::documents(text, Path::new("out"))
        .expect("yaml")
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn a_kustomize_unit_substitutes_as_flux_does() {
    let dir = homelab();
    flux_tree(dir.path(), true);
    let o = terrace(dir.path(), &["apply", "--unit", "echo"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let rendered = dir.path().join(".terrace/rendered/homelab/k3s/echo");
    let read = |f: &str| std::fs::read_to_string(rendered.join(f)).expect(f);
    let deploy: serde_json::Value = terrace_yaml::from_str(
        &read("apps_v1_deployment_default_echo.yaml"),
        Path::new("d"),
    )
    .expect("yaml");
    let cm = read("v1_configmap_default_echo-config.yaml");
    // The Deployment holds the secret domain: it is written sealed.
    let sealed = read("apps_v1_deployment_default_echo.yaml");
    assert!(!sealed.contains("hidden-domain-7Qx"), "{sealed}");
    assert!(sealed.contains("ENC["), "{sealed}");
    assert!(cm.contains("template: ${LEFT_ALONE}"), "opted out: {cm}");
    // A secret variable may be anywhere in it: every value is sealed.
    assert!(
        deploy["kind"]
            .as_str()
            .is_some_and(|k| k.starts_with("ENC[")),
        "{deploy}"
    );

    // Against kubectl kustomize with Flux's substitution.
    let Ok(k) = std::process::Command::new("kubectl")
        .args(["kustomize", "kubernetes/apps/default/echo/app"])
        .current_dir(dir.path())
        .output()
    else {
        eprintln!("skipped the comparison: kubectl (the reference renderer) is not on the PATH");
        return;
    };
    assert!(k.status.success(), "{}", String::from_utf8_lossy(&k.stderr));
    let want = objects(&flux_substitute(
        &String::from_utf8_lossy(&k.stdout),
        &[
            ("CLUSTER_NAME", "home.arpa"),
            ("REPLICAS", "3"),
            ("ECHO_VERSION", "2.1.0"),
            ("SECRET_DOMAIN", "hidden-domain-7Qx.example"),
        ],
    ));
    // Ours: the files apply wrote, the sealed one opened with the key.
    let mut docs: Vec<serde_json::Value> = Vec::new();
    for f in [
        "apps_v1_deployment_default_echo.yaml",
        "v1_configmap_default_echo-config.yaml",
    ] {
        let path = format!(".terrace/rendered/homelab/k3s/echo/{f}");
        let text = if read(f).contains("ENC[") {
            let o = terrace(dir.path(), &["secrets", "decrypt", &path]);
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            stdout(&o)
        } else {
            read(f)
        };
        docs.push(terrace_yaml::from_str(&text, Path::new(f)).expect("yaml"));
    }
    let find = |list: &[serde_json::Value], kind: &str| {
        list.iter()
            .find(|d| d["kind"] == kind)
            .cloned()
            .expect(kind)
    };
    let (ours_cm, want_cm) = (find(&docs, "ConfigMap"), find(&want, "ConfigMap"));
    // Flux leaves the opted-out object as kustomize built it.
    assert_eq!(
        ours_cm["data"],
        serde_json::json!({"template": "${LEFT_ALONE}"})
    );
    assert_eq!(want_cm["data"]["template"], "${LEFT_ALONE}");
    let (d, w) = (find(&docs, "Deployment"), find(&want, "Deployment"));
    assert_eq!(d["spec"]["replicas"], 3, "a number, as Flux's parse gives");
    assert_eq!(d["spec"]["replicas"], w["spec"]["replicas"]);
    assert_eq!(d["metadata"]["labels"], w["metadata"]["labels"]);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let wc = &w["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/example/echo:2.1.0");
    assert_eq!(c["image"], wc["image"]);
    assert_eq!(c["env"][0]["value"], "echo.hidden-domain-7Qx.example");
    // The plan shows the secret as sensitive, never its value.
    std::fs::write(dir.path().join("kubernetes/flux/vars/cluster-settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cluster-settings\ndata:\n  CLUSTER_NAME: home\n  REPLICAS: \"4\"\n  REGION: EU-Central\n").expect("write");
    let o = terrace(dir.path(), &["plan", "--unit", "echo", "--output", "json"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!stdout(&o).contains("hidden-domain-7Qx"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("apps/v1 Deployment default/echo"),
        "{}",
        stdout(&o)
    );
    assert_eq!(c["env"][1], wc["env"][1], "$${{ is a literal ${{");
    assert_eq!(c["env"][1]["value"], "${NOT_A_VAR}");
    assert_eq!(c["env"][2]["value"], "eu-central");
}

#[test]
fn strict_substitution_names_the_unset_variable_and_where() {
    let dir = homelab();
    flux_tree(dir.path(), true);
    write_files(
        dir.path(),
        &[(
            "kubernetes/apps/default/echo/app/configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: echo-config\ndata:\n  missing: ${NOBODY_SET_ME}\n",
        )],
    );
    let o = terrace(dir.path(), &["plan", "--unit", "echo"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let err = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        err.contains("variable not set (strict mode): \"NOBODY_SET_ME\""),
        "{err}"
    );
    assert!(err.contains("v1 ConfigMap default/echo-config"), "{err}");
    assert!(err.contains("apps/echo/unit.yaml"), "{err}");
    // Not strict: empty, as Flux without the feature gate.
    flux_tree(dir.path(), false);
    write_files(
        dir.path(),
        &[(
            "kubernetes/apps/default/echo/app/configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: echo-config\ndata:\n  missing: ${NOBODY_SET_ME}\n",
        )],
    );
    let o = terrace(dir.path(), &["plan", "--unit", "echo"]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    // A bad variable name and a file that is neither ConfigMap nor Secret.
    write_files(
        dir.path(),
        &[(
            "apps/echo/unit.yaml",
            "layer: apps\nkind: kustomize\ntarget: k3s\nkustomize:\n  path: ../../kubernetes/apps/default/echo/app\n  substitute:\n    vars:\n      my-var: x\n",
        )],
    );
    let o = terrace(dir.path(), &["plan", "--unit", "echo"]);
    assert!(
        out(&o).contains("`my-var` is not a valid variable name"),
        "{}",
        out(&o)
    );
    write_files(
        dir.path(),
        &[
            (
                "apps/echo/unit.yaml",
                "layer: apps\nkind: kustomize\ntarget: k3s\nkustomize:\n  path: ../../kubernetes/apps/default/echo/app\n  substitute:\n    from: [{path: app-deployment.yaml}]\n",
            ),
            ("apps/echo/app-deployment.yaml", DEPLOYMENT),
        ],
    );
    let o = terrace(dir.path(), &["plan", "--unit", "echo"]);
    assert!(
        out(&o).contains("holds a Deployment; only ConfigMaps and Secrets"),
        "{}",
        out(&o)
    );
    write_files(
        dir.path(),
        &[(
            "apps/echo/unit.yaml",
            "layer: apps\nkind: kustomize\ntarget: k3s\nkustomize:\n  path: ../../kubernetes/apps/default/echo/app\n  substitute:\n    from: [{path: ../../../outside.yaml}]\n",
        )],
    );
    let o = terrace(dir.path(), &["plan", "--unit", "echo"]);
    assert!(out(&o).contains("leads outside the project"), "{}", out(&o));
}

#[test]
fn a_manifests_unit_with_substitute_reads_flux_syntax() {
    let dir = homelab();
    write_files(
        dir.path(),
        &[
            (
                "apps/plain/unit.yaml",
                "layer: apps\nkind: manifests\ntarget: k3s\nmanifests:\n  substitute:\n    vars: {NAME: plain, COUNT: 2}\n",
            ),
            (
                "apps/plain/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${NAME}\n  namespace: ${NS:=apps}\ndata:\n  count: \"${COUNT}\"\n  kept: $${input.nothing}\n",
            ),
        ],
    );
    let o = terrace(dir.path(), &["apply", "--unit", "plain"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let cm = std::fs::read_to_string(
        dir.path()
            .join(".terrace/rendered/homelab/k3s/plain/v1_configmap_apps_plain.yaml"),
    )
    .expect("the name and namespace came from the variables");
    assert!(cm.contains("count: 2\n"), "{cm}");
    assert!(cm.contains("kept: ${input.nothing}"), "{cm}");
}
