//! The `app` kind: a short spec expanded into the Kubernetes objects of one
//! service, with secure defaults, applied like a `manifests` unit's.
//!
//! One app (or, with `instances`, one per instance, each its own set) is:
//!
//! - a ServiceAccount whose token is not mounted;
//! - a Deployment, or a StatefulSet (`stateful: true` with sized
//!   volumes), or a CronJob (`schedule`);
//! - a Service for its ports, and an Ingress with TLS for its `host`;
//! - a Secret for `secrets` (sealed like every object holding a secret)
//!   read through `envFrom`, a ConfigMap for `config` mounted as files;
//! - PersistentVolumeClaims for sized volumes; an NFS volume becomes a
//!   PersistentVolume bound to its claim, so the pod only mounts a claim
//!   (the restricted Pod Security Standard allows no `nfs` volume);
//! - a PodDisruptionBudget when it runs more than one replica;
//! - a NetworkPolicy letting in only the ingress controller's namespace
//!   and the apps `network.allowFrom` names, on the app's ports.
//!
//! Containers run as non-root, with a read-only root file system and a
//! writable `/tmp`, no privilege escalation, every capability dropped and
//! the runtime's default seccomp profile. Each default can be changed in
//! `security`, which then needs a `reason`; the changes and the reason
//! are written in the `terrace.dev/security-exceptions` annotation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use terrace_core::config::{TargetKind, UNIT_FILE};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{DriverError, UnitContext};
use terrace_core::kind::TypedKind;

use crate::manifests::{Object, ObjectsDriver, identify};
use terrace_kube::ClusterPool;

/// The `app` kind.
pub fn kind(clusters: &std::sync::Arc<ClusterPool>) -> TypedKind<AppSettings> {
    TypedKind::new(
        "app",
        "One service from a short spec: Deployment (or StatefulSet, CronJob), Service, Ingress with TLS, Secret, ConfigMap, volumes, PodDisruptionBudget and NetworkPolicy, with secure defaults.",
        Some(TargetKind::Cluster),
        ObjectsDriver::in_process(clusters, render_objects, true),
    )
}

/// `app:` in unit.yaml.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppSettings {
    /// The name of its objects (default: the unit's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The namespace of its objects (default: the target's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The image, with a tag (`ghcr.io/org/web:1.4.2`) or a digest
    /// (`…@sha256:…`); no tag, or `latest`, is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The ports it listens on: `8080`, or `{name: http, port: 8080,
    /// protocol: TCP}`. The first is the one probes, the Service's first
    /// port and the Ingress use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// The container's entrypoint (replaces the image's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables (`${...}` works; a secret is refused here:
    /// put it in `secrets`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Value>,
    /// Environment variables from secrets (`${secret.FILE.KEY}`): one
    /// Secret, read with `envFrom`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Value>,
    /// Files (name → content) in a ConfigMap, mounted read-only under
    /// `configPath`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Where `config` is mounted (default `/config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_path: Option<String>,
    /// Volumes by name: a claim (`size`), NFS (`nfs`) or scratch space
    /// (`emptyDir`), each mounted at `path`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, VolumeSpec>,
    /// An Ingress with TLS for this host name: `web.example.org`, or the
    /// long form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostSpec>,
    /// How many pods (default 1); more than one adds a PodDisruptionBudget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Requests and limits, as Kubernetes writes them (default: requests
    /// `cpu: 50m, memory: 64Mi`, limit `memory: 256Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Liveness and readiness checks (default: a TCP check of the first
    /// port, when there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<ProbesSpec>,
    /// The app's tier: `terrace.dev/tier` on every object and, with
    /// terrace.yaml's `tiers:`, the tier's PriorityClass and default
    /// resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// A cron schedule (`0 3 * * *`, UTC): a CronJob instead of a
    /// Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// A StatefulSet whose sized volumes are claim templates, one per pod.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateful: bool,
    /// The service factory: one app per instance, each with its own
    /// objects (named `<name>-<instance>`), each instance's settings
    /// merged over the app's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instances: BTreeMap<String, Value>,
    /// Changes to the secure defaults; any change needs a `reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecuritySpec>,
    /// Who may connect to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// How the objects are applied to a live cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<crate::ApplySettings>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u16),
    Named {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
    },
}

