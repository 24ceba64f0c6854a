//! The `ansible` kind: a playbook run on the unit's hosts by
//! `ansible-playbook` (PyPI `ansible-core`, found as `ansible.binary`,
//! else `TERRACE_ANSIBLE`, else the PATH).
//!
//! The inventory is generated from the hosts' targets (address, port,
//! user, key, the pinned host key, `sudo` as `become`); the unit's inputs
//! are the playbook's extra variables (a file of the session's private
//! directory), secret ones read on the controller from ansible's
//! environment by an `env` lookup, so they need no vault and never touch
//! a file or a command line. The plan is
//! `ansible-playbook --check --diff` with the JSON callback: every task
//! that would change a host is a change, with its diff; apply is the real
//! run, its output streamed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use terrace_core::config::TargetKind;
use terrace_core::driver::{
    Applied, ApplyContext, BoxFuture, DestroyContext, Driver, DriverError, Rendered,
    RenderedDocument, UnitContext,
};
use terrace_core::kind::{Timeout, TypedKind};
use terrace_core::plan::{Action, Change, UnitPlan, unified_diff};
use terrace_core::secrets::Plaintexts;
use terrace_core::state::InventoryItem;
use terrace_exec::{Program, Stream};

use crate::script::{Host, HostList, Session, bad, hosts_named, is_env_name, value_text};

/// The `ansible` kind.
pub fn kind() -> TypedKind<AnsibleSettings> {
    TypedKind::new(
        "ansible",
        "An Ansible playbook run on the unit's hosts, its inventory generated and its variables from the unit's inputs; planned with --check --diff.",
        Some(TargetKind::Host),
        Arc::new(AnsibleDriver),
    )
}

/// `ansible:` in unit.yaml.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnsibleSettings {
    /// The playbook, relative to the unit directory.
    pub playbook: String,
    /// The hosts it runs on: target names, or the items of a list
    /// variable (`hosts: ${var.nodes}`) whose `name` is one, their other
    /// fields the host's variables; default: the unit's `target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<HostList>,
    /// Only the `hosts` items whose fields have these values, as
    /// `where: {role: agent}`.
    #[serde(default, rename = "where", skip_serializing_if = "Map::is_empty")]
    pub only: Map<String, Value>,
    /// How long a run may take (default 30m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// The Python the hosts run modules with (default: ansible's
    /// discovery), as `/usr/bin/python3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// The `ansible-playbook` binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

#[derive(Debug)]
struct AnsibleDriver;

/// terrace's stdout callback plugin: one JSON line per task result.
const CALLBACK: &str = include_str!("ansible/terrace_events.py");

