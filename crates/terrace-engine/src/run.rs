//! Plan, apply and destroy across units, in graph order.
//!
//! - **plan** walks the graph in topological order. A dependency that will
//!   change hands its planned outputs to its dependents, or "known after
//!   apply" when its driver cannot know them yet; a dependency outside the
//!   selection hands over what its state says.
//! - **apply** runs up to `jobs` units at once, each as soon as its
//!   dependencies are done. Each unit is locked, re-planned with its
//!   dependencies' fresh outputs, applied, and its state written. A failure
//!   skips only what depends on it.
//! - **destroy** removes units dependents first.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};
use terrace_core::config::{TargetBinding, TargetKind, UnitKind};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{
    ApplyContext, DestroyContext, Driver, DriverError, Lines, Rendered, ResolvedUnit, SENSITIVE,
    UnitContext,
};
use terrace_core::kind::UnknownKind;
use terrace_core::plan::{Action, Change, UnitPlan};
use terrace_core::secrets::{Plaintexts, SecretSource};
use terrace_core::state::{RunRecord, RunUnit, STATE_FORMAT, UnitState, UnitStatus};
use terrace_state::{StateBackend, StateError, new_run_id, now_rfc3339, this_holder};
use tracing::{debug, warn};

use crate::error::EngineError;
use crate::project::Project;
use crate::saved::{SavedPlan, StateMark, UnitFingerprint};
use crate::workspace::{OutputView, Workspace};

/// Which units a command acts on. Empty means all.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub units: Vec<String>,
    pub layers: Vec<String>,
    /// A Git revision: units whose files changed since, and their dependents.
    pub affected_since: Option<String>,
}

/// Options of apply and destroy.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Units applied at once.
    pub jobs: usize,
    /// How long to wait for a unit's lock.
    pub lock_timeout: Duration,
    /// The command recorded in locks and run history.
    pub command: String,
    /// Set by the first SIGINT/SIGTERM: no unit starts after it.
    pub interrupt: Interrupt,
    /// `apply FILE`: each unit is applied only if its fresh plan is the
    /// saved one.
    pub saved: Option<Arc<SavedPlan>>,
    /// Take objects over even where Flux or Argo CD still applies them.
    pub force: bool,
    /// Destroy: remove compose units' volumes too.
    pub volumes: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            jobs: 4,
            lock_timeout: Duration::ZERO,
            command: "apply".to_owned(),
            interrupt: Interrupt::default(),
            saved: None,
            force: false,
            volumes: false,
        }
    }
}

/// A run's interrupt: once triggered, apply starts no more units, every
/// running child program gets one SIGINT (`terrace_exec::children`),
/// and the units already running finish and are recorded.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<std::sync::atomic::AtomicBool>);

impl Interrupt {
    /// Stops the run; returns whether it was already stopped.
    pub fn trigger(&self) -> bool {
        let was = self.0.swap(true, std::sync::atomic::Ordering::SeqCst);
        if !was {
            terrace_exec::children::interrupt_all();
        }
        was
    }

    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns once the interrupt is triggered.
    pub async fn wait(&self) {
        while !self.is_set() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A second interrupt: running child programs are killed.
    pub fn force(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        terrace_exec::children::kill_all();
    }
}

/// Progress notifications, for the CLI to show.
pub trait Progress: Send + Sync {
    fn started(&self, _unit: &str, _verb: &str) {}
    fn finished(&self, _report: &UnitReport) {}
    /// A line an external program of `unit` printed (already redacted).
    fn line(&self, _unit: &str, _line: &str) {}
}

/// Progress that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;
impl Progress for Quiet {}

pub use terrace_core::plan::Outcome;

/// What happened to one unit.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitReport {
    pub unit: String,
    pub layer: String,
    pub kind: UnitKind,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    pub changes: Vec<Change>,
    pub unchanged: usize,
    /// Some input is known only after a dependency is applied.
    pub unknown_inputs: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ReportError>,
    /// For skipped units: the failed unit that caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_because: Option<String>,
    /// For planned units: what the plan was made from (`plan --out`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<UnitFingerprint>,
    pub duration_ms: u64,
}

impl UnitReport {
    /// A report with no action, changes or error yet.
    fn new(unit: String, layer: String, kind: UnitKind, outcome: Outcome) -> Self {
        UnitReport {
            unit,
            layer,
            kind,
            outcome,
            action: None,
            changes: Vec::new(),
            unchanged: 0,
            unknown_inputs: false,
            notes: Vec::new(),
            error: None,
            skipped_because: None,
            fingerprint: None,
            duration_ms: 0,
        }
    }
}

/// An error attached to one unit.
#[derive(Debug, Clone, Serialize)]
pub struct ReportError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostic: Option<Diagnostic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl ReportError {
    fn from_driver(e: DriverError) -> Self {
        match e {
            DriverError::Input(d) => ReportError {
                message: d.to_string(),
                hint: None,
                diagnostic: Some(*d),
            },
            other => ReportError {
                message: other.to_string(),
                diagnostic: None,
                hint: None,
            },
        }
    }

    fn from_unknown(e: UnknownKind) -> Self {
        ReportError::message(e.to_string())
    }

    fn from_diagnostic(d: Diagnostic) -> Self {
        ReportError {
            message: d.to_string(),
            diagnostic: Some(d),
            hint: None,
        }
    }

    fn from_state(e: StateError) -> Self {
        ReportError {
            message: e.to_string(),
            hint: e.hint(),
            diagnostic: None,
        }
    }

    /// Every secret value in the message, the hint and the diagnostic
    /// replaced.
    fn redact(&mut self, plain: &Plaintexts) {
        plain.redact_in_place(&mut self.message);
        if let Some(h) = &mut self.hint {
            plain.redact_in_place(h);
        }
        if let Some(d) = &mut self.diagnostic {
            plain.redact_in_place(&mut d.message);
            if let Some(h) = &mut d.hint {
                plain.redact_in_place(h);
            }
        }
    }

    fn message(message: impl Into<String>) -> Self {
        ReportError {
            message: message.into(),
            diagnostic: None,
            hint: None,
        }
    }
}

/// The result of a plan, apply or destroy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub command: String,
    pub environment: String,
    pub units: Vec<UnitReport>,
    /// Units with state but no longer in the repository (or in this
    /// environment); only `terrace destroy --unit NAME` removes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<String>,
    /// A signal stopped the run before every unit was done.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Report {
    /// 1 if anything failed; for plan, 2 if anything would change; else 0.
    pub fn exit_code(&self) -> i32 {
        if self.units.iter().any(|u| {
            matches!(
                u.outcome,
                Outcome::Failed | Outcome::Skipped | Outcome::Interrupted
            )
        }) {
            1
        } else if self.command == "plan" && self.has_changes() {
            2
        } else {
            0
        }
    }

    pub fn has_changes(&self) -> bool {
        self.units
            .iter()
            .any(|u| u.action.is_some_and(Action::is_change))
    }
}

