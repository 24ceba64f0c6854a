//! Building a kustomization: accumulate resources (recursively), apply
//! components, run generators and transformers in kustomize's order, then,
//! at the top, add hash suffixes, fix name references and sort.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sha2::Digest;

use crate::KustomizeError;
use crate::fs::{Fs, normalize};
use crate::patch::{Schema, apply_json6902, merge_strategic_with, obj};
use crate::select::{Match, Selector};
use crate::transform::{self, Image, Renamed};

/// File names kustomize looks for, in order.
const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Fields this engine implements.
const SUPPORTED: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "bases",
    "components",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "commonLabels",
    "labels",
    "commonAnnotations",
    "images",
    "replicas",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
    "patchesStrategicMerge",
    "patchesJson6902",
    "sortOptions",
    "buildMetadata",
    "replacements",
    "configurations",
    "vars",
    "transformers",
    "generators",
    "openapi",
    "crds",
    "helmCharts",
    "helmGlobals",
];

/// Fields kustomize has that this engine does not implement yet: an error,
/// never a silent skip.
const UNSUPPORTED: &[&str] = &["helmChartInflationGenerator", "validators"];

/// One object on its way through the build.
#[derive(Debug, Clone)]
pub(crate) struct Res {
    pub(crate) value: Value,
    /// Every name it has had, oldest first (for name references).
    pub(crate) names: Vec<String>,
    /// The namespace it was loaded or generated with.
    first_namespace: String,
    /// The kind it was loaded or generated with (a patch may change it).
    first_kind: String,
    /// Generated with a content-hash suffix, added at the end.
    hash: bool,
    /// Where it came from, for `buildMetadata: [originAnnotations]`.
    from: Source,
    /// The name prefixes and suffixes given to it, innermost first: a
    /// reference prefers a referral given the same ones (kustomize's
    /// `PrefixesSuffixesEquals`).
    affixes: Vec<(String, String)>,
    /// The vars bound to it (where each was declared).
    var_names: Vec<String>,
    /// A transformer changed its identity, or could have (kustomize's
    /// "previous ids": a namespace, prefix, suffix, hash, JSON patch or
    /// renaming patch ran over it). Only such objects are referrals: a
    /// reference to an object nothing changed has nothing to follow.
    changed: bool,
    /// The transformers that ran over it, in order, for `buildMetadata:
    /// [transformerAnnotations]` (recorded only when the root asks).
    transformations: Vec<Transformation>,
}

/// A transformer that ran over a resource: the kustomization field (as
/// kustomize's builtin transformer of that field) or the `transformers:`
/// configuration, and the file that configured it.
#[derive(Debug, Clone)]
struct Transformation {
    configured_in: PathBuf,
    kind: String,
    name: Option<String>,
    namespace: Option<String>,
}

impl Transformation {
    fn builtin(file: &Path, kind: &str) -> Transformation {
        Transformation {
            configured_in: file.to_owned(),
            kind: kind.to_owned(),
            name: None,
            namespace: None,
        }
    }
}

/// Where a resource came from: a file, or a generator of a kustomization.
#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    Unknown,
    File(PathBuf),
    Generated {
        configured_in: PathBuf,
        kind: &'static str,
        /// The generator configuration's own name (`generators:` entries).
        by: Option<String>,
    },
}

/// What a build carries from kustomization to kustomization: the
/// directories being built (a cycle is an error) and the name references
/// their `configurations` add (they apply to the whole build, as
/// kustomize merges transformer configurations upwards).
#[derive(Debug, Default)]
struct Walk {
    stack: Vec<PathBuf>,
    name_refs: Vec<transform::NameRef>,
    /// Every kustomization's `vars`, replaced once the build is done.
    vars: Vec<crate::vars::Var>,
    /// Fields `configurations` add to those vars are replaced in.
    var_refs: Vec<transform::FieldSpec>,
    /// The `openapi` of the first kustomization loaded that has one (as
    /// kustomize sets its schema once): `Some(None)` for the built-in
    /// Kubernetes schema, `Some(Some(..))` for a custom one.
    openapi: Option<Option<std::sync::Arc<Schema>>>,
    /// The root asks for `transformerAnnotations`: record each
    /// transformer on the resources it ran over.
    record_transformations: bool,
    /// Fields `configurations` add for `namePrefix`/`nameSuffix` and
    /// `images`. A kustomization's transformers see its own and its
    /// bases' (those from `scope.last()` on), as kustomize merges a
    /// base's configuration into its parent's and not the other way.
    field_configs: Vec<(FieldConfig, transform::FieldSpec)>,
    /// Where each kustomization being built starts in `field_configs`.
    scope: Vec<usize>,
    /// While a `transformers:` configuration runs: its own field specs,
    /// which replace the defaults and `configurations`.
    plugin_specs: Option<Vec<(FieldConfig, transform::FieldSpec)>>,
}

/// Which transformer a `configurations` field spec is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldConfig {
    Prefix,
    Suffix,
    Images,
    CommonLabels,
    CommonAnnotations,
    Replicas,
}

impl Walk {
    /// The field specs of `which` the kustomization being built sees.
    fn field_specs(&self, which: FieldConfig) -> Vec<&transform::FieldSpec> {
        if let Some(own) = &self.plugin_specs {
            return own
                .iter()
                .filter(|(w, _)| *w == which)
                .map(|(_, spec)| spec)
                .collect();
        }
        let from = self.scope.last().copied().unwrap_or(0);
        self.field_configs[from.min(self.field_configs.len())..]
            .iter()
            .filter(|(w, _)| *w == which)
            .map(|(_, spec)| spec)
            .collect()
    }
}

/// A kustomization's `openapi`: the built-in schema of the one Kubernetes
/// version kustomize carries, or a custom schema file (JSON or YAML) whose
/// kinds' lists then merge by its merge keys. The first kustomization that
/// names one, in the order they are loaded (an overlay before its bases),
/// decides for the whole build.
fn openapi(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    stack: &mut Walk,
) -> Result<(), KustomizeError> {
    let Some(config) = k.get("openapi") else {
        return Ok(());
    };
    let path = config.get("path").and_then(Value::as_str);
    let version = config.get("version").and_then(Value::as_str);
    let chosen = match (path, version) {
        (Some(_), Some(_)) => {
            return Err(KustomizeError::invalid(
                file,
                "openapi: builtin version and custom schema provided, cannot use both",
            ));
        }
        (None, Some("v1.21.2")) | (None, None) => None,
        (None, Some(other)) => {
            return Err(KustomizeError::invalid(
                file,
                format!(
                    "openapi: the built-in schema of Kubernetes `{other}` is not one kustomize carries (only v1.21.2)"
                ),
            ));
        }
        (Some(entry), None) => {
            if is_remote(entry) {
                return Err(KustomizeError::Unsupported {
                    file: file.to_owned(),
                    field: format!("openapi: {entry} (remote schemas)"),
                });
            }
            let path = restricted(fs, dir, entry, file)?;
            let text = read(fs, &path, file)?;
            let doc = yaml_documents(&text, &path)?
                .into_iter()
                .next()
                .unwrap_or_default();
            let schema = Schema::new(&doc).ok_or_else(|| {
                KustomizeError::invalid(&path, "an OpenAPI schema needs a `definitions` map")
            })?;
            Some(std::sync::Arc::new(schema))
        }
    };
    if stack.openapi.is_none() {
        stack.openapi = Some(chosen);
    }
    Ok(())
}

impl Res {
    fn new(value: Value) -> Res {
        let name = transform::name(&value).to_owned();
        let first_namespace = transform::namespace(&value).to_owned();
        let first_kind = transform::kind(&value).to_owned();
        Res {
            value,
            names: vec![name],
            first_namespace,
            first_kind,
            hash: false,
            from: Source::Unknown,
            affixes: Vec::new(),
            var_names: Vec::new(),
            changed: false,
            transformations: Vec::new(),
        }
    }

    fn rename(&mut self, new: String) {
        self.changed = true;
        if self.names.last() != Some(&new) {
            self.names.push(new.clone());
        }
        self.value["metadata"]["name"] = Value::String(new);
    }
}

/// The root kustomization's `buildMetadata` (a base's is not read, as in
/// kustomize): `managedByLabel` labels every object as kubectl's kustomize
/// does, `originAnnotations` says where each came from (its file, or the
/// generator and the kustomization that configured it), relative to the
/// root. Unknown options are ignored, as kustomize ignores them.
fn build_metadata(
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    resources: &mut [Res],
) -> Result<(), KustomizeError> {
    let options = strings(k, "buildMetadata", file)?;
    let transformations = options.iter().any(|o| o == "transformerAnnotations");
    let origins = options.iter().any(|o| o == "originAnnotations");
    let managed = options.iter().any(|o| o == "managedByLabel");
    for r in resources.iter_mut() {
        if origins {
            let text = match &r.from {
                Source::File(path) => format!("path: {}\n", relative_to(dir, path)),
                Source::Generated {
                    configured_in,
                    kind,
                    by,
                } => format!(
                    "configuredIn: {}\nconfiguredBy:\n  apiVersion: builtin\n  kind: {kind}\n{}",
                    relative_to(dir, configured_in),
                    by.as_ref()
                        .map_or_else(String::new, |n| format!("  name: {n}\n"))
                ),
                Source::Unknown => continue,
            };
            set_metadata(
                &mut r.value,
                "annotations",
                "config.kubernetes.io/origin",
                text,
            );
        }
        if transformations && !r.transformations.is_empty() {
            let mut text = String::new();
            for t in &r.transformations {
                text.push_str(&format!(
                    "- configuredIn: {}\n  configuredBy:\n    apiVersion: builtin\n    kind: {}\n",
                    relative_to(dir, &t.configured_in),
                    t.kind
                ));
                if let Some(name) = &t.name {
                    text.push_str(&format!("    name: {name}\n"));
                }
                if let Some(namespace) = &t.namespace {
                    text.push_str(&format!("    namespace: {namespace}\n"));
                }
            }
            set_metadata(
                &mut r.value,
                "annotations",
                "alpha.config.kubernetes.io/transformations",
                text,
            );
        }
        if managed {
            set_metadata(
                &mut r.value,
                "labels",
                "app.kubernetes.io/managed-by",
                // What kubectl's built-in kustomize says of itself.
                "kustomize-(devel)".to_owned(),
            );
        }
    }
    Ok(())
}

