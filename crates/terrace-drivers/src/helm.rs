//! The `helm` kind: a chart and its values, rendered by the real Helm
//! engine (`helm template`), its objects applied like a `manifests` unit's
//! (owner stamps, waves and hooks, server-side apply, health, prune, drift)
//! or written as files on the embedded cluster target.
//!
//! terrace is the release manager: Helm only renders. No release Secret is
//! written; objects a `helm install` (or Flux's helm-controller) made are
//! adopted by server-side apply (the plan says so), not recreated.
//!
//! - Chart sources ([`chart`]): a directory in the project, a chart in an
//!   HTTP repository (`repo`, `chart`, `version`) or an `oci://` reference.
//!   Remote charts are pulled once into `.terrace/charts/` (named by their
//!   digest) and pinned in `terrace.lock`, so plans are reproducible and
//!   work offline; `terrace charts update` moves the pins.
//! - Values: plain `valuesFiles` go to Helm as files, in order; then
//!   SOPS-encrypted values files (decrypted in memory) and inline `values`
//!   (with `${...}`) are merged into one document that reaches Helm on its
//!   stdin, never through a file. When any value came from a secret, the
//!   chart is rendered again with those values masked, and every object
//!   that renders differently is treated as holding secrets (sealed on
//!   disk, no diff shown): a template can transform a value (`b64enc`,
//!   `sha256sum`) past any search for it.
//! - Render cache: a render whose chart, values, flags and Helm binary are
//!   unchanged, and which holds no secret and no `Secret`, is reused from
//!   `.terrace/cache/<env>/helm/<unit>.json` without running Helm.

pub mod chart;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use terrace_core::config::{TargetKind, UNIT_FILE, WORK_DIR};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{BoxFuture, DriverError, UnitContext};
use terrace_core::kind::{Timeout, TypedKind};
use terrace_core::secrets::looks_encrypted;
use terrace_exec::{ExecError, Program};

use crate::manifests::{self, LiveTarget, Object, ObjectSource, Objects, ObjectsDriver, identify};
use crate::{clean_relative, digest};

/// The `helm` kind.
pub fn kind(clusters: &Arc<terrace_kube::ClusterPool>) -> TypedKind<HelmSettings> {
    TypedKind::new(
        "helm",
        "A Helm chart with values, rendered by the helm binary (`helm template`) and applied like any other objects.",
        Some(TargetKind::Cluster),
        Arc::new(ObjectsDriver {
            clusters: Arc::clone(clusters),
            source: Arc::new(HelmSource),
        }),
    )
}

#[derive(Debug)]
struct HelmSource;

impl ObjectSource for HelmSource {
    fn objects<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
        live: Option<LiveTarget<'a>>,
    ) -> BoxFuture<'a, Result<Objects, DriverError>> {
        Box::pin(render(ctx, live))
    }
}

/// Settings of a `helm` unit. Strings may use `${...}`; defaults for every
/// helm unit (`binary`, `kubeVersion`) can sit in terrace.yaml under
/// `helm:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HelmSettings {
    /// The chart: a directory relative to the unit (`./chart`), a chart
    /// name in `repo`, or an OCI reference (`oci://ghcr.io/org/charts/x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    /// The HTTP chart repository `chart` is in (`https://charts.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The chart version or constraint (`1.2.3`, `~1.2`, `>=4 <5`) of a
    /// remote chart; the version it resolved to is pinned in terrace.lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Reach the `oci://` registry over plain HTTP, without TLS (a
    /// registry on this machine or the LAN); default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_http: Option<bool>,
    /// The release name (`.Release.Name`); default: the unit's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_name: Option<String>,
    /// The release namespace (`.Release.Namespace`), where namespaced
    /// objects that name none land; default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Add the release namespace as an object of the unit (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_namespace: Option<bool>,
    /// Apply the chart's `crds/` first, waiting until they are established
    /// (default true).
    #[serde(
        default,
        rename = "includeCRDs",
        skip_serializing_if = "Option::is_none"
    )]
    pub include_crds: Option<bool>,
    /// `.Capabilities.KubeVersion` (`1.33.0`); default: the live
    /// cluster's version (Helm's own when rendering to files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_version: Option<String>,
    /// Extra `.Capabilities.APIVersions` (`monitoring.coreos.com/v1`), on
    /// top of what a live cluster serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_versions: Vec<String>,
    /// Values, merged over the values files (may use `${...}`, secrets
    /// included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Map<String, Value>>,
    /// Values files relative to the unit directory, in order (later ones
    /// win); SOPS-encrypted ones are decrypted in memory. Per-environment
    /// values: `values-${env}.yaml`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
    /// Kustomize patches applied to the rendered objects (as Flux's
    /// `postRenderers`): each `{patch: ..., target: {...}}`, as in a
    /// kustomization's `patches:`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_render: Vec<PostRenderPatch>,
    /// The helm binary (v3.8 or later, or v4): a name on the PATH or a
    /// path; default `helm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Delete Helm's own release records of this release (the Secrets
    /// `sh.helm.release.v1.<release>.v<N>` in its namespace) once terrace
    /// manages it, so `helm` no longer takes it for one of its own
    /// (default false; a live cluster only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_helm_release_records: Option<bool>,
    /// How long one helm command may take (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// How the objects are applied to a live cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<crate::ApplySettings>,
}

