//! The compose files of `kind: compose` units, read as Docker Compose v2
//! reads them, for the subset homelabs use (the fields of [`SERVICE_KEYS`]
//! and the top-level `services`, `volumes`, `networks`, `name`):
//! interpolation first (string values only), then each field's short and
//! long syntaxes normalized into a typed [`Compose`]. A field outside the
//! subset is an error naming it and where it is; `x-` extensions are
//! allowed and ignored.

pub mod dotenv;
pub mod interpolate;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use terrace_core::diag::Diagnostic;

pub use interpolate::{InterpolationError, Read, interpolate, shell_words};

/// The service fields terrace reads.
pub const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "volumes",
    "healthcheck",
    "depends_on",
    "restart",
    "labels",
    "user",
    "working_dir",
    "networks",
    "cap_add",
    "cap_drop",
    "read_only",
    "tmpfs",
    "ulimits",
    "deploy",
    "container_name",
    "hostname",
];

/// A compose file, normalized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compose {
    /// The project name given by `name:` (normalized), if any.
    pub name: Option<String>,
    pub services: BTreeMap<String, Service>,
    pub volumes: BTreeMap<String, VolumeDef>,
    pub networks: BTreeMap<String, NetworkDef>,
    /// What interpolation read.
    pub read: Read,
}

