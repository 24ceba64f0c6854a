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
    /// The hosts it runs on (targets of `type: host`); default: the
    /// unit's `target`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
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

/// One file put on a host: `content`, or a `source` file of the unit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Relative to the unit directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Octal, as `0640` (default `0644`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `user` or `user:group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug)]
struct ScriptDriver;

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
        })
    }
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
        ctx: &UnitContext<'_>,
        hosts: &[Host],
    ) -> Result<Session, DriverError> {
        let mut session = Session::pinned(&ctx.unit.dir, hosts)?;
        let encrypted: Vec<&PathBuf> = hosts
            .iter()
            .filter_map(|h| h.identity.as_ref())
            .filter(|p| {
                std::fs::read_to_string(p).is_ok_and(|t| terrace_core::secrets::looks_encrypted(&t))
            })
            .collect();
        if let Some(first) = encrypted.first() {
            let secrets = ctx.secrets.ok_or_else(|| {
                bad(
                    &ctx.unit.dir,
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
            for _ in 0..100 {
                if socket.exists() {
                    break;
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
                            &ctx.unit.dir,
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
            return Ok(if h.sudo {
                Program::find("sudo")
                    .map_err(|e| DriverError::Target(e.to_string()))?
                    .command()
                    .args(["-n", "sh", "-s"])
            } else {
                sh.command().arg("-s")
            });
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
    /// (path, content, mode, owner)
    files: Vec<(String, Vec<u8>, String, Option<String>)>,
    env: Vec<(String, String)>,
    /// What stands for each secret input in the digest: the digest of the
    /// files (or outputs) it came from, never its value.
    sealed_env: BTreeMap<String, String>,
    timeout: Duration,
    sensitive_outputs: Vec<String>,
    redact: Plaintexts,
}

impl Desired {
    /// What a host's state is compared with when there is no `check`.
    fn digest(&self) -> String {
        let env: Vec<(&String, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k, self.sealed_env.get(k).map_or(v.as_str(), String::as_str)))
            .collect();
        let mut text = format!("{}\0{env:?}\0", self.apply);
        for (p, c, m, o) in &self.files {
            text.push_str(&format!("{p}\0{}\0{m}\0{o:?}\0", sha256_hex(c)));
        }
        terrace_fs::digest::digest(text.as_bytes())
    }

    /// The `export`s every script starts with.
    fn preamble(&self) -> String {
        let mut s = String::from("set -u\n");
        for (k, v) in &self.env {
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

/// A valid environment variable name, or an error naming the unit file.
fn check_env_name(dir: &str, k: &str) -> Result<(), DriverError> {
    let valid = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(bad(
            dir,
            format!("input `{k}` is not a valid environment variable name"),
            "use letters, digits and `_`, not starting with a digit",
        ))
    }
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

fn desired(ctx: &UnitContext<'_>) -> Result<(ScriptSettings, Desired), DriverError> {
    let s: ScriptSettings = crate::unit_settings(ctx)?;
    let dir = &ctx.unit.dir;
    for field in ["hosts", "files", "check", "apply", "destroy"] {
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
    let mut env = Vec::new();
    for (k, v) in &ctx.unit.inputs {
        let valid = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad(
                dir,
                format!("input `{k}` is not a valid environment variable name"),
                "use letters, digits and `_`, not starting with a digit",
            ));
        }
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        env.push((k.clone(), text));
    }
    let mut files = Vec::new();
    for (path, f) in &s.files {
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") || path.contains('\n') {
            return Err(bad(
                dir,
                format!("file `{path}` is not an absolute path on the host"),
                "write where it goes, as `/etc/app/app.conf`",
            ));
        }
        let content = match (&f.content, &f.source) {
            (Some(c), None) => c.clone().into_bytes(),
            (None, Some(src)) => {
                let rel = crate::clean_relative(dir, src).ok_or_else(|| {
                    bad(
                        dir,
                        format!("file source `{src}` leads outside the project"),
                        "name a file in the unit directory",
                    )
                })?;
                terrace_fs::read(ctx.root, &ctx.root.join(rel))?
            }
            _ => {
                return Err(bad(
                    dir,
                    format!("file `{path}` needs exactly one of `content` or `source`"),
                    "give its content inline, or the unit's file it is copied from",
                ));
            }
        };
        if content.len() > MAX_FILE {
            return Err(bad(
                dir,
                format!(
                    "file `{path}` is {} bytes; at most {MAX_FILE} are put on a host",
                    content.len()
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
            && !o
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'))
        {
            return Err(bad(
                dir,
                format!("file `{path}`: owner `{o}` is not a user[:group]"),
                "write it as `user` or `user:group`",
            ));
        }
        files.push((path.clone(), content, mode, f.owner.clone()));
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
        files,
        env,
        sealed_env,
        timeout: s
            .timeout
            .as_ref()
            .map_or(Duration::from_secs(600), Timeout::duration),
        sensitive_outputs: s.sensitive_outputs.clone(),
        redact,
    };
    Ok((s, d))
}

fn hosts(ctx: &UnitContext<'_>, s: &ScriptSettings) -> Result<Vec<Host>, DriverError> {
    hosts_named(ctx, &s.hosts)
}

/// The hosts `names` names (the unit's `target` when it names none).
pub(crate) fn hosts_named(
    ctx: &UnitContext<'_>,
    names: &[String],
) -> Result<Vec<Host>, DriverError> {
    let dir = &ctx.unit.dir;
    let names: Vec<String> = if names.is_empty() {
        match &ctx.unit.target {
            Some(t) => vec![t.name.clone()],
            None => {
                return Err(bad(
                    dir,
                    "the script names no host".to_owned(),
                    "set `target:` in unit.yaml, or `script.hosts: [node1, node2]`",
                ));
            }
        }
    } else {
        names.to_vec()
    };
    names
        .iter()
        .map(|n| {
            let t = ctx.targets.get(n).ok_or_else(|| {
                bad(
                    dir,
                    format!("host `{n}` is not a target of terrace.yaml"),
                    "add it under `targets:` with `type: host`",
                )
            })?;
            Host::of(ctx.root, t, dir)
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

fn probe_script(d: &Desired) -> String {
    let mut s = d.preamble();
    for (p, ..) in &d.files {
        let q = quote(p);
        s.push_str(&format!(
            "if [ -f {q} ]; then printf '::file:: %s %s\\n' \"$(sha256sum < {q} | cut -d' ' -f1)\" {q}; else printf '::file:: - %s\\n' {q}; fi\n"
        ));
    }
    if let Some(c) = &d.check {
        s.push_str(&format!(
            "(\n{c}\n) </dev/null\n__terrace_rc=$?\nprintf '\\n::check:: %s\\n' \"$__terrace_rc\"\n"
        ));
    }
    s
}

fn apply_script(d: &Desired) -> String {
    use base64::Engine as _;
    let mut s = d.preamble();
    // Files are made private, then given their owner and mode: nobody
    // reads one half written, and nothing planted in the directory is
    // written through.
    s.push_str("set -e\numask 077\n");
    for (p, content, mode, owner) in &d.files {
        let q = quote(p);
        let encoded = base64::engine::general_purpose::STANDARD.encode(content);
        s.push_str(&format!(
            "mkdir -p -- \"$(dirname -- {q})\"\n__t=$(mktemp -- \"$(dirname -- {q})/.terrace-XXXXXXXX\")\nbase64 -d > \"$__t\" <<'__TERRACE_FILE__'\n"
        ));
        for chunk in encoded.as_bytes().chunks(76) {
            s.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
            s.push('\n');
        }
        s.push_str("__TERRACE_FILE__\n");
        if let Some(o) = owner {
            s.push_str(&format!("chown -- {} \"$__t\"\n", quote(o)));
        }
        s.push_str(&format!(
            "chmod -- {mode} \"$__t\"\nmv -f -- \"$__t\" {q}\n"
        ));
    }
    s.push_str("umask 022\nset +e\n(\n");
    s.push_str(&d.apply);
    s.push_str("\n) </dev/null\n");
    s
}

impl ScriptDriver {
    async fn plan_hosts(&self, ctx: &UnitContext<'_>) -> Result<UnitPlan, DriverError> {
        let (s, d) = desired(ctx)?;
        let hosts = hosts(ctx, &s)?;
        let session = Session::open(ctx, &hosts).await?;
        let digest = d.digest();
        let probe = probe_script(&d);
        let prior_digest = |host: &str| {
            ctx.prior.and_then(|p| {
                p.inventory.iter().find_map(|i| match i {
                    InventoryItem::HostScript { host: h, digest } if h == host => {
                        Some(digest.clone())
                    }
                    _ => None,
                })
            })
        };
        let results: Vec<Result<(HostPlan, Vec<Change>), DriverError>> =
            futures::stream::iter(hosts.iter().cloned())
                .map(|h| {
                    let probe = probe.clone();
                    let session = &session;
                    let d = &d;
                    let digest = digest.clone();
                    let before = prior_digest(&h.name);
                    async move {
                        let ran = run(session, &h, probe, d, None).await?;
                        let mut changes = Vec::new();
                        let mut check_rc = None;
                        let mut diff = String::new();
                        for line in ran.stdout.lines() {
                            if let Some(rest) = line.strip_prefix("::file:: ") {
                                let (sum, path) = rest.split_once(' ').unwrap_or(("-", rest));
                                if let Some((_, content, ..)) =
                                    d.files.iter().find(|(p, ..)| p == path)
                                    && sum != sha256_hex(content)
                                {
                                    changes.push(Change {
                                        address: format!("file {path} on {}", h.name),
                                        object: None,
                                        action: if sum == "-" {
                                            Action::Create
                                        } else {
                                            Action::Update
                                        },
                                        diff: None,
                                    });
                                }
                            } else if let Some(rc) = line.strip_prefix("::check:: ") {
                                check_rc = rc.trim().parse::<i32>().ok();
                            } else if !line.starts_with("::outputs::") {
                                diff.push_str(line);
                                diff.push('\n');
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
                        let script_change = match (&d.check, check_rc) {
                            (Some(_), Some(0)) => false,
                            (Some(_), Some(2)) => true,
                            (Some(_), other) => {
                                return Err(DriverError::Target(format!(
                                    "host `{}`: check exited {} (0: as wanted, 2: changes): {}",
                                    h.name,
                                    other.map_or("without a status".to_owned(), |c| c.to_string()),
                                    ran.stderr.trim()
                                )));
                            }
                            (None, _) => before.as_deref() != Some(digest.as_str()),
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
        let unchanged = plans.iter().filter(|p| !p.run).count();
        Ok(UnitPlan {
            action: UnitPlan::action_for(ctx.prior.is_some(), &changes),
            changes,
            unchanged,
            // Outputs come from the apply's `::outputs::`; unchanged hosts
            // keep the recorded ones.
            // Unchanged: the engine reads the applied outputs back (their
            // sensitive names with them) through `read_outputs`.
            outputs: None,
            render_hash: digest,
            notes: Vec::new(),
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
                outputs_file: outputs_file(ctx.root, ctx.environment, &ctx.unit.name),
            })),
        })
    }
}

/// A host's name, and its outputs (`None`: not run) or why it failed.
type HostResult = (String, Result<Option<Map<String, Value>>, String>);

/// Applies on one host (when its plan says so): its outputs.
async fn apply_host(
    session: &Session,
    hp: &HostPlan,
    script: &str,
    d: &Desired,
    lines: Option<&Lines>,
) -> HostResult {
    if !hp.run {
        return (hp.host.name.clone(), Ok(None));
    }
    let r = match run(session, &hp.host, script.to_owned(), d, lines).await {
        Err(e) => Err(e.to_string()),
        Ok(ran) if ran.exit != Some(0) => Err(format!(
            "host `{}`: apply exited {}: {}",
            hp.host.name,
            ran.exit.map_or("on a signal".to_owned(), |c| c.to_string()),
            ran.stderr.trim()
        )),
        Ok(ran) => match parse_outputs(&ran.stdout) {
            None => Ok(Some(Map::new())),
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(format!("host `{}`: {e}", hp.host.name)),
        },
    };
    (hp.host.name.clone(), r)
}

fn parse_outputs(stdout: &str) -> Option<Result<Map<String, Value>, String>> {
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
            let (s, d) = desired(ctx)?;
            let hosts = hosts(ctx, &s)?;
            let mut documents = Vec::new();
            for h in &hosts {
                documents.push(RenderedDocument {
                    address: format!("script on {}", h.name),
                    path: None,
                    content: d.redact.redact(&d.apply),
                });
                for (p, c, ..) in &d.files {
                    documents.push(RenderedDocument {
                        address: format!("file {p} on {}", h.name),
                        path: None,
                        content: d.redact.redact(&String::from_utf8_lossy(c)),
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
            let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for i in &ctx.prior.inventory {
                match i {
                    InventoryItem::HostScript { host, .. } => {
                        by_host.entry(host.clone()).or_default();
                    }
                    InventoryItem::HostFile { host, path, .. } => {
                        by_host.entry(host.clone()).or_default().push(path.clone())
                    }
                    _ => {}
                }
            }
            let dir = ctx.unit.map_or(".", |u| u.dir.as_str());
            let mut hosts = Vec::new();
            let mut changes = Vec::new();
            for (name, files) in by_host {
                let t = ctx.targets.get(&name).ok_or_else(|| {
                    DriverError::Target(format!(
                        "host `{name}` the unit ran on is no longer a target"
                    ))
                })?;
                let h = Host::of(ctx.root, t, dir)?;
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
                    let mut env = Vec::new();
                    for (k, v) in &u.inputs {
                        check_env_name(&u.dir, k)?;
                        env.push((
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                        ));
                    }
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
                    cmd.map(|cmd| Desired {
                        check: None,
                        apply: String::new(),
                        destroy: Some(cmd),
                        files: Vec::new(),
                        env,
                        sealed_env: BTreeMap::new(),
                        timeout: s
                            .timeout
                            .as_ref()
                            .map_or(Duration::from_secs(600), Timeout::duration),
                        sensitive_outputs: Vec::new(),
                        redact,
                    })
                }
                None => None,
            };
            let session_hosts: Vec<Host> = hosts.iter().map(|(h, _)| h.clone()).collect();
            let session = Session::pinned(dir, &session_hosts)?;
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
                notes: Vec::new(),
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
                    let mut script = String::new();
                    // The command first (its failure stops the destroy:
                    // the state stays), then the files.
                    if let Some(d) = &p.desired
                        && let Some(cmd) = &d.destroy
                    {
                        script.push_str(&d.preamble());
                        script.push_str(&format!("(\n{cmd}\n) </dev/null || exit $?\n"));
                    }
                    for f in files {
                        script.push_str(&format!("rm -f -- {} || exit $?\n", quote(f)));
                    }
                    let d = p.desired.clone().unwrap_or(Desired {
                        check: None,
                        apply: String::new(),
                        destroy: None,
                        files: Vec::new(),
                        env: Vec::new(),
                        sealed_env: BTreeMap::new(),
                        timeout: Duration::from_secs(600),
                        sensitive_outputs: Vec::new(),
                        redact: Plaintexts::default(),
                    });
                    let ran = run(&p.session, h, script, &d, ctx.lines).await?;
                    if ran.exit != Some(0) {
                        return Err(DriverError::Target(format!(
                            "host `{}`: destroy exited {:?}: {}",
                            h.name,
                            ran.exit,
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
            let script = apply_script(d);
            let results: Vec<HostResult> = futures::future::join_all(
                p.hosts
                    .iter()
                    .map(|hp| apply_host(&p.session, hp, &script, d, ctx.lines)),
            )
            .await;
            let errors: Vec<String> = results
                .iter()
                .filter_map(|(_, r)| r.as_ref().err().cloned())
                .collect();
            if !errors.is_empty() {
                return Err(DriverError::Target(errors.join("\n")));
            }
            // Hosts not run keep what they had.
            let prior_outputs = p.prior_outputs.clone();
            let mut per_host: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
            for (name, r) in results {
                if let Ok(Some(m)) = r {
                    per_host.insert(name, m);
                }
            }
            let outputs = if p.hosts.len() == 1 {
                per_host.into_values().next().unwrap_or(prior_outputs)
            } else {
                let mut all = prior_outputs
                    .get("hosts")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                for (k, v) in per_host {
                    all.insert(k, Value::Object(v));
                }
                let mut m = Map::new();
                m.insert("hosts".to_owned(), Value::Object(all));
                m
            };
            let digest = d.digest();
            let mut inventory = Vec::new();
            for hp in &p.hosts {
                inventory.push(InventoryItem::HostScript {
                    host: hp.host.name.clone(),
                    digest: digest.clone(),
                });
                for (path, content, ..) in &d.files {
                    inventory.push(InventoryItem::HostFile {
                        host: hp.host.name.clone(),
                        path: path.clone(),
                        digest: terrace_fs::digest::digest(content),
                    });
                }
            }
            // With several hosts every output is under `hosts`: it is
            // sensitive whole when any output is.
            let sensitive: Vec<String> = if p.hosts.len() > 1 {
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
            Ok(Applied {
                outputs,
                inventory,
                sensitive,
            })
        })
    }
}
