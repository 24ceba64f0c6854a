//! `terrace serve`: the GitOps daemon. This part: a Git remote's branch
//! polled through gix ([`source`]), each new revision checked out into a
//! private work tree, and the units that revision touches (the files it
//! changed since the last applied revision, mapped to the units that hold
//! or read them, and their dependents; every unit the first time)
//! applied. Webhooks, approval policies, drift intervals, notifications,
//! metrics and the JSON API come next (issue 16).
//!
//! The work directory holds `mirror.git` (the bare mirror), `tree/` (the
//! project at the revision checked out, with its `.terrace/` state kept
//! from run to run) and `serve.json` (the revision checked out and the
//! last one applied whole).

pub mod http;
pub mod notify;
mod replicas;
pub mod runs;
pub mod source;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use terrace_core::config::{ServeConfig, ServePolicy};
use terrace_engine::run::{ApplyOptions, Interrupt, Outcome, Quiet};
use terrace_engine::{Engine, Project};

pub use source::{Source, SourceError};

/// How `terrace serve` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The remote: `file://`, `ssh://` or `git://` (https needs a later
    /// part).
    pub repo: String,
    /// What is followed: `refs/heads/<branch>` or `refs/tags/<tag>`.
    pub reference: String,
    /// The project's directory inside the repository (`""`: its root).
    pub path: String,
    pub workdir: PathBuf,
    /// How often the remote is fetched.
    pub interval: Duration,
    pub environment: Option<String>,
    /// Units applied at once.
    pub jobs: usize,
    /// Reconcile once and return.
    pub once: bool,
    /// Fetch only the branch's last commit.
    pub shallow: bool,
    /// Where `/healthz`, `/readyz`, `/metrics` and the webhooks are
    /// served; `None`: no HTTP.
    pub listen: Option<std::net::SocketAddr>,
    /// The secret webhooks are signed with; `None`: webhooks are refused.
    pub webhook_secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// Tokens of the JSON API; with neither, HTTP is served on loopback
    /// only.
    pub read_token: Option<zeroize::Zeroizing<String>>,
    pub write_token: Option<zeroize::Zeroizing<String>>,
    /// Leader election among replicas; `None`: this one always leads.
    pub leader: Option<Leader>,
}

/// Where replicas elect their leader: a Lease on a cluster.
#[derive(Debug, Clone)]
pub struct Leader {
    pub endpoint: terrace_kube::Endpoint,
    pub namespace: String,
    pub name: String,
    /// This replica (host and process).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub duration: Duration,
}

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Engine(#[from] terrace_engine::EngineError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    State(#[from] terrace_state::StateError),
}

/// What the daemon keeps between runs (`serve.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Status {
    /// The revision the work tree holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_out: Option<String>,
    /// The last revision whose units were all applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
    /// Units of `approve` layers whose plan waits for approval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// The revision that plan is of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_revision: Option<String>,
    /// Units held back while paused; applied once resumed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
}

impl Status {
    fn path(workdir: &Path) -> PathBuf {
        workdir.join("serve.json")
    }

    /// The status in `workdir` (empty when there is none, or it cannot be
    /// read: the next reconcile then applies every unit).
    pub fn load(workdir: &Path) -> Status {
        std::fs::read(Status::path(workdir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, workdir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        terrace_fs::atomic::write(&Status::path(workdir), &bytes, terrace_fs::Mode::Private)
    }
}

/// One reconcile of a new revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    pub revision: String,
    /// The revision applied before, when there was one.
    pub since: Option<String>,
    /// Files that changed since then (every file the first time).
    pub changed: usize,
    /// Each unit applied, with how it ended.
    pub units: Vec<(String, Outcome)>,
    /// Tree entries left out (symlinks, submodules, terrace's own paths).
    pub skipped: Vec<String>,
    /// The revision's `serve:` settings.
    pub config: terrace_core::config::ServeConfig,
    /// Units of `approve` layers whose plan waits for approval.
    pub awaiting: Vec<String>,
    /// Units held back because they are paused.
    pub paused: Vec<String>,
    /// The environment served.
    pub environment: String,
    /// How long each applied unit took, by layer (seconds).
    pub timings: Vec<(String, f64)>,
    /// Each unit's layer, kind and dependencies.
    pub kinds: std::collections::BTreeMap<String, (String, String, Vec<String>)>,
    /// The project's layers, lowest first.
    pub layers: Vec<String>,
    /// The daemon's record of this run (`GET /api/v1/runs/{id}`).
    pub run: Option<u64>,
    /// Units applied only once (`lifecycle: once`), with the unit they
    /// hand their objects over to, if any.
    pub once: std::collections::BTreeMap<String, Option<String>>,
}

fn once_of(engine: &Engine) -> std::collections::BTreeMap<String, Option<String>> {
    engine
        .workspace
        .units
        .iter()
        .filter(|u| u.lifecycle == terrace_core::config::Lifecycle::Once)
        .map(|u| (u.name.clone(), u.hand_over.clone()))
        .collect()
}

fn kinds_of(engine: &Engine) -> std::collections::BTreeMap<String, (String, String, Vec<String>)> {
    let ws = &engine.workspace;
    ws.units
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let deps = ws
                .graph
                .dependencies(i)
                .iter()
                .map(|&d| ws.units[d].name.clone())
                .collect();
            (
                u.name.clone(),
                (u.layer.clone(), u.kind.as_str().to_owned(), deps),
            )
        })
        .collect()
}

impl Reconciled {
    pub fn succeeded(&self) -> bool {
        self.units
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Applied | Outcome::Unchanged | Outcome::Planned))
    }

    /// What to tell of each unit: `applied`, `failed`, `planned`.
    pub fn states(&self) -> Vec<(String, String)> {
        self.units
            .iter()
            .filter_map(|(u, o)| {
                let state = match o {
                    Outcome::Applied => "applied",
                    Outcome::Failed | Outcome::Skipped => "failed",
                    Outcome::Planned if self.awaiting.contains(u) => "approval",
                    Outcome::Planned => "planned",
                    _ => return None,
                };
                Some((u.clone(), state.to_owned()))
            })
            .collect()
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let short = &self.revision[..self.revision.len().min(12)];
        if self.units.is_empty() {
            return format!(
                "revision {short}: {} file(s) changed, no unit touched",
                self.changed
            );
        }
        let mut by: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for (unit, outcome) in &self.units {
            by.entry(format!("{outcome:?}").to_lowercase())
                .or_default()
                .push(unit);
        }
        let parts: Vec<String> = by
            .iter()
            .map(|(o, units)| format!("{o}: {}", units.join(", ")))
            .collect();
        format!(
            "revision {short}: {} file(s) changed; {}",
            self.changed,
            parts.join("; ")
        )
    }
}

