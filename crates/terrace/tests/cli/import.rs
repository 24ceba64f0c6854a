//! `terrace import flux` on a tree written in Flux's conventions (a
//! cluster Kustomization with a cluster-settings ConfigMap and a SOPS
//! Secret for `substituteFrom`, app Kustomizations with `ks.yaml` and
//! `app/`, HelmReleases from an HTTP repository, OCI, and this
//! repository): it imports, validates, and plans the objects Flux would
//! apply, leaving the user's files as they were.

use std::path::Path;

use crate::{code, homelab, stderr, stdout, terrace, write_files};

const CLUSTER: &str = "---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: cluster-apps
  namespace: flux-system
spec:
  interval: 30m
  path: ./kubernetes/apps
  prune: true
  sourceRef:
    kind: GitRepository
    name: flux-system
  postBuild:
    substituteFrom:
      - kind: ConfigMap
        name: cluster-settings
      - kind: Secret
        name: cluster-secrets
";

const SOURCES: &str = "---
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata:
  name: bjw-s
  namespace: flux-system
spec:
  url: {REPO}
---
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata:
  name: podinfo-oci
  namespace: flux-system
spec:
  type: oci
  url: oci://ghcr.io/stefanprodan/charts
---
apiVersion: source.toolkit.fluxcd.io/v1beta2
kind: OCIRepository
metadata:
  name: app-template
  namespace: flux-system
spec:
  url: oci://ghcr.io/bjw-s/helm/app-template
  ref:
    tag: 3.5.1
";

