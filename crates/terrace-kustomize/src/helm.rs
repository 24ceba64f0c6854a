//! `helmCharts:` and `helmGlobals:`: kustomize's HelmChartInflationGenerator
//! (`kustomize build --enable-helm`). This crate runs no program: the
//! filesystem offers a [`Helm`] (through [`crate::Fs::helm`]) that renders
//! a chart, and without one a kustomization with `helmCharts` is refused,
//! as kustomize refuses it without `--enable-helm`.
//!
//! As kustomize v5.5.0 does: a chart is looked for at
//! `{chartHome}/{name}` (`chartHome` default `charts`, relative to the
//! kustomization; `{chartHome}/{name}-{version}/{name}` when both `repo`
//! and `version` are given); the values are `valuesFile` (default: the
//! chart's own `values.yaml`) with `valuesInline` merged in as
//! `valuesMerge` says (`override`, the default: inline wins; `merge`: the
//! file wins; `replace`: inline alone), then each of
//! `additionalValuesFiles`; the chart's namespace defaults to the
//! kustomization's `namespace`. The objects join the kustomization's own
//! generated ones, after its `configMapGenerator` and `secretGenerator`.
//!
//! Differences: a chart without `releaseName` is refused (kustomize asks
//! Helm to generate a name, which differs on every build).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::KustomizeError;

/// One chart to render, as kustomize would call `helm template`.
#[derive(Debug, Clone, PartialEq)]
pub struct Inflate {
    /// Where the chart is when it is in the repository (it may not exist:
    /// a remote chart is then pulled by the [`Helm`]).
    pub chart_dir: PathBuf,
    pub name: String,
    pub version: Option<String>,
    /// An HTTP repository or an `oci://` registry path.
    pub repo: Option<String>,
    pub release_name: String,
    pub namespace: Option<String>,
    /// Values documents, in the order `-f` would give them.
    pub values: Vec<Value>,
    pub include_crds: bool,
    pub skip_tests: bool,
    pub skip_hooks: bool,
    pub api_versions: Vec<String>,
    pub kube_version: Option<String>,
    pub name_template: Option<String>,
    /// The kustomization file that asked, for messages.
    pub file: PathBuf,
}

/// What renders a chart: `helm template` with the request's flags. The
/// error is a message for people.
pub trait Helm {
    fn template(&self, request: &Inflate) -> Result<String, String>;
}

/// Helm's merge of values: maps merge key by key, anything else is
/// replaced by `over`'s value.
pub fn merge_values(base: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(o)) => merge_values(b, o),
            (_, v) => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn text<'a>(entry: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    entry
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn flag(entry: &Map<String, Value>, key: &str) -> bool {
    entry.get(key).and_then(Value::as_bool).unwrap_or(false)
}

const CHART_FIELDS: &[&str] = &[
    "name",
    "version",
    "repo",
    "releaseName",
    "namespace",
    "additionalValuesFiles",
    "valuesFile",
    "valuesInline",
    "valuesMerge",
    "includeCRDs",
    "skipHooks",
    "apiVersions",
    "kubeVersion",
    "nameTemplate",
    "skipTests",
    "debug",
    "devel",
];