/// One service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Service {
    pub image: String,
    /// `None`: the image's; `Some([])`: explicitly empty.
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// Name → value; `None`: named only (`KEY` from the environment,
    /// unset).
    pub environment: BTreeMap<String, Option<String>>,
    pub env_file: Vec<EnvFile>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Mount>,
    pub healthcheck: Option<Healthcheck>,
    pub depends_on: BTreeMap<String, Condition>,
    pub restart: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// Network → aliases.
    pub networks: BTreeMap<String, Vec<String>>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
    /// Name → (soft, hard).
    pub ulimits: BTreeMap<String, (i64, i64)>,
    /// `deploy.resources.limits.cpus`.
    pub cpus: Option<f64>,
    /// `deploy.resources.limits.memory`, in bytes.
    pub memory: Option<i64>,
    pub container_name: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    pub path: String,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host_ip: Option<String>,
    /// A port or a range, as written.
    pub published: Option<String>,
    pub target: u16,
    /// `tcp`, `udp`, `sctp`.
    pub protocol: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Volume,
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountKind,
    /// A path (bind, as written: relative to the compose file's
    /// directory), a volume's key, or none (anonymous, tmpfs).
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval: Option<std::time::Duration>,
    pub timeout: Option<std::time::Duration>,
    pub start_period: Option<std::time::Duration>,
    pub retries: Option<u64>,
    pub disable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeDef {
    pub name: Option<String>,
    pub driver: Option<String>,
    pub external: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkDef {
    pub name: Option<String>,
    pub driver: Option<String>,
    pub external: bool,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

/// An env file as its reader found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// Plain dotenv text, parsed (and interpolated) as Compose does.
    Text(String),
    /// Values already read: a SOPS-encrypted file decrypted in memory.
    Values(Vec<(String, String)>),
}

/// A service's environment with its `env_file`s, as Compose merges them:
/// the `environment` entries that have a value, then each file in
/// order, then every `environment` entry again on top (a named-only one
/// that the project environment does not set erases a file's value).
/// `read` gives a file's text (`None`: it does not exist); `lookup` is
/// the project environment.
pub fn environment_with_files(
    service: &Service,
    read: &dyn Fn(&str) -> Result<Option<EnvSource>, String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Option<String>>, String> {
    let mut out: BTreeMap<String, Option<String>> = service
        .environment
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let service_env = |k: &str| lookup(k).or_else(|| service.environment.get(k).cloned().flatten());
    let mut earlier: BTreeMap<String, String> = BTreeMap::new();
    for f in &service.env_file {
        let vars = match read(&f.path)? {
            None if f.required => return Err(format!("env file {} not found", f.path)),
            None => continue,
            Some(EnvSource::Text(text)) => {
                dotenv::parse(&text, &service_env, &earlier, &mut Read::default())
                    .map_err(|e| format!("{}: {e}", f.path))?
            }
            Some(EnvSource::Values(vars)) => vars,
        };
        for (k, v) in vars {
            earlier.insert(k.clone(), v.clone());
            out.insert(k, Some(v));
        }
    }
    for (k, v) in &service.environment {
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// The most services a file may declare.
const MAX_SERVICES: usize = 1000;

/// Reads the compose file `text` (at `file`, for errors), interpolating
/// with `lookup`.
pub fn load(
    text: &str,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Compose, Diagnostic> {
    // Read as Compose's go-yaml v3 reads it (`y` and `no` are strings).
    let docs: Vec<Value> =
        terrace_yaml::tree::parse_stream_with(text, file, terrace_yaml::tree::Schema::Kyaml)?
            .iter()
            .map(terrace_yaml::tree::Node::to_json)
            .filter(|v| !v.is_null())
            .collect();
    let [mut root] = <[_; 1]>::try_from(docs).map_err(|_| {
        Diagnostic::new("a compose file of terrace is one YAML document")
            .in_file(file.display().to_string())
    })?;
    let err = |path: &str, msg: String| -> Diagnostic {
        let loc = terrace_yaml::locate(text, 0, &value_path(path), None);
        Diagnostic::new(if path.is_empty() {
            msg
        } else {
            format!("{path}: {msg}")
        })
        .in_file(file.display().to_string())
        .at(loc)
    };
    let mut read = Read::default();
    interpolate_values(&mut root, "", lookup, &mut read)
        .map_err(|(path, e)| err(&path, e.to_string()))?;
    let Value::Object(top) = root else {
        return Err(err("", "a compose file must be a mapping".to_owned()));
    };
    let mut out = Compose {
        read,
        ..Compose::default()
    };
    for key in top.keys() {
        match key.as_str() {
            "services" | "volumes" | "networks" | "name" => {}
            "version" => {}
            k if k.starts_with("x-") => {}
            other => {
                return Err(err(
                    other,
                    format!(
                        "`{other}` is not supported by terrace's compose units (they read services, volumes, networks and name)"
                    ),
                ));
            }
        }
    }
    if let Some(n) = top.get("name").and_then(Value::as_str) {
        let normal: String = n
            .to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
            .collect();
        let normal = normal.trim_start_matches(['_', '-']).to_owned();
        if normal.is_empty() {
            return Err(err("name", "the project name must not be empty".to_owned()));
        }
        out.name = Some(normal);
    }
    for (k, v) in object(top.get("volumes"), "volumes").map_err(|m| err("volumes", m))? {
        out.volumes.insert(
            k.clone(),
            volume_def(&v).map_err(|m| err(&format!("volumes.{k}"), m))?,
        );
    }
    for (k, v) in object(top.get("networks"), "networks").map_err(|m| err("networks", m))? {
        out.networks.insert(
            k.clone(),
            network_def(&v).map_err(|m| err(&format!("networks.{k}"), m))?,
        );
    }
    let services = object(top.get("services"), "services").map_err(|m| err("services", m))?;
    if services.len() > MAX_SERVICES {
        return Err(err(
            "services",
            format!("more than {MAX_SERVICES} services"),
        ));
    }
    for (name, v) in services {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(err(
                "services",
                format!("`{name}` is not a service name (letters, digits, `.`, `_`, `-`)"),
            ));
        }
        let at = format!("services.{name}");
        let s = service(&v, lookup)
            .map_err(|(field, m)| err(format!("{at}.{field}").trim_end_matches('.'), m))?;
        out.services.insert(name, s);
    }
    // References: volumes, networks, dependencies.
    for (name, s) in &out.services {
        for m in &s.volumes {
            if let (MountKind::Volume, Some(v)) = (m.kind, &m.source)
                && !out.volumes.contains_key(v)
            {
                return Err(err(
                    &format!("services.{name}.volumes"),
                    format!("the volume `{v}` is not declared under the top-level `volumes`"),
                ));
            }
        }
        for n in s.networks.keys() {
            if n != "default" && !out.networks.contains_key(n) {
                return Err(err(
                    &format!("services.{name}.networks"),
                    format!("the network `{n}` is not declared under the top-level `networks`"),
                ));
            }
        }
        for d in s.depends_on.keys() {
            if !out.services.contains_key(d) {
                return Err(err(
                    &format!("services.{name}.depends_on"),
                    format!("depends on `{d}`, which is not a service of the file"),
                ));
            }
        }
    }
    if let Some(cycle) = cycle(&out.services) {
        return Err(err(
            "services",
            format!("dependency cycle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(out)
}

fn value_path(dotted: &str) -> terrace_core::ValuePath {
    let mut p = terrace_core::ValuePath::root();
    for part in dotted.split('.').filter(|s| !s.is_empty()) {
        p = p.key(part);
    }
    p
}

/// Every string value (never a key) interpolated; `x-` extensions too.
fn interpolate_values(
    v: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    read: &mut Read,
) -> Result<(), (String, InterpolationError)> {
    match v {
        Value::String(s) if s.contains('$') => {
            *s = interpolate(s, lookup, read).map_err(|e| (path.to_owned(), e))?;
        }
        Value::Array(items) => {
            for item in items {
                interpolate_values(item, path, lookup, read)?;
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                interpolate_values(item, &p, lookup, read)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn object(v: Option<&Value>, what: &str) -> Result<Vec<(String, Value)>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        Some(_) => Err(format!("`{what}` must be a mapping")),
    }
}

type FieldError = (String, String);

fn fe(field: &str, msg: impl Into<String>) -> FieldError {
    (field.to_owned(), msg.into())
}

fn string(v: &Value, field: &str) -> Result<String, FieldError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| fe(field, "must be a string"))
}

fn strings(v: &Value, field: &str) -> Result<Vec<String>, FieldError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items.iter().map(|i| string(i, field)).collect(),
        _ => Err(fe(field, "must be a string or a list of strings")),
    }
}

/// A scalar as Compose turns it into a string (numbers and booleans
/// written out; null `None`).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn boolean(v: &Value, field: &str) -> Result<bool, FieldError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.to_lowercase().as_str() {
            "true" | "y" | "yes" | "on" => Ok(true),
            "false" | "n" | "no" | "off" => Ok(false),
            _ => Err(fe(field, format!("invalid boolean: {s}"))),
        },
        _ => Err(fe(field, "must be a boolean")),
    }
}

fn integer(v: &Value, field: &str) -> Result<i64, FieldError> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| fe(field, "must be an integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| fe(field, format!("`{s}` is not an integer"))),
        _ => Err(fe(field, "must be an integer")),
    }
}

fn command(v: &Value, field: &str) -> Result<Option<Vec<String>>, FieldError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => shell_words(s)
            .map(Some)
            .map_err(|e| fe(field, format!("invalid command line: {e}"))),
        Value::Array(_) => strings(v, field).map(Some),
        _ => Err(fe(field, "must be a string or a list of strings")),
    }
}