/// Sets `metadata.<field>.<key>` when `metadata` is a map.
fn set_metadata(value: &mut Value, field: &str, key: &str, text: String) {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
        && let Some(map) = meta
            .entry(field)
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
    {
        map.insert(key.to_owned(), Value::String(text));
    }
}

/// `path` relative to the directory `base` (both normalized), `/`-separated.
fn relative_to(base: &Path, path: &Path) -> String {
    let b: Vec<_> = base.components().collect();
    let p: Vec<_> = path.components().collect();
    let common = b.iter().zip(&p).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".to_owned(); b.len() - common];
    parts.extend(
        p[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// Builds the kustomization in `dir`: the objects `kustomize build` prints.
pub fn build(fs: &dyn Fs, dir: &Path) -> Result<Vec<Value>, KustomizeError> {
    build_all(fs, std::slice::from_ref(&dir))
}

/// Builds each kustomization of `dirs`, in order, one after the other's
/// objects. They share what they read (overlays of one base read it
/// once), and a build asks where a path really is only once.
pub fn build_all(fs: &dyn Fs, dirs: &[&Path]) -> Result<Vec<Value>, KustomizeError> {
    let cached = crate::fs::Cached::new(fs);
    let mut objects = Vec::new();
    for dir in dirs {
        objects.extend(build_one(&cached, dir)?);
    }
    Ok(objects)
}

fn build_one(fs: &dyn Fs, dir: &Path) -> Result<Vec<Value>, KustomizeError> {
    let dir = normalize(dir);
    let (file, k) = load(fs, &dir)?;
    // A Component can be built on its own, as `kustomize build` does:
    // its resources, with its own generators and transformers.
    let is_component = k.get("kind").and_then(Value::as_str) == Some("Component");
    let mut walk = Walk {
        record_transformations: strings(&k, "buildMetadata", &file)?
            .iter()
            .any(|o| o == "transformerAnnotations"),
        ..Walk::default()
    };
    let mut resources = accumulate_as(fs, &dir, &file, &k, &mut walk, is_component)?;
    // Hash suffixes come last, over the final content, without the name.
    let mut renamed = Vec::new();
    for r in resources.iter_mut().filter(|r| r.hash) {
        let suffix = content_hash(&r.value);
        let new = format!("{}-{suffix}", transform::name(&r.value));
        r.rename(new);
    }
    // Every object whose identity a transformer touched is a possible
    // referral: a reference goes to the one kustomize would pick among
    // all that ever had the name.
    for r in resources.iter().filter(|r| r.changed) {
        renamed.push(Renamed {
            kind: transform::kind(&r.value).to_owned(),
            old: r.names.clone(),
            new: r.names.last().cloned().unwrap_or_default(),
            namespace: transform::namespace(&r.value).to_owned(),
            first_namespace: r.first_namespace.clone(),
            affixes: r.affixes.clone(),
        });
    }
    build_metadata(&dir, &file, &k, &mut resources)?;
    let affixes: Vec<Vec<(String, String)>> = resources.iter().map(|r| r.affixes.clone()).collect();
    let bound: Vec<Vec<String>> = resources.iter().map(|r| r.var_names.clone()).collect();
    let mut objects: Vec<Value> = resources.into_iter().map(|r| r.value).collect();
    transform::fix_references(&mut objects, &affixes, &renamed, &walk.name_refs)
        .map_err(|m| KustomizeError::invalid(&file, m))?;
    crate::vars::apply(&mut objects, &bound, &walk.vars, &walk.var_refs)
        .map_err(|m| KustomizeError::invalid(&file, m))?;
    // Objects marked `config.kubernetes.io/local-config` (other than
    // "false") served the build (as sources of names, replacements and
    // vars) and are not part of its output, as in kustomize.
    objects.retain(|o| {
        o["metadata"]["annotations"]
            .get("config.kubernetes.io/local-config")
            .is_none_or(|v| v == "false")
    });
    // Without sortOptions the order is legacy; with them, `order` must
    // say which, as kustomize requires.
    let order = match k.get("sortOptions") {
        None => "legacy",
        Some(options) => options.get("order").and_then(Value::as_str).unwrap_or(""),
    };
    match order {
        "legacy" => {
            let legacy = k
                .get("sortOptions")
                .and_then(|s| s.get("legacySortOptions"));
            let list = |field: &str, default: &[&str]| -> Vec<String> {
                match legacy.and_then(|l| l.get(field)).and_then(Value::as_array) {
                    Some(kinds) => kinds
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                    None => default.iter().map(|s| (*s).to_owned()).collect(),
                }
            };
            let first = list("orderFirst", &ORDER_FIRST);
            let last = list("orderLast", &ORDER_LAST);
            objects.sort_by_cached_key(|v| legacy_key(v, &first, &last));
        }
        "fifo" => {
            if k.get("sortOptions")
                .and_then(|s| s.get("legacySortOptions"))
                .is_some()
            {
                return Err(KustomizeError::invalid(
                    &file,
                    "sortOptions.legacySortOptions is set but the selected sort order is `fifo`, not `legacy`",
                ));
            }
        }
        other => {
            return Err(KustomizeError::invalid(
                &file,
                format!("sortOptions.order is `{other}`; it must be legacy or fifo"),
            ));
        }
    }
    Ok(objects)
}

/// Reads a directory's kustomization file and checks its fields.
fn load(fs: &dyn Fs, dir: &Path) -> Result<(PathBuf, Map<String, Value>), KustomizeError> {
    let found: Vec<PathBuf> = KUSTOMIZATION_FILES
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| fs.is_file(p))
        .collect();
    if found.len() > 1 {
        return Err(KustomizeError::invalid(
            dir,
            format!(
                "found multiple kustomization files in this directory ({}); keep one",
                found
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let Some(file) = found.into_iter().next() else {
        return Err(KustomizeError::invalid(
            dir,
            format!(
                "no kustomization file: expected one of {} in this directory",
                KUSTOMIZATION_FILES.join(", ")
            ),
        ));
    };
    let text = fs
        .read_to_string(&file)
        .map_err(|source| KustomizeError::Io {
            file: file.clone(),
            source,
        })?;
    // Read as kustomize reads it (Go's `sigs.k8s.io/yaml`): a key given
    // twice keeps its last value.
    let docs: Vec<Value> = terrace_yaml::tree::parse_stream_last_key_wins(
        &text,
        &file,
        terrace_yaml::tree::Schema::Kyaml,
    )
    .map_err(|d| KustomizeError::Yaml(Box::new(d)))?
    .iter()
    .map(terrace_yaml::tree::Node::to_json)
    .filter(|v| !v.is_null())
    .collect();
    let k = match docs.into_iter().next() {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(KustomizeError::invalid(
                &file,
                "a kustomization must be a mapping",
            ));
        }
    };
    // kustomize decodes the file with Go's JSON decoder, which matches
    // field names case-insensitively (`nameprefix:` is `namePrefix:`).
    let k: Map<String, Value> = k
        .into_iter()
        .map(|(key, v)| {
            let canonical = SUPPORTED
                .iter()
                .chain(UNSUPPORTED.iter())
                .find(|f| **f != key && f.eq_ignore_ascii_case(&key))
                .filter(|_| {
                    !SUPPORTED.contains(&key.as_str()) && !UNSUPPORTED.contains(&key.as_str())
                });
            (canonical.map_or(key, |f| (*f).to_owned()), v)
        })
        .collect();
    for key in k.keys() {
        if UNSUPPORTED.contains(&key.as_str()) {
            return Err(KustomizeError::Unsupported {
                file: file.clone(),
                field: key.clone(),
            });
        }
        if !SUPPORTED.contains(&key.as_str()) {
            return Err(KustomizeError::invalid(
                &file,
                format!(
                    "unknown field `{key}` (kustomize: invalid Kustomization: json: unknown field \"{key}\")"
                ),
            ));
        }
    }
    let mut k = k;
    crate::schema::canonical_names(&mut k);
    crate::schema::check(&k, &file)?;
    Ok((file, k))
}

fn strings(
    k: &Map<String, Value>,
    field: &str,
    file: &Path,
) -> Result<Vec<String>, KustomizeError> {
    match k.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    KustomizeError::invalid(file, format!("`{field}` must be a list of strings"))
                })
            })
            .collect(),
        Some(_) => Err(KustomizeError::invalid(
            file,
            format!("`{field}` must be a list"),
        )),
    }
}

fn is_remote(entry: &str) -> bool {
    entry.contains("://") || entry.starts_with("github.com/") || entry.starts_with("git@")
}

/// A file path within the kustomization root (the load restrictor).
/// As kustomize does, the check holds for the path as written and for the
/// file it really is once symlinks are resolved.
fn restricted(
    fs: &dyn Fs,
    dir: &Path,
    entry: &str,
    file: &Path,
) -> Result<PathBuf, KustomizeError> {
    let path = normalize(&dir.join(entry));
    let refused = || KustomizeError::Restricted {
        file: file.to_owned(),
        path: path.clone(),
        root: dir.to_owned(),
    };
    if !fs.restricts_loads() {
        return Ok(path);
    }
    if !path.starts_with(dir) {
        return Err(refused());
    }
    if let (Some(real), Some(real_dir)) = (fs.real_path(&path), fs.real_path(dir))
        && !real.starts_with(&real_dir)
    {
        return Err(refused());
    }
    Ok(path)
}

