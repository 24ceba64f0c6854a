//! `terrace import flux`: a Flux tree read as it is into units. Every
//! Flux `Kustomization` becomes a `kind: kustomize` unit and every
//! `HelmRelease` a `kind: helm` unit, each written as its own `unit.yaml`
//! under an output directory (`terrace/<layer>/<name>/`), pointing back at
//! the user's files, which are never changed. What cannot be mapped is
//! returned as [`Unmapped`], with the file and what to do; nothing is
//! dropped silently.
//!
//! The tree is read as files: Flux's objects, and the ConfigMaps and
//! Secrets that `substituteFrom` names. A source outside the repository
//! (a `GitRepository` other than the one holding the tree) cannot be
//! followed and is listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

pub mod argocd;
pub mod terragrunt;

/// The file a unit is declared in.
pub const UNIT_YAML: &str = "unit.yaml";

/// How an import runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The project root (the Git repository Flux reads; Flux paths are
    /// relative to it).
    pub root: PathBuf,
    /// The tree to read, inside `root`.
    pub dir: PathBuf,
    /// Where unit directories go, relative to `root`.
    pub out: String,
    /// `(path prefix, layer)`: an object in a file under the prefix
    /// goes to the layer; the first match wins.
    pub layers: Vec<(String, String)>,
    /// The layer of everything else.
    pub default_layer: String,
    /// The cluster target the units apply to.
    pub target: String,
}

/// One unit the import writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub name: String,
    pub layer: String,
    /// `kustomize` or `helm`.
    pub kind: &'static str,
    /// Its directory, relative to the root.
    pub dir: String,
    /// The Flux object it came from: `file (Kind namespace/name)`.
    pub from: String,
    /// The unit.yaml text.
    pub text: String,
    /// Other files of the unit (a Terraform root module): name, text.
    pub extra: Vec<(String, String)>,
}

/// Something the import could not map, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub file: String,
    /// `Kustomization flux-system/apps`, with the field.
    pub what: String,
    pub todo: String,
}

/// What an import found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    pub units: Vec<UnitFile>,
    pub unmapped: Vec<Unmapped>,
    /// The layers, lowest first.
    pub layers: Vec<String>,
    /// How many YAML files were read.
    pub files: usize,
}

/// Why an import could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The most files an import reads, and the largest.
const MAX_FILES: usize = 20_000;
const MAX_FILE: u64 = 4 << 20;

#[derive(Debug, Clone)]
struct Found {
    file: String,
    namespace: String,
    name: String,
    value: Value,
}

/// The groups of Flux's own objects: a unit leaves them out of what it
/// applies (they became units themselves).
const FLUX_GROUPS: [&str; 5] = [
    "kustomize.toolkit.fluxcd.io",
    "helm.toolkit.fluxcd.io",
    "source.toolkit.fluxcd.io",
    "notification.toolkit.fluxcd.io",
    "image.toolkit.fluxcd.io",
];

pub(crate) fn group_of(v: &Value) -> &str {
    v.get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|a| a.rsplit_once('/'))
        .map_or("", |(g, _)| g)
}

