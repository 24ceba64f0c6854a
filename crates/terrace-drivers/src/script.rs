//! The `script` kind: commands run on hosts (targets of `type: host`),
//! over SSH with the system `ssh`, or on this machine (`local: true`).
//!
//! - `check` decides the plan: exit 0, the host is as wanted; exit 2, it
//!   is not, and what it printed is the diff; anything else is an error.
//!   Without a `check`, a host changes when what the unit applies there
//!   (its inputs, files and commands) changed since the last apply.
//! - `files` are put on the host atomically (a temporary file renamed
//!   into place) with their mode and owner; the plan reads their digests
//!   on the host, so a file changed by hand shows as drift.
//! - Inputs reach the commands as environment variables, secrets too: the
//!   whole script, with its `export`s, goes to `sh -s` on the host's
//!   standard input, so no value is on a command line, in a process list
//!   or in a shell history. Output is redacted before it is shown.
//! - A line `::outputs::{json}` on standard output sets the unit's
//!   outputs (the host's, under `hosts.<name>` when there are several);
//!   such lines are never shown or logged.
//! - The host key is pinned (`hostKey` or `knownHosts`): an unknown or
//!   changed key fails, never prompts. A SOPS-encrypted `identity` is
//!   decrypted in memory and handed to a private `ssh-agent`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use terrace_core::config::{TargetKind, UNIT_FILE};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{
    Applied, ApplyContext, BoxFuture, DestroyContext, Driver, DriverError, Lines, Rendered,
    RenderedDocument, ResolvedTarget, UnitContext,
};
use terrace_core::kind::{Timeout, TypedKind};
use terrace_core::plan::{Action, Change, UnitPlan};
use terrace_core::secrets::Plaintexts;
use terrace_core::state::InventoryItem;
use terrace_exec::{Program, Stream};

/// The `script` kind.
pub fn kind() -> TypedKind<ScriptSettings> {
    TypedKind::new(
        "script",
        "Commands run on hosts over SSH (check, apply, destroy), with files, inputs as environment variables and outputs.",
        Some(TargetKind::Host),
        Arc::new(ScriptDriver),
    )
}

/// `script:` in unit.yaml.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScriptSettings {
    /// The hosts it runs on (targets of `type: host`): names, or the
    /// items of a list variable (`hosts: ${var.nodes}`) whose `name` is
    /// one; unset: the unit's `target` (an empty list: no host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<HostList>,
    /// Only the `hosts` items whose fields have these values, as
    /// `where: {role: agent}`.
    #[serde(default, rename = "where", skip_serializing_if = "Map::is_empty")]
    pub only: Map<String, Value>,
    /// Exit 0: as wanted; exit 2: changes (its output is the diff). Shell
    /// text, or a `.sh` file of the unit directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// What makes the host as wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<String>,
    /// What `terrace destroy` runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy: Option<String>,
    /// Files put on the host, by absolute path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileSpec>,
    /// How long each host's commands may take (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// Outputs that are secrets: stored sealed, shown as `(sensitive)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive_outputs: Vec<String>,
}

/// `hosts`: a list, or an expression that gives one (`${var.nodes}`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum HostList {
    List(Vec<HostRef>),
    /// `${var.nodes}`: evaluated into a list before the unit runs.
    Expression(String),
}

/// One entry of `hosts`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum HostRef {
    /// A target's name.
    Name(String),
    /// An item of a list variable: `name` is the target's.
    Item {
        name: String,
        #[serde(flatten)]
        fields: Map<String, Value>,
    },
}

/// One file put on a host: `content`, a `source` file of the unit, or a
/// file another unit `generated`. `{host}` in its path, `source` or
/// `generated` is the host's name, so each host of a group gets its own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Relative to the unit directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Relative to the project root, as a template unit's outputs give
    /// it: `${unit.node-configs.outputs.dir}/servers/{host}/config.yaml`.
    /// Until that unit is applied, this unit is deferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<String>,
    /// Octal, as `0640` (default `0644`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `user` or `user:group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug)]
struct ScriptDriver;

/// How long each host's commands may take unless `timeout` says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The largest file put on a host.
const MAX_FILE: usize = 16 << 20;

pub(crate) fn bad(dir: &str, message: String, hint: &str) -> DriverError {
    Diagnostic::new(message)
        .in_file(format!("{dir}/{UNIT_FILE}"))
        .with_hint(hint.to_owned())
        .into()
}

/// `s` quoted for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    terrace_fs::digest::digest(bytes)
        .trim_start_matches("sha256:")
        .to_owned()
}

/// Whether `p` is an absolute path with no `.`, `..` or empty part and
/// no control character: what is written, read and removed on a host.
fn plain_absolute(p: &str) -> bool {
    p.starts_with('/')
        && !p.chars().any(char::is_control)
        && (p == "/"
            || p[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// Whether a file path from the state may be removed on `h`: a plain
/// absolute path (else the state is corrupt: an error), under the host's
/// `root` when it has one (else it is left in place, `Ok(false)`: a
/// root that moved, or a path the state should not name). The state is
/// where the path comes from, so nothing else is trusted.
fn check_removable(h: &Host, path: &str, unit: &str) -> Result<bool, DriverError> {
    if !plain_absolute(path) || path == "/" {
        return Err(DriverError::Target(format!(
            "the state of `{unit}` names file {path:?} on {}, which is not a plain absolute path: nothing was removed",
            h.name
        )));
    }
    Ok(h.root.is_empty() || path.starts_with(&format!("{}/", h.root)))
}

/// The files of `files` that may be removed on `h`; a note for each left
/// in place.
fn removable(
    h: &Host,
    files: Vec<String>,
    unit: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<String>, DriverError> {
    let mut out = Vec::new();
    for f in files {
        if check_removable(h, &f, unit)? {
            out.push(f);
        } else {
            notes.push(format!(
                "file {f} on {} is outside the host's root {}: left in place",
                h.name, h.root
            ));
        }
    }
    Ok(out)
}

/// Every host an earlier apply recorded, with the files it gave each.
fn recorded_hosts(inventory: &[InventoryItem]) -> BTreeMap<String, Vec<String>> {
    let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in inventory {
        match i {
            InventoryItem::HostScript { host, .. } => {
                by_host.entry(host.clone()).or_default();
            }
            InventoryItem::HostFile { host, path, .. } => {
                by_host.entry(host.clone()).or_default().push(path.clone());
            }
            _ => {}
        }
    }
    by_host
}

/// The variables each host had when it was last applied, by host.
fn recorded_vars(prior: &[InventoryItem]) -> BTreeMap<&str, &BTreeMap<String, String>> {
    prior
        .iter()
        .filter_map(|i| match i {
            InventoryItem::HostScript { host, vars, .. } if !vars.is_empty() => {
                Some((host.as_str(), vars))
            }
            _ => None,
        })
        .collect()
}

/// `env` with the `HOST_*` fields replaced by those recorded, when there
/// are any.
fn with_recorded(
    env: Vec<(String, String)>,
    recorded: Option<&&BTreeMap<String, String>>,
) -> Vec<(String, String)> {
    let Some(vars) = recorded else {
        return env;
    };
    let mut out: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| !k.starts_with("HOST_") || k == "HOST_NAME")
        .collect();
    out.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// What leaves a host: the unit's `destroy` command (when there is
/// one; its failure stops the rest), then the files it was given.
fn destroy_script(d: Option<&Desired>, host: &str, files: &[String]) -> String {
    let mut script = String::new();
    if let Some(d) = d {
        script.push_str(&d.preamble(host));
        if let Some(cmd) = &d.destroy {
            script.push_str(&format!("(\n{cmd}\n) </dev/null || exit $?\n"));
        }
    }
    for f in files {
        script.push_str(&format!("rm -f -- {} || exit $?\n", quote(f)));
    }
    script
}

/// A host, as its target says to reach it.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) local: bool,
    pub(crate) address: String,
    pub(crate) user: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) identity: Option<PathBuf>,
    pub(crate) host_key: Option<String>,
    pub(crate) known_hosts: Option<PathBuf>,
    pub(crate) sudo: bool,
    /// The fields of its `hosts` item (`role`, `ip`, …) besides `name`.
    pub(crate) vars: Map<String, Value>,
    /// Where its file system starts for the unit (`root`), absolute, with
    /// no trailing `/`; empty: `/`.
    pub(crate) root: String,
    /// Where a local host's commands run: the project root.
    pub(crate) workdir: PathBuf,
}

fn expand(root: &Path, p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => {
            std::env::var_os("HOME").map_or_else(|| root.join(p), |h| PathBuf::from(h).join(rest))
        }
        None => root.join(p),
    }
}

impl Host {
    fn of(root: &Path, t: &ResolvedTarget, dir: &str) -> Result<Host, DriverError> {
        if t.kind != TargetKind::Host {
            return Err(bad(
                dir,
                format!("target `{}` is a {}, not a host", t.name, t.kind),
                "name targets of `type: host`",
            ));
        }
        let b = &t.binding;
        let s = &b.ssh_host;
        let local = s.local == Some(true);
        let address = b.address.clone().unwrap_or_default();
        if !local {
            let misread =
                |v: &str| v.starts_with('-') || v.chars().any(|c| c.is_whitespace() || c == '@');
            if address.is_empty() || misread(&address) {
                return Err(bad(
                    dir,
                    format!("host target `{}` has no usable `address`", t.name),
                    "give the host's name or IP address, or `local: true` for this machine",
                ));
            }
            if s.user.as_deref().is_some_and(misread) {
                return Err(bad(
                    dir,
                    format!("host target `{}` has a user name ssh would misread", t.name),
                    "use a plain user name",
                ));
            }
            if s.host_key.is_none() && s.known_hosts.is_none() {
                return Err(bad(
                    dir,
                    format!("host target `{}` pins no host key", t.name),
                    "give `hostKey: ssh-ed25519 AAAA…` (ssh-keyscan prints it) or `knownHosts: FILE`: terrace never accepts a key on first use",
                ));
            }
        }
        let fs_root = match s.root.as_deref() {
            None | Some("/") => String::new(),
            Some(r) => {
                let abs = if r.starts_with('/') {
                    PathBuf::from(r)
                } else if local {
                    let rel = crate::clean_relative("", r).ok_or_else(|| {
                        bad(
                            dir,
                            format!(
                                "host target `{}`: root `{r}` leads outside the project",
                                t.name
                            ),
                            "give a directory inside the project, or an absolute path",
                        )
                    })?;
                    root.join(rel)
                } else {
                    return Err(bad(
                        dir,
                        format!("host target `{}`: root `{r}` is not absolute", t.name),
                        "give the directory on the host, as `/srv/staging` (a relative root is only for `local: true`)",
                    ));
                };
                let text = abs.to_string_lossy().trim_end_matches('/').to_owned();
                if !plain_absolute(&text) {
                    return Err(bad(
                        dir,
                        format!(
                            "host target `{}`: root `{r}` is not a plain directory",
                            t.name
                        ),
                        "give a directory path without `..`",
                    ));
                }
                text
            }
        };
        Ok(Host {
            name: t.name.clone(),
            local,
            address,
            user: s.user.clone(),
            port: s.port,
            identity: s.identity.as_deref().map(|p| expand(root, p)),
            host_key: s.host_key.clone(),
            known_hosts: s.known_hosts.as_deref().map(|p| expand(root, p)),
            sudo: s.sudo == Some(true),
            vars: Map::new(),
            root: fs_root,
            workdir: root.to_path_buf(),
        })
    }
}

/// Each host's own variables: `TERRACE_HOST` and `HOST_NAME` its name,
/// `TERRACE_ROOT` its `root`, and its item's fields as `HOST_<FIELD>`
/// (upper case, `-` as `_`). A field one host lacks is empty there, so a
/// script under `set -u` runs alike on every host; two fields of one
/// name, or a field named like an input, are refused.
fn host_envs(
    dir: &str,
    hosts: &[Host],
    inputs: &Map<String, Value>,
) -> Result<BTreeMap<String, Vec<(String, String)>>, DriverError> {
    let var_name = |h: &Host, k: &str| -> Result<String, DriverError> {
        let name = format!("HOST_{}", k.to_ascii_uppercase().replace('-', "_"));
        if !is_env_name(&name) {
            return Err(bad(
                dir,
                format!(
                    "host `{}`: field `{k}` cannot be an environment variable",
                    h.name
                ),
                "name the fields of `hosts` items with letters, digits, `_` and `-`",
            ));
        }
        Ok(name)
    };
    let mut all_names = std::collections::BTreeSet::new();
    let mut per_host = Vec::new();
    for h in hosts {
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &h.vars {
            let name = var_name(h, k)?;
            let taken = name == "HOST_NAME" || inputs.contains_key(&name);
            if taken || fields.contains_key(&name) {
                return Err(bad(
                    dir,
                    format!(
                        "host `{}`: field `{k}` would be `{name}`, which is already set",
                        h.name
                    ),
                    "rename the field: HOST_NAME is the host's name, and inputs keep their names",
                ));
            }
            fields.insert(name.clone(), value_text(v));
            all_names.insert(name);
        }
        per_host.push((h, fields));
    }
    let mut out = BTreeMap::new();
    for (h, fields) in per_host {
        let mut env = vec![
            ("TERRACE_HOST".to_owned(), h.name.clone()),
            ("TERRACE_ROOT".to_owned(), h.root.clone()),
            ("HOST_NAME".to_owned(), h.name.clone()),
        ];
        for name in &all_names {
            env.push((name.clone(), fields.get(name).cloned().unwrap_or_default()));
        }
        out.insert(h.name.clone(), env);
    }
    Ok(out)
}

/// What `ssh` needs that lives on disk while the unit runs: a
/// known_hosts file from `hostKey`, and an agent holding a decrypted key.
#[derive(Debug)]
pub(crate) struct Session {
    dir: tempfile::TempDir,
    agent: Option<tokio::process::Child>,
    /// The identities decrypted into the agent.
    in_agent: Vec<PathBuf>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(a) = &mut self.agent {
            let _ = a.start_kill();
        }
    }
}