impl PortSpec {
    fn port(&self) -> u16 {
        match self {
            PortSpec::Number(p) | PortSpec::Named { port: p, .. } => *p,
        }
    }

    fn name(&self, i: usize) -> String {
        match self {
            PortSpec::Named { name: Some(n), .. } => n.clone(),
            _ if i == 0 => "http".to_owned(),
            _ => format!("port-{}", self.port()),
        }
    }

    fn protocol(&self) -> &str {
        match self {
            PortSpec::Named {
                protocol: Some(p), ..
            } => p,
            _ => "TCP",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Where it is mounted in the container.
    pub path: String,
    /// A PersistentVolumeClaim of this size (`10Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Default `ReadWriteOnce` (`ReadWriteMany` for NFS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<String>,
    /// An NFS export: a PersistentVolume bound to the app's claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<NfsSpec>,
    /// Scratch space that lives as long as the pod.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_dir: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NfsSpec {
    pub server: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum HostSpec {
    Name(String),
    Full(Box<HostFull>),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostFull {
    pub name: String,
    /// The IngressClass (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// cert-manager's ClusterIssuer for the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Authentication in front of it: a Traefik middleware
    /// (`namespace-name@kubernetescrd`) for class `traefik`, an auth URL
    /// for class `nginx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Annotations of the Ingress (rate limits, anything the class reads).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProbesSpec {
    /// `false`: no probes at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSpec>,
}

/// One check: `http` (a path), `tcp: true` or `exec` (a command).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProbeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    /// Default: the first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u32>,
}

/// Changes to the secure defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecuritySpec {
    /// Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// Default `true` (with `/tmp` writable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    /// Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    /// Capabilities added back after dropping all (`NET_BIND_SERVICE`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_capabilities: Vec<String>,
    /// Default `RuntimeDefault`; `Unconfined` is an exception.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
    /// Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    /// The user, group and file system group the container runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group: Option<i64>,
    /// Why the defaults were changed; required when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    /// The ingress controller's namespace, let in when the app has a
    /// `host` (default `ingress-nginx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_namespace: Option<String>,
    /// Apps (their `name`) whose pods may connect, in any namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// `false`: no NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<bool>,
}

const EXCEPTIONS: &str = "terrace.dev/security-exceptions";

/// An error about the unit's `app` settings.
fn bad(ctx: &UnitContext<'_>, field: &str, message: String, hint: &str) -> DriverError {
    Diagnostic::new(format!("app.{field}: {message}"))
        .in_file(format!("{}/{UNIT_FILE}", ctx.unit.dir))
        .with_hint(hint.to_owned())
        .into()
}

/// Why an image reference may not be deployed, if it may not.
pub fn image_problem(image: &str) -> Option<&'static str> {
    if image.trim().is_empty() {
        return Some("is empty");
    }
    if image.contains('@') {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => Some("has no tag, so it means `latest`, which moves"),
        Some((_, "latest")) => Some("is `latest`, which moves"),
        Some((_, "")) => Some("has an empty tag"),
        Some(_) => None,
    }
}

/// A DNS-1123 label: what Kubernetes names most objects with.
pub(crate) fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Renders the unit's objects: one set per instance.
pub fn render_objects(ctx: &UnitContext<'_>) -> Result<Vec<Object>, DriverError> {
    let base: AppSettings = crate::unit_settings(ctx)?;
    let name = base.name.clone().unwrap_or_else(|| ctx.unit.name.clone());
    let mut objects = Vec::new();
    if base.instances.is_empty() {
        objects.extend(render_one(ctx, &base, &name)?);
    } else {
        let mut plain = ctx.unit.settings.clone();
        if let Some(m) = plain.as_object_mut() {
            m.remove("instances");
        }
        for (instance, overrides) in &base.instances {
            if !is_label(instance) {
                return Err(bad(
                    ctx,
                    &format!("instances.{instance}"),
                    "is not a valid name".to_owned(),
                    "use lowercase letters, digits and `-`",
                ));
            }
            if overrides.get("instances").is_some() {
                return Err(bad(
                    ctx,
                    &format!("instances.{instance}"),
                    "sets `instances` again".to_owned(),
                    "instances do not nest",
                ));
            }
            let mut merged = plain.clone();
            merge(&mut merged, overrides.clone());
            let one: AppSettings = terrace_core::kind::parse_settings(&merged).map_err(|e| {
                bad(
                    ctx,
                    &format!("instances.{instance}"),
                    e.to_string(),
                    "an instance's settings are the app's, merged over them",
                )
            })?;
            objects.extend(render_one(ctx, &one, &format!("{name}-{instance}"))?);
        }
    }
    Ok(objects)
}

/// `over` merged into `base`, maps key by key.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Scalars as Kubernetes wants them in env: strings.
fn env_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The changes `security` makes to the defaults, as `field=value`.
fn exceptions(s: &SecuritySpec) -> Vec<String> {
    let mut out = Vec::new();
    if s.run_as_non_root == Some(false) {
        out.push("runAsNonRoot=false".to_owned());
    }
    if s.read_only_root_filesystem == Some(false) {
        out.push("readOnlyRootFilesystem=false".to_owned());
    }
    if s.allow_privilege_escalation == Some(true) {
        out.push("allowPrivilegeEscalation=true".to_owned());
    }
    if !s.add_capabilities.is_empty() {
        out.push(format!("capabilities.add={}", s.add_capabilities.join(",")));
    }
    if let Some(p) = s.seccomp.as_deref().filter(|p| *p != "RuntimeDefault") {
        out.push(format!("seccompProfile={p}"));
    }
    if s.automount_service_account_token == Some(true) {
        out.push("automountServiceAccountToken=true".to_owned());
    }
    out
}

fn render_one(
    ctx: &UnitContext<'_>,
    s: &AppSettings,
    name: &str,
) -> Result<Vec<Object>, DriverError> {
    if !is_label(name) {
        return Err(bad(
            ctx,
            "name",
            format!("`{name}` is not a valid object name"),
            "use lowercase letters, digits and `-`, at most 63",
        ));
    }
    let image = s.image.as_deref().ok_or_else(|| {
        bad(
            ctx,
            "image",
            "is missing".to_owned(),
            "name the image with a tag or digest: `image: ghcr.io/org/app:1.2.3`",
        )
    })?;
    if let Some(why) = image_problem(image) {
        return Err(bad(
            ctx,
            "image",
            format!("`{image}` {why}"),
            "pin a version tag (`:1.2.3`) or a digest (`@sha256:…`)",
        ));
    }
    let sensitive = |field: &str| -> Vec<PathBuf> {
        ctx.unit
            .sensitive_settings
            .get(field)
            .into_iter()
            .flatten()
            .map(PathBuf::from)
            .collect()
    };
    for field in [
        "env", "config", "command", "args", "host", "volumes", "image",
    ] {
        if !sensitive(field).is_empty() {
            return Err(bad(
                ctx,
                field,
                "holds a secret value".to_owned(),
                "secrets go in `secrets` (a Secret, read with envFrom), never in the pod spec",
            ));
        }
    }
    if let Some(sched) = &s.schedule {
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .build()
            .parse(sched)
            .map_err(|e| {
                bad(
                    ctx,
                    "schedule",
                    format!("`{sched}` is not a cron schedule: {e}"),
                    "five fields: minute hour day-of-month month day-of-week, as `0 3 * * *`",
                )
            })?;
    }
    let security = s.security.clone().unwrap_or_default();
    let changed = exceptions(&security);
    let reason = security
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if !changed.is_empty() && reason.is_none() {
        return Err(bad(
            ctx,
            "security.reason",
            format!(
                "is missing, and the defaults are changed ({})",
                changed.join(", ")
            ),
            "say why in `security.reason`; it is kept in the terrace.dev/security-exceptions annotation",
        ));
    }
    let replicas = s.replicas.unwrap_or(1);
    let labels = {
        let mut l = Map::new();
        l.insert("app.kubernetes.io/name".into(), json!(name));
        l.insert("app.kubernetes.io/managed-by".into(), json!("terrace"));
        if let Some(t) = &s.tier {
            l.insert("terrace.dev/tier".into(), json!(t));
        }
        Value::Object(l)
    };
    let selector = json!({ "app.kubernetes.io/name": name });
    let meta = |n: &str| {
        let mut m = json!({ "name": n, "labels": labels });
        if let Some(ns) = &s.namespace {
            m["namespace"] = json!(ns);
        }
        m
    };
    let mut annotations = Map::new();
    if let Some(r) = reason.filter(|_| !changed.is_empty()) {
        annotations.insert(
            EXCEPTIONS.into(),
            json!(format!("{}; reason: {r}", changed.join(", "))),
        );
    }

    let mut out: Vec<Value> = Vec::new();
    let automount = security.automount_service_account_token.unwrap_or(false);
    out.push(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name),
        "automountServiceAccountToken": automount,
    }));
    let secret_name = format!("{name}-secrets");
    let secret_files = sensitive("secrets");
    if !s.secrets.is_empty() {
        let mut data = Map::new();
        for (k, v) in &s.secrets {
            let text = env_text(v).ok_or_else(|| {
                bad(
                    ctx,
                    &format!("secrets.{k}"),
                    "is not a string or number".to_owned(),
                    "each secret is one value",
                )
            })?;
            data.insert(k.clone(), json!(text));
        }
        out.push(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": meta(&secret_name),
            "type": "Opaque", "stringData": data,
        }));
    }
    let config_name = format!("{name}-config");
    if !s.config.is_empty() {
        out.push(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&config_name),
            "data": s.config,
        }));
    }

    // Volumes and mounts: /tmp always writable.
    let mut volumes = vec![json!({"name": "tmp", "emptyDir": {}})];
    let mut mounts = vec![json!({"name": "tmp", "mountPath": "/tmp"})];
    if !s.config.is_empty() {
        volumes.push(json!({"name": "config", "configMap": {"name": config_name}}));
        mounts.push(json!({
            "name": "config",
            "mountPath": s.config_path.as_deref().unwrap_or("/config"),
            "readOnly": true,
        }));
    }
    let mut claim_templates = Vec::new();
    for (vol, v) in &s.volumes {
        if !is_label(vol) || vol == "tmp" || vol == "config" {
            return Err(bad(
                ctx,
                &format!("volumes.{vol}"),
                "is not a usable volume name".to_owned(),
                "use lowercase letters, digits and `-` (not `tmp` or `config`, which the app has)",
            ));
        }
        if !v.path.starts_with('/') {
            return Err(bad(
                ctx,
                &format!("volumes.{vol}.path"),
                format!("`{}` is not an absolute path", v.path),
                "write where it is mounted in the container, as `/data`",
            ));
        }
        let kinds = [
            v.size.is_some() && v.nfs.is_none(),
            v.nfs.is_some(),
            v.empty_dir,
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(bad(
                ctx,
                &format!("volumes.{vol}"),
                "must be exactly one of a claim (`size`), `nfs` or `emptyDir: true`".to_owned(),
                "give `size: 10Gi` for a claim, `nfs: {server, path}` with `size`, or `emptyDir: true`",
            ));
        }
        mounts.push(json!({"name": vol, "mountPath": v.path, "readOnly": v.read_only}));
        let claim = format!("{name}-{vol}");
        if v.empty_dir {
            volumes.push(json!({"name": vol, "emptyDir": {}}));
            continue;
        }
        let size = v.size.clone().unwrap_or_else(|| "1Gi".to_owned());
        let mut spec = json!({
            "accessModes": [v.access_mode.clone().unwrap_or_else(|| {
                if v.nfs.is_some() { "ReadWriteMany" } else { "ReadWriteOnce" }.to_owned()
            })],
            "resources": {"requests": {"storage": size}},
        });
        if let Some(sc) = &v.storage_class {
            spec["storageClassName"] = json!(sc);
        }
        if let Some(nfs) = &v.nfs {
            // The claim binds this volume only: no class may provision
            // another.
            let pv = format!("{}-{claim}", s.namespace.as_deref().unwrap_or("default"));
            let mut pv_meta = json!({ "name": pv, "labels": labels });
            pv_meta["labels"]["terrace.dev/claim"] = json!(claim);
            out.push(json!({
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": pv_meta,
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": spec["accessModes"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "mountOptions": ["nfsvers=4.1"],
                    "nfs": {"server": nfs.server, "path": nfs.path, "readOnly": v.read_only},
                },
            }));
            spec["storageClassName"] = json!("");
            spec["volumeName"] = json!(pv);
        }
        if s.stateful && v.nfs.is_none() && s.schedule.is_none() {
            claim_templates.push(json!({
                "metadata": {"name": vol, "labels": labels},
                "spec": spec,
            }));
        } else {
            out.push(json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(&claim),
                "spec": spec,
            }));
            volumes.push(json!({"name": vol, "persistentVolumeClaim": {"claimName": claim}}));
        }
    }

    // The container.
    let mut env = Vec::new();
    for (k, v) in &s.env {
        let text = env_text(v).ok_or_else(|| {
            bad(
                ctx,
                &format!("env.{k}"),
                "is not a string, number or boolean".to_owned(),
                "each variable is one value",
            )
        })?;
        env.push(json!({"name": k, "value": text}));
    }
    let ports: Vec<Value> = s
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"name": p.name(i), "containerPort": p.port(), "protocol": p.protocol()}))
        .collect();
    let seccomp = security
        .seccomp
        .clone()
        .unwrap_or_else(|| "RuntimeDefault".to_owned());
    let mut container_security = json!({
        "allowPrivilegeEscalation": security.allow_privilege_escalation.unwrap_or(false),
        "readOnlyRootFilesystem": security.read_only_root_filesystem.unwrap_or(true),
        "runAsNonRoot": security.run_as_non_root.unwrap_or(true),
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": seccomp},
    });
    if !security.add_capabilities.is_empty() {
        container_security["capabilities"]["add"] = json!(security.add_capabilities);
    }
    for (field, v) in [
        ("runAsUser", security.run_as_user),
        ("runAsGroup", security.run_as_group),
    ] {
        if let Some(v) = v {
            container_security[field] = json!(v);
        }
    }
    let tier = s.tier.as_deref().and_then(|t| ctx.tiers.get(t));
    if let Some(t) = &s.tier
        && !ctx.tiers.is_empty()
        && tier.is_none()
    {
        return Err(bad(
            ctx,
            "tier",
            format!(
                "`{t}` is not a tier of terrace.yaml (it has {})",
                ctx.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            "name one of terrace.yaml's tiers",
        ));
    }
    let resources = match (&s.resources, tier.and_then(|t| t.defaults.as_ref())) {
        (Some(r), _) => serde_json::to_value(r).expect("resources serialize"),
        // The tier's defaults, as its LimitRange would give them.
        (None, Some(d)) => serde_json::to_value(Resources {
            requests: d.requests.clone(),
            limits: d.limits.clone(),
        })
        .expect("resources serialize"),
        (None, None) => json!({
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }),
    };
    let mut container = json!({
        "name": name,
        "image": image,
        "securityContext": container_security,
        "resources": resources,
        "volumeMounts": mounts,
    });
    if !s.command.is_empty() {
        container["command"] = json!(s.command);
    }
    if !s.args.is_empty() {
        container["args"] = json!(s.args);
    }
    if !ports.is_empty() {
        container["ports"] = json!(ports);
    }
    if !env.is_empty() {
        container["env"] = json!(env);
    }
    if !s.secrets.is_empty() {
        container["envFrom"] = json!([{"secretRef": {"name": secret_name}}]);
    }
    if s.schedule.is_none() {
        let probes = s.probes.clone().unwrap_or_default();
        if probes.enabled != Some(false) {
            for (field, given) in [
                ("livenessProbe", &probes.liveness),
                ("readinessProbe", &probes.readiness),
            ] {
                if let Some(p) = probe(ctx, given.as_ref(), s.ports.first())? {
                    container[field] = p;
                }
            }
        }
    }
    let mut pod_security = json!({
        "runAsNonRoot": security.run_as_non_root.unwrap_or(true),
        "seccompProfile": {"type": security.seccomp.clone().unwrap_or_else(|| "RuntimeDefault".to_owned())},
    });
    if let Some(g) = security.fs_group {
        pod_security["fsGroup"] = json!(g);
    }
    let mut pod_meta = json!({"labels": labels});
    if !annotations.is_empty() {
        pod_meta["annotations"] = Value::Object(annotations.clone());
    }
    let mut pod_spec = json!({
        "serviceAccountName": name,
        "automountServiceAccountToken": automount,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    });
    if s.schedule.is_some() {
        pod_spec["restartPolicy"] = json!("OnFailure");
    }
    let template = json!({"metadata": pod_meta, "spec": pod_spec});
    let mut workload_meta = meta(name);
    if !annotations.is_empty() {
        workload_meta["annotations"] = Value::Object(annotations);
    }
    let headless = format!("{name}-headless");
    let workload = if let Some(sched) = &s.schedule {
        json!({
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": workload_meta,
            "spec": {
                "schedule": sched,
                "timeZone": "Etc/UTC",
                "concurrencyPolicy": "Forbid",
                "jobTemplate": {"spec": {"backoffLimit": 2, "template": template}},
            },
        })
    } else if s.stateful {
        let mut spec = json!({
            "serviceName": headless,
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": template,
        });
        if !claim_templates.is_empty() {
            spec["volumeClaimTemplates"] = json!(claim_templates);
        }
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": workload_meta, "spec": spec})
    } else {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": workload_meta,
            "spec": {"replicas": replicas, "selector": {"matchLabels": selector}, "template": template},
        })
    };

    let service_ports: Vec<Value> = s
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({"name": p.name(i), "port": p.port(), "targetPort": p.name(i), "protocol": p.protocol()})
        })
        .collect();
    if s.schedule.is_none() && !service_ports.is_empty() {
        out.push(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": meta(name),
            "spec": {"selector": selector, "ports": service_ports},
        }));
        if s.stateful {
            out.push(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": meta(&headless),
                "spec": {"clusterIP": "None", "selector": selector, "ports": service_ports},
            }));
        }
    }
    out.push(workload);
    if replicas > 1 && s.schedule.is_none() {
        out.push(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
        }));
    }
    let network = s.network.clone().unwrap_or_default();
    if network.policy != Some(false) {
        let mut from = Vec::new();
        if s.host.is_some() {
            let ns = network
                .ingress_namespace
                .clone()
                .unwrap_or_else(|| "ingress-nginx".to_owned());
            from.push(
                json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}),
            );
        }
        for other in &network.allow_from {
            from.push(json!({
                "namespaceSelector": {},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": other}},
            }));
        }
        let ingress = if from.is_empty() || service_ports.is_empty() {
            json!([])
        } else {
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| json!({"port": p.port(), "protocol": p.protocol()}))
                .collect();
            json!([{"from": from, "ports": ports}])
        };
        out.push(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(name),
            "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": ingress},
        }));
    }
    if let Some(host) = &s.host {
        if s.schedule.is_some() || s.ports.is_empty() {
            return Err(bad(
                ctx,
                "host",
                "is set, and the app serves no port".to_owned(),
                "give `ports`, or remove `host`",
            ));
        }
        out.push(ingress(ctx, host, name, &s.ports[0], meta(name))?);
    }

    let source = format!("{}/{UNIT_FILE}", ctx.unit.dir);
    out.into_iter()
        .map(|value| {
            let id = identify(&value).map_err(|m| bad(ctx, "", m, "report this as a bug"))?;
            let is_secret = value["kind"] == "Secret";
            Ok(Object {
                address: id.address,
                object: id.object,
                source: source.clone(),
                file_name: id.file_name,
                secret_sources: if is_secret {
                    secret_files.clone()
                } else {
                    Vec::new()
                },
                rule_from: None,
                secret_scope: Vec::new(),
                value,
            })
        })
        .collect()
}