/// Reads `entry` (relative to `dir`), within the load restrictor.
pub(crate) fn read_restricted(
    fs: &dyn Fs,
    dir: &Path,
    entry: &str,
    file: &Path,
) -> Result<String, KustomizeError> {
    read(fs, &restricted(fs, dir, entry, file)?, file)
}

fn read(fs: &dyn Fs, path: &Path, file: &Path) -> Result<String, KustomizeError> {
    fs.read_to_string(path).map_err(io_error(file, path))
}

/// An I/O error reading `path`, reported against the kustomization `file`.
fn io_error<'a>(
    file: &'a Path,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> KustomizeError + 'a {
    move |source| KustomizeError::Io {
        file: file.to_owned(),
        source: std::io::Error::new(source.kind(), format!("{}: {source}", path.display())),
    }
}

/// The documents of a YAML stream, read with YAML 1.2's core schema (as
/// kustomize reads them: `no` and `y` are strings), empty ones left out.
pub(crate) fn yaml_documents(text: &str, path: &Path) -> Result<Vec<Value>, KustomizeError> {
    // Numbers as kyaml reads them: `defaultMode: 0400` is octal.
    let docs = terrace_yaml::tree::parse_stream_with(text, path, terrace_yaml::tree::Schema::Kyaml)
        .map_err(|d| KustomizeError::Yaml(Box::new(d)))?;
    Ok(docs
        .iter()
        .map(terrace_yaml::tree::Node::to_json)
        .filter(|v| !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty()))
        .collect())
}

fn parse_objects(text: &str, path: &Path) -> Result<Vec<Value>, KustomizeError> {
    let docs = yaml_documents(text, path)?;
    let mut out = Vec::new();
    for v in docs {
        // A `List` contributes its items.
        if v["kind"].as_str().is_some_and(|k| k.ends_with("List")) && v["items"].is_array() {
            out.extend(v["items"].as_array().cloned().unwrap_or_default());
        } else {
            out.push(v);
        }
    }
    for o in &mut out {
        // Annotation values are strings to kustomize: `port: 8080` and
        // `happy: true` come out as "8080" and "true".
        if let Some(a) = o
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
            .and_then(Value::as_object_mut)
        {
            for v in a.values_mut() {
                match v {
                    Value::Bool(b) => *v = Value::String(b.to_string()),
                    Value::Number(n) => *v = Value::String(n.to_string()),
                    _ => {}
                }
            }
        }
    }
    for o in &out {
        if o["kind"].as_str().is_none()
            || transform::name(o).is_empty() && o["metadata"]["generateName"].is_null()
        {
            return Err(KustomizeError::invalid(
                path,
                "every resource needs `kind` and `metadata.name`",
            ));
        }
    }
    Ok(out)
}

/// Everything one kustomization yields. `stack` holds the directories
/// being built, to refuse cycles.
fn accumulate(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    stack: &mut Walk,
) -> Result<Vec<Res>, KustomizeError> {
    accumulate_as(fs, dir, file, k, stack, false)
}

/// [`accumulate`] of a Kustomization, or (`component`) of a Component.
fn accumulate_as(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    stack: &mut Walk,
    component: bool,
) -> Result<Vec<Res>, KustomizeError> {
    check_kind(k, file, component)?;
    entered(dir, file, stack, |stack| {
        // kustomize's order: resources, own generators, components, own
        // transformers.
        stack.scope.push(stack.field_configs.len());
        configurations(fs, dir, file, k, stack)?;
        crds(fs, dir, file, k, stack)?;
        openapi(fs, dir, file, k, stack)?;
        let own_vars = crate::vars::parse(k, file)?;
        let mut acc = load_resources(fs, dir, file, k, stack)?;
        check_unique(&acc, file)?;
        generate_own(fs, dir, file, k, &mut acc, stack)?;
        apply_components(fs, dir, file, k, &mut acc, stack)?;
        transform_own(fs, dir, file, k, &mut acc, stack, None)?;
        // A var is bound to its object among what this kustomization
        // holds, after its transformers, as kustomize's MergeVars does:
        // more than one candidate is an error.
        for var in &own_vars {
            let matched: Vec<usize> = acc
                .iter()
                .enumerate()
                .filter(|(_, r)| var.names(&r.value, &r.names, &r.first_namespace))
                .map(|(i, _)| i)
                .collect();
            if matched.len() > 1 {
                let places: Vec<String> = matched
                    .iter()
                    .map(|&i| format!("`{}`", transform::namespace(&acc[i].value)))
                    .collect();
                return Err(KustomizeError::invalid(
                    file,
                    format!(
                        "var `{}` matches {} {} objects named `{}` (in namespaces {}; unable to disambiguate); give its objref a namespace",
                        var.name,
                        matched.len(),
                        var.kind,
                        var.object,
                        places.join(", ")
                    ),
                ));
            }
            if let Some(&i) = matched.first() {
                acc[i].var_names.push(var.name.clone());
            }
        }
        stack.vars.extend(own_vars);
        stack.scope.pop();
        Ok(acc)
    })
}

/// Applies a kustomization's (or component's) `components`, in order. A
/// component's resources join what was accumulated so far; then its own
/// generators, its own components, and its transformers run over
/// everything.
fn apply_components(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    acc: &mut Vec<Res>,
    stack: &mut Walk,
) -> Result<(), KustomizeError> {
    for entry in strings(k, "components", file)? {
        let path = normalize(&dir.join(&entry));
        let (c_file, c) = load(fs, &path)?;
        check_kind(&c, &c_file, true)?;
        entered(&path, file, stack, |stack| {
            openapi(fs, &path, &c_file, &c, stack)?;
            acc.extend(load_resources(fs, &path, &c_file, &c, stack)?);
            check_unique(acc, &c_file)?;
            generate_own(fs, &path, &c_file, &c, acc, stack)?;
            apply_components(fs, &path, &c_file, &c, acc, stack)?;
            transform_own(fs, &path, &c_file, &c, acc, stack, None)
        })?;
    }
    Ok(())
}

/// Runs `f` with `dir` on the stack of directories being built; a
/// directory already there is a cycle.
fn entered<T>(
    dir: &Path,
    file: &Path,
    stack: &mut Walk,
    f: impl FnOnce(&mut Walk) -> Result<T, KustomizeError>,
) -> Result<T, KustomizeError> {
    if stack.stack.iter().any(|d| d.as_path() == dir) {
        let mut path: Vec<String> = stack
            .stack
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        path.push(dir.display().to_string());
        return Err(KustomizeError::invalid(
            file,
            format!("cycle detected: {}", path.join(" -> ")),
        ));
    }
    stack.stack.push(dir.to_owned());
    let result = f(stack);
    stack.stack.pop();
    result
}

/// A kustomization's `configurations`: files of transformer
/// configuration. Their `nameReference` entries are supported (fields of
/// other kinds that name an object of a kind); any other section is
/// refused by name.
fn configurations(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    stack: &mut Walk,
) -> Result<(), KustomizeError> {
    for entry in strings(k, "configurations", file)? {
        let path = restricted(fs, dir, &entry, file)?;
        let text = read(fs, &path, file)?;
        let docs = yaml_documents(&text, &path)?;
        for doc in docs {
            let Some(config) = doc.as_object() else {
                return Err(KustomizeError::invalid(
                    &path,
                    "a configuration must be a mapping",
                ));
            };
            for (section, value) in config {
                let which = match section.as_str() {
                    "varReference" => {
                        stack.var_refs.extend(field_specs(value));
                        continue;
                    }
                    "nameReference" => None,
                    "namePrefix" => Some(FieldConfig::Prefix),
                    "nameSuffix" => Some(FieldConfig::Suffix),
                    "images" => Some(FieldConfig::Images),
                    "commonLabels" => Some(FieldConfig::CommonLabels),
                    "commonAnnotations" => Some(FieldConfig::CommonAnnotations),
                    "replicas" => Some(FieldConfig::Replicas),
                    _ => {
                        return Err(KustomizeError::Unsupported {
                            file: path.clone(),
                            field: format!("configurations: {section}"),
                        });
                    }
                };
                if let Some(which) = which {
                    stack
                        .field_configs
                        .extend(field_specs(value).into_iter().map(|spec| (which, spec)));
                    continue;
                }
                for entry in value.as_array().into_iter().flatten() {
                    let kind = entry["kind"].as_str().ok_or_else(|| {
                        KustomizeError::invalid(&path, "a nameReference needs a `kind`")
                    })?;
                    let specs = field_specs(&entry["fieldSpecs"]);
                    stack.name_refs.push(transform::NameRef {
                        kind: kind.to_owned(),
                        specs,
                    });
                }
            }
        }
    }
    Ok(())
}

/// A list of kustomize field specs (entries without a `path` are skipped).
fn field_specs(list: &Value) -> Vec<transform::FieldSpec> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(field_spec)
        .collect()
}

/// A kustomize field spec (`path`, optional `kind`, `group`, `create`).
fn field_spec(spec: &Value) -> Option<transform::FieldSpec> {
    Some(transform::FieldSpec {
        kind: spec["kind"].as_str().map(str::to_owned),
        group: spec["group"].as_str().map(str::to_owned),
        path: spec["path"]
            .as_str()?
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        create: spec["create"] == Value::Bool(true),
    })
}

