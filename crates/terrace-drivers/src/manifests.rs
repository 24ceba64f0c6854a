//! The `manifests` kind: a directory of Kubernetes YAML, every string
//! passed through `${...}` substitution (`${var.NAME}`, `${env}`,
//! `${input.NAME}`), applied to a cluster target.
//!
//! A cluster target bound to a kubeconfig (or in-cluster) is a live
//! cluster: objects are applied there by [`crate::live`]. Without a
//! binding it is the embedded default: each object is written to
//! `.terrace/rendered/<env>/<cluster>/<unit>/<group>_<version>_<kind>_<namespace>_<name>.yaml`,
//! and files of objects that no longer render are removed on apply.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{Value, json};
use terrace_core::ValuePath;
use terrace_core::config::{TargetKind, UNIT_FILE, WORK_DIR};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{
    Applied, ApplyContext, BoxFuture, DestroyContext, Driver, DriverError, Rendered,
    RenderedDocument, UnitContext,
};
use terrace_core::expr::{self, ContentScope, SecretError};
use terrace_core::kind::TypedKind;
use terrace_core::plan::UnitPlan;
use terrace_core::secrets::looks_encrypted;
use terrace_core::state::ObjectRef;

use crate::clean_relative;
use crate::fileset::{self, DesiredFile, DesiredSet};
use crate::live;
use terrace_kube::{ClusterPool, Endpoint};

/// The driver of a kind that yields Kubernetes objects: its `source`
/// renders them; planning, rendering and applying on the cluster target
/// are the same for every such kind.
#[derive(Debug, Clone)]
pub struct ObjectsDriver {
    /// The connections to live clusters, shared by the registry's object
    /// kinds for as long as it lives.
    pub clusters: std::sync::Arc<ClusterPool>,
    pub source: std::sync::Arc<dyn ObjectSource>,
}

/// What a kind's render gives besides its objects.
#[derive(Debug, Default)]
pub struct Objects {
    pub objects: Vec<Object>,
    /// Outputs the kind adds to the unit's (a chart's version).
    pub outputs: serde_json::Map<String, Value>,
    /// Lines for the plan (a chart version that moved).
    pub notes: Vec<String>,
    /// The namespace objects without one land in, instead of the
    /// cluster's default (a Helm release's namespace).
    pub namespace: Option<String>,
    /// Objects a live apply deletes whoever made them (Helm's release
    /// records, on request).
    pub remove: Vec<terrace_kube::sync::Removal>,
}

/// The live cluster a plan is made for (a render has none): a source may
/// ask it what it serves (Helm's `.Capabilities`).
#[derive(Debug, Clone, Copy)]
pub struct LiveTarget<'a> {
    pub clusters: &'a ClusterPool,
    pub name: &'a str,
    pub endpoint: &'a Endpoint,
}

/// Where a kind's objects come from.
pub trait ObjectSource: Send + Sync + std::fmt::Debug {
    fn objects<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
        live: Option<LiveTarget<'a>>,
    ) -> BoxFuture<'a, Result<Objects, DriverError>>;

    /// Whether it reads files only through `terrace_fs` and runs no
    /// program (see [`Driver::plan_is_reusable`]).
    fn reads_through_terrace_fs(&self) -> bool {
        false
    }
}

/// A source rendered in process by a function.
#[derive(Debug)]
pub struct InProcess {
    pub render: fn(&UnitContext<'_>) -> Result<Vec<Object>, DriverError>,
    pub reads_through_terrace_fs: bool,
}

impl ObjectSource for InProcess {
    fn objects<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
        _live: Option<LiveTarget<'a>>,
    ) -> BoxFuture<'a, Result<Objects, DriverError>> {
        let rendered = (self.render)(ctx);
        Box::pin(async move {
            Ok(Objects {
                objects: rendered?,
                ..Objects::default()
            })
        })
    }

    fn reads_through_terrace_fs(&self) -> bool {
        self.reads_through_terrace_fs
    }
}

/// The `manifests` kind.
pub fn kind(clusters: &std::sync::Arc<ClusterPool>) -> TypedKind<ManifestsSettings> {
    TypedKind::new(
        "manifests",
        "A directory of Kubernetes YAML with `${...}` substitution.",
        Some(TargetKind::Cluster),
        ObjectsDriver::in_process(clusters, render_objects, true),
    )
}