pub(crate) fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Reads the tree under `opts.dir` and maps its Flux objects to units.
pub fn flux(opts: &Options) -> Result<Imported, ImportError> {
    let mut files = Vec::new();
    walk(&opts.root, &opts.dir, &opts.out, &mut files)?;
    let mut out = Imported {
        files: files.len(),
        ..Imported::default()
    };
    let mut kustomizations = Vec::new();
    let mut releases = Vec::new();
    // (kind, namespace, name) of sources, ConfigMaps and Secrets.
    let mut objects: BTreeMap<(String, String, String), Found> = BTreeMap::new();
    // ConfigMaps and Secrets kustomize generates from files: (kind, name)
    // → key → the file (from the root).
    let mut generated: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for file in &files {
        let rel = file
            .strip_prefix(&opts.root)
            .unwrap_or(file)
            .display()
            .to_string();
        let text = terrace_fs::read_to_string(&opts.root, file)
            .map_err(|e| ImportError::Invalid(format!("{rel}: {e}")))?;
        let Ok(docs) = terrace_yaml::documents(&text, Path::new(&rel)) else {
            // Not YAML a Kubernetes object could be in (a Helm template).
            continue;
        };
        if rel.ends_with("kustomization.yaml") || rel.ends_with("kustomization.yml") {
            let dir = Path::new(&rel)
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            for (_, k) in &docs {
                for (field, kind) in [
                    ("configMapGenerator", "ConfigMap"),
                    ("secretGenerator", "Secret"),
                ] {
                    for g in k.get(field).and_then(Value::as_array).into_iter().flatten() {
                        let Some(name) = g.get("name").and_then(Value::as_str) else {
                            continue;
                        };
                        let files = generated
                            .entry((kind.to_owned(), name.to_owned()))
                            .or_default();
                        for f in g
                            .get("files")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                        {
                            let (key, path) = match f.split_once('=') {
                                Some((k, p)) => (k.to_owned(), p),
                                None => (f.rsplit('/').next().unwrap_or(f).to_owned(), f),
                            };
                            files.insert(key, clean(&format!("{dir}/{path}")));
                        }
                    }
                }
            }
        }
        for (_, v) in docs {
            let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
            let found = Found {
                file: rel.clone(),
                namespace: str_at(&v, "/metadata/namespace")
                    .unwrap_or_default()
                    .to_owned(),
                name: str_at(&v, "/metadata/name").unwrap_or_default().to_owned(),
                value: v.clone(),
            };
            let unit_kind = matches!(
                (group_of(&v), kind),
                ("kustomize.toolkit.fluxcd.io", "Kustomization")
                    | ("helm.toolkit.fluxcd.io", "HelmRelease")
            );
            if unit_kind
                && !(dns_name(&found.name)
                    && (found.namespace.is_empty() || dns_name(&found.namespace)))
            {
                out.unmapped.push(Unmapped {
                    file: rel.clone(),
                    what: format!("{kind} {:?}/{:?}", found.namespace, found.name),
                    todo: "not a Kubernetes name (lowercase letters, digits, `-` and `.`): Flux would refuse it too; fix the name".to_owned(),
                });
                continue;
            }
            match (group_of(&v), kind) {
                ("kustomize.toolkit.fluxcd.io", "Kustomization") => kustomizations.push(found),
                ("helm.toolkit.fluxcd.io", "HelmRelease") => releases.push(found),
                ("source.toolkit.fluxcd.io", k) | ("", k @ ("ConfigMap" | "Secret")) => {
                    objects.insert(
                        (k.to_owned(), found.namespace.clone(), found.name.clone()),
                        found,
                    );
                }
                _ => {}
            }
        }
    }
    let layer_of = |file: &str| -> String {
        opts.layers
            .iter()
            .find(|(prefix, _)| file.starts_with(prefix.trim_start_matches("./")))
            .map_or_else(|| opts.default_layer.clone(), |(_, l)| l.clone())
    };
    for (_, l) in &opts.layers {
        if !out.layers.contains(l) {
            out.layers.push(l.clone());
        }
    }
    // Unit names: the object's name, or namespace-name where two share one.
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for f in kustomizations.iter().chain(&releases) {
        *count.entry(f.name.clone()).or_default() += 1;
    }
    let unit_name = |f: &Found| -> String {
        if count.get(&f.name).copied().unwrap_or(0) > 1 && !f.namespace.is_empty() {
            format!("{}-{}", f.namespace, f.name)
        } else {
            f.name.clone()
        }
    };
    let ks_by: BTreeMap<(String, String), String> = kustomizations
        .iter()
        .map(|k| ((k.namespace.clone(), k.name.clone()), unit_name(k)))
        .collect();
    // A release named as a Kustomization of its namespace gets `-release`.
    let ks_names: std::collections::BTreeSet<String> = ks_by.values().cloned().collect();
    let release_name = |h: &Found| -> String {
        let n = unit_name(h);
        if ks_names.contains(&n) {
            format!("{n}-release")
        } else {
            n
        }
    };
    let hr_by: BTreeMap<(String, String), String> = releases
        .iter()
        .map(|h| ((h.namespace.clone(), h.name.clone()), release_name(h)))
        .collect();
    // Each Kustomization's path, for the releases inside it.
    let ks_paths: Vec<(String, &Found)> = kustomizations
        .iter()
        .map(|k| (clean(str_at(&k.value, "/spec/path").unwrap_or(".")), k))
        .collect();
    let up = |layer: &str| to_root(&opts.out, layer);

    for k in &kustomizations {
        let name = unit_name(k);
        let layer = layer_of(&k.file);
        let what = format!("Kustomization {}/{}", k.namespace, k.name);
        let spec = k.value.get("spec").cloned().unwrap_or(Value::Null);
        let mut un = |field: &str, todo: &str| {
            out.unmapped.push(Unmapped {
                file: k.file.clone(),
                what: format!("{what}: {field}"),
                todo: todo.to_owned(),
            });
        };
        let mut settings = Map::new();
        let path = clean(str_at(&spec, "/path").unwrap_or("."));
        if path.split('/').any(|s| s == "..") {
            un(
                "path",
                "leads out of the repository: terrace builds only what is in the project",
            );
        }
        settings.insert("path".into(), json!(format!("{}{path}", up(&layer))));
        if let Some(src) = spec.get("sourceRef") {
            let kind = src
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("GitRepository");
            let name = src
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("flux-system");
            if kind == "GitRepository" && name != "flux-system" {
                un(
                    "sourceRef",
                    &format!(
                        "GitRepository {name} is taken to be this repository (`path` is built from here); if it is another repository, import that one too"
                    ),
                );
            }
            if kind != "GitRepository" {
                un(
                    "sourceRef",
                    &format!(
                        "the source is a {kind}, not this repository: terrace builds `path` from this repository; vendor the source's files, or import that repository"
                    ),
                );
            }
        }
        kustomize_overlay(&spec, "targetNamespace", &mut settings);
        let mut apply = Map::new();
        if let Some(w) = spec.get("wait").and_then(Value::as_bool) {
            apply.insert("wait".into(), json!(w));
        }
        if let Some(t) = spec.get("timeout").and_then(Value::as_str) {
            apply.insert("timeout".into(), json!(t));
        }
        if !apply.is_empty() {
            settings.insert("apply".into(), Value::Object(apply));
        }
        if spec.get("healthChecks").is_some() {
            un(
                "healthChecks",
                "terrace waits for every object of the unit to be healthy (`apply.wait`, the default); nothing to do unless you need a check of an object the unit does not apply",
            );
        }
        if spec.get("prune").and_then(Value::as_bool) == Some(false) {
            un(
                "prune: false",
                "terrace prunes what a unit no longer renders; to keep an object, leave it in the unit or hand it over (`handOver`)",
            );
        }
        if spec.get("suspend").and_then(Value::as_bool) == Some(true) {
            un(
                "suspend: true",
                "imported as a unit all the same; pause it in `terrace serve` (POST /api/v1/units/<unit>/pause) or leave it out of your applies",
            );
        }
        if let Some(p) = str_at(&spec, "/decryption/provider").filter(|p| *p != "sops") {
            un(
                "decryption",
                &format!("provider {p}: terrace decrypts SOPS files only"),
            );
        }
        for field in [
            "images",
            "commonMetadata",
            "kubeConfig",
            "serviceAccountName",
            "force",
            "patchesStrategicMerge",
            "patchesJson6902",
        ] {
            if spec.get(field).is_some() {
                un(
                    field,
                    "not mapped: set it in the kustomization at `path`, or in the unit's settings by hand",
                );
            }
        }
        if let Some(post) = spec.get("postBuild") {
            let mut sub = Map::new();
            sub.insert("strict".into(), json!(true));
            if let Some(vars) = post.get("substitute").and_then(Value::as_object) {
                sub.insert("vars".into(), Value::Object(vars.clone()));
            }
            let mut from = Vec::new();
            for r in post
                .get("substituteFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let kind = r.get("kind").and_then(Value::as_str).unwrap_or("ConfigMap");
                let rname = r.get("name").and_then(Value::as_str).unwrap_or_default();
                let optional = r.get("optional").and_then(Value::as_bool).unwrap_or(false);
                // Flux reads it in the Kustomization's namespace; a file
                // that names none counts.
                let hit = objects
                    .get(&(kind.to_owned(), k.namespace.clone(), rname.to_owned()))
                    .or_else(|| objects.get(&(kind.to_owned(), String::new(), rname.to_owned())));
                match hit {
                    Some(f) => {
                        let mut e = Map::new();
                        e.insert("path".into(), json!(format!("{}{}", up(&layer), f.file)));
                        if optional {
                            e.insert("optional".into(), json!(true));
                        }
                        from.push(Value::Object(e));
                    }
                    None if optional => {}
                    None => un(
                        &format!("postBuild.substituteFrom {kind}/{rname}"),
                        "no such object in the repository (the cluster has it): commit it as a manifest (SOPS-encrypt a Secret), or set its variables in the unit's `substitute.vars`",
                    ),
                }
            }
            if !from.is_empty() {
                sub.insert("from".into(), Value::Array(from));
            }
            settings.insert("substitute".into(), Value::Object(sub));
        }
        settings.insert(
            "exclude".into(),
            Value::Array(FLUX_GROUPS.iter().map(|g| json!({"group": g})).collect()),
        );
        let depends = depends_on(&spec, &k.namespace, &ks_by, &mut |dep| {
            un(
                &format!("dependsOn {dep}"),
                "no Kustomization of that name in the tree: add it, or take the dependency out",
            );
        });
        // Without a kustomization file Flux builds every manifest under
        // the path: a `manifests` unit does the same.
        let has_kustomization = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
            .iter()
            .any(|f| opts.root.join(&path).join(f).is_file());
        let kind = if has_kustomization {
            "kustomize"
        } else {
            "manifests"
        };
        if !has_kustomization {
            for field in [
                "targetNamespace",
                "namePrefix",
                "nameSuffix",
                "patches",
                "components",
            ] {
                if settings.remove(field).is_some() {
                    un(
                        field,
                        &format!(
                            "`{path}` has no kustomization.yaml (Flux generates one): add one listing the manifests, and set `{field}` in the unit's `kustomize` settings"
                        ),
                    );
                }
            }
        }
        out.units.push(unit_file(
            &name,
            &layer,
            kind,
            &opts.out,
            &opts.target,
            &format!("{} ({what})", k.file),
            depends,
            settings,
        ));
    }

    for h in &releases {
        let name = release_name(h);
        let layer = layer_of(&h.file);
        let what = format!("HelmRelease {}/{}", h.namespace, h.name);
        let spec = h.value.get("spec").cloned().unwrap_or(Value::Null);
        // The Kustomization that applies this file: its namespace and
        // variables reach the release.
        let owner = ks_paths
            .iter()
            .filter(|(p, _)| h.file.starts_with(&format!("{p}/")) || p == ".")
            .max_by_key(|(p, _)| p.len())
            .map(|(_, k)| *k);
        let mut un_list: Vec<Unmapped> = Vec::new();
        let mut un = |field: &str, todo: &str| {
            un_list.push(Unmapped {
                file: h.file.clone(),
                what: format!("{what}: {field}"),
                todo: todo.to_owned(),
            });
        };
        let mut settings = Map::new();
        // Flux: the release's own targetNamespace, else the one of the
        // Kustomization that applies it (which overrides the file's), else
        // the file's.
        let namespace = str_at(&spec, "/targetNamespace")
            .map(str::to_owned)
            .or_else(|| {
                owner
                    .and_then(|k| str_at(&k.value, "/spec/targetNamespace"))
                    .map(str::to_owned)
            })
            .or_else(|| Some(h.namespace.clone()).filter(|n| !n.is_empty()))
            .unwrap_or_else(|| "default".to_owned());
        settings.insert("namespace".into(), json!(namespace));
        let release = str_at(&spec, "/releaseName")
            .map(str::to_owned)
            .unwrap_or_else(|| match str_at(&spec, "/targetNamespace") {
                Some(t) => format!("{t}-{}", h.name),
                None => h.name.clone(),
            });
        settings.insert("releaseName".into(), json!(release));
        chart_source(
            &spec,
            &h.namespace,
            &objects,
            &opts.out,
            &layer,
            &mut settings,
            &mut un,
        );
        // Flux's variables of the owning Kustomization, where they are
        // known from files.
        let vars = owner.map(|k| owner_vars(k, &objects)).unwrap_or_default();
        if let Some(values) = spec.get("values") {
            let mut values = values.clone();
            resolve_vars(&mut values, &vars, &mut un);
            settings.insert("values".into(), values);
        }
        let mut values_files: Vec<Value> = Vec::new();
        let mut extra: Vec<(String, String)> = Vec::new();
        for v in spec
            .get("valuesFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let kind = v.get("kind").and_then(Value::as_str).unwrap_or("ConfigMap");
            let n = v.get("name").and_then(Value::as_str).unwrap_or_default();
            let key = v
                .get("valuesKey")
                .and_then(Value::as_str)
                .unwrap_or("values.yaml");
            let optional = v.get("optional").and_then(Value::as_bool) == Some(true);
            if v.get("targetPath").is_some() {
                un(
                    &format!("valuesFrom {kind}/{n}: targetPath"),
                    "set that value in `helm.values` (with a `${secret...}` reference when it is secret)",
                );
                continue;
            }
            let up = up(&layer);
            // A generator's file (a SOPS one is decrypted in memory), or
            // the data of a ConfigMap manifest, written beside the unit.
            if let Some(file) = generated
                .get(&(kind.to_owned(), n.to_owned()))
                .and_then(|f| f.get(key))
            {
                values_files.push(json!(format!("{up}{file}")));
                continue;
            }
            let manifest = objects
                .get(&(kind.to_owned(), h.namespace.clone(), n.to_owned()))
                .or_else(|| {
                    objects
                        .iter()
                        .find(|((k, _, m), _)| k == kind && m == n)
                        .map(|(_, f)| f)
                });
            match (
                kind,
                manifest
                    .and_then(|f| {
                        f.value.pointer(&format!(
                            "/data/{}",
                            key.replace('~', "~0").replace('/', "~1")
                        ))
                    })
                    .and_then(Value::as_str),
            ) {
                // The file is named after the object: only a Kubernetes
                // name becomes one.
                ("ConfigMap", Some(text)) if dns_name(n) => {
                    let file = format!("values-{n}.yaml");
                    extra.push((file.clone(), text.to_owned()));
                    values_files.push(json!(file));
                }
                _ if optional => {}
                _ => un(
                    &format!("valuesFrom {kind}/{n}"),
                    "put the values in a file beside the unit and list it in `helm.valuesFiles` (SOPS-encrypt it when it holds secrets)",
                ),
            }
        }
        if !values_files.is_empty() {
            // After the chart's own values files, as Flux merges them.
            let mut all = settings
                .get("valuesFiles")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            all.extend(values_files);
            settings.insert("valuesFiles".into(), Value::Array(all));
        }
        for (field, path) in [
            ("install.crds", "/install/crds"),
            ("upgrade.crds", "/upgrade/crds"),
        ] {
            if let Some(policy) = str_at(&spec, path)
                && policy == "Skip"
            {
                settings.insert("includeCRDs".into(), json!(false));
                let _ = field;
            }
        }
        let mut post = Vec::new();
        for r in spec
            .get("postRenderers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(k) = r.get("kustomize") else {
                continue;
            };
            for p in k
                .get("patches")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                post.push(p.clone());
            }
            for field in ["patchesStrategicMerge", "patchesJson6902", "images"] {
                if k.get(field).is_some() {
                    un(
                        &format!("postRenderers.kustomize.{field}"),
                        "write it as a `patches` entry of `helm.postRender`",
                    );
                }
            }
        }
        if !post.is_empty() {
            settings.insert("postRender".into(), Value::Array(post));
        }
        for field in [
            "kubeConfig",
            "serviceAccountName",
            "storageNamespace",
            "test",
            "rollback",
            "uninstall",
            "driftDetection",
        ] {
            if spec.get(field).is_some() {
                un(
                    field,
                    "not mapped: terrace applies the rendered objects itself (no Helm release); remove it or set the matching unit setting by hand",
                );
            }
        }
        if spec.get("suspend").and_then(Value::as_bool) == Some(true) {
            un(
                "suspend: true",
                "imported as a unit all the same; pause it in `terrace serve` or leave it out of your applies",
            );
        }
        let mut depends = depends_on(&spec, &h.namespace, &hr_by, &mut |dep| {
            un(
                &format!("dependsOn {dep}"),
                "no HelmRelease of that name in the tree: add it, or take the dependency out",
            );
        });
        // Applied by its Kustomization in Flux: after it, and after what
        // that one depends on.
        if let Some(k) = owner
            && let Some(u) = ks_by.get(&(k.namespace.clone(), k.name.clone()))
        {
            depends.push(u.clone());
        }
        out.unmapped.extend(un_list);
        let mut unit = unit_file(
            &name,
            &layer,
            "helm",
            &opts.out,
            &opts.target,
            &format!("{} ({what})", h.file),
            depends,
            settings,
        );
        unit.extra = extra;
        out.units.push(unit);
    }
    if out.units.iter().any(|u| u.layer == opts.default_layer)
        && !out.layers.contains(&opts.default_layer)
    {
        out.layers.push(opts.default_layer.clone());
    }
    out.units.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(out)
}

