//! The `kustomize` kind: a kustomization directory (`kustomize.path`,
//! usually `overlays/${env}`), built in process by `terrace-kustomize`
//! into the objects `kustomize build` prints, then applied to a cluster
//! target like a `manifests` unit's objects.
//!
//! SOPS-encrypted resource files are decrypted in memory while the build
//! reads them (as Flux's kustomize-controller does), so kustomize's
//! transformers see plain objects; every object that came out of such a
//! file is sealed again before it is written or shown.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use terrace_core::config::{TargetKind, UNIT_FILE};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{DriverError, UnitContext};
use terrace_core::kind::TypedKind;
use terrace_core::secrets::{SecretSource, looks_encrypted};
use terrace_kustomize::{DiskFs, Fs};

use crate::clean_relative;
use crate::manifests::{self, Object, ObjectsDriver, identify};

/// The `kustomize` kind: its objects go the way of a `manifests` unit's
/// (the same `ObjectsDriver`, sharing the registry's cluster pool).
pub fn kind(clusters: &std::sync::Arc<terrace_kube::ClusterPool>) -> TypedKind<KustomizeSettings> {
    TypedKind::new(
        "kustomize",
        "A kustomization directory, built by terrace's own Kustomize engine (the same objects `kustomize build` prints).",
        Some(TargetKind::Cluster),
        // The kustomize engine lists and probes files on its own.
        ObjectsDriver::in_process(clusters, render_objects, false),
    )
}

/// The annotation that carries an object's SOPS source file through the
/// build; removed before the object goes anywhere.
const SOURCE_ANNOTATION: &str = "terrace.dev/sops-source";

/// The disk, with SOPS-encrypted YAML files decrypted on read. Each
/// decrypted document is marked with its file so the object can be sealed
/// again after the build.
struct DecryptingFs<'a> {
    root: &'a Path,
    secrets: Option<&'a dyn SecretSource>,
    /// The first decryption failure: the build only sees an I/O error.
    failure: Mutex<Option<DriverError>>,
    /// Every SOPS file the build decrypted (resources, generator files,
    /// patches): any object may hold their values.
    opened: Mutex<Vec<PathBuf>>,
    /// Helm, for `helmCharts`.
    helm: Option<crate::helm::KustomizeHelm>,
    /// The kustomization file as the unit's Flux-style fields changed it
    /// (`targetNamespace`, `patches`, ...): read instead of the file.
    overlay: Option<(PathBuf, Vec<u8>)>,
}

impl Fs for DecryptingFs<'_> {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        if let Some((at, bytes)) = &self.overlay
            && at == path
        {
            return Ok(bytes.clone());
        }
        // Nothing outside the project, whatever a symlink says.
        let bytes = terrace_fs::read(self.root, path)?;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Ok(bytes);
        };
        if !looks_encrypted(text) {
            return Ok(bytes);
        }
        let rel = path.strip_prefix(self.root).unwrap_or(path);
        let fail = |e: DriverError| {
            let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(e);
            io::Error::other(format!("{}: could not be decrypted", rel.display()))
        };
        let Some(secrets) = self.secrets else {
            return Err(fail(
                Diagnostic::new("this file is SOPS-encrypted, and secrets are not available here")
                    .in_file(rel.display().to_string())
                    .into(),
            ));
        };
        let docs = secrets
            .open_documents(rel, text)
            .map_err(|e| fail(manifests::secret_error(e, &rel.display().to_string())))?
            .unwrap_or_default();
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rel.to_path_buf());
        let marked: Vec<Value> = docs
            .into_iter()
            .filter(|d| !d.is_null())
            .map(|mut d| {
                if let Some(meta) = d.get_mut("metadata").and_then(Value::as_object_mut) {
                    let annotations = meta
                        .entry("annotations")
                        .or_insert_with(|| Value::Object(Default::default()));
                    if let Some(a) = annotations.as_object_mut() {
                        a.insert(
                            SOURCE_ANNOTATION.into(),
                            Value::String(rel.display().to_string()),
                        );
                    }
                }
                d
            })
            .collect();
        Ok(terrace_kustomize::to_yaml(&marked).into_bytes())
    }
    fn is_dir(&self, path: &Path) -> bool {
        DiskFs.is_dir(path)
    }
    fn is_file(&self, path: &Path) -> bool {
        DiskFs.is_file(path)
    }
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        DiskFs.real_path(path)
    }
    fn helm(&self) -> Option<&dyn terrace_kustomize::Helm> {
        self.helm
            .as_ref()
            .map(|h| h as &dyn terrace_kustomize::Helm)
    }
}