/// One rendered object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// `apps/v1 Deployment default/web`.
    pub address: String,
    /// The same, typed.
    pub object: ObjectRef,
    /// The file it came from, relative to the project root.
    pub source: String,
    pub value: Value,
    /// The file name the embedded target gives it.
    pub file_name: String,
    /// The secrets files whose values it holds (itself, when it comes from
    /// a SOPS-encrypted file); empty for plain objects.
    pub secret_sources: Vec<PathBuf>,
    /// The encrypted file whose rule seals it, when it holds no other
    /// secret.
    pub rule_from: Option<PathBuf>,
    /// Secrets files the build read whose values the object may hold
    /// without its provenance saying so (a kustomize generator reading a
    /// SOPS file, a replacement); `mark_secrets` searches it for them.
    pub secret_scope: Vec<PathBuf>,
}

impl Object {
    pub fn is_sensitive(&self) -> bool {
        !self.secret_sources.is_empty()
    }

    /// Plans show no diff of it: it holds a secret, or it is a `Secret`
    /// (whatever its provenance says).
    pub fn hides_diff(&self) -> bool {
        self.is_sensitive()
            || (self.value.get("kind").and_then(Value::as_str) == Some("Secret")
                && self.value.get("apiVersion").and_then(Value::as_str) == Some("v1"))
    }
}

/// The net under provenance: an object in which a secret value appears —
/// however kustomize's generators, patches or replacements moved it there
/// — is sealed to that value's file; an object whose name or namespace
/// holds one is refused (names are never sealed).
fn mark_secrets(ctx: &UnitContext<'_>, objects: &mut [Object]) -> Result<(), DriverError> {
    let Some(secrets) = ctx.secrets else {
        return Ok(());
    };
    // The files this unit read, so what is sealed does not depend on which
    // other units happened to run first.
    let mut scope: Vec<PathBuf> = ctx
        .unit
        .sensitive_inputs
        .values()
        .flatten()
        .map(PathBuf::from)
        .collect();
    for o in objects.iter() {
        scope.extend(o.secret_sources.iter().cloned());
        scope.extend(o.secret_scope.iter().cloned());
    }
    scope.sort();
    scope.dedup();
    let plain = secrets.plaintexts_of(&scope);
    for o in objects.iter_mut().filter(|_| !plain.is_empty()) {
        let meta = o.value.get("metadata");
        for field in ["name", "namespace", "generateName"] {
            if let Some(v) = meta.and_then(|m| m.get(field)).and_then(Value::as_str)
                && plain.found_in_name(v)
            {
                return Err(Diagnostic::new(format!(
                    "`metadata.{field}` of an object ({}) holds a secret value; names are never sealed",
                    plain.redact(&o.address)
                ))
                .in_file(&o.source)
                .with_hint("keep secrets out of names, namespaces and labels; use them only in values (`data`, `stringData`, `env`)")
                .into());
            }
        }
        let found = plain.sources_in(&o.value);
        let mut added = false;
        for f in found {
            if !o.secret_sources.contains(&f) {
                o.secret_sources.push(f);
                added = true;
            }
        }
        if added {
            // Values of several origins: every value is encrypted.
            o.rule_from = None;
        }
    }
    // A Secret is sealed whatever its provenance says: one written in the
    // clear is sealed to its file's creation rule.
    for o in objects.iter_mut() {
        if o.hides_diff() && !o.is_sensitive() {
            o.secret_sources.push(PathBuf::from(&o.source));
        }
    }
    Ok(())
}

pub(crate) fn secret_error(e: SecretError, file: &str) -> DriverError {
    let cause = e.cause();
    let (message, hint) = match e {
        SecretError::Failed { message, hint } | SecretError::NoKeys { message, hint } => {
            (message, hint)
        }
        other => (other.to_string(), None),
    };
    let mut d = Diagnostic::new(message).in_file(file).because(cause);
    if let Some(h) = hint {
        d = d.with_hint(h);
    }
    d.into()
}