struct Run {
    program: Program,
    playbook: PathBuf,
    unit_dir: PathBuf,
    vars: Vec<u8>,
    /// Secret inputs, as environment variables of ansible.
    secret_env: Vec<(String, String)>,
    python: Option<String>,
    timeout: Duration,
    redact: Plaintexts,
    digest: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The variables hold secrets.
        f.debug_struct("Run")
            .field("playbook", &self.playbook)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct AnsiblePlan {
    session: Session,
    hosts: Vec<Host>,
    run: Run,
}

fn program(s: &AnsibleSettings) -> Result<Program, DriverError> {
    let found = match (&s.binary, std::env::var_os("TERRACE_ANSIBLE")) {
        (Some(b), _) => Program::find(b),
        (None, Some(p)) => Program::at(std::path::Path::new(&p)),
        (None, None) => Program::find("ansible-playbook"),
    };
    found.map_err(|e| {
        DriverError::Target(format!(
            "{e}; install ansible-core (pip install ansible-core) or set `ansible.binary`"
        ))
    })
}

fn prepare(ctx: &UnitContext<'_>) -> Result<(AnsibleSettings, Run), DriverError> {
    let s: AnsibleSettings = crate::unit_settings(ctx)?;
    let dir = &ctx.unit.dir;
    for field in ["playbook", "hosts", "where", "binary"] {
        if ctx.unit.sensitive_settings.contains_key(field) {
            return Err(bad(
                dir,
                format!("ansible.{field} holds a secret value"),
                "pass secrets as inputs: they become the playbook's variables",
            ));
        }
    }
    let rel = crate::clean_relative(dir, &s.playbook).ok_or_else(|| {
        bad(
            dir,
            format!("playbook `{}` leads outside the project", s.playbook),
            "name a playbook in the unit directory",
        )
    })?;
    let playbook = ctx.root.join(&rel);
    let text = terrace_fs::read(ctx.root, &playbook)?;
    // Secret inputs reach ansible in its environment, read by a lookup
    // on the controller: the variables file holds none of them.
    let mut vars = Map::new();
    let mut secret_env = Vec::new();
    for (k, v) in &ctx.unit.inputs {
        if ctx.unit.sensitive_inputs.contains_key(k) {
            let name = format!("INPUT_SECRET_{k}");
            vars.insert(
                k.clone(),
                json!(format!("{{{{ lookup('ansible.builtin.env', '{name}') }}}}")),
            );
            secret_env.push((name, value_text(v)));
        } else {
            // Marked unsafe: ansible does not template them (a value from
            // another unit's output with `{{ lookup('pipe', …) }}` in it
            // stays text).
            vars.insert(k.clone(), unsafe_value(v));
        }
    }
    let vars = serde_json::to_vec(&Value::Object(vars)).expect("inputs serialize");
    let redact = crate::script::secret_values(ctx);
    // Secret inputs count by where they came from, never by value.
    let mut shown = ctx.unit.inputs.clone();
    for (k, from) in &ctx.unit.sensitive_inputs {
        shown.insert(
            k.clone(),
            json!(crate::sealed_sources_digest(ctx.root, from)),
        );
    }
    let inputs = serde_json::to_vec(&shown).expect("inputs serialize");
    let digest = terrace_fs::digest::digest(&[text.as_slice(), b"\0", inputs.as_slice()].concat());
    Ok((
        s.clone(),
        Run {
            program: program(&s)?,
            playbook,
            unit_dir: ctx.root.join(dir),
            vars,
            secret_env,
            python: s.python.clone(),
            timeout: s
                .timeout
                .as_ref()
                .map_or(Duration::from_secs(1800), Timeout::duration),
            redact,
            digest,
        },
    ))
}

/// `v` with every string marked as ansible's unsafe text.
fn unsafe_value(v: &Value) -> Value {
    match v {
        Value::String(s) => json!({"__ansible_unsafe": s}),
        Value::Array(items) => Value::Array(items.iter().map(unsafe_value).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), unsafe_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The unit's hosts, their items' fields checked as host variables.
fn ansible_hosts(ctx: &UnitContext<'_>, s: &AnsibleSettings) -> Result<Vec<Host>, DriverError> {
    let hosts = hosts_named(ctx, s.hosts.as_ref(), &s.only)?;
    if hosts.is_empty() {
        return Err(bad(
            &ctx.unit.dir,
            "`where` keeps none of the hosts".to_owned(),
            "check `where` against the `hosts` items, or exclude the unit from this environment",
        ));
    }
    for h in &hosts {
        if let Some(k) = h
            .vars
            .keys()
            .find(|k| k.starts_with("ansible_") || !is_env_name(k))
        {
            return Err(bad(
                &ctx.unit.dir,
                format!("host `{}`: field `{k}` cannot be a host variable", h.name),
                "host variables are names of letters, digits and `_`, and not ansible's own `ansible_*`: set connection settings on the target",
            ));
        }
    }
    Ok(hosts)
}

/// The inventory of `hosts`, as ansible's YAML inventory (JSON is YAML).
fn inventory(session: &Session, hosts: &[Host], python: Option<&str>) -> Value {
    let mut all = Map::new();
    for h in hosts {
        // The item's fields first: what terrace sets below wins (and
        // `hosts` refuses fields named like ansible's own).
        let mut v: Map<String, Value> = h
            .vars
            .iter()
            .map(|(k, x)| (k.clone(), unsafe_value(x)))
            .collect();
        if h.local {
            v.insert("ansible_connection".into(), json!("local"));
        } else {
            // Never paramiko, whatever an ansible.cfg says: the pinned key
            // is checked by OpenSSH.
            v.insert("ansible_connection".into(), json!("ssh"));
            v.insert("ansible_host".into(), json!(h.address));
            if let Some(p) = h.port {
                v.insert("ansible_port".into(), json!(p));
            }
            if let Some(u) = &h.user {
                v.insert("ansible_user".into(), json!(u));
            }
            if session.agent_socket().is_none()
                && let Some(id) = &h.identity
            {
                v.insert("ansible_ssh_private_key_file".into(), json!(id));
            }
            v.insert(
                "ansible_ssh_common_args".into(),
                json!(format!(
                    "-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o VerifyHostKeyDNS=no -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=15",
                    session.known_hosts(h).display()
                )),
            );
        }
        if h.sudo {
            v.insert("ansible_become".into(), json!(true));
        }
        if let Some(p) = python {
            v.insert("ansible_python_interpreter".into(), json!(p));
        }
        all.insert(h.name.clone(), Value::Object(v));
    }
    json!({"all": {"hosts": all}})
}

/// `ansible-playbook` with everything but the mode (`--check --diff`).
fn command(
    session: &Session,
    hosts: &[Host],
    run: &Run,
) -> Result<terrace_exec::Exec, DriverError> {
    let inv = session.dir().join("inventory.json");
    std::fs::write(
        &inv,
        serde_json::to_vec_pretty(&inventory(session, hosts, run.python.as_deref())).expect("json"),
    )?;
    let callbacks = session.dir().join("callbacks");
    std::fs::create_dir_all(&callbacks)?;
    std::fs::write(callbacks.join("terrace_events.py"), CALLBACK)?;
    let vars = session.dir().join("vars.json");
    std::fs::write(&vars, &run.vars)?;
    let limit = hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut c = run
        .program
        .command()
        .arg("-i")
        .arg(&inv)
        .arg("--limit")
        .arg(limit)
        .arg("-e")
        .arg(format!("@{}", vars.display()))
        .arg(&run.playbook)
        .current_dir(&run.unit_dir)
        .envs(run.secret_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .timeout(run.timeout)
        .redact(run.redact.clone())
        .pass_env("HOME")
        .pass_env("USER")
        .pass_env("SSH_AUTH_SOCK")
        .env("ANSIBLE_HOST_KEY_CHECKING", "True")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_LOCAL_TEMP", session.dir().join("tmp"));
    if let Some(sock) = session.agent_socket() {
        c = c.env("SSH_AUTH_SOCK", sock);
    }
    Ok(c)
}

/// A task result's diff, as a unified diff.
fn diff_of(result: &Value) -> Option<String> {
    let diffs: Vec<&Value> = match &result["diff"] {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![&result["diff"]],
        _ => return None,
    };
    let mut out = String::new();
    for d in diffs {
        let text = |k: &str| match &d[k] {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(serde_json::to_string_pretty(other).unwrap_or_default()),
        };
        let (before, after) = (text("before"), text("after"));
        if before.is_none() && after.is_none() {
            if let Some(p) = d["prepared"].as_str() {
                out.push_str(p);
            }
            continue;
        }
        let name = d["after_header"]
            .as_str()
            .or(d["before_header"].as_str())
            .unwrap_or("");
        out.push_str(&unified_diff(
            &before.unwrap_or_default(),
            &after.unwrap_or_default(),
            name,
        ));
    }
    (!out.is_empty()).then_some(out)
}

impl Driver for AnsibleDriver {
    fn render<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<Rendered, DriverError>> {
        Box::pin(async move {
            let (s, run) = prepare(ctx)?;
            let hosts = ansible_hosts(ctx, &s)?;
            let text = terrace_fs::read_to_string(ctx.root, &run.playbook)?;
            Ok(Rendered {
                documents: hosts
                    .iter()
                    .map(|h| RenderedDocument {
                        address: format!("playbook {} on {}", s.playbook, h.name),
                        path: None,
                        content: text.clone(),
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
            let (s, run) = prepare(ctx)?;
            let hosts = ansible_hosts(ctx, &s)?;
            let session = Session::open(&ctx.unit.dir, ctx.secrets, &hosts).await?;
            let finished = command(&session, &hosts, &run)?
                .args(["--check", "--diff"])
                .env("ANSIBLE_STDOUT_CALLBACK", "terrace_events")
                .env("ANSIBLE_CALLBACK_PLUGINS", session.dir().join("callbacks"))
                .run()
                .await
                .map_err(|e| DriverError::Target(format!("ansible-playbook --check: {e}")))?;
            let out = finished.stdout_text();
            let mut changes = Vec::new();
            let mut failed = Vec::new();
            let mut stats = None;
            for line in out.lines().filter(|l| l.starts_with('{')) {
                let Ok(event) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if event["event"] == "stats" {
                    stats = Some(event);
                    continue;
                }
                let name = event["task"].as_str().unwrap_or("(unnamed task)");
                let host = event["host"].as_str().unwrap_or("?");
                if event["failed"] == true || event["unreachable"] == true {
                    failed.push(format!(
                        "{host}: task \"{name}\": {}",
                        run.redact.redact(event["msg"].as_str().unwrap_or("failed"))
                    ));
                } else if event["changed"] == true {
                    changes.push(Change {
                        address: format!("task \"{name}\" on {host}"),
                        object: None,
                        action: Action::Update,
                        diff: diff_of(&event).map(|d| run.redact.redact(&d)),
                    });
                }
            }
            let report = stats.ok_or_else(|| {
                DriverError::Target(format!(
                    "ansible-playbook --check ended without its summary (exit {:?}): {}",
                    finished.status.code(),
                    run.redact.redact(finished.stderr.trim())
                ))
            })?;
            if !failed.is_empty() {
                return Err(DriverError::Target(format!(
                    "ansible-playbook --check failed:\n  {}",
                    failed.join("\n  ")
                )));
            }
            if finished.status.code() != Some(0) {
                return Err(DriverError::Target(format!(
                    "ansible-playbook --check exited {:?}: {}",
                    finished.status.code(),
                    run.redact.redact(finished.stderr.trim())
                )));
            }
            let ok_hosts: usize = report["hosts"].as_object().map_or(0, |m| m.len());
            let changed_hosts: std::collections::BTreeSet<&str> = changes
                .iter()
                .filter_map(|c| c.address.rsplit(" on ").next())
                .collect();
            let unchanged = ok_hosts.saturating_sub(changed_hosts.len());
            Ok(UnitPlan {
                action: UnitPlan::action_for(ctx.prior.is_some(), &changes),
                changes,
                unchanged,
                outputs: Some(Map::new()),
                render_hash: run.digest.clone(),
                notes: Vec::new(),
                payload: Some(Arc::new(AnsiblePlan {
                    session,
                    hosts,
                    run,
                })),
            })
        })
    }

    fn plan_destroy<'a>(
        &'a self,
        _ctx: &'a DestroyContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(async move {
            // A playbook has no inverse: destroying the unit forgets it.
            Ok(UnitPlan {
                action: Action::Delete,
                changes: Vec::new(),
                unchanged: 0,
                outputs: None,
                render_hash: String::new(),
                notes: vec!["a playbook is not undone: what it did on the hosts stays".to_owned()],
                payload: None,
            })
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ApplyContext<'a>,
        plan: &'a UnitPlan,
    ) -> BoxFuture<'a, Result<Applied, DriverError>> {
        Box::pin(async move {
            let Some(p) = plan.payload::<AnsiblePlan>() else {
                return Ok(Applied::default());
            };
            let sink = ctx.lines.cloned();
            let finished = command(&p.session, &p.hosts, &p.run)?
                .arg("--diff")
                .on_line(move |stream, line| {
                    if let Some(s) = &sink
                        && stream == Stream::Stdout
                        && !line.trim().is_empty()
                    {
                        s.send(&format!("ansible │ {line}"));
                    }
                })
                .run()
                .await
                .map_err(|e| DriverError::Target(format!("ansible-playbook: {e}")))?;
            if finished.status.code() != Some(0) {
                let out = p.run.redact.redact(&finished.stdout_text());
                let tail: Vec<&str> = out.lines().rev().take(20).collect();
                return Err(DriverError::Target(format!(
                    "ansible-playbook exited {:?}:\n{}\n{}",
                    finished.status.code(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                    finished.stderr.trim()
                )));
            }
            let inventory = p
                .hosts
                .iter()
                .map(|h| InventoryItem::HostScript {
                    host: h.name.clone(),
                    digest: p.run.digest.clone(),
                    vars: std::collections::BTreeMap::new(),
                })
                .collect();
            Ok(Applied {
                outputs: Map::new(),
                inventory,
                sensitive: Vec::new(),
            })
        })
    }
}
