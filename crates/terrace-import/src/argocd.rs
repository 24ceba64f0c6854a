//! `terrace import argocd`: Argo CD `Application`s, and the
//! `ApplicationSet`s whose list and git-directory generators can be
//! expanded from the repository, as units. An Application whose path
//! holds a chart is a `helm` unit, a kustomization a `kustomize` unit,
//! anything else a `manifests` unit (Argo CD's own choice of tool); a
//! chart from a Helm repository or OCI registry is a remote `helm` unit.
//!
//! App-of-apps trees become layers: an Application applied by another
//! one (its manifest lies in the other's path) goes to the layer named
//! after it, the roots to `argocd`; within a layer, the
//! `argocd.argoproj.io/sync-wave` annotation orders the units (each
//! depends on those of the wave before).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::{
    ImportError, Imported, Options, Unmapped, clean, dns_name, str_at, to_root, unit_file, walk,
};

const WAVE: &str = "argocd.argoproj.io/sync-wave";

#[derive(Debug, Clone)]
struct App {
    /// The file it is in (an ApplicationSet's for generated ones).
    file: String,
    name: String,
    value: Value,
    /// `ApplicationSet x` for generated ones.
    via: Option<String>,
}

/// Reads the tree under `opts.dir` and maps its Argo CD objects to units.
pub fn argocd(opts: &Options) -> Result<Imported, ImportError> {
    let mut files = Vec::new();
    walk(&opts.root, &opts.dir, &opts.out, &mut files)?;
    let mut out = Imported {
        files: files.len(),
        ..Imported::default()
    };
    let mut apps: Vec<App> = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&opts.root)
            .unwrap_or(file)
            .display()
            .to_string();
        let text = terrace_fs::read_to_string(&opts.root, file)
            .map_err(|e| ImportError::Invalid(format!("{rel}: {e}")))?;
        let docs = match terrace_yaml::documents(&text, Path::new(&rel)) {
            Ok(d) => d,
            Err(_) => {
                if text.contains("argoproj.io") {
                    out.unmapped.push(Unmapped {
                        file: rel.clone(),
                        what: "Argo CD objects in a file that is not YAML as it is".to_owned(),
                        todo: "it is a template (an app-of-apps Helm chart?): render it (`helm template`) into plain files and import those".to_owned(),
                    });
                }
                continue;
            }
        };
        for (_, v) in docs {
            if crate::group_of(&v) != "argoproj.io" {
                continue;
            }
            let name = str_at(&v, "/metadata/name").unwrap_or_default().to_owned();
            match v.get("kind").and_then(Value::as_str) {
                Some("Application") => apps.push(App {
                    file: rel.clone(),
                    name,
                    value: v,
                    via: None,
                }),
                Some("ApplicationSet") => {
                    expand(opts, &rel, &name, &v, &mut apps, &mut out.unmapped)
                }
                _ => {}
            }
        }
    }
    apps.retain(|a| {
        let ok = dns_name(&a.name);
        if !ok {
            out.unmapped.push(Unmapped {
                file: a.file.clone(),
                what: format!("Application {:?}", a.name),
                todo:
                    "not a Kubernetes name (lowercase letters, digits, `-` and `.`): fix the name"
                        .to_owned(),
            });
        }
        ok
    });
    // The Application that applies each one (its manifest is in that
    // one's path), and the layers from the roots down.
    let paths: Vec<(String, usize)> = apps
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            sources(&a.value)
                .first()
                .and_then(|s| s.get("path"))
                .and_then(Value::as_str)
                .map(|p| (clean(p), i))
        })
        .collect();
    let parent: Vec<Option<usize>> = apps
        .iter()
        .enumerate()
        .map(|(i, a)| {
            // A generated one: applied by whatever applies its
            // ApplicationSet's file.
            paths
                .iter()
                .filter(|(p, j)| *j != i && (a.file.starts_with(&format!("{p}/")) || p == "."))
                .max_by_key(|(p, _)| p.len())
                .map(|(_, j)| *j)
        })
        .collect();
    let layer_of = |i: usize| -> String {
        if let Some((_, l)) = opts
            .layers
            .iter()
            .find(|(prefix, _)| apps[i].file.starts_with(prefix.trim_start_matches("./")))
        {
            return l.clone();
        }
        match parent[i] {
            Some(p) => apps[p].name.clone(),
            None => "argocd".to_owned(),
        }
    };
    let depth = |mut i: usize| {
        let mut d = 0;
        while let Some(p) = parent[i] {
            d += 1;
            i = p;
            if d > apps.len() {
                break;
            }
        }
        d
    };
    // From the root down to `i`: (wave, name) of each Application.
    let chain = |mut i: usize| {
        let mut c = vec![(wave(&apps[i].value), apps[i].name.clone())];
        while let Some(p) = parent[i] {
            c.push((wave(&apps[p].value), apps[p].name.clone()));
            i = p;
            if c.len() > apps.len() {
                break;
            }
        }
        c.reverse();
        c
    };
    // Level by level; within one, grouped by parent in their own order.
    let mut order: Vec<usize> = (0..apps.len()).collect();
    order.sort_by_key(|&i| (depth(i), chain(i)));
    for (_, l) in &opts.layers {
        if !out.layers.contains(l) {
            out.layers.push(l.clone());
        }
    }
    for &i in &order {
        let l = layer_of(i);
        if !out.layers.contains(&l) {
            out.layers.push(l);
        }
    }
    // Sync waves within a layer: each unit after the wave before it.
    let mut waves: BTreeMap<String, BTreeMap<i64, Vec<String>>> = BTreeMap::new();
    for (i, a) in apps.iter().enumerate() {
        waves
            .entry(layer_of(i))
            .or_default()
            .entry(wave(&a.value))
            .or_default()
            .push(a.name.clone());
    }
    let mut seen = BTreeSet::new();
    for &i in &order {
        let a = &apps[i];
        if !seen.insert(a.name.clone()) {
            out.unmapped.push(Unmapped {
                file: a.file.clone(),
                what: format!("Application {}", a.name),
                todo: "a second Application of that name: rename one (unit names are unique)"
                    .to_owned(),
            });
            continue;
        }
        let layer = layer_of(i);
        let w = wave(&a.value);
        let depends: Vec<String> = waves[&layer]
            .range(..w)
            .next_back()
            .map(|(_, names)| names.clone())
            .unwrap_or_default();
        let from = match &a.via {
            Some(set) => format!("{} ({set} → Application {})", a.file, a.name),
            None => format!("{} (Application {})", a.file, a.name),
        };
        let mut un = Vec::new();
        let mapped = map_app(opts, a, &layer, &mut |field: &str, todo: &str| {
            un.push(Unmapped {
                file: a.file.clone(),
                what: format!("Application {}: {field}", a.name),
                todo: todo.to_owned(),
            });
        });
        out.unmapped.extend(un);
        if let Some((kind, settings)) = mapped {
            out.units.push(unit_file(
                &a.name,
                &layer,
                kind,
                &opts.out,
                &opts.target,
                &from,
                depends,
                settings,
            ));
        }
    }
    out.units.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(out)
}