/// A project opened in one environment, with its state backend.
#[derive(Debug)]
pub struct Engine {
    pub project: Project,
    pub workspace: Workspace,
    state: Arc<dyn StateBackend>,
    secrets: Arc<dyn SecretSource>,
    /// Values of sensitive outputs read in this run (a Terraform output
    /// marked sensitive, or one that echoes a secret).
    sensitive_outputs: Mutex<SensitiveValues>,
    refresh: bool,
    /// `lifecycle: once` units to apply again (`--replace`).
    replace: std::collections::BTreeSet<String>,
    /// The revision runs record, when the caller knows it (the daemon's
    /// checkout is no Git work tree); else Git is asked.
    revision: Option<String>,
    /// No-op plans remembered from earlier runs (see `reuse`).
    reuse: crate::reuse::Reuse,
    /// What each unit read when last planned (see `reads`).
    pub(crate) reads: crate::reads::Reads,
    /// The digest of what every unit's reuse key shares.
    reuse_base: std::sync::OnceLock<String>,
}

/// What one unit's apply belongs to: the run, the revision it records, the
/// saved plan it must match, and where its programs' lines go.
struct UnitRun<'a> {
    run_id: &'a str,
    revision: &'a PendingRevision,
    saved: Option<&'a SavedPlan>,
    lines: &'a Lines,
    force: bool,
    jobs: usize,
}

/// The Git revision a run records, found on the blocking pool while the
/// run goes on (`git status` can take a while in a large work tree).
#[derive(Clone)]
struct PendingRevision {
    found: Arc<tokio::sync::OnceCell<Option<String>>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<Option<String>>>>>,
}

impl PendingRevision {
    fn start(root: &std::path::Path) -> PendingRevision {
        let root = root.to_path_buf();
        PendingRevision {
            found: Arc::default(),
            task: Arc::new(Mutex::new(Some(tokio::task::spawn_blocking(move || {
                crate::affected::revision(&root)
            })))),
        }
    }

    fn known(revision: &str) -> PendingRevision {
        let found = tokio::sync::OnceCell::new();
        let _ = found.set(Some(revision.to_owned()));
        PendingRevision {
            found: Arc::new(found),
            task: Arc::default(),
        }
    }

    async fn get(&self) -> Option<String> {
        self.found
            .get_or_init(|| async {
                let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
                match task {
                    Some(t) => t.await.ok().flatten(),
                    None => None,
                }
            })
            .await
            .clone()
    }
}

/// Values of sensitive outputs with where they came from; `Debug` shows
/// only how many (the engine derives `Debug`).
#[derive(Default)]
struct SensitiveValues(BTreeSet<(String, std::path::PathBuf)>);

impl std::fmt::Debug for SensitiveValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SensitiveValues(<{} redacted>)", self.0.len())
    }
}

impl Engine {
    /// Builds the engine for one environment of `project` (the default
    /// one when `environment` is `None`) from its parts: the kinds come
    /// with the project ([`Project::kinds`]), state and secrets are given.
    /// The CLI passes the local backend and the SOPS store; tests pass
    /// fakes.
    pub fn new(
        project: Project,
        environment: Option<&str>,
        state: Arc<dyn StateBackend>,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<Engine, EngineError> {
        // terrace's own directory is private, also when an older version
        // made it 0755.
        let work = project.root.join(terrace_core::config::WORK_DIR);
        if work.exists() {
            terrace_fs::private_dir(&work)?;
        }
        let env = project.pick_environment(environment)?;
        let workspace = Workspace::new(&project, &env)?;
        Ok(Engine {
            project,
            workspace,
            state,
            secrets,
            sensitive_outputs: Mutex::default(),
            refresh: true,
            replace: Default::default(),
            revision: None,
            reuse: crate::reuse::Reuse::new(&env),
            reads: crate::reads::Reads::new(&env),
            reuse_base: std::sync::OnceLock::new(),
        })
    }

    /// `lifecycle: once` units that plans treat as never applied (`apply
    /// --unit U --replace`).
    pub fn with_replace(mut self, units: impl IntoIterator<Item = String>) -> Self {
        self.replace = units.into_iter().collect();
        self
    }

    /// The revision runs record (instead of asking Git in the project).
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = Some(revision.into());
        self
    }

    /// Whether plans refresh from real infrastructure (default true).
    pub fn with_refresh(mut self, refresh: bool) -> Self {
        self.refresh = refresh;
        self
    }

    /// Points cluster targets elsewhere than terrace.yaml binds them (the
    /// command line's `--cluster` and `--cluster-context`): each given
    /// field replaces the environment's.
    pub fn bind_targets(
        mut self,
        bindings: &[(String, TargetBinding)],
    ) -> Result<Self, EngineError> {
        for (name, binding) in bindings {
            let kind = if binding.host.is_some() {
                TargetKind::Docker
            } else {
                TargetKind::Cluster
            };
            let Some(t) = self
                .workspace
                .targets
                .get_mut(name)
                .filter(|t| t.kind == kind)
            else {
                return Err(EngineError::UnknownTarget {
                    flag: if kind == TargetKind::Docker {
                        "--docker"
                    } else {
                        "--cluster"
                    },
                    kind,
                    name: name.clone(),
                    known: self
                        .workspace
                        .targets
                        .values()
                        .filter(|t| t.kind == kind)
                        .map(|t| t.name.clone())
                        .collect(),
                });
            };
            t.binding = t.binding.overlay(binding);
        }
        Ok(self)
    }

    pub fn state(&self) -> &Arc<dyn StateBackend> {
        &self.state
    }

    pub fn environment(&self) -> &str {
        &self.workspace.environment
    }

    /// The driver of `kind`. A kind this build lacks can only come from
    /// state (a unit applied by a build with more kinds).
    fn driver(&self, kind: &UnitKind) -> Result<Arc<dyn Driver>, UnknownKind> {
        self.project.kinds.of(kind).map(|k| k.driver())
    }

    /// The graph indexes a selection names; every unit when it is empty.
    pub fn select(&self, sel: &Selection) -> Result<BTreeSet<usize>, EngineError> {
        let ws = &self.workspace;
        let all = || (0..ws.graph.len()).collect::<BTreeSet<_>>();
        let mut chosen: Option<BTreeSet<usize>> = None;
        let mut narrow = |set: BTreeSet<usize>| {
            chosen = Some(match chosen.take() {
                None => set,
                Some(prev) => prev.intersection(&set).copied().collect(),
            });
        };
        if !sel.units.is_empty() {
            let mut set = BTreeSet::new();
            for name in &sel.units {
                set.insert(ws.index_of(name).ok_or_else(|| EngineError::UnknownUnit {
                    name: name.clone(),
                    environment: ws.environment.clone(),
                })?);
            }
            narrow(set);
        }
        if !sel.layers.is_empty() {
            for l in &sel.layers {
                if self.project.layer_index(l).is_none() {
                    return Err(EngineError::UnknownLayer {
                        name: l.clone(),
                        known: self.project.file.layers.clone(),
                    });
                }
            }
            narrow(
                all()
                    .into_iter()
                    .filter(|&i| sel.layers.contains(&ws.units[i].layer))
                    .collect(),
            );
        }
        if let Some(rev) = &sel.affected_since {
            narrow(crate::affected::affected_units(self, rev)?);
        }
        Ok(chosen.unwrap_or_else(all))
    }

    /// Output views of `i`'s dependencies that `views` lacks, from state.
    async fn fill_from_state(
        &self,
        i: usize,
        views: &mut HashMap<String, OutputView>,
    ) -> Result<(), StateError> {
        for &d in self.workspace.graph.dependencies(i) {
            let name = &self.workspace.units[d].name;
            if !views.contains_key(name) {
                let view = match self.state.read(self.environment(), name).await? {
                    Some(s) if s.status == UnitStatus::Applied => self.applied_outputs(&s),
                    _ => OutputView::Unknown,
                };
                views.insert(name.clone(), view);
            }
        }
        Ok(())
    }