fn probe(
    ctx: &UnitContext<'_>,
    given: Option<&ProbeSpec>,
    first: Option<&PortSpec>,
) -> Result<Option<Value>, DriverError> {
    let spec = match (given, first) {
        (Some(p), _) => p.clone(),
        (None, Some(_)) => ProbeSpec {
            tcp: Some(true),
            ..ProbeSpec::default()
        },
        (None, None) => return Ok(None),
    };
    let port = spec.port.or_else(|| first.map(PortSpec::port));
    let ways = [
        spec.http.is_some(),
        spec.tcp == Some(true),
        !spec.exec.is_empty(),
    ];
    if ways.iter().filter(|w| **w).count() != 1 {
        return Err(bad(
            ctx,
            "probes",
            "a probe is exactly one of `http: /path`, `tcp: true` or `exec: [command]`".to_owned(),
            "pick one way to check the app",
        ));
    }
    let mut p = if let Some(path) = &spec.http {
        let port = port.ok_or_else(|| {
            bad(
                ctx,
                "probes",
                "an http probe needs a port".to_owned(),
                "give `port`, or `ports`",
            )
        })?;
        json!({"httpGet": {"path": path, "port": port}})
    } else if spec.tcp == Some(true) {
        let port = port.ok_or_else(|| {
            bad(
                ctx,
                "probes",
                "a tcp probe needs a port".to_owned(),
                "give `port`, or `ports`",
            )
        })?;
        json!({"tcpSocket": {"port": port}})
    } else {
        json!({"exec": {"command": spec.exec}})
    };
    p["initialDelaySeconds"] = json!(spec.initial_delay_seconds.unwrap_or(5));
    p["periodSeconds"] = json!(spec.period_seconds.unwrap_or(10));
    Ok(Some(p))
}