impl Options {
    fn source(&self) -> Source {
        Source {
            url: self.repo.clone(),
            reference: self.reference.clone(),
            mirror: self.workdir.join("mirror.git"),
            shallow: self.shallow,
            path: self.path.trim_matches('/').to_owned(),
        }
    }

    fn tree(&self) -> PathBuf {
        self.workdir.join("tree")
    }
}

/// A layer's policy.
fn policy(config: &ServeConfig, layer: &str) -> ServePolicy {
    config
        .layers
        .get(layer)
        .and_then(|l| l.policy)
        .unwrap_or_default()
}

/// `serve.layers` names only layers the project has.
fn check_layers(engine: &Engine, config: &ServeConfig) -> Result<(), ServeError> {
    let layers = &engine.project.file.layers;
    match config.layers.keys().find(|l| !layers.contains(l)) {
        Some(l) => Err(ServeError::Config(format!(
            "terrace.yaml: `serve.layers` names layer `{l}`, which is not one of the project's layers ({})",
            layers.join(", ")
        ))),
        None => Ok(()),
    }
}

/// What a drift check found: units whose live state differs from the
/// revision applied, and how healing the self-healing ones ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub drifted: Vec<String>,
    pub healed: Vec<(String, Outcome)>,
}

/// Plans every unit of `layers` against what is live, and applies again
/// those of self-healing layers that drifted.
pub async fn drift(
    opts: &Options,
    interrupt: &Interrupt,
    layers: &BTreeSet<String>,
) -> Result<Drift, ServeError> {
    drift_recorded(opts, interrupt, layers, None).await
}

/// [`drift`], a heal recorded as a run of `shared`'s history.
async fn drift_recorded(
    opts: &Options,
    interrupt: &Interrupt,
    layers: &BTreeSet<String>,
    shared: Option<&Arc<http::Shared>>,
) -> Result<Drift, ServeError> {
    let applied = Status::load(&opts.workdir).applied;
    let engine = open_engine(opts, applied.as_deref())?;
    let config = engine.project.file.serve.clone();
    let units: BTreeSet<usize> = engine
        .workspace
        .units
        .iter()
        .enumerate()
        .filter(|(_, u)| layers.contains(&u.layer))
        .map(|(i, _)| i)
        .collect();
    let engine = Arc::new(engine);
    let report = engine.plan(&units, &Quiet, opts.jobs).await?;
    let mut found = Drift::default();
    let mut heal = BTreeSet::new();
    for u in &report.units {
        if u.changes.is_empty() || u.outcome == Outcome::Failed {
            continue;
        }
        found.drifted.push(u.unit.clone());
        let Some(i) = engine.workspace.index_of(&u.unit) else {
            continue;
        };
        let layer = &engine.workspace.units[i].layer;
        let heals = config.layers.get(layer).and_then(|l| l.self_heal) == Some(true);
        if heals && policy(&config, layer) == ServePolicy::Auto {
            heal.insert(i);
        }
    }
    if !heal.is_empty() {
        let options = ApplyOptions {
            jobs: opts.jobs,
            command: "serve (drift)".to_owned(),
            interrupt: interrupt.clone(),
            ..ApplyOptions::default()
        };
        let run = shared.map(|shared| {
            let id = shared
                .history
                .start(runs::Trigger::Drift, applied.as_deref());
            shared.history.line(
                id,
                &format!("drift found in {}: healing", found.drifted.join(", ")),
            );
            (shared, id)
        });
        let progress: Arc<dyn terrace_engine::run::Progress> = match run {
            Some((shared, id)) => Arc::new(runs::RunLog {
                shared: Arc::clone(shared),
                id,
            }),
            None => Arc::new(Quiet),
        };
        let report = engine.apply(&heal, &options, progress).await;
        if let Some((shared, id)) = run {
            let (outcome, units) = match &report {
                Ok(r) => (
                    if r.units
                        .iter()
                        .all(|u| u.outcome != Outcome::Failed && u.outcome != Outcome::Skipped)
                    {
                        "applied"
                    } else {
                        "failed"
                    },
                    r.units
                        .iter()
                        .map(|u| runs::RunUnit {
                            unit: u.unit.clone(),
                            layer: u.layer.clone(),
                            outcome: format!("{:?}", u.outcome).to_lowercase(),
                            duration_ms: u.duration_ms,
                            files: Vec::new(),
                        })
                        .collect(),
                ),
                Err(e) => {
                    shared.history.line(id, &format!("error: {e}"));
                    ("error", Vec::new())
                }
            };
            shared
                .history
                .finish(id, outcome, applied.clone(), units, Vec::new());
        }
        found.healed = report?
            .units
            .iter()
            .map(|u| (u.unit.clone(), u.outcome))
            .collect();
    }
    Ok(found)
}

/// Fetches the remote and, when its branch moved past the last applied
/// revision, checks it out and applies the units it touches. `None`:
/// nothing new.
pub async fn reconcile(
    opts: &Options,
    interrupt: &Interrupt,
) -> Result<Option<Reconciled>, ServeError> {
    let shared = Arc::new(http::Shared::default());
    reconcile_unless(opts, interrupt, None, &shared, runs::Trigger::Manual).await
}

/// Where the plan waiting for approval is kept.
fn approval_file(workdir: &Path) -> PathBuf {
    workdir.join("approval.plan")
}

/// The project in the work tree, as an engine (the revision it records).
/// Records sealed with age to `state.encryption`'s recipients and opened
/// with the keys SOPS would use.
#[derive(Debug)]
struct AgeCipher {
    recipients: Vec<terrace_secrets::Recipient>,
    keyring: terrace_secrets::Keyring,
    plaintext: bool,
}

impl terrace_state::RecordCipher for AgeCipher {
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, terrace_state::StateError> {
        Ok(terrace_secrets::keys::seal_age(&self.recipients, plain))
    }

    fn open(&self, stored: &[u8], at: &str) -> Result<Vec<u8>, terrace_state::StateError> {
        if stored.starts_with(b"age-encryption.org/") {
            return self
                .keyring
                .open_age(stored, std::path::Path::new(at))
                .map(|p| p.to_vec())
                .map_err(|e| terrace_state::StateError::Remote(e.to_string()));
        }
        if self.plaintext {
            return Ok(stored.to_vec());
        }
        Err(terrace_state::StateError::Remote(format!(
            "{at} is not encrypted, and state.encryption has no `fallback: plaintext`: refused (someone who can write to the bucket could have planted it)"
        )))
    }
}

/// The cipher terrace.yaml's `state.encryption` describes, if any: what
/// remote backends seal records and runs with.
pub fn project_cipher(
    project: &Project,
) -> Result<Option<Arc<dyn terrace_state::RecordCipher>>, terrace_state::StateError> {
    project
        .file
        .state
        .encryption
        .as_ref()
        .map(state_cipher)
        .transpose()
}