/// A kustomization's `crds`: files of OpenAPI definitions (a map of type
/// name to `{Schema, Dependencies}`, JSON or YAML) of custom kinds. A
/// property marked `x-kubernetes-object-ref-kind` (with
/// `x-kubernetes-object-ref-api-version`) names an object of that kind, so
/// it follows the object's renames, as a `nameReference` does. A type
/// counts as a kind when it has `kind`, `apiVersion` and `metadata`
/// properties; its kind is the type name after the last `.`. `$ref`s are
/// followed into other types of the file.
fn crds(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    stack: &mut Walk,
) -> Result<(), KustomizeError> {
    for entry in strings(k, "crds", file)? {
        if is_remote(&entry) {
            return Err(KustomizeError::Unsupported {
                file: file.to_owned(),
                field: format!("crds: {entry} (remote definitions)"),
            });
        }
        let path = restricted(fs, dir, &entry, file)?;
        let text = read(fs, &path, file)?;
        let doc = yaml_documents(&text, &path)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let Some(types) = doc.as_object() else {
            return Err(KustomizeError::invalid(
                &path,
                "CRD definitions must be a map of type names to `{Schema, Dependencies}`",
            ));
        };
        for (name, def) in types {
            let props = &def["Schema"]["properties"];
            if ["kind", "apiVersion", "metadata"]
                .iter()
                .any(|p| props.get(p).is_none())
            {
                continue;
            }
            let kind = name.rsplit('.').next().unwrap_or(name);
            let mut walk = CrdWalk {
                types,
                kind,
                chain: vec![name.as_str()],
                budget: CRD_BUDGET,
                path: &path,
            };
            crd_refs(&mut walk, name, &mut Vec::new(), stack)?;
        }
    }
    Ok(())
}

/// How many properties one CRD kind's walk may visit: `$ref`s shared by
/// many properties multiply, and a hostile file could make that endless.
const CRD_BUDGET: usize = 100_000;

/// One CRD kind's walk through its types.
struct CrdWalk<'a> {
    types: &'a Map<String, Value>,
    kind: &'a str,
    /// The types being walked: a type that refers to itself is walked
    /// once (kustomize would recurse without end).
    chain: Vec<&'a str>,
    budget: usize,
    path: &'a Path,
}

/// The object references under the type `type_name` of a CRD kind, at
/// `at`.
fn crd_refs(
    w: &mut CrdWalk<'_>,
    type_name: &str,
    at: &mut Vec<String>,
    stack: &mut Walk,
) -> Result<(), KustomizeError> {
    let (types, kind, path) = (w.types, w.kind, w.path);
    let Some(props) = types
        .get(type_name)
        .and_then(|t| t["Schema"]["properties"].as_object())
    else {
        return Ok(());
    };
    for (prop, schema) in props {
        w.budget = w.budget.checked_sub(1).ok_or_else(|| {
            KustomizeError::invalid(
                path,
                format!("the types of {kind} refer to each other more than {CRD_BUDGET} times; simplify the definitions"),
            )
        })?;
        at.push(prop.clone());
        // Fields that take the common annotations, the common labels
        // (label selectors) and the name prefix (identities).
        for (marker, which) in [
            ("x-kubernetes-annotation", FieldConfig::CommonAnnotations),
            ("x-kubernetes-label-selector", FieldConfig::CommonLabels),
            ("x-kubernetes-identity", FieldConfig::Prefix),
        ] {
            if schema.get(marker).is_some() {
                stack.field_configs.push((
                    which,
                    transform::FieldSpec {
                        kind: Some(kind.to_owned()),
                        group: None,
                        path: at.clone(),
                        create: false,
                    },
                ));
            }
        }
        if schema["x-kubernetes-object-ref-api-version"].is_string()
            && let Some(referral) = schema["x-kubernetes-object-ref-kind"].as_str()
        {
            let key = schema["x-kubernetes-object-ref-name-key"]
                .as_str()
                .unwrap_or("name");
            let mut field = at.clone();
            field.push(key.to_owned());
            stack.name_refs.push(transform::NameRef {
                kind: referral.to_owned(),
                specs: vec![transform::FieldSpec {
                    kind: Some(kind.to_owned()),
                    group: None,
                    path: field,
                    create: false,
                }],
            });
        }
        if let Some((next, _)) = schema["$ref"].as_str().and_then(|r| types.get_key_value(r))
            && !w.chain.contains(&next.as_str())
            && w.chain.len() < 64
        {
            w.chain.push(next);
            crd_refs(w, next, at, stack)?;
            w.chain.pop();
        }
        at.pop();
    }
    Ok(())
}

/// A kustomization is used as a resource, a Component only under
/// `components`.
fn check_kind(k: &Map<String, Value>, file: &Path, component: bool) -> Result<(), KustomizeError> {
    let kind = k
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("Kustomization");
    // kustomize checks the apiVersion a kind is written with.
    if let Some(api) = k.get("apiVersion").and_then(Value::as_str) {
        let want = match kind {
            "Component" => "kustomize.config.k8s.io/v1alpha1",
            _ => "kustomize.config.k8s.io/v1beta1",
        };
        if api != want {
            return Err(KustomizeError::invalid(
                file,
                format!("apiVersion for {kind} should be {want}, not `{api}`"),
            ));
        }
    }
    let message = match (kind, component) {
        ("Component", true) | ("Kustomization", false) => return Ok(()),
        ("Component", false) => {
            "a Component can only be used under `components`, not as a resource".to_owned()
        }
        ("Kustomization", true) => {
            "listed under `components` but its kind is Kustomization (expected kind: Component)"
                .to_owned()
        }
        (other, _) => format!("unknown kustomization kind `{other}`"),
    };
    Err(KustomizeError::invalid(file, message))
}

/// The objects a kustomization's (or component's) `resources` and `bases`
/// name: files within its root, and directories built on their own.
fn load_resources(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    stack: &mut Walk,
) -> Result<Vec<Res>, KustomizeError> {
    let mut acc: Vec<Res> = Vec::new();
    let mut entries = strings(k, "resources", file)?;
    entries.extend(strings(k, "bases", file)?);
    for entry in entries {
        if is_remote(&entry) {
            return Err(KustomizeError::Unsupported {
                file: file.to_owned(),
                field: format!("resources: {entry} (remote bases)"),
            });
        }
        let path = normalize(&dir.join(&entry));
        if fs.is_dir(&path) {
            let (sub_file, sub) = load(fs, &path)?;
            acc.extend(accumulate(fs, &path, &sub_file, &sub, stack)?);
        } else if fs.is_file(&path) {
            let path = restricted(fs, dir, &entry, file)?;
            let text = read(fs, &path, file)?;
            acc.extend(parse_objects(&text, &path)?.into_iter().map(|v| {
                let mut r = Res::new(v);
                r.from = Source::File(path.clone());
                r
            }));
        } else {
            return Err(KustomizeError::invalid(
                file,
                format!(
                    "resource `{entry}` does not exist (looked for {})",
                    path.display()
                ),
            ));
        }
    }
    Ok(acc)
}

fn check_unique(acc: &[Res], file: &Path) -> Result<(), KustomizeError> {
    let mut seen = std::collections::HashSet::new();
    for r in acc {
        // The group is part of the identity (a core ServiceAccount and a
        // talos.dev one may share a name); the version is not.
        let group = transform::group_version(&r.value).0.to_owned();
        let ns = match transform::namespace(&r.value) {
            "" => "default",
            other => other,
        };
        let id = (
            group,
            transform::kind(&r.value).to_owned(),
            transform::name(&r.value).to_owned(),
            ns.to_owned(),
        );
        if !seen.insert(id.clone()) {
            return Err(KustomizeError::invalid(
                file,
                format!(
                    "may not add resource with an already registered id: {}/{} in namespace `{}`",
                    id.1, id.2, id.3
                ),
            ));
        }
    }
    Ok(())
}

/// A kustomization's (or component's) own generators.
fn generate_own(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    acc: &mut Vec<Res>,
    stack: &mut Walk,
) -> Result<(), KustomizeError> {
    let options = obj(k.get("generatorOptions").unwrap_or(&Value::Null));
    for g in k
        .get("configMapGenerator")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        generate(fs, dir, file, g, &options, false, None, acc)?;
    }
    for g in k
        .get("secretGenerator")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        generate(fs, dir, file, g, &options, true, None, acc)?;
    }
    // `helmCharts:` (kustomize's HelmChartInflationGenerator).
    let read_values = |entry: &str| -> Result<Value, KustomizeError> {
        let path = restricted(fs, dir, entry, file)?;
        let text = read(fs, &path, file)?;
        Ok(yaml_documents(&text, &path)?
            .into_iter()
            .next()
            .unwrap_or(Value::Null))
    };
    for (name, text) in crate::helm::inflate_all(fs, dir, file, k, &read_values)? {
        let source = PathBuf::from(format!("{} (helm chart {name})", file.display()));
        for v in parse_objects(&text, &source)? {
            let mut r = Res::new(v);
            r.from = Source::Generated {
                configured_in: file.to_owned(),
                kind: "HelmChartInflationGenerator",
                by: None,
            };
            acc.push(r);
        }
    }
    // `generators:`: builtin generator configurations, after the fields'.
    for (path, config) in plugin_configs(fs, dir, file, k, "generators", stack)? {
        let kind = config["kind"].as_str().unwrap_or_default().to_owned();
        let secret = match (config["apiVersion"].as_str(), kind.as_str()) {
            (Some("builtin"), "ConfigMapGenerator") => false,
            (Some("builtin"), "SecretGenerator") => true,
            (Some("builtin"), "IAMPolicyGenerator") => {
                acc.push(iam_policy_service_account(&config, &path)?);
                continue;
            }
            (Some("builtin"), other) => {
                return Err(KustomizeError::Unsupported {
                    file: path.clone(),
                    field: format!("generators: {other}"),
                });
            }
            _ => {
                return Err(KustomizeError::Unsupported {
                    file: path.clone(),
                    field: format!("generators: {kind} (only builtin generators)"),
                });
            }
        };
        // The same generator a `configMapGenerator` entry configures:
        // its name and namespace come from the configuration's
        // metadata.
        let mut g = config.as_object().cloned().unwrap_or_default();
        for field in ["apiVersion", "kind", "metadata"] {
            g.remove(field);
        }
        // Its own `name` and `namespace` first, else the metadata's.
        for field in ["name", "namespace"] {
            if let Some(v) = config["metadata"].get(field)
                && !g.contains_key(field)
            {
                g.insert(field.to_owned(), v.clone());
            }
        }
        let by = config["metadata"]["name"].as_str();
        generate(fs, dir, &path, &Value::Object(g), &options, secret, by, acc)?;
    }
    Ok(())
}