impl Session {
    pub(crate) fn agent_socket(&self) -> Option<PathBuf> {
        self.agent
            .as_ref()
            .map(|_| self.dir.path().join("agent.sock"))
    }

    /// A private directory, and an agent holding the key when it is
    /// SOPS-encrypted.
    pub(crate) async fn open(
        dir: &str,
        secrets: Option<&dyn terrace_core::secrets::SecretSource>,
        hosts: &[Host],
    ) -> Result<Session, DriverError> {
        let mut session = Session::pinned(dir, hosts)?;
        let mut encrypted: Vec<&PathBuf> = hosts
            .iter()
            .filter_map(|h| h.identity.as_ref())
            .filter(|p| {
                std::fs::read_to_string(p).is_ok_and(|t| terrace_core::secrets::looks_encrypted(&t))
            })
            .collect();
        // Hosts sharing a key: decrypted and added once.
        encrypted.sort();
        encrypted.dedup();
        if let Some(first) = encrypted.first() {
            let secrets = secrets.ok_or_else(|| {
                bad(
                    dir,
                    format!(
                        "{} is SOPS-encrypted, and secrets are not available here",
                        first.display()
                    ),
                    "run where the SOPS keys are",
                )
            })?;
            let socket = session.dir.path().join("agent.sock");
            let agent = tokio::process::Command::new("ssh-agent")
                .arg("-D")
                .arg("-a")
                .arg(&socket)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| DriverError::Target(format!("cannot run ssh-agent: {e}")))?;
            session.agent = Some(agent);
            // Ready once it accepts a connection: the socket file exists
            // a moment before the agent listens on it.
            let started = std::time::Instant::now();
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                if started.elapsed() > Duration::from_secs(15) {
                    return Err(DriverError::Target(
                        "ssh-agent did not start listening within 15s".to_owned(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for path in encrypted {
                let text = std::fs::read_to_string(path)?;
                let docs = secrets
                    .open_documents(path, &text)
                    .map_err(|e| crate::manifests::secret_error(e, &path.display().to_string()))?
                    .unwrap_or_default();
                // sops keeps a file of another format under `data`.
                let key = docs
                    .first()
                    .and_then(|d| d.get("data").and_then(Value::as_str).map(str::to_owned))
                    .ok_or_else(|| {
                        bad(
                            dir,
                            format!("{} holds no key (`data`)", path.display()),
                            "encrypt the key file whole: sops -e --input-type binary KEY",
                        )
                    })?;
                let added = Program::find("ssh-add")
                    .map_err(|e| DriverError::Target(e.to_string()))?
                    .command()
                    .arg("-q")
                    .arg("-")
                    .env("SSH_AUTH_SOCK", &socket)
                    .stdin(zeroize::Zeroizing::new(key.into_bytes()).to_vec())
                    .timeout(Duration::from_secs(30))
                    .run()
                    .await
                    .map_err(|e| DriverError::Target(format!("ssh-add: {e}")))?;
                added
                    .success("ssh-add")
                    .map_err(|e| DriverError::Target(e.to_string()))?;
                session.in_agent.push(path.clone());
            }
        }
        Ok(session)
    }

    /// A private directory holding a known_hosts file for each host whose
    /// key the target gives (`hostKey`); no agent.
    fn pinned(dir: &str, hosts: &[Host]) -> Result<Session, DriverError> {
        let tmp = tempfile::Builder::new()
            .prefix("terrace-hosts-")
            .tempdir()
            .map_err(|e| DriverError::Target(format!("cannot make a private directory: {e}")))?;
        let session = Session {
            dir: tmp,
            agent: None,
            in_agent: Vec::new(),
        };
        for h in hosts {
            if let Some(k) = &h.host_key {
                let mut parts = k.split_whitespace();
                let (Some(kind), Some(key)) = (parts.next(), parts.next()) else {
                    return Err(bad(
                        dir,
                        format!("host target `{}`: hostKey is not `TYPE KEY`", h.name),
                        "write it as ssh-keyscan prints it: `ssh-ed25519 AAAA…`",
                    ));
                };
                let who = match h.port {
                    Some(p) if p != 22 => format!("[{}]:{p}", h.address),
                    _ => h.address.clone(),
                };
                std::fs::write(session.known_hosts(h), format!("{who} {kind} {key}\n"))?;
            }
        }
        Ok(session)
    }

    /// The known_hosts file that pins the host's key.
    pub(crate) fn known_hosts(&self, h: &Host) -> PathBuf {
        match (&h.host_key, &h.known_hosts) {
            (None, Some(k)) => k.clone(),
            _ => self.dir.path().join(format!("known_hosts_{}", h.name)),
        }
    }

    /// A private directory that lives as long as the session.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The command that runs a script (given on standard input) there.
    fn command(&self, h: &Host) -> Result<terrace_exec::Exec, DriverError> {
        let shell = if h.sudo { "sudo -n sh -s" } else { "sh -s" };
        if h.local {
            let sh = Program::find("sh").map_err(|e| DriverError::Target(e.to_string()))?;
            let c = if h.sudo {
                Program::find("sudo")
                    .map_err(|e| DriverError::Target(e.to_string()))?
                    .command()
                    .args(["-n", "sh", "-s"])
            } else {
                sh.command().arg("-s")
            };
            return Ok(c.current_dir(&h.workdir));
        }
        let known = self.known_hosts(h);
        let mut c = Program::find("ssh")
            .map_err(|e| DriverError::Target(e.to_string()))?
            .command()
            // No ssh_config: nothing there (VerifyHostKeyDNS, a
            // KnownHostsCommand) may loosen the pinned host key.
            .args(["-F", "/dev/null", "-T", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "VerifyHostKeyDNS=no",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=15",
            ])
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
            .args(["-o", "LogLevel=ERROR"])
            .pass_env("HOME")
            .pass_env("USER");
        match (&h.identity, self.agent_socket()) {
            // A SOPS-encrypted key is in the agent.
            (Some(id), Some(sock)) if self.in_agent.contains(id) => {
                c = c.env("SSH_AUTH_SOCK", sock);
            }
            (Some(id), _) => c = c.arg("-i").arg(id).args(["-o", "IdentitiesOnly=yes"]),
            (None, _) => c = c.pass_env("SSH_AUTH_SOCK"),
        }
        if let Some(p) = h.port {
            c = c.arg("-p").arg(p.to_string());
        }
        Ok(c.arg("--")
            .arg(match &h.user {
                Some(u) => format!("{u}@{}", h.address),
                None => h.address.clone(),
            })
            .arg(shell))
    }
}

/// What the unit puts on every host, resolved.
#[derive(Debug, Clone)]
struct Desired {
    check: Option<String>,
    apply: String,
    destroy: Option<String>,
    env: Vec<(String, String)>,
    /// What stands for each secret input in the digest: the digest of the
    /// files (or outputs) it came from, never its value.
    sealed_env: BTreeMap<String, String>,
    timeout: Duration,
    sensitive_outputs: Vec<String>,
    redact: Plaintexts,
    /// Each host's files and own variables, by host name.
    hosts: BTreeMap<String, HostWant>,
    /// The fields of every `hosts` item, `where` or not: a host leaving
    /// the unit has its variables in its destroy command.
    listed: BTreeMap<String, Map<String, Value>>,
}

/// What one host gets besides what every host gets.
#[derive(Debug, Clone, Default)]
struct HostWant {
    files: Vec<WantFile>,
    /// `TERRACE_HOST` and its item's `HOST_*` fields.
    env: Vec<(String, String)>,
    /// Files an earlier apply gave the host that the unit no longer
    /// names: removed before `apply` runs.
    remove: Vec<String>,
}

/// A file as one host gets it.
#[derive(Debug, Clone)]
struct WantFile {
    /// As the unit names it.
    path: String,
    /// Where it is on the host: under the host's `root`.
    at: String,
    /// `None`: another unit generates it, and has not yet.
    content: Option<Vec<u8>>,
    /// Octal, as written (`0644`).
    mode: String,
    owner: Option<String>,
    /// The project file it comes from, for messages.
    from: Option<String>,
}

impl WantFile {
    /// The content's sha256 as `sha256sum` prints it, or `pending`.
    fn sum(&self) -> String {
        self.content
            .as_deref()
            .map_or_else(|| "pending".to_owned(), sha256_hex)
    }
}

impl Desired {
    fn host(&self, name: &str) -> &HostWant {
        static NONE: std::sync::OnceLock<HostWant> = std::sync::OnceLock::new();
        self.hosts
            .get(name)
            .unwrap_or_else(|| NONE.get_or_init(HostWant::default))
    }

    /// What a host's state is compared with when there is no `check`.
    fn digest(&self, host: &str) -> String {
        let env: Vec<(&String, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k, self.sealed_env.get(k).map_or(v.as_str(), String::as_str)))
            .collect();
        let want = self.host(host);
        let mut text = format!("{}\0{env:?}\0{:?}\0", self.apply, want.env);
        for f in &want.files {
            text.push_str(&format!(
                "{}\0{}\0{}\0{:?}\0",
                f.at,
                f.sum(),
                f.mode,
                f.owner
            ));
        }
        terrace_fs::digest::digest(text.as_bytes())
    }

    /// The `export`s every script on `host` starts with.
    fn preamble(&self, host: &str) -> String {
        let mut s = String::from("set -u\n");
        for (k, v) in self.env.iter().chain(&self.host(host).env) {
            s.push_str(&format!("export {k}={}\n", quote(v)));
        }
        s
    }
}

/// Every secret value a unit's commands may print: the secrets files'
/// values, and the unit's secret inputs themselves (one from another
/// unit's sensitive output has no file to look up).
pub(crate) fn secret_values(ctx: &UnitContext<'_>) -> Plaintexts {
    let files = match ctx.secrets {
        Some(sec) => {
            let from: Vec<PathBuf> = ctx
                .unit
                .sensitive_inputs
                .values()
                .flatten()
                .map(PathBuf::from)
                .collect();
            sec.plaintexts_of(&from)
        }
        None => Plaintexts::default(),
    };
    let mut values = Vec::new();
    for (k, from) in &ctx.unit.sensitive_inputs {
        let text = match ctx.unit.inputs.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => continue,
        };
        values.push((
            text,
            PathBuf::from(from.first().cloned().unwrap_or_default()),
        ));
    }
    files.merged(&Plaintexts::new(values))
}

/// Whether `k` is a valid environment variable (and ansible variable)
/// name: letters, digits and `_`, not starting with a digit.
pub(crate) fn is_env_name(k: &str) -> bool {
    k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A value as an environment variable holds it: a string as it is, any
/// other value as JSON.
pub(crate) fn value_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// The unit's inputs as the `export`s of its scripts: each name a valid
/// environment variable and none of those terrace sets for each host.
fn input_env(dir: &str, inputs: &Map<String, Value>) -> Result<Vec<(String, String)>, DriverError> {
    let mut env = Vec::new();
    for (k, v) in inputs {
        if !is_env_name(k) {
            return Err(bad(
                dir,
                format!("input `{k}` is not a valid environment variable name"),
                "use letters, digits and `_`, not starting with a digit",
            ));
        }
        if matches!(k.as_str(), "TERRACE_HOST" | "TERRACE_ROOT" | "HOST_NAME") {
            return Err(bad(
                dir,
                format!("input `{k}` is a name terrace sets for each host"),
                "rename the input",
            ));
        }
        env.push((k.clone(), value_text(v)));
    }
    Ok(env)
}

/// A command: shell text, or a `.sh` file of the unit.
fn command_text(ctx: &UnitContext<'_>, text: &str) -> Result<String, DriverError> {
    command_text_in(ctx.root, &ctx.unit.dir, text)
}

fn command_text_in(root: &Path, dir: &str, text: &str) -> Result<String, DriverError> {
    let t = text.trim();
    if t.ends_with(".sh") && !t.contains(char::is_whitespace) {
        let rel = crate::clean_relative(dir, t).ok_or_else(|| {
            bad(
                dir,
                format!("`{t}` leads outside the project"),
                "name a script in the unit directory",
            )
        })?;
        return Ok(terrace_fs::read_to_string(root, &root.join(rel))?);
    }
    Ok(text.to_owned())
}

/// The files of `specs` as `host` gets them (`{host}` its name).
/// `reads` keeps what each project file held (by how it is named), so a
/// file every host gets is read and checked once.
fn host_files(
    ctx: &UnitContext<'_>,
    specs: &BTreeMap<String, FileSpec>,
    h: &Host,
    reads: &mut BTreeMap<String, Option<Vec<u8>>>,
) -> Result<Vec<WantFile>, DriverError> {
    let host = h.name.as_str();
    let dir = &ctx.unit.dir;
    let mut files = Vec::new();
    for (path, f) in specs {
        let path = path.replace("{host}", host);
        if !plain_absolute(&path) || path == "/" {
            return Err(bad(
                dir,
                format!("file `{path}` is not an absolute path on the host"),
                "write where it goes, as `/etc/app/app.conf`",
            ));
        }
        let (content, from) = match (&f.content, &f.source, &f.generated) {
            (Some(c), None, None) => (Some(c.clone().into_bytes()), None),
            (None, Some(src), None) => {
                let src = src.replace("{host}", host);
                let rel = crate::clean_relative(dir, &src).ok_or_else(|| {
                    bad(
                        dir,
                        format!("file source `{src}` leads outside the project"),
                        "name a file in the unit directory",
                    )
                })?;
                let key = format!("source:{rel}");
                let content = match reads.get(&key) {
                    Some(c) => c.clone(),
                    None => {
                        let c = Some(terrace_fs::read(ctx.root, &ctx.root.join(&rel))?);
                        reads.insert(key, c.clone());
                        c
                    }
                };
                (content, Some(rel))
            }
            (None, None, Some(generated)) => {
                let generated = generated.replace("{host}", host);
                let rel = crate::clean_relative("", &generated).ok_or_else(|| {
                    bad(
                        dir,
                        format!("generated file `{generated}` leads outside the project"),
                        "give the project-relative path a unit's outputs name, as `${unit.node-configs.outputs.dir}/{host}/config.yaml`",
                    )
                })?;
                let key = format!("generated:{rel}");
                let content = match reads.get(&key) {
                    Some(c) => c.clone(),
                    None => {
                        let abs = ctx.root.join(&rel);
                        terrace_fs::check_read(ctx.root, &abs).map_err(|e| {
                            bad(
                                dir,
                                e.to_string(),
                                "generated files stay inside the project",
                            )
                        })?;
                        let c = match std::fs::symlink_metadata(&abs) {
                            // Not generated yet: the unit that makes it is
                            // applied first, and the plan made then reads it.
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                            _ => Some(terrace_fs::read(ctx.root, &abs)?),
                        };
                        reads.insert(key, c.clone());
                        c
                    }
                };
                (content, Some(rel))
            }
            _ => {
                return Err(bad(
                    dir,
                    format!(
                        "file `{path}` needs exactly one of `content`, `source` or `generated`"
                    ),
                    "give its content inline, the unit's file it is copied from, or the file another unit generates",
                ));
            }
        };
        if let Some(c) = &content
            && c.len() > MAX_FILE
        {
            return Err(bad(
                dir,
                format!(
                    "file `{path}` is {} bytes; at most {MAX_FILE} are put on a host",
                    c.len()
                ),
                "ship large files another way",
            ));
        }
        let mode = f.mode.clone().unwrap_or_else(|| "0644".to_owned());
        if !(3..=4).contains(&mode.len()) || !mode.chars().all(|c| ('0'..='7').contains(&c)) {
            return Err(bad(
                dir,
                format!("file `{path}`: mode `{mode}` is not octal"),
                "write it as `0644`",
            ));
        }
        if let Some(o) = &f.owner
            && (o.is_empty()
                || o.starts_with('-')
                || o.starts_with(':')
                || o.ends_with(':')
                || o.matches(':').count() > 1
                || !o
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.')))
        {
            return Err(bad(
                dir,
                format!("file `{path}`: owner `{o}` is not a user[:group]"),
                "write it as `user` or `user:group`",
            ));
        }
        files.push(WantFile {
            at: format!("{}{path}", h.root),
            path,
            content,
            mode,
            owner: f.owner.clone(),
            from,
        });
    }
    Ok(files)
}

fn desired(ctx: &UnitContext<'_>) -> Result<(Vec<Host>, Desired), DriverError> {
    let s: ScriptSettings = crate::unit_settings(ctx)?;
    let dir = &ctx.unit.dir;
    for field in ["hosts", "where", "files", "check", "apply", "destroy"] {
        if ctx.unit.sensitive_settings.contains_key(field) {
            return Err(bad(
                dir,
                format!("script.{field} holds a secret value"),
                "pass secrets as inputs: they reach the commands as environment variables",
            ));
        }
    }
    let apply = s.apply.as_deref().ok_or_else(|| {
        bad(
            dir,
            "script.apply is missing".to_owned(),
            "give the commands that make the host as wanted",
        )
    })?;
    let env = input_env(dir, &ctx.unit.inputs)?;
    let hosts = hosts(ctx, &s)?;
    let mut envs = host_envs(dir, &hosts, &ctx.unit.inputs)?;
    let mut per_host = BTreeMap::new();
    let mut reads = BTreeMap::new();
    for h in &hosts {
        per_host.insert(
            h.name.clone(),
            HostWant {
                files: host_files(ctx, &s.files, h, &mut reads)?,
                env: envs.remove(&h.name).unwrap_or_default(),
                remove: Vec::new(),
            },
        );
    }
    let redact = secret_values(ctx);
    let sealed_env: BTreeMap<String, String> = ctx
        .unit
        .sensitive_inputs
        .iter()
        .map(|(k, from)| (k.clone(), crate::sealed_sources_digest(ctx.root, from)))
        .collect();
    let d = Desired {
        check: s
            .check
            .as_deref()
            .map(|c| command_text(ctx, c))
            .transpose()?,
        apply: command_text(ctx, apply)?,
        destroy: s
            .destroy
            .as_deref()
            .map(|c| command_text(ctx, c))
            .transpose()?,
        env,
        sealed_env,
        timeout: s
            .timeout
            .as_ref()
            .map_or(DEFAULT_TIMEOUT, Timeout::duration),
        sensitive_outputs: s.sensitive_outputs.clone(),
        redact,
        hosts: per_host,
        listed: listed_fields(s.hosts.as_ref()),
    };
    Ok((hosts, d))
}

fn hosts(ctx: &UnitContext<'_>, s: &ScriptSettings) -> Result<Vec<Host>, DriverError> {
    hosts_named(ctx, s.hosts.as_ref(), &s.only)
}

/// The hosts `refs` names, kept by `only` (the unit's `target` when it
/// names none), each with its item's fields.
pub(crate) fn hosts_named(
    ctx: &UnitContext<'_>,
    refs: Option<&HostList>,
    only: &Map<String, Value>,
) -> Result<Vec<Host>, DriverError> {
    let dir = &ctx.unit.dir;
    let mut picked: Vec<(String, Map<String, Value>)> = Vec::new();
    let refs = match refs {
        Some(HostList::List(l)) => l.as_slice(),
        Some(HostList::Expression(e)) => {
            return Err(bad(
                dir,
                format!("`hosts: {e}` is not a list"),
                "give a list of target names, or a variable holding a list (items may be objects with a `name`)",
            ));
        }
        None if !only.is_empty() => {
            return Err(bad(
                dir,
                "`where` chooses among `hosts`, and there are none".to_owned(),
                "list the hosts (`hosts: ${var.nodes}`), or drop `where`",
            ));
        }
        None => match &ctx.unit.target {
            Some(t) => {
                picked.push((t.name.clone(), Map::new()));
                &[]
            }
            None => {
                return Err(bad(
                    dir,
                    "the unit names no host".to_owned(),
                    "set `target:` in unit.yaml, or `hosts: [node1, node2]` (or `hosts: ${var.nodes}`)",
                ));
            }
        },
    };
    for r in refs {
        let (name, fields) = match r {
            HostRef::Name(n) => (n.clone(), Map::new()),
            HostRef::Item { name, fields } => (name.clone(), fields.clone()),
        };
        let kept = only.iter().all(|(k, want)| {
            if k == "name" {
                want.as_str() == Some(name.as_str())
            } else {
                fields.get(k) == Some(want)
            }
        });
        if kept {
            if picked.iter().any(|(n, _)| *n == name) {
                return Err(bad(
                    dir,
                    format!("host `{name}` is listed twice"),
                    "list each host once",
                ));
            }
            picked.push((name, fields));
        }
    }
    picked
        .into_iter()
        .map(|(n, fields)| {
            let t = ctx.targets.get(&n).ok_or_else(|| {
                bad(
                    dir,
                    format!("host `{n}` is not a target of terrace.yaml"),
                    "add it under `targets:` with `type: host`",
                )
            })?;
            let mut h = Host::of(ctx.root, t, dir)?;
            h.vars = fields;
            Ok(h)
        })
        .collect()
}

/// What one host's run printed, with its outputs lines taken out.
struct Ran {
    exit: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(
    session: &Session,
    h: &Host,
    script: String,
    d: &Desired,
    lines: Option<&Lines>,
) -> Result<Ran, DriverError> {
    let prefix = h.name.clone();
    let sink = lines.cloned();
    let finished = session
        .command(h)?
        .stdin(script.into_bytes())
        .timeout(d.timeout)
        .redact(d.redact.clone())
        .on_line(move |stream, line| {
            if line.starts_with("::outputs::")
                || line.starts_with("::file::")
                || line.starts_with("::check::")
            {
                return;
            }
            if let Some(s) = &sink
                && stream == Stream::Stdout
            {
                s.send(&format!("{prefix} │ {line}"));
            }
        })
        .run()
        .await
        .map_err(|e| DriverError::Target(format!("host `{}`: {e}", h.name)))?;
    Ok(Ran {
        exit: finished.status.code(),
        // As printed: `::outputs::` carries secrets the unit's outputs
        // need whole; what is shown is redacted where it is shown.
        stdout: String::from_utf8_lossy(&finished.stdout).into_owned(),
        stderr: d.redact.redact(&finished.stderr),
    })
}

/// One host's plan.
#[derive(Debug, Clone)]
struct HostPlan {
    host: Host,
    run: bool,
}

#[derive(Debug)]
struct ScriptPlan {
    session: Session,
    desired: Desired,
    hosts: Vec<HostPlan>,
    /// What the last apply left (sensitive values included): hosts not run
    /// keep theirs.
    prior_outputs: Map<String, Value>,
    /// What the last apply recorded: a host that fails keeps its items.
    prior_inventory: Vec<InventoryItem>,
    /// Hosts that left the unit, with the files they were given.
    retired: Vec<(Host, Vec<String>)>,
    /// Where the values of sensitive outputs are kept (see
    /// [`outputs_file`]).
    outputs_file: PathBuf,
}

/// The private file holding the values of a unit's sensitive outputs
/// (0600, as Terraform's local state holds its own): the state record
/// names them only. Dependents read them back through `read_outputs`.
fn outputs_file(root: &Path, environment: &str, unit: &str) -> PathBuf {
    root.join(terrace_core::config::WORK_DIR)
        .join("hosts")
        .join(environment)
        .join(unit)
        .join("outputs.json")
}

#[derive(Debug)]
struct ScriptDestroy {
    session: Session,
    desired: Option<Desired>,
    hosts: Vec<(Host, Vec<String>)>,
    /// The unit's kept sensitive outputs, removed with it.
    outputs_file: Option<PathBuf>,
}

/// Reads each file's digest, mode and owner on `host`, then runs the
/// check.
fn probe_script(d: &Desired, host: &str) -> String {
    let mut s = d.preamble(host);
    for f in &d.host(host).files {
        let q = quote(&f.at);
        // Tab-separated: owner names may hold spaces, paths may not hold
        // tabs.
        s.push_str(&format!(
            "if [ -f {q} ]; then printf '::file::\\t%s\\t%s\\t%s\\t%s\\t%s\\n' \"$(sha256sum < {q} | cut -d' ' -f1)\" \"$(stat -c %a -- {q})\" \"$(stat -c %U:%G -- {q})\" \"$(stat -c %u:%g -- {q})\" {q}; else printf '::file::\\t-\\t-\\t-\\t-\\t%s\\n' {q}; fi\n"
        ));
    }
    if let Some(c) = &d.check {
        // Without `set -u`: dash exits 2 on an unset variable, which would
        // read as "changes".
        s.push_str(&format!(
            "(\nset +u\n{c}\n) </dev/null\n__terrace_rc=$?\nprintf '\\n::check:: %s\\n' \"$__terrace_rc\"\n"
        ));
    }
    s
}

/// A file as the probe found it on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its sha256, or `-` when there is none.
    pub sum: String,
    /// Octal, as `stat` prints it.
    pub mode: String,
    /// `user:group` by name, and by id.
    pub names: String,
    pub ids: String,
}

impl Found {
    /// A `::file::` line: the file's path and what was found.
    pub fn parse(line: &str) -> Option<(&str, Found)> {
        let rest = line.strip_prefix("::file::\t")?;
        let mut parts = rest.splitn(5, '\t');
        let (sum, mode, names, ids, path) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        // A field left empty: sha256sum or stat could not read the file.
        if sum != "-" && [sum, mode, names, ids].iter().any(|f| f.is_empty()) {
            return None;
        }
        Some((
            path,
            Found {
                sum: sum.to_owned(),
                mode: mode.to_owned(),
                names: names.to_owned(),
                ids: ids.to_owned(),
            },
        ))
    }
}

fn apply_script(d: &Desired, host: &str) -> Result<String, String> {
    use base64::Engine as _;
    let mut s = d.preamble(host);
    // Files are made private, then given their owner and mode: nobody
    // reads one half written, and nothing planted in the directory is
    // written through.
    s.push_str("set -e\numask 077\n");
    for f in &d.host(host).files {
        let content = f.content.as_deref().ok_or_else(|| {
            format!(
                "host `{host}`: file {} was not generated ({} is missing)",
                f.path,
                f.from.as_deref().unwrap_or("its source")
            )
        })?;
        let q = quote(&f.at);
        let encoded = base64::engine::general_purpose::STANDARD.encode(content);
        s.push_str(&format!(
            "(umask 022 && mkdir -p -- \"$(dirname -- {q})\")\n__t=$(mktemp -- \"$(dirname -- {q})/.terrace-XXXXXXXX\")\nbase64 -d > \"$__t\" <<'__TERRACE_FILE__'\n"
        ));
        for chunk in encoded.as_bytes().chunks(76) {
            s.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
            s.push('\n');
        }
        s.push_str("__TERRACE_FILE__\n");
        if let Some(o) = &f.owner {
            s.push_str(&format!("chown -- {} \"$__t\"\n", quote(o)));
        }
        s.push_str(&format!(
            "chmod -- {} \"$__t\"\nmv -f -- \"$__t\" {q}\n",
            f.mode
        ));
    }
    for f in &d.host(host).remove {
        s.push_str(&format!("rm -f -- {}\n", quote(f)));
    }
    s.push_str("umask 022\nset +e\n(\n");
    s.push_str(&d.apply);
    s.push_str("\n) </dev/null\n");
    Ok(s)
}

/// What a host printed on standard output while probed, read by its
/// shape only: a host may be compromised, and nothing it prints is
/// trusted further.
#[derive(Debug, Default)]
pub struct HostReport {
    /// Each `::file::` line: the path and what was found there, or the
    /// line when it is not well-formed.
    pub files: Vec<Result<(String, Found), String>>,
    /// The check's exit status (`::check::`).
    pub check: Option<i32>,
    /// The other lines: the check's own output, its diff.
    pub diff: String,
}

impl HostReport {
    pub fn read(stdout: &str) -> HostReport {
        let mut r = HostReport::default();
        for line in stdout.split('\n') {
            if line.starts_with("::file::") {
                r.files.push(
                    Found::parse(line)
                        .map(|(p, f)| (p.to_owned(), f))
                        .ok_or_else(|| line.to_owned()),
                );
            } else if let Some(rc) = line.strip_prefix("::check:: ") {
                r.check = rc.trim().parse::<i32>().ok();
            } else if !line.starts_with("::outputs::") {
                r.diff.push_str(line);
                r.diff.push('\n');
            }
        }
        r
    }
}

/// How a file found on a host differs from what it should be, if it does:
/// its action and what differs besides the content.
fn file_drift(want: &WantFile, found: &Found) -> Option<(Action, String)> {
    if found.sum == "-" {
        return Some((Action::Create, String::new()));
    }
    let mut what = Vec::new();
    if found.sum != want.sum() {
        what.push("content".to_owned());
    }
    let wanted_mode = u32::from_str_radix(&want.mode, 8).ok();
    if u32::from_str_radix(&found.mode, 8).ok() != wanted_mode {
        what.push(format!("mode {} → {}", found.mode, want.mode));
    }
    if let Some(o) = &want.owner {
        // Each part by name or by id, as chown takes either.
        let (user, group) = o
            .split_once(':')
            .map_or((o.as_str(), None), |(u, g)| (u, Some(g)));
        let (user_name, group_name) = found.names.split_once(':').unwrap_or((&found.names, ""));
        let (uid, gid) = found.ids.split_once(':').unwrap_or((&found.ids, ""));
        let user_ok = user == user_name || user == uid;
        let group_ok = group.is_none_or(|g| g == group_name || g == gid);
        if !(user_ok && group_ok) {
            what.push(format!("owner {} → {o}", found.names));
        }
    }
    (!what.is_empty()).then(|| (Action::Update, what.join(", ")))
}

/// The fields of every item of `hosts`, by name.
fn listed_fields(hosts: Option<&HostList>) -> BTreeMap<String, Map<String, Value>> {
    match hosts {
        Some(HostList::List(l)) => l
            .iter()
            .filter_map(|r| match r {
                HostRef::Item { name, fields } => Some((name.clone(), fields.clone())),
                HostRef::Name(_) => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// What an earlier apply left that the unit no longer wants: the hosts
/// that left it (returned, with the files they were given; their
/// variables added to `d`), and files no longer given to a host that
/// stays (set as that host's `remove`).
fn leftovers(
    ctx: &UnitContext<'_>,
    hosts: &[Host],
    d: &mut Desired,
    prior: &[InventoryItem],
    notes: &mut Vec<String>,
) -> Result<Vec<(Host, Vec<String>)>, DriverError> {
    let dir = &ctx.unit.dir;
    let unit = &ctx.unit.name;
    let mut retired = Vec::new();
    for (name, files) in recorded_hosts(prior) {
        let name = name.as_str();
        if let Some(h) = hosts.iter().find(|h| h.name == name) {
            let want = d.hosts.get_mut(name).expect("every host is desired");
            let gone: Vec<String> = files
                .into_iter()
                .filter(|p| !want.files.iter().any(|f| f.at == *p))
                .collect();
            want.remove = removable(h, gone, unit, notes)?;
        } else {
            // Its target gone: nothing can reach it, and nothing is
            // removed; the unit forgets it.
            let Some(t) = ctx.targets.get(name) else {
                notes.push(format!(
                    "host `{name}` left the unit and is no longer a target: what the unit left there stays"
                ));
                continue;
            };
            let mut h = Host::of(ctx.root, t, dir)?;
            h.vars = d.listed.get(name).cloned().unwrap_or_default();
            let files = removable(&h, files, unit, notes)?;
            retired.push((h, files));
        }
    }
    // Their variables beside those that stay, so every field name is set;
    // those recorded when they were applied win.
    let recorded = recorded_vars(prior);
    let mut all = hosts.to_vec();
    all.extend(retired.iter().map(|(h, _)| h.clone()));
    for (name, env) in host_envs(dir, &all, &ctx.unit.inputs)?
        .into_iter()
        .filter(|(n, _)| retired.iter().any(|(h, _)| h.name == *n))
    {
        let env = with_recorded(env, recorded.get(name.as_str()));
        d.hosts.insert(
            name,
            HostWant {
                files: Vec::new(),
                env,
                remove: Vec::new(),
            },
        );
    }
    Ok(retired)
}

impl ScriptDriver {
    async fn plan_hosts(&self, ctx: &UnitContext<'_>) -> Result<UnitPlan, DriverError> {
        let (hosts, mut d) = desired(ctx)?;
        // A file another unit has not generated yet: like an input known
        // only after a dependency is applied, nothing is planned on what
        // it will hold. The engine plans the unit again once it exists.
        let pending: Vec<String> =
            d.hosts
                .iter()
                .flat_map(|(h, w)| {
                    w.files.iter().filter(|f| f.content.is_none()).map(move |f| {
                    format!(
                        "deferred: file {} on {h} is generated by a unit applied first ({})",
                        f.path,
                        f.from.as_deref().unwrap_or("its source")
                    )
                })
                })
                .collect();
        if !pending.is_empty() {
            return Ok(UnitPlan {
                action: Action::Deferred,
                changes: Vec::new(),
                unchanged: 0,
                outputs: None,
                render_hash: String::new(),
                notes: pending,
                payload: None,
            });
        }
        // What an earlier apply left that the unit no longer wants.
        let prior_inventory: &[InventoryItem] = ctx.prior.map_or(&[], |p| p.inventory.as_slice());
        let mut notes = Vec::new();
        let retired = leftovers(ctx, &hosts, &mut d, prior_inventory, &mut notes)?;
        let mut reached = hosts.clone();
        reached.extend(retired.iter().map(|(h, _)| h.clone()));
        let session = Session::open(&ctx.unit.dir, ctx.secrets, &reached).await?;
        let prior_digest = |host: &str| {
            ctx.prior.and_then(|p| {
                p.inventory.iter().find_map(|i| match i {
                    InventoryItem::HostScript {
                        host: h, digest, ..
                    } if h == host => Some(digest.clone()),
                    _ => None,
                })
            })
        };
        let results: Vec<Result<(HostPlan, Vec<Change>), DriverError>> =
            futures::stream::iter(hosts.iter().cloned())
                .map(|h| {
                    let session = &session;
                    let d = &d;
                    let before = prior_digest(&h.name);
                    async move { plan_host(session, h, d, before).await }
                })
                .buffered(4)
                .collect()
                .await;
        let mut plans = Vec::new();
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok((p, c)) => {
                    plans.push(p);
                    changes.extend(c);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            return Err(DriverError::Target(errors.join("\n")));
        }
        for (h, files) in &retired {
            changes.push(Change {
                address: format!("script on {}", h.name),
                object: None,
                action: Action::Delete,
                diff: d
                    .destroy
                    .is_some()
                    .then(|| "the host left the unit: its destroy command runs\n".to_owned()),
            });
            for f in files {
                changes.push(Change {
                    address: format!("file {f} on {}", h.name),
                    object: None,
                    action: Action::Delete,
                    diff: None,
                });
            }
        }
        if hosts.is_empty() {
            notes.push(
                "no host: the unit's `hosts` (with `where`) name none, so nothing runs".to_owned(),
            );
        }
        let unchanged = plans.iter().filter(|p| !p.run).count();
        let render_hash = terrace_fs::digest::digest(
            hosts
                .iter()
                .map(|h| d.digest(&h.name))
                .collect::<Vec<_>>()
                .join("\0")
                .as_bytes(),
        );
        Ok(UnitPlan {
            action: UnitPlan::action_for(ctx.prior.is_some(), &changes),
            changes,
            unchanged,
            // Outputs come from the apply's `::outputs::`. Unchanged, the
            // engine reads the applied outputs back (their sensitive
            // values with them) through `read_outputs`.
            outputs: None,
            render_hash,
            notes,
            payload: Some(Arc::new(ScriptPlan {
                session,
                desired: d,
                hosts: plans,
                prior_outputs: match ctx.prior {
                    Some(p) => match self.read_outputs(ctx.root, p) {
                        Some(r) => r?,
                        None => p.outputs.clone(),
                    },
                    None => Map::new(),
                },
                prior_inventory: prior_inventory.to_vec(),
                retired,
                outputs_file: outputs_file(ctx.root, ctx.environment, &ctx.unit.name),
            })),
        })
    }
}

/// One host's plan: its probe run, then its files' drift and its check
/// (or the digest of what it was last given) read.
async fn plan_host(
    session: &Session,
    h: Host,
    d: &Desired,
    before: Option<String>,
) -> Result<(HostPlan, Vec<Change>), DriverError> {
    let ran = run(session, &h, probe_script(d, &h.name), d, None).await?;
    let want = d.host(&h.name);
    let mut changes = Vec::new();
    let report = HostReport::read(&ran.stdout);
    let check_rc = report.check;
    let diff = report.diff;
    let mut reported = std::collections::BTreeSet::new();
    for file in report.files {
        let (path, found) = file.map_err(|line| {
            DriverError::Target(format!(
                "host `{}`: a file's digest, mode and owner could not be read: {:?}",
                h.name,
                d.redact.redact(&line)
            ))
        })?;
        let Some(f) = want.files.iter().find(|f| f.at == path) else {
            continue;
        };
        reported.insert(f.at.clone());
        if let Some((action, what)) = file_drift(f, &found) {
            changes.push(Change {
                address: format!("file {} on {}", f.path, h.name),
                object: None,
                action,
                diff: (!what.is_empty()).then(|| format!("{what}\n")),
            });
        }
    }
    if ran.exit != Some(0) {
        return Err(DriverError::Target(format!(
            "host `{}`: the check could not run (exit {:?}): {}",
            h.name,
            ran.exit,
            ran.stderr.trim()
        )));
    }
    // Every file reported, or the plan would miss its drift.
    if let Some(f) = want.files.iter().find(|f| !reported.contains(&f.at)) {
        return Err(DriverError::Target(format!(
            "host `{}`: the probe did not report file {} (it needs sh, sha256sum and GNU stat): {}",
            h.name,
            f.path,
            ran.stderr.trim()
        )));
    }
    if d.check.is_some() && !matches!(check_rc, Some(0 | 2)) {
        return Err(DriverError::Target(format!(
            "host `{}`: check exited {} (0: as wanted, 2: changes): {}",
            h.name,
            check_rc.map_or("without a status".to_owned(), |c| c.to_string()),
            ran.stderr.trim()
        )));
    }
    for f in &want.remove {
        changes.push(Change {
            address: format!("file {f} on {}", h.name),
            object: None,
            action: Action::Delete,
            diff: Some("no longer in the unit's files\n".to_owned()),
        });
    }
    let script_change = match &d.check {
        // Never applied here, or its last apply failed part way: applied
        // even when the check passes, so the host is recorded and its
        // outputs are read.
        _ if before.is_none() || before.as_deref() == Some(INCOMPLETE) => true,
        Some(_) => check_rc == Some(2),
        None => before.as_deref() != Some(d.digest(&h.name).as_str()),
    };
    if script_change {
        changes.push(Change {
            address: format!("script on {}", h.name),
            object: None,
            action: if before.is_some() {
                Action::Update
            } else {
                Action::Create
            },
            diff: (!diff.trim().is_empty())
                .then(|| format!("{}\n", d.redact.redact(diff.trim_end()))),
        });
    }
    let run = !changes.is_empty();
    Ok((HostPlan { host: h, run }, changes))
}

/// The digest recorded for a host whose apply failed: it runs again.
const INCOMPLETE: &str = "incomplete";

/// How a host's shell ended, for messages: its status, or a signal.
fn exit_text(exit: Option<i32>) -> String {
    exit.map_or("on a signal".to_owned(), |c| c.to_string())
}

/// A host's name, and its outputs (`None`: not run) or why it failed.
type HostResult = (String, Result<Option<Map<String, Value>>, String>);

/// Applies on one host (when its plan says so): its outputs.
async fn apply_host(
    session: &Session,
    hp: &HostPlan,
    d: &Desired,
    lines: Option<&Lines>,
) -> HostResult {
    let name = hp.host.name.clone();
    if !hp.run {
        return (name, Ok(None));
    }
    let script = match apply_script(d, &name) {
        Ok(s) => s,
        Err(e) => return (name, Err(e)),
    };
    let r = match run(session, &hp.host, script, d, lines).await {
        Err(e) => Err(e.to_string()),
        Ok(ran) if ran.exit != Some(0) => Err(format!(
            "host `{name}`: apply exited {}: {}",
            exit_text(ran.exit),
            ran.stderr.trim()
        )),
        Ok(ran) => match parse_outputs(&ran.stdout) {
            None => Ok(Some(Map::new())),
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(format!("host `{name}`: {e}")),
        },
    };
    (name, r)
}

/// The last `::outputs::` line's JSON object, if there is such a line.
pub fn parse_outputs(stdout: &str) -> Option<Result<Map<String, Value>, String>> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("::outputs::"))?;
    Some(match serde_json::from_str::<Value>(line.trim()) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("`::outputs::` is not followed by a JSON object".to_owned()),
        Err(e) => Err(format!("`::outputs::` is not followed by JSON: {e}")),
    })
}

impl Driver for ScriptDriver {
    fn read_outputs(
        &self,
        root: &Path,
        prior: &terrace_core::state::UnitState,
    ) -> Option<Result<Map<String, Value>, DriverError>> {
        let file = outputs_file(root, &prior.environment, &prior.unit);
        let bytes = std::fs::read(&file).ok()?;
        Some(
            serde_json::from_slice::<Map<String, Value>>(&bytes)
                .map(|kept| {
                    let mut all = prior.outputs.clone();
                    all.extend(kept);
                    all
                })
                .map_err(|e| DriverError::Target(format!("{}: {e}", file.display()))),
        )
    }

    fn render<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<Rendered, DriverError>> {
        Box::pin(async move {
            let (hosts, d) = desired(ctx)?;
            let mut documents = Vec::new();
            for h in &hosts {
                documents.push(RenderedDocument {
                    address: format!("script on {}", h.name),
                    path: None,
                    content: d.redact.redact(&d.apply),
                });
                for f in &d.host(&h.name).files {
                    documents.push(RenderedDocument {
                        address: format!("file {} on {}", f.path, h.name),
                        path: None,
                        content: match &f.content {
                            Some(c) => d.redact.redact(&String::from_utf8_lossy(c)),
                            None => format!(
                                "(generated by a unit applied first: {})",
                                f.from.as_deref().unwrap_or("its source")
                            ),
                        },
                    });
                }
            }
            Ok(Rendered { documents })
        })
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(self.plan_hosts(ctx))
    }

    fn plan_destroy<'a>(
        &'a self,
        ctx: &'a DestroyContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(async move {
            let by_host = recorded_hosts(&ctx.prior.inventory);
            let dir = ctx.unit.map_or(".", |u| u.dir.as_str());
            let mut hosts = Vec::new();
            let mut changes = Vec::new();
            let mut notes = Vec::new();
            for (name, files) in by_host {
                // Its target gone: nothing can reach it, nothing is removed.
                let Some(t) = ctx.targets.get(&name) else {
                    notes.push(format!(
                        "host `{name}` is no longer a target: what the unit left there stays"
                    ));
                    continue;
                };
                let h = Host::of(ctx.root, t, dir)?;
                let files = removable(&h, files, &ctx.prior.unit, &mut notes)?;
                changes.push(Change {
                    address: format!("script on {name}"),
                    object: None,
                    action: Action::Delete,
                    diff: None,
                });
                for f in &files {
                    changes.push(Change {
                        address: format!("file {f} on {name}"),
                        object: None,
                        action: Action::Delete,
                        diff: None,
                    });
                }
                hosts.push((h, files));
            }
            // The destroy command, with the unit's inputs, while the unit
            // is still in the repository.
            let unit_ctx_desired = match ctx.unit {
                Some(u) => {
                    let s: ScriptSettings = terrace_core::kind::parse_settings(&u.settings)
                        .map_err(|e| {
                            bad(
                                &u.dir,
                                format!("invalid `script` settings: {e}"),
                                "fix the unit's script block",
                            )
                        })?;
                    let env = input_env(&u.dir, &u.inputs)?;
                    // The secret inputs' values, to redact what it prints.
                    let redact = Plaintexts::new(
                        env.iter()
                            .filter(|(k, _)| u.sensitive_inputs.contains_key(k))
                            .map(|(_, v)| (v.clone(), PathBuf::from("(secret input)"))),
                    );
                    let cmd = match s.destroy {
                        Some(c) => Some(command_text_in(ctx.root, &u.dir, &c)?),
                        None => None,
                    };
                    // Each host's own variables, as its `hosts` item gives them
                    // (a host no longer listed has its fields empty).
                    let listed = listed_fields(s.hosts.as_ref());
                    let with_vars: Vec<Host> = hosts
                        .iter()
                        .map(|(h, _)| {
                            let mut h = h.clone();
                            h.vars = listed.get(&h.name).cloned().unwrap_or_default();
                            h
                        })
                        .collect();
                    let recorded = recorded_vars(&ctx.prior.inventory);
                    let per_host: BTreeMap<String, HostWant> =
                        host_envs(&u.dir, &with_vars, &u.inputs)?
                            .into_iter()
                            .map(|(name, env)| {
                                let env = with_recorded(env, recorded.get(name.as_str()));
                                (
                                    name,
                                    HostWant {
                                        files: Vec::new(),
                                        env,
                                        remove: Vec::new(),
                                    },
                                )
                            })
                            .collect();
                    cmd.map(|cmd| Desired {
                        check: None,
                        apply: String::new(),
                        destroy: Some(cmd),
                        hosts: per_host,
                        listed,
                        env,
                        sealed_env: BTreeMap::new(),
                        timeout: s
                            .timeout
                            .as_ref()
                            .map_or(DEFAULT_TIMEOUT, Timeout::duration),
                        sensitive_outputs: Vec::new(),
                        redact,
                    })
                }
                None => None,
            };
            let session_hosts: Vec<Host> = hosts.iter().map(|(h, _)| h.clone()).collect();
            let session = Session::open(dir, ctx.secrets, &session_hosts).await?;
            Ok(UnitPlan {
                action: if changes.is_empty() {
                    Action::NoOp
                } else {
                    Action::Delete
                },
                changes,
                unchanged: 0,
                outputs: None,
                render_hash: String::new(),
                notes,
                payload: Some(Arc::new(ScriptDestroy {
                    session,
                    desired: unit_ctx_desired,
                    hosts,
                    outputs_file: Some(outputs_file(
                        ctx.root,
                        &ctx.prior.environment,
                        &ctx.prior.unit,
                    )),
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
            if let Some(p) = plan.payload::<ScriptDestroy>() {
                for (h, files) in &p.hosts {
                    // The command first (its failure stops the destroy:
                    // the state stays), then the files.
                    let script = destroy_script(p.desired.as_ref(), &h.name, files);
                    let d = p.desired.clone().unwrap_or(Desired {
                        check: None,
                        apply: String::new(),
                        destroy: None,
                        hosts: BTreeMap::new(),
                        listed: BTreeMap::new(),
                        env: Vec::new(),
                        sealed_env: BTreeMap::new(),
                        timeout: DEFAULT_TIMEOUT,
                        sensitive_outputs: Vec::new(),
                        redact: Plaintexts::default(),
                    });
                    let ran = run(&p.session, h, script, &d, ctx.lines).await?;
                    if ran.exit != Some(0) {
                        return Err(DriverError::Target(format!(
                            "host `{}`: destroy exited {}: {}",
                            h.name,
                            exit_text(ran.exit),
                            ran.stderr.trim()
                        )));
                    }
                }
                if let Some(f) = &p.outputs_file {
                    match std::fs::remove_file(f) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                        _ => {}
                    }
                }
                return Ok(Applied::default());
            }
            let p = plan.payload::<ScriptPlan>().ok_or_else(|| {
                DriverError::Target("this plan was not made by the script kind".to_owned())
            })?;
            let d = &p.desired;
            // `-j` hosts at a time.
            let runs: Vec<_> = p
                .hosts
                .iter()
                .map(|hp| apply_host(&p.session, hp, d, ctx.lines))
                .collect();
            let results: Vec<HostResult> = futures::stream::iter(runs)
                .buffered(ctx.jobs.max(1))
                .collect()
                .await;
            // Hosts that left the unit: its destroy command, then their
            // files removed.
            let leaving: Vec<_> = p
                .retired
                .iter()
                .map(|(h, files)| async move {
                    let script = destroy_script(Some(d), &h.name, files);
                    let r = match run(&p.session, h, script, d, ctx.lines).await {
                        Err(e) => Err(e.to_string()),
                        Ok(ran) if ran.exit != Some(0) => Err(format!(
                            "host `{}` left the unit, and its destroy exited {}: {}",
                            h.name,
                            exit_text(ran.exit),
                            ran.stderr.trim()
                        )),
                        Ok(_) => Ok(()),
                    };
                    (h.name.clone(), r)
                })
                .collect();
            let left: Vec<(String, Result<(), String>)> = futures::stream::iter(leaving)
                .buffered(ctx.jobs.max(1))
                .collect()
                .await;
            let mut errors: Vec<String> = results
                .iter()
                .filter_map(|(_, r)| r.as_ref().err().cloned())
                .collect();
            errors.extend(left.iter().filter_map(|(_, r)| r.as_ref().err().cloned()));
            let still_there: Vec<&str> = left
                .iter()
                .filter(|(_, r)| r.is_err())
                .map(|(n, _)| n.as_str())
                .collect();
            let failed: Vec<String> = results
                .iter()
                .filter(|(_, r)| r.is_err())
                .map(|(n, _)| n.clone())
                .collect();
            // Each host's outputs: this run's, else what it had (a host
            // not run, one that failed, one that failed to leave).
            let prior_single = p
                .prior_inventory
                .iter()
                .filter(|i| matches!(i, InventoryItem::HostScript { .. }))
                .count()
                == 1;
            let prior_of = |name: &str| -> Option<Map<String, Value>> {
                match p.prior_outputs.get("hosts").and_then(Value::as_object) {
                    Some(all) if !prior_single => all.get(name).and_then(Value::as_object).cloned(),
                    _ => p
                        .prior_inventory
                        .iter()
                        .any(
                            |i| matches!(i, InventoryItem::HostScript { host, .. } if host == name),
                        )
                        .then(|| p.prior_outputs.clone()),
                }
            };
            let mut per_host: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
            for (name, r) in results {
                let kept = match r {
                    Ok(Some(m)) => Some(m),
                    _ => prior_of(&name),
                };
                if let Some(m) = kept {
                    per_host.insert(name, m);
                }
            }
            for name in &still_there {
                if let Some(m) = prior_of(name) {
                    per_host.insert((*name).to_owned(), m);
                }
            }
            // One host: its outputs are the unit's; several: by host.
            let single = p.hosts.len() == 1 && still_there.is_empty();
            let outputs = if single {
                per_host.into_values().next().unwrap_or_default()
            } else {
                let mut m = Map::new();
                m.insert(
                    "hosts".to_owned(),
                    Value::Object(
                        per_host
                            .into_iter()
                            .map(|(k, v)| (k, Value::Object(v)))
                            .collect(),
                    ),
                );
                m
            };
            let mut inventory = Vec::new();
            for hp in &p.hosts {
                let name = &hp.host.name;
                // A host that failed part way runs again next time, and
                // destroy still knows the files it may have been given.
                let digest = if failed.contains(name) {
                    INCOMPLETE.to_owned()
                } else {
                    d.digest(name)
                };
                // Its own variables, for its destroy command once it has
                // left the list.
                let vars = d
                    .host(name)
                    .env
                    .iter()
                    .filter(|(k, _)| k.starts_with("HOST_") && k != "HOST_NAME")
                    .cloned()
                    .collect();
                inventory.push(InventoryItem::HostScript {
                    host: name.clone(),
                    digest,
                    vars,
                });
                for f in &d.host(name).files {
                    inventory.push(InventoryItem::HostFile {
                        host: name.clone(),
                        path: f.at.clone(),
                        digest: format!("sha256:{}", f.sum()),
                    });
                }
            }
            // Hosts that failed to leave keep what was recorded.
            for i in &p.prior_inventory {
                if let InventoryItem::HostScript { host, .. } | InventoryItem::HostFile { host, .. } =
                    i
                    && still_there.contains(&host.as_str())
                {
                    inventory.push(i.clone());
                }
            }
            // Files of hosts that failed, given by an earlier apply and no
            // longer wanted, are still on them.
            for i in &p.prior_inventory {
                if let InventoryItem::HostFile { host, path, .. } = i
                    && failed.contains(host)
                    && !inventory.iter().any(|k| {
                        matches!(k, InventoryItem::HostFile { host: h, path: q, .. } if h == host && q == path)
                    })
                {
                    inventory.push(i.clone());
                }
            }
            // With several hosts every output is under `hosts`: it is
            // sensitive whole when any output is.
            let sensitive: Vec<String> = if !single {
                if d.sensitive_outputs.is_empty() {
                    Vec::new()
                } else {
                    vec!["hosts".to_owned()]
                }
            } else {
                d.sensitive_outputs
                    .iter()
                    .filter(|k| outputs.contains_key(*k))
                    .cloned()
                    .collect()
            };
            // Their values go to the unit's private outputs file; the state
            // record keeps their names.
            let kept: Map<String, Value> = outputs
                .iter()
                .filter(|(k, _)| sensitive.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Some(dir) = p.outputs_file.parent() {
                terrace_fs::private_dir(dir)?;
            }
            terrace_fs::atomic::write(
                &p.outputs_file,
                &serde_json::to_vec(&kept).expect("outputs serialize"),
                terrace_fs::Mode::Private,
            )?;
            let applied = Applied {
                outputs,
                inventory,
                sensitive,
            };
            if !errors.is_empty() {
                return Err(DriverError::Incomplete {
                    applied: Box::new(applied),
                    message: errors.join("\n"),
                });
            }
            Ok(applied)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(mode: &str, owner: Option<&str>) -> WantFile {
        WantFile {
            path: "/etc/a".into(),
            at: "/srv/root/etc/a".into(),
            content: Some(b"x\n".to_vec()),
            mode: mode.into(),
            owner: owner.map(str::to_owned),
            from: None,
        }
    }

    fn found(sum: &str, mode: &str, names: &str, ids: &str) -> Found {
        Found {
            sum: sum.into(),
            mode: mode.into(),
            names: names.into(),
            ids: ids.into(),
        }
    }

    #[test]
    fn drift_is_read_from_content_mode_and_owner() {
        let f = want("0600", Some("app"));
        let sum = sha256_hex(b"x\n");
        assert_eq!(
            file_drift(&f, &found(&sum, "600", "app:app", "990:990")),
            None
        );
        assert_eq!(
            file_drift(&f, &found("-", "-", "-", "-")),
            Some((Action::Create, String::new()))
        );
        assert_eq!(
            file_drift(&f, &found("0000", "600", "app:app", "990:990")),
            Some((Action::Update, "content".into()))
        );
        assert_eq!(
            file_drift(&f, &found(&sum, "644", "root:root", "0:0")),
            Some((
                Action::Update,
                "mode 644 → 0600, owner root:root → app".into()
            ))
        );
        // A group is compared only when the unit names one.
        let g = want("644", Some("app:web"));
        assert_eq!(
            file_drift(&g, &found(&sum, "644", "app:app", "990:990")).map(|d| d.1),
            Some("owner app:app → app:web".into())
        );
        // Owners by id, as chown takes them, match by id.
        let n = want("644", Some("1000:1000"));
        assert_eq!(
            file_drift(&n, &found(&sum, "644", "ann:ann", "1000:1000")),
            None
        );
        // No owner wanted: any owner will do.
        assert_eq!(
            file_drift(&want("0644", None), &found(&sum, "644", "x:y", "1:2")),
            None
        );
        // A stat that printed nothing is drift, not a match.
        assert!(file_drift(&want("0644", None), &found(&sum, "", "", "")).is_some());
    }

    #[test]
    fn probe_lines_split_on_tabs() {
        let (path, f) = Found::parse("::file::\tabc\t640\tdomain users:web\t1:2\t/etc/my file")
            .expect("a line");
        assert_eq!(path, "/etc/my file");
        assert_eq!(f, found("abc", "640", "domain users:web", "1:2"));
        assert!(Found::parse("::file::\tabc\t640").is_none());
        // stat or sha256sum missing: the line is not a reading.
        assert!(Found::parse("::file::\tabc\t\t\t\t/x").is_none());
        assert!(Found::parse("::file::\t-\t-\t-\t-\t/x").is_some());
        assert!(Found::parse("::file:: abc 640 a:b /x").is_none());
    }

    #[test]
    fn only_plain_absolute_paths_pass() {
        for ok in ["/", "/etc/a", "/srv/x y/z"] {
            assert!(plain_absolute(ok), "{ok}");
        }
        for bad in [
            "etc/a",
            "/etc/../a",
            "/etc/./a",
            "/etc//a",
            "/etc/a/",
            "/a\tb",
            "/a\nb",
            "",
        ] {
            assert!(!plain_absolute(bad), "{bad:?}");
        }
    }

    #[test]
    fn outputs_are_the_last_outputs_line() {
        let out = "hello\n::outputs::{\"a\":1}\nmore\n::outputs::{\"b\":\"x\"}\n";
        let m = parse_outputs(out).expect("a line").expect("json");
        assert_eq!(m.get("b"), Some(&Value::String("x".into())));
        assert!(m.get("a").is_none());
        assert!(parse_outputs("nothing\n").is_none());
        assert!(parse_outputs("::outputs::[1]\n").expect("a line").is_err());
        assert!(
            parse_outputs("::outputs::{oops\n")
                .expect("a line")
                .is_err()
        );
    }

    #[test]
    fn hosts_are_names_items_or_an_expression() {
        let s: ScriptSettings = serde_json::from_value(serde_json::json!({
            "hosts": ["node1", {"name": "node2", "role": "agent", "ip": "10.0.0.2"}],
            "where": {"role": "agent"},
            "apply": "true"
        }))
        .expect("settings");
        let Some(HostList::List(l)) = &s.hosts else {
            panic!("a list: {:?}", s.hosts)
        };
        assert_eq!(l[0], HostRef::Name("node1".into()));
        let HostRef::Item { name, fields } = &l[1] else {
            panic!("an item: {:?}", l[1])
        };
        assert_eq!(name, "node2");
        assert_eq!(fields.get("role"), Some(&Value::String("agent".into())));
        assert!(!fields.contains_key("name"));
        // Before evaluation, `${var.nodes}` is text; checked settings take it.
        let s: ScriptSettings = serde_json::from_value(serde_json::json!({
            "hosts": "${var.nodes}", "apply": "true"
        }))
        .expect("settings");
        assert_eq!(s.hosts, Some(HostList::Expression("${var.nodes}".into())));
        // An item without a name is not a host.
        assert!(
            serde_json::from_value::<ScriptSettings>(serde_json::json!({
                "hosts": [{"role": "agent"}], "apply": "true"
            }))
            .is_err()
        );
    }

    fn desired_with(files: Vec<WantFile>, env: Vec<(String, String)>) -> Desired {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "n1".to_owned(),
            HostWant {
                files,
                env: vec![("TERRACE_HOST".into(), "n1".into())],
                remove: Vec::new(),
            },
        );
        Desired {
            check: None,
            apply: "echo hi".into(),
            destroy: None,
            env,
            sealed_env: BTreeMap::new(),
            timeout: Duration::from_secs(1),
            sensitive_outputs: Vec::new(),
            redact: Plaintexts::default(),
            hosts,
            listed: BTreeMap::new(),
        }
    }

    #[test]
    fn values_are_quoted_for_the_shell_and_files_go_under_the_root() {
        let d = desired_with(
            vec![want("0600", Some("app"))],
            vec![("V".into(), "it's $(rm -rf /) `x`".into())],
        );
        let script = apply_script(&d, "n1").expect("script");
        assert!(
            script.contains("export V='it'\\''s $(rm -rf /) `x`'\n"),
            "{script}"
        );
        assert!(script.contains("export TERRACE_HOST='n1'\n"), "{script}");
        assert!(
            script.contains("mv -f -- \"$__t\" '/srv/root/etc/a'"),
            "{script}"
        );
        assert!(script.contains("chown -- 'app' \"$__t\""), "{script}");
        // The value is really one word: sh reads it back whole.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{}printf %s \"$V\"", d.preamble("n1")))
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $(rm -rf /) `x`");
    }

    #[test]
    fn a_file_not_generated_stops_the_apply_naming_it() {
        let mut f = want("0644", None);
        f.content = None;
        f.from = Some(".terrace/generated/x/n1.yaml".into());
        let d = desired_with(vec![f], Vec::new());
        let e = apply_script(&d, "n1").expect_err("pending");
        assert!(e.contains(".terrace/generated/x/n1.yaml"), "{e}");
        assert!(e.contains("/etc/a"), "{e}");
        // Its digest differs from the generated file's.
        let mut g = want("0644", None);
        g.from = Some(".terrace/generated/x/n1.yaml".into());
        let applied = desired_with(vec![g], Vec::new());
        assert_ne!(d.digest("n1"), applied.digest("n1"));
    }
}