/// Removes the source mark from an object; the file it names, if any.
fn take_source(v: &mut Value) -> Option<PathBuf> {
    let meta = v.get_mut("metadata")?.as_object_mut()?;
    let annotations = meta.get_mut("annotations")?.as_object_mut()?;
    let source = annotations.remove(SOURCE_ANNOTATION)?;
    if annotations.is_empty() {
        meta.remove("annotations");
    }
    source.as_str().map(PathBuf::from)
}

/// Builds the unit's kustomization: its objects, in kustomize's order.
pub fn render_objects(ctx: &UnitContext<'_>) -> Result<Vec<Object>, DriverError> {
    let unit_file = format!("{}/{UNIT_FILE}", ctx.unit.dir);
    let settings: KustomizeSettings = crate::unit_settings(ctx)?;
    let rel = settings.path.as_deref().unwrap_or(".");
    let dir = clean_relative(&ctx.unit.dir, rel).ok_or_else(|| {
        Diagnostic::new(format!("kustomize path `{rel}` leads outside the project"))
            .in_file(&unit_file)
            .with_hint("point `kustomize.path` at a directory inside the project")
    })?;
    let abs = ctx.root.join(&dir);
    if !abs.is_dir() {
        return Err(Diagnostic::new(format!(
            "kustomization directory `{dir}` does not exist in environment `{}`",
            ctx.environment
        ))
        .in_file(&unit_file)
        .with_hint("create it, or set `kustomize.path` (for example `overlays/${env}`)")
        .into());
    }
    let overlay = flux_overlay(&settings, ctx.root, &abs, &unit_file)?;
    let fs = DecryptingFs {
        root: ctx.root,
        secrets: ctx.secrets,
        failure: Mutex::new(None),
        opened: Mutex::new(Vec::new()),
        overlay,
        helm: Some(crate::helm::KustomizeHelm::for_project(
            ctx.root,
            ctx.secrets.map(|s| s.plaintexts()).unwrap_or_default(),
        )?),
    };
    let built = terrace_kustomize::build(&fs, &abs);
    if let Some(e) = fs.failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let root_prefix = format!("{}/", ctx.root.display());
    let values = built.map_err(|e| {
        Diagnostic::new(e.to_string().replace(&root_prefix, ""))
            .in_file(&unit_file)
            .with_hint(format!(
                "`terrace kustomize build {dir}` shows the same error; the kustomization is at {dir}"
            ))
    })?;
    // A chart may transform a decrypted value (`b64enc`) past any search
    // for it: with a chart rendered and a secrets file opened, every
    // object is sealed.
    let charted = fs
        .helm
        .as_ref()
        .is_some_and(|h| h.used.load(std::sync::atomic::Ordering::Relaxed));
    let mut opened = fs.opened.into_inner().unwrap_or_else(|p| p.into_inner());
    opened.sort();
    opened.dedup();
    let substitution = settings
        .substitute
        .as_ref()
        .map(|s| crate::substitute::Substitution::load(ctx, s))
        .transpose()?;
    let mut objects = Vec::with_capacity(values.len());
    for mut value in values {
        if settings.exclude.iter().any(|f| f.matches(&value)) {
            continue;
        }
        let source = take_source(&mut value);
        let substituted = match &substitution {
            Some(sub) => sub.apply(&mut value).map_err(|e| {
                let what = identify(&value).map_or_else(|_| dir.clone(), |id| id.address);
                DriverError::from(
                    Diagnostic::new(format!("substitution in {what}: {e}"))
                        .in_file(&unit_file)
                        .with_hint("set the variable in `kustomize.substitute`, give it a default (`${VAR:=default}`), or write `$${` for a literal `${`"),
                )
            })?,
            None => Vec::new(),
        };
        // A secret variable may sit anywhere in it: every value sealed.
        let from_vars = !substituted.is_empty();
        let id = identify(&value).map_err(|msg| {
            DriverError::from(Diagnostic::new(format!("{dir}: {msg}")).in_file(&unit_file))
        })?;
        objects.push(Object {
            address: id.address,
            object: id.object,
            source: source
                .as_ref()
                .map_or_else(|| dir.clone(), |p| p.display().to_string()),
            value,
            file_name: id.file_name,
            secret_sources: {
                let mut from = if charted && !opened.is_empty() {
                    opened.clone()
                } else {
                    source.iter().cloned().collect()
                };
                from.extend(substituted);
                from.sort();
                from.dedup();
                from
            },
            rule_from: source.filter(|_| (!charted || opened.is_empty()) && !from_vars),
            secret_scope: opened.clone(),
        });
    }
    Ok(objects)
}