/// A kustomization's (or component's) own transformers, in kustomize's
/// order.
fn transform_own(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    acc: &mut Vec<Res>,
    stack: &mut Walk,
    config: Option<Transformation>,
) -> Result<(), KustomizeError> {
    let schema = stack.openapi.clone().flatten();
    // patchesStrategicMerge, patches
    for p in strings(k, "patchesStrategicMerge", file)? {
        let text = if !p.contains('\n') && fs.is_file(&normalize(&dir.join(&p))) {
            read_restricted(fs, dir, &p, file)?
        } else {
            p.clone()
        };
        let patches = parse_patch_docs(&text, file)?;
        if patches.is_empty() {
            return Err(KustomizeError::invalid(
                file,
                format!(
                    "the patchesStrategicMerge entry `{p}` holds no patch (kustomize refuses an empty one)"
                ),
            ));
        }
        for patch in patches {
            apply_smp(acc, &patch, None, &Value::Null, file, schema.as_deref())?;
        }
    }
    for p in k
        .get("patches")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = patch_text(fs, dir, file, p)?;
        let target = p.get("target");
        for doc in yaml_documents(&text, file)? {
            if let Value::Array(ops) = &doc {
                let target = target.ok_or_else(|| {
                    KustomizeError::invalid(file, "a JSON 6902 patch needs a `target`")
                })?;
                apply_6902(acc, target, ops, file)?;
            } else {
                apply_smp(acc, &doc, target, &p["options"], file, schema.as_deref())?;
            }
        }
    }
    check_shapes(acc, file)?;
    if let Some(ns) = k.get("namespace").and_then(Value::as_str) {
        for r in acc.iter_mut() {
            let before = transform::name(&r.value).to_owned();
            r.changed = true;
            transform::set_namespace(&mut r.value, ns);
            // A Namespace object takes the namespace's name: references
            // to it follow.
            let after = transform::name(&r.value).to_owned();
            if after != before {
                r.rename(after);
            }
        }
    }
    let prefix = k.get("namePrefix").and_then(Value::as_str).unwrap_or("");
    let suffix = k.get("nameSuffix").and_then(Value::as_str).unwrap_or("");
    if !prefix.is_empty() || !suffix.is_empty() {
        let prefix_specs = stack.field_specs(FieldConfig::Prefix);
        let suffix_specs = stack.field_specs(FieldConfig::Suffix);
        let strict = stack.plugin_specs.is_some();
        for r in acc.iter_mut() {
            if !transform::takes_prefix(&r.value) {
                continue;
            }
            let p = if names_affixed(&prefix_specs, &r.value, strict) {
                prefix
            } else {
                ""
            };
            let s = if names_affixed(&suffix_specs, &r.value, strict) {
                suffix
            } else {
                ""
            };
            if !p.is_empty() || !s.is_empty() {
                let new = format!("{p}{}{s}", transform::name(&r.value));
                r.rename(new);
                r.affixes.push((p.to_owned(), s.to_owned()));
            }
            // Other fields `configurations` name take the prefix (or
            // suffix) too.
            for (specs, before, after) in [(&prefix_specs, prefix, ""), (&suffix_specs, "", suffix)]
            {
                for spec in specs.iter().filter(|s| !s.is_name()) {
                    if !spec.selects(&r.value) {
                        continue;
                    }
                    for field in transform::strings_at(&mut r.value, &spec.path) {
                        if let Some(text) = field.as_str()
                            && (!before.is_empty() || !after.is_empty())
                        {
                            *field = Value::String(format!("{before}{text}{after}"));
                        }
                    }
                }
            }
        }
    }
    // Places `configurations` (and `crds`) add for common labels and
    // annotations.
    let label_specs: Vec<transform::FieldSpec> = stack
        .field_specs(FieldConfig::CommonLabels)
        .into_iter()
        .cloned()
        .collect();
    let configured = |r: &mut Res, specs: &[transform::FieldSpec], pairs: &Map<String, Value>| {
        for spec in specs {
            if spec.selects(&r.value) {
                let path: Vec<&str> = spec.path.iter().map(String::as_str).collect();
                transform::set_at_field_spec(&mut r.value, &path, spec.create, pairs);
            }
        }
    };
    if let Some(labels) = k.get("commonLabels").and_then(Value::as_object) {
        let labels = labels.clone();
        for r in acc.iter_mut() {
            transform::add_labels(&mut r.value, &labels, true, true)
                .map_err(|m| KustomizeError::invalid(file, m))?;
            configured(r, &label_specs, &labels);
        }
    }
    for l in k
        .get("labels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let pairs = obj(&l["pairs"]);
        let selectors = l["includeSelectors"] == Value::Bool(true);
        let templates = l["includeTemplates"] == Value::Bool(true);
        for r in acc.iter_mut() {
            transform::add_labels(&mut r.value, &pairs, selectors, templates)
                .map_err(|m| KustomizeError::invalid(file, m))?;
            if selectors {
                configured(r, &label_specs, &pairs);
            }
        }
        // `fields`: more places for the pairs, as kustomize field specs
        // (`path` with `/` and `[]` for each item of a list, an optional
        // `kind`, `group`, `version`, and `create`).
        for spec in l
            .get("fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(path) = spec["path"].as_str() else {
                return Err(KustomizeError::invalid(
                    file,
                    "labels[].fields entries need a `path`",
                ));
            };
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let create = spec["create"] == Value::Bool(true);
            // Its kind, group and version select objects exactly.
            let selector =
                Selector::new(spec, Match::Exact).map_err(|m| KustomizeError::invalid(file, m))?;
            for r in acc.iter_mut() {
                if selector.selects(r) {
                    transform::set_at_field_spec(&mut r.value, &segments, create, &pairs);
                }
            }
        }
    }
    if let Some(ann) = k.get("commonAnnotations").and_then(Value::as_object) {
        let ann = ann.clone();
        let specs: Vec<transform::FieldSpec> = stack
            .field_specs(FieldConfig::CommonAnnotations)
            .into_iter()
            .cloned()
            .collect();
        for r in acc.iter_mut() {
            transform::add_annotations(&mut r.value, &ann)
                .map_err(|m| KustomizeError::invalid(file, m))?;
            configured(r, &specs, &ann);
        }
    }
    for p in k
        .get("patchesJson6902")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = patch_text(fs, dir, file, p)?;
        let ops: Vec<Value> = match yaml_documents(&text, file)?.into_iter().next() {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(KustomizeError::invalid(
                    file,
                    "a patchesJson6902 patch must be a list of operations",
                ));
            }
        };
        let target = p.get("target").ok_or_else(|| {
            KustomizeError::invalid(file, "patchesJson6902 entries need a `target`")
        })?;
        apply_6902(acc, target, &ops, file)?;
    }
    check_shapes(acc, file)?;
    for rep in k
        .get("replicas")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = rep["name"].as_str().unwrap_or("");
        // kustomize's default places, then those `configurations` add (a
        // `ReplicaCountTransformer`'s own field specs replace both).
        let mut specs: Vec<transform::FieldSpec> = Vec::new();
        if stack.plugin_specs.is_none() {
            for kind in [
                "Deployment",
                "ReplicationController",
                "ReplicaSet",
                "StatefulSet",
            ] {
                specs.push(transform::FieldSpec {
                    kind: Some(kind.to_owned()),
                    group: None,
                    path: vec!["spec".to_owned(), "replicas".to_owned()],
                    create: true,
                });
            }
        }
        specs.extend(
            stack
                .field_specs(FieldConfig::Replicas)
                .into_iter()
                .cloned(),
        );
        let mut found = false;
        for spec in &specs {
            for r in acc.iter_mut() {
                if r.names.iter().any(|n| n == name) && spec.selects(&r.value) {
                    found = true;
                    transform::set_scalar_at(&mut r.value, &spec.path, spec.create, &rep["count"]);
                }
            }
        }
        if !found {
            let kinds: Vec<&str> = specs.iter().filter_map(|s| s.kind.as_deref()).collect();
            return Err(KustomizeError::invalid(
                file,
                format!(
                    "replicas: no resource named `{name}` among the kinds replicas apply to ({}); check the name, or add the kind with `configurations: replicas`",
                    kinds.join(", ")
                ),
            ));
        }
    }
    let images: Vec<Image> = k
        .get("images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| Image {
            name: i["name"].as_str().unwrap_or("").to_owned(),
            new_name: i["newName"].as_str().map(str::to_owned),
            new_tag: i["newTag"].as_str().map(str::to_owned),
            digest: i["digest"].as_str().map(str::to_owned),
        })
        .collect();
    if !images.is_empty() {
        let image_specs = stack.field_specs(FieldConfig::Images);
        for r in acc.iter_mut() {
            transform::set_images(&mut r.value, &images, &image_specs);
        }
    }
    if let Some(list) = k.get("replacements").and_then(Value::as_array) {
        crate::replace::run(fs, dir, file, list, acc)?;
        check_shapes(acc, file)?;
    }
    if stack.record_transformations {
        match config {
            Some(t) => note(acc, &t),
            None => note_fields(file, k, acc),
        }
    }
    builtin_transformers(fs, dir, file, k, acc, stack)
}

/// Whether an object's name takes the prefix (or suffix): always, unless
/// `configurations` name `metadata/name` for given kinds only (kustomize
/// then affixes only the names of those). A `transformers:`
/// configuration's own field specs (`strict`) are the only ones.
fn names_affixed(specs: &[&transform::FieldSpec], v: &Value, strict: bool) -> bool {
    if strict {
        return specs.iter().any(|s| s.is_name() && s.selects(v));
    }
    let mut names = specs.iter().filter(|s| s.is_name()).peekable();
    names.peek().is_none()
        || specs
            .iter()
            .filter(|s| s.is_name())
            .any(|s| (s.kind.is_none() && s.group.is_none()) || s.selects(v))
}