    /// What an applied unit's dependents see: the kind's own record of its
    /// outputs where it keeps one (sensitive values included), else the
    /// state record's.
    fn applied_outputs(&self, state: &UnitState) -> OutputView {
        let Ok(driver) = self.driver(&state.kind) else {
            return OutputView::Known(state.outputs.clone(), sensitive_names(state));
        };
        match driver.read_outputs(&self.project.root, state) {
            None => OutputView::Known(state.outputs.clone(), sensitive_names(state)),
            Some(Ok(outputs)) => {
                let sensitive = sensitive_names(state);
                self.remember_sensitive(&state.unit, &outputs, &sensitive);
                OutputView::Known(outputs, sensitive)
            }
            Some(Err(e)) => {
                warn!(unit = %state.unit, error = %e, "outputs could not be read; treating them as unknown");
                OutputView::Unknown
            }
        }
    }

    /// Every secret value this run has seen: decrypted secrets and the
    /// values of sensitive outputs. What leaves the process is checked
    /// against it.
    pub fn plaintexts(&self) -> Plaintexts {
        let extra = self
            .sensitive_outputs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        // The store keeps its own set built; merging makes a new one, so
        // only when there is something to merge. (A dependency's outputs
        // are read once per dependent: the set keeps each value once.)
        if extra.is_empty() {
            return self.secrets.plaintexts();
        }
        self.secrets.plaintexts().merged(&Plaintexts::new(extra))
    }

    fn remember_sensitive(&self, unit: &str, outputs: &Map<String, Value>, names: &[String]) {
        let mut found = Vec::new();
        for name in names {
            if let Some(v) = outputs.get(name) {
                let source = std::path::PathBuf::from(format!("unit {unit} output {name}"));
                collect_strings(v, &mut |s| found.push((s.to_owned(), source.clone())));
            }
        }
        if !found.is_empty() {
            self.sensitive_outputs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .extend(found);
        }
    }

    /// A unit's report as it may be shown and stored: every secret value
    /// in its changes, notes and errors replaced.
    fn sealed(&self, mut r: UnitReport) -> UnitReport {
        let plain = self.plaintexts();
        if plain.is_empty() {
            return r;
        }
        for c in &mut r.changes {
            plain.redact_in_place(&mut c.address);
            if let Some(d) = &mut c.diff {
                plain.redact_in_place(d);
            }
        }
        for n in &mut r.notes {
            plain.redact_in_place(n);
        }
        if let Some(e) = &mut r.error {
            e.redact(&plain);
        }
        r
    }

    fn blank_report(&self, i: usize, outcome: Outcome) -> UnitReport {
        let u = &self.workspace.units[i];
        UnitReport::new(u.name.clone(), u.layer.clone(), u.kind.clone(), outcome)
    }