fn labels(v: &Value, field: &str) -> Result<BTreeMap<String, String>, FieldError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                out.insert(k.clone(), scalar_text(v).unwrap_or_default());
            }
        }
        Value::Array(items) => {
            for i in items {
                let s = string(i, field)?;
                let (k, val) = s.split_once('=').unwrap_or((&s, ""));
                out.insert(k.to_owned(), val.to_owned());
            }
        }
        _ => return Err(fe(field, "must be a mapping or a list")),
    }
    Ok(out)
}

fn environment(v: &Value) -> Result<BTreeMap<String, Option<String>>, FieldError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                out.insert(k.clone(), scalar_text(v));
            }
        }
        Value::Array(items) => {
            for i in items {
                let s = string(i, "environment")?;
                let (k, val) = match s.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (s.clone(), None),
                };
                if k.ends_with(char::is_whitespace) {
                    return Err(fe(
                        "environment",
                        format!("environment variable {k} is declared with a trailing space"),
                    ));
                }
                out.insert(k, val);
            }
        }
        _ => return Err(fe("environment", "must be a mapping or a list")),
    }
    Ok(out)
}

fn env_files(v: &Value) -> Result<Vec<EnvFile>, FieldError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    items
        .iter()
        .map(|i| match i {
            Value::String(p) => Ok(EnvFile {
                path: p.clone(),
                required: true,
            }),
            Value::Object(m) => {
                for k in m.keys() {
                    if !matches!(k.as_str(), "path" | "required") && !k.starts_with("x-") {
                        return Err(fe("env_file", format!("`{k}` is not supported")));
                    }
                }
                Ok(EnvFile {
                    path: string(m.get("path").unwrap_or(&Value::Null), "env_file.path")?,
                    required: m
                        .get("required")
                        .map(|r| boolean(r, "env_file.required"))
                        .transpose()?
                        .unwrap_or(true),
                })
            }
            _ => Err(fe("env_file", "must be a path or a list of them")),
        })
        .collect()
}

fn port_number(s: &str, what: &str) -> Result<u16, FieldError> {
    s.parse::<u16>()
        .map_err(|_| fe("ports", format!("invalid {what}: {s}")))
}