fn wave(app: &Value) -> i64 {
    str_at(
        app,
        &format!("/metadata/annotations/{}", WAVE.replace('/', "~1")),
    )
    .and_then(|w| w.trim().parse().ok())
    .unwrap_or(0)
}

/// `spec.sources` when it has any (Argo CD then ignores `spec.source`),
/// else `spec.source`.
fn sources(app: &Value) -> Vec<Value> {
    match app.pointer("/spec/sources").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.clone(),
        _ => app.pointer("/spec/source").cloned().into_iter().collect(),
    }
}

/// The unit of one Application: its kind and settings.
fn map_app(
    opts: &Options,
    a: &App,
    layer: &str,
    un: &mut dyn FnMut(&str, &str),
) -> Option<(&'static str, Map<String, Value>)> {
    let spec = a.value.get("spec").cloned().unwrap_or(Value::Null);
    let all = sources(&a.value);
    // Sources that make objects; `ref` sources only lend values files.
    let refs: BTreeMap<String, &Value> = all
        .iter()
        .filter_map(|s| {
            s.get("ref")
                .and_then(Value::as_str)
                .map(|r| (r.to_owned(), s))
        })
        .collect();
    let making: Vec<&Value> = all
        .iter()
        .filter(|s| s.get("path").is_some() || s.get("chart").is_some())
        .collect();
    let source = match making.as_slice() {
        [] => {
            un(
                "source",
                "no source with a path or chart: nothing to import",
            );
            return None;
        }
        [one] => *one,
        [first, ..] => {
            un(
                "sources",
                "several sources make objects: only the first is imported; make one unit per source",
            );
            *first
        }
    };
    let up = to_root(&opts.out, layer);
    let dest_ns = str_at(&spec, "/destination/namespace").map(str::to_owned);
    let server = str_at(&spec, "/destination/server");
    let dest_name = str_at(&spec, "/destination/name");
    if !(server.is_none_or(|s| s == "https://kubernetes.default.svc")
        && dest_name.is_none_or(|n| n == "in-cluster"))
    {
        un(
            "destination",
            &format!(
                "another cluster ({}): add a cluster target for it in terrace.yaml and set the unit's `target`",
                dest_name.or(server).unwrap_or_default()
            ),
        );
    }
    let options: Vec<&str> = spec
        .pointer("/syncPolicy/syncOptions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let create_ns = options.contains(&"CreateNamespace=true");
    if spec.get("ignoreDifferences").is_some() {
        un(
            "ignoreDifferences",
            "terrace leaves fields other managers own to them (`apply.conflicts: yield`, the default); fields it sets itself it keeps as written",
        );
    }
    let mut settings = Map::new();
    let chart = source.get("chart").and_then(Value::as_str);
    let path = source.get("path").and_then(Value::as_str).map(clean);
    if let Some(p) = &path
        && p.split('/').any(|s| s == "..")
    {
        un(
            "source.path",
            "leads out of the repository: terrace builds only what is in the project",
        );
        return None;
    }
    let dir_has = |names: &[&str]| {
        path.as_ref()
            .is_some_and(|p| names.iter().any(|n| opts.root.join(p).join(n).is_file()))
    };
    let tool = if chart.is_some()
        || source.get("helm").is_some()
        || dir_has(&["Chart.yaml"])
            && !dir_has(&["kustomization.yaml", "kustomization.yml", "Kustomization"])
    {
        "helm"
    } else if source.get("kustomize").is_some()
        || dir_has(&["kustomization.yaml", "kustomization.yml", "Kustomization"])
    {
        "kustomize"
    } else {
        "manifests"
    };
    match tool {
        "helm" => {
            let helm = source.get("helm").cloned().unwrap_or(Value::Null);
            match (chart, &path) {
                (Some(c), _) => {
                    let repo = source
                        .get("repoURL")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if repo.starts_with("oci://") || !repo.contains("://") {
                        let base = repo.trim_start_matches("oci://").trim_end_matches('/');
                        settings.insert("chart".into(), json!(format!("oci://{base}/{c}")));
                    } else {
                        settings.insert("repo".into(), json!(repo));
                        settings.insert("chart".into(), json!(c));
                    }
                    if let Some(v) = source.get("targetRevision").and_then(Value::as_str) {
                        settings.insert("version".into(), json!(v));
                    }
                }
                (None, Some(p)) => {
                    settings.insert("chart".into(), json!(format!("{up}{p}")));
                }
                (None, None) => return None,
            }
            let ns = str_at(&helm, "/namespace")
                .map(str::to_owned)
                .or_else(|| dest_ns.clone())
                .unwrap_or_else(|| "default".to_owned());
            settings.insert("namespace".into(), json!(ns));
            settings.insert(
                "releaseName".into(),
                json!(str_at(&helm, "/releaseName").unwrap_or(&a.name)),
            );
            if create_ns {
                settings.insert("createNamespace".into(), json!(true));
            }
            if helm.get("skipCrds").and_then(Value::as_bool) == Some(true) {
                settings.insert("includeCRDs".into(), json!(false));
            }
            let mut files = Vec::new();
            for f in helm
                .get("valueFiles")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let at_root = if let Some(rest) = f.strip_prefix('$') {
                    let (r, file) = rest.split_once('/').unwrap_or((rest, ""));
                    if !refs.contains_key(r) {
                        un(
                            &format!("valueFiles {f}"),
                            "no `ref` source of that name: put the file in the repository and list it in `helm.valuesFiles`",
                        );
                        continue;
                    }
                    clean(file)
                } else if let Some(abs) = f.strip_prefix('/') {
                    clean(abs)
                } else {
                    match &path {
                        Some(p) => clean(&format!("{p}/{f}")),
                        None => {
                            un(
                                &format!("valueFiles {f}"),
                                "a values file of a remote chart: copy it into the repository and list it in `helm.valuesFiles`",
                            );
                            continue;
                        }
                    }
                };
                files.push(json!(format!("{up}{at_root}")));
            }
            if !files.is_empty() {
                settings.insert("valuesFiles".into(), Value::Array(files));
            }
            let mut values = match (
                helm.get("valuesObject"),
                helm.get("values").and_then(Value::as_str),
            ) {
                (Some(Value::Object(o)), _) => Value::Object(o.clone()),
                (_, Some(text)) => {
                    match terrace_yaml::from_str::<Value>(text, Path::new(&a.file)) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => {
                            un(
                                "helm.values",
                                "not a YAML mapping: write the values in `helm.values`",
                            );
                            Value::Object(Map::new())
                        }
                    }
                }
                _ => Value::Object(Map::new()),
            };
            for p in helm
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (Some(name), Some(value)) = (
                    p.get("name").and_then(Value::as_str),
                    p.get("value").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let typed = if p.get("forceString").and_then(Value::as_bool) == Some(true) {
                    json!(value)
                } else {
                    terrace_yaml::from_str::<Value>(value, Path::new("parameter"))
                        .unwrap_or_else(|_| json!(value))
                };
                if name.contains('[') || name.contains('\\') {
                    un(
                        &format!("helm.parameters {name}"),
                        "a list index or escaped dot: write it in `helm.values`",
                    );
                    continue;
                }
                set_path(&mut values, name, typed);
            }
            escape_expressions(&mut values);
            if values.as_object().is_some_and(|m| !m.is_empty()) {
                settings.insert("values".into(), values);
            }
            for field in ["fileParameters", "kubeVersion", "apiVersions"] {
                if helm.get(field).is_some() {
                    un(
                        &format!("helm.{field}"),
                        "not mapped: set the matching `helm` setting by hand",
                    );
                }
            }
        }
        "kustomize" => {
            let k = source.get("kustomize").cloned().unwrap_or(Value::Null);
            settings.insert(
                "path".into(),
                json!(format!(
                    "{up}{}",
                    path.clone().unwrap_or_else(|| ".".to_owned())
                )),
            );
            crate::kustomize_overlay(&k, "namespace", &mut settings);
            for field in [
                "images",
                "commonLabels",
                "commonAnnotations",
                "replicas",
                "forceCommonLabels",
            ] {
                if k.get(field).is_some() {
                    un(
                        &format!("kustomize.{field}"),
                        "not mapped: put it in the kustomization at `path` (or a component)",
                    );
                }
            }
            settings.insert("exclude".into(), json!([{"group": "argoproj.io"}]));
        }
        _ => {
            let d = source.get("directory").cloned().unwrap_or(Value::Null);
            let p = path.clone().unwrap_or_else(|| ".".to_owned());
            settings.insert("path".into(), json!(format!("{up}{p}")));
            if d.get("recurse").and_then(Value::as_bool) != Some(true)
                && has_yaml_below(&opts.root.join(&p))
            {
                un(
                    "directory.recurse",
                    "Argo CD read only the top directory, terrace reads every subdirectory: move the files below elsewhere, or point `manifests.path` at a directory of its own",
                );
            }
            for field in ["include", "exclude", "jsonnet"] {
                if d.get(field).is_some() {
                    un(
                        &format!("directory.{field}"),
                        "not mapped: keep only the files the unit applies under `manifests.path`",
                    );
                }
            }
            settings.insert("exclude".into(), json!([{"group": "argoproj.io"}]));
        }
    }
    if tool != "helm" {
        if create_ns {
            un(
                "syncOptions CreateNamespace=true",
                "add the Namespace object to the unit's files (a helm unit has `createNamespace`)",
            );
        }
        if let Some(ns) = dest_ns {
            settings.insert("apply".into(), json!({"namespace": ns}));
        }
    }
    Some((tool, settings))
}