/// `spec.dependsOn` as unit names (namespace defaults to the object's).
fn depends_on(
    spec: &Value,
    namespace: &str,
    by: &BTreeMap<(String, String), String>,
    missing: &mut dyn FnMut(&str),
) -> Vec<String> {
    let mut out = Vec::new();
    for d in spec
        .get("dependsOn")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let n = d.get("name").and_then(Value::as_str).unwrap_or_default();
        let ns = d
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace);
        match by.get(&(ns.to_owned(), n.to_owned())) {
            Some(u) => out.push(u.clone()),
            None => missing(&format!("{ns}/{n}")),
        }
    }
    out
}

/// The chart of a HelmRelease: `chart.spec` with a HelmRepository (HTTP
/// or OCI) or a GitRepository path, or a `chartRef` to an OCIRepository.
fn chart_source(
    spec: &Value,
    namespace: &str,
    objects: &BTreeMap<(String, String, String), Found>,
    out_dir: &str,
    layer: &str,
    settings: &mut Map<String, Value>,
    un: &mut dyn FnMut(&str, &str),
) {
    let source = |kind: &str, name: &str, ns: Option<&str>| {
        let ns = ns.unwrap_or(namespace);
        objects
            .get(&(kind.to_owned(), ns.to_owned(), name.to_owned()))
            .or_else(|| {
                objects
                    .iter()
                    .find(|((k, _, n), _)| k == kind && n == name)
                    .map(|(_, f)| f)
            })
    };
    if let Some(r) = spec.get("chartRef") {
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
        match (
            kind,
            source(kind, name, r.get("namespace").and_then(Value::as_str)),
        ) {
            ("OCIRepository", Some(f)) => {
                let url = str_at(&f.value, "/spec/url").unwrap_or_default();
                settings.insert("chart".into(), json!(url));
                if let Some(v) = str_at(&f.value, "/spec/ref/tag")
                    .or_else(|| str_at(&f.value, "/spec/ref/semver"))
                {
                    settings.insert("version".into(), json!(v));
                }
                if str_at(&f.value, "/spec/ref/digest").is_some() {
                    un(
                        "chartRef (OCIRepository ref.digest)",
                        "terrace pins the digest itself in terrace.lock: set `helm.version` to the tag that digest is",
                    );
                }
                if f.value.pointer("/spec/insecure").and_then(Value::as_bool) == Some(true) {
                    settings.insert("plainHttp".into(), json!(true));
                }
            }
            _ => un(
                &format!("chartRef {kind}/{name}"),
                "the chart's source is not in the repository: set `helm.chart` (and `repo`, `version`) by hand",
            ),
        }
        return;
    }
    let Some(c) = spec.pointer("/chart/spec") else {
        un(
            "chart",
            "the release names no chart: set `helm.chart` by hand",
        );
        return;
    };
    let chart = c.get("chart").and_then(Value::as_str).unwrap_or_default();
    let version = c.get("version").and_then(Value::as_str);
    let kind = str_at(c, "/sourceRef/kind").unwrap_or("HelmRepository");
    let name = str_at(c, "/sourceRef/name").unwrap_or_default();
    match (kind, source(kind, name, str_at(c, "/sourceRef/namespace"))) {
        ("HelmRepository", Some(f)) => {
            let url = str_at(&f.value, "/spec/url").unwrap_or_default();
            if str_at(&f.value, "/spec/type") == Some("oci") || url.starts_with("oci://") {
                settings.insert(
                    "chart".into(),
                    json!(format!("{}/{chart}", url.trim_end_matches('/'))),
                );
            } else {
                settings.insert("repo".into(), json!(url));
                settings.insert("chart".into(), json!(chart));
            }
            if let Some(v) = version {
                settings.insert("version".into(), json!(v));
            }
            if f.value.pointer("/spec/insecure").and_then(Value::as_bool) == Some(true) {
                settings.insert("plainHttp".into(), json!(true));
            }
            if f.value.pointer("/spec/secretRef").is_some() {
                un(
                    "chart source credentials (HelmRepository secretRef)",
                    "log in with `helm registry login` / `helm repo add` credentials where terrace runs Helm",
                );
            }
        }
        ("GitRepository", Some(_)) | ("GitRepository", None) if !chart.contains("://") => {
            // A chart in this repository: Flux paths are from its root.
            let up = to_root(out_dir, layer);
            settings.insert("chart".into(), json!(format!("{up}{}", clean(chart))));
            // The chart's values files, from the repository's root.
            let files: Vec<&str> = c
                .get("valuesFiles")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !files.is_empty() {
                settings.insert(
                    "valuesFiles".into(),
                    json!(
                        files
                            .iter()
                            .map(|f| format!("{up}{}", clean(f)))
                            .collect::<Vec<_>>()
                    ),
                );
                if !files.iter().any(|f| f.ends_with("/values.yaml")) {
                    un(
                        "chart.spec.valuesFiles",
                        "Flux used these files instead of the chart's values.yaml; terrace merges them over it: move what values.yaml sets and they do not into them, or leave it",
                    );
                }
            }
            // `flux-system` is the repository Flux was bootstrapped from.
            if source(kind, name, None).is_none() && name != "flux-system" {
                un(
                    &format!("chart.spec.sourceRef GitRepository/{name}"),
                    "taken to be this repository; if it is another one, vendor the chart here",
                );
            }
        }
        _ => un(
            &format!("chart.spec.sourceRef {kind}/{name}"),
            "the chart's source is not in the repository: set `helm.chart` (and `repo`, `version`) by hand",
        ),
    }
}