/// One patch of `postRender`: a strategic-merge or JSON 6902 patch, and
/// the objects it applies to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostRenderPatch {
    /// The patch, as text or as a mapping.
    pub patch: Value,
    /// Which objects (`group`, `version`, `kind`, `name`, `namespace`,
    /// `labelSelector`, `annotationSelector`); without it, the object the
    /// patch names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Map<String, Value>>,
}

/// The private homes Helm runs with: nothing of the user's own Helm
/// configuration (repositories, registries, plugins) is read or changed.
#[derive(Debug)]
pub(crate) struct Homes {
    pub(crate) cache: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) data: PathBuf,
}

impl Homes {
    pub(crate) fn of(root: &Path) -> Result<Homes, DriverError> {
        let base = root.join(WORK_DIR).join("helm");
        let homes = Homes {
            cache: base.join("cache"),
            config: base.join("config"),
            data: base.join("data"),
        };
        for dir in [&base, &homes.cache, &homes.config, &homes.data] {
            terrace_fs::private_dir(dir)?;
        }
        Ok(homes)
    }
}

/// The helm binary, found once per name.
pub(crate) fn program(binary: Option<&str>, unit_file: &str) -> Result<Program, DriverError> {
    let name = binary
        .map(str::to_owned)
        .or_else(|| std::env::var("TERRACE_HELM").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "helm".to_owned());
    Program::find(&name).map_err(|e| {
        Diagnostic::new(format!("{e}"))
            .in_file(unit_file)
            .with_hint("install Helm (v3.8 or later, or v4), or set `helm.binary` (in terrace.yaml for every helm unit)")
            .into()
    })
}

/// A helm command with terrace's private homes and no other Helm
/// settings of the user's.
pub(crate) fn command(program: &Program, homes: &Homes, timeout: Duration) -> terrace_exec::Exec {
    program
        .command()
        .env("HELM_CACHE_HOME", &homes.cache)
        .env("HELM_CONFIG_HOME", &homes.config)
        .env("HELM_DATA_HOME", &homes.data)
        .deny_env("HELM_*")
        .stream_stdout(false)
        .timeout(timeout)
}

pub(crate) fn exec_error(e: ExecError, unit_file: &str, what: &str) -> DriverError {
    match e {
        ExecError::Interrupted { .. } | ExecError::TimedOut { .. } => {
            DriverError::Other(Box::new(e))
        }
        other => {
            let text = other.to_string();
            let mut d = Diagnostic::new(format!("{what}: {text}")).in_file(unit_file);
            if text.contains("missing in charts/ directory") {
                d = d.with_hint(
                    "terrace renders a chart's `charts/` as it is, offline: run `helm dependency build` in the chart directory and commit `charts/` (and Chart.lock)",
                );
            } else if text.contains("no such host") || text.contains("connection refused") {
                d = d.with_hint(
                    "the chart could not be pulled; once pinned in terrace.lock and cached in .terrace/charts, plans need no network",
                );
            }
            d.into()
        }
    }
}

/// What the values of a release are made of.
struct Values {
    /// Plain values files, given to Helm as they are.
    files: Vec<PathBuf>,
    /// Decrypted values files and inline values, merged: Helm reads it on
    /// stdin.
    piped: Map<String, Value>,
    /// The secrets files any value came from.
    secrets: Vec<PathBuf>,
    /// `piped` with every value that came from a secret replaced by one
    /// that differs from it: rendered too, it shows which objects depend
    /// on a secret (those that render differently).
    masked: Map<String, Value>,
    /// What the values are, for the render cache (plain files' digests and
    /// the piped document; `None` when a secret is among them).
    fingerprint: Option<String>,
}