fn state_cipher(
    e: &terrace_core::config::StateEncryption,
) -> Result<Arc<dyn terrace_state::RecordCipher>, terrace_state::StateError> {
    let bad = |m: String| terrace_state::StateError::Remote(format!("state.encryption: {m}"));
    if e.age.is_empty() {
        return Err(bad("`age` lists no recipient".to_owned()));
    }
    let recipients = e
        .age
        .iter()
        .map(|r| terrace_secrets::Recipient::parse(r).map_err(|x| bad(x.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let keyring = terrace_secrets::Keyring::load(&terrace_secrets::KeySources::from_env())
        .map_err(|x| bad(x.to_string()))?;
    Ok(Arc::new(AgeCipher {
        recipients,
        keyring,
        plaintext: e.fallback == Some(terrace_core::config::EncryptionFallback::Plaintext),
    }))
}

/// Where terrace.yaml's `state:` puts an S3 state (its prefix defaulting
/// to the project's name); `None` for another backend.
pub fn s3_settings(project: &Project) -> Option<terrace_state_s3::S3Settings> {
    let c = &project.file.state;
    (c.backend == terrace_core::config::StateBackendKind::S3).then(|| {
        terrace_state_s3::S3Settings {
            bucket: c.bucket.clone().unwrap_or_default(),
            prefix: c
                .prefix
                .clone()
                .unwrap_or_else(|| project.file.name.clone())
                .trim_matches('/')
                .to_owned(),
            endpoint: c.endpoint.clone(),
            region: c.region.clone(),
            cache_root: Some(project.root.clone()),
        }
    })
}

/// Where terrace.yaml's `state:` puts an etcd state (its prefix
/// defaulting to `terrace/<project name>`), TLS files read; `None` for
/// another backend.
pub fn etcd_settings(
    project: &Project,
) -> Result<Option<terrace_state_etcd::EtcdSettings>, terrace_state::StateError> {
    let c = &project.file.state;
    if c.backend != terrace_core::config::StateBackendKind::Etcd {
        return Ok(None);
    }
    let tls = c
        .tls
        .as_ref()
        .map(|t| read_tls(&project.root, t))
        .transpose()?;
    Ok(Some(terrace_state_etcd::EtcdSettings {
        endpoints: c.endpoints.clone(),
        prefix: c
            .prefix
            .clone()
            .unwrap_or_else(|| format!("terrace/{}", project.file.name))
            .trim_matches('/')
            .to_owned(),
        tls,
        lock_ttl: c
            .lock_ttl
            .as_ref()
            .map_or(terrace_state_etcd::EtcdSettings::DEFAULT_LOCK_TTL, |t| {
                t.duration()
            }),
    }))
}

/// The PEM files `state.tls` names. Paths are relative to the project
/// root; an absolute path (a key kept outside the repository) is read as
/// given.
pub fn read_tls(
    root: &std::path::Path,
    t: &terrace_core::config::StateTls,
) -> Result<terrace_state_etcd::EtcdTls, terrace_state::StateError> {
    let read = |what: &str, p: &str| {
        let path = root.join(p);
        let bytes = if std::path::Path::new(p).is_absolute() {
            std::fs::read(&path)
        } else {
            terrace_fs::read(root, &path)
        };
        bytes.map_err(|e| terrace_state::StateError::Remote(format!("state.tls.{what} `{p}`: {e}")))
    };
    let identity = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some((read("cert", c)?, read("key", k)?)),
        (None, None) => None,
        _ => {
            return Err(terrace_state::StateError::Remote(
                "state.tls: `cert` and `key` go together; give both or neither".to_owned(),
            ));
        }
    };
    Ok(terrace_state_etcd::EtcdTls {
        ca: Some(read("ca", &t.ca)?),
        identity,
    })
}

/// The state backend terrace.yaml's `state:` names: local files, or an
/// S3-compatible bucket or an etcd cluster shared by every process that
/// applies the project (its records and runs encrypted with age when
/// `state.encryption` says so).
pub fn state_backend(
    project: &Project,
) -> Result<Arc<dyn terrace_state::StateBackend>, terrace_state::StateError> {
    use terrace_core::config::StateBackendKind;
    let c = &project.file.state;
    if c.encryption.is_some() && c.backend == StateBackendKind::Local {
        return Err(terrace_state::StateError::Remote(
            "state.encryption is for remote backends (s3, etcd): local records sit beside the keys that would open them".to_owned(),
        ));
    }
    Ok(match c.backend {
        StateBackendKind::Local => Arc::new(terrace_state::LocalBackend::new(project.state_dir())),
        StateBackendKind::S3 => {
            let settings = s3_settings(project).expect("an s3 state");
            let mut b = terrace_state_s3::S3Backend::new(settings)?;
            if let Some(e) = &c.encryption {
                b = b.with_cipher(state_cipher(e)?);
            }
            Arc::new(b)
        }
        StateBackendKind::Etcd => {
            let settings = etcd_settings(project)?.expect("an etcd state");
            let mut b = terrace_state_etcd::EtcdBackend::new(settings)?;
            if let Some(e) = &c.encryption {
                b = b.with_cipher(state_cipher(e)?);
            }
            Arc::new(b)
        }
    })
}

fn open_engine(opts: &Options, revision: Option<&str>) -> Result<Engine, ServeError> {
    let project = Project::discover(&opts.tree(), Arc::new(terrace_drivers::registry()))?;
    let state = state_backend(&project)?;
    let secrets = Arc::new(terrace_secrets::SecretStore::new(&project.root));
    let mut engine = Engine::new(project, opts.environment.as_deref(), state, secrets)?;
    if let Some(rev) = revision {
        engine = engine.with_revision(rev);
    }
    Ok(engine)
}

/// Applies exactly the plan that waits for approval, when it is of
/// `revision` and still holds (every unit plans as it did).
pub async fn approve(
    opts: &Options,
    interrupt: &Interrupt,
    revision: &str,
) -> Result<Reconciled, ServeError> {
    approve_recorded(
        opts,
        interrupt,
        revision,
        &Arc::new(http::Shared::default()),
    )
    .await
}

/// [`approve`], recorded as a run of `shared`'s history.
async fn approve_recorded(
    opts: &Options,
    interrupt: &Interrupt,
    revision: &str,
    shared: &Arc<http::Shared>,
) -> Result<Reconciled, ServeError> {
    let mut status = Status::load(&opts.workdir);
    if status.pending.is_empty() || status.pending_revision.as_deref() != Some(revision) {
        return Err(ServeError::Config(format!(
            "no plan of revision {revision} waits for approval{}",
            status
                .pending_revision
                .as_deref()
                .map(|r| format!(" (the one waiting is of {r})"))
                .unwrap_or_default()
        )));
    }
    let text = std::fs::read_to_string(approval_file(&opts.workdir))?;
    let saved = terrace_engine::saved::SavedPlan::parse(&text, &approval_file(&opts.workdir))
        .map_err(|d| ServeError::Config(d.message))?;
    let engine = Arc::new(open_engine(opts, Some(revision))?);
    let selection = engine.select_saved(&saved);
    let mut moved = selection.moved;
    if moved.is_empty() {
        let fresh = engine.plan(&selection.applied, &Quiet, opts.jobs).await?;
        moved = saved.compare(&fresh);
    }
    if !moved.is_empty() {
        let list: Vec<String> = moved.iter().map(ToString::to_string).collect();
        return Err(ServeError::Config(format!(
            "the plan waiting for approval no longer holds, nothing was applied: {}",
            list.join("; ")
        )));
    }
    let options = ApplyOptions {
        jobs: opts.jobs,
        command: "serve (approved)".to_owned(),
        interrupt: interrupt.clone(),
        saved: Some(Arc::new(saved)),
        ..ApplyOptions::default()
    };
    let id = shared
        .history
        .start(runs::Trigger::Approval, Some(revision));
    shared.history.line(
        id,
        &format!("applying the approved plan of revision {}", short(revision)),
    );
    let log = Arc::new(runs::RunLog {
        shared: Arc::clone(shared),
        id,
    });
    let report = match engine.apply(&selection.applied, &options, log).await {
        Ok(r) => r,
        Err(e) => {
            shared.history.line(id, &format!("error: {e}"));
            shared.history.finish(
                id,
                "error",
                Some(revision.to_owned()),
                Vec::new(),
                Vec::new(),
            );
            return Err(e.into());
        }
    };
    let reconciled = Reconciled {
        revision: revision.to_owned(),
        since: None,
        changed: 0,
        units: report
            .units
            .iter()
            .map(|u| (u.unit.clone(), u.outcome))
            .collect(),
        skipped: Vec::new(),
        config: engine.project.file.serve.clone(),
        awaiting: Vec::new(),
        paused: Vec::new(),
        environment: engine.workspace.environment.clone(),
        timings: Vec::new(),
        kinds: kinds_of(&engine),
        layers: engine.project.file.layers.clone(),
        run: Some(id),
        once: once_of(&engine),
    };
    finish_run(shared, &reconciled, &Ok(()), Vec::new(), &|_| Vec::new());
    if reconciled.succeeded() {
        status.pending.clear();
        status.pending_revision = None;
        status.save(&opts.workdir)?;
        let _ = std::fs::remove_file(approval_file(&opts.workdir));
    }
    Ok(reconciled)
}

/// [`reconcile`], except that a fetched revision equal to `hold` (one
/// that failed and waits for its retry) is left alone: `None`.
async fn reconcile_unless(
    opts: &Options,
    interrupt: &Interrupt,
    hold: Option<&str>,
    shared: &Arc<http::Shared>,
    trigger: runs::Trigger,
) -> Result<Option<Reconciled>, ServeError> {
    terrace_fs::private_dir(&opts.workdir)?;
    let source = opts.source();
    let fetched = {
        let source = source.clone();
        let stop = interrupt.clone();
        tokio::task::spawn_blocking(move || {
            let flag = std::sync::atomic::AtomicBool::new(stop.is_set());
            source.fetch(&flag)
        })
        .await
        .map_err(|e| SourceError::Git(format!("the fetch stopped: {e}")))??
    };
    // A replica restarted over the work tree it had: what the replicas
    // share is taken over before deciding that nothing is new.
    if !shared.replica.took_over()
        && opts.tree().is_dir()
        && let Ok(engine) = open_engine(opts, None)
    {
        take_over(opts, shared, engine.state()).await?;
    }
    let mut paused = shared.paused_units();
    let mut status = Status::load(&opts.workdir);
    let resumed = status.held.iter().any(|u| !paused.holds(u, None));
    if hold == Some(fetched.as_str())
        || (!resumed
            && status.applied.as_deref() == Some(fetched.as_str())
            && status.checked_out.as_deref() == Some(fetched.as_str()))
    {
        return Ok(None);
    }
    let tree = opts.tree();
    let (files, skipped, before) = {
        let source = source.clone();
        let tree = tree.clone();
        let status = status.clone();
        let revision = fetched.clone();
        tokio::task::spawn_blocking(move || -> Result<_, SourceError> {
            let current = match &status.checked_out {
                Some(rev) => source.files(rev)?.0,
                None => Default::default(),
            };
            let (files, skipped) = source.checkout(&revision, &tree, &current)?;
            let before = match &status.applied {
                Some(rev) => Some(source.files(rev)?.0),
                None => None,
            };
            Ok((files, skipped, before))
        })
        .await
        .map_err(|e| SourceError::Git(format!("the checkout stopped: {e}")))??
    };
    status.checked_out = Some(fetched.clone());
    status.save(&opts.workdir)?;

    let engine = open_engine(opts, Some(&fetched))?;
    // With remote state, a replica's first pass takes over what the
    // replicas share (the applied revision, the approval waiting, the
    // history) before deciding what to do.
    let mut before = before;
    if take_over(opts, shared, engine.state()).await? {
        status = Status::load(&opts.workdir);
        paused = shared.paused_units();
        let resumed = status.held.iter().any(|u| !paused.holds(u, None));
        if hold == Some(fetched.as_str())
            || (!resumed && status.applied.as_deref() == Some(fetched.as_str()))
        {
            return Ok(None);
        }
        before = match status.applied.clone() {
            Some(rev) => {
                let source = source.clone();
                Some(
                    tokio::task::spawn_blocking(move || source.files(&rev).map(|f| f.0))
                        .await
                        .map_err(|e| SourceError::Git(format!("the checkout stopped: {e}")))??,
                )
            }
            None => None,
        };
    }
    let (mut selected, changed, changed_files, touching): (BTreeSet<usize>, usize, Vec<String>, _) =
        match &before {
            Some(before) => {
                let changed = source::changed(before, &files);
                let touching = terrace_engine::affected::files_touching(&engine, &changed);
                (
                    terrace_engine::affected::units_touched_by(&engine, &changed),
                    changed.len(),
                    changed,
                    touching.units,
                )
            }
            None => (
                (0..engine.workspace.graph.len()).collect(),
                files.len(),
                Vec::new(),
                Default::default(),
            ),
        };
    let config = engine.project.file.serve.clone();
    check_layers(&engine, &config)?;
    // What waited for approval, or was held while paused, is planned
    // again with this revision.
    for name in status.pending.iter().chain(&status.held) {
        if let Some(i) = engine.workspace.index_of(name) {
            selected.insert(i);
        }
    }
    let is_paused = |i: usize| {
        let u = &engine.workspace.units[i];
        paused.holds(&u.name, Some(&u.layer))
    };
    let held: Vec<String> = selected
        .iter()
        .filter(|&&i| is_paused(i))
        .map(|&i| engine.workspace.units[i].name.clone())
        .collect();
    selected.retain(|&i| !is_paused(i));
    let mut reconciled = Reconciled {
        revision: fetched.clone(),
        since: status.applied.clone(),
        changed,
        units: Vec::new(),
        skipped,
        config: config.clone(),
        awaiting: Vec::new(),
        paused: held.clone(),
        environment: engine.workspace.environment.clone(),
        timings: Vec::new(),
        kinds: kinds_of(&engine),
        layers: engine.project.file.layers.clone(),
        run: None,
        once: once_of(&engine),
    };
    let id = shared.history.start(trigger, Some(&fetched));
    reconciled.run = Some(id);
    shared.history.line(
        id,
        &format!(
            "revision {}: {changed} file(s) changed since {}; {} unit(s) to reconcile{}",
            short(&fetched),
            status.applied.as_deref().map_or("nothing applied", short),
            selected.len(),
            if held.is_empty() {
                String::new()
            } else {
                format!(", {} held (paused)", held.len())
            }
        ),
    );
    let engine = Arc::new(engine);
    *shared
        .engine
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&engine));
    let log = Arc::new(runs::RunLog {
        shared: Arc::clone(shared),
        id,
    });
    let ran = run_selected(
        opts,
        interrupt,
        &engine,
        selected,
        &config,
        &log,
        &mut reconciled,
        &mut status,
        &fetched,
    )
    .await;
    let touched_files = |unit: &str| {
        engine
            .workspace
            .index_of(unit)
            .and_then(|i| touching.get(&i).cloned())
            .unwrap_or_default()
    };
    finish_run(shared, &reconciled, &ran, changed_files, &touched_files);
    ran?;
    status.held = held;
    if reconciled.succeeded() {
        status.applied = Some(fetched);
    }
    status.save(&opts.workdir)?;
    Ok(Some(reconciled))
}