/// Renders a unit's objects, in file order then document order.
pub fn render_objects(ctx: &UnitContext<'_>) -> Result<Vec<Object>, DriverError> {
    let settings: ManifestsSettings = settings(ctx)?;
    let unit_dir = &ctx.unit.dir;
    let rel = settings.path.as_deref().unwrap_or(".");
    let dir = clean_relative(unit_dir, rel).ok_or_else(|| {
        Diagnostic::new(format!("manifests path `{rel}` leads outside the project"))
            .in_file(format!("{unit_dir}/{UNIT_FILE}"))
            .with_hint("point `manifests.path` at a directory inside the project")
    })?;
    let abs = ctx.root.join(&dir);
    if !terrace_fs::is_dir(&abs) {
        return Err(
            Diagnostic::new(format!("manifests directory `{dir}` does not exist"))
                .in_file(format!("{unit_dir}/{UNIT_FILE}"))
                .with_hint("create it, or set `manifests.path` in unit.yaml")
                .into(),
        );
    }
    let mut files = Vec::new();
    collect_yaml(&abs, &dir, &mut files)?;
    files.retain(|f| *f != format!("{unit_dir}/{UNIT_FILE}") && *f != UNIT_FILE);
    files.sort();

    let scope = ContentScope {
        env: ctx.environment,
        vars: ctx.vars,
        inputs: &ctx.unit.inputs,
        unknown_inputs: &ctx.unit.unknown_inputs,
        sensitive_inputs: &ctx.unit.sensitive_inputs,
        secrets: ctx.secrets,
    };
    // With `substitute:`, files use Flux's `${VAR}` instead of terrace's
    // expressions.
    let substitution = settings
        .substitute
        .as_ref()
        .map(|s| crate::substitute::Substitution::load(ctx, s))
        .transpose()?;
    let mut objects: Vec<Object> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (file, read) in files.iter().zip(read_and_parse(ctx.root, &files)) {
        let (src, parsed) = read?;
        let file = file.clone();
        // A SOPS-encrypted file is decrypted in memory; its keys are plain,
        // so errors are still located in the file as written.
        let encrypted = parsed.is_none();
        if encrypted {
            // What is rendered from a secret is sealed anew each time and
            // depends on keys outside the project: never reused.
            terrace_fs::watch::taint();
        }
        let docs = match (parsed, ctx.secrets) {
            (Some(docs), _) => docs?,
            (None, None) => {
                return Err(Diagnostic::new(
                    "this file is SOPS-encrypted, and secrets are not available here",
                )
                .in_file(&file)
                .into());
            }
            (None, Some(secrets)) => secrets
                .open_documents(Path::new(&file), &src)
                .map_err(|e| secret_error(e, &file))?
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .filter(|(_, v)| !v.is_null())
                .collect(),
        };
        for (doc, value) in docs {
            let mut evaluated = match &substitution {
                Some(sub) => {
                    let mut value = value;
                    let files = sub.apply(&mut value).map_err(|e| {
                        let loc = terrace_yaml::locate(&src, doc, &ValuePath::root(), None);
                        DriverError::from(
                            Diagnostic::new(format!("substitution: {e}"))
                                .in_file(&file)
                                .at(loc)
                                .with_hint("set the variable in `substitute` of unit.yaml, give it a default (`${VAR:=default}`), or write `$${` for a literal `${`"),
                        )
                    })?;
                    expr::Evaluated {
                        value,
                        unknown: false,
                        secrets: files.iter().map(|f| f.display().to_string()).collect(),
                    }
                }
                None => expr::eval(&value, &ValuePath::root(), &scope).map_err(|e| {
                    let loc = terrace_yaml::locate(&src, doc, &e.path, Some(&e.source_text));
                    let mut d = Diagnostic::new(e.kind.to_string())
                        .in_file(&file)
                        .at(loc)
                        .because(e.kind.cause());
                    if let Some(h) = e.kind.hint() {
                        d = d.with_hint(h);
                    }
                    DriverError::from(d)
                })?,
            };
            evaluated.secrets.sort();
            evaluated.secrets.dedup();
            if settings.exclude.iter().any(|f| f.matches(&evaluated.value)) {
                continue;
            }
            let id = identify(&evaluated.value).map_err(|msg| {
                let loc = terrace_yaml::locate(&src, doc, &ValuePath::root().key("metadata"), None)
                    .or_else(|| terrace_yaml::locate(&src, doc, &ValuePath::root(), None));
                DriverError::from(
                    Diagnostic::new(msg)
                        .in_file(&file)
                        .at(loc)
                        .with_hint("every document needs `apiVersion`, `kind` and `metadata.name`"),
                )
            })?;
            if let Some(first) = seen.insert(id.address.clone(), file.clone()) {
                let loc = terrace_yaml::locate(&src, doc, &ValuePath::root(), None);
                return Err(Diagnostic::new(format!(
                    "`{}` is defined twice in unit `{}`: first in {first}",
                    id.address, ctx.unit.name
                ))
                .in_file(&file)
                .at(loc)
                .with_hint("remove one of the two definitions")
                .into());
            }
            let mut secret_sources: Vec<PathBuf> = Vec::new();
            if encrypted {
                secret_sources.push(PathBuf::from(&file));
            }
            secret_sources.extend(evaluated.secrets.iter().map(PathBuf::from));
            // Values from other secrets may sit anywhere in the object:
            // then every value is encrypted, whatever the file's rule.
            let rule_from =
                (encrypted && evaluated.secrets.is_empty()).then(|| PathBuf::from(&file));
            objects.push(Object {
                address: id.address,
                object: id.object,
                source: file.clone(),
                value: evaluated.value,
                file_name: id.file_name,
                secret_sources,
                rule_from,
                secret_scope: Vec::new(),
            });
        }
    }
    Ok(objects)
}