/// Helm's merge of values files (maps merge key by key, anything else is
/// replaced by the later value), as the kustomize engine merges them too.
fn merge_values(base: &mut Map<String, Value>, over: Map<String, Value>) {
    terrace_kustomize::helm::merge_values(base, &over);
}

fn gather_values(
    ctx: &UnitContext<'_>,
    s: &HelmSettings,
    unit_file: &str,
) -> Result<Values, DriverError> {
    let mut files = Vec::new();
    let mut piped = Map::new();
    let mut masked = Map::new();
    let mut counter = 0usize;
    let mut secrets: Vec<PathBuf> = Vec::new();
    let mut fingerprint = String::new();
    for rel in &s.values_files {
        let path = clean_relative(&ctx.unit.dir, rel).ok_or_else(|| {
            Diagnostic::new(format!("values file `{rel}` leads outside the project"))
                .in_file(unit_file)
                .with_hint("keep values files inside the project")
        })?;
        let abs = ctx.root.join(&path);
        let text = match terrace_fs::read_to_string(ctx.root, &abs) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Diagnostic::new(format!(
                    "values file `{path}` does not exist (environment `{}`)",
                    ctx.environment
                ))
                .in_file(unit_file)
                .with_hint("create it, or remove it from `helm.valuesFiles`")
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        if looks_encrypted(&text) {
            let Some(source) = ctx.secrets else {
                return Err(Diagnostic::new(
                    "this values file is SOPS-encrypted, and secrets are not available here",
                )
                .in_file(&path)
                .into());
            };
            let docs = source
                .open_documents(Path::new(&path), &text)
                .map_err(|e| manifests::secret_error(e, &path))?
                .unwrap_or_default();
            for doc in docs.into_iter().filter(|d| !d.is_null()) {
                let Value::Object(map) = doc else {
                    return Err(Diagnostic::new("a values file must be a mapping")
                        .in_file(&path)
                        .into());
                };
                let mut hidden = Value::Object(map.clone());
                mask_all(&mut hidden, &mut counter);
                if let Value::Object(hidden) = hidden {
                    merge_values(&mut masked, hidden);
                }
                merge_values(&mut piped, map);
            }
            secrets.push(PathBuf::from(&path));
        } else {
            if !piped.is_empty() || !secrets.is_empty() {
                // After an encrypted file: merged here, so order holds.
                let docs = terrace_yaml::documents(&text, Path::new(&path))?;
                for (_, doc) in docs {
                    let Value::Object(map) = doc else {
                        return Err(Diagnostic::new("a values file must be a mapping")
                            .in_file(&path)
                            .into());
                    };
                    merge_values(&mut masked, map.clone());
                    merge_values(&mut piped, map);
                }
            } else {
                files.push(abs);
            }
            fingerprint.push_str(&digest(text.as_bytes()));
            fingerprint.push('\0');
        }
    }
    if let Some(values) = &s.values {
        merge_values(&mut piped, values.clone());
        let mut hidden = Value::Object(values.clone());
        if let Some(from) = ctx.unit.sensitive_settings.get("values") {
            secrets.extend(from.iter().map(PathBuf::from));
            let files: Vec<PathBuf> = from.iter().map(PathBuf::from).collect();
            if let Some(source) = ctx.secrets {
                mask_secrets(&mut hidden, &source.plaintexts_of(&files), &mut counter);
            }
        }
        if let Value::Object(hidden) = hidden {
            merge_values(&mut masked, hidden);
        }
    }
    secrets.sort();
    secrets.dedup();
    fingerprint.push_str(&Value::Object(piped.clone()).to_string());
    Ok(Values {
        files,
        piped,
        masked,
        fingerprint: secrets.is_empty().then(|| digest(fingerprint.as_bytes())),
        secrets,
    })
}