/// With remote state, on a replica's first pass: what the replicas share
/// copied in (`true`: the status, approval and history changed), the
/// history and pauses read again.
async fn take_over(
    opts: &Options,
    shared: &http::Shared,
    state: &Arc<dyn terrace_state::StateBackend>,
) -> Result<bool, ServeError> {
    let pulled = shared.replica.take_over(&opts.workdir, state).await?;
    if pulled {
        shared.history.reload();
        shared.load_paused();
    }
    Ok(pulled)
}

/// The first 12 characters of a revision.
fn short(revision: &str) -> &str {
    &revision[..revision.len().min(12)]
}

/// Ends the daemon's record of a run.
fn finish_run(
    shared: &http::Shared,
    r: &Reconciled,
    ran: &Result<(), ServeError>,
    changed: Vec<String>,
    files: &dyn Fn(&str) -> Vec<String>,
) {
    let Some(id) = r.run else { return };
    let reports = shared
        .reports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let units = r
        .units
        .iter()
        .map(|(unit, outcome)| runs::RunUnit {
            unit: unit.clone(),
            layer: r.kinds.get(unit).map(|k| k.0.clone()).unwrap_or_default(),
            outcome: if r.awaiting.contains(unit) {
                "approval".to_owned()
            } else {
                format!("{outcome:?}").to_lowercase()
            },
            duration_ms: reports.get(unit).map_or(0, |rep| rep.duration_ms),
            files: files(unit),
        })
        .chain(r.paused.iter().map(|unit| runs::RunUnit {
            unit: unit.clone(),
            layer: r.kinds.get(unit).map(|k| k.0.clone()).unwrap_or_default(),
            outcome: "paused".to_owned(),
            duration_ms: 0,
            files: files(unit),
        }))
        .collect();
    let outcome = match ran {
        Err(e) => {
            shared.history.line(id, &format!("error: {e}"));
            "error"
        }
        Ok(()) if r.succeeded() => "applied",
        Ok(()) => "failed",
    };
    shared.history.line(id, &r.summary());
    shared
        .history
        .finish(id, outcome, Some(r.revision.clone()), units, changed);
}

