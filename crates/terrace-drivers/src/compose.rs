//! The `compose` kind: a compose file's services run as containers on a
//! Docker host (a `docker` target), read by `terrace-compose` and driven
//! through `terrace-docker`.
//!
//! The file is used as it is; `${VAR}` takes the unit's inputs (then a
//! `.env` beside the file). Plans find what runs by the Compose project
//! label, compare each service's container with the spec terrace created
//! it from (kept in a label, without environment values) field by field
//! and its environment with the running one's (in memory), and say which
//! containers are recreated and why. Apply creates networks and volumes,
//! removes services that left the file, recreates only changed services
//! in `depends_on` order, each after its dependencies are started,
//! healthy or completed as asked, and waits for health. Volumes are never
//! removed, except by `destroy --volumes`.
//!
//! A secret (a sensitive input, or a SOPS-encrypted `env_file` decrypted
//! in memory) may reach a container only as an environment value: it
//! travels in the API request and is shown nowhere. Without a `host`, the
//! docker target is the embedded default: the planned containers are
//! written under `.terrace/rendered/<env>/<target>/<unit>/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use terrace_compose::{Compose, Condition, EnvSource, MountKind, Service};
use terrace_core::config::{TargetKind, UNIT_FILE, WORK_DIR};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{
    Applied, ApplyContext, BoxFuture, DestroyContext, Driver, DriverError, Rendered,
    RenderedDocument, ResolvedTarget, UnitContext,
};
use terrace_core::kind::{Timeout, TypedKind};
use terrace_core::plan::{Action, Change, UnitPlan};
use terrace_core::state::InventoryItem;
use terrace_docker::{
    ContainerSpec, DockerError, ENVIRONMENT_LABEL, Endpoint, Engine, HealthSpec, LiveContainer,
    MountSpec, NETWORK_LABEL, PROJECT_LABEL, PortSpec, SERVICE_LABEL, UNIT_LABEL, VOLUME_LABEL,
};
use tokio::sync::Mutex;

use crate::fileset::{self, DesiredFile};

pub mod backup;

/// Settings of a `compose` unit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ComposeSettings {
    /// The compose file, relative to the unit directory. Default: the
    /// first of `compose.yaml`, `compose.yml`, `docker-compose.yaml`,
    /// `docker-compose.yml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The Compose project name (container, network and volume names
    /// start with it). Default: the file's `name:`, else the unit's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// When images are pulled: `missing` (default), `always` or `never`.
    #[serde(default)]
    pub pull: Pull,
    /// How long apply waits for a service to be healthy (or its
    /// dependencies' conditions). Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// Backups, by service name: `terrace backup run|list|restore`, and
    /// on `schedule` under `terrace serve`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backup: BTreeMap<String, backup::BackupSettings>,
}

/// When images are pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Pull {
    #[default]
    Missing,
    Always,
    Never,
}

/// The `compose` kind.
pub fn kind() -> TypedKind<ComposeSettings> {
    TypedKind::new(
        "compose",
        "A compose file's services as containers on a Docker host, health-gated, with volumes kept.",
        Some(TargetKind::Docker),
        Arc::new(ComposeDriver::default()),
    )
}

/// The `compose` driver: one connection per engine, for the registry's
/// life.
#[derive(Debug, Default)]
pub struct ComposeDriver {
    engines: Mutex<HashMap<String, Arc<Engine>>>,
}

const FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// A network the file asks for.
#[derive(Debug, Clone)]
struct NetworkWant {
    key: String,
    name: String,
    driver: Option<String>,
    internal: bool,
    external: bool,
}

#[derive(Debug, Clone)]
struct VolumeWant {
    key: String,
    name: String,
    driver: Option<String>,
    external: bool,
}

/// One service, as it should run.
#[derive(Debug, Clone)]
struct ServiceWant {
    service: String,
    spec: ContainerSpec,
    depends_on: BTreeMap<String, Condition>,
    /// Environment names whose values hold a secret.
    secret_env: BTreeSet<String>,
}

/// What the unit wants on its host.
#[derive(Debug, Clone)]
struct Desired {
    project: String,
    /// In `depends_on` order.
    services: Vec<ServiceWant>,
    networks: Vec<NetworkWant>,
    volumes: Vec<VolumeWant>,
    /// Every secret value the unit holds (to mask).
    secrets: Vec<String>,
    settings: ComposeSettings,
}

fn unit_file(ctx: &UnitContext<'_>) -> String {
    format!("{}/{UNIT_FILE}", ctx.unit.dir)
}

/// A Compose project name: lower case letters, digits, `-` and `_`.
fn project_name(name: &str) -> String {
    name.to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect::<String>()
        .trim_start_matches(['-', '_'])
        .to_owned()
}