/// Replaces every scalar with one that differs from it.
fn mask_all(v: &mut Value, counter: &mut usize) {
    match v {
        Value::String(s) => {
            *counter += 1;
            *s = format!("terrace-masked-{counter}");
        }
        Value::Number(n) => {
            *v = json!(if n.as_f64() == Some(0.0) { 1 } else { 0 });
        }
        Value::Bool(b) => *b = !*b,
        Value::Array(items) => items.iter_mut().for_each(|i| mask_all(i, counter)),
        Value::Object(m) => m.values_mut().for_each(|i| mask_all(i, counter)),
        Value::Null => {}
    }
}

/// Replaces every string holding a secret value with one that differs.
fn mask_secrets(v: &mut Value, plain: &terrace_core::secrets::Plaintexts, counter: &mut usize) {
    match v {
        Value::String(s) if plain.found_in(s) => {
            *counter += 1;
            *s = format!("terrace-masked-{counter}");
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| mask_secrets(i, plain, counter)),
        Value::Object(m) => m.values_mut().for_each(|i| mask_secrets(i, plain, counter)),
        _ => {}
    }
}

/// What is kept of a render for the next plan.
#[derive(Debug, Serialize, Deserialize)]
struct CachedRender {
    key: String,
    output: String,
}

fn cache_path(ctx: &UnitContext<'_>) -> String {
    format!(
        "{WORK_DIR}/cache/{}/helm/{}.json",
        ctx.environment, ctx.unit.name
    )
}