/// Applies, plans, or plans and keeps for approval each selected unit,
/// as its layer's policy says.
#[allow(clippy::too_many_arguments)]
async fn run_selected(
    opts: &Options,
    interrupt: &Interrupt,
    engine: &Arc<Engine>,
    selected: BTreeSet<usize>,
    config: &ServeConfig,
    log: &Arc<runs::RunLog>,
    reconciled: &mut Reconciled,
    status: &mut Status,
    fetched: &str,
) -> Result<(), ServeError> {
    // Layers whose policy is `plan` are only planned; `approve` layers
    // are planned and their plan kept until it is approved.
    let layer_policy = |i: &usize| policy(config, &engine.workspace.units[*i].layer);
    let (planned, rest): (BTreeSet<usize>, BTreeSet<usize>) = selected
        .into_iter()
        .partition(|i| layer_policy(i) == ServePolicy::Plan);
    let (approving, applied): (BTreeSet<usize>, BTreeSet<usize>) = rest
        .into_iter()
        .partition(|i| layer_policy(i) == ServePolicy::Approve);
    if !applied.is_empty() {
        let options = ApplyOptions {
            jobs: opts.jobs,
            command: "serve".to_owned(),
            interrupt: interrupt.clone(),
            ..ApplyOptions::default()
        };
        let report = engine.apply(&applied, &options, log.clone()).await?;
        reconciled
            .units
            .extend(report.units.iter().map(|u| (u.unit.clone(), u.outcome)));
        reconciled.timings = report
            .units
            .iter()
            .map(|u| (u.layer.clone(), u.duration_ms as f64 / 1000.0))
            .collect();
    }
    if !planned.is_empty() {
        let report = engine.plan(&planned, log.as_ref(), opts.jobs).await?;
        reconciled.units.extend(report.units.iter().map(|u| {
            let outcome = if u.outcome == Outcome::Failed {
                Outcome::Failed
            } else if u.changes.is_empty() {
                Outcome::Unchanged
            } else {
                Outcome::Planned
            };
            (u.unit.clone(), outcome)
        }));
    }
    if !approving.is_empty() {
        let report = engine.plan(&approving, log.as_ref(), opts.jobs).await?;
        let waiting: Vec<String> = report
            .units
            .iter()
            .filter(|u| !u.changes.is_empty() && u.outcome != Outcome::Failed)
            .map(|u| u.unit.clone())
            .collect();
        reconciled.units.extend(report.units.iter().map(|u| {
            let outcome = match u.outcome {
                Outcome::Failed => Outcome::Failed,
                _ if u.changes.is_empty() => Outcome::Unchanged,
                _ => Outcome::Planned,
            };
            (u.unit.clone(), outcome)
        }));
        status.pending.clear();
        status.pending_revision = None;
        if !waiting.is_empty() {
            let saved = terrace_engine::saved::SavedPlan::from_report(
                &engine.project.file.name,
                true,
                Some(fetched.to_owned()),
                &report,
            )
            .map_err(|e| ServeError::Config(e.to_string()))?;
            terrace_fs::atomic::write(
                &approval_file(&opts.workdir),
                saved.to_json().as_bytes(),
                terrace_fs::Mode::Private,
            )?;
            status.pending = waiting.clone();
            status.pending_revision = Some(fetched.to_owned());
        }
        reconciled.awaiting = waiting;
    }
    Ok(())
}