/// An input as the string `${VAR}` gives.
fn input_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn desired(ctx: &UnitContext<'_>) -> Result<Desired, DriverError> {
    let settings: ComposeSettings = crate::unit_settings(ctx)?;
    let uf = unit_file(ctx);
    let file = match &settings.file {
        Some(f) => crate::clean_relative(&ctx.unit.dir, f).ok_or_else(|| {
            Diagnostic::new(format!("compose file `{f}` leads outside the project")).in_file(&uf)
        })?,
        None => FILES
            .iter()
            .map(|f| format!("{}/{f}", ctx.unit.dir))
            .find(|f| terrace_fs::is_file(&ctx.root.join(f)))
            .ok_or_else(|| {
                Diagnostic::new(format!(
                    "unit `{}` has no compose file (looked for {})",
                    ctx.unit.name,
                    FILES.join(", ")
                ))
                .in_file(&uf)
                .with_hint("add compose.yaml to the unit's directory, or set `compose.file`")
            })?,
    };
    let text = terrace_fs::read_to_string(ctx.root, &ctx.root.join(&file))?;
    let dir = Path::new(&file)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();

    // Interpolation: the unit's inputs, then a plain `.env` beside the file.
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let dotenv_path = format!("{dir}/.env");
    if let Some(t) = terrace_fs::read_if_exists(&ctx.root.join(&dotenv_path))? {
        let parsed = terrace_compose::dotenv::parse(
            &t,
            &|_| None,
            &BTreeMap::new(),
            &mut Default::default(),
        )
        .map_err(|e| Diagnostic::new(e).in_file(&dotenv_path))?;
        vars.extend(parsed);
    }
    let mut secrets: Vec<String> = Vec::new();
    for (k, v) in &ctx.unit.inputs {
        let Some(s) = input_text(v) else {
            return Err(Diagnostic::new(format!(
                "input `{k}` is a list or a map; a compose file's `${{{k}}}` takes a string, number or boolean"
            ))
            .in_file(&uf)
            .into());
        };
        if ctx.unit.sensitive_inputs.contains_key(k) && !s.is_empty() {
            secrets.push(s.clone());
        }
        vars.insert(k.clone(), s);
    }
    let input_secrets = secrets.clone();
    let lookup = |k: &str| vars.get(k).cloned();
    let compose = terrace_compose::load(&text, Path::new(&file), &lookup)?;
    let project = project_name(
        settings
            .project
            .as_deref()
            .or(compose.name.as_deref())
            .unwrap_or(&ctx.unit.name),
    );
    if project.is_empty() {
        return Err(Diagnostic::new("the compose project name is empty")
            .in_file(&uf)
            .with_hint("set `compose.project` to lower-case letters, digits, `-` or `_`")
            .into());
    }

    let networks = network_wants(&compose, &project);
    let volumes: Vec<VolumeWant> = compose
        .volumes
        .iter()
        .map(|(key, v)| VolumeWant {
            key: key.clone(),
            name: v.name.clone().unwrap_or_else(|| format!("{project}_{key}")),
            driver: v.driver.clone(),
            external: v.external,
        })
        .collect();

    let mut services = Vec::new();
    for name in dependency_order(&compose) {
        let s = &compose.services[&name];
        let (env, secret_env) = environment(ctx, &dir, s, &lookup, &mut secrets)?;
        let spec = container_spec(ctx, &project, &dir, &name, s, env, &networks, &volumes);
        services.push(ServiceWant {
            service: name.clone(),
            spec,
            depends_on: s.depends_on.clone(),
            secret_env,
        });
    }
    // A secret may reach a container only as an environment value (an
    // env file's values can reach nothing else; inputs can).
    for w in &services {
        let text = serde_json::to_string(&w.spec.as_labelled()).unwrap_or_default();
        if input_secrets.iter().any(|s| text.contains(s.as_str())) {
            return Err(Diagnostic::new(format!(
                "service `{}` holds a secret outside its environment; terrace passes secrets to containers only as environment values",
                w.service
            ))
            .in_file(&file)
            .with_hint("move the value into `environment:` (the service can read it from there)")
            .into());
        }
    }
    Ok(Desired {
        project,
        services,
        networks,
        volumes,
        secrets,
        settings,
    })
}

fn network_wants(compose: &Compose, project: &str) -> Vec<NetworkWant> {
    let mut out: Vec<NetworkWant> = compose
        .networks
        .iter()
        .map(|(key, n)| NetworkWant {
            key: key.clone(),
            name: n.name.clone().unwrap_or_else(|| format!("{project}_{key}")),
            driver: n.driver.clone(),
            internal: n.internal,
            external: n.external,
        })
        .collect();
    let uses_default = compose
        .services
        .values()
        .any(|s| s.networks.is_empty() || s.networks.contains_key("default"));
    if uses_default && !out.iter().any(|n| n.key == "default") {
        out.push(NetworkWant {
            key: "default".into(),
            name: format!("{project}_default"),
            driver: None,
            internal: false,
            external: false,
        });
    }
    out
}