/// The key of a render: everything `helm template` is given.
fn render_key(program: &Program, args: &[String], chart: &chart::Chart, values: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let binary = std::fs::metadata(program.path())
        .map(|m| format!("{}:{}:{}", m.len(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default();
    let mut text = format!(
        "{}\0{}\0{binary}\0{}\0{values}\0",
        env!("CARGO_PKG_VERSION"),
        program.path().display(),
        chart.digest
    );
    for a in args {
        text.push_str(a);
        text.push('\0');
    }
    digest(text.as_bytes())
}

fn read_cache(ctx: &UnitContext<'_>, key: &str) -> Option<String> {
    let path = ctx.root.join(cache_path(ctx));
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > 64 << 20 {
        return None;
    }
    let text = terrace_fs::read_to_string(ctx.root, &path).ok()?;
    let cached: CachedRender = serde_json::from_str(&text).ok()?;
    (cached.key == key).then_some(cached.output)
}

fn write_cache(ctx: &UnitContext<'_>, key: &str, output: &str) {
    let rel = cache_path(ctx);
    let Some(parent) = Path::new(&rel).parent() else {
        return;
    };
    if terrace_fs::private_dir(&ctx.root.join(parent)).is_err() {
        return;
    }
    let cached = CachedRender {
        key: key.to_owned(),
        output: output.to_owned(),
    };
    if let Ok(bytes) = serde_json::to_vec(&cached) {
        // A cache: failing to keep it costs one render next time.
        let _ = terrace_fs::write(ctx.root, &rel, &bytes, terrace_fs::Mode::Private);
    }
}

/// Renders the unit's chart: its objects, in Helm's output order.
async fn render(
    ctx: &UnitContext<'_>,
    live: Option<LiveTarget<'_>>,
) -> Result<Objects, DriverError> {
    let unit_file = format!("{}/{UNIT_FILE}", ctx.unit.dir);
    let s: HelmSettings = crate::unit_settings(ctx)?;
    let program = program(s.binary.as_deref(), &unit_file)?;
    let timeout = s
        .timeout
        .as_ref()
        .map_or(Duration::from_secs(300), Timeout::duration);
    let chart = chart::resolve(ctx, &s, &program, timeout, &unit_file).await?;
    let values = gather_values(ctx, &s, &unit_file)?;
    let release = s
        .release_name
        .clone()
        .unwrap_or_else(|| ctx.unit.name.clone());
    check_release_name(&release, &unit_file)?;
    let namespace = s.namespace.clone().unwrap_or_else(|| "default".to_owned());
    let mut args: Vec<String> = vec![
        "template".into(),
        release.clone(),
        chart.path.display().to_string(),
        "--namespace".into(),
        namespace.clone(),
        "--skip-tests".into(),
    ];
    if s.include_crds.unwrap_or(true) {
        args.push("--include-crds".into());
    }
    // On a live cluster, `.Capabilities` are the cluster's (as Helm and
    // Flux find them); a unit's own `kubeVersion` wins, and its
    // `apiVersions` add to what the cluster serves.
    let found = match live {
        Some(t) => {
            let cluster = t
                .clusters
                .get(t.name, t.endpoint)
                .await
                .map_err(|e| DriverError::Target(e.to_string()))?;
            Some(
                cluster
                    .capabilities()
                    .await
                    .map_err(|e| DriverError::Target(e.to_string()))?
                    .clone(),
            )
        }
        None => None,
    };
    if let Some(v) = s
        .kube_version
        .clone()
        .or_else(|| found.as_ref().map(|c| c.kube_version.clone()))
    {
        args.push("--kube-version".into());
        args.push(v);
    }
    let served = found.iter().flat_map(|c| c.api_versions.iter());
    for a in s.api_versions.iter().chain(served) {
        args.push("--api-versions".into());
        args.push(a.clone());
    }
    for f in &values.files {
        args.push("--values".into());
        args.push(f.display().to_string());
    }
    let piped = (!values.piped.is_empty())
        .then(|| serde_json::to_vec(&Value::Object(values.piped.clone())))
        .transpose()
        .map_err(|e| DriverError::Other(Box::new(e)))?;
    if piped.is_some() {
        args.push("--values".into());
        args.push("-".into());
    }
    let key = values
        .fingerprint
        .as_ref()
        .map(|v| render_key(&program, &args, &chart, v));
    let cached = key.as_deref().and_then(|k| read_cache(ctx, k));
    let from_cache = cached.is_some();
    let redact = ctx
        .secrets
        .map(|s| s.plaintexts_of(&values.secrets))
        .unwrap_or_default();
    // The private homes are made only when Helm runs: a render from the
    // cache touches nothing.
    let run =
        |homes: &Homes, input: Option<Vec<u8>>, lines: Option<&terrace_core::driver::Lines>| {
            let mut exec = command(&program, homes, timeout)
                .args(&args)
                .current_dir(ctx.root)
                .redact(redact.clone());
            if let Some(input) = input {
                exec = exec.stdin(input);
            }
            if let Some(lines) = lines.cloned() {
                exec = exec.on_line(move |_, line| lines.send(line));
            }
            let unit_file = unit_file.clone();
            async move {
                let done = exec
                    .run()
                    .await
                    .and_then(|f| f.success("template"))
                    .map_err(|e| exec_error(e, &unit_file, "rendering the chart failed"))?;
                String::from_utf8(done.stdout).map_err(|_| {
                    DriverError::from(
                        Diagnostic::new("`helm template` printed text that is not UTF-8")
                            .in_file(&unit_file),
                    )
                })
            }
        };
    let output = match cached {
        Some(text) => text,
        None => run(&Homes::of(ctx.root)?, piped, ctx.lines).await?,
    };
    // A project path: a `Secret` the chart renders is sealed under the
    // `.sops.yaml` creation rule that matches it.
    let source = match &chart.local {
        Some(dir) => dir.clone(),
        None => ctx.unit.dir.clone(),
    };
    let described = format!("{unit_file} (chart {})", chart.describe());
    let mut values_out = read_output(&output, &described, &s, &unit_file)?;
    // Which objects a secret reaches: those that render differently with
    // every secret value masked. `None` (the masked render failed): all.
    let secret_derived: Option<std::collections::BTreeSet<String>> = if values.secrets.is_empty() {
        Some(Default::default())
    } else {
        let input = serde_json::to_vec(&Value::Object(values.masked.clone()))
            .map_err(|e| DriverError::Other(Box::new(e)))?;
        match run(&Homes::of(ctx.root)?, Some(input), None).await {
            Ok(text) => read_output(&text, &described, &s, &unit_file)
                .ok()
                .map(|masked| {
                    let masked: std::collections::HashMap<String, Value> = masked
                        .into_iter()
                        .filter_map(|v| identify(&v).ok().map(|id| (id.address, v)))
                        .collect();
                    values_out
                        .iter()
                        .filter_map(|v| identify(v).ok().map(|id| (id.address, v)))
                        .filter(|(address, v)| masked.get(address) != Some(*v))
                        .map(|(address, _)| address)
                        .collect()
                }),
            Err(_) => None,
        }
    };
    if s.create_namespace == Some(true)
        && !values_out.iter().any(|v| {
            v["kind"] == "Namespace"
                && v["apiVersion"] == "v1"
                && v["metadata"]["name"] == namespace.as_str()
        })
    {
        values_out.insert(
            0,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        );
    }
    if let (Some(k), false) = (&key, from_cache) {
        let holds_secret = values_out
            .iter()
            .any(|v| v["kind"] == "Secret" && v["apiVersion"] == "v1");
        if !holds_secret {
            write_cache(ctx, k, &output);
        }
    }
    let mut objects = Vec::with_capacity(values_out.len());
    let mut seen = std::collections::BTreeSet::new();
    for value in values_out {
        let id = identify(&value).map_err(|msg| {
            DriverError::from(
                Diagnostic::new(format!(
                    "the chart rendered an object Kubernetes cannot take: {msg}"
                ))
                .in_file(&unit_file),
            )
        })?;
        if !seen.insert(id.address.clone()) {
            return Err(Diagnostic::new(format!(
                "the chart renders `{}` twice",
                id.address
            ))
            .in_file(&unit_file)
            .with_hint("check the chart's templates and values: two templates make the same object")
            .into());
        }
        let secret_sources = if secret_derived
            .as_ref()
            .is_none_or(|set| set.contains(&id.address))
        {
            values.secrets.clone()
        } else {
            Vec::new()
        };
        objects.push(Object {
            address: id.address,
            object: id.object,
            source: source.clone(),
            value,
            file_name: id.file_name,
            // A template may transform a secret value (`b64enc`) past any
            // search for it: an object that renders differently without
            // the secrets is sealed, whatever its text shows.
            secret_sources,
            rule_from: None,
            secret_scope: values.secrets.clone(),
        });
    }
    let mut outputs = Map::new();
    outputs.insert("releaseName".into(), json!(release));
    outputs.insert("namespace".into(), json!(namespace));
    outputs.insert("chart".into(), json!(chart.name));
    outputs.insert("chartVersion".into(), json!(chart.version));
    outputs.insert("chartDigest".into(), json!(chart.digest));
    let mut notes = chart.notes;
    if let Some(prior) = ctx.prior
        && let Some(before) = prior.outputs.get("chartVersion").and_then(Value::as_str)
        && before != chart.version
    {
        notes.insert(
            0,
            format!("chart {}: {before} → {}", chart.name, chart.version),
        );
    }
    let remove = if s.delete_helm_release_records == Some(true) {
        vec![terrace_kube::sync::Removal {
            api_version: "v1".into(),
            kind: "Secret".into(),
            namespace: namespace.clone(),
            labels: format!("owner=helm,name={release}"),
            why: format!(
                "Helm's release record of `{release}`: deleted on request (`deleteHelmReleaseRecords`)"
            ),
        }]
    } else {
        Vec::new()
    };
    Ok(Objects {
        objects,
        outputs,
        notes,
        namespace: Some(namespace),
        remove,
    })
}

/// The objects of `helm template`'s output, after `postRender`.
fn read_output(
    output: &str,
    described: &str,
    s: &HelmSettings,
    unit_file: &str,
) -> Result<Vec<Value>, DriverError> {
    let docs = terrace_yaml::tree::parse_stream_last_key_wins(
        output,
        Path::new(described),
        terrace_yaml::tree::Schema::Kyaml,
    )
    .map_err(|d| {
        Diagnostic::new(format!(
            "the chart rendered YAML that cannot be read: {}",
            d.message
        ))
        .in_file(unit_file)
    })?;
    let values: Vec<Value> = docs
        .iter()
        .map(terrace_yaml::tree::Node::to_json)
        .filter(|v| !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty()))
        .collect();
    if s.post_render.is_empty() {
        Ok(values)
    } else {
        post_render(values, &s.post_render, unit_file)
    }
}

/// Helm's rule for release names (a DNS-1123 label of at most 53
/// characters), checked before Helm runs so the error names the unit.
fn check_release_name(name: &str, unit_file: &str) -> Result<(), DriverError> {
    let ok = !name.is_empty()
        && name.len() <= 53
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        return Ok(());
    }
    Err(Diagnostic::new(format!(
        "release name `{name}` is not one Helm accepts: lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit, at most 53 characters"
    ))
    .in_file(unit_file)
    .with_hint("set `helm.releaseName`")
    .into())
}

/// Applies `postRender` patches through terrace's kustomize engine, the
/// objects kept in Helm's order.
fn post_render(
    objects: Vec<Value>,
    patches: &[PostRenderPatch],
    unit_file: &str,
) -> Result<Vec<Value>, DriverError> {
    let mut fs = terrace_kustomize::MemFs::new();
    fs.add("/render/objects.yaml", terrace_kustomize::to_yaml(&objects));
    let patches: Vec<Value> = patches
        .iter()
        .map(|p| {
            let text = match &p.patch {
                Value::String(s) => s.clone(),
                other => terrace_yaml::to_string(other),
            };
            let mut entry = json!({ "patch": text });
            if let Some(t) = &p.target {
                entry["target"] = Value::Object(t.clone());
            }
            entry
        })
        .collect();
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["objects.yaml"],
        "patches": patches,
        "sortOptions": {"order": "fifo"},
    });
    fs.add("/render/kustomization.yaml", kustomization.to_string());
    terrace_kustomize::build(&fs, Path::new("/render")).map_err(|e| {
        Diagnostic::new(format!("`helm.postRender` failed: {e}"))
            .in_file(unit_file)
            .with_hint(
                "each entry is a kustomize patch: `{patch: ..., target: {kind: ..., name: ...}}`",
            )
            .into()
    })
}