/// Serves until interrupted (or once, with `opts.once`): reconciles every
/// `opts.interval` and whenever a signed webhook arrives, telling `say`
/// what happened. A failed reconcile is reported and tried again at the
/// next interval (its revision stays unapplied); with `once` it is the
/// error returned.
pub async fn serve(
    opts: &Options,
    interrupt: &Interrupt,
    say: &(dyn Fn(&str) + Sync),
) -> Result<bool, ServeError> {
    if let Some(addr) = opts.listen
        && !opts.once
        && !addr.ip().is_loopback()
        && opts.read_token.is_none()
        && opts.write_token.is_none()
    {
        return Err(ServeError::Config(format!(
            "{addr} is reachable from other machines, and the API has no token: give --read-token-file and --write-token-file, or listen on 127.0.0.1"
        )));
    }
    let shared = Arc::new(http::Shared {
        read_token: opts.read_token.clone(),
        write_token: opts.write_token.clone(),
        workdir: opts.workdir.clone(),
        history: {
            let dir = runs::dir(&opts.workdir);
            terrace_fs::private_dir(&dir)?;
            runs::History::new(Some(dir))
        },
        ..http::Shared::new(opts.webhook_secret.clone())
    });
    shared.load_paused();
    shared
        .metrics
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .applied_revision = Status::load(&opts.workdir).applied;
    let server = match opts.listen {
        Some(addr) if !opts.once => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            say(&format!(
                "listening on http://{}: /healthz, /readyz, /metrics, /hooks/{{github,gitlab,gitea,forgejo,generic}}",
                listener.local_addr()?
            ));
            let app = http::router(Arc::clone(&shared));
            let stop = interrupt.clone();
            Some(tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.wait().await })
                    .await;
            }))
        }
        _ => None,
    };
    // Replicas: only the leader reconciles; a standby waits for the
    // Lease. A leader that loses it stops (no unit starts after), so two
    // replicas never apply at once.
    let mut leading = None;
    if let Some(l) = &opts.leader {
        match lead(l, interrupt, say).await? {
            Some(l) => leading = Some(l),
            None => {
                if let Some(server) = server {
                    server.abort();
                }
                return Ok(true);
            }
        }
    }
    let result = serve_loop(opts, interrupt, say, &shared).await;
    if let Some(server) = server {
        server.abort();
    }
    if let Some((lease, renewer, lost)) = leading {
        renewer.abort();
        if lost.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ServeError::Config(format!(
                "lost the lease {}/{}: another replica leads now; stopped so that two never apply",
                lease.namespace, lease.name
            )));
        }
        if let Err(e) = lease.release().await {
            say(&format!("could not give the lease up: {e}"));
        }
    }
    result
}

type Leading = (
    terrace_kube::lease::Lease,
    tokio::task::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicBool>,
);

/// Waits until this replica holds the Lease (`None`: interrupted first),
/// then keeps renewing it in the background.
async fn lead(
    l: &Leader,
    interrupt: &Interrupt,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Option<Leading>, ServeError> {
    use terrace_kube::lease::{Held, Lease};
    let cluster = terrace_kube::Cluster::connect("leader election", &l.endpoint)
        .await
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let lease = Lease {
        cluster: Arc::new(cluster),
        namespace: l.namespace.clone(),
        name: l.name.clone(),
        identity: l.identity.clone(),
        duration: l.duration,
    };
    let retry = (l.duration / 3).max(Duration::from_millis(500));
    let mut told: Option<String> = None;
    loop {
        match lease.try_acquire().await {
            Ok(Held::Mine) => break,
            Ok(Held::Theirs(holder)) => {
                if told.as_deref() != Some(holder.as_str()) {
                    say(&format!(
                        "standby: {holder} leads (lease {}/{})",
                        l.namespace, l.name
                    ));
                    told = Some(holder);
                }
            }
            Err(e) => say(&format!("leader election: {e}")),
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = interrupt.wait() => return Ok(None),
        }
    }
    say(&format!(
        "leading as {} (lease {}/{})",
        l.identity, l.namespace, l.name
    ));
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewer = {
        let lease = lease.clone();
        let lost = Arc::clone(&lost);
        let interrupt = interrupt.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(retry).await;
                if !matches!(lease.try_acquire().await, Ok(Held::Mine)) {
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    interrupt.trigger();
                    return;
                }
            }
        })
    };
    Ok(Some((lease, renewer, lost)))
}

/// How often drift is looked for when a layer does not say.
const DRIFT_DEFAULT: Duration = Duration::from_secs(600);