    pub fn unit_context<'a>(
        &'a self,
        unit: &'a ResolvedUnit,
        prior: Option<&'a UnitState>,
        lines: Option<&'a Lines>,
    ) -> UnitContext<'a> {
        UnitContext {
            root: &self.project.root,
            project: &self.project.file.name,
            environment: self.environment(),
            vars: &self.workspace.vars,
            unit,
            prior,
            secrets: Some(self.secrets.as_ref()),
            refresh: self.refresh,
            lines,
            state: Some(&self.project.file.state),
            policy: self.project.file.policy.as_ref(),
            tiers: &self.project.file.tiers,
            targets: &self.workspace.targets,
        }
    }

    /// Plans every selected unit.
    pub async fn plan(
        self: &Arc<Self>,
        selected: &BTreeSet<usize>,
        progress: &dyn Progress,
        jobs: usize,
    ) -> Result<Report, EngineError> {
        // Directories are checked again in every run (see terrace-fs).
        terrace_fs::forget_checked();
        let graph = &self.workspace.graph;
        let position: HashMap<usize, usize> = graph
            .topological_order()
            .into_iter()
            .enumerate()
            .map(|(pos, i)| (i, pos))
            .collect();
        let mut views: HashMap<String, OutputView> = HashMap::new();
        let mut failed: HashMap<usize, String> = HashMap::new();
        let mut reports: Vec<(usize, UnitReport)> = Vec::new();
        // Units of one wave depend only on earlier waves: they plan at once,
        // in `jobs` groups, each group on one thread of the blocking pool
        // (rendering, decryption and file reads are synchronous), so there
        // are few hand-offs between threads however many units there are.
        for mut wave in graph.waves() {
            wave.sort_by_key(|i| position[i]);
            let mut work: Vec<(usize, HashMap<String, OutputView>)> = Vec::new();
            for i in wave {
                if !selected.contains(&i) {
                    continue;
                }
                let name = self.workspace.units[i].name.clone();
                if let Some(cause) = graph.dependencies(i).iter().find_map(|d| failed.get(d)) {
                    let mut r = self.blank_report(i, Outcome::Skipped);
                    r.skipped_because = Some(cause.clone());
                    failed.insert(i, cause.clone());
                    views.insert(name, OutputView::Unknown);
                    progress.finished(&r);
                    reports.push((i, r));
                    continue;
                }
                progress.started(&name, "plan");
                self.fill_from_state(i, &mut views).await?;
                let deps: HashMap<String, OutputView> = graph
                    .dependencies(i)
                    .iter()
                    .filter_map(|&d| {
                        let n = &self.workspace.units[d].name;
                        views.get(n).map(|v| (n.clone(), v.clone()))
                    })
                    .collect();
                work.push((i, deps));
            }
            let groups = jobs.max(1).min(work.len().max(1));
            let mut batches: Vec<Vec<(usize, HashMap<String, OutputView>)>> =
                (0..groups).map(|_| Vec::new()).collect();
            for (n, w) in work.into_iter().enumerate() {
                batches[n % groups].push(w);
            }
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for batch in batches.into_iter().filter(|b| !b.is_empty()) {
                let this = Arc::clone(self);
                let tx = tx.clone();
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    for (i, deps) in batch {
                        let started = Instant::now();
                        // A driver that panics fails its own unit, as in
                        // apply; the group goes on with the next.
                        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            handle.block_on(async {
                                let name = &this.workspace.units[i].name;
                                let prior = this.state.read(this.environment(), name).await?;
                                let result = this.plan_unit(i, &deps, prior.as_ref(), None).await;
                                Ok::<_, StateError>((prior, result))
                            })
                        }));
                        if tx.send((i, done, started.elapsed())).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            while let Some((i, done, elapsed)) = rx.recv().await {
                let (prior, result) = match done {
                    Ok(Ok(planned)) => planned,
                    Ok(Err(e)) => return Err(e.into()),
                    Err(panic) => {
                        let message = format!(
                            "the `{}` driver failed while planning: {}",
                            self.workspace.units[i].kind,
                            panic_text(panic.as_ref())
                        );
                        (None, Err(ReportError::message(message)))
                    }
                };
                let name = self.workspace.units[i].name.clone();
                let mut r = self.blank_report(i, Outcome::Planned);
                match result {
                    Ok((unit, plan)) => {
                        // A unit whose last apply failed part way is
                        // applied again even when nothing differs, so the
                        // plan says so, and its recorded outputs are not
                        // trusted.
                        let failed_before = prior
                            .as_ref()
                            .is_some_and(|p| p.status == UnitStatus::Failed);
                        let action = if failed_before && plan.action == Action::NoOp {
                            Action::Update
                        } else {
                            plan.action
                        };
                        let view = match (&plan.outputs, action) {
                            (Some(o), _) => OutputView::Known(o.clone(), Vec::new()),
                            (None, Action::NoOp) => prior
                                .as_ref()
                                .map_or(OutputView::Unknown, |p| self.applied_outputs(p)),
                            (None, _) => OutputView::Unknown,
                        };
                        views.insert(name.clone(), view);
                        r.fingerprint = Some(self.fingerprint(&unit, &plan, prior.as_ref()));
                        r.action = Some(action);
                        r.changes = plan.changes;
                        r.unchanged = plan.unchanged;
                        r.unknown_inputs = unit.unknown;
                        r.notes = plan.notes;
                        if failed_before {
                            r.notes.push(
                                "its last apply failed part way: apply runs it again".to_owned(),
                            );
                        }
                        if unit.unknown {
                            r.notes.push(
                                "some inputs are known only after a dependency is applied"
                                    .to_owned(),
                            );
                        }
                    }
                    Err(e) => {
                        r.outcome = Outcome::Failed;
                        r.error = Some(e);
                        failed.insert(i, name.clone());
                        views.insert(name.clone(), OutputView::Unknown);
                    }
                }
                r.duration_ms = elapsed.as_millis() as u64;
                let r = self.sealed(r);
                progress.finished(&r);
                reports.push((i, r));
            }
        }
        reports.sort_by_key(|(i, _)| position[i]);
        self.reuse.save(&self.project.root);
        self.reads.save(&self.project.root);
        Ok(Report {
            command: "plan".to_owned(),
            environment: self.environment().to_owned(),
            units: reports.into_iter().map(|(_, r)| r).collect(),
            orphans: self.orphans().await?,
            interrupted: false,
        })
    }

    async fn plan_unit(
        &self,
        i: usize,
        views: &HashMap<String, OutputView>,
        prior: Option<&UnitState>,
        lines: Option<&Lines>,
    ) -> Result<(ResolvedUnit, UnitPlan), ReportError> {
        let unit = self
            .workspace
            .evaluate(&self.project, i, views, Some(self.secrets.as_ref()))
            .map_err(ReportError::from_diagnostic)?;
        // Applied once: left alone, unless replaced.
        let spec = &self.workspace.units[i];
        if spec.lifecycle == terrace_core::config::Lifecycle::Once
            && !self.replace.contains(&unit.name)
            && let Some(p) = prior.filter(|p| p.status == UnitStatus::Applied)
        {
            let mut notes = vec![format!("once: applied {}", p.updated_at)];
            if let Some(to) = &spec.hand_over {
                notes.push(format!(
                    "its objects are handed over to unit `{to}`; `terrace apply --unit {} --replace` would take them back",
                    unit.name
                ));
            }
            let plan = UnitPlan {
                action: Action::NoOp,
                changes: Vec::new(),
                unchanged: 0,
                outputs: Some(p.outputs.clone()),
                render_hash: p.render_hash.clone(),
                notes,
                payload: None,
            };
            return Ok((unit, plan));
        }
        let ctx = self.unit_context(&unit, prior, lines);
        // A value known only after apply reaches no plan, diff or dry run:
        // the unit waits for its dependencies, and the plan says which.
        // It is still rendered (with placeholders, nothing kept) so its own
        // mistakes show now rather than after its dependencies apply.
        if unit.unknown {
            let preview = unit.preview();
            self.driver(&unit.kind)
                .map_err(ReportError::from_unknown)?
                .render(&self.unit_context(&preview, prior, lines))
                .await
                .map_err(ReportError::from_driver)?;
            let plan = deferred_plan(&unit);
            return Ok((unit, plan));
        }
        let driver = self.driver(&unit.kind).map_err(ReportError::from_unknown)?;
        let reuse_key = (unit.sensitive_inputs.is_empty()
            && unit.sensitive_settings.is_empty()
            && prior.is_some_and(|p| p.status == UnitStatus::Applied)
            && driver.plan_is_reusable(&ctx))
        .then(|| self.reuse_key(&unit, prior));
        let root = &self.project.root;
        if let Some(key) = &reuse_key
            && let Some(plan) = self.reuse.lookup(root, &unit.name, key)
        {
            return Ok((unit, plan));
        }
        // What the driver reads is recorded for every unit: a reusable
        // plan is kept with it, and any unit is affected by a change to
        // a file it read (`reads`).
        let (plan, watched) = terrace_fs::watch::Recorded::new(root, driver.plan(&ctx)).await;
        if let Ok(p) = &plan {
            if let Some(key) = reuse_key {
                self.reuse
                    .remember(root, &unit.name, key, p, watched.reusable);
            }
            let mut read = watched.read;
            read.extend(
                unit.sensitive_inputs
                    .values()
                    .chain(unit.sensitive_settings.values())
                    .flatten()
                    .cloned(),
            );
            self.reads.remember(root, &unit.name, read);
        }
        let plan = plan.map_err(ReportError::from_driver)?;
        let plain = self.plaintexts();
        if let Some(c) = plan.changes.iter().find(|c| {
            c.address
                .split([' ', '/'])
                .any(|part| plain.found_in_name(part))
        }) {
            return Err(ReportError {
                message: format!(
                    "unit `{}` would write `{}`: a secret value flows into a name or path, which is never sealed",
                    unit.name,
                    plain.redact(&c.address)
                ),
                hint: Some(
                    "keep secrets out of names, paths (`template.itemPath`) and addresses; use them only in values".to_owned(),
                ),
                diagnostic: None,
            });
        }
        Ok((unit, plan))
    }

    /// What a unit's remembered no-op plan is valid for: the project
    /// file, environment and variables, terrace's version, the unit as
    /// resolved and its prior state record.
    fn reuse_key(&self, unit: &ResolvedUnit, prior: Option<&UnitState>) -> String {
        let base = self.reuse_base.get_or_init(|| {
            let shared = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "project": &self.project.file,
                "environment": self.environment(),
                "vars": &self.workspace.vars,
                "refresh": self.refresh,
            });
            terrace_fs::digest::digest(shared.to_string().as_bytes())
        });
        let mut bytes = base.clone().into_bytes();
        bytes.push(0);
        serde_json::to_writer(&mut bytes, unit).expect("a unit serializes");
        bytes.push(0);
        serde_json::to_writer(&mut bytes, &prior).expect("state serializes");
        terrace_fs::digest::digest(&bytes)
    }

    /// The units of `saved` that can be carried out here, in graph order:
    /// a unit is held back when its own plan was a preview (deferred, or
    /// inputs known only after apply) or when something it depends on is
    /// held back.
    pub fn select_saved(&self, saved: &SavedPlan) -> crate::saved::SavedSelection {
        let ws = &self.workspace;
        let mut out = crate::saved::SavedSelection::default();
        for u in &saved.units {
            if ws.index_of(&u.unit).is_none() {
                out.moved.push(crate::saved::Moved {
                    unit: u.unit.clone(),
                    what: vec!["it is no longer in the project or this environment".to_owned()],
                });
            }
        }
        let mut held: BTreeSet<usize> = BTreeSet::new();
        for i in ws.graph.topological_order() {
            let Some(u) = saved.unit(&ws.units[i].name) else {
                continue;
            };
            let blocked = ws.graph.dependencies(i).iter().any(|d| held.contains(d));
            if u.is_applied() && !blocked {
                out.applied.insert(i);
            } else {
                held.insert(i);
                out.waiting.push(u.unit.clone());
            }
        }
        out
    }

    /// What a unit's plan was made from, as digests (see
    /// [`UnitFingerprint`]).
    fn fingerprint(
        &self,
        unit: &ResolvedUnit,
        plan: &UnitPlan,
        prior: Option<&UnitState>,
    ) -> UnitFingerprint {
        UnitFingerprint {
            inputs: self.inputs_digest(unit),
            render: plan.render_hash.clone(),
            state: prior.map(|p| StateMark {
                serial: p.serial,
                status: p.status,
            }),
        }
    }

    /// A digest of a unit's evaluated inputs, settings and target in which
    /// no secret value takes part: a secret input counts as the digest of
    /// the encrypted files it came from (a sensitive dependency output, by
    /// its name), and secret values in settings are redacted first.
    fn inputs_digest(&self, unit: &ResolvedUnit) -> String {
        let root = &self.project.root;
        let mut inputs = unit.inputs.clone();
        for (name, sources) in &unit.sensitive_inputs {
            let sealed: Vec<String> = sources
                .iter()
                .map(|source| {
                    let path = root.join(source);
                    match terrace_fs::read(root, &path) {
                        Ok(bytes) => terrace_fs::digest::digest(&bytes),
                        Err(_) => source.clone(),
                    }
                })
                .collect();
            inputs.insert(name.clone(), serde_json::json!({ "sealed": sealed }));
        }
        let plain = self.plaintexts();
        for v in inputs.values_mut() {
            plain.redact_value(v);
        }
        let mut settings = unit.settings.clone();
        plain.redact_value(&mut settings);
        // The target by name: where its kubeconfig file sits may differ
        // between the machine that plans and the one that applies; which
        // cluster it reaches is in the driver's render hash.
        let target = unit.target.as_ref().map(|t| (&t.name, t.kind));
        terrace_fs::digest::digest(
            serde_json::to_string(&(&inputs, &settings, target))
                .expect("values serialize")
                .as_bytes(),
        )
    }

    /// Units with state that are not units of this environment.
    pub async fn orphans(&self) -> Result<Vec<String>, EngineError> {
        Ok(self
            .state
            .list(self.environment())
            .await?
            .into_iter()
            .filter(|n| self.workspace.index_of(n).is_none())
            .collect())
    }

    /// Unit `name` evaluated with its dependencies' outputs from state.
    pub async fn evaluate_from_state(
        &self,
        name: &str,
    ) -> Result<Result<ResolvedUnit, Diagnostic>, EngineError> {
        let i = self
            .workspace
            .index_of(name)
            .ok_or_else(|| EngineError::UnknownUnit {
                name: name.to_owned(),
                environment: self.environment().to_owned(),
            })?;
        let mut views = HashMap::new();
        self.fill_from_state(i, &mut views).await?;
        Ok(self
            .workspace
            .evaluate(&self.project, i, &views, Some(self.secrets.as_ref())))
    }

    /// What unit `name` renders, with dependencies' outputs from state.
    pub async fn render(
        &self,
        name: &str,
    ) -> Result<Result<(ResolvedUnit, Rendered), ReportError>, EngineError> {
        let unit = match self.evaluate_from_state(name).await? {
            Ok(u) => u,
            Err(d) => return Ok(Err(ReportError::from_diagnostic(d))),
        };
        // What it would apply, with placeholders for what is known only
        // after its dependencies are applied.
        let unit = unit.preview();
        let rendered = match self.driver(&unit.kind) {
            Ok(driver) => driver.render(&self.unit_context(&unit, None, None)).await,
            Err(e) => return Ok(Err(ReportError::from_unknown(e))),
        };
        let plain = self.plaintexts();
        // The unit goes out with the documents (`render --output json`):
        // its secret inputs are shown as sensitive.
        let unit = masked(unit, &plain);
        Ok(rendered
            .map(|mut r| {
                for d in &mut r.documents {
                    plain.redact_in_place(&mut d.content);
                }
                (unit, r)
            })
            .map_err(|e| {
                let mut e = ReportError::from_driver(e);
                e.redact(&plain);
                e
            }))
    }

    /// Unit `name` as it stands now, its inputs from its dependencies'
    /// recorded outputs, with every secret input and setting shown as
    /// sensitive (and any secret value elsewhere redacted): what a unit's
    /// page shows. Inputs known only after a dependency is applied are
    /// named in `unknown_inputs`.
    pub async fn inputs(
        &self,
        name: &str,
    ) -> Result<Result<ResolvedUnit, ReportError>, EngineError> {
        let evaluated = self.evaluate_from_state(name).await?;
        // After the evaluation: the secrets it decrypted are known.
        let plain = self.plaintexts();
        Ok(match evaluated {
            Ok(u) => Ok(masked(u, &plain)),
            Err(d) => {
                let mut e = ReportError::from_diagnostic(d);
                e.redact(&plain);
                Err(e)
            }
        })
    }

    /// Applies the selected units.
    pub async fn apply(
        self: &Arc<Self>,
        selected: &BTreeSet<usize>,
        opts: &ApplyOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<Report, EngineError> {
        // Directories are checked again in every run (see terrace-fs).
        terrace_fs::forget_checked();
        let run_id = new_run_id();
        let started_at = now_rfc3339();
        let revision = match &self.revision {
            Some(r) => PendingRevision::known(r),
            None => PendingRevision::start(&self.project.root),
        };
        let graph = &self.workspace.graph;
        let views: Arc<Mutex<HashMap<String, OutputView>>> = Arc::default();
        let mut pending: HashMap<usize, usize> = selected
            .iter()
            .map(|&i| {
                (
                    i,
                    graph
                        .dependencies(i)
                        .iter()
                        .filter(|d| selected.contains(d))
                        .count(),
                )
            })
            .collect();
        let order = graph.topological_order();
        let mut rank = vec![0; graph.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        let mut ready: Vec<usize> = order
            .iter()
            .copied()
            .filter(|i| pending.get(i) == Some(&0))
            .collect();
        ready.reverse(); // pop() takes the first in topological order
        let mut reports: HashMap<usize, UnitReport> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        // Which unit each task applies, to answer for it if it panics.
        let mut task_unit: HashMap<tokio::task::Id, usize> = HashMap::new();
        let jobs = opts.jobs.max(1);
        loop {
            while tasks.len() < jobs && !opts.interrupt.is_set() {
                let Some(i) = ready.pop() else { break };
                let engine = Arc::clone(self);
                let views = Arc::clone(&views);
                let progress = Arc::clone(&progress);
                let opts = opts.clone();
                let run_id = run_id.clone();
                let revision = revision.clone();
                let handle = tasks.spawn(off_runtime(async move {
                    let r = engine
                        .apply_unit(i, &views, &opts, &run_id, revision, progress)
                        .await;
                    (i, r)
                }));
                task_unit.insert(handle.id(), i);
            }
            let Some(joined) = tasks.join_next_with_id().await else {
                break;
            };
            let (i, report) = match joined {
                Ok((_, done)) => done,
                // A bug in one unit's task fails that unit alone: its
                // siblings go on, and its lock is released here.
                Err(e) => {
                    let i = task_unit[&e.id()];
                    let name = self.workspace.units[i].name.clone();
                    let _ = self.state.unlock(self.environment(), &name, &run_id).await;
                    let mut r = self.blank_report(i, Outcome::Failed);
                    r.error = Some(ReportError {
                        message: format!(
                            "terrace hit a bug while applying `{name}` ({}); the other units went on",
                            panic_message(e)
                        ),
                        hint: Some(
                            "please report it with the output of `terrace -vv apply --unit NAME`"
                                .to_owned(),
                        ),
                        diagnostic: None,
                    });
                    (i, r)
                }
            };
            let report = self.sealed(report);
            progress.finished(&report);
            let ok = !matches!(report.outcome, Outcome::Failed);
            reports.insert(i, report);
            if ok {
                for &d in graph.dependents(i) {
                    if let Some(p) = pending.get_mut(&d) {
                        *p -= 1;
                        if *p == 0 {
                            // Keep topological order among ready units.
                            ready.push(d);
                            ready.sort_by_key(|&x| std::cmp::Reverse(rank[x]));
                        }
                    }
                }
            } else {
                let cause = self.workspace.units[i].name.clone();
                for d in graph.with_dependents([i]) {
                    if d != i && selected.contains(&d) && !reports.contains_key(&d) {
                        pending.remove(&d);
                        let mut r = self.blank_report(d, Outcome::Skipped);
                        r.skipped_because = Some(cause.clone());
                        progress.finished(&r);
                        reports.insert(d, r);
                    }
                }
            }
        }
        let interrupted = opts.interrupt.is_set();
        if interrupted {
            for &i in &order {
                if selected.contains(&i) && !reports.contains_key(&i) {
                    let r = self.blank_report(i, Outcome::Interrupted);
                    progress.finished(&r);
                    reports.insert(i, r);
                }
            }
        }
        let units: Vec<UnitReport> = order.iter().filter_map(|i| reports.remove(i)).collect();
        let report = Report {
            command: opts.command.clone(),
            environment: self.environment().to_owned(),
            units,
            orphans: self.orphans().await?,
            interrupted,
        };
        self.record(&report, &run_id, &started_at, revision.get().await)
            .await;
        self.reuse.save(&self.project.root);
        self.reads.save(&self.project.root);
        Ok(report)
    }

    async fn record(
        &self,
        report: &Report,
        run_id: &str,
        started_at: &str,
        revision: Option<String>,
    ) {
        let run = RunRecord {
            id: run_id.to_owned(),
            command: report.command.clone(),
            environment: report.environment.clone(),
            started_at: started_at.to_owned(),
            finished_at: now_rfc3339(),
            revision,
            interrupted: report.interrupted,
            units: report
                .units
                .iter()
                .map(|u| RunUnit {
                    unit: u.unit.clone(),
                    action: u.action,
                    outcome: u.outcome,
                    error: u.error.as_ref().map(|e| e.message.clone()),
                    duration_ms: u.duration_ms,
                })
                .collect(),
        };
        if let Err(error) = self.state.record_run(&run).await {
            warn!(%error, "could not record the run in history");
        }
    }

    async fn apply_unit(
        &self,
        i: usize,
        views: &Mutex<HashMap<String, OutputView>>,
        opts: &ApplyOptions,
        run_id: &str,
        revision: PendingRevision,
        progress: Arc<dyn Progress>,
    ) -> UnitReport {
        let started = Instant::now();
        let name = self.workspace.units[i].name.clone();
        let lines = {
            let progress = Arc::clone(&progress);
            let unit = name.clone();
            Lines::new(move |line| progress.line(&unit, line))
        };
        let env = self.environment().to_owned();
        progress.started(&name, "apply");
        let mut r = self.blank_report(i, Outcome::Failed);
        let holder = this_holder(&opts.command, run_id);
        // Waiting for another run's lock ends with the interrupt.
        let locked = tokio::select! {
            locked = self.state.lock(&env, &name, &holder, opts.lock_timeout) => locked,
            () = opts.interrupt.wait() => {
                r.outcome = Outcome::Interrupted;
                r.duration_ms = started.elapsed().as_millis() as u64;
                return r;
            }
        };
        match locked {
            Ok(None) => {}
            Ok(Some(gone)) => r.notes.push(format!(
                "took over the lock of {} (pid {} on this host, no longer running)",
                gone.command, gone.pid
            )),
            Err(e) => {
                r.error = Some(ReportError::from_state(e));
                r.duration_ms = started.elapsed().as_millis() as u64;
                return r;
            }
        }
        // Fault injection for the test that a panicking unit fails alone
        // (debug builds only).
        #[cfg(debug_assertions)]
        if std::env::var("TERRACE_FAULT_PANIC_UNIT").is_ok_and(|u| u == name) {
            panic!("fault injected into unit `{name}`");
        }
        let result = self
            .apply_locked(
                i,
                views,
                &UnitRun {
                    run_id,
                    revision: &revision,
                    saved: opts.saved.as_deref(),
                    lines: &lines,
                    force: opts.force,
                    jobs: opts.jobs.max(1),
                },
                &mut r,
            )
            .await;
        if let Err(e) = self.state.unlock(&env, &name, run_id).await {
            warn!(unit = %name, error = %e, "could not release lock");
        }
        if let Err(e) = result {
            r.outcome = Outcome::Failed;
            r.error = Some(e);
        }
        r.duration_ms = started.elapsed().as_millis() as u64;
        r
    }

    async fn apply_locked(
        &self,
        i: usize,
        views: &Mutex<HashMap<String, OutputView>>,
        run: &UnitRun<'_>,
        r: &mut UnitReport,
    ) -> Result<(), ReportError> {
        let UnitRun {
            run_id,
            saved,
            lines,
            force,
            jobs,
            ..
        } = *run;
        let env = self.environment();
        let name = self.workspace.units[i].name.clone();
        // Only this unit's dependencies: copying every output so far would
        // make a large apply quadratic.
        let mut snapshot: HashMap<String, OutputView> = {
            let all = views.lock().unwrap_or_else(|p| p.into_inner());
            self.workspace
                .graph
                .dependencies(i)
                .iter()
                .filter_map(|&d| {
                    let n = &self.workspace.units[d].name;
                    all.get(n).map(|v| (n.clone(), v.clone()))
                })
                .collect()
        };
        self.fill_from_state(i, &mut snapshot)
            .await
            .map_err(ReportError::from_state)?;
        let prior = self
            .state
            .read(env, &name)
            .await
            .map_err(ReportError::from_state)?;
        let (unit, plan) = self
            .plan_unit(i, &snapshot, prior.as_ref(), Some(lines))
            .await?;
        if unit.unknown {
            let missing: Vec<&str> = self
                .workspace
                .graph
                .dependencies(i)
                .iter()
                .map(|&d| self.workspace.units[d].name.as_str())
                .filter(|d| !matches!(snapshot.get(*d), Some(OutputView::Known(..))))
                .collect();
            let mut failed = Vec::new();
            for d in &missing {
                if let Ok(Some(s)) = self.state.read(env, d).await
                    && s.status == UnitStatus::Failed
                {
                    failed.push(*d);
                }
            }
            let never: Vec<&str> = missing
                .iter()
                .copied()
                .filter(|d| !failed.contains(d))
                .collect();
            let mut why = Vec::new();
            if !never.is_empty() {
                why.push(format!(
                    "{} which {} never been applied",
                    never.join(", "),
                    if never.len() == 1 { "has" } else { "have" }
                ));
            }
            if !failed.is_empty() {
                why.push(format!("{} whose last apply failed", failed.join(", ")));
            }
            return Err(ReportError::message(format!(
                "inputs of `{name}` use outputs of {}",
                why.join(", and of ")
            )));
        }
        if plan.action == Action::Deferred {
            return Err(ReportError::message(format!(
                "unit `{name}` could not be planned with its dependencies' outputs: {}",
                plan.notes.join("; ")
            )));
        }
        r.action = Some(plan.action);
        r.changes = plan.changes.clone();
        r.unchanged = plan.unchanged;
        if let Some(saved) = saved {
            let fingerprint = self.fingerprint(&unit, &plan, prior.as_ref());
            let moved = match saved.unit(&name) {
                Some(entry) => {
                    entry.differences(Some(plan.action), &plan.changes, Some(&fingerprint), None)
                }
                None => vec!["it is not in the saved plan".to_owned()],
            };
            if !moved.is_empty() {
                return Err(ReportError {
                    message: format!(
                        "the saved plan no longer holds for `{name}`: {}",
                        moved.join("; ")
                    ),
                    hint: Some("plan again (`terrace plan --out FILE`) and review it".to_owned()),
                    diagnostic: None,
                });
            }
        }
        let input_hash = self.inputs_digest(&unit);
        if plan.action == Action::NoOp
            && let Some(p) = &prior
            && p.status == UnitStatus::Applied
        {
            debug!(unit = %name, "no changes");
            let view = self.applied_outputs(p);
            views.lock().expect("views lock").insert(name, view);
            r.outcome = Outcome::Unchanged;
            return Ok(());
        }
        // An apply that stopped part way still records what it left
        // behind, as a failed apply, so the next plan and prune know it.
        let (applied, failure) = match self
            .driver(&unit.kind)
            .map_err(ReportError::from_unknown)?
            .apply(
                &ApplyContext {
                    root: &self.project.root,
                    lines: Some(lines),
                    force,
                    jobs,
                },
                &plan,
            )
            .await
        {
            Ok(applied) => (applied, None),
            Err(DriverError::Incomplete { applied, message }) => (*applied, Some(message)),
            Err(e) => return Err(ReportError::from_driver(e)),
        };
        // An output that holds a secret value (Terraform echoing a secret
        // input, say) is sensitive whatever the kind said.
        let mut applied = applied;
        let plain = self.plaintexts();
        for (k, v) in &applied.outputs {
            if !applied.sensitive.contains(k) && !plain.sources_in(v).is_empty() {
                applied.sensitive.push(k.clone());
            }
        }
        self.remember_sensitive(&name, &applied.outputs, &applied.sensitive);
        let state = UnitState {
            format: STATE_FORMAT,
            unit: name.clone(),
            kind: unit.kind.clone(),
            layer: unit.layer.clone(),
            environment: env.to_owned(),
            serial: prior.as_ref().map_or(1, |p| p.serial + 1),
            revision: run.revision.get().await,
            input_hash,
            render_hash: plan.render_hash.clone(),
            outputs: applied
                .outputs
                .iter()
                .filter(|(k, _)| !applied.sensitive.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            sensitive_outputs: applied
                .outputs
                .keys()
                .filter(|k| applied.sensitive.contains(k))
                .cloned()
                .collect(),
            inventory: applied.inventory,
            status: if failure.is_some() {
                UnitStatus::Failed
            } else {
                UnitStatus::Applied
            },
            updated_at: now_rfc3339(),
            run_id: run_id.to_owned(),
        };
        self.state
            .write(&state)
            .await
            .map_err(ReportError::from_state)?;
        if let Some(message) = failure {
            return Err(ReportError::message(message));
        }
        views
            .lock()
            .expect("views lock")
            .insert(name, OutputView::Known(applied.outputs, applied.sensitive));
        r.outcome = Outcome::Applied;
        Ok(())
    }

    /// Destroys units, dependents first: the selection, every applied
    /// dependent of it, and the named orphans. With `dry_run`, only plans.
    pub async fn destroy(
        &self,
        selected: &BTreeSet<usize>,
        orphans: &[String],
        opts: &ApplyOptions,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<Report, EngineError> {
        // Directories are checked again in every run (see terrace-fs).
        terrace_fs::forget_checked();
        let run_id = new_run_id();
        let started_at = now_rfc3339();
        let env = self.environment().to_owned();
        let graph = &self.workspace.graph;
        let with_dependents = graph.with_dependents(selected.iter().copied());
        // (unit, its graph index); orphans have none, and their layer is
        // the one in their state.
        let mut names: Vec<(String, Option<usize>)> =
            orphans.iter().map(|o| (o.clone(), None)).collect();
        let mut order = graph.topological_order();
        order.reverse();
        for i in order {
            if with_dependents.contains(&i) {
                names.push((self.workspace.units[i].name.clone(), Some(i)));
            }
        }
        let mut reports = Vec::new();
        // A unit that failed to go keeps what it depends on: those are
        // skipped. An orphan's dependencies are not known, so its failure
        // stops the rest.
        let mut kept: HashMap<usize, String> = HashMap::new();
        let mut stop_all: Option<String> = None;
        for (name, index) in names {
            let layer = index.map(|i| self.workspace.units[i].layer.clone());
            let Some(prior) = self.state.read(&env, &name).await? else {
                continue;
            };
            let layer = layer.unwrap_or_else(|| prior.layer.clone());
            let mut r = UnitReport::new(name.clone(), layer, prior.kind.clone(), Outcome::Planned);
            r.action = Some(Action::Delete);
            if opts.interrupt.is_set() && !dry_run {
                r.outcome = Outcome::Interrupted;
                progress.finished(&r);
                reports.push(r);
                continue;
            }
            let cause = stop_all
                .as_ref()
                .or_else(|| index.and_then(|i| kept.get(&i)));
            if let Some(cause) = cause {
                r.outcome = Outcome::Skipped;
                r.skipped_because = Some(cause.clone());
                progress.finished(&r);
                reports.push(r);
                continue;
            }
            progress.started(&name, if dry_run { "plan destroy" } else { "destroy" });
            let started = Instant::now();
            let result = self
                .destroy_unit(&prior, opts, &run_id, dry_run, &mut r)
                .await;
            if let Err(e) = result {
                r.outcome = Outcome::Failed;
                r.error = Some(e);
                match index {
                    Some(i) => {
                        let mut stack = vec![i];
                        while let Some(j) = stack.pop() {
                            for &d in graph.dependencies(j) {
                                if kept.insert(d, name.clone()).is_none() {
                                    stack.push(d);
                                }
                            }
                        }
                    }
                    None => stop_all = Some(name.clone()),
                }
            }
            r.duration_ms = started.elapsed().as_millis() as u64;
            let r = self.sealed(r);
            progress.finished(&r);
            reports.push(r);
        }
        let report = Report {
            command: if dry_run {
                "plan".to_owned()
            } else {
                opts.command.clone()
            },
            environment: env,
            units: reports,
            orphans: Vec::new(),
            interrupted: opts.interrupt.is_set() && !dry_run,
        };
        if !dry_run {
            self.record(&report, &run_id, &started_at, None).await;
        }
        Ok(report)
    }

    async fn destroy_unit(
        &self,
        prior: &UnitState,
        opts: &ApplyOptions,
        run_id: &str,
        dry_run: bool,
        r: &mut UnitReport,
    ) -> Result<(), ReportError> {
        let env = self.environment();
        // A unit still in the repository is evaluated (its dependencies are
        // destroyed after it), so kinds that need their inputs to destroy
        // (terraform variables) have them.
        let unit = match self.workspace.index_of(&prior.unit) {
            Some(i) => {
                let mut views = HashMap::new();
                self.fill_from_state(i, &mut views)
                    .await
                    .map_err(ReportError::from_state)?;
                self.workspace
                    .evaluate(&self.project, i, &views, Some(self.secrets.as_ref()))
                    .ok()
            }
            None => None,
        };
        let ctx = DestroyContext {
            root: &self.project.root,
            project: &self.project.file.name,
            environment: env,
            prior,
            unit: unit.as_ref(),
            targets: &self.workspace.targets,
            volumes: opts.volumes,
            state: Some(&self.project.file.state),
            secrets: Some(self.secrets.as_ref()),
        };
        let driver = self
            .driver(&prior.kind)
            .map_err(ReportError::from_unknown)?;
        let plan = driver
            .plan_destroy(&ctx)
            .await
            .map_err(ReportError::from_driver)?;
        r.changes = plan.changes.clone();
        r.notes.extend(plan.notes.iter().cloned());
        if dry_run {
            return Ok(());
        }
        let holder = this_holder(&opts.command, run_id);
        if let Some(gone) = self
            .state
            .lock(env, &prior.unit, &holder, opts.lock_timeout)
            .await
            .map_err(ReportError::from_state)?
        {
            r.notes.push(format!(
                "took over the lock of {} (pid {} on this host, no longer running)",
                gone.command, gone.pid
            ));
        }
        let result = async {
            driver
                .apply(
                    &ApplyContext {
                        root: &self.project.root,
                        lines: None,
                        force: false,
                        jobs: opts.jobs.max(1),
                    },
                    &plan,
                )
                .await
                .map_err(ReportError::from_driver)?;
            self.state
                .remove(env, &prior.unit)
                .await
                .map_err(ReportError::from_state)
        }
        .await;
        let _ = self.state.unlock(env, &prior.unit, run_id).await;
        result?;
        r.outcome = Outcome::Destroyed;
        Ok(())
    }

    /// A unit's outputs from state, if it was applied.
    /// Every applied unit's outputs as its dependents get them (read from
    /// where the kind keeps them, e.g. a Terraform state file), with
    /// sensitive values masked as in the state record.
    pub async fn all_outputs(&self) -> Result<Map<String, Value>, EngineError> {
        let mut all = Map::new();
        for u in &self.workspace.units {
            let Some(record) = self.state.read(self.environment(), &u.name).await? else {
                continue;
            };
            if record.status != UnitStatus::Applied {
                continue;
            }
            let OutputView::Known(mut outputs, _) = self.applied_outputs(&record) else {
                continue;
            };
            for k in &record.sensitive_outputs {
                outputs.insert(k.clone(), Value::String(SENSITIVE.to_owned()));
            }
            all.insert(u.name.clone(), Value::Object(outputs));
        }
        Ok(all)
    }

    pub async fn outputs(&self, name: &str) -> Result<Option<Map<String, Value>>, EngineError> {
        Ok(self.state.read(self.environment(), name).await?.map(|s| {
            let mut outputs = s.outputs;
            for k in s.sensitive_outputs {
                outputs.insert(k, Value::String(SENSITIVE.to_owned()));
            }
            outputs
        }))
    }
}

/// `unit` with its secret inputs and settings shown as sensitive, and
/// any other secret value redacted.
fn masked(mut unit: ResolvedUnit, plain: &Plaintexts) -> ResolvedUnit {
    for name in unit.sensitive_inputs.keys() {
        if let Some(v) = unit.inputs.get_mut(name) {
            *v = Value::String(terrace_core::secrets::REDACTED.to_owned());
        }
    }
    for v in unit.inputs.values_mut() {
        plain.redact_value(v);
    }
    if let Some(settings) = unit.settings.as_object_mut() {
        for name in unit.sensitive_settings.keys() {
            if let Some(v) = settings.get_mut(name) {
                *v = Value::String(terrace_core::secrets::REDACTED.to_owned());
            }
        }
    }
    plain.redact_value(&mut unit.settings);
    unit
}

/// Runs a unit's plan or apply on a thread of the blocking pool, its
/// async parts (requests, child programs, timers) still driven by the
/// runtime. Rendering, decryption, kustomize builds and fsyncs are
/// synchronous; here they never hold one of the runtime's few threads, so
/// `-j N` works on N units at once. A panic comes back out as the task's.
async fn off_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let handle = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || handle.block_on(work)).await {
        Ok(done) => done,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("a unit's work was cancelled: {e}"),
        },
    }
}