/// The short syntax: `[[ip:]host:]container[/proto]`, ranges expanded.
fn short_port(spec: &str) -> Result<Vec<Port>, FieldError> {
    let (spec, protocol) = match spec.rsplit_once('/') {
        Some((s, p)) => {
            let p = p.to_lowercase();
            if !matches!(p.as_str(), "tcp" | "udp" | "sctp") {
                return Err(fe("ports", format!("invalid proto: {p}")));
            }
            (s, p)
        }
        None => (spec, "tcp".to_owned()),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c] => (None, None, *c),
        [h, c] => (None, Some(*h), *c),
        _ => {
            let n = parts.len();
            (
                Some(parts[..n - 2].join(":")),
                Some(parts[n - 2]),
                parts[n - 1],
            )
        }
    };
    if container.is_empty() {
        return Err(fe("ports", format!("no port specified: {spec}")));
    }
    let ip = ip
        .map(|i| i.trim_start_matches('[').trim_end_matches(']').to_owned())
        .filter(|i| !i.is_empty());
    if let Some(i) = &ip
        && i.parse::<std::net::IpAddr>().is_err()
    {
        return Err(fe("ports", format!("invalid IP address: {i}")));
    }
    let host = host.filter(|h| !h.is_empty());
    let range = |r: &str, what: &str| -> Result<(u16, u16), FieldError> {
        match r.split_once('-') {
            Some((a, b)) => Ok((port_number(a, what)?, port_number(b, what)?)),
            None => {
                let p = port_number(r, what)?;
                Ok((p, p))
            }
        }
    };
    let (c0, c1) = range(container, "containerPort")?;
    if c1 < c0 {
        return Err(fe("ports", format!("invalid containerPort: {container}")));
    }
    let hosts = host.map(|h| range(h, "hostPort")).transpose()?;
    if let Some((h0, h1)) = hosts
        && h1 < h0
    {
        return Err(fe(
            "ports",
            format!("invalid hostPort: {}", host.unwrap_or_default()),
        ));
    }
    if let Some((h0, h1)) = hosts
        && c0 != c1
        && (h1 - h0) != (c1 - c0)
    {
        return Err(fe(
            "ports",
            format!(
                "invalid ranges specified for container and host Ports: {container} and {}",
                host.unwrap_or_default()
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, target) in (c0..=c1).enumerate() {
        let published = match (hosts, host) {
            (Some((h0, _)), Some(_)) if c0 != c1 => Some((h0 + i as u16).to_string()),
            (Some(_), Some(h)) => Some(h.to_owned()),
            _ => None,
        };
        out.push(Port {
            host_ip: ip.clone(),
            published,
            target,
            protocol: protocol.clone(),
        });
    }
    Ok(out)
}

fn ports(v: &Value) -> Result<Vec<Port>, FieldError> {
    let Value::Array(items) = v else {
        return if v.is_null() {
            Ok(Vec::new())
        } else {
            Err(fe("ports", "must be a list"))
        };
    };
    let mut out: Vec<Port> = Vec::new();
    for i in items {
        let more = match i {
            Value::Number(n) => short_port(&n.to_string())?,
            Value::String(s) => short_port(s)?,
            Value::Object(m) => {
                for k in m.keys() {
                    if !matches!(
                        k.as_str(),
                        "target" | "published" | "host_ip" | "protocol" | "mode" | "name"
                    ) && !k.starts_with("x-")
                    {
                        return Err(fe("ports", format!("`{k}` is not supported in a port")));
                    }
                }
                let target = u16::try_from(integer(
                    m.get("target").unwrap_or(&Value::Null),
                    "ports.target",
                )?)
                .map_err(|_| fe("ports", "target is not a port"))?;
                let host_ip = m
                    .get("host_ip")
                    .map(|h| string(h, "ports.host_ip"))
                    .transpose()?;
                if let Some(h) = &host_ip
                    && h.parse::<std::net::IpAddr>().is_err()
                {
                    return Err(fe("ports", format!("invalid ip address: {h}")));
                }
                vec![Port {
                    host_ip,
                    published: m.get("published").and_then(scalar_text),
                    target,
                    protocol: m
                        .get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("tcp")
                        .to_lowercase(),
                }]
            }
            _ => return Err(fe("ports", "each port is a number, a string or a mapping")),
        };
        for p in more {
            // The same host ip, published port, target and protocol: the
            // last one wins.
            out.retain(|o| {
                !(o.host_ip == p.host_ip
                    && o.published == p.published
                    && o.target == p.target
                    && o.protocol == p.protocol)
            });
            out.push(p);
        }
    }
    Ok(out)
}

fn mounts(v: &Value) -> Result<Vec<Mount>, FieldError> {
    let Value::Array(items) = v else {
        return if v.is_null() {
            Ok(Vec::new())
        } else {
            Err(fe("volumes", "must be a list"))
        };
    };
    let mut out: Vec<Mount> = Vec::new();
    for i in items {
        let m = match i {
            Value::String(spec) => short_mount(spec)?,
            Value::Object(m) => {
                for k in m.keys() {
                    if !matches!(
                        k.as_str(),
                        "type" | "source" | "target" | "read_only" | "bind" | "volume" | "tmpfs"
                    ) && !k.starts_with("x-")
                    {
                        return Err(fe("volumes", format!("`{k}` is not supported in a mount")));
                    }
                }
                let kind = match m.get("type").and_then(Value::as_str) {
                    Some("bind") => MountKind::Bind,
                    Some("volume") => MountKind::Volume,
                    Some("tmpfs") => MountKind::Tmpfs,
                    other => {
                        return Err(fe(
                            "volumes",
                            format!(
                                "type {:?} is not supported (bind, volume, tmpfs)",
                                other.unwrap_or("")
                            ),
                        ));
                    }
                };
                Mount {
                    kind,
                    source: m
                        .get("source")
                        .map(|s| string(s, "volumes.source"))
                        .transpose()?
                        .filter(|s| !s.is_empty()),
                    target: clean_target(&string(
                        m.get("target").unwrap_or(&Value::Null),
                        "volumes.target",
                    )?),
                    read_only: m
                        .get("read_only")
                        .map(|r| boolean(r, "volumes.read_only"))
                        .transpose()?
                        .unwrap_or(false),
                }
            }
            _ => return Err(fe("volumes", "each mount is a string or a mapping")),
        };
        if let Some(first) = out.iter().position(|o| o.target == m.target) {
            return Err(fe(
                "volumes",
                format!("target {} already mounted (entry {first})", m.target),
            ));
        }
        out.push(m);
    }
    Ok(out)
}

/// `/a/b/../c/` → `/a/c`.
fn clean_target(t: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in t.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

fn short_mount(spec: &str) -> Result<Mount, FieldError> {
    if spec.is_empty() {
        return Err(fe("volumes", "invalid empty volume spec"));
    }
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() > 3 {
        return Err(fe(
            "volumes",
            format!("invalid spec: {spec}: too many colons"),
        ));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(fe(
            "volumes",
            format!("invalid spec: {spec}: empty section between colons"),
        ));
    }
    if parts.len() == 1 {
        return Ok(Mount {
            kind: MountKind::Volume,
            source: None,
            target: clean_target(parts[0]),
            read_only: false,
        });
    }
    let source = parts[0];
    let read_only = parts
        .get(2)
        .is_some_and(|o| o.split(',').any(|x| x == "ro"));
    let bind = source.starts_with('.') || source.starts_with('/') || source.starts_with('~');
    Ok(Mount {
        kind: if bind {
            MountKind::Bind
        } else {
            MountKind::Volume
        },
        source: Some(source.to_owned()),
        target: clean_target(parts[1]),
        read_only,
    })
}

/// A Compose duration: `1h2m3s`, `500ms`, `1d`, `1w`, `0`.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err("an empty duration".to_owned());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("time: invalid duration {s:?}"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("time: invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 604_800.0,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
        };
        total += n * secs;
        rest = &rest[unit_len..];
    }
    std::time::Duration::try_from_secs_f64(total)
        .map_err(|_| format!("time: invalid duration {s:?}"))
}