/// Whether a directory below `dir` holds YAML.
fn has_yaml_below(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        e.file_type().is_ok_and(|t| t.is_dir())
            && !e.file_name().to_string_lossy().starts_with('.')
            && std::fs::read_dir(&p).is_ok_and(|r| {
                r.flatten().any(|f| {
                    let n = f.file_name().to_string_lossy().into_owned();
                    n.ends_with(".yaml") || n.ends_with(".yml")
                })
            })
    })
}

/// Sets `a.b.c` in a values mapping.
fn set_path(values: &mut Value, dotted: &str, v: Value) {
    let mut at = values;
    let parts: Vec<&str> = dotted.split('.').collect();
    for (n, key) in parts.iter().enumerate() {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let map = at.as_object_mut().expect("an object");
        if n + 1 == parts.len() {
            map.insert((*key).to_owned(), v);
            return;
        }
        at = map
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Values Argo CD passed to Helm as they are: a `${` in them is not a
/// terrace expression.
fn escape_expressions(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("${") => *s = s.replace("${", "$${"),
        Value::Array(items) => items.iter_mut().for_each(escape_expressions),
        Value::Object(map) => map.values_mut().for_each(escape_expressions),
        _ => {}
    }
}

/// The Applications an ApplicationSet's generators make, where they can
/// be made from the repository (list, git directories).
fn expand(
    opts: &Options,
    file: &str,
    name: &str,
    set: &Value,
    apps: &mut Vec<App>,
    unmapped: &mut Vec<Unmapped>,
) {
    let what = format!("ApplicationSet {name}");
    let go = set.pointer("/spec/goTemplate").and_then(Value::as_bool) == Some(true);
    let Some(template) = set.pointer("/spec/template") else {
        unmapped.push(Unmapped {
            file: file.to_owned(),
            what,
            todo: "no template: nothing to import".to_owned(),
        });
        return;
    };
    if set.pointer("/spec/templatePatch").is_some() {
        unmapped.push(Unmapped {
            file: file.to_owned(),
            what: format!("{what}: templatePatch"),
            todo: "not applied: write the patched fields into the units by hand".to_owned(),
        });
    }
    let mut params: Vec<Value> = Vec::new();
    for g in set
        .pointer("/spec/generators")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(list) = g.pointer("/list/elements").and_then(Value::as_array) {
            params.extend(list.iter().cloned());
        } else if let Some(dirs) = g.pointer("/git/directories").and_then(Value::as_array) {
            let include: Vec<&str> = dirs
                .iter()
                .filter(|d| d.get("exclude").and_then(Value::as_bool) != Some(true))
                .filter_map(|d| d.get("path").and_then(Value::as_str))
                .collect();
            let exclude: Vec<&str> = dirs
                .iter()
                .filter(|d| d.get("exclude").and_then(Value::as_bool) == Some(true))
                .filter_map(|d| d.get("path").and_then(Value::as_str))
                .collect();
            let mut found = Vec::new();
            all_dirs(&opts.root, &opts.root, &opts.out, &mut found);
            for d in found {
                if include.iter().any(|p| path_match(p, &d))
                    && !exclude.iter().any(|p| path_match(p, &d))
                {
                    let segments: Vec<&str> = d.split('/').filter(|s| !s.is_empty()).collect();
                    let base = segments.last().copied().unwrap_or_default();
                    params.push(json!({"path": {
                        "path": d, "basename": base, "basenameNormalized": normalize(base), "segments": segments,
                    }}));
                }
            }
        } else {
            let kind = g
                .as_object()
                .and_then(|m| m.keys().next().cloned())
                .unwrap_or_default();
            unmapped.push(Unmapped {
                file: file.to_owned(),
                what: format!("{what}: the {kind} generator"),
                todo: "only list and git directory generators are expanded from the repository: write one Application per element, or import them by hand".to_owned(),
            });
        }
    }
    for p in params {
        let mut app = template.clone();
        render(&mut app, &p, go);
        let mut value = json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application"});
        if let (Some(v), Some(t)) = (value.as_object_mut(), app.as_object()) {
            for (k, x) in t {
                v.insert(k.clone(), x.clone());
            }
        }
        let name = str_at(&value, "/metadata/name")
            .unwrap_or_default()
            .to_owned();
        if name.contains("{{") {
            unmapped.push(Unmapped {
                file: file.to_owned(),
                what: format!("{what}: template {name}"),
                todo: "a parameter the import does not know: write that Application by hand"
                    .to_owned(),
            });
            continue;
        }
        apps.push(App {
            file: file.to_owned(),
            name,
            value,
            via: Some(what.clone()),
        });
    }
}