async fn serve_loop(
    opts: &Options,
    interrupt: &Interrupt,
    say: &(dyn Fn(&str) + Sync),
    shared: &Arc<http::Shared>,
) -> Result<bool, ServeError> {
    let mut notifier: Option<(Vec<terrace_core::config::NotifyConfig>, notify::Notifier)> = None;
    let mut config = ServeConfig::default();
    let mut drift_checked: std::collections::BTreeMap<String, std::time::Instant> =
        Default::default();
    let mut backups_seen: BackupsSeen = Default::default();
    // A revision that failed, how often, and when it is tried again:
    // the interval doubled per failure, at most an hour (a new revision
    // or a webhook is taken at once).
    let mut backoff: Option<(String, u32, std::time::Instant)> = None;
    let mut woken = false;
    loop {
        let started = std::time::Instant::now();
        let hold = backoff
            .as_ref()
            .filter(|(_, _, at)| !woken && started < *at)
            .map(|(rev, _, _)| rev.clone());
        let trigger = if woken {
            shared
                .wake
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .unwrap_or(runs::Trigger::Manual)
        } else {
            runs::Trigger::Poll
        };
        woken = false;
        // An approval the API received: its plan is applied first.
        let approved = shared
            .approved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(rev) = approved {
            match approve_recorded(opts, interrupt, &rev, shared).await {
                Ok(r) => {
                    say(&format!("approved {}", r.summary()));
                    record_units(shared, &r);
                    if let Some((_, n)) = notifier.as_mut() {
                        let events = n.fresh(&r.revision, &r.states());
                        for e in n.send(&r.revision, &events).await {
                            say(&format!("notification not sent: {e}"));
                        }
                    }
                }
                Err(e) => say(&format!("approval of {rev} not applied: {e}")),
            }
        }
        let result = reconcile_unless(opts, interrupt, hold.as_deref(), shared, trigger).await;
        if let Ok(Some(r)) = &result {
            record_units(shared, r);
        }
        match &result {
            Ok(Some(r)) if !r.succeeded() => {
                let attempts = match &backoff {
                    Some((rev, n, _)) if *rev == r.revision => n + 1,
                    _ => 1,
                };
                let wait = opts
                    .interval
                    .saturating_mul(1 << attempts.min(12))
                    .min(Duration::from_secs(3600));
                say(&format!(
                    "revision {} failed {attempts} time(s): tried again in {wait:?}, or at once when the remote moves or a webhook comes",
                    &r.revision[..r.revision.len().min(12)]
                ));
                backoff = Some((r.revision.clone(), attempts, started + wait));
            }
            Ok(Some(_)) => backoff = None,
            _ => {}
        }
        if let Ok(Some(r)) = &result {
            config = r.config.clone();
        }
        // The revision's notification targets (kept while they stay the
        // same, with what was already sent).
        let wanted = config.notify.clone();
        if notifier.as_ref().is_none_or(|(had, _)| *had != wanted) {
            match notify::Notifier::new(&wanted) {
                Ok(n) => notifier = Some((wanted, n)),
                Err(e) => say(&format!("notifications are off: {e}")),
            }
        }
        {
            let mut m = shared
                .metrics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            m.ready = true;
            let fetched = !matches!(result, Err(ServeError::Source(_)));
            *m.fetches
                .entry(if fetched { "ok" } else { "error" }.to_owned())
                .or_default() += 1;
            let outcome = match &result {
                Ok(None) => "unchanged",
                Ok(Some(r)) if r.succeeded() => "applied",
                Ok(Some(_)) => "failed",
                Err(_) => "error",
            };
            *m.reconciles.entry(outcome.to_owned()).or_default() += 1;
            if let Ok(Some(r)) = &result {
                m.durations.push(started.elapsed().as_secs_f64());
                for (_, o) in &r.units {
                    *m.units.entry(format!("{o:?}").to_lowercase()).or_default() += 1;
                }
                if r.succeeded() {
                    m.applied_revision = Some(r.revision.clone());
                }
                for (layer, seconds) in &r.timings {
                    m.layer_durations
                        .entry(layer.clone())
                        .or_default()
                        .push(*seconds);
                }
            }
        }
        let healthy = match result {
            Ok(Some(r)) => {
                for s in &r.skipped {
                    say(&format!("left out of the work tree: {s}"));
                }
                say(&r.summary());
                if let Some((_, n)) = notifier.as_mut() {
                    let events = n.fresh(&r.revision, &r.states());
                    if !events.is_empty() {
                        for e in n.send(&r.revision, &events).await {
                            say(&format!("notification not sent: {e}"));
                        }
                    }
                }
                r.succeeded()
            }
            Ok(None) => {
                if opts.once {
                    say("up to date: nothing new on the remote since the last applied revision");
                }
                backoff.is_none()
            }
            Err(e) if opts.once => return Err(e),
            Err(e) => {
                say(&format!(
                    "reconcile failed (tried again in {:?}): {e}",
                    opts.interval
                ));
                false
            }
        };
        // What the replicas share, copied out after every pass.
        // Not once told to stop: a replica that lost its lease must not
        // write over the new leader's.
        if !interrupt.is_set()
            && let Err(e) = shared.replica.push(&opts.workdir).await
        {
            say(&format!("the replicas' shared status was not written: {e}"));
        }
        if opts.once || interrupt.is_set() {
            return Ok(healthy);
        }
        // Drift: the layers whose interval has passed since they were
        // last looked at (from the first reconcile on).
        if opts.workdir.join("tree").is_dir() {
            let now = std::time::Instant::now();
            let due: BTreeSet<String> = layers_of(opts)
                .into_iter()
                .filter(|l| {
                    let every = config
                        .layers
                        .get(l)
                        .and_then(|c| c.drift_interval.as_ref())
                        .map_or(DRIFT_DEFAULT, terrace_core::kind::Timeout::duration);
                    match drift_checked.get(l) {
                        None => {
                            drift_checked.insert(l.clone(), now);
                            false
                        }
                        Some(at) => now.duration_since(*at) >= every,
                    }
                })
                .collect();
            if !due.is_empty() {
                for l in &due {
                    drift_checked.insert(l.clone(), now);
                }
                let found = drift_recorded(opts, interrupt, &due, Some(shared)).await;
                if let Ok(d) = &found {
                    shared
                        .metrics
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .drifted = d.drifted.len();
                }
                match found {
                    Ok(d) if !d.drifted.is_empty() => {
                        say(&format!("drift: {}", d.drifted.join(", ")));
                        let mut states: Vec<(String, String)> = d
                            .drifted
                            .iter()
                            .map(|u| (u.clone(), "drift".to_owned()))
                            .collect();
                        for (u, o) in &d.healed {
                            say(&format!("healed {u}: {}", format!("{o:?}").to_lowercase()));
                            if *o == Outcome::Applied {
                                // Told after the drift: a recovery.
                                states.push((u.clone(), "applied".to_owned()));
                            }
                        }
                        let revision = Status::load(&opts.workdir).applied.unwrap_or_default();
                        if let Some((_, n)) = notifier.as_mut() {
                            let events = n.fresh(&revision, &states);
                            if !events.is_empty() {
                                for e in n.send(&revision, &events).await {
                                    say(&format!("notification not sent: {e}"));
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => say(&format!("drift check failed: {e}")),
                }
            }
        }
        // Backups whose schedule fired since they were last looked at.
        let backups_due = if opts.workdir.join("tree").is_dir() {
            scheduled_backups(opts, shared, &mut backups_seen, say).await
        } else {
            None
        };
        let next = config
            .layers
            .values()
            .filter_map(|c| {
                c.drift_interval
                    .as_ref()
                    .map(terrace_core::kind::Timeout::duration)
            })
            .chain(std::iter::once(DRIFT_DEFAULT))
            .chain(backups_due)
            .min()
            .unwrap_or(DRIFT_DEFAULT)
            .min(opts.interval);
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = shared.trigger.notified() => woken = true,
            () = interrupt.wait() => return Ok(healthy),
        }
    }
}

/// When each (unit, service) backup schedule was last looked at.
type BackupsSeen = std::collections::BTreeMap<(String, String), jiff::Timestamp>;

/// Runs the backups of compose units (of the applied revision) whose
/// schedule fired since they were last looked at (a schedule is first
/// looked at when the daemon starts: nothing runs for times before
/// that), each as a run of the history. The time until the next one.
async fn scheduled_backups(
    opts: &Options,
    shared: &Arc<http::Shared>,
    seen: &mut BackupsSeen,
    say: &(dyn Fn(&str) + Sync),
) -> Option<Duration> {
    use terrace_drivers::compose::backup;
    let applied = Status::load(&opts.workdir).applied;
    let engine = match open_engine(opts, applied.as_deref()) {
        Ok(e) => e,
        Err(e) => {
            say(&format!("scheduled backups: {e}"));
            return None;
        }
    };
    let now = jiff::Timestamp::now();
    let mut soonest: Option<Duration> = None;
    let mut until = |at: jiff::Timestamp| {
        let d = Duration::from_millis(
            u64::try_from(at.as_millisecond() - now.as_millisecond()).unwrap_or(0),
        );
        soonest = Some(soonest.map_or(d, |s| s.min(d)));
    };
    let names: Vec<(String, String)> = engine
        .workspace
        .units
        .iter()
        .filter(|u| u.kind == *"compose")
        .map(|u| (u.name.clone(), u.layer.clone()))
        .collect();
    for (name, layer) in names {
        let Ok(Ok(unit)) = engine.evaluate_from_state(&name).await else {
            continue;
        };
        let Ok(settings) = serde_json::from_value::<terrace_drivers::compose::ComposeSettings>(
            unit.settings.clone(),
        ) else {
            continue;
        };
        for (service, b) in &settings.backup {
            let Some(cron) = b
                .schedule
                .as_deref()
                .and_then(|s| backup::parse_schedule(s).ok())
            else {
                continue;
            };
            let key = (name.clone(), service.clone());
            let since = *seen.entry(key.clone()).or_insert(now);
            let Some(next) = backup::next_run(&cron, since) else {
                continue;
            };
            if next > now {
                until(next);
                continue;
            }
            seen.insert(key, now);
            let prior = engine
                .state()
                .read(engine.environment(), &name)
                .await
                .ok()
                .flatten();
            let ctx = engine.unit_context(&unit, prior.as_ref(), None);
            let id = shared
                .history
                .start(runs::Trigger::Schedule, applied.as_deref());
            shared.history.line(
                id,
                &format!(
                    "backup of {name}/{service} (schedule {})",
                    b.schedule.as_deref().unwrap_or_default()
                ),
            );
            let started = std::time::Instant::now();
            let history = &shared.history;
            let result = backup::run(&ctx, Some(service), &|l: &str| history.line(id, l)).await;
            let outcome = match &result {
                Ok(snaps) => {
                    let ids: Vec<&str> = snaps.iter().map(|s| s.short_id.as_str()).collect();
                    say(&format!(
                        "backed up {name}/{service}: snapshot {}",
                        ids.join(", ")
                    ));
                    "applied"
                }
                Err(e) => {
                    let msg = engine.plaintexts().redact(&e.to_string());
                    history.line(id, &format!("error: {msg}"));
                    say(&format!("backup of {name}/{service} failed: {msg}"));
                    "failed"
                }
            };
            history.finish(
                id,
                if result.is_ok() { "applied" } else { "failed" },
                applied.clone(),
                vec![runs::RunUnit {
                    unit: name.clone(),
                    layer: layer.clone(),
                    outcome: outcome.to_owned(),
                    duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    files: Vec::new(),
                }],
                Vec::new(),
            );
            if let Some(n) = backup::next_run(&cron, now) {
                until(n);
            }
        }
    }
    soonest
}

/// The API's view of the units a reconcile touched.
fn record_units(shared: &http::Shared, r: &Reconciled) {
    *shared
        .layers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = r.layers.clone();
    *shared
        .environment
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r.environment.clone());
    let mut units = shared
        .units
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let reports = shared
        .reports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for (unit, outcome) in &r.units {
        let awaiting = r.awaiting.contains(unit);
        let report = reports.get(unit);
        // Planned with inputs known only once its dependencies are applied.
        let deferred = *outcome == Outcome::Planned && report.is_some_and(|rep| rep.unknown_inputs);
        let once = r.once.get(unit);
        let state = if awaiting {
            "approval".to_owned()
        } else if once.is_some() && matches!(outcome, Outcome::Applied | Outcome::Unchanged) {
            "once".to_owned()
        } else if deferred {
            "deferred".to_owned()
        } else {
            format!("{outcome:?}").to_lowercase()
        };
        let reason = match outcome {
            _ if awaiting => Some(format!(
                "waiting for approval of revision {} (POST /api/v1/approve)",
                r.revision
            )),
            _ if deferred => Some(
                "deferred: some inputs are known only after its dependencies are applied"
                    .to_owned(),
            ),
            Outcome::Applied | Outcome::Unchanged if once.is_some() => Some(match once {
                Some(Some(to)) => format!("applied once; its objects are handed over to {to}"),
                _ => "applied once; `apply --unit NAME --replace` applies it again".to_owned(),
            }),
            Outcome::Skipped => Some("waiting: a unit it depends on failed".to_owned()),
            Outcome::Failed => report
                .and_then(|rep| rep.error.as_ref())
                .map(|e| format!("failed: {}", e.message.lines().next().unwrap_or_default())),
            _ => None,
        };
        let (layer, kind, depends_on) = r.kinds.get(unit).cloned().unwrap_or_default();
        units.insert(
            unit.clone(),
            http::UnitView {
                state,
                layer,
                kind,
                revision: r.revision.clone(),
                reason,
                depends_on,
            },
        );
    }
    for unit in &r.paused {
        let (layer, kind, depends_on) = r.kinds.get(unit).cloned().unwrap_or_default();
        units.insert(
            unit.clone(),
            http::UnitView {
                state: "paused".to_owned(),
                layer,
                kind,
                depends_on,
                revision: r.revision.clone(),
                reason: Some("paused: its changes are held until it is resumed".to_owned()),
            },
        );
    }
}

/// The layers of the project in the work tree (none when it does not
/// load).
fn layers_of(opts: &Options) -> Vec<String> {
    let file = opts.tree().join(terrace_core::config::PROJECT_FILE);
    std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| terrace_yaml::from_str::<terrace_core::config::ProjectFile>(&t, &file).ok())
        .map(|p| p.layers)
        .unwrap_or_default()
}