/// `512M`, `1gb`, `1.5g`, `1024`: bytes, 1024-based.
pub fn bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Ok(n);
    }
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..num_len]
        .parse()
        .map_err(|_| format!("invalid size: '{s}'"))?;
    let unit = t[num_len..].trim().to_lowercase();
    let power = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return Err(format!("invalid suffix: '{unit}'")),
    };
    let size = n * 1024f64.powi(power);
    if !size.is_finite() || size > i64::MAX as f64 {
        return Err(format!("invalid size: '{s}'"));
    }
    Ok(size as i64)
}

fn healthcheck(v: &Value) -> Result<Option<Healthcheck>, FieldError> {
    let Value::Object(m) = v else {
        return if v.is_null() {
            Ok(None)
        } else {
            Err(fe("healthcheck", "must be a mapping"))
        };
    };
    for k in m.keys() {
        if !matches!(
            k.as_str(),
            "test"
                | "interval"
                | "timeout"
                | "retries"
                | "start_period"
                | "start_interval"
                | "disable"
        ) && !k.starts_with("x-")
        {
            return Err(fe("healthcheck", format!("`{k}` is not supported")));
        }
    }
    let test = match m.get("test") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec!["CMD-SHELL".to_owned(), s.clone()],
        Some(list @ Value::Array(_)) => {
            let t = strings(list, "healthcheck.test")?;
            if !t
                .first()
                .is_some_and(|f| matches!(f.as_str(), "CMD" | "CMD-SHELL" | "NONE"))
            {
                return Err(fe(
                    "healthcheck.test",
                    "must start either by \"CMD\", \"CMD-SHELL\" or \"NONE\"",
                ));
            }
            t
        }
        Some(_) => return Err(fe("healthcheck.test", "must be a string or a list")),
    };
    let dur = |k: &str| -> Result<Option<std::time::Duration>, FieldError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => duration(s)
                .map(Some)
                .map_err(|e| fe(&format!("healthcheck.{k}"), e)),
            Some(_) => Err(fe(&format!("healthcheck.{k}"), "must be a string")),
        }
    };
    Ok(Some(Healthcheck {
        test,
        interval: dur("interval")?,
        timeout: dur("timeout")?,
        start_period: dur("start_period")?,
        retries: m
            .get("retries")
            .map(|r| integer(r, "healthcheck.retries"))
            .transpose()?
            .map(|r| r.max(0) as u64),
        disable: m
            .get("disable")
            .map(|d| boolean(d, "healthcheck.disable"))
            .transpose()?
            .unwrap_or(false),
    }))
}

fn depends_on(v: &Value) -> Result<BTreeMap<String, Condition>, FieldError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Array(items) => {
            for i in items {
                out.insert(string(i, "depends_on")?, Condition::Started);
            }
        }
        Value::Object(m) => {
            for (name, spec) in m {
                let cond = spec
                    .get("condition")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        fe(
                            "depends_on",
                            format!("{name}: missing property 'condition'"),
                        )
                    })?;
                let c = match cond {
                    "service_started" => Condition::Started,
                    "service_healthy" => Condition::Healthy,
                    "service_completed_successfully" => Condition::CompletedSuccessfully,
                    other => {
                        return Err(fe(
                            "depends_on",
                            format!(
                                "{name}: condition {other:?} is not one of service_started, service_healthy, service_completed_successfully"
                            ),
                        ));
                    }
                };
                out.insert(name.clone(), c);
            }
        }
        _ => return Err(fe("depends_on", "must be a list or a mapping")),
    }
    Ok(out)
}