/// Every directory under `dir`, relative to `root` (dot directories and
/// the import's output left out).
fn all_dirs(root: &Path, dir: &Path, out_dir: &str, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        if rel == out_dir.trim_end_matches('/') || found.len() > 20_000 {
            continue;
        }
        found.push(rel);
        all_dirs(root, &p, out_dir, found);
    }
}

/// Go's `path.Match`: `*` and `?` do not cross `/`; `[...]` classes.
/// Segment by segment, each with a two-pointer wildcard match (linear,
/// whatever the pattern: no backtracking blows up).
pub fn path_match(pattern: &str, name: &str) -> bool {
    if pattern.len() > 4096 || name.len() > 4096 {
        return false;
    }
    let ps: Vec<&str> = pattern.split('/').collect();
    let ns: Vec<&str> = name.split('/').collect();
    ps.len() == ns.len()
        && ps.iter().zip(&ns).all(|(p, n)| {
            segment_match(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        })
}

/// One character of a pattern at `p[i]` against `c`: whether it
/// matches, and the pattern's length consumed (`None`: not a single
/// character pattern, a `*`).
fn one(p: &[char], i: usize, c: char) -> Option<(bool, usize)> {
    match p[i] {
        '*' => None,
        '?' => Some((true, 1)),
        '\\' if i + 1 < p.len() => Some((p[i + 1] == c, 2)),
        '[' => {
            let Some(end) = p[i + 1..].iter().position(|x| *x == ']').map(|e| i + 1 + e) else {
                return Some((c == '[', 1));
            };
            let class = &p[i + 1..end];
            let (neg, class) = match class.first() {
                Some('^' | '!') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut k = 0;
            while k < class.len() {
                if k + 2 < class.len() && class[k + 1] == '-' {
                    hit |= class[k] <= c && c <= class[k + 2];
                    k += 3;
                } else {
                    hit |= class[k] == c;
                    k += 1;
                }
            }
            Some((hit != neg, end + 1 - i))
        }
        other => Some((other == c, 1)),
    }
}

fn segment_match(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match one(p, pi, s[si]) {
                None => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                Some((true, len)) => {
                    pi += len;
                    si += 1;
                    continue;
                }
                Some((false, _)) => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Argo CD's `basenameNormalized`.
fn normalize(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cut: String = lower.chars().take(253).collect();
    cut.trim_matches(|c| c == '-' || c == '.').to_owned()
}

/// Fills `{{param}}` (or, with goTemplate, `{{.param.field}}` and
/// `{{index .path.segments N}}`) in every string and key of `v`.
fn render(v: &mut Value, params: &Value, go: bool) {
    match v {
        Value::String(s) => *s = fill(s, params, go),
        Value::Array(items) => items.iter_mut().for_each(|i| render(i, params, go)),
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut x) in old {
                render(&mut x, params, go);
                map.insert(fill(&k, params, go), x);
            }
        }
        _ => {}
    }
}

pub fn fill(s: &str, params: &Value, go: bool) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find("}}") else {
            out.push_str(&rest[at..]);
            return out;
        };
        let tag = rest[at + 2..at + end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        let value = lookup(tag, params, go);
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[at..at + end + 2]),
        }
        rest = &rest[at + end + 2..];
    }
    out.push_str(rest);
    out
}