/// Records `t` on every resource, as kustomize annotates every resource a
/// transformer ran over (changed or not).
fn note(acc: &mut [Res], t: &Transformation) {
    for r in acc {
        r.transformations.push(t.clone());
    }
}

/// Records the builtin transformers a kustomization's fields configure, in
/// the order kustomize runs them: one per patch, label set, JSON patch,
/// replica and image entry, one for the other fields.
fn note_fields(file: &Path, k: &Map<String, Value>, acc: &mut [Res]) {
    let count = |field: &str| k.get(field).and_then(Value::as_array).map_or(0, Vec::len);
    let given = |field: &str| match k.get(field) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        Some(_) => true,
    };
    let labels = if given("labels") || given("commonLabels") {
        count("labels") + 1
    } else {
        0
    };
    let order = [
        (
            "PatchStrategicMergeTransformer",
            usize::from(given("patchesStrategicMerge")),
        ),
        ("PatchTransformer", count("patches")),
        ("NamespaceTransformer", usize::from(given("namespace"))),
        ("PrefixTransformer", usize::from(given("namePrefix"))),
        ("SuffixTransformer", usize::from(given("nameSuffix"))),
        ("LabelTransformer", labels),
        (
            "AnnotationsTransformer",
            usize::from(given("commonAnnotations")),
        ),
        ("PatchJson6902Transformer", count("patchesJson6902")),
        ("ReplicaCountTransformer", count("replicas")),
        ("ImageTagTransformer", count("images")),
        ("ReplacementTransformer", usize::from(given("replacements"))),
    ];
    for (kind, times) in order {
        let t = Transformation::builtin(file, kind);
        for _ in 0..times {
            note(acc, &t);
        }
    }
}

/// The configurations a kustomization's `transformers:` or `generators:`
/// lists, in order, each with the file it came from. As in kustomize, an
/// entry that reads as objects is an inline configuration; any other is a
/// file of configurations, or a directory whose kustomization is built and
/// whose resources are the configurations.
fn plugin_configs(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    field: &str,
    stack: &mut Walk,
) -> Result<Vec<(PathBuf, Value)>, KustomizeError> {
    let mut out = Vec::new();
    for entry in strings(k, field, file)? {
        if let Ok(docs) = yaml_documents(&entry, file)
            && !docs.is_empty()
            && docs.iter().all(|d| d.get("kind").is_some())
        {
            out.extend(docs.into_iter().map(|d| (file.to_owned(), d)));
            continue;
        }
        if is_remote(&entry) {
            return Err(KustomizeError::Unsupported {
                file: file.to_owned(),
                field: format!("{field}: {entry} (remote configurations)"),
            });
        }
        let path = normalize(&dir.join(&entry));
        if fs.is_dir(&path) {
            let (sub_file, sub) = load(fs, &path)?;
            let built = accumulate(fs, &path, &sub_file, &sub, stack)?;
            out.extend(built.into_iter().map(|r| (sub_file.clone(), r.value)));
        } else {
            let path = restricted(fs, dir, &entry, file)?;
            let text = read(fs, &path, file)?;
            out.extend(
                yaml_documents(&text, &path)?
                    .into_iter()
                    .map(|d| (path.clone(), d)),
            );
        }
    }
    Ok(out)
}

/// `transformers:`: files of builtin transformer configurations, run after
/// the kustomization's own, in order. The prefix/suffix, label,
/// annotation, image, replica and patch transformers are supported; any
/// other (and exec or container plugins) is refused by name.
fn builtin_transformers(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    k: &Map<String, Value>,
    acc: &mut Vec<Res>,
    stack: &mut Walk,
) -> Result<(), KustomizeError> {
    for (path, config) in plugin_configs(fs, dir, file, k, "transformers", stack)? {
        let kind = config["kind"].as_str().unwrap_or_default().to_owned();
        if config["apiVersion"] != "builtin" {
            return Err(KustomizeError::Unsupported {
                file: path.clone(),
                field: format!("transformers: {kind} (only builtin transformers)"),
            });
        }
        let meta = |field: &str| config["metadata"][field].as_str().map(str::to_owned);
        let by = Transformation {
            configured_in: path.clone(),
            kind: kind.clone(),
            name: meta("name"),
            namespace: meta("namespace"),
        };
        // The same transformers a kustomization's fields configure, with
        // the configuration's own field specs where it has them.
        let mut as_fields = Map::new();
        let mut own_specs: Vec<(FieldConfig, transform::FieldSpec)> = Vec::new();
        match kind.as_str() {
            "PrefixSuffixTransformer" => {
                // Its field specs are the only places it affixes (kustomize
                // refuses it without any).
                if !config["fieldSpecs"].is_array() {
                    return Err(KustomizeError::invalid(
                        &path,
                        "PrefixSuffixTransformer: fieldSpecs is not expected to be nil; give at least `- path: metadata/name`",
                    ));
                }
                let specs = field_specs(&config["fieldSpecs"]);
                own_specs.extend(specs.iter().map(|s| (FieldConfig::Prefix, s.clone())));
                own_specs.extend(specs.into_iter().map(|s| (FieldConfig::Suffix, s)));
                for (from, to) in [("prefix", "namePrefix"), ("suffix", "nameSuffix")] {
                    if let Some(v) = config.get(from) {
                        as_fields.insert(to.to_owned(), v.clone());
                    }
                }
            }
            "NamespaceTransformer" => {
                // Its field specs may only be `metadata/namespace` (set on
                // namespaced objects): other places are not supported.
                let plain = config["fieldSpecs"]
                    .as_array()
                    .is_none_or(|specs| specs.iter().all(|s| s["path"] == "metadata/namespace"));
                if !plain {
                    return Err(KustomizeError::Unsupported {
                        file: path.clone(),
                        field: "transformers: NamespaceTransformer field specs other than metadata/namespace".to_owned(),
                    });
                }
                let options = transform::NamespaceOptions {
                    unset_only: config["unsetOnly"] == Value::Bool(true),
                    subjects: transform::SubjectMode::parse(
                        config["setRoleBindingSubjects"]
                            .as_str()
                            .unwrap_or_default(),
                    )
                    .map_err(|m| KustomizeError::invalid(&path, m))?,
                    metadata_only: true,
                };
                let ns = config["metadata"]["namespace"].as_str().unwrap_or_default();
                for r in acc.iter_mut() {
                    r.changed = true;
                    transform::set_namespace_with(&mut r.value, ns, &options);
                }
                if stack.record_transformations {
                    note(acc, &by);
                }
                continue;
            }
            "PatchStrategicMergeTransformer" => {
                // Its patch files, then its inline patches.
                let mut list: Vec<Value> = config["paths"].as_array().cloned().unwrap_or_default();
                if let Some(inline) = config.get("patches").filter(|p| !p.is_null()) {
                    list.push(inline.clone());
                }
                as_fields.insert("patchesStrategicMerge".to_owned(), Value::Array(list));
            }
            "PatchJson6902Transformer" => {
                if config["target"]["name"].as_str().is_none_or(str::is_empty) {
                    return Err(KustomizeError::invalid(
                        &path,
                        "PatchJson6902Transformer: must specify the target name",
                    ));
                }
                let mut patch = Map::new();
                for (from, to) in [("target", "target"), ("path", "path"), ("jsonOp", "patch")] {
                    if let Some(v) = config.get(from) {
                        patch.insert(to.to_owned(), v.clone());
                    }
                }
                as_fields.insert(
                    "patchesJson6902".to_owned(),
                    Value::Array(vec![Value::Object(patch)]),
                );
            }
            "ReplacementTransformer" => {
                as_fields.insert(
                    "replacements".to_owned(),
                    config
                        .get("replacements")
                        .cloned()
                        .unwrap_or(Value::Array(Vec::new())),
                );
            }
            "ImageTagTransformer" => {
                own_specs.extend(
                    field_specs(&config["fieldSpecs"])
                        .into_iter()
                        .map(|s| (FieldConfig::Images, s)),
                );
                as_fields.insert(
                    "images".to_owned(),
                    Value::Array(vec![config["imageTag"].clone()]),
                );
            }
            "ReplicaCountTransformer" => {
                own_specs.extend(
                    field_specs(&config["fieldSpecs"])
                        .into_iter()
                        .map(|s| (FieldConfig::Replicas, s)),
                );
                as_fields.insert(
                    "replicas".to_owned(),
                    Value::Array(vec![config["replica"].clone()]),
                );
            }
            "PatchTransformer" => {
                let mut patch = Map::new();
                for field in ["path", "patch", "target", "options"] {
                    if let Some(v) = config.get(field) {
                        patch.insert(field.to_owned(), v.clone());
                    }
                }
                as_fields.insert(
                    "patches".to_owned(),
                    Value::Array(vec![Value::Object(patch)]),
                );
            }
            "LabelTransformer" | "AnnotationsTransformer" => {
                let pairs_field = if kind == "LabelTransformer" {
                    "labels"
                } else {
                    "annotations"
                };
                let pairs = obj(&config[pairs_field]);
                for spec in config["fieldSpecs"].as_array().into_iter().flatten() {
                    let spec_path: Vec<&str> = spec["path"]
                        .as_str()
                        .unwrap_or_default()
                        .split('/')
                        .filter(|p| !p.is_empty())
                        .collect();
                    let create = spec["create"] == Value::Bool(true);
                    for r in acc.iter_mut() {
                        let kind_ok = spec["kind"]
                            .as_str()
                            .is_none_or(|k| k == transform::kind(&r.value));
                        let group_ok = spec["group"]
                            .as_str()
                            .is_none_or(|g| g == transform::group_version(&r.value).0);
                        if kind_ok && group_ok {
                            transform::set_at_field_spec(&mut r.value, &spec_path, create, &pairs);
                        }
                    }
                }
                if stack.record_transformations {
                    note(acc, &by);
                }
                continue;
            }
            other => {
                return Err(KustomizeError::Unsupported {
                    file: path.clone(),
                    field: format!("transformers: {other}"),
                });
            }
        }
        let own = matches!(
            kind.as_str(),
            "PrefixSuffixTransformer" | "ImageTagTransformer" | "ReplicaCountTransformer"
        );
        let saved = std::mem::replace(&mut stack.plugin_specs, own.then_some(own_specs));
        let result = transform_own(fs, dir, &path, &as_fields, acc, stack, Some(by));
        stack.plugin_specs = saved;
        result?;
    }
    Ok(())
}