/// Settings of a `kustomize` unit. Strings may use `${...}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizeSettings {
    /// The kustomization directory, relative to the unit directory (default:
    /// the unit directory itself). One unit usually serves every
    /// environment through its overlay: `overlays/${env}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How the objects are applied to a live cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<crate::ApplySettings>,
    /// Flux's post-build substitution of `${VAR}` in the built objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substitute: Option<crate::substitute::SubstituteSettings>,
    /// Set over the kustomization at `path` as a Flux Kustomization sets
    /// it: the namespace of every namespaced object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// Put before and after every name, as Flux's `namePrefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_suffix: Option<String>,
    /// Patches added to the kustomization's own (`{patch, target}`), as
    /// Flux's `patches`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<Value>,
    /// Components added to the kustomization's own, relative to `path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// Objects the build yields that the unit does not apply (an import
    /// from Flux leaves out Flux's own objects, which became units).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<ObjectFilter>,
}

/// Which objects: every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectFilter {
    /// The API group (`helm.toolkit.fluxcd.io`; `""` for the core group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ObjectFilter {
    pub fn matches(&self, object: &Value) -> bool {
        let api = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let group = api.rsplit_once('/').map_or("", |(g, _)| g);
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        self.group.as_deref().is_none_or(|g| g == group)
            && self.kind.as_deref().is_none_or(|k| k == kind)
            && self.name.as_deref().is_none_or(|n| n == name)
    }
}

/// The kustomization at `dir` with the unit's Flux-style fields set over
/// it, as kustomize-controller edits its copy; `None` without any.
fn flux_overlay(
    settings: &KustomizeSettings,
    root: &Path,
    dir: &Path,
    unit_file: &str,
) -> Result<Option<(PathBuf, Vec<u8>)>, DriverError> {
    if settings.target_namespace.is_none()
        && settings.name_prefix.is_none()
        && settings.name_suffix.is_none()
        && settings.patches.is_empty()
        && settings.components.is_empty()
    {
        return Ok(None);
    }
    let Some(file) = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
    else {
        return Err(Diagnostic::new(format!(
            "`targetNamespace`, `namePrefix`, `nameSuffix`, `patches` and `components` need a kustomization.yaml in {}",
            dir.strip_prefix(root).unwrap_or(dir).display()
        ))
        .in_file(unit_file)
        .with_hint("add a kustomization.yaml listing the resources (Flux generates one; terrace does not)")
        .into());
    };
    let text = terrace_fs::read_to_string(root, &file)?;
    let rel = file
        .strip_prefix(root)
        .unwrap_or(&file)
        .display()
        .to_string();
    let mut k: Value = terrace_yaml::from_str(&text, Path::new(&rel))?;
    let Some(map) = k.as_object_mut() else {
        return Err(Diagnostic::new("a kustomization must be a mapping")
            .in_file(rel)
            .into());
    };
    if let Some(ns) = &settings.target_namespace {
        map.insert("namespace".into(), Value::String(ns.clone()));
    }
    if let Some(p) = &settings.name_prefix {
        map.insert("namePrefix".into(), Value::String(p.clone()));
    }
    if let Some(p) = &settings.name_suffix {
        map.insert("nameSuffix".into(), Value::String(p.clone()));
    }
    for (key, add) in [
        ("patches", settings.patches.clone()),
        (
            "components",
            settings
                .components
                .iter()
                .cloned()
                .map(Value::String)
                .collect(),
        ),
    ] {
        if add.is_empty() {
            continue;
        }
        let list = map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
        match list {
            Value::Array(items) => items.extend(add),
            _ => {
                return Err(
                    Diagnostic::new(format!("`{key}` of the kustomization is not a list"))
                        .in_file(rel)
                        .into(),
                );
            }
        }
    }
    Ok(Some((file, terrace_yaml::to_string(&k).into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_source_mark_is_removed_with_an_annotations_map_it_created() {
        let mut v =
            json!({"metadata": {"name": "a", "annotations": {SOURCE_ANNOTATION: "s.yaml"}}});
        assert_eq!(take_source(&mut v), Some(PathBuf::from("s.yaml")));
        assert_eq!(v, json!({"metadata": {"name": "a"}}));
        let mut v = json!({"metadata": {"name": "a", "annotations": {"keep": "1"}}});
        assert_eq!(take_source(&mut v), None);
        assert_eq!(v["metadata"]["annotations"]["keep"], "1");
    }
}