fn service(v: &Value, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Service, FieldError> {
    let Value::Object(m) = v else {
        return Err(fe("", "a service must be a mapping"));
    };
    for k in m.keys() {
        if !SERVICE_KEYS.contains(&k.as_str()) && !k.starts_with("x-") {
            return Err(fe(
                k,
                format!(
                    "`{k}` is not supported by terrace's compose units; they read: {}",
                    SERVICE_KEYS.join(", ")
                ),
            ));
        }
    }
    let get = |k: &str| m.get(k).unwrap_or(&Value::Null);
    let image = m
        .get("image")
        .map(|i| string(i, "image"))
        .transpose()?
        .unwrap_or_default();
    if image.is_empty() {
        return Err(fe(
            "image",
            "every service needs an `image` (terrace builds no images)",
        ));
    }
    let mut networks = BTreeMap::new();
    match get("networks") {
        Value::Null => {}
        Value::Array(items) => {
            for i in items {
                networks.insert(string(i, "networks")?, Vec::new());
            }
        }
        Value::Object(nm) => {
            for (n, spec) in nm {
                let aliases = match spec.get("aliases") {
                    Some(a) => strings(a, "networks.aliases")?,
                    None => Vec::new(),
                };
                networks.insert(n.clone(), aliases);
            }
        }
        _ => return Err(fe("networks", "must be a list or a mapping")),
    }
    if networks.is_empty() {
        networks.insert("default".to_owned(), Vec::new());
    }
    let mut ulimits = BTreeMap::new();
    if let Value::Object(u) = get("ulimits") {
        for (name, l) in u {
            let (soft, hard) = match l {
                Value::Object(sh) => (
                    integer(sh.get("soft").unwrap_or(&Value::Null), "ulimits.soft")?,
                    integer(sh.get("hard").unwrap_or(&Value::Null), "ulimits.hard")?,
                ),
                other => {
                    let n = integer(other, "ulimits")?;
                    (n, n)
                }
            };
            ulimits.insert(name.clone(), (soft, hard));
        }
    }
    let limits = m.get("deploy").and_then(|d| {
        d.as_object().map(|d| {
            for k in d.keys() {
                if k != "resources" && !k.starts_with("x-") {
                    return Err(fe(
                        "deploy",
                        format!("`deploy.{k}` is not supported (only resources.limits)"),
                    ));
                }
            }
            Ok(d.get("resources")
                .and_then(|r| r.get("limits"))
                .cloned()
                .unwrap_or(Value::Null))
        })
    });
    let limits = limits.transpose()?.unwrap_or(Value::Null);
    let cpus = match limits.get("cpus") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => Some(s.trim().parse::<f64>().map_err(|_| {
            fe(
                "deploy.resources.limits.cpus",
                format!("`{s}` is not a number"),
            )
        })?),
        Some(_) => {
            return Err(fe(
                "deploy.resources.limits.cpus",
                "must be a number or string",
            ));
        }
    };
    let memory = match limits.get("memory") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(bytes(s).map_err(|e| fe("deploy.resources.limits.memory", e))?)
        }
        Some(_) => {
            return Err(fe(
                "deploy.resources.limits.memory",
                "must be a string (`512M`)",
            ));
        }
    };
    Ok(Service {
        image,
        command: command(get("command"), "command")?,
        entrypoint: command(get("entrypoint"), "entrypoint")?,
        environment: environment(get("environment"))?
            .into_iter()
            .map(|(k, v)| {
                let v = v.or_else(|| lookup(&k));
                (k, v)
            })
            .collect(),
        env_file: env_files(get("env_file"))?,
        ports: ports(get("ports"))?,
        volumes: mounts(get("volumes"))?,
        healthcheck: healthcheck(get("healthcheck"))?,
        depends_on: depends_on(get("depends_on"))?,
        restart: m.get("restart").and_then(scalar_text),
        labels: labels(get("labels"), "labels")?,
        user: m.get("user").map(|u| string(u, "user")).transpose()?,
        working_dir: m
            .get("working_dir")
            .map(|u| string(u, "working_dir"))
            .transpose()?,
        networks,
        cap_add: m
            .get("cap_add")
            .map(|c| strings(c, "cap_add"))
            .transpose()?
            .unwrap_or_default(),
        cap_drop: m
            .get("cap_drop")
            .map(|c| strings(c, "cap_drop"))
            .transpose()?
            .unwrap_or_default(),
        read_only: m
            .get("read_only")
            .map(|r| boolean(r, "read_only"))
            .transpose()?
            .unwrap_or(false),
        tmpfs: m
            .get("tmpfs")
            .map(|t| strings(t, "tmpfs"))
            .transpose()?
            .unwrap_or_default(),
        ulimits,
        cpus,
        memory,
        container_name: m
            .get("container_name")
            .map(|c| string(c, "container_name"))
            .transpose()?,
        hostname: m
            .get("hostname")
            .map(|c| string(c, "hostname"))
            .transpose()?,
    })
}