/// What a panicking task said, if it said it in a string.
fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    panic_text(e.into_panic().as_ref())
}

/// The text of a panic's payload, when it is one.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// Calls `f` with every string (and number) in `v`.
fn collect_strings(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Number(n) => f(&n.to_string()),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, f)),
        Value::Object(m) => m.values().for_each(|v| collect_strings(v, f)),
        _ => {}
    }
}

/// Outputs whose values a state record does not hold.
fn sensitive_names(state: &UnitState) -> Vec<String> {
    state.sensitive_outputs.clone()
}

/// The plan of a unit some of whose inputs are known only after a
/// dependency is applied: deferred, with the inputs known so far as notes
/// (secret ones shown as sensitive).
pub fn deferred_plan(unit: &ResolvedUnit) -> UnitPlan {
    let waiting = if unit.waiting_for.is_empty() {
        "a dependency".to_owned()
    } else {
        unit.waiting_for.join(", ")
    };
    let mut notes = vec![format!("deferred: waiting for {waiting} to be applied")];
    for k in &unit.unknown_inputs {
        notes.push(format!("input {k} = {}", terrace_core::expr::UNKNOWN));
    }
    for (k, v) in &unit.inputs {
        let shown = if unit.sensitive_inputs.contains_key(k) {
            SENSITIVE.to_owned()
        } else {
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        };
        notes.push(format!("input {k} = {shown}"));
    }
    UnitPlan {
        action: Action::Deferred,
        changes: Vec::new(),
        unchanged: 0,
        outputs: None,
        render_hash: String::new(),
        notes,
        payload: None,
    }
}

/// Renders a unit with its kind's driver (for `validate`).
pub async fn render_with_driver(
    project: &Project,
    ctx: &UnitContext<'_>,
) -> Result<Rendered, DriverError> {
    let kind = project
        .kinds
        .of(&ctx.unit.kind)
        .map_err(|e| DriverError::Other(Box::new(e)))?;
    kind.driver().render(ctx).await
}