/// Helm for kustomize's `helmCharts` (`terrace kustomize build
/// --enable-helm`, and every `kustomize` unit): the kustomize engine is
/// synchronous, so each chart is rendered on a thread of its own with a
/// runtime of its own, through `terrace-exec` like every other program.
/// Values reach Helm on stdin.
#[derive(Debug)]
pub struct KustomizeHelm {
    binary: Option<String>,
    /// Where Helm keeps its caches: `.terrace/helm` of the project, or a
    /// temporary directory for a build outside any project.
    homes: Homes,
    /// The project root, for pins of remote charts; `None` outside a
    /// project (a remote chart is then pulled into the homes each build).
    root: Option<PathBuf>,
    timeout: Duration,
    redact: terrace_core::secrets::Plaintexts,
    /// Whether a chart was rendered (its objects may hold values from
    /// secrets files the build decrypted).
    pub used: std::sync::atomic::AtomicBool,
    _scratch: Option<tempfile::TempDir>,
}

impl KustomizeHelm {
    /// Helm for a unit of the project at `root`.
    pub fn for_project(
        root: &Path,
        redact: terrace_core::secrets::Plaintexts,
    ) -> Result<KustomizeHelm, DriverError> {
        Ok(KustomizeHelm {
            binary: None,
            homes: Homes::of(root)?,
            root: Some(root.to_owned()),
            timeout: Duration::from_secs(300),
            redact,
            used: Default::default(),
            _scratch: None,
        })
    }