/// The objects of a kustomization's `helmCharts`, each chart's as Helm
/// printed them.
pub(crate) fn inflate_all(
    fs: &dyn crate::Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    read_values: &dyn Fn(&str) -> Result<Value, KustomizeError>,
) -> Result<Vec<(String, String)>, KustomizeError> {
    let Some(charts) = k.get("helmCharts") else {
        return Ok(Vec::new());
    };
    let charts = charts
        .as_array()
        .ok_or_else(|| KustomizeError::invalid(file, "`helmCharts` must be a list of charts"))?;
    if charts.is_empty() {
        return Ok(Vec::new());
    }
    let Some(helm) = fs.helm() else {
        return Err(KustomizeError::invalid(
            file,
            "`helmCharts` needs Helm: build with `terrace kustomize build --enable-helm` (a `kustomize` unit always has it)",
        ));
    };
    let globals = match k.get("helmGlobals") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(KustomizeError::invalid(
                file,
                "`helmGlobals` must be a mapping",
            ));
        }
    };
    let chart_home = text(&globals, "chartHome").unwrap_or("charts").to_owned();
    let mut out = Vec::with_capacity(charts.len());
    for (i, entry) in charts.iter().enumerate() {
        let at = format!("helmCharts[{i}]");
        let entry = entry
            .as_object()
            .ok_or_else(|| KustomizeError::invalid(file, format!("`{at}` must be a mapping")))?;
        if let Some(unknown) = entry.keys().find(|k| !CHART_FIELDS.contains(&k.as_str())) {
            return Err(KustomizeError::invalid(
                file,
                format!("`{at}.{unknown}` is not a field of a Helm chart"),
            ));
        }
        let name = text(entry, "name").ok_or_else(|| {
            KustomizeError::invalid(
                file,
                format!("`{at}.name` is required (chart name cannot be empty)"),
            )
        })?;
        let release_name = text(entry, "releaseName").ok_or_else(|| {
            KustomizeError::invalid(
                file,
                format!(
                    "`{at}.releaseName` is required: without it Helm makes up a name on every build"
                ),
            )
        })?;
        let version = text(entry, "version").map(str::to_owned);
        let repo = text(entry, "repo").map(str::to_owned);
        let home = match (&version, &repo) {
            (Some(v), Some(_)) => format!("{chart_home}/{name}-{v}"),
            _ => chart_home.clone(),
        };
        let chart_dir = crate::normalize(&dir.join(&home).join(name));
        let merge = text(entry, "valuesMerge").unwrap_or("override");
        if !["merge", "override", "replace"].contains(&merge) {
            return Err(KustomizeError::invalid(
                file,
                format!("`{at}.valuesMerge` is `{merge}`; it must be merge, override or replace"),
            ));
        }
        let values_file = match text(entry, "valuesFile") {
            Some(f) => Some(f.to_owned()),
            None => {
                let default = format!("{home}/{name}/values.yaml");
                fs.is_file(&crate::normalize(&dir.join(&default)))
                    .then_some(default)
            }
        };
        let file_values = match &values_file {
            Some(path) => match read_values(path)? {
                Value::Object(m) => m,
                Value::Null => Map::new(),
                _ => {
                    return Err(KustomizeError::invalid(
                        file,
                        format!("values file {path} is not a mapping"),
                    ));
                }
            },
            None => Map::new(),
        };
        let inline = match entry.get("valuesInline") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(KustomizeError::invalid(
                    file,
                    format!("`{at}.valuesInline` must be a mapping"),
                ));
            }
        };
        let first = if inline.is_empty() {
            file_values
        } else {
            match merge {
                "override" => {
                    let mut m = file_values;
                    merge_values(&mut m, &inline);
                    m
                }
                "merge" => {
                    let mut m = inline;
                    merge_values(&mut m, &file_values);
                    m
                }
                _ => inline,
            }
        };
        let mut values = vec![Value::Object(first)];
        for (j, extra) in entry
            .get("additionalValuesFiles")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let rel = extra.as_str().ok_or_else(|| {
                KustomizeError::invalid(
                    file,
                    format!("`{at}.additionalValuesFiles[{j}]` must be a path"),
                )
            })?;
            values.push(read_values(rel)?);
        }
        let strings = |key: &str| -> Vec<String> {
            entry
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let namespace = text(entry, "namespace")
            .or_else(|| text(k, "namespace"))
            .map(str::to_owned);
        let request = Inflate {
            chart_dir,
            name: name.to_owned(),
            version,
            repo,
            release_name: release_name.to_owned(),
            namespace,
            values,
            include_crds: flag(entry, "includeCRDs"),
            skip_tests: flag(entry, "skipTests"),
            skip_hooks: flag(entry, "skipHooks"),
            api_versions: strings("apiVersions"),
            kube_version: text(entry, "kubeVersion").map(str::to_owned),
            name_template: text(entry, "nameTemplate").map(str::to_owned),
            file: file.to_owned(),
        };
        let rendered = helm.template(&request).map_err(|message| {
            KustomizeError::invalid(file, format!("`{at}` (chart {name}): {message}"))
        })?;
        out.push((name.to_owned(), rendered));
    }
    Ok(out)
}