fn lookup(tag: &str, params: &Value, go: bool) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    if go {
        if let Some(rest) = tag.strip_prefix("index ") {
            let mut parts = rest.split_whitespace();
            let target = parts.next()?.strip_prefix('.')?;
            let n: usize = parts.next()?.parse().ok()?;
            let list = target.split('.').try_fold(params, |v, k| v.get(k))?;
            return list.get(n).and_then(text);
        }
        let path = tag.strip_prefix('.')?;
        return path
            .split('.')
            .try_fold(params, |v, k| v.get(k))
            .and_then(text);
    }
    // fasttemplate: `path`, `path.basename`, `path[0]`, element keys.
    if let Some(p) = params.get("path") {
        match tag {
            "path" => return p.get("path").and_then(text),
            "path.basename" => return p.get("basename").and_then(text),
            "path.basenameNormalized" => return p.get("basenameNormalized").and_then(text),
            _ => {}
        }
        if let Some(n) = tag.strip_prefix("path[").and_then(|t| t.strip_suffix(']')) {
            return p
                .get("segments")?
                .get(n.parse::<usize>().ok()?)
                .and_then(text);
        }
    }
    tag.split('.')
        .try_fold(params, |v, k| v.get(k))
        .and_then(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_match_and_templates() {
        assert!(path_match("apps/*", "apps/guestbook"));
        assert!(!path_match("apps/*", "apps/guestbook/base"));
        assert!(path_match("apps/[a-g]*", "apps/guestbook"));
        assert!(!path_match("apps/[h-z]*", "apps/guestbook"));
        assert!(path_match("*/*", "apps/x"));
        assert!(!path_match("*", "apps/x"));
        // Linear: a pattern made to backtrack answers at once.
        let long = "a".repeat(200);
        assert!(!path_match("*a*a*a*a*a*a*a*a*b", &long));
        let p = json!({"path": {"path": "apps/guestbook", "basename": "guestbook", "basenameNormalized": "guestbook", "segments": ["apps", "guestbook"]}, "env": "prod"});
        assert_eq!(
            fill("{{path.basename}}-{{ env }}", &p, false),
            "guestbook-prod"
        );
        assert_eq!(
            fill("{{path[0]}}/{{unknown}}", &p, false),
            "apps/{{unknown}}"
        );
        assert_eq!(
            fill("{{.path.basename}}-{{ index .path.segments 1 }}", &p, true),
            "guestbook-guestbook"
        );
        assert_eq!(normalize("My_App.v2-"), "my-app.v2");
        let mut v = json!({"a": 1});
        set_path(&mut v, "image.tag", json!("1.2"));
        assert_eq!(v, json!({"a": 1, "image": {"tag": "1.2"}}));
    }
}