/// Services with their dependencies first (the file refused cycles).
fn dependency_order(compose: &Compose) -> Vec<String> {
    fn visit(c: &Compose, name: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        if let Some(s) = c.services.get(name) {
            for dep in s.depends_on.keys() {
                visit(c, dep, seen, out);
            }
        }
        out.push(name.to_owned());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for name in compose.services.keys() {
        visit(compose, name, &mut seen, &mut out);
    }
    out
}

/// A service's environment, and which names hold secrets. A
/// SOPS-encrypted `env_file` is decrypted in memory; all its values are
/// secret.
fn environment(
    ctx: &UnitContext<'_>,
    dir: &str,
    s: &Service,
    lookup: &dyn Fn(&str) -> Option<String>,
    secrets: &mut Vec<String>,
) -> Result<(BTreeMap<String, String>, BTreeSet<String>), DriverError> {
    let from_sops: std::cell::RefCell<Vec<(String, String)>> = Default::default();
    let read = |f: &str| -> Result<Option<EnvSource>, String> {
        let rel = crate::clean_relative(dir, f)
            .ok_or_else(|| format!("env file {f} leads outside the project"))?;
        let Some(text) = terrace_fs::read_if_exists(&ctx.root.join(&rel))
            .map_err(|e| format!("env file {rel}: {e}"))?
        else {
            return Ok(None);
        };
        let is_sops = text.lines().any(|l| l.starts_with("sops_mac=ENC["))
            || terrace_core::secrets::looks_encrypted(&text);
        if !is_sops {
            return Ok(Some(EnvSource::Text(text)));
        }
        let source = ctx
            .secrets
            .ok_or_else(|| format!("env file {rel} is SOPS-encrypted, and no keys are loaded"))?;
        let doc = source
            .value(&rel, &[])
            .map_err(|e| format!("env file {rel}: {e}"))?;
        let Value::Object(map) = doc else {
            return Err(format!(
                "env file {rel} does not decrypt to KEY=VALUE pairs"
            ));
        };
        let vars: Vec<(String, String)> = map
            .into_iter()
            .filter(|(k, _)| k != "sops" && !k.starts_with("sops_"))
            .map(|(k, v)| (k, input_text(&v).unwrap_or_else(|| v.to_string())))
            .collect();
        from_sops.borrow_mut().extend(vars.iter().cloned());
        Ok(Some(EnvSource::Values(vars)))
    };
    let env = terrace_compose::environment_with_files(s, &read, lookup)
        .map_err(|e| Diagnostic::new(e).in_file(format!("{}/{UNIT_FILE}", ctx.unit.dir)))?;
    for (_, v) in from_sops.into_inner() {
        if !v.is_empty() {
            secrets.push(v);
        }
    }
    let env: BTreeMap<String, String> = env
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let secret_env = env
        .iter()
        .filter(|(_, v)| holds_secret(v, secrets))
        .map(|(k, _)| k.clone())
        .collect();
    Ok((env, secret_env))
}

fn holds_secret(v: &str, secrets: &[String]) -> bool {
    secrets.iter().any(|s| {
        v == s || (s.len() >= terrace_core::secrets::MIN_SEARCHED_LEN && v.contains(s.as_str()))
    })
}

#[allow(clippy::too_many_arguments)]
fn container_spec(
    ctx: &UnitContext<'_>,
    project: &str,
    dir: &str,
    name: &str,
    s: &Service,
    env: BTreeMap<String, String>,
    networks: &[NetworkWant],
    volumes: &[VolumeWant],
) -> ContainerSpec {
    let mut labels = s.labels.clone();
    labels.insert(PROJECT_LABEL.into(), project.into());
    labels.insert(SERVICE_LABEL.into(), name.into());
    labels.insert("com.docker.compose.container-number".into(), "1".into());
    labels.insert("com.docker.compose.oneoff".into(), "False".into());
    labels.insert(UNIT_LABEL.into(), ctx.unit.name.clone());
    labels.insert(ENVIRONMENT_LABEL.into(), ctx.environment.into());
    let net_name = |key: &str| {
        networks
            .iter()
            .find(|n| n.key == key)
            .map_or_else(|| format!("{project}_{key}"), |n| n.name.clone())
    };
    let mut nets = BTreeMap::new();
    if s.networks.is_empty() {
        nets.insert(net_name("default"), vec![name.to_owned()]);
    }
    for (key, aliases) in &s.networks {
        let mut a = vec![name.to_owned()];
        a.extend(aliases.iter().cloned());
        nets.insert(net_name(key), a);
    }
    let mounts = s
        .volumes
        .iter()
        .map(|m| MountSpec {
            kind: match m.kind {
                MountKind::Bind => "bind",
                MountKind::Volume => "volume",
                MountKind::Tmpfs => "tmpfs",
            }
            .to_owned(),
            source: match (m.kind, &m.source) {
                (MountKind::Bind, Some(src)) if !src.starts_with('/') => Some(
                    ctx.root
                        .join(dir)
                        .join(src)
                        .to_string_lossy()
                        .trim_end_matches("/.")
                        .to_owned(),
                ),
                (MountKind::Volume, Some(key)) => Some(
                    volumes
                        .iter()
                        .find(|v| &v.key == key)
                        .map_or_else(|| key.clone(), |v| v.name.clone()),
                ),
                (_, src) => src.clone(),
            },
            target: m.target.clone(),
            read_only: m.read_only,
        })
        .collect();
    let nanos = |d: Option<Duration>| d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    ContainerSpec {
        name: s
            .container_name
            .clone()
            .unwrap_or_else(|| format!("{project}-{name}-1")),
        image: s.image.clone(),
        command: s.command.clone(),
        entrypoint: s.entrypoint.clone(),
        env,
        env_keys: BTreeSet::new(),
        labels,
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        hostname: s.hostname.clone(),
        ports: s
            .ports
            .iter()
            .map(|p| PortSpec {
                host_ip: p.host_ip.clone(),
                host_port: p.published.clone(),
                container_port: p.target,
                protocol: p.protocol.clone(),
                publish: true,
            })
            .collect(),
        mounts,
        networks: nets,
        restart: s.restart.clone(),
        cap_add: s.cap_add.clone(),
        cap_drop: s.cap_drop.clone(),
        read_only: s.read_only,
        tmpfs: s.tmpfs.clone(),
        ulimits: s.ulimits.clone(),
        nano_cpus: s.cpus.map(|c| (c * 1e9) as i64),
        memory: s.memory,
        healthcheck: s.healthcheck.as_ref().map(|h| HealthSpec {
            test: if h.disable {
                vec!["NONE".to_owned()]
            } else {
                h.test.clone()
            },
            interval: nanos(h.interval),
            timeout: nanos(h.timeout),
            start_period: nanos(h.start_period),
            retries: h.retries.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
        }),
    }
}

/// Where the unit's engine is: `None` for the embedded default.
fn endpoint(root: &Path, target: &ResolvedTarget) -> Result<Option<Endpoint>, DriverError> {
    let b = &target.binding;
    let Some(host) = &b.host else {
        return Ok(None);
    };
    let path = |p: &str| -> std::path::PathBuf {
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        match (p.strip_prefix("~/"), home) {
            (Some(rest), Some(home)) => home.join(rest),
            _ => root.join(p),
        }
    };
    let tls = b.tls.as_ref().map(|t| terrace_docker::TlsFiles {
        ca: path(&t.ca),
        cert: path(&t.cert),
        key: path(&t.key),
    });
    let ssh = b.ssh.as_ref().map(|s| terrace_docker::SshOptions {
        known_hosts: s.known_hosts.as_deref().map(path),
        identity: s.identity.as_deref().map(path),
        socket: s.socket.clone(),
    });
    Endpoint::parse(host, tls, ssh)
        .map(Some)
        .map_err(|e| DriverError::Target(format!("target `{}`: {e}", target.name)))
}

fn target<'a>(ctx: &'a UnitContext<'_>) -> Result<&'a ResolvedTarget, DriverError> {
    let t = ctx.unit.target.as_ref().ok_or_else(|| {
        Diagnostic::new(format!(
            "unit `{}` of kind compose names no target",
            ctx.unit.name
        ))
        .in_file(unit_file(ctx))
        .with_hint("set `target:` to a docker target of terrace.yaml")
    })?;
    if t.kind != TargetKind::Docker {
        return Err(DriverError::Target(format!(
            "unit `{}` is of kind compose, but target `{}` is a {}, not a docker target",
            ctx.unit.name, t.name, t.kind
        )));
    }
    Ok(t)
}

fn docker_error(e: DockerError) -> DriverError {
    DriverError::Target(e.to_string())
}

impl ComposeDriver {
    async fn engine(&self, endpoint: &Endpoint) -> Result<Arc<Engine>, DriverError> {
        let key = endpoint.to_string();
        let mut engines = self.engines.lock().await;
        if let Some(e) = engines.get(&key) {
            return Ok(Arc::clone(e));
        }
        let e = Arc::new(Engine::connect(endpoint).await.map_err(docker_error)?);
        engines.insert(key, Arc::clone(&e));
        Ok(e)
    }
}

/// A value as a plan line shows it.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "(none)".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Why a running container differs from the one wanted: `~ svc.field: old → new`.
fn differences(
    w: &ServiceWant,
    live: &LiveContainer,
    image_id: Option<&str>,
    secrets: &[String],
) -> Vec<String> {
    let svc = &w.service;
    let mut out = Vec::new();
    let Some(had) = live.spec() else {
        out.push(format!(
            "~ {svc}: container {} was not made by terrace: it is recreated",
            live.name
        ));
        return out;
    };
    let want = serde_json::to_value(w.spec.as_labelled()).unwrap_or_default();
    let have = serde_json::to_value(&had).unwrap_or_default();
    let empty = Map::new();
    let (want, have) = (
        want.as_object().unwrap_or(&empty),
        have.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = want.keys().chain(have.keys()).collect();
    keys.dedup();
    let mut seen = BTreeSet::new();
    for k in keys {
        if k == "envKeys" || !seen.insert(k.clone()) {
            continue;
        }
        let (a, b) = (
            have.get(k).unwrap_or(&Value::Null),
            want.get(k).unwrap_or(&Value::Null),
        );
        if a != b {
            out.push(format!("~ {svc}.{k}: {} → {}", show(a), show(b)));
        }
    }
    for (k, v) in &w.spec.env {
        let old = live.env.get(k);
        if old == Some(v) {
            continue;
        }
        let secret = w.secret_env.contains(k) || old.is_some_and(|o| holds_secret(o, secrets));
        out.push(match (old, secret) {
            (_, true) => format!("~ {svc}.environment.{k}: (sensitive value changed)"),
            (Some(o), false) => format!("~ {svc}.environment.{k}: {o} → {v}"),
            (None, false) => format!("+ {svc}.environment.{k}: {v}"),
        });
    }
    for k in had
        .env_keys
        .difference(&w.spec.env.keys().cloned().collect())
    {
        out.push(format!("- {svc}.environment.{k}"));
    }
    if let Some(id) = image_id
        && strip_sha(id) != strip_sha(&live.image_id)
        && !live.image_id.is_empty()
        && had.image == w.spec.image
    {
        out.push(format!(
            "~ {svc}.image: {} has new content ({} → {})",
            w.spec.image,
            short(&live.image_id),
            short(id)
        ));
    }
    if !live.running {
        out.push(format!(
            "~ {svc}: not running ({}, exit code {})",
            live.status,
            live.exit_code.unwrap_or_default()
        ));
    }
    out
}

fn strip_sha(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

fn short(id: &str) -> &str {
    let s = strip_sha(id);
    &s[..s.len().min(12)]
}

/// What a new container looks like in a plan.
fn creation(w: &ServiceWant) -> String {
    let mut out = format!("+ {}.image: {}\n", w.service, w.spec.image);
    for p in &w.spec.ports {
        out.push_str(&format!(
            "+ {}.port: {}{}/{}\n",
            w.service,
            p.host_port
                .as_deref()
                .map(|h| format!("{h}:"))
                .unwrap_or_default(),
            p.container_port,
            p.protocol
        ));
    }
    for m in &w.spec.mounts {
        out.push_str(&format!(
            "+ {}.mount: {} {} → {}\n",
            w.service,
            m.kind,
            m.source.as_deref().unwrap_or("(anonymous)"),
            m.target
        ));
    }
    for k in w.spec.env.keys() {
        if w.secret_env.contains(k) {
            out.push_str(&format!("+ {}.environment.{k}: (sensitive)\n", w.service));
        } else {
            out.push_str(&format!(
                "+ {}.environment.{k}: {}\n",
                w.service, w.spec.env[k]
            ));
        }
    }
    out
}

/// The unit's outputs from the wanted ports (`None` when a published
/// port is picked by the engine, so only apply knows it), or from `live`.
fn outputs(
    d: &Desired,
    target: &str,
    address: &str,
    live: Option<&BTreeMap<String, LiveContainer>>,
    dir: Option<&str>,
) -> Option<Map<String, Value>> {
    let mut services = Map::new();
    for w in &d.services {
        let mut ports = Map::new();
        let mut first: Option<u16> = None;
        match live.and_then(|l| l.get(&w.service)) {
            Some(c) => {
                for p in &w.spec.ports {
                    let key = format!("{}/{}", p.container_port, p.protocol);
                    let host = *c.ports.get(&key)?.first()?;
                    first.get_or_insert(host);
                    ports.insert(key, json!(host));
                }
            }
            None => {
                for p in &w.spec.ports {
                    let host: u16 = p.host_port.as_deref()?.parse().ok()?;
                    first.get_or_insert(host);
                    ports.insert(format!("{}/{}", p.container_port, p.protocol), json!(host));
                }
            }
        }
        let mut s = Map::new();
        s.insert("container".into(), json!(w.spec.name));
        s.insert("host".into(), json!(address));
        if let Some(p) = first {
            s.insert("port".into(), json!(p));
        }
        s.insert("ports".into(), Value::Object(ports));
        services.insert(w.service.clone(), Value::Object(s));
    }
    let mut out = Map::new();
    out.insert("project".into(), json!(d.project));
    out.insert("target".into(), json!(target));
    out.insert("host".into(), json!(address));
    out.insert("services".into(), Value::Object(services));
    if let Some(dir) = dir {
        out.insert("dir".into(), json!(dir));
    }
    Some(out)
}

/// What apply carries out on a live engine.
#[derive(Debug)]
struct ComposePlan {
    engine: Arc<Engine>,
    unit: String,
    desired: Desired,
    target: String,
    address: String,
    /// Services whose container is (re)created.
    recreate: BTreeSet<String>,
    /// Containers removed first (services that left the file).
    remove: Vec<String>,
    create_networks: Vec<NetworkWant>,
    remove_networks: Vec<String>,
    create_volumes: Vec<VolumeWant>,
}

/// What destroy carries out on a live engine.
#[derive(Debug)]
struct ComposeDestroy {
    engine: Arc<Engine>,
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

/// The planned containers as files (the embedded default and `render`).
fn documents(d: &Desired, dir: &str) -> Vec<DesiredFile> {
    let mut files = Vec::new();
    for w in &d.services {
        let mut spec = serde_json::to_value(&w.spec).unwrap_or_default();
        if let Some(o) = spec.as_object_mut() {
            let env: Map<String, Value> = w
                .spec
                .env
                .iter()
                .map(|(k, v)| {
                    let v = if w.secret_env.contains(k) {
                        "(sensitive)".to_owned()
                    } else {
                        v.clone()
                    };
                    (k.clone(), Value::String(v))
                })
                .collect();
            o.insert("environment".into(), Value::Object(env));
            o.insert(
                "dependsOn".into(),
                Value::Array(w.depends_on.keys().map(|k| json!(k)).collect()),
            );
        }
        files.push(DesiredFile {
            address: format!("service {}", w.service),
            object: None,
            path: format!("{dir}/{}.yaml", w.service),
            content: terrace_yaml::to_string(&spec),
            sensitive: false,
            secret_sources: Vec::new(),
        });
    }
    let project = json!({
        "project": d.project,
        "networks": d.networks.iter().map(|n| json!({"key": n.key, "name": n.name, "external": n.external})).collect::<Vec<_>>(),
        "volumes": d.volumes.iter().map(|v| json!({"key": v.key, "name": v.name, "external": v.external})).collect::<Vec<_>>(),
    });
    files.push(DesiredFile {
        address: format!("project {}", d.project),
        object: None,
        path: format!("{dir}/_project.yaml"),
        content: terrace_yaml::to_string(&project),
        sensitive: false,
        secret_sources: Vec::new(),
    });
    files
}

fn rendered_dir(ctx: &UnitContext<'_>, target: &str) -> String {
    format!(
        "{WORK_DIR}/rendered/{}/{target}/{}",
        ctx.environment, ctx.unit.name
    )
}

fn render_hash(d: &Desired) -> String {
    let mut text = String::new();
    for w in &d.services {
        text.push_str(&w.spec.label());
        for (k, v) in &w.spec.env {
            // A secret counts by its name only: a digest of it could be
            // guessed at.
            if w.secret_env.contains(k) {
                text.push_str(&format!("{k}=(sensitive)\n"));
            } else {
                text.push_str(&format!("{k}={v}\n"));
            }
        }
    }
    crate::digest(text.as_bytes())
}

impl ComposeDriver {
    async fn plan_live(
        &self,
        ctx: &UnitContext<'_>,
        d: Desired,
        t: &ResolvedTarget,
        endpoint: Endpoint,
    ) -> Result<UnitPlan, DriverError> {
        let engine = self.engine(&endpoint).await?;
        let address = t
            .binding
            .address
            .clone()
            .unwrap_or_else(|| endpoint.address());
        let live = engine
            .project_containers(&d.project)
            .await
            .map_err(docker_error)?;
        let mut by_service: BTreeMap<String, LiveContainer> = BTreeMap::new();
        let mut others = Vec::new();
        for c in live {
            match c.labels.get(SERVICE_LABEL) {
                Some(s)
                    if d.services.iter().any(|w| &w.service == s)
                        && !by_service.contains_key(s) =>
                {
                    by_service.insert(s.clone(), c);
                }
                _ => others.push(c),
            }
        }
        let mut changes = Vec::new();
        let mut notes = Vec::new();
        let mut unchanged = 0;
        let mut recreate = BTreeSet::new();
        for w in &d.services {
            let image_id = engine.image_id(&w.spec.image).await.map_err(docker_error)?;
            if image_id.is_none() && d.settings.pull == Pull::Never {
                return Err(DriverError::Target(format!(
                    "service `{}`: image {} is not on the host and `compose.pull` is never",
                    w.service, w.spec.image
                )));
            }
            let address_of = format!("service {}", w.service);
            match by_service.get(&w.service) {
                None => {
                    // A container of that name that is not this project's.
                    if let Some(other) = engine.inspect(&w.spec.name).await.map_err(docker_error)?
                        && other.labels.get(PROJECT_LABEL) != Some(&d.project)
                    {
                        return Err(DriverError::Target(format!(
                            "service `{}`: a container named {} already runs on the host and belongs to {}; rename it, remove it, or set the service's container_name",
                            w.service,
                            w.spec.name,
                            other
                                .labels
                                .get(PROJECT_LABEL)
                                .map_or("no compose project".to_owned(), |p| format!(
                                    "compose project {p}"
                                ))
                        )));
                    }
                    recreate.insert(w.service.clone());
                    changes.push(Change {
                        address: address_of,
                        object: None,
                        action: Action::Create,
                        diff: Some(creation(w)),
                    });
                }
                Some(c) => {
                    let why = differences(w, c, image_id.as_deref(), &d.secrets);
                    if why.is_empty() {
                        unchanged += 1;
                    } else {
                        recreate.insert(w.service.clone());
                        changes.push(Change {
                            address: address_of,
                            object: None,
                            action: Action::Replace,
                            diff: Some(format!(
                                "{}\n  (container {} is recreated)\n",
                                why.join("\n"),
                                c.name
                            )),
                        });
                    }
                }
            }
        }
        let mut remove = Vec::new();
        for c in &others {
            if c.labels.get(UNIT_LABEL) == Some(&ctx.unit.name) {
                remove.push(c.name.clone());
                changes.push(Change {
                    address: format!(
                        "service {}",
                        c.labels
                            .get(SERVICE_LABEL)
                            .cloned()
                            .unwrap_or_else(|| c.name.clone())
                    ),
                    object: None,
                    action: Action::Delete,
                    diff: Some(format!("- container {} (its volumes are kept)\n", c.name)),
                });
            } else {
                notes.push(format!(
                    "container {} is in compose project {} but was not made by this unit: left alone",
                    c.name, d.project
                ));
            }
        }
        let live_networks = engine
            .project_networks(&d.project)
            .await
            .map_err(docker_error)?;
        let mut create_networks = Vec::new();
        for n in &d.networks {
            if engine.network_exists(&n.name).await.map_err(docker_error)? {
                continue;
            }
            if n.external {
                return Err(DriverError::Target(format!(
                    "network {} is external but does not exist on the host; create it first",
                    n.name
                )));
            }
            create_networks.push(n.clone());
            changes.push(Change {
                address: format!("network {}", n.name),
                object: None,
                action: Action::Create,
                diff: None,
            });
        }
        let remove_networks: Vec<String> = live_networks
            .into_iter()
            .filter(|n| !d.networks.iter().any(|w| &w.name == n))
            .collect();
        for n in &remove_networks {
            changes.push(Change {
                address: format!("network {n}"),
                object: None,
                action: Action::Delete,
                diff: None,
            });
        }
        let live_volumes = engine
            .project_volumes(&d.project)
            .await
            .map_err(docker_error)?;
        let mut create_volumes = Vec::new();
        for v in &d.volumes {
            if engine.volume_exists(&v.name).await.map_err(docker_error)? {
                continue;
            }
            if v.external {
                return Err(DriverError::Target(format!(
                    "volume {} is external but does not exist on the host; create it first",
                    v.name
                )));
            }
            create_volumes.push(v.clone());
            changes.push(Change {
                address: format!("volume {}", v.name),
                object: None,
                action: Action::Create,
                diff: None,
            });
        }
        for v in live_volumes {
            if !d.volumes.iter().any(|w| w.name == v) {
                notes.push(format!(
                    "volume {v} is no longer in the file and is kept (`terrace destroy --unit {} --volumes --yes` removes the unit's volumes)",
                    ctx.unit.name
                ));
            }
        }
        let action = if changes.is_empty() {
            Action::NoOp
        } else if ctx.prior.is_none() && by_service.is_empty() {
            Action::Create
        } else {
            Action::Update
        };
        let outs = if recreate.is_empty() {
            outputs(&d, &t.name, &address, Some(&by_service), None)
        } else {
            outputs(&d, &t.name, &address, None, None)
        };
        Ok(UnitPlan {
            action,
            changes,
            unchanged,
            outputs: outs,
            render_hash: format!("{}@{}", render_hash(&d), endpoint),
            notes,
            payload: Some(Arc::new(ComposePlan {
                engine,
                unit: ctx.unit.name.clone(),
                target: t.name.clone(),
                address,
                recreate,
                remove,
                create_networks,
                remove_networks,
                create_volumes,
                desired: d,
            })),
        })
    }
}

fn engine_error(applied: &[InventoryItem], e: DockerError) -> DriverError {
    DriverError::Incomplete {
        applied: Box::new(Applied {
            outputs: Map::new(),
            inventory: applied.to_vec(),
            sensitive: Vec::new(),
        }),
        message: e.to_string(),
    }
}

async fn apply_live(ctx: &ApplyContext<'_>, p: &ComposePlan) -> Result<Applied, DriverError> {
    let e = &p.engine;
    let d = &p.desired;
    let say = |line: String| {
        if let Some(l) = ctx.lines {
            l.send(&line);
        }
    };
    let timeout = d
        .settings
        .timeout
        .as_ref()
        .map_or(Duration::from_secs(300), Timeout::duration);
    let mut done: Vec<InventoryItem> = Vec::new();
    for name in &p.remove {
        e.remove_container(name)
            .await
            .map_err(|x| engine_error(&done, x))?;
        say(format!("removed container {name}"));
    }
    let labels = |kind_label: &str, key: &str| {
        BTreeMap::from([
            (PROJECT_LABEL.to_owned(), d.project.clone()),
            (kind_label.to_owned(), key.to_owned()),
            (UNIT_LABEL.to_owned(), p.unit.clone()),
        ])
    };
    for n in &p.create_networks {
        e.create_network(
            &n.name,
            n.driver.as_deref(),
            n.internal,
            &labels(NETWORK_LABEL, &n.key),
        )
        .await
        .map_err(|x| engine_error(&done, x))?;
        say(format!("created network {}", n.name));
    }
    for n in &d.networks {
        done.push(InventoryItem::DockerNetwork {
            name: n.name.clone(),
        });
    }
    for v in &p.create_volumes {
        e.create_volume(&v.name, v.driver.as_deref(), &labels(VOLUME_LABEL, &v.key))
            .await
            .map_err(|x| engine_error(&done, x))?;
        say(format!("created volume {}", v.name));
    }
    for v in &d.volumes {
        done.push(InventoryItem::DockerVolume {
            name: v.name.clone(),
        });
    }
    let by_name: BTreeMap<&str, &ServiceWant> =
        d.services.iter().map(|w| (w.service.as_str(), w)).collect();
    for w in &d.services {
        for (dep, cond) in &w.depends_on {
            let Some(dw) = by_name.get(dep.as_str()) else {
                continue;
            };
            let waited = match cond {
                Condition::Started => e.wait_healthy(&dw.spec.name, None, timeout).await,
                Condition::Healthy => {
                    say(format!("{}: waiting for {dep} to be healthy", w.service));
                    e.wait_healthy(&dw.spec.name, dw.spec.healthcheck.as_ref(), timeout)
                        .await
                }
                Condition::CompletedSuccessfully => {
                    match e.wait_exited(&dw.spec.name, timeout).await {
                        Ok(0) => Ok(()),
                        Ok(code) => Err(DockerError::NotReady(format!(
                            "{dep} exited with code {code}, and {} needs it to complete successfully",
                            w.service
                        ))),
                        Err(x) => Err(x),
                    }
                }
            };
            waited.map_err(|x| engine_error(&done, x))?;
        }
        if p.recreate.contains(&w.service) {
            let have = e
                .image_id(&w.spec.image)
                .await
                .map_err(|x| engine_error(&done, x))?;
            if d.settings.pull == Pull::Always
                || (have.is_none() && d.settings.pull == Pull::Missing)
            {
                say(format!("{}: pulling {}", w.service, w.spec.image));
                e.pull(&w.spec.image, &|l| say(l.to_owned()))
                    .await
                    .map_err(|x| engine_error(&done, x))?;
            }
            e.remove_container(&w.spec.name)
                .await
                .map_err(|x| engine_error(&done, x))?;
            e.create_and_start(&w.spec)
                .await
                .map_err(|x| engine_error(&done, x))?;
            say(format!("{}: started container {}", w.service, w.spec.name));
        }
        done.push(InventoryItem::Container {
            name: w.spec.name.clone(),
            service: w.service.clone(),
        });
    }
    for w in &d.services {
        if p.recreate.contains(&w.service)
            && w.spec.healthcheck.as_ref().is_some_and(|h| !h.disabled())
        {
            say(format!("{}: waiting for health", w.service));
            e.wait_healthy(&w.spec.name, w.spec.healthcheck.as_ref(), timeout)
                .await
                .map_err(|x| engine_error(&done, x))?;
        }
    }
    for n in &p.remove_networks {
        e.remove_network(n)
            .await
            .map_err(|x| engine_error(&done, x))?;
        say(format!("removed network {n}"));
    }
    let mut live = BTreeMap::new();
    for w in &d.services {
        if let Some(c) = e
            .inspect(&w.spec.name)
            .await
            .map_err(|x| engine_error(&done, x))?
        {
            live.insert(w.service.clone(), c);
        }
    }
    let outputs = outputs(d, &p.target, &p.address, Some(&live), None).ok_or_else(|| {
        engine_error(
            &done,
            DockerError::NotReady("a published port of a service has no host port".to_owned()),
        )
    })?;
    Ok(Applied {
        outputs,
        inventory: done,
        sensitive: Vec::new(),
    })
}

impl Driver for ComposeDriver {
    fn render<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<Rendered, DriverError>> {
        Box::pin(async move {
            let t = target(ctx)?;
            let d = desired(ctx)?;
            let dir = rendered_dir(ctx, &t.name);
            Ok(Rendered {
                documents: documents(&d, &dir)
                    .into_iter()
                    .map(|f| RenderedDocument {
                        address: f.address,
                        path: Some(f.path),
                        content: f.content,
                    })
                    .collect(),
            })
        })
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(async move {
            let t = target(ctx)?;
            let d = desired(ctx)?;
            backup::check(ctx, &d)?;
            match endpoint(ctx.root, t)? {
                Some(ep) => self.plan_live(ctx, d, t, ep).await,
                None => {
                    let dir = rendered_dir(ctx, &t.name);
                    let address = t
                        .binding
                        .address
                        .clone()
                        .unwrap_or_else(|| "127.0.0.1".to_owned());
                    let outs = outputs(&d, &t.name, &address, None, Some(&dir));
                    let files = documents(&d, &dir);
                    let mut plan = fileset::plan(
                        ctx.root,
                        files,
                        ctx.prior,
                        outs.clone().unwrap_or_default(),
                        vec![dir],
                    )?;
                    if outs.is_none() {
                        plan.outputs = None;
                    }
                    Ok(plan)
                }
            }
        })
    }

    fn plan_destroy<'a>(
        &'a self,
        ctx: &'a DestroyContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(async move {
            let target_name = ctx.prior.outputs.get("target").and_then(Value::as_str);
            let t = ctx
                .unit
                .and_then(|u| u.target.as_ref())
                .or_else(|| target_name.and_then(|n| ctx.targets.get(n)));
            let ep = match t {
                Some(t) => endpoint(ctx.root, t)?,
                None => None,
            };
            let (Some(ep), Some(project)) =
                (ep, ctx.prior.outputs.get("project").and_then(Value::as_str))
            else {
                return fileset::plan_destroy_from_state(ctx, "dir");
            };
            let engine = self.engine(&ep).await?;
            let unit = &ctx.prior.unit;
            let mut changes = Vec::new();
            let mut notes = Vec::new();
            let containers: Vec<String> = engine
                .project_containers(project)
                .await
                .map_err(docker_error)?
                .into_iter()
                .filter(|c| c.labels.get(UNIT_LABEL) == Some(unit))
                .map(|c| {
                    changes.push(Change {
                        address: format!(
                            "service {}",
                            c.labels.get(SERVICE_LABEL).cloned().unwrap_or_default()
                        ),
                        object: None,
                        action: Action::Delete,
                        diff: Some(format!("- container {}\n", c.name)),
                    });
                    c.name
                })
                .collect();
            let networks = engine
                .project_networks(project)
                .await
                .map_err(docker_error)?;
            for n in &networks {
                changes.push(Change {
                    address: format!("network {n}"),
                    object: None,
                    action: Action::Delete,
                    diff: None,
                });
            }
            let all_volumes = engine
                .project_volumes(project)
                .await
                .map_err(docker_error)?;
            let volumes = if ctx.volumes {
                for v in &all_volumes {
                    changes.push(Change {
                        address: format!("volume {v}"),
                        object: None,
                        action: Action::Delete,
                        diff: Some(format!("- volume {v} and all its data\n")),
                    });
                }
                all_volumes
            } else {
                for v in &all_volumes {
                    notes.push(format!(
                        "volume {v} is kept (`--volumes` removes it with its data)"
                    ));
                }
                Vec::new()
            };
            Ok(UnitPlan {
                action: Action::Delete,
                changes,
                unchanged: 0,
                outputs: Some(Map::new()),
                render_hash: String::new(),
                notes,
                payload: Some(Arc::new(ComposeDestroy {
                    engine,
                    containers,
                    networks,
                    volumes,
                })),
            })
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ApplyContext<'a>,
        plan: &'a UnitPlan,
    ) -> BoxFuture<'a, Result<Applied, DriverError>> {
        Box::pin(async move {
            if let Some(p) = plan.payload::<ComposePlan>() {
                return apply_live(ctx, p).await;
            }
            if let Some(p) = plan.payload::<ComposeDestroy>() {
                for c in &p.containers {
                    p.engine.remove_container(c).await.map_err(docker_error)?;
                }
                for n in &p.networks {
                    p.engine.remove_network(n).await.map_err(docker_error)?;
                }
                for v in &p.volumes {
                    p.engine.remove_volume(v).await.map_err(docker_error)?;
                }
                return Ok(Applied::default());
            }
            fileset::apply(ctx.root, plan)
        })
    }
}