/// After a patch or a replacement every resource must still be an object
/// with a `metadata` map and a string name, or later transformers have
/// nothing to work on (kustomize refuses such a result too).
fn check_shapes(acc: &[Res], file: &Path) -> Result<(), KustomizeError> {
    for r in acc {
        let meta = r.value.get("metadata");
        let ok = r.value.is_object()
            && meta.is_some_and(Value::is_object)
            && meta
                .and_then(|m| m.get("name"))
                .is_none_or(Value::is_string);
        if !ok {
            return Err(KustomizeError::invalid(
                file,
                format!(
                    "after its patches and replacements, the resource first named `{}` is no longer an object with a `metadata` map and a string `metadata.name`",
                    r.names.first().map(String::as_str).unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

fn patch_text(fs: &dyn Fs, dir: &Path, file: &Path, p: &Value) -> Result<String, KustomizeError> {
    match (
        p.get("path").and_then(Value::as_str),
        p.get("patch").and_then(Value::as_str),
    ) {
        (Some(path), None) => read_restricted(fs, dir, path, file),
        (None, Some(inline)) => Ok(inline.to_owned()),
        _ => Err(KustomizeError::invalid(
            file,
            "a patch needs exactly one of `path` and `patch`",
        )),
    }
}

fn parse_patch_docs(text: &str, file: &Path) -> Result<Vec<Value>, KustomizeError> {
    yaml_documents(text, file)
}

/// Applies a strategic-merge patch to the objects it names (or its
/// `target` selects). The patch's name and kind change the object only
/// with `options.allowNameChange` / `allowKindChange`.
fn apply_smp(
    acc: &mut Vec<Res>,
    patch: &Value,
    target: Option<&Value>,
    options: &Value,
    file: &Path,
    schema: Option<&Schema>,
) -> Result<(), KustomizeError> {
    let selector = target.map(|t| patch_selector(t, file)).transpose()?;
    let mut hit = false;
    // `$patch: delete` at the top of a patch removes the resource.
    let delete = patch.get("$patch").and_then(Value::as_str) == Some("delete");
    let mut doomed = Vec::new();
    // An untargeted patch names its resource: by its current or original
    // kind and any of its names (a later patch still finds what an earlier
    // one renamed), in the patch's namespace; failing that, the one
    // resource of that kind and name in any namespace. Several is an
    // error, as in kustomize.
    let untargeted: Vec<usize> = if selector.is_none() {
        let named: Vec<usize> = acc
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                let (kind, name) = (transform::kind(patch), transform::name(patch));
                let current = transform::kind(&r.value);
                // Its ids: the current kind with any name it has had, the
                // original kind with its names from before the kind
                // changed (here: the original name, as kind and name
                // change together in one patch).
                (current == kind && r.names.iter().any(|n| n == name))
                    || (r.first_kind == kind
                        && if current == r.first_kind {
                            r.names.iter().any(|n| n == name)
                        } else {
                            r.names.first().is_some_and(|n| n == name)
                        })
            })
            .map(|(i, _)| i)
            .collect();
        let exact: Vec<usize> = named
            .iter()
            .copied()
            .filter(|&i| {
                transform::same_namespace(
                    transform::namespace(patch),
                    transform::namespace(&acc[i].value),
                )
            })
            .collect();
        // Among several, those of the patch's own apiVersion (kustomize
        // matches the group and version too).
        let exact = if exact.len() > 1 {
            exact
                .into_iter()
                .filter(|&i| acc[i].value["apiVersion"] == patch["apiVersion"])
                .collect()
        } else {
            exact
        };
        if exact.len() > 1 {
            return Err(KustomizeError::invalid(
                file,
                format!(
                    "the patch for {} `{}` matches {} resources that have had that name (multiple matches; failed to find unique target); give the patch a target",
                    transform::kind(patch),
                    transform::name(patch),
                    exact.len()
                ),
            ));
        } else if !exact.is_empty() {
            exact
        } else if named.len() > 1 {
            return Err(KustomizeError::invalid(
                file,
                format!(
                    "the patch for {} `{}` matches {} resources in different namespaces (failed to find unique target); give the patch a namespace or a target",
                    transform::kind(patch),
                    transform::name(patch),
                    named.len()
                ),
            ));
        } else {
            named
        }
    } else {
        Vec::new()
    };
    for (index, r) in acc.iter_mut().enumerate() {
        let selected = match &selector {
            Some(t) => t.selects(r),
            None => untargeted.contains(&index),
        };
        if !selected {
            continue;
        }
        hit = true;
        if delete {
            doomed.push(index);
            continue;
        }
        let mut p = patch.clone();
        if options["allowNameChange"] == Value::Bool(true)
            || options["allowKindChange"] == Value::Bool(true)
        {
            r.changed = true;
        }
        let new_name = (options["allowNameChange"] == Value::Bool(true))
            .then(|| transform::name(patch).to_owned())
            .filter(|n| !n.is_empty());
        if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("name");
            if target.is_some() {
                m.remove("namespace");
            }
        }
        if let Some(m) = p.as_object_mut()
            && options["allowKindChange"] != Value::Bool(true)
        {
            m.remove("kind");
            m.remove("apiVersion");
        }
        merge_strategic_with(&mut r.value, &p, schema);
        if let Some(new) = new_name {
            r.rename(new);
        }
    }
    for index in doomed.into_iter().rev() {
        acc.remove(index);
    }
    if !hit && target.is_none() {
        return Err(KustomizeError::invalid(
            file,
            format!(
                "no resource matches the patch for {} `{}`",
                transform::kind(patch),
                transform::name(patch)
            ),
        ));
    }
    Ok(())
}

fn patch_selector(target: &Value, file: &Path) -> Result<Selector, KustomizeError> {
    Selector::new(target, Match::Regex)
        .map_err(|m| KustomizeError::invalid(file, format!("patch target: {m}")))
}

fn apply_6902(
    acc: &mut [Res],
    target: &Value,
    ops: &[Value],
    file: &Path,
) -> Result<(), KustomizeError> {
    let selector = patch_selector(target, file)?;
    for r in acc.iter_mut() {
        if selector.selects(r) {
            r.changed = true;
            let before = transform::name(&r.value).to_owned();
            apply_json6902(&mut r.value, ops).map_err(|m| {
                KustomizeError::invalid(
                    file,
                    format!(
                        "patch on {} `{}`: {m}",
                        transform::kind(&r.value),
                        transform::name(&r.value)
                    ),
                )
            })?;
            // A patch that renames is followed by references, as kustomize
            // follows every name an object has had.
            let after = transform::name(&r.value).to_owned();
            if after != before && r.value["metadata"].is_object() {
                r.rename(after);
            }
        }
    }
    Ok(())
}

/// The ServiceAccount the builtin `IAMPolicyGenerator` makes: on GKE, one
/// bound by annotation to a Google service account (the only cloud
/// kustomize supports).
fn iam_policy_service_account(config: &Value, path: &Path) -> Result<Res, KustomizeError> {
    let cloud = config["cloud"].as_str().unwrap_or_default();
    if cloud != "gke" {
        return Err(KustomizeError::invalid(
            path,
            format!("IAMPolicyGenerator: cloud provider `{cloud}` not supported yet (only `gke`)"),
        ));
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let (account, project) = (
        text(&config["serviceAccount"]["name"]),
        text(&config["serviceAccount"]["projectId"]),
    );
    let mut metadata = json!({
        "annotations": {
            "iam.gke.io/gcp-service-account": format!("{account}@{project}.iam.gserviceaccount.com"),
        },
        "name": text(&config["kubernetesService"]["name"]),
    });
    if let Some(ns) = config["kubernetesService"]["namespace"]
        .as_str()
        .filter(|ns| !ns.is_empty())
    {
        metadata["namespace"] = json!(ns);
    }
    let mut r =
        Res::new(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}));
    r.from = Source::Generated {
        configured_in: path.to_owned(),
        kind: "IAMPolicyGenerator",
        by: config["metadata"]["name"].as_str().map(str::to_owned),
    };
    Ok(r)
}

/// Where a generated object comes from, for `originAnnotations`.
fn generated_by(file: &Path, secret: bool, by: Option<&str>) -> Source {
    Source::Generated {
        configured_in: file.to_owned(),
        kind: if secret {
            "SecretGenerator"
        } else {
            "ConfigMapGenerator"
        },
        by: by.map(str::to_owned),
    }
}

/// `key=value` of a literal (quotes around the value are dropped).
fn literal(s: &str, file: &Path) -> Result<(String, String), KustomizeError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| KustomizeError::invalid(file, format!("literal `{s}` is not KEY=VALUE")))?;
    let v = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
        .unwrap_or(v);
    Ok((k.to_owned(), v.to_owned()))
}