/// A file's text and, unless it is SOPS-encrypted (`None`), its
/// documents.
type ReadFile = Result<(String, Option<Result<Vec<(usize, Value)>, DriverError>>), DriverError>;

/// Reads and parses `files` (relative to `root`), on every core when
/// there are many. Each file's metadata is noted for plan reuse on this
/// thread, before any of them is read.
fn read_and_parse(root: &Path, files: &[String]) -> Vec<ReadFile> {
    let one = |file: &String| -> ReadFile {
        let src = terrace_fs::read_to_string(root, &root.join(file))?;
        let parsed = (!looks_encrypted(&src))
            .then(|| terrace_yaml::documents(&src, Path::new(file)).map_err(DriverError::from));
        Ok((src, parsed))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if files.len() < 64 || threads < 2 {
        return files.iter().map(one).collect();
    }
    for file in files {
        terrace_fs::watch::note(&root.join(file));
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn settings(ctx: &UnitContext<'_>) -> Result<ManifestsSettings, DriverError> {
    crate::unit_settings(ctx)
}

fn collect_yaml(abs: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), DriverError> {
    for entry in terrace_fs::read_dir(abs)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type()?;
        if ft.is_dir() {
            collect_yaml(&entry.path(), &child_rel, out)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(child_rel);
        }
    }
    Ok(())
}

pub(crate) struct Identity {
    pub(crate) address: String,
    pub(crate) object: ObjectRef,
    pub(crate) file_name: String,
}

pub(crate) fn identify(v: &Value) -> Result<Identity, String> {
    let Value::Object(map) = v else {
        return Err("a manifest document must be a mapping".to_owned());
    };
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or("the document has no `apiVersion`")?;
    let kind = map
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("the document has no `kind`")?;
    let meta = map.get("metadata").and_then(Value::as_object);
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the {kind} has no `metadata.name`"))?;
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let address = match namespace {
        Some(ns) => format!("{api_version} {kind} {ns}/{name}"),
        None => format!("{api_version} {kind} {name}"),
    };
    let safe = |s: &str| {
        s.replace(
            |c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'),
            "-",
        )
    };
    let mut file_name = String::new();
    if !group.is_empty() {
        file_name.push_str(&safe(group));
        file_name.push('_');
    }
    file_name.push_str(&safe(version));
    file_name.push('_');
    file_name.push_str(&safe(&kind.to_ascii_lowercase()));
    file_name.push('_');
    if let Some(ns) = namespace {
        file_name.push_str(&safe(ns));
        file_name.push('_');
    }
    file_name.push_str(&safe(name));
    file_name.push_str(".yaml");
    let object = ObjectRef {
        group: group.to_owned(),
        version: version.to_owned(),
        kind: kind.to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.to_owned(),
    };
    Ok(Identity {
        address,
        object,
        file_name,
    })
}

/// The rendered-files directory of a unit, relative to the project root.
pub fn rendered_dir(environment: &str, cluster: &str, unit: &str) -> String {
    format!("{WORK_DIR}/rendered/{environment}/{cluster}/{unit}")
}

/// The cluster target a unit applies to: its name, and where it is when
/// it is a live cluster (`None`: the embedded default, rendered files).
fn cluster(ctx: &UnitContext<'_>) -> Result<(String, Option<Endpoint>), DriverError> {
    let Some(target) = &ctx.unit.target else {
        return Err(Diagnostic::new(format!(
            "unit `{}` of kind {} names no target",
            ctx.unit.name, ctx.unit.kind
        ))
        .in_file(format!("{}/{UNIT_FILE}", ctx.unit.dir))
        .with_hint("set `target:` to a cluster target of terrace.yaml")
        .into());
    };
    if target.kind != TargetKind::Cluster {
        return Err(DriverError::Target(format!(
            "unit `{}` is of kind {}, but target `{}` is a {}, not a cluster",
            ctx.unit.name, ctx.unit.kind, target.name, target.kind
        )));
    }
    Ok((target.name.clone(), live::endpoint(ctx.root, target)))
}

/// An object holding secrets is written SOPS-encrypted, to the recipients
/// of the secrets it holds; what is already on disk is kept when the
/// plaintext is the same, so plans stay quiet.
fn seal(ctx: &UnitContext<'_>, o: &Object, path: Option<&str>) -> Result<String, DriverError> {
    let secrets = ctx
        .secrets
        .ok_or_else(|| secret_error(SecretError::Unsupported, &o.source))?;
    let prior = match path.map(|p| terrace_fs::read_to_string(ctx.root, &ctx.root.join(p))) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        Some(Err(e)) => return Err(e.into()),
    };
    secrets
        .seal(
            std::slice::from_ref(&o.value),
            &o.secret_sources,
            o.rule_from.as_deref(),
            prior.as_deref(),
        )
        .map_err(|e| secret_error(e, &o.source))
}

/// What the embedded cluster target writes for `objects`: one file per
/// object, sealed when it holds secrets. Shared by every kind that yields
/// Kubernetes objects.
pub(crate) fn desired(
    ctx: &UnitContext<'_>,
    objects: &[Object],
) -> Result<DesiredSet, DriverError> {
    let (cluster, _) = cluster(ctx)?;
    let dir = rendered_dir(ctx.environment, &cluster, &ctx.unit.name);
    let mut files: Vec<DesiredFile> = Vec::with_capacity(objects.len());
    for o in objects {
        let path = format!("{dir}/{}", o.file_name);
        let content = if o.is_sensitive() {
            seal(ctx, o, Some(&path))?
        } else {
            terrace_yaml::to_string(&o.value)
        };
        files.push(DesiredFile {
            address: o.address.clone(),
            object: Some(o.object.clone()),
            path,
            content,
            sensitive: o.hides_diff(),
            secret_sources: o
                .secret_sources
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
        });
    }
    let outputs = json!({
        "cluster": cluster,
        "renderedPath": dir,
        "objects": objects.iter().map(|o| o.address.clone()).collect::<Vec<_>>(),
    });
    Ok(DesiredSet {
        files,
        dir,
        outputs: outputs.as_object().cloned().expect("a map"),
    })
}

/// `terrace render` of objects: sealed ones are shown the way they are
/// written, encrypted.
fn render_documents(ctx: &UnitContext<'_>, objects: Vec<Object>) -> Result<Rendered, DriverError> {
    let mut documents = Vec::with_capacity(objects.len());
    for o in objects {
        let content = if o.is_sensitive() {
            seal(ctx, &o, None)?
        } else {
            terrace_yaml::to_string(&o.value)
        };
        documents.push(RenderedDocument {
            address: o.address,
            path: None,
            content,
        });
    }
    Ok(Rendered { documents })
}

/// The plan of objects on the embedded cluster target.
fn plan_objects(ctx: &UnitContext<'_>, rendered: Objects) -> Result<UnitPlan, DriverError> {
    let mut set = desired(ctx, &rendered.objects)?;
    set.outputs.extend(rendered.outputs);
    let mut plan = fileset::plan(ctx.root, set.files, ctx.prior, set.outputs, vec![set.dir])?;
    plan.notes.extend(rendered.notes);
    Ok(plan)
}

impl ObjectsDriver {
    /// The driver of a kind whose objects `render` makes in process
    /// (`reads_through_terrace_fs`: see [`ObjectSource::reads_through_terrace_fs`]).
    pub fn in_process(
        clusters: &std::sync::Arc<ClusterPool>,
        render: fn(&UnitContext<'_>) -> Result<Vec<Object>, DriverError>,
        reads_through_terrace_fs: bool,
    ) -> std::sync::Arc<ObjectsDriver> {
        std::sync::Arc::new(ObjectsDriver {
            clusters: std::sync::Arc::clone(clusters),
            source: std::sync::Arc::new(InProcess {
                render,
                reads_through_terrace_fs,
            }),
        })
    }

    /// The kind's objects, with every secret they hold marked.
    async fn objects<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
        live: Option<LiveTarget<'a>>,
    ) -> Result<Objects, DriverError> {
        let mut rendered = self.source.objects(ctx, live).await?;
        mark_secrets(ctx, &mut rendered.objects)?;
        crate::tiers::expand(ctx, &mut rendered.objects, rendered.namespace.as_deref())?;
        if let Some(config) = ctx.policy {
            let audits = crate::policy::check(
                ctx,
                config,
                &rendered.objects,
                rendered.namespace.as_deref(),
            )?;
            rendered.notes.extend(audits);
        }
        if rendered.objects.iter().any(Object::is_sensitive) {
            terrace_fs::watch::taint();
        }
        Ok(rendered)
    }
}

impl Driver for ObjectsDriver {
    fn plan_is_reusable(&self, ctx: &UnitContext<'_>) -> bool {
        // Rendered to files only: a live cluster can drift at any time.
        self.source.reads_through_terrace_fs() && matches!(cluster(ctx), Ok((_, None)))
    }

    fn render<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<Rendered, DriverError>> {
        Box::pin(async move { render_documents(ctx, self.objects(ctx, None).await?.objects) })
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(async move {
            // The connection (kubeconfig, TLS, the first discovery) is made
            // while the objects render; the plan below waits for the same
            // connection, and reports its error if it failed.
            let bound = cluster(ctx);
            if let Ok((name, Some(endpoint))) = &bound {
                live::warm_up(&self.clusters, name.clone(), endpoint.clone());
            }
            let live = match &bound {
                Ok((name, Some(endpoint))) => Some(LiveTarget {
                    clusters: &self.clusters,
                    name,
                    endpoint,
                }),
                _ => None,
            };
            let rendered = self.objects(ctx, live).await?;
            match bound? {
                (name, Some(endpoint)) => {
                    live::plan(ctx, &self.clusters, &name, &endpoint, rendered).await
                }
                (_, None) => plan_objects(ctx, rendered),
            }
        })
    }

    fn plan_destroy<'a>(
        &'a self,
        ctx: &'a DestroyContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(async move {
            match live::plan_destroy(ctx, &self.clusters).await {
                Some(planned) => planned,
                None => fileset::plan_destroy_from_state(ctx, "renderedPath"),
            }
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ApplyContext<'a>,
        plan: &'a UnitPlan,
    ) -> BoxFuture<'a, Result<Applied, DriverError>> {
        Box::pin(async move {
            if live::is_live(plan) {
                live::apply(plan, ctx.force).await
            } else {
                fileset::apply(ctx.root, plan)
            }
        })
    }
}