    /// Helm for `terrace kustomize build --enable-helm`: `binary` (else
    /// `TERRACE_HELM`, else `helm`), homes in a temporary directory.
    pub fn standalone(binary: Option<&str>) -> std::io::Result<KustomizeHelm> {
        let scratch = tempfile::Builder::new().prefix("terrace-helm-").tempdir()?;
        let base = scratch.path();
        let homes = Homes {
            cache: base.join("cache"),
            config: base.join("config"),
            data: base.join("data"),
        };
        for d in [&homes.cache, &homes.config, &homes.data] {
            std::fs::create_dir_all(d)?;
        }
        Ok(KustomizeHelm {
            binary: binary.map(str::to_owned),
            homes,
            root: None,
            timeout: Duration::from_secs(300),
            redact: Default::default(),
            used: Default::default(),
            _scratch: Some(scratch),
        })
    }

    async fn render(&self, r: &terrace_kustomize::Inflate) -> Result<String, String> {
        let file = r.file.display().to_string();
        let program = program(self.binary.as_deref(), &file).map_err(|e| e.to_string())?;
        let chart = if r.chart_dir.is_dir() {
            r.chart_dir.display().to_string()
        } else if let Some(repo) = &r.repo {
            let remote = chart::Remote {
                source: repo.trim_end_matches('/').to_owned(),
                chart: r.name.clone(),
                constraint: r.version.clone().unwrap_or_default(),
                plain_http: false,
            };
            let root = self
                .root
                .clone()
                .unwrap_or_else(|| self.homes.cache.clone());
            let pin = chart::pull(&root, &program, self.timeout, &remote, None, &file)
                .await
                .map_err(|e| e.to_string())?;
            chart::archive(&root, &pin.digest).display().to_string()
        } else {
            return Err(format!(
                "no chart at {} and no `repo` to pull it from",
                r.chart_dir.display()
            ));
        };
        let mut args: Vec<String> = vec!["template".into(), r.release_name.clone(), chart];
        if let Some(ns) = &r.namespace {
            args.extend(["--namespace".into(), ns.clone()]);
        }
        if let Some(t) = &r.name_template {
            args.extend(["--name-template".into(), t.clone()]);
        }
        for a in &r.api_versions {
            args.extend(["--api-versions".into(), a.clone()]);
        }
        if let Some(v) = &r.kube_version {
            args.extend(["--kube-version".into(), v.clone()]);
        }
        if r.include_crds {
            args.push("--include-crds".into());
        }
        if r.skip_tests {
            args.push("--skip-tests".into());
        }
        if r.skip_hooks {
            args.push("--no-hooks".into());
        }
        let mut merged = Map::new();
        for doc in &r.values {
            if let Value::Object(m) = doc {
                terrace_kustomize::helm::merge_values(&mut merged, m);
            }
        }
        args.extend(["--values".into(), "-".into()]);
        let input = serde_json::to_vec(&Value::Object(merged)).map_err(|e| e.to_string())?;
        let done = command(&program, &self.homes, self.timeout)
            .args(&args)
            .redact(self.redact.clone())
            .stdin(input)
            .run()
            .await
            .and_then(|f| f.success("template"))
            .map_err(|e| e.to_string())?;
        self.used.store(true, std::sync::atomic::Ordering::Relaxed);
        String::from_utf8(done.stdout).map_err(|_| "helm printed text that is not UTF-8".to_owned())
    }
}