fn ks(name: &str, path: &str, depends: &str) -> String {
    format!(
        "---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: {name}
  namespace: flux-system
spec:
  targetNamespace: default
  path: {path}
  prune: true
  wait: true
  timeout: 5m
  sourceRef:
    kind: GitRepository
    name: flux-system
{depends}  postBuild:
    substitute:
      APP: {name}
    substituteFrom:
      - kind: ConfigMap
        name: cluster-settings
      - kind: Secret
        name: cluster-secrets
"
    )
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: ${APP}
  labels:
    cluster: ${CLUSTER_NAME}
spec:
  replicas: ${REPLICAS:=2}
  selector:
    matchLabels:
      app: ${APP}
  template:
    metadata:
      labels:
        app: ${APP}
    spec:
      containers:
        - name: app
          image: ghcr.io/example/echo:1.0.0
          env:
            - name: HOST
              value: ${APP}.${SECRET_DOMAIN}
";

const RELEASES: &str = "---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: podinfo
spec:
  interval: 30m
  chart:
    spec:
      chart: ./charts/podinfo
      valuesFiles:
        - ./charts/podinfo/values.yaml
        - ./charts/podinfo/values-home.yaml
      sourceRef:
        kind: GitRepository
        name: flux-system
        namespace: flux-system
  install:
    crds: Skip
  valuesFrom:
    - kind: ConfigMap
      name: podinfo-values
  values:
    host: podinfo.${SECRET_DOMAIN}
    cluster: ${CLUSTER_NAME}
    literal: $${NOT_A_VAR}
  postRenderers:
    - kustomize:
        patches:
          - target:
              kind: ConfigMap
            patch: |
              - op: add
                path: /metadata/labels/patched
                value: \"yes\"
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: web
spec:
  chart:
    spec:
      chart: widgets
      version: 1.x
      sourceRef:
        kind: HelmRepository
        name: bjw-s
        namespace: flux-system
  dependsOn:
    - name: podinfo
  valuesFrom:
    - kind: ConfigMap
      name: web-values
    - kind: ConfigMap
      name: only-in-the-cluster
";

fn flux_repo(dir: &Path, repo: &str) {
    // The example's files go: this repository is the Flux tree, with only
    // the example's keys and .sops.yaml kept.
    for entry in std::fs::read_dir(dir).expect("read") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "keys" || name == ".sops.yaml" {
            continue;
        }
        let p = entry.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).expect("rm");
        } else {
            std::fs::remove_file(&p).expect("rm");
        }
    }
    write_files(
        dir,
        &[
            ("kubernetes/flux/cluster/ks.yaml", CLUSTER),
            (
                "kubernetes/flux/repositories/sources.yaml",
                &SOURCES.replace("{REPO}", repo),
            ),
            (
                "kubernetes/flux/vars/cluster-settings.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cluster-settings\n  namespace: flux-system\ndata:\n  CLUSTER_NAME: home\n  TIMEZONE: Europe/Berlin\n",
            ),
            (
                "kubernetes/flux/vars/cluster-secrets.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cluster-secrets\n  namespace: flux-system\nstringData:\n  SECRET_DOMAIN: secret-zone-9Kd.example\n",
            ),
            (
                "kubernetes/apps/kustomization.yaml",
                "resources: [./default]\n",
            ),
            (
                "kubernetes/apps/default/kustomization.yaml",
                "resources: [./echo/ks.yaml, ./podinfo/ks.yaml]\n",
            ),
            (
                "kubernetes/apps/default/echo/ks.yaml",
                &ks("echo", "./kubernetes/apps/default/echo/app", ""),
            ),
            (
                "kubernetes/apps/default/echo/app/deployment.yaml",
                DEPLOYMENT,
            ),
            (
                "kubernetes/apps/default/plain/ks.yaml",
                &ks("plain", "./kubernetes/apps/default/plain/app", "")
                    .replace("  targetNamespace: default\n", ""),
            ),
            (
                "kubernetes/apps/default/plain/app/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n  namespace: default\ndata:\n  cluster: ${CLUSTER_NAME}\n",
            ),
            (
                "kubernetes/apps/default/echo/app/kustomization.yaml",
                "resources: [deployment.yaml]\n",
            ),
            (
                "kubernetes/apps/default/podinfo/ks.yaml",
                &ks(
                    "podinfo",
                    "./kubernetes/apps/default/podinfo/app",
                    "  dependsOn:\n    - name: echo\n",
                ),
            ),
            (
                "kubernetes/apps/default/podinfo/app/helmrelease.yaml",
                RELEASES,
            ),
            (
                "kubernetes/apps/default/podinfo/app/kustomization.yaml",
                "resources: [helmrelease.yaml, podinfo-values.yaml]\nconfigMapGenerator:\n  - name: web-values\n    files: [values.yaml=web-values.yaml]\n",
            ),
            (
                "kubernetes/apps/default/podinfo/app/web-values.yaml",
                "extra: from-generator\n",
            ),
            (
                "kubernetes/apps/default/podinfo/app/podinfo-values.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: podinfo-values\ndata:\n  values.yaml: |\n    extra: plain\n",
            ),
            (
                "charts/podinfo/values.yaml",
                "extra: chart-default\nzone: none\n",
            ),
            ("charts/podinfo/values-home.yaml", "zone: home-zone\n"),
            (
                "charts/podinfo/Chart.yaml",
                "apiVersion: v2\nname: podinfo\nversion: 6.7.0\n",
            ),
            (
                "charts/podinfo/templates/configmap.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n  labels:\n    app: podinfo\ndata:\n  host: {{ .Values.host | quote }}\n  cluster: {{ .Values.cluster | quote }}\n  literal: {{ .Values.literal | quote }}\n  extra: {{ .Values.extra | default \"none\" | quote }}\n  zone: {{ .Values.zone | quote }}\n",
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

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(d).expect("read").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("in").display().to_string();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    walk(dir, &dir.join("kubernetes"), &mut out);
    out.sort();
    out
}

#[test]
fn a_flux_tree_imports_validates_and_plans_what_flux_would_apply() {
    let Some(helm) =
        crate::helm::helm("a_flux_tree_imports_validates_and_plans_what_flux_would_apply")
    else {
        return;
    };
    // The HTTP chart repository, served here.
    let mut repo = crate::helm::Repo::new();
    repo.publish(&helm, "1.2.0");
    repo.start();
    let dir = homelab();
    flux_repo(dir.path(), &repo.url());
    let before = snapshot(dir.path());
    let o = terrace(
        dir.path(),
        &[
            "import",
            "flux",
            "kubernetes",
            "--layer",
            "kubernetes/flux=flux",
            "--output",
            "json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    // One thing is not mapped: a valuesFrom only the cluster has.
    assert_eq!(code(&o), 3, "{report:#}\n{}", stderr(&o));
    let unmapped = report["unmapped"].as_array().expect("list");
    assert_eq!(unmapped.len(), 1, "{report:#}");
    assert!(
        unmapped[0]["what"].as_str().is_some_and(
            |w| w.contains("HelmRelease /web: valuesFrom ConfigMap/only-in-the-cluster")
        ),
        "{report:#}"
    );
    assert_eq!(
        unmapped[0]["file"],
        "kubernetes/apps/default/podinfo/app/helmrelease.yaml"
    );
    assert_eq!(report["layers"], serde_json::json!(["flux", "apps"]));
    let mut units: Vec<(String, String, String)> = report["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| {
            (
                u["unit"].as_str().unwrap_or_default().to_owned(),
                u["kind"].as_str().unwrap_or_default().to_owned(),
                u["layer"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    units.sort();
    let want: Vec<(String, String, String)> = [
        ("cluster-apps", "kustomize", "flux"),
        ("echo", "kustomize", "apps"),
        ("flux-system-podinfo", "kustomize", "apps"),
        ("plain", "manifests", "apps"),
        ("podinfo", "helm", "apps"),
        ("web", "helm", "apps"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(units, want);
    // The user's files are as they were.
    assert_eq!(snapshot(dir.path()), before);
    let unit = |name: &str, layer: &str| {
        let text =
            std::fs::read_to_string(dir.path().join(format!("terrace/{layer}/{name}/unit.yaml")))
                .expect("unit.yaml");
        let v: serde_json::Value = terrace_yaml::from_str(&text, Path::new(name)).expect("yaml");
        v
    };
    // Sources mapped: an HTTP repository, OCI two ways, this repository.
    let web = unit("web", "apps");
    assert_eq!(web["helm"]["repo"], repo.url());
    assert_eq!(web["helm"]["chart"], "widgets");
    assert_eq!(web["helm"]["version"], "1.x");
    assert_eq!(
        web["dependsOn"],
        serde_json::json!(["flux-system-podinfo", "podinfo"])
    );
    let podinfo = unit("podinfo", "apps");
    assert_eq!(podinfo["helm"]["chart"], "../../../charts/podinfo");
    assert_eq!(
        podinfo["helm"]["namespace"], "default",
        "the Kustomization's targetNamespace"
    );
    assert_eq!(podinfo["helm"]["includeCRDs"], false);
    // valuesFrom: a ConfigMap manifest's data, written beside the unit;
    // a generated ConfigMap, its file as it is.
    assert_eq!(
        podinfo["helm"]["valuesFiles"],
        serde_json::json!([
            "../../../charts/podinfo/values.yaml",
            "../../../charts/podinfo/values-home.yaml",
            "values-podinfo-values.yaml"
        ])
    );
    assert_eq!(
        std::fs::read_to_string(
            dir.path()
                .join("terrace/apps/podinfo/values-podinfo-values.yaml")
        )
        .expect("written"),
        "extra: plain\n"
    );
    assert_eq!(
        web["helm"]["valuesFiles"],
        serde_json::json!(["../../../kubernetes/apps/default/podinfo/app/web-values.yaml"])
    );
    assert_eq!(podinfo["helm"]["values"]["cluster"], "home");
    assert_eq!(
        podinfo["helm"]["values"]["host"],
        "podinfo.${secret.kubernetes/flux/vars/cluster-secrets.yaml#stringData.SECRET_DOMAIN}"
    );
    let echo = unit("echo", "apps");
    assert_eq!(echo["kustomize"]["targetNamespace"], "default");
    assert_eq!(echo["kustomize"]["substitute"]["vars"]["APP"], "echo");
    assert_eq!(echo["kustomize"]["apply"]["timeout"], "5m");
    assert_eq!(
        unit("flux-system-podinfo", "apps")["dependsOn"],
        serde_json::json!(["echo"])
    );

    // It validates, and plans (the units whose charts are here).
    let o = crate::helm::terrace_helm(dir.path(), &helm, &["validate"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = crate::helm::terrace_helm(
        dir.path(),
        &helm,
        &[
            "apply",
            "--unit",
            "web",
            "--unit",
            "cluster-apps",
            "--unit",
            "echo",
            "--unit",
            "flux-system-podinfo",
            "--unit",
            "podinfo",
            "--unit",
            "plain",
        ],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let plan = stdout(&o);
    assert!(!plan.contains("secret-zone-9Kd"), "{plan}");
    let rendered = dir.path().join(".terrace/rendered/default/cluster");
    let files = |unit: &str| -> Vec<String> {
        let mut f: Vec<String> = std::fs::read_dir(rendered.join(unit))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        f.sort();
        f
    };
    // Flux's own objects are units, not objects of the units.
    assert!(
        files("cluster-apps").is_empty(),
        "{:?}",
        files("cluster-apps")
    );
    // The podinfo Kustomization applies its values ConfigMaps, as Flux
    // would; the HelmRelease is a unit of its own.
    let values = files("flux-system-podinfo");
    assert_eq!(values.len(), 2, "{values:?}");
    assert_eq!(values[0], "v1_configmap_default_podinfo-values.yaml");
    assert!(
        values[1].starts_with("v1_configmap_default_web-values"),
        "{values:?}"
    );
    assert_eq!(files("echo"), ["apps_v1_deployment_default_echo.yaml"]);
    // No kustomization.yaml: every manifest under the path, substituted.
    let plain = std::fs::read_to_string(rendered.join("plain/v1_configmap_default_plain.yaml"))
        .expect("a manifests unit");
    assert!(plain.contains("cluster: home"), "{plain}");
    assert_eq!(files("podinfo"), ["v1_configmap_podinfo.yaml"]);
    assert_eq!(
        files("web"),
        ["v1_configmap_web.yaml"],
        "the HTTP repository's chart"
    );
    // The secret domain reached both: sealed on disk.
    for (u, f) in [
        ("echo", "apps_v1_deployment_default_echo.yaml"),
        ("podinfo", "v1_configmap_podinfo.yaml"),
    ] {
        let text = std::fs::read_to_string(rendered.join(u).join(f)).expect("rendered");
        assert!(
            !text.contains("secret-zone-9Kd") && text.contains("ENC["),
            "{text}"
        );
        let o = terrace(
            dir.path(),
            &[
                "secrets",
                "decrypt",
                &format!(".terrace/rendered/default/cluster/{u}/{f}"),
            ],
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let open = stdout(&o);
        if u == "echo" {
            // Flux's substitution: the variables of the Kustomization.
            assert!(
                open.contains("value: echo.secret-zone-9Kd.example"),
                "{open}"
            );
            assert!(open.contains("replicas: 2"), "{open}");
            assert!(open.contains("cluster: home"), "{open}");
        } else {
            assert!(open.contains("podinfo.secret-zone-9Kd.example"), "{open}");
            assert!(open.contains("literal: ${NOT_A_VAR}"), "{open}");
            assert!(open.contains("patched: \"yes\""), "{open}");
            assert!(
                open.contains("extra: plain"),
                "the values from valuesFrom: {open}"
            );
        }
    }

    // Imported once: a second import refuses to overwrite.
    let o = terrace(dir.path(), &["import", "flux", "kubernetes"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("exists already: nothing was written"),
        "{}",
        stderr(&o)
    );
}

/// HelmReleases from OCI (a HelmRepository of type oci, and an
/// OCIRepository), against a real registry on 127.0.0.1: mapped, pinned
/// and rendered.
#[test]
fn oci_sources_are_mapped_and_planned() {
    const TEST: &str = "oci_sources_are_mapped_and_planned";
    let Some(helm) = crate::helm::helm(TEST) else {
        return;
    };
    let Some(bin) = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
    else {
        eprintln!("skipped {TEST}: no docker-registry (scripts/setup-tools.sh installs it)");
        return;
    };
    let mut registry = crate::helm::Registry::new(&bin);
    registry.start();
    registry.push(&helm, "1.0.0");
    let dir = homelab();
    flux_repo(dir.path(), "https://charts.example.org");
    let port = registry.port;
    let sources = format!(
        "---\napiVersion: source.toolkit.fluxcd.io/v1\nkind: HelmRepository\nmetadata:\n  name: local-oci\n  namespace: flux-system\nspec:\n  type: oci\n  insecure: true\n  url: oci://127.0.0.1:{port}/charts\n---\napiVersion: source.toolkit.fluxcd.io/v1beta2\nkind: OCIRepository\nmetadata:\n  name: widgets\n  namespace: flux-system\nspec:\n  insecure: true\n  url: oci://127.0.0.1:{port}/charts/widgets\n  ref:\n    tag: 1.0.0\n"
    );
    let releases = "---\napiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata:\n  name: from-oci\n  namespace: default\nspec:\n  chartRef:\n    kind: OCIRepository\n    name: widgets\n    namespace: flux-system\n---\napiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata:\n  name: oci-repo\n  namespace: default\nspec:\n  chart:\n    spec:\n      chart: widgets\n      version: 1.x\n      sourceRef:\n        kind: HelmRepository\n        name: local-oci\n        namespace: flux-system\n";
    write_files(
        dir.path(),
        &[
            ("kubernetes/flux/repositories/oci.yaml", &sources),
            ("kubernetes/apps/default/oci/releases.yaml", releases),
        ],
    );
    let o = terrace(
        dir.path(),
        &["import", "flux", "kubernetes", "--output", "json"],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let unit = |name: &str| -> serde_json::Value {
        let u = report["units"]
            .as_array()
            .expect("units")
            .iter()
            .find(|u| u["unit"] == name)
            .expect(name);
        terrace_yaml::from_str(u["unitYaml"].as_str().expect("text"), Path::new(name))
            .expect("yaml")
    };
    assert_eq!(
        unit("from-oci")["helm"]["chart"],
        format!("oci://127.0.0.1:{port}/charts/widgets")
    );
    assert_eq!(unit("from-oci")["helm"]["version"], "1.0.0");
    assert_eq!(unit("from-oci")["helm"]["plainHttp"], true);
    assert_eq!(
        unit("oci-repo")["helm"]["chart"],
        format!("oci://127.0.0.1:{port}/charts/widgets")
    );
    assert_eq!(unit("oci-repo")["helm"]["version"], "1.x");
    assert_eq!(unit("oci-repo")["helm"]["namespace"], "default");
    let o = crate::helm::terrace_helm(
        dir.path(),
        &helm,
        &["apply", "--unit", "from-oci", "--unit", "oci-repo"],
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let lock = std::fs::read_to_string(dir.path().join("terrace.lock")).expect("pinned");
    assert!(lock.contains("1.0.0"), "{lock}");
    for u in ["from-oci", "oci-repo"] {
        let f = dir.path().join(format!(
            ".terrace/rendered/default/cluster/{u}/v1_configmap_{u}.yaml"
        ));
        assert!(f.is_file(), "{} rendered", f.display());
    }
}

#[test]
fn hostile_flux_trees_are_refused_or_listed() {
    let dir = homelab();
    flux_repo(dir.path(), "https://charts.example.org");
    write_files(
        dir.path(),
        &[(
            "kubernetes/apps/evil.yaml",
            "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: ../../escape\n  namespace: flux-system\nspec:\n  path: ./x\n---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: outside\n  namespace: flux-system\nspec:\n  path: ../../../etc\n",
        )],
    );
    let o = terrace(
        dir.path(),
        &[
            "import",
            "flux",
            "kubernetes",
            "--dry-run",
            "--output",
            "json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let whats: Vec<&str> = report["unmapped"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|u| u["what"].as_str())
        .collect();
    assert!(
        whats.iter().any(|w| w.contains("../../escape")),
        "{whats:?}"
    );
    assert!(
        whats.iter().any(|w| w.contains("outside: path")),
        "{whats:?}"
    );
    assert!(
        !dir.path().join("terrace").exists(),
        "--dry-run writes nothing"
    );
    // Bad options.
    for args in [
        vec!["import", "flux", "kubernetes", "--out", "../elsewhere"],
        vec!["import", "flux", "kubernetes", "--layer", "nolayer"],
        vec!["import", "flux", "../.."],
    ] {
        let o = terrace(dir.path(), &args);
        assert_eq!(code(&o), 1, "{args:?}: {}{}", stdout(&o), stderr(&o));
    }
}

const FLUX_KS_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: kustomizations.kustomize.toolkit.fluxcd.io
spec:
  group: kustomize.toolkit.fluxcd.io
  names: {kind: Kustomization, listKind: KustomizationList, plural: kustomizations, singular: kustomization}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

/// On the real API server: objects Flux's kustomize-controller applied
/// (its field manager and labels) are taken over by imported units with
/// the same uid and no conflict; the plan says Flux had them, and apply
/// refuses while the Flux Kustomization is not suspended, unless forced.
#[test]
fn real_cluster_objects_flux_applied_are_taken_over_once_it_is_suspended() {
    let Some(kc) = crate::real_cluster(
        "real_cluster_objects_flux_applied_are_taken_over_once_it_is_suspended",
    ) else {
        return;
    };
    let ns = "terrace-takeover";
    let k = |args: &[&str]| {
        let o = crate::kubectl(&kc, args);
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let crd = tmp.path().join("crd.yaml");
    std::fs::write(&crd, FLUX_KS_CRD).expect("write");
    k(&["apply", "--server-side", "-f", &crd.display().to_string()]);
    k(&[
        "wait",
        "--for=condition=Established",
        "crd/kustomizations.kustomize.toolkit.fluxcd.io",
        "--timeout=60s",
    ]);
    let _ = crate::kubectl(
        &kc,
        &["delete", "namespace", ns, "--wait=true", "--timeout=120s"],
    );
    k(&["create", "namespace", ns]);
    // What Flux applied: the Kustomization, and two ConfigMaps as
    // kustomize-controller applies them.
    let flux = tmp.path().join("flux.yaml");
    let mut text = format!(
        "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: apps\n  namespace: {ns}\nspec:\n  path: ./apps\n  interval: 10m\n"
    );
    std::fs::write(&flux, &text).expect("write");
    k(&["apply", "--server-side", "-f", &flux.display().to_string()]);
    text.clear();
    for name in ["one", "two"] {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    kustomize.toolkit.fluxcd.io/name: apps\n    kustomize.toolkit.fluxcd.io/namespace: {ns}\ndata:\n  v: flux\n"
        ));
    }
    let cms = tmp.path().join("cms.yaml");
    std::fs::write(&cms, &text).expect("write");
    k(&[
        "apply",
        "--server-side",
        "--field-manager=kustomize-controller",
        "-f",
        &cms.display().to_string(),
    ]);
    let uid = |name: &str| {
        k(&[
            "get",
            "configmap",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };
    let before = (uid("one"), uid("two"));

    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = vec![(
        "terrace.yaml".to_owned(),
        format!(
            "name: takeover\nlayers: [apps]\ntargets:\n  cluster:\n    type: cluster\nenvironments:\n  default:\n    targets:\n      cluster: {{kubeconfig: {}}}\n",
            kc.display()
        ),
    )];
    for name in ["one", "two"] {
        files.push((
            format!("apps/{name}/unit.yaml"),
            "layer: apps\nkind: manifests\ntarget: cluster\nmanifests:\n  apply: {wait: false}\n"
                .to_owned(),
        ));
        files.push((
            format!("apps/{name}/cm.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  v: terrace\n"),
        ));
    }
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_files(dir.path(), &borrowed);
    let o = terrace(dir.path(), &["plan"]);
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(code(&o), 2, "{out}");
    assert!(
        out.contains(&format!(
            "adopting it from Flux Kustomization {ns}/apps (field manager(s) kustomize-controller"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("flux suspend kustomization apps -n {ns}")),
        "{out}"
    );
    // Refused while Flux still applies them.
    let o = terrace(dir.path(), &["apply"]);
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(code(&o), 1, "{out}");
    assert!(out.contains("nothing was applied"), "{out}");
    assert_eq!(
        k(&[
            "get",
            "configmap",
            "one",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.v}"
        ]),
        "flux"
    );
    // Forced: taken over all the same.
    let o = terrace(dir.path(), &["apply", "--unit", "one", "--force"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    // Suspended: taken over, no force needed.
    k(&[
        "patch",
        "kustomization.kustomize.toolkit.fluxcd.io",
        "apps",
        "-n",
        ns,
        "--type=merge",
        "-p",
        "{\"spec\":{\"suspend\":true}}",
    ]);
    let o = terrace(dir.path(), &["apply", "--unit", "two"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        (uid("one"), uid("two")),
        before,
        "the same objects, not new ones"
    );
    for name in ["one", "two"] {
        assert_eq!(
            k(&[
                "get",
                "configmap",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.data.v}"
            ]),
            "terrace"
        );
        let managers = k(&[
            "get",
            "configmap",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ]);
        assert!(managers.contains("terrace"), "{managers}");
    }
    let o = terrace(dir.path(), &["plan"]);
    assert_eq!(
        code(&o),
        0,
        "nothing left to change: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let _ = crate::kubectl(&kc, &["delete", "namespace", ns, "--wait=false"]);
}

fn app(name: &str, wave: i64, source: &str, dest_ns: &str, extra: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {name}\n  namespace: argocd\n  annotations:\n    argocd.argoproj.io/sync-wave: \"{wave}\"\nspec:\n  project: default\n  source:\n    repoURL: https://git.example.org/home/infra.git\n    targetRevision: main\n{source}  destination:\n    server: https://kubernetes.default.svc\n    namespace: {dest_ns}\n  syncPolicy:\n    automated: {{prune: true, selfHeal: true}}\n{extra}"
    )
}

/// An Argo CD app-of-apps tree: a root Application over a directory of
/// Applications, two app-of-apps under it ordered by sync wave, a local
/// chart with values files, values and parameters, and ApplicationSets
/// with a list generator (kustomize overlays) and a git directory
/// generator (plain manifests).
fn argo_repo(dir: &Path) {
    let ingress_source = "    path: charts/ingress\n    helm:\n      releaseName: ingress-nginx\n      valueFiles: [values-prod.yaml]\n      valuesObject:\n        replicas: 2\n      parameters:\n        - {name: image.tag, value: \"1.2.3\"}\n";
    write_files(
        dir,
        &[
            (
                "argocd/root.yaml",
                &app("root", 0, "    path: argocd/apps\n", "argocd", ""),
            ),
            (
                "argocd/apps/platform.yaml",
                &app("platform", -1, "    path: argocd/platform\n", "argocd", ""),
            ),
            (
                "argocd/apps/workloads.yaml",
                &app("workloads", 0, "    path: argocd/workloads\n", "argocd", ""),
            ),
            (
                "argocd/platform/ingress.yaml",
                &app(
                    "ingress",
                    0,
                    ingress_source,
                    "ingress",
                    "    syncOptions: [CreateNamespace=true]\n",
                ),
            ),
            (
                "argocd/workloads/guestbook.yaml",
                "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: guestbook\n  namespace: argocd\nspec:\n  generators:\n    - list:\n        elements:\n          - {env: dev}\n          - {env: prod}\n  template:\n    metadata:\n      name: guestbook-{{env}}\n    spec:\n      project: default\n      source:\n        repoURL: https://git.example.org/home/infra.git\n        path: apps/guestbook/overlays/{{env}}\n      destination:\n        server: https://kubernetes.default.svc\n        namespace: guestbook-{{env}}\n",
            ),
            (
                "argocd/workloads/tools.yaml",
                "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: tools\n  namespace: argocd\nspec:\n  goTemplate: true\n  generators:\n    - git:\n        repoURL: https://git.example.org/home/infra.git\n        directories:\n          - path: apps/tools/*\n          - path: apps/tools/skipped\n            exclude: true\n  template:\n    metadata:\n      name: 'tool-{{.path.basename}}'\n    spec:\n      project: default\n      source:\n        repoURL: https://git.example.org/home/infra.git\n        path: '{{.path.path}}'\n      destination:\n        server: https://kubernetes.default.svc\n        namespace: tools\n",
            ),
            (
                "apps/guestbook/base/kustomization.yaml",
                "resources: [deployment.yaml]\n",
            ),
            (
                "apps/guestbook/base/deployment.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: guestbook\nspec:\n  selector: {matchLabels: {app: guestbook}}\n  template:\n    metadata: {labels: {app: guestbook}}\n    spec:\n      containers: [{name: ui, image: ghcr.io/example/guestbook:1}]\n",
            ),
            (
                "apps/guestbook/overlays/dev/kustomization.yaml",
                "resources: [../../base]\nnamePrefix: dev-\n",
            ),
            (
                "apps/guestbook/overlays/prod/kustomization.yaml",
                "resources: [../../base]\nnamePrefix: prod-\n",
            ),
            (
                "apps/tools/a/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata: {v: \"1\"}\n",
            ),
            (
                "apps/tools/b/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\ndata: {v: \"2\"}\n",
            ),
            (
                "apps/tools/skipped/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: skipped\n",
            ),
            (
                "charts/ingress/Chart.yaml",
                "apiVersion: v2\nname: ingress\nversion: 0.1.0\n",
            ),
            (
                "charts/ingress/values.yaml",
                "replicas: 1\nimage: {tag: latest}\nfromFile: default\n",
            ),
            ("charts/ingress/values-prod.yaml", "fromFile: prod\n"),
            (
                "charts/ingress/templates/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  replicas: {{ .Values.replicas | quote }}\n  tag: {{ .Values.image.tag | quote }}\n  fromFile: {{ .Values.fromFile | quote }}\n",
            ),
        ],
    );
}

#[test]
fn an_argo_cd_app_of_apps_imports_validates_and_plans() {
    let Some(helm) = crate::helm::helm("an_argo_cd_app_of_apps_imports_validates_and_plans") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    argo_repo(dir.path());
    let o = terrace(dir.path(), &["import", "argocd", ".", "--output", "json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(code(&o), 0, "{report:#}\n{}", stderr(&o));
    assert_eq!(
        report["layers"],
        serde_json::json!(["argocd", "root", "platform", "workloads"]),
        "{report:#}"
    );
    let mut units: Vec<(String, String, String)> = report["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| {
            (
                u["unit"].as_str().unwrap_or_default().to_owned(),
                u["kind"].as_str().unwrap_or_default().to_owned(),
                u["layer"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    units.sort();
    let want: Vec<(String, String, String)> = [
        ("guestbook-dev", "kustomize", "workloads"),
        ("guestbook-prod", "kustomize", "workloads"),
        ("ingress", "helm", "platform"),
        ("platform", "manifests", "root"),
        ("root", "manifests", "argocd"),
        ("tool-a", "manifests", "workloads"),
        ("tool-b", "manifests", "workloads"),
        ("workloads", "manifests", "root"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(units, want);
    let unit = |name: &str, layer: &str| -> serde_json::Value {
        let text =
            std::fs::read_to_string(dir.path().join(format!("terrace/{layer}/{name}/unit.yaml")))
                .expect("unit.yaml");
        terrace_yaml::from_str(&text, Path::new(name)).expect("yaml")
    };
    // The sync wave orders the two app-of-apps.
    assert_eq!(
        unit("workloads", "root")["dependsOn"],
        serde_json::json!(["platform"])
    );
    let ingress = unit("ingress", "platform");
    assert_eq!(ingress["helm"]["releaseName"], "ingress-nginx");
    assert_eq!(ingress["helm"]["namespace"], "ingress");
    assert_eq!(ingress["helm"]["createNamespace"], true);
    assert_eq!(
        ingress["helm"]["valuesFiles"],
        serde_json::json!(["../../../charts/ingress/values-prod.yaml"])
    );
    assert_eq!(
        unit("tool-a", "workloads")["manifests"]["apply"]["namespace"],
        "tools"
    );

    let o = crate::helm::terrace_helm(dir.path(), &helm, &["validate"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = crate::helm::terrace_helm(dir.path(), &helm, &["apply"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let rendered = dir.path().join(".terrace/rendered/default/cluster");
    let files = |unit: &str| -> Vec<String> {
        let mut f: Vec<String> = std::fs::read_dir(rendered.join(unit))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        f.sort();
        f
    };
    // The app-of-apps apply no Applications: those are units.
    for u in ["root", "platform", "workloads"] {
        assert!(files(u).is_empty(), "{u}: {:?}", files(u));
    }
    assert_eq!(files("tool-a"), ["v1_configmap_a.yaml"]);
    assert_eq!(files("tool-b"), ["v1_configmap_b.yaml"]);
    assert!(
        !rendered.join("tool-skipped").exists(),
        "excluded by the generator"
    );
    // The overlays, as kubectl kustomize builds them.
    for env in ["dev", "prod"] {
        assert_eq!(
            files(&format!("guestbook-{env}")),
            [format!("apps_v1_deployment_{env}-guestbook.yaml")]
        );
        if let Ok(k) = std::process::Command::new("kubectl")
            .args(["kustomize", &format!("apps/guestbook/overlays/{env}")])
            .current_dir(dir.path())
            .output()
        {
            let text = String::from_utf8_lossy(&k.stdout);
            assert!(text.contains(&format!("name: {env}-guestbook")), "{text}");
        }
    }
    // The chart with values files, values and parameters in Argo CD's
    // order of precedence.
    assert_eq!(
        files("ingress"),
        [
            "v1_configmap_ingress-nginx.yaml",
            "v1_namespace_ingress.yaml"
        ]
    );
    let cm = std::fs::read_to_string(rendered.join("ingress/v1_configmap_ingress-nginx.yaml"))
        .expect("cm");
    for want in ["replicas: \"2\"", "tag: \"1.2.3\"", "fromFile: prod"] {
        assert!(cm.contains(want), "{want} in {cm}");
    }
}

#[test]
fn argo_cd_remote_charts_and_unmapped_fields_are_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            (
                "apps/certs.yaml",
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: certs\nspec:\n  source:\n    repoURL: https://charts.jetstack.io\n    chart: cert-manager\n    targetRevision: v1.14.0\n    helm:\n      values: |\n        installCRDs: true\n        note: ${not-terrace}\n  destination:\n    name: other-cluster\n    namespace: cert-manager\n  ignoreDifferences:\n    - {group: apps, kind: Deployment, jsonPointers: [/spec/replicas]}\n",
            ),
            (
                "apps/oci.yaml",
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: oci\nspec:\n  source:\n    repoURL: ghcr.io/example/charts\n    chart: app\n    targetRevision: 1.0.0\n  destination:\n    server: https://kubernetes.default.svc\n    namespace: oci\n",
            ),
            (
                "apps/templated.yaml",
                "{{- range .Values.apps }}\napiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata:\n  name: {{ . }}\n{{- end }}\n",
            ),
            (
                "apps/clusters.yaml",
                "apiVersion: argoproj.io/v1alpha1\nkind: ApplicationSet\nmetadata:\n  name: per-cluster\nspec:\n  generators:\n    - clusters: {}\n  template:\n    metadata: {name: 'x-{{name}}'}\n    spec: {source: {path: apps}}\n",
            ),
        ],
    );
    let o = terrace(
        dir.path(),
        &["import", "argocd", ".", "--dry-run", "--output", "json"],
    );
    assert_eq!(code(&o), 3, "{}{}", stdout(&o), stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let unit = |name: &str| -> serde_json::Value {
        let u = report["units"]
            .as_array()
            .expect("units")
            .iter()
            .find(|u| u["unit"] == name)
            .expect(name);
        terrace_yaml::from_str(u["unitYaml"].as_str().expect("text"), Path::new(name))
            .expect("yaml")
    };
    let certs = unit("certs");
    assert_eq!(certs["helm"]["repo"], "https://charts.jetstack.io");
    assert_eq!(certs["helm"]["chart"], "cert-manager");
    assert_eq!(certs["helm"]["version"], "v1.14.0");
    assert_eq!(certs["helm"]["values"]["installCRDs"], true);
    assert_eq!(
        certs["helm"]["values"]["note"], "$${not-terrace}",
        "kept literal for terrace"
    );
    assert_eq!(
        unit("oci")["helm"]["chart"],
        "oci://ghcr.io/example/charts/app"
    );
    let whats: Vec<String> = report["unmapped"]
        .as_array()
        .expect("list")
        .iter()
        .map(|u| {
            format!(
                "{}: {}",
                u["file"].as_str().unwrap_or_default(),
                u["what"].as_str().unwrap_or_default()
            )
        })
        .collect();
    for want in [
        "apps/certs.yaml: Application certs: destination",
        "apps/certs.yaml: Application certs: ignoreDifferences",
        "apps/templated.yaml: Argo CD objects in a file that is not YAML as it is",
        "apps/clusters.yaml: ApplicationSet per-cluster: the clusters generator",
    ] {
        assert!(whats.iter().any(|w| w == want), "{want} in {whats:#?}");
    }
}

const TG_ROOT: &str = r#"locals {
  env_vars = read_terragrunt_config(find_in_parent_folders("env.hcl"))
  env      = local.env_vars.locals.env
  owner    = "infra-team"
}

generate "versions" {
  path      = "versions.tf"
  if_exists = "overwrite"
  contents  = <<EOF
terraform {
  required_version = ">= 1.5"
}
EOF
}

remote_state {
  backend = "s3"
  config = {
    bucket = "tf-state"
    key    = "${path_relative_to_include()}/tf.tfstate"
  }
}

inputs = {
  env   = local.env
  owner = local.owner
  tags  = { env = local.env }
}
"#;

fn tg_module(name: &str, vars: &[&str], outputs: &str) -> String {
    let mut t = String::new();
    for v in vars {
        t.push_str(&format!("variable \"{v}\" {{}}\n"));
    }
    t.push_str("variable \"tags\" {\n  default = {}\n}\n");
    t.push_str(&format!(
        "resource \"terraform_data\" \"{name}\" {{\n  input = {{ {} }}\n}}\n",
        vars.iter()
            .map(|v| format!("{v} = var.{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    t.push_str(outputs);
    t
}

fn tg_stack(env: &str, stack: &str) -> String {
    let head =
        "include \"root\" {\n  path   = find_in_parent_folders(\"root.hcl\")\n  expose = true\n}\n";
    match stack {
        "vpc" => format!(
            "{head}terraform {{\n  source = \"${{get_repo_root()}}/modules//vpc\"\n}}\ninputs = {{\n  cidr = \"10.{}.0.0/16\"\n  name = \"${{include.root.locals.env}}-vpc\"\n}}\n",
            if env == "dev" { 1 } else { 2 }
        ),
        "db" | "cache" => format!(
            "{head}terraform {{\n  source = \"../../../modules/{stack}\"\n}}\ndependency \"vpc\" {{\n  config_path  = \"../vpc\"\n  mock_outputs = {{ vpc_id = \"mock\", subnets = [\"mock\"] }}\n}}\ninputs = {{\n  vpc_id = dependency.vpc.outputs.vpc_id\n  subnet = dependency.vpc.outputs.subnets[0]\n  name   = \"${{basename(get_terragrunt_dir())}}-${{get_env(\"TERRACE_TG_UNSET_VAR\", \"x\")}}\"\n}}\n"
        ),
        "app" => format!(
            "{head}terraform {{\n  source = \"../../../modules/app\"\n}}\ndependency \"db\" {{\n  config_path = \"../db\"\n}}\ndependency \"cache\" {{\n  config_path = \"../cache\"\n}}\ndependencies {{\n  paths = [\"../dns\"]\n}}\ninputs = {{\n  db_endpoint = \"postgres://${{dependency.db.outputs.endpoint}}/app\"\n  cache_url   = dependency.cache.outputs.endpoint\n}}\n"
        ),
        _ => format!(
            "{head}terraform {{\n  source = \"../../../modules/dns\"\n}}\ninputs = {{\n  zone = \"${{path_relative_to_include()}}\"\n}}\n"
        ),
    }
}

fn terragrunt_repo(dir: &Path) {
    let mut files: Vec<(String, String)> = vec![
        ("live/root.hcl".into(), TG_ROOT.into()),
        (
            "live/dev/env.hcl".into(),
            "locals {\n  env = \"dev\"\n}\n".into(),
        ),
        (
            "live/prod/env.hcl".into(),
            "locals {\n  env = \"prod\"\n}\n".into(),
        ),
        (
            "modules/vpc/main.tf".into(),
            tg_module(
                "vpc",
                &["cidr", "name", "env"],
                "output \"vpc_id\" {\n  value = terraform_data.vpc.id\n}\noutput \"subnets\" {\n  value = [cidrsubnet(var.cidr, 8, 1)]\n}\n",
            ),
        ),
        (
            "modules/db/main.tf".into(),
            tg_module(
                "db",
                &["vpc_id", "subnet", "name", "env"],
                "output \"endpoint\" {\n  value = \"${var.name}.${var.subnet}\"\n}\noutput \"password\" {\n  value     = \"pw-${var.name}\"\n  sensitive = true\n}\n",
            ),
        ),
        (
            "modules/cache/main.tf".into(),
            tg_module(
                "cache",
                &["vpc_id", "subnet", "name"],
                "output \"endpoint\" {\n  value = \"redis://${var.name}\"\n}\n",
            ),
        ),
        (
            "modules/app/main.tf".into(),
            tg_module(
                "app",
                &["db_endpoint", "cache_url", "env"],
                "output \"url\" {\n  value = var.db_endpoint\n}\n",
            ),
        ),
        (
            "modules/dns/main.tf".into(),
            tg_module("dns", &["zone", "owner"], ""),
        ),
    ];
    for env in ["dev", "prod"] {
        for stack in ["vpc", "db", "cache", "app", "dns"] {
            files.push((
                format!("live/{env}/{stack}/terragrunt.hcl"),
                tg_stack(env, stack),
            ));
        }
    }
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_files(dir, &borrowed);
}

/// A Terragrunt tree of ten stacks (a root file with locals from
/// `read_terragrunt_config`, `generate` and `remote_state`; stacks with
/// dependencies, `dependencies`, exposed includes and path functions)
/// imports, validates and applies the module's resources with the inputs
/// Terragrunt would give them.
#[test]
fn a_terragrunt_tree_imports_validates_and_applies() {
    if std::process::Command::new("terraform")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!(
            "skipped a_terragrunt_tree_imports_validates_and_applies: terraform is not on the PATH"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    terragrunt_repo(dir.path());
    write_files(
        dir.path(),
        &[("terrace.yaml", "name: tg\nlayers: [infra]\ntargets: {}\n")],
    );
    let o = terrace(
        dir.path(),
        &["import", "terragrunt", "live", "--output", "json"],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(code(&o), 3, "{report:#}\n{}", stderr(&o));
    let unmapped = report["unmapped"].as_array().expect("list");
    assert_eq!(unmapped.len(), 10, "{report:#}");
    assert!(
        unmapped.iter().all(|u| u["what"] == "remote_state"),
        "{report:#}"
    );
    let mut names: Vec<&str> = report["units"]
        .as_array()
        .expect("units")
        .iter()
        .filter_map(|u| u["unit"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "dev-app",
            "dev-cache",
            "dev-db",
            "dev-dns",
            "dev-vpc",
            "prod-app",
            "prod-cache",
            "prod-db",
            "prod-dns",
            "prod-vpc"
        ]
    );
    let unit = |name: &str| -> serde_json::Value {
        let text =
            std::fs::read_to_string(dir.path().join(format!("terrace/infra/{name}/unit.yaml")))
                .expect("unit.yaml");
        terrace_yaml::from_str(&text, Path::new(name)).expect("yaml")
    };
    let db = unit("dev-db");
    assert_eq!(db["inputs"]["vpc_id"], "${unit.dev-vpc.outputs.vpc_id}");
    assert_eq!(db["inputs"]["subnet"], "${unit.dev-vpc.outputs.subnets[0]}");
    assert_eq!(db["inputs"]["name"], "db-x");
    assert_eq!(
        db["inputs"]["env"], "dev",
        "the root file's inputs merged in"
    );
    assert!(
        db["inputs"].get("owner").is_none(),
        "the module does not declare it"
    );
    assert_eq!(
        unit("prod-vpc")["inputs"]["name"],
        "prod-vpc",
        "an exposed include's locals"
    );
    assert_eq!(
        unit("dev-dns")["inputs"]["zone"],
        "dev/dns",
        "path_relative_to_include"
    );
    assert_eq!(unit("dev-dns")["inputs"]["owner"], "infra-team");
    let app = unit("dev-app");
    assert_eq!(app["dependsOn"], serde_json::json!(["dev-dns"]));
    assert_eq!(
        app["inputs"]["db_endpoint"],
        "postgres://${unit.dev-db.outputs.endpoint}/app"
    );
    let versions = std::fs::read_to_string(dir.path().join("terrace/infra/dev-db/versions.tf"))
        .expect("generated");
    assert!(versions.contains("required_version"), "{versions}");
    let main = std::fs::read_to_string(dir.path().join("terrace/infra/dev-db/main.tf"))
        .expect("root module");
    assert!(
        main.contains("source = \"./../../../modules/db\""),
        "{main}"
    );
    assert!(main.contains("sensitive = true"), "{main}");

    let o = terrace(dir.path(), &["validate"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    // The plan holds each stack's module resources, as Terragrunt's would
    // (under `module.this.`); units waiting for outputs are deferred.
    let (c, plan) = crate::plan_json(dir.path(), &[]);
    assert_eq!(c, 2, "{plan:#}");
    for env in ["dev", "prod"] {
        let vpc = crate::unit(&plan, &format!("{env}-vpc"));
        let addresses: Vec<&str> = vpc["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter_map(|c| c["address"].as_str())
            .filter(|a| !a.starts_with("output."))
            .collect();
        assert_eq!(addresses, ["module.this.terraform_data.vpc"], "{vpc:#}");
        assert_eq!(
            crate::unit(&plan, &format!("{env}-db"))["action"],
            "deferred"
        );
    }
    let o = terrace(dir.path(), &["apply", "-j", "2"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    // The values Terragrunt would have passed reached the resources.
    let o = terrace(dir.path(), &["output", "dev-app", "url"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim().trim_matches('"'),
        "postgres://db-x.10.1.1.0/24/app"
    );
    // Planned again: nothing changes.
    let o = terrace(dir.path(), &["plan", "--output", "json"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn hostile_terragrunt_trees_are_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[
            (
                "live/remote/terragrunt.hcl",
                "terraform {\n  source = \"git::https://example.org/modules.git//vpc?ref=v1\"\n}\n",
            ),
            ("live/broken/terragrunt.hcl", "terraform {\n  source = \n"),
            (
                "live/unknown/terragrunt.hcl",
                "terraform {\n  source = try(local.x, \"../m\")\n}\n",
            ),
            (
                "live/outside/terragrunt.hcl",
                "terraform {\n  source = \"../../../../etc\"\n}\n",
            ),
            (
                "live/reads/terragrunt.hcl",
                "locals {\n  x = file(\"/etc/passwd\")\n}\nterraform {\n  source = \"../../m\"\n}\n",
            ),
            (
                "live/env/terragrunt.hcl",
                "terraform {\n  source = \"../../m\"\n}\ninputs = {\n  a = get_env(\"HOME\")\n}\n",
            ),
            ("m/main.tf", "variable \"a\" {\n  default = 1\n}\n"),
        ],
    );
    let o = terrace(
        dir.path(),
        &[
            "import",
            "terragrunt",
            "live",
            "--dry-run",
            "--output",
            "json",
        ],
    );
    assert_eq!(code(&o), 3, "{}{}", stdout(&o), stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let text = report["unmapped"].to_string();
    for want in [
        "is remote: vendor the module",
        "live/broken/terragrunt.hcl",
        "live/unknown/terragrunt.hcl",
        "is not a directory of the project",
        "locals.x",
        "get_env(\\\"HOME\\\") reads the environment of whoever runs the import",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert!(
        !text.contains("root:x:0:0"),
        "nothing from outside the project is read: {text}"
    );
}

/// A `valuesFrom` ConfigMap whose name is a path is never written: the
/// file named after it would land outside the unit (found in review).
#[test]
fn a_values_from_name_cannot_write_outside_its_unit() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[(
            "k/app.yaml",
            "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata:\n  name: app\n  namespace: default\nspec:\n  chart:\n    spec:\n      chart: ./charts/app\n      sourceRef: {kind: GitRepository, name: flux-system}\n  valuesFrom:\n    - kind: ConfigMap\n      name: /../../../../.github/workflows/pwn\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: /../../../../.github/workflows/pwn\ndata:\n  values.yaml: \"on: push\\n\"\n",
        )],
    );
    let o = terrace(dir.path(), &["import", "flux", "k", "--output", "json"]);
    assert_eq!(code(&o), 3, "{}{}", stdout(&o), stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert!(
        report["unmapped"]
            .to_string()
            .contains("valuesFrom ConfigMap/"),
        "{report:#}"
    );
    assert!(
        !dir.path().join(".github").exists(),
        "nothing written outside"
    );
    assert!(dir.path().join("terrace/apps/app/unit.yaml").is_file());
}

/// `merge_strategy = "no_merge"` merges nothing of the root file, and
/// locals that grow past the budget are listed, not evaluated (review).
#[test]
fn terragrunt_no_merge_and_the_locals_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut doubling = String::from("locals {\n  a0 = \"xxxxxxxxxxxxxxxx\"\n");
    for i in 1..40 {
        doubling.push_str(&format!(
            "  a{i} = \"${{local.a{}}}${{local.a{}}}\"\n",
            i - 1,
            i - 1
        ));
    }
    doubling.push_str("}\nterraform {\n  source = \"../../m\"\n}\ninputs = {\n  b = 2\n}\n");
    write_files(
        dir.path(),
        &[
            ("live/root.hcl", "inputs = {\n  a = 1\n}\n"),
            (
                "live/one/terragrunt.hcl",
                "include \"root\" {\n  path           = find_in_parent_folders(\"root.hcl\")\n  merge_strategy = \"no_merge\"\n}\nterraform {\n  source = \"../../m\"\n}\ninputs = {\n  b = 2\n}\n",
            ),
            ("live/big/terragrunt.hcl", &doubling),
            (
                "m/main.tf",
                "variable \"a\" {\n  default = 0\n}\nvariable \"b\" {}\n",
            ),
        ],
    );
    let o = terrace(
        dir.path(),
        &[
            "import",
            "terragrunt",
            "live",
            "--dry-run",
            "--output",
            "json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let one = report["units"]
        .as_array()
        .expect("units")
        .iter()
        .find(|u| u["unit"] == "one")
        .expect("one");
    let unit: serde_json::Value =
        terrace_yaml::from_str(one["unitYaml"].as_str().expect("text"), Path::new("one"))
            .expect("yaml");
    assert_eq!(unit["inputs"], serde_json::json!({"b": 2}), "{report:#}");
    assert!(
        report["unmapped"]
            .to_string()
            .contains("over the import's budget"),
        "{report:#}"
    );
}