fn volume_def(v: &Value) -> Result<VolumeDef, String> {
    let Value::Object(m) = v else {
        return if v.is_null() {
            Ok(VolumeDef::default())
        } else {
            Err("must be a mapping".to_owned())
        };
    };
    for k in m.keys() {
        if !matches!(k.as_str(), "name" | "driver" | "external" | "labels") && !k.starts_with("x-")
        {
            return Err(format!(
                "`{k}` is not supported (name, driver, external, labels)"
            ));
        }
    }
    let external = m
        .get("external")
        .map(|e| boolean(e, "external").map_err(|e| e.1))
        .transpose()?
        .unwrap_or(false);
    if external
        && m.keys()
            .any(|k| !matches!(k.as_str(), "external" | "name") && !k.starts_with("x-"))
    {
        return Err("conflicting parameters: an external volume has only a name".to_owned());
    }
    Ok(VolumeDef {
        name: m.get("name").and_then(Value::as_str).map(str::to_owned),
        driver: m.get("driver").and_then(Value::as_str).map(str::to_owned),
        external,
        labels: labels(m.get("labels").unwrap_or(&Value::Null), "labels").map_err(|e| e.1)?,
    })
}

fn network_def(v: &Value) -> Result<NetworkDef, String> {
    let Value::Object(m) = v else {
        return if v.is_null() {
            Ok(NetworkDef::default())
        } else {
            Err("must be a mapping".to_owned())
        };
    };
    for k in m.keys() {
        if !matches!(
            k.as_str(),
            "name" | "driver" | "external" | "internal" | "labels"
        ) && !k.starts_with("x-")
        {
            return Err(format!(
                "`{k}` is not supported (name, driver, external, internal, labels)"
            ));
        }
    }
    Ok(NetworkDef {
        name: m.get("name").and_then(Value::as_str).map(str::to_owned),
        driver: m.get("driver").and_then(Value::as_str).map(str::to_owned),
        external: m
            .get("external")
            .map(|e| boolean(e, "external").map_err(|e| e.1))
            .transpose()?
            .unwrap_or(false),
        internal: m
            .get("internal")
            .map(|e| boolean(e, "internal").map_err(|e| e.1))
            .transpose()?
            .unwrap_or(false),
        labels: labels(m.get("labels").unwrap_or(&Value::Null), "labels").map_err(|e| e.1)?,
    })
}