impl terrace_kustomize::Helm for KustomizeHelm {
    fn template(&self, request: &terrace_kustomize::Inflate) -> Result<String, String> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("could not start a runtime for helm: {e}"))?;
                    runtime.block_on(self.render(request))
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_merge_as_helm_merges_values_files() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"})
            .as_object()
            .cloned()
            .expect("map");
        let over = json!({"a": {"c": [3], "e": null}, "d": {"now": "a map"}})
            .as_object()
            .cloned()
            .expect("map");
        merge_values(&mut base, over);
        assert_eq!(
            Value::Object(base),
            json!({"a": {"b": 1, "c": [3], "e": null}, "d": {"now": "a map"}})
        );
    }

    #[test]
    fn masking_changes_every_leaf() {
        let real =
            json!({"a": "pw", "n": 0, "m": 5, "b": true, "l": ["x", {"k": false}], "z": null});
        let mut masked = real.clone();
        let mut counter = 0;
        mask_all(&mut masked, &mut counter);
        fn leaves(v: &Value, out: &mut Vec<Value>) {
            match v {
                Value::Array(i) => i.iter().for_each(|x| leaves(x, out)),
                Value::Object(m) => m.values().for_each(|x| leaves(x, out)),
                other => out.push(other.clone()),
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        leaves(&real, &mut a);
        leaves(&masked, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!(x.is_null() || x != y, "{x} stayed");
        }
    }

    #[test]
    fn release_names() {
        assert!(check_release_name("web", "u").is_ok());
        assert!(check_release_name("cert-manager.v1", "u").is_ok());
        for bad in ["", "Web", "-web", "web-", "a_b", &"x".repeat(54)] {
            assert!(check_release_name(bad, "u").is_err(), "{bad}");
        }
    }

    #[test]
    fn post_render_patches_keep_helm_order() {
        let objects = vec![
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"}, "spec": {"replicas": 1}}),
        ];
        let patches = vec![PostRenderPatch {
            patch: json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"}, "spec": {"replicas": 3}}),
            target: None,
        }];
        let out = post_render(objects, &patches, "u/unit.yaml").expect("patched");
        assert_eq!(out[0]["kind"], "Service");
        assert_eq!(out[1]["spec"]["replicas"], 3);
        let bad = vec![PostRenderPatch {
            patch: json!("- op: replace\n  path: /spec/replicas\n  value: 2\n"),
            target: Some(
                json!({"kind": "Deployment", "name": "missing"})
                    .as_object()
                    .cloned()
                    .expect("map"),
            ),
        }];
        // A target that matches nothing is no error in kustomize either.
        let objects =
            vec![json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}})];
        assert!(post_render(objects, &bad, "u/unit.yaml").is_ok());
    }
}