/// Base64 as kyaml writes generated data: standard encoding, and once it
/// is 70 characters or longer, lines of 70 each ended by a newline (the
/// content hash, and so the generated name, is taken over this text).
fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    const LINE: usize = 70;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    if encoded.len() < LINE {
        return encoded;
    }
    let mut out = String::with_capacity(encoded.len() + encoded.len() / LINE + 1);
    for line in encoded.as_bytes().chunks(LINE) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn generate(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    g: &Value,
    global: &Map<String, Value>,
    secret: bool,
    by: Option<&str>,
    acc: &mut Vec<Res>,
) -> Result<(), KustomizeError> {
    let name = g["name"]
        .as_str()
        .ok_or_else(|| KustomizeError::invalid(file, "a generator needs a `name`"))?
        .to_owned();
    // Keys in the order kustomize adds them: literals, env files, files.
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |key: String, value: Vec<u8>| {
        if entries.iter().any(|(k, _)| *k == key) {
            let kind = if secret { "secret" } else { "configmap" };
            return Err(KustomizeError::invalid(
                file,
                format!("{kind} {name} illegally repeats the key `{key}`"),
            ));
        }
        entries.push((key, value));
        Ok(())
    };
    for l in g["literals"].as_array().into_iter().flatten() {
        let (k, v) = literal(l.as_str().unwrap_or(""), file)?;
        add(k, v.into_bytes())?;
    }
    let mut env_files: Vec<String> = g["envs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if let Some(e) = g["env"].as_str() {
        env_files.push(e.to_owned());
    }
    // kustomize downloads a generator source given as a URL; terrace
    // reads only files of the project.
    let generator = if secret {
        "secretGenerator"
    } else {
        "configMapGenerator"
    };
    let remote = |source: &str, field: &str| -> Result<(), KustomizeError> {
        if is_remote(source) {
            return Err(KustomizeError::Unsupported {
                file: file.to_owned(),
                field: format!(
                    "{generator} {field}: {source} (remote files; download it into the repository)"
                ),
            });
        }
        Ok(())
    };
    for e in env_files {
        remote(&e, "envs")?;
        let text = read_restricted(fs, dir, &e, file)?;
        for line in text.lines() {
            // Leading space goes; the value keeps the rest as written.
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            add(k.trim().to_owned(), v.as_bytes().to_vec())?;
        }
    }
    for f in g["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let (key, path) = match f.split_once('=') {
            Some((k, p)) => (k.to_owned(), p),
            None => (
                Path::new(f)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                f,
            ),
        };
        remote(path, "files")?;
        let path = restricted(fs, dir, path, file)?;
        let bytes = fs.read(&path).map_err(io_error(file, &path))?;
        add(key, bytes)?;
    }
    // A Secret holds everything base64-encoded; a ConfigMap holds text in
    // `data` and anything that is not UTF-8 in `binaryData`.
    let mut data = Map::new();
    let mut binary = Map::new();
    for (k, v) in entries {
        match String::from_utf8(v) {
            Ok(text) if !secret => {
                data.insert(k, Value::String(text));
            }
            Ok(text) => {
                data.insert(k, Value::String(base64(text.as_bytes())));
            }
            Err(e) if secret => {
                data.insert(k, Value::String(base64(e.as_bytes())));
            }
            Err(e) => {
                binary.insert(k, Value::String(base64(e.as_bytes())));
            }
        }
    }
    let local = obj(&g["options"]);
    let pick = |key: &str| local.get(key).or_else(|| global.get(key)).cloned();
    // Either level can turn the hash off; neither can turn it back on.
    let disable_hash = [
        local.get("disableNameSuffixHash"),
        global.get("disableNameSuffixHash"),
    ]
    .contains(&Some(&Value::Bool(true)));
    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(name.clone()));
    if let Some(ns) = g["namespace"].as_str() {
        metadata.insert("namespace".into(), Value::String(ns.to_owned()));
    }
    let mut labels = obj(global.get("labels").unwrap_or(&Value::Null));
    labels.extend(obj(local.get("labels").unwrap_or(&Value::Null)));
    if !labels.is_empty() {
        metadata.insert("labels".into(), Value::Object(labels));
    }
    let mut annotations = obj(global.get("annotations").unwrap_or(&Value::Null));
    annotations.extend(obj(local.get("annotations").unwrap_or(&Value::Null)));
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    let kind = if secret { "Secret" } else { "ConfigMap" };
    let mut value = json!({"apiVersion": "v1", "kind": kind, "metadata": metadata});
    if !data.is_empty() {
        value["data"] = Value::Object(data.clone());
    }
    if !binary.is_empty() {
        value["binaryData"] = Value::Object(binary.clone());
    }
    if secret {
        value["type"] = g.get("type").cloned().unwrap_or_else(|| json!("Opaque"));
    }
    if pick("immutable") == Some(Value::Bool(true)) {
        value["immutable"] = Value::Bool(true);
    }
    let behavior = g["behavior"].as_str().unwrap_or("create");
    let ns = g["namespace"].as_str().unwrap_or("");
    let existing = acc.iter_mut().find(|r| {
        transform::kind(&r.value) == kind
            && r.names.contains(&name)
            // Either the namespace it was generated with, or its current one.
            && (transform::same_namespace(&r.first_namespace, ns)
                || transform::same_namespace(transform::namespace(&r.value), ns))
    });
    match (behavior, existing) {
        ("create", Some(_)) => Err(KustomizeError::invalid(
            file,
            format!("{kind} `{name}` already exists; use `behavior: merge` or `behavior: replace`"),
        )),
        ("create", None) => {
            let mut r = Res::new(value);
            r.from = generated_by(file, secret, by);
            r.hash = !disable_hash;
            acc.push(r);
            Ok(())
        }
        ("merge" | "replace", None) => Err(KustomizeError::invalid(
            file,
            format!("{kind} `{name}` does not exist to {behavior}; generate it in a base first"),
        )),
        ("merge", Some(r)) => {
            let target = r.value.as_object_mut().expect("objects are maps");
            for (field, entries) in [("data", data), ("binaryData", binary)] {
                if entries.is_empty() {
                    continue;
                }
                let merged = target
                    .entry(field)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(m) = merged.as_object_mut() {
                    m.extend(entries);
                }
            }
            for field in ["labels", "annotations"] {
                if let Some(pairs) = value["metadata"][field].as_object() {
                    let into = r.value["metadata"].as_object_mut().and_then(|m| {
                        m.entry(field)
                            .or_insert_with(|| Value::Object(Map::new()))
                            .as_object_mut()
                    });
                    if let Some(into) = into {
                        into.extend(pairs.clone());
                    }
                }
            }
            r.hash = r.hash && !disable_hash;
            Ok(())
        }
        ("replace", Some(r)) => {
            // The content is replaced; the object keeps its metadata (the
            // name the base's prefix gave it, labels, annotations), with
            // the new generator's labels and annotations over them.
            let (names, first_namespace) = (r.names.clone(), r.first_namespace.clone());
            let mut metadata = r.value["metadata"].clone();
            for field in ["labels", "annotations"] {
                if let Some(pairs) = value["metadata"][field].as_object() {
                    let into = metadata.as_object_mut().and_then(|m| {
                        m.entry(field)
                            .or_insert_with(|| Value::Object(Map::new()))
                            .as_object_mut()
                    });
                    if let Some(into) = into {
                        into.extend(pairs.clone());
                    }
                }
            }
            let mut value = value;
            value["metadata"] = metadata;
            // The replacing generator is where it now comes from.
            let from = generated_by(file, secret, by);
            let affixes = std::mem::take(&mut r.affixes);
            let transformations = std::mem::take(&mut r.transformations);
            *r = Res::new(value);
            r.transformations = transformations;
            r.names = names;
            r.first_namespace = first_namespace;
            r.from = from;
            r.affixes = affixes;
            r.hash = !disable_hash;
            Ok(())
        }
        (other, _) => Err(KustomizeError::invalid(
            file,
            format!("generator behavior `{other}` must be create, merge or replace"),
        )),
    }
}

/// The suffix kustomize computes for a generated ConfigMap or Secret: over
/// its kind, data (and type, binaryData, stringData), with an empty name.
fn content_hash(v: &Value) -> String {
    let mut m = serde_json::Map::new();
    let field = |f: &str| -> Value {
        match &v[f] {
            Value::Null => Value::String(String::new()),
            other => other.clone(),
        }
    };
    m.insert("data".into(), field("data"));
    m.insert("kind".into(), Value::String(transform::kind(v).to_owned()));
    m.insert("name".into(), Value::String(String::new()));
    if transform::kind(v) == "Secret" {
        if v["stringData"].is_object() {
            m.insert("stringData".into(), v["stringData"].clone());
        }
        m.insert("type".into(), field("type"));
    } else if v["binaryData"].is_object() {
        m.insert("binaryData".into(), v["binaryData"].clone());
    }
    let json = sorted_json(&Value::Object(m));
    let hex: String = sha2::Sha256::digest(json.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex[..10]
        .chars()
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            other => other,
        })
        .collect()
}

/// JSON with object keys sorted, as Go's encoder writes maps.
fn sorted_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", go_string(k), sorted_json(&m[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(sorted_json).collect::<Vec<_>>().join(",")
        ),
        Value::String(s) => go_string(s),
        other => other.to_string(),
    }
}

/// A JSON string as Go's encoder writes it (HTML characters escaped).
fn go_string(s: &str) -> String {
    Value::String(s.to_owned())
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// kustomize's legacy order: kinds by a fixed list, then by GVK, namespace
/// and name.
/// Kinds the legacy sort puts first and last, unless `legacySortOptions`
/// names others.
const ORDER_FIRST: [&str; 22] = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];
const ORDER_LAST: [&str; 2] = [
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

fn legacy_key(v: &Value, first: &[String], last: &[String]) -> (i32, String, String) {
    let kind = transform::kind(v);
    let rank = if let Some(i) = first.iter().position(|k| *k == kind) {
        i as i32 - first.len() as i32
    } else if let Some(i) = last.iter().position(|k| *k == kind) {
        1 + i as i32
    } else {
        0
    };
    let (group, version) = transform::group_version(v);
    let or = |s: &str, d: &str| {
        if s.is_empty() {
            d.to_owned()
        } else {
            s.to_owned()
        }
    };
    let gvk = format!(
        "{}_{}_{}",
        or(group, "~G"),
        or(version, "~V"),
        or(kind, "~K")
    );
    let id = format!(
        "{gvk}|{}|{}",
        or(transform::namespace(v), "~X"),
        or(transform::name(v), "~N")
    );
    (rank, gvk, id)
}