/// A dependency cycle among the services, if there is one.
fn cycle(services: &BTreeMap<String, Service>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        services: &BTreeMap<String, Service>,
        stack: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut c = stack[at..].to_vec();
            c.push(n.to_owned());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for d in services
            .get(n)
            .map(|s| s.depends_on.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if let Some(c) = visit(&d, services, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for n in services.keys() {
        if let Some(c) = visit(n, services, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Compose, Diagnostic> {
        let env = |n: &str| match n {
            "PG_TAG" => Some("16.4".to_owned()),
            "PORT" => Some("15432".to_owned()),
            _ => None,
        };
        load(text, Path::new("compose.yaml"), &env)
    }

    #[test]
    fn a_homelab_file_normalizes_as_compose_does() {
        let c = load_str(
            r#"
name: "My.DB"
x-common: &common
  restart: unless-stopped
services:
  db:
    <<: *common
    image: postgres:${PG_TAG}
    command: postgres -c 'max_connections=200'
    environment:
      - POSTGRES_DB=app
      - POSTGRES_PASSWORD
    ports: ["127.0.0.1:${PORT}:5432", 9000-9001:90-91/udp, {target: 8080, published: 80}]
    volumes: ["data:/var/lib/postgresql/data", "./init:/docker-entrypoint-initdb.d:ro", /anon/, {type: tmpfs, target: /tmp}]
    healthcheck:
      test: pg_isready -U postgres
      interval: 1m30s
      retries: "5"
    ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 512}
    deploy: {resources: {limits: {cpus: '0.50', memory: 512M}}}
    labels: [team=db, x=y=z]
    read_only: "yes"
  web:
    image: ghcr.io/example/web:1
    depends_on: {db: {condition: service_healthy}}
    entrypoint: ["/bin/web", "--port", "8080"]
    environment: {A: 1, B: true, C: null}
    networks: [front]
volumes:
  data: {}
networks:
  front: {internal: true}
"#,
        )
        .expect("loads");
        assert_eq!(c.name.as_deref(), Some("mydb"));
        let db = &c.services["db"];
        assert_eq!(db.image, "postgres:16.4");
        assert_eq!(
            db.restart.as_deref(),
            Some("unless-stopped"),
            "merge keys work"
        );
        assert_eq!(
            db.command,
            Some(vec![
                "postgres".into(),
                "-c".into(),
                "max_connections=200".into()
            ])
        );
        assert_eq!(db.environment["POSTGRES_PASSWORD"], None);
        assert_eq!(db.ports.len(), 4);
        assert_eq!(
            db.ports[0],
            Port {
                host_ip: Some("127.0.0.1".into()),
                published: Some("15432".into()),
                target: 5432,
                protocol: "tcp".into()
            }
        );
        assert_eq!(db.ports[2].published.as_deref(), Some("9001"));
        assert_eq!(db.ports[2].protocol, "udp");
        assert_eq!(db.ports[3].published.as_deref(), Some("80"));
        assert_eq!(db.volumes[0].kind, MountKind::Volume);
        assert_eq!(
            db.volumes[1],
            Mount {
                kind: MountKind::Bind,
                source: Some("./init".into()),
                target: "/docker-entrypoint-initdb.d".into(),
                read_only: true
            }
        );
        assert_eq!(
            db.volumes[2],
            Mount {
                kind: MountKind::Volume,
                source: None,
                target: "/anon".into(),
                read_only: false
            }
        );
        assert_eq!(db.volumes[3].kind, MountKind::Tmpfs);
        let h = db.healthcheck.as_ref().expect("healthcheck");
        assert_eq!(h.test, ["CMD-SHELL", "pg_isready -U postgres"]);
        assert_eq!(h.interval, Some(std::time::Duration::from_secs(90)));
        assert_eq!(h.retries, Some(5));
        assert_eq!(db.ulimits["nofile"], (1024, 2048));
        assert_eq!(db.ulimits["nproc"], (512, 512));
        assert_eq!(db.cpus, Some(0.5));
        assert_eq!(db.memory, Some(536_870_912));
        assert_eq!(db.labels["x"], "y=z");
        assert!(db.read_only);
        assert_eq!(db.networks.keys().collect::<Vec<_>>(), ["default"]);
        let web = &c.services["web"];
        assert_eq!(web.depends_on["db"], Condition::Healthy);
        assert_eq!(web.environment["A"].as_deref(), Some("1"));
        assert_eq!(web.environment["B"].as_deref(), Some("true"));
        assert_eq!(web.environment["C"], None);
        assert!(c.networks["front"].internal);
        assert_eq!(c.read.used, ["PG_TAG".to_owned(), "PORT".to_owned()].into());
    }

    #[test]
    fn what_is_not_supported_is_named_with_its_place() {
        for (text, want) in [
            (
                "services:\n  a:\n    image: x\n    build: .\n",
                "services.a.build: `build` is not supported",
            ),
            (
                "services:\n  a:\n    image: x\n    volumes: [data:/d]\n",
                "the volume `data` is not declared",
            ),
            (
                "services:\n  a:\n    image: x\n    depends_on: [b]\n",
                "depends on `b`",
            ),
            (
                "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: y\n    depends_on: [a]\n",
                "dependency cycle: a -> b -> a",
            ),
            (
                "services:\n  a:\n    image: x\n    ports: ['1.2.3.4.5:80:80']\n",
                "invalid IP address: 1.2.3.4.5",
            ),
            (
                "services:\n  a:\n    image: x\n    ports: ['9000-9002:90-91']\n",
                "invalid ranges",
            ),
            (
                "services:\n  a:\n    image: x\n    volumes: ['/a:/b:ro:z']\n",
                "too many colons",
            ),
            (
                "services:\n  a:\n    image: x\n    healthcheck: {test: [echo]}\n",
                "must start either by",
            ),
            (
                "services:\n  a:\n    image: x\n    healthcheck: {interval: 10x}\n",
                "unknown unit",
            ),
            (
                "services:\n  a:\n    image: x\n    deploy: {replicas: 2}\n",
                "`deploy.replicas` is not supported",
            ),
            (
                "services:\n  a:\n    image: ${NOPE:?set the image}\n",
                "required variable NOPE is missing a value: set the image",
            ),
            (
                "services:\n  a:\n    image: x ${1}\n",
                "invalid interpolation format",
            ),
            ("secrets: {}\n", "`secrets` is not supported"),
            ("services:\n  a: {}\n", "every service needs an `image`"),
        ] {
            let e = load_str(text).expect_err(text);
            let shown = e.message.clone();
            assert!(shown.contains(want), "{want} in {shown} ({text})");
            assert_eq!(e.file.as_deref(), Some(Path::new("compose.yaml")));
        }
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(bytes("1gb"), Ok(1_073_741_824));
        assert_eq!(bytes("1.5g"), Ok(1_610_612_736));
        assert_eq!(bytes("1kib"), Ok(1024));
        assert_eq!(bytes("1024"), Ok(1024));
        assert!(bytes("1xx").is_err());
        assert_eq!(duration("1h2m3s"), Ok(std::time::Duration::from_secs(3723)));
        assert_eq!(duration("1d"), Ok(std::time::Duration::from_secs(86400)));
        assert_eq!(duration("500ms"), Ok(std::time::Duration::from_millis(500)));
        assert!(duration("10").is_err());
        // Found by the fuzzer: a duration past what a Duration holds.
        assert!(duration("99999999999999999999999w").is_err());
        assert!(bytes("9e999p").is_err());
        // Found by the fuzzer: a host range that runs backwards.
        assert!(short_port("9000-8002:90-91").is_err());
        assert_eq!(short_port("65534-65535:1-2").map(|p| p.len()), Ok(2));
    }
}