/// Settings of a `manifests` unit. Strings may use `${...}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManifestsSettings {
    /// The directory of YAML files, relative to the unit directory
    /// (default: the unit directory itself, without `unit.yaml`). Every
    /// `*.yaml` and `*.yml` file under it is read, in path order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How the objects are applied to a live cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<crate::ApplySettings>,
    /// Objects the files hold that the unit does not apply (an import
    /// from Argo CD leaves out the Applications, which became units).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<crate::kustomize::ObjectFilter>,
    /// Flux's post-build substitution: with it, the files use `${VAR}`
    /// as a Flux Kustomization's do (terrace's own `${...}` is then not
    /// read in them; the variables may use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substitute: Option<crate::substitute::SubstituteSettings>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_files_are_read_in_parallel_in_order_with_errors_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let mut files = Vec::new();
        for i in 0..150 {
            let name = format!("m/{i:03}.yaml");
            let text = if i == 77 {
                "a: [unclosed\n".to_owned()
            } else {
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{i}\n")
            };
            std::fs::create_dir_all(root.join("m")).expect("mkdir");
            std::fs::write(root.join(&name), text).expect("write");
            files.push(name);
        }
        let read = read_and_parse(root, &files);
        assert_eq!(read.len(), 150);
        for (i, r) in read.into_iter().enumerate() {
            let (_, parsed) = r.expect("readable");
            let docs = parsed.expect("not encrypted");
            if i == 77 {
                let e = docs.expect_err("invalid YAML").to_string();
                assert!(e.contains("m/077.yaml"), "{e}");
            } else {
                let docs = docs.expect("valid");
                assert_eq!(docs[0].1["metadata"]["name"], format!("c{i}"));
            }
        }
    }

    #[test]
    fn identity_and_file_names() {
        let id = identify(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apps"}}))
            .expect("valid");
        assert_eq!(id.address, "apps/v1 Deployment apps/web");
        assert_eq!(id.file_name, "apps_v1_deployment_apps_web.yaml");
        let id = identify(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}),
        )
        .expect("valid");
        assert_eq!(id.file_name, "v1_namespace_apps.yaml");
        assert!(identify(&json!({"kind": "X"})).is_err());
    }
}