/// The variables of a Kustomization known from files: `substitute`, and
/// the ConfigMaps of `substituteFrom` (a Secret's names, to be read from
/// its SOPS file).
fn owner_vars(
    k: &Found,
    objects: &BTreeMap<(String, String, String), Found>,
) -> BTreeMap<String, VarValue> {
    let mut vars = BTreeMap::new();
    let post = k.value.pointer("/spec/postBuild");
    for r in post
        .and_then(|p| p.get("substituteFrom"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or("ConfigMap");
        let n = r.get("name").and_then(Value::as_str).unwrap_or_default();
        let Some(f) = objects
            .get(&(kind.to_owned(), k.namespace.clone(), n.to_owned()))
            .or_else(|| objects.get(&(kind.to_owned(), String::new(), n.to_owned())))
        else {
            continue;
        };
        for key in ["data", "stringData"] {
            for (name, v) in f
                .value
                .get(key)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let value = match (kind, key) {
                    ("ConfigMap", _) => {
                        VarValue::Plain(v.as_str().unwrap_or_default().replace('\n', ""))
                    }
                    ("Secret", "stringData") => {
                        VarValue::Secret(format!("${{secret.{}#stringData.{name}}}", f.file))
                    }
                    _ => VarValue::Unknown(format!("Secret {n} (base64 `data`)")),
                };
                vars.insert(name.clone(), value);
            }
        }
    }
    for (name, v) in post
        .and_then(|p| p.get("substitute"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        vars.insert(
            name.clone(),
            VarValue::Plain(v.as_str().map_or_else(|| v.to_string(), str::to_owned)),
        );
    }
    vars
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum VarValue {
    Plain(String),
    /// A terrace secret reference.
    Secret(String),
    Unknown(String),
}

/// Flux's `${VAR}` in a release's values, as terrace writes it: plain
/// values in place, secrets as `${secret...}`, and `$` escaped where the
/// text is meant literally; what is not known is listed.
fn resolve_vars(v: &mut Value, vars: &BTreeMap<String, VarValue>, un: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::String(s) if s.contains('$') => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(at) = rest.find('$') {
                out.push_str(&rest[..at]);
                let tail = &rest[at..];
                if let Some(esc) = tail.strip_prefix("$$") {
                    // Flux's escape: a literal `$`, written for terrace.
                    out.push_str("$$");
                    rest = esc;
                    continue;
                }
                let simple = tail
                    .strip_prefix("${")
                    .and_then(|t| t.split_once('}'))
                    .filter(|(n, _)| {
                        !n.is_empty() && n.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
                    });
                match simple {
                    Some((name, after)) => {
                        match vars.get(name) {
                            Some(VarValue::Plain(p)) => out.push_str(&p.replace("${", "$${")),
                            Some(VarValue::Secret(r)) => out.push_str(r),
                            Some(VarValue::Unknown(from)) => {
                                un(
                                    &format!("values: ${{{name}}}"),
                                    &format!(
                                        "comes from {from}: move the value to stringData in a SOPS file, or set it in `helm.values`"
                                    ),
                                );
                                out.push_str(&format!("$${{{name}}}"));
                            }
                            None => {
                                un(
                                    &format!("values: ${{{name}}}"),
                                    "no variable of that name is known from the repository: set it in `helm.values`",
                                );
                                out.push_str(&format!("$${{{name}}}"));
                            }
                        }
                        rest = after;
                    }
                    None if tail.starts_with("${") => {
                        un(
                            "values",
                            &format!(
                                "`{s}` uses a substitution the import does not rewrite: write its result in `helm.values`"
                            ),
                        );
                        out.push_str("$$");
                        rest = &tail[1..];
                    }
                    None => {
                        out.push('$');
                        rest = &tail[1..];
                    }
                }
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Array(items) => items.iter_mut().for_each(|i| resolve_vars(i, vars, un)),
        Value::Object(map) => map.values_mut().for_each(|i| resolve_vars(i, vars, un)),
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn unit_file(
    name: &str,
    layer: &str,
    kind: &'static str,
    out: &str,
    target: &str,
    from: &str,
    depends: Vec<String>,
    settings: Map<String, Value>,
) -> UnitFile {
    let mut unit = Map::new();
    unit.insert("layer".into(), json!(layer));
    unit.insert("kind".into(), json!(kind));
    unit.insert("target".into(), json!(target));
    if !depends.is_empty() {
        let mut d = depends;
        d.sort();
        d.dedup();
        unit.insert("dependsOn".into(), json!(d));
    }
    unit.insert(kind.into(), Value::Object(settings));
    let text = format!(
        "# Imported from {from} by `terrace import`;\n# that file is left as it is.\n{}",
        terrace_yaml::to_string(&Value::Object(unit))
    );
    UnitFile {
        name: name.to_owned(),
        layer: layer.to_owned(),
        kind,
        dir: format!("{}/{layer}/{name}", out.trim_end_matches('/')),
        from: from.to_owned(),
        text,
        extra: Vec::new(),
    }
}

/// A Kubernetes object name (RFC 1123 subdomain): it becomes a directory
/// name, so nothing else is taken.
pub(crate) fn dns_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// From a unit's directory (`OUT/<layer>/<name>`) back to the root:
/// `../../../`.
pub(crate) fn to_root(out: &str, layer: &str) -> String {
    "../".repeat(out.split('/').filter(|s| !s.is_empty()).count() + layer.split('/').count() + 1)
}

/// The fields a Flux Kustomization and an Argo CD kustomize source both
/// set over a kustomization: `namePrefix`, `nameSuffix`, `patches`,
/// `components`, and the namespace (`targetNamespace` in Flux,
/// `namespace` in Argo CD), as a `kustomize` unit's settings.
pub(crate) fn kustomize_overlay(
    src: &Value,
    namespace_key: &str,
    settings: &mut Map<String, Value>,
) {
    for (from, to) in [
        (namespace_key, "targetNamespace"),
        ("namePrefix", "namePrefix"),
        ("nameSuffix", "nameSuffix"),
    ] {
        if let Some(v) = src.get(from).filter(|v| v.is_string()) {
            settings.insert(to.into(), v.clone());
        }
    }
    for key in ["patches", "components"] {
        if let Some(list) = src
            .get(key)
            .and_then(Value::as_array)
            .filter(|l| !l.is_empty())
        {
            settings.insert(key.into(), json!(list));
        }
    }
}

/// A Flux path (`./kubernetes/apps`) as a clean relative path.
pub(crate) fn clean(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

pub(crate) fn walk(
    root: &Path,
    dir: &Path,
    out_dir: &str,
    files: &mut Vec<PathBuf>,
) -> Result<(), ImportError> {
    for entry in terrace_fs::read_dir(dir)
        .map_err(|e| ImportError::Invalid(format!("{}: {e}", dir.display())))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let ft = entry.file_type()?;
        if name.starts_with('.') || ft.is_symlink() {
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if ft.is_dir() {
            if rel == out_dir.trim_end_matches('/') {
                continue;
            }
            walk(root, &path, out_dir, files)?;
        } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
            && entry.metadata()?.len() <= MAX_FILE
        {
            if files.len() >= MAX_FILES {
                return Err(ImportError::Invalid(format!(
                    "more than {MAX_FILES} YAML files under {}: import a smaller part of the tree",
                    dir.display()
                )));
            }
            files.push(path);
        }
    }
    files.sort();
    Ok(())
}