fn ingress(
    ctx: &UnitContext<'_>,
    host: &HostSpec,
    name: &str,
    port: &PortSpec,
    mut meta: Value,
) -> Result<Value, DriverError> {
    let h = match host {
        HostSpec::Name(n) => HostFull {
            name: n.clone(),
            ..HostFull::default()
        },
        HostSpec::Full(f) => (**f).clone(),
    };
    let valid = !h.name.is_empty()
        && h.name.len() <= 253
        && h.name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !valid {
        return Err(bad(
            ctx,
            "host",
            format!("`{}` is not a host name", h.name),
            "write a lowercase DNS name, as `web.example.org`",
        ));
    }
    let mut annotations: Map<String, Value> = h
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if let Some(issuer) = &h.issuer {
        annotations.insert("cert-manager.io/cluster-issuer".into(), json!(issuer));
    }
    if let Some(auth) = &h.auth {
        let key = match h.class.as_deref() {
            Some("traefik") => "traefik.ingress.kubernetes.io/router.middlewares",
            Some("nginx") => "nginx.ingress.kubernetes.io/auth-url",
            other => {
                return Err(bad(
                    ctx,
                    "host.auth",
                    format!(
                        "is not known for ingress class {}",
                        other.map_or("(the cluster's default)".to_owned(), |c| format!("`{c}`"))
                    ),
                    "set `host.class` to traefik or nginx, or write the class's annotation in `host.annotations`",
                ));
            }
        };
        annotations.insert(key.into(), json!(auth));
    }
    if !annotations.is_empty() {
        meta["annotations"] = Value::Object(annotations);
    }
    let mut spec = json!({
        "tls": [{"hosts": [h.name], "secretName": format!("{name}-tls")}],
        "rules": [{
            "host": h.name,
            "http": {"paths": [{
                "path": h.path.as_deref().unwrap_or("/"),
                "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"number": port.port()}}},
            }]},
        }],
    });
    if let Some(class) = &h.class {
        spec["ingressClassName"] = json!(class);
    }
    Ok(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_must_be_pinned() {
        for ok in [
            "nginx:1.27",
            "ghcr.io/org/web:1.4.2",
            "registry:5000/x/y:2",
            "alpine@sha256:0123",
        ] {
            assert_eq!(image_problem(ok), None, "{ok}");
        }
        for bad in ["nginx", "nginx:latest", "registry:5000/x/y", "x:", ""] {
            assert!(image_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn instance_settings_merge_over_the_apps() {
        let mut base = json!({"image": "a:1", "env": {"A": "1", "B": "2"}, "replicas": 1});
        merge(&mut base, json!({"env": {"B": "3"}, "replicas": 2}));
        assert_eq!(
            base,
            json!({"image": "a:1", "env": {"A": "1", "B": "3"}, "replicas": 2})
        );
    }

    #[test]
    fn every_changed_default_is_an_exception() {
        assert!(exceptions(&SecuritySpec::default()).is_empty());
        let s = SecuritySpec {
            read_only_root_filesystem: Some(false),
            add_capabilities: vec!["NET_BIND_SERVICE".into()],
            seccomp: Some("RuntimeDefault".into()),
            ..SecuritySpec::default()
        };
        assert_eq!(
            exceptions(&s),
            vec![
                "readOnlyRootFilesystem=false".to_owned(),
                "capabilities.add=NET_BIND_SERVICE".to_owned()
            ]
        );
    }
}
