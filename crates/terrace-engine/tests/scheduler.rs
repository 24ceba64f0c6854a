//! The engine's scheduler on its own: plan, apply and destroy over small
//! projects whose units are all of a fake kind, `fake`, so the tests see
//! what the engine does (order, concurrency, outputs handed from unit to
//! unit, failures, panics, locks, interrupts, state) and nothing of a real
//! driver.
//!
//! The fake is told what to do by the unit's own settings block:
//!
//! ```yaml
//! fake:
//!   outputs: {port: 8080}   # what apply leaves as outputs
//!   planOutputs: true       # plan already knows them (else "after apply")
//!   fail: apply             # or `plan`, `destroy`: the driver returns an error there
//!   panic: true             # apply panics
//!   panicPlan: true         # plan panics
//!   say: "a line"           # apply prints this line, as a program would
//!   sleepMs: 30             # plan and apply take this long
//!   deferredWhenUnknown: true # plan says `deferred` while an input is unknown
//!   stable: true            # plan says `no-op` once the unit has state
//!   incompleteTimes: 1      # the first N applies stop part way
//! ```
//!
//! and writes what it saw into a journal kept per project root (each test
//! has its own temporary directory), so tests running side by side in one
//! process (`cargo test`) or in separate ones (nextest) never mix theirs.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tempfile::TempDir;
use terrace_core::Seg;
use terrace_core::driver::{
    Applied, ApplyContext, BoxFuture, DestroyContext, Driver, DriverError, Rendered, UnitContext,
};
use terrace_core::expr::SecretError;
use terrace_core::kind::{Registry, TypedKind, parse_settings};
use terrace_core::plan::{Action, Change, UnitPlan};
use terrace_core::secrets::SecretSource;
use terrace_core::state::{InventoryItem, UnitStatus};
use terrace_engine::run::{ApplyOptions, Interrupt, Outcome, Progress, Quiet, Report, UnitReport};
use terrace_engine::{Engine, EngineError, Project, Selection};
use terrace_state::{LocalBackend, StateBackend, this_holder};

// ---------------------------------------------------------------------------
// The fake kind
// ---------------------------------------------------------------------------

/// What the fake driver is told to do, from the unit's `fake:` block.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct FakeSettings {
    outputs: Map<String, Value>,
    plan_outputs: bool,
    fail: Option<Phase>,
    panic: bool,
    panic_plan: bool,
    say: Option<String>,
    sleep_ms: u64,
    deferred_when_unknown: bool,
    stable: bool,
    incomplete_times: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Phase {
    Plan,
    Apply,
    Destroy,
}

/// What the driver was handed for one unit.
#[derive(Debug, Clone)]
struct Seen {
    unit: String,
    inputs: Map<String, Value>,
    unknown: bool,
    /// The prior state's status and how many inventory items it held.
    prior: Option<(UnitStatus, usize)>,
}

#[derive(Debug, Clone)]
enum Event {
    Planned(Seen),
    /// Apply began, with what the plan it carries out saw.
    ApplyStarted(Seen),
    ApplyFinished(String),
    Destroyed(String),
}

impl Event {
    /// `verb:unit`, for ordering assertions.
    fn label(&self) -> String {
        match self {
            Event::Planned(s) => format!("plan:{}", s.unit),
            Event::ApplyStarted(s) => format!("start:{}", s.unit),
            Event::ApplyFinished(u) => format!("end:{u}"),
            Event::Destroyed(u) => format!("destroy:{u}"),
        }
    }
}

/// Everything the fake saw in one project, with how many plans and
/// applies ran at once.
#[derive(Debug, Default)]
struct Journal {
    events: Vec<Event>,
    planning: usize,
    max_planning: usize,
    applying: usize,
    max_applying: usize,
}

/// Journals by project root: the root is unique per test.
static JOURNALS: Mutex<BTreeMap<PathBuf, Journal>> = Mutex::new(BTreeMap::new());

/// Runs `f` on the journal of the project at `root`. Never held across an
/// `.await`, and never while the fake panics.
fn journal<T>(root: &Path, f: impl FnOnce(&mut Journal) -> T) -> T {
    let mut all = JOURNALS.lock().unwrap_or_else(PoisonError::into_inner);
    f(all.entry(root.to_owned()).or_default())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Apply,
    Destroy,
}

/// The fake's payload in a plan: what apply needs, since apply is handed
/// only the plan.
#[derive(Debug)]
struct FakePlan {
    op: Op,
    seen: Seen,
    settings: FakeSettings,
}

#[derive(Debug)]
struct FakeDriver;

fn fake_driver() -> Arc<dyn Driver> {
    Arc::new(FakeDriver)
}

fn failure(unit: &str, phase: &str) -> DriverError {
    DriverError::Other(format!("the fake driver failed to {phase} `{unit}`, as told").into())
}

fn inventory_item(unit: &str) -> InventoryItem {
    InventoryItem::TerraformResource {
        address: format!("fake/{unit}"),
    }
}

async fn pause(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn payload(plan: FakePlan) -> Option<Arc<dyn Any + Send + Sync>> {
    Some(Arc::new(plan))
}

impl Driver for FakeDriver {
    fn render<'a>(
        &'a self,
        _ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<Rendered, DriverError>> {
        Box::pin(async { Ok(Rendered::default()) })
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(async move {
            let unit = ctx.unit;
            let settings = parse_settings::<FakeSettings>(&unit.settings)
                .map_err(|e| DriverError::Other(Box::new(e)))?;
            let seen = Seen {
                unit: unit.name.clone(),
                inputs: unit.inputs.clone(),
                unknown: unit.unknown,
                prior: ctx.prior.map(|p| (p.status, p.inventory.len())),
            };
            journal(ctx.root, |j| {
                j.events.push(Event::Planned(seen.clone()));
                j.planning += 1;
                j.max_planning = j.max_planning.max(j.planning);
            });
            pause(settings.sleep_ms).await;
            journal(ctx.root, |j| j.planning -= 1);
            if settings.panic_plan {
                panic!("the fake driver panicked while planning `{}`", unit.name);
            }
            if settings.fail == Some(Phase::Plan) {
                return Err(failure(&unit.name, "plan"));
            }
            let action = if settings.deferred_when_unknown && unit.unknown {
                Action::Deferred
            } else {
                match ctx.prior {
                    None => Action::Create,
                    Some(_) if settings.stable => Action::NoOp,
                    Some(_) => Action::Update,
                }
            };
            let changes = if matches!(action, Action::NoOp | Action::Deferred) {
                Vec::new()
            } else {
                vec![Change {
                    object: None,
                    address: format!("fake/{}", unit.name),
                    action,
                    diff: None,
                }]
            };
            let outputs = settings.plan_outputs.then(|| settings.outputs.clone());
            Ok(UnitPlan {
                action,
                changes,
                unchanged: 0,
                outputs,
                render_hash: "sha256:fake".to_owned(),
                notes: Vec::new(),
                payload: payload(FakePlan {
                    op: Op::Apply,
                    seen,
                    settings,
                }),
            })
        })
    }

    fn plan_destroy<'a>(
        &'a self,
        ctx: &'a DestroyContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(async move {
            let unit = ctx.prior.unit.clone();
            let settings = ctx
                .unit
                .and_then(|u| parse_settings::<FakeSettings>(&u.settings).ok())
                .unwrap_or_default();
            if settings.fail == Some(Phase::Destroy) {
                return Err(failure(&unit, "destroy"));
            }
            Ok(UnitPlan {
                action: Action::Delete,
                changes: vec![Change {
                    object: None,
                    address: format!("fake/{unit}"),
                    action: Action::Delete,
                    diff: None,
                }],
                unchanged: 0,
                outputs: None,
                render_hash: ctx.prior.render_hash.clone(),
                notes: Vec::new(),
                payload: payload(FakePlan {
                    op: Op::Destroy,
                    seen: Seen {
                        unit,
                        inputs: Map::new(),
                        unknown: false,
                        prior: Some((ctx.prior.status, ctx.prior.inventory.len())),
                    },
                    settings: FakeSettings::default(),
                }),
            })
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ApplyContext<'a>,
        plan: &'a UnitPlan,
    ) -> BoxFuture<'a, Result<Applied, DriverError>> {
        Box::pin(async move {
            let root = ctx.root;
            let Some(fake) = plan.payload::<FakePlan>() else {
                return Err(DriverError::Other(
                    "a plan the fake driver did not make".into(),
                ));
            };
            let name = fake.seen.unit.as_str();
            if let (Some(line), Some(lines)) = (&fake.settings.say, ctx.lines) {
                lines.send(line);
            }
            if fake.op == Op::Destroy {
                journal(root, |j| j.events.push(Event::Destroyed(name.to_owned())));
                return Ok(Applied::default());
            }
            // 1 for the first apply of this unit in this project.
            let attempt = journal(root, |j| {
                j.events.push(Event::ApplyStarted(fake.seen.clone()));
                j.applying += 1;
                j.max_applying = j.max_applying.max(j.applying);
                j.events
                    .iter()
                    .filter(|e| matches!(e, Event::ApplyStarted(s) if s.unit == name))
                    .count()
            });
            let s = &fake.settings;
            pause(s.sleep_ms).await;
            journal(root, |j| {
                j.applying -= 1;
                j.events.push(Event::ApplyFinished(name.to_owned()));
            });
            if s.panic {
                panic!("the fake driver panicked while applying `{name}`");
            }
            if s.fail == Some(Phase::Apply) {
                return Err(failure(name, "apply"));
            }
            if attempt <= s.incomplete_times {
                return Err(DriverError::Incomplete {
                    applied: Box::new(Applied {
                        outputs: Map::new(),
                        inventory: vec![inventory_item(name)],
                        sensitive: Vec::new(),
                    }),
                    message: format!("the apply of `{name}` stopped part way"),
                });
            }
            Ok(Applied {
                outputs: s.outputs.clone(),
                inventory: vec![inventory_item(name)],
                sensitive: Vec::new(),
            })
        })
    }
}

/// A secret store with no secrets: these projects use none.
#[derive(Debug)]
struct NoSecrets;

impl SecretSource for NoSecrets {
    fn value(&self, _file: &str, _key: &[Seg]) -> Result<Value, SecretError> {
        Err(SecretError::Unsupported)
    }

    fn open_documents(&self, _file: &Path, _text: &str) -> Result<Option<Vec<Value>>, SecretError> {
        Ok(None)
    }

    fn seal(
        &self,
        _docs: &[Value],
        _sources: &[PathBuf],
        _rule_from: Option<&Path>,
        _prior: Option<&str>,
    ) -> Result<String, SecretError> {
        Err(SecretError::Unsupported)
    }
}

/// Progress that notes every unit reported finished, in order.
#[derive(Debug, Default)]
struct Recorder {
    finished: Mutex<Vec<String>>,
    lines: Mutex<Vec<(String, String)>>,
}

impl Progress for Recorder {
    fn finished(&self, report: &UnitReport) {
        self.finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(report.unit.clone());
    }

    fn line(&self, unit: &str, line: &str) {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((unit.to_owned(), line.to_owned()));
    }
}

/// Progress that interrupts the run once `unit` is reported finished.
#[derive(Debug)]
struct InterruptAfter {
    unit: &'static str,
    interrupt: Interrupt,
}

impl Progress for InterruptAfter {
    fn finished(&self, report: &UnitReport) {
        if report.unit == self.unit {
            self.interrupt.trigger();
        }
    }
}

// ---------------------------------------------------------------------------
// Projects and runs
// ---------------------------------------------------------------------------

/// A project in a temporary directory: layers `base` and `apps`, and one
/// directory per `(name, unit.yaml)`; the unit takes the directory's name.
fn project(units: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    fs_err::write(
        dir.path().join("terrace.yaml"),
        "name: t\nlayers: [base, apps]\n",
    )
    .expect("terrace.yaml written");
    for &(name, body) in units {
        let unit_dir = dir.path().join(name);
        fs_err::create_dir_all(&unit_dir).expect("unit directory created");
        fs_err::write(unit_dir.join("unit.yaml"), body).expect("unit.yaml written");
    }
    dir
}

/// The engine over the project at `root`, with the fake kind, local state
/// under the project and no secrets.
fn open(root: &Path) -> Arc<Engine> {
    let kinds = Registry::new().with(TypedKind::<Value>::new(
        "fake",
        "a driver the scheduler tests steer through its settings",
        None,
        fake_driver(),
    ));
    let project = Project::load(root, Arc::new(kinds)).expect("project loads");
    let state: Arc<dyn StateBackend> = Arc::new(LocalBackend::new(project.state_dir()));
    let engine = Engine::new(project, None, state, Arc::new(NoSecrets)).expect("engine opens");
    Arc::new(engine)
}

fn options(jobs: usize) -> ApplyOptions {
    ApplyOptions {
        jobs,
        ..ApplyOptions::default()
    }
}

fn select(engine: &Engine, units: &[&str]) -> std::collections::BTreeSet<usize> {
    engine
        .select(&Selection {
            units: units.iter().map(|u| (*u).to_owned()).collect(),
            ..Selection::default()
        })
        .expect("the selected units exist")
}

async fn plan_all(engine: &Arc<Engine>) -> Report {
    let all = select(engine, &[]);
    engine.plan(&all, &Quiet, 4).await.expect("plan runs")
}

async fn apply_all(engine: &Arc<Engine>, jobs: usize) -> Report {
    let all = select(engine, &[]);
    engine
        .apply(&all, &options(jobs), Arc::new(Quiet))
        .await
        .expect("apply runs")
}

fn unit<'r>(report: &'r Report, name: &str) -> &'r UnitReport {
    report
        .units
        .iter()
        .find(|u| u.unit == name)
        .unwrap_or_else(|| panic!("no report for `{name}` in {:?}", names(report)))
}

fn names(report: &Report) -> Vec<&str> {
    report.units.iter().map(|u| u.unit.as_str()).collect()
}

fn error_of(report: &Report, name: &str) -> String {
    unit(report, name)
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_else(|| panic!("`{name}` has no error"))
}

fn labels(engine: &Engine) -> Vec<String> {
    journal(&engine.project.root, |j| {
        j.events.iter().map(Event::label).collect()
    })
}

fn position(labels: &[String], label: &str) -> usize {
    labels
        .iter()
        .position(|l| l == label)
        .unwrap_or_else(|| panic!("`{label}` not in {labels:?}"))
}

/// What the fake was handed when planning `name`, oldest first.
fn plans_of(engine: &Engine, name: &str) -> Vec<Seen> {
    journal(&engine.project.root, |j| {
        j.events
            .iter()
            .filter_map(|e| match e {
                Event::Planned(s) if s.unit == name => Some(s.clone()),
                _ => None,
            })
            .collect()
    })
}

/// What the plans carried out by apply had seen for `name`, oldest first.
fn applies_of(engine: &Engine, name: &str) -> Vec<Seen> {
    journal(&engine.project.root, |j| {
        j.events
            .iter()
            .filter_map(|e| match e {
                Event::ApplyStarted(s) if s.unit == name => Some(s.clone()),
                _ => None,
            })
            .collect()
    })
}

/// Asserts nobody holds `name`'s lock and another run can take it.
async fn assert_unlocked(engine: &Engine, name: &str) {
    let state = engine.state();
    let env = engine.environment();
    let holder = state.lock_holder(env, name).await.expect("lock readable");
    assert!(holder.is_none(), "`{name}` is still locked by {holder:?}");
    let other = this_holder("test", "another-run");
    let taken = state.lock(env, name, &other, Duration::ZERO).await;
    assert!(
        matches!(taken, Ok(None)),
        "another run could not take the lock of `{name}`: {taken:?}"
    );
    state
        .unlock(env, name, &other.run_id)
        .await
        .expect("lock released");
}

// ---------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_output_reaches_its_dependent_typed() {
    let dir = project(&[
        (
            "a",
            "layer: base\nkind: fake\nfake:\n  outputs: {port: 8080}\n",
        ),
        (
            "b",
            "layer: apps\nkind: fake\ninputs:\n  port: \"${unit.a.outputs.port}\"\n",
        ),
    ]);
    let engine = open(dir.path());

    let report = apply_all(&engine, 4).await;

    assert_eq!(unit(&report, "a").outcome, Outcome::Applied);
    assert_eq!(unit(&report, "b").outcome, Outcome::Applied);
    let seen = applies_of(&engine, "b");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].inputs.get("port"), Some(&json!(8080)));
    assert!(
        seen[0].inputs["port"].is_u64(),
        "the port stays a number: {:?}",
        seen[0].inputs
    );
    assert!(!seen[0].unknown);
    let state = engine.state();
    let a = state
        .read(engine.environment(), "a")
        .await
        .expect("state readable")
        .expect("a has state");
    assert_eq!(a.outputs.get("port"), Some(&json!(8080)));
    assert_eq!(a.status, UnitStatus::Applied);
    let b = state
        .read(engine.environment(), "b")
        .await
        .expect("state readable")
        .expect("b has state");
    assert_eq!(b.status, UnitStatus::Applied);
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_hands_planned_outputs_to_dependents() {
    let dir = project(&[
        (
            "a",
            "layer: base\nkind: fake\nfake:\n  planOutputs: true\n  outputs: {port: 8080}\n",
        ),
        (
            "b",
            "layer: apps\nkind: fake\ninputs:\n  port: \"${unit.a.outputs.port}\"\n",
        ),
    ]);
    let engine = open(dir.path());

    let report = plan_all(&engine).await;

    assert_eq!(unit(&report, "a").action, Some(Action::Create));
    let b = plans_of(&engine, "b");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].inputs.get("port"), Some(&json!(8080)));
    assert!(!b[0].unknown);
    assert!(!unit(&report, "b").unknown_inputs);
    // Plan applies nothing and writes no state.
    assert!(applies_of(&engine, "a").is_empty());
    let state = engine
        .state()
        .read(engine.environment(), "a")
        .await
        .expect("state readable");
    assert!(state.is_none(), "plan wrote state: {state:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_waiting_for_outputs_is_deferred_and_its_driver_never_sees_a_placeholder() {
    let dir = project(&[
        (
            "a",
            "layer: base\nkind: fake\nfake:\n  outputs: {port: 8080}\n",
        ),
        (
            "b",
            "layer: apps\nkind: fake\ninputs:\n  port: \"${unit.a.outputs.port}\"\n",
        ),
    ]);
    let engine = open(dir.path());

    let report = plan_all(&engine).await;

    // The engine defers it: the driver's plan is never handed the
    // placeholder of an unknown value.
    let b = plans_of(&engine, "b");
    assert!(b.is_empty(), "{b:?}");
    let b = unit(&report, "b");
    assert_eq!(b.outcome, Outcome::Planned);
    assert_eq!(b.action, Some(Action::Deferred));
    assert!(b.unknown_inputs);
    assert!(
        b.notes
            .iter()
            .any(|n| n.contains("deferred: waiting for a")),
        "{:?}",
        b.notes
    );
    // The input is named as unknown, not given a value.
    assert!(
        b.notes
            .iter()
            .any(|n| n == "input port = (known after apply)"),
        "{:?}",
        b.notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replan_after_apply_is_all_no_op_and_a_reapply_changes_nothing() {
    let dir = project(&[
        (
            "a",
            "layer: base\nkind: fake\nfake:\n  stable: true\n  outputs: {port: 8080}\n",
        ),
        (
            "b",
            "layer: apps\nkind: fake\ninputs:\n  port: \"${unit.a.outputs.port}\"\nfake:\n  stable: true\n",
        ),
    ]);
    let engine = open(dir.path());
    let first = apply_all(&engine, 4).await;
    assert_eq!(first.exit_code(), 0, "{first:?}");

    let plan = plan_all(&engine).await;

    assert_eq!(unit(&plan, "a").action, Some(Action::NoOp));
    assert_eq!(unit(&plan, "b").action, Some(Action::NoOp));
    assert!(!plan.has_changes());
    assert_eq!(plan.exit_code(), 0);
    // `a` plans no-op without outputs: `b` gets them from a's state.
    let b = plans_of(&engine, "b");
    let last = b.last().expect("b was planned");
    assert!(!last.unknown, "{last:?}");
    assert_eq!(last.inputs.get("port"), Some(&json!(8080)));

    let again = apply_all(&engine, 4).await;

    assert_eq!(unit(&again, "a").outcome, Outcome::Unchanged);
    assert_eq!(unit(&again, "b").outcome, Outcome::Unchanged);
    assert_eq!(applies_of(&engine, "a").len(), 1);
    assert_eq!(applies_of(&engine, "b").len(), 1);
}

// ---------------------------------------------------------------------------
// Failures, panics, partial applies, locks
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_skips_only_its_dependents() {
    let dir = project(&[
        ("a", "layer: base\nkind: fake\nfake:\n  fail: apply\n"),
        ("b", "layer: apps\nkind: fake\ndependsOn: [a]\n"),
        ("c", "layer: base\nkind: fake\n"),
        ("d", "layer: apps\nkind: fake\ndependsOn: [b]\n"),
    ]);
    let engine = open(dir.path());
    let progress = Arc::new(Recorder::default());

    let report = engine
        .apply(&select(&engine, &[]), &options(2), progress.clone())
        .await
        .expect("apply runs");

    assert_eq!(unit(&report, "a").outcome, Outcome::Failed);
    assert!(
        error_of(&report, "a").contains("failed to apply `a`"),
        "{}",
        error_of(&report, "a")
    );
    for skipped in ["b", "d"] {
        let r = unit(&report, skipped);
        assert_eq!(r.outcome, Outcome::Skipped, "{skipped}");
        assert_eq!(r.skipped_because.as_deref(), Some("a"), "{skipped}");
        assert!(applies_of(&engine, skipped).is_empty(), "{skipped} applied");
        assert!(plans_of(&engine, skipped).is_empty(), "{skipped} planned");
    }
    assert_eq!(unit(&report, "c").outcome, Outcome::Applied);
    assert_ne!(report.exit_code(), 0);
    let mut finished = progress
        .finished
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    finished.sort();
    assert_eq!(finished, ["a", "b", "c", "d"], "each unit reported once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_failure_skips_its_dependents_in_the_plan() {
    let dir = project(&[
        ("a", "layer: base\nkind: fake\nfake:\n  fail: plan\n"),
        ("b", "layer: apps\nkind: fake\ndependsOn: [a]\n"),
        ("c", "layer: base\nkind: fake\n"),
    ]);
    let engine = open(dir.path());

    let report = plan_all(&engine).await;

    assert_eq!(unit(&report, "a").outcome, Outcome::Failed);
    assert!(error_of(&report, "a").contains("failed to plan `a`"));
    assert_eq!(unit(&report, "b").outcome, Outcome::Skipped);
    assert_eq!(unit(&report, "b").skipped_because.as_deref(), Some("a"));
    assert!(plans_of(&engine, "b").is_empty());
    assert_eq!(unit(&report, "c").outcome, Outcome::Planned);
    assert_eq!(unit(&report, "c").action, Some(Action::Create));
    assert_eq!(report.exit_code(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_driver_fails_its_unit_alone() {
    let dir = project(&[
        ("p", "layer: base\nkind: fake\nfake:\n  panic: true\n"),
        ("q", "layer: apps\nkind: fake\ndependsOn: [p]\n"),
        ("c", "layer: base\nkind: fake\nfake:\n  sleepMs: 20\n"),
    ]);
    let engine = open(dir.path());

    let result = engine
        .apply(&select(&engine, &[]), &options(2), Arc::new(Quiet))
        .await;

    let report = result.expect("a panic in one unit does not fail the run");
    assert_eq!(unit(&report, "p").outcome, Outcome::Failed);
    let message = error_of(&report, "p");
    assert!(
        message.contains("panicked while applying `p`"),
        "the panic's own message is kept: {message}"
    );
    assert_eq!(unit(&report, "q").outcome, Outcome::Skipped);
    assert_eq!(unit(&report, "q").skipped_because.as_deref(), Some("p"));
    assert!(applies_of(&engine, "q").is_empty());
    assert_eq!(unit(&report, "c").outcome, Outcome::Applied);
    assert_ne!(report.exit_code(), 0);
    assert_unlocked(&engine, "p").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_apply_is_recorded_as_failed_and_applied_again() {
    let dir = project(&[(
        "a",
        "layer: base\nkind: fake\nfake:\n  stable: true\n  incompleteTimes: 1\n  outputs: {port: 8080}\n",
    )]);
    let engine = open(dir.path());

    let first = apply_all(&engine, 1).await;

    assert_eq!(unit(&first, "a").outcome, Outcome::Failed);
    assert!(error_of(&first, "a").contains("stopped part way"));
    let state = engine
        .state()
        .read(engine.environment(), "a")
        .await
        .expect("state readable")
        .expect("a partial apply leaves a record");
    assert_eq!(state.status, UnitStatus::Failed);
    assert_eq!(state.inventory, [inventory_item("a")]);
    assert_eq!(state.serial, 1);
    assert_unlocked(&engine, "a").await;

    // The next plan hands the driver the failed record and what it left,
    // and says the unit is applied again although the driver sees no
    // change.
    let plan = plan_all(&engine).await;
    assert_eq!(unit(&plan, "a").action, Some(Action::Update));
    assert!(
        unit(&plan, "a")
            .notes
            .iter()
            .any(|n| n.contains("last apply failed part way")),
        "{:?}",
        unit(&plan, "a").notes
    );
    let planned = plans_of(&engine, "a");
    assert_eq!(
        planned.last().and_then(|s| s.prior),
        Some((UnitStatus::Failed, 1))
    );

    // The fake plans no-op over any prior state; a failed record is
    // applied again all the same.
    let second = apply_all(&engine, 1).await;

    assert_eq!(unit(&second, "a").outcome, Outcome::Applied);
    assert_eq!(applies_of(&engine, "a").len(), 2);
    let state = engine
        .state()
        .read(engine.environment(), "a")
        .await
        .expect("state readable")
        .expect("a has state");
    assert_eq!(state.status, UnitStatus::Applied);
    assert_eq!(state.serial, 2);
    assert_eq!(state.outputs.get("port"), Some(&json!(8080)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lock_is_released_after_failures_and_panics() {
    let dir = project(&[
        ("fails", "layer: base\nkind: fake\nfake:\n  fail: apply\n"),
        ("panics", "layer: base\nkind: fake\nfake:\n  panic: true\n"),
        ("misplans", "layer: base\nkind: fake\nfake:\n  fail: plan\n"),
        (
            "partial",
            "layer: base\nkind: fake\nfake:\n  incompleteTimes: 1\n",
        ),
        ("works", "layer: base\nkind: fake\n"),
    ]);
    let engine = open(dir.path());

    let report = apply_all(&engine, 2).await;

    for failed in ["fails", "panics", "misplans", "partial"] {
        assert_eq!(unit(&report, failed).outcome, Outcome::Failed, "{failed}");
    }
    assert_eq!(unit(&report, "works").outcome, Outcome::Applied);
    for name in ["fails", "panics", "misplans", "partial", "works"] {
        assert_unlocked(&engine, name).await;
    }
}

// ---------------------------------------------------------------------------
// Order and concurrency
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_applies_in_graph_order() {
    // Names in the reverse of the chain, so name order cannot pass for
    // graph order.
    let dir = project(&[
        ("zeta", "layer: base\nkind: fake\nfake:\n  sleepMs: 10\n"),
        (
            "mid",
            "layer: base\nkind: fake\ndependsOn: [zeta]\nfake:\n  sleepMs: 10\n",
        ),
        (
            "alpha",
            "layer: base\nkind: fake\ndependsOn: [mid]\nfake:\n  sleepMs: 10\n",
        ),
        ("solo", "layer: base\nkind: fake\nfake:\n  sleepMs: 10\n"),
    ]);
    let engine = open(dir.path());

    let report = apply_all(&engine, 4).await;

    assert_eq!(report.exit_code(), 0, "{report:?}");
    let seen = labels(&engine);
    assert!(
        position(&seen, "end:zeta") < position(&seen, "start:mid"),
        "{seen:?}"
    );
    assert!(
        position(&seen, "end:mid") < position(&seen, "start:alpha"),
        "{seen:?}"
    );
    // The report lists units in graph order too.
    let order = names(&report);
    let at = |n: &str| order.iter().position(|u| *u == n).expect("reported");
    assert!(
        at("zeta") < at("mid") && at("mid") < at("alpha"),
        "{order:?}"
    );
}

/// Six independent units that each take a while to apply.
fn six_slow_units() -> TempDir {
    let units: Vec<(String, &str)> = (1..=6)
        .map(|i| {
            (
                format!("u{i}"),
                "layer: base\nkind: fake\nfake:\n  sleepMs: 30\n",
            )
        })
        .collect();
    let units: Vec<(&str, &str)> = units.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    project(&units)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_bounds_the_applies_running_at_once() {
    let dir = six_slow_units();
    let engine = open(dir.path());

    let report = apply_all(&engine, 2).await;

    assert_eq!(report.units.len(), 6);
    assert!(report.units.iter().all(|u| u.outcome == Outcome::Applied));
    let max = journal(&engine.project.root, |j| j.max_applying);
    assert!((1..=2).contains(&max), "{max} applies ran at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_applies_one_unit_at_a_time() {
    let dir = six_slow_units();
    let engine = open(dir.path());

    let report = apply_all(&engine, 1).await;

    assert!(report.units.iter().all(|u| u.outcome == Outcome::Applied));
    let max = journal(&engine.project.root, |j| j.max_applying);
    assert_eq!(max, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_plans_one_unit_at_a_time() {
    let dir = six_slow_units();
    let engine = open(dir.path());

    let report = engine
        .plan(&select(&engine, &[]), &Quiet, 1)
        .await
        .expect("plan runs");

    assert_eq!(report.units.len(), 6);
    let max = journal(&engine.project.root, |j| j.max_planning);
    assert_eq!(max, 1);
}

// ---------------------------------------------------------------------------
// Deferred units and selections
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_unit_is_planned_and_its_dependents_still_plan() {
    let dir = project(&[
        (
            "a",
            "layer: base\nkind: fake\nfake:\n  outputs: {endpoint: \"10.0.0.1\"}\n",
        ),
        (
            "b",
            "layer: apps\nkind: fake\ninputs:\n  endpoint: \"${unit.a.outputs.endpoint}\"\nfake:\n  deferredWhenUnknown: true\n  outputs: {url: \"http://b\"}\n",
        ),
        (
            "c",
            "layer: apps\nkind: fake\ninputs:\n  url: \"${unit.b.outputs.url}\"\n",
        ),
    ]);
    let engine = open(dir.path());

    let plan = plan_all(&engine).await;

    let b = unit(&plan, "b");
    assert_eq!(b.outcome, Outcome::Planned);
    assert_eq!(b.action, Some(Action::Deferred));
    assert!(b.unknown_inputs);
    // Not skipped: deferred too, its input still unknown, and neither
    // driver was handed a placeholder.
    let c = unit(&plan, "c");
    assert_eq!(c.outcome, Outcome::Planned);
    assert_eq!(c.action, Some(Action::Deferred));
    assert!(c.unknown_inputs);
    assert!(plans_of(&engine, "b").is_empty() && plans_of(&engine, "c").is_empty());
    assert!(plan.has_changes());
    assert_eq!(plan.exit_code(), 2);

    // At apply, `b` is planned again with a's real outputs.
    let applied = apply_all(&engine, 4).await;

    assert_eq!(applied.exit_code(), 0, "{applied:?}");
    let b = applies_of(&engine, "b");
    assert_eq!(b.len(), 1);
    assert!(!b[0].unknown);
    assert_eq!(b[0].inputs.get("endpoint"), Some(&json!("10.0.0.1")));
    assert_eq!(
        applies_of(&engine, "c")[0].inputs.get("url"),
        Some(&json!("http://b"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_plans_only_the_selected_units() {
    let dir = project(&[
        (
            "a",
            "layer: base\nkind: fake\nfake:\n  outputs: {port: 8080}\n",
        ),
        (
            "b",
            "layer: apps\nkind: fake\ninputs:\n  port: \"${unit.a.outputs.port}\"\n",
        ),
        ("c", "layer: base\nkind: fake\n"),
    ]);
    let engine = open(dir.path());

    let only_b = select(&engine, &["b"]);
    assert_eq!(only_b.len(), 1);
    let report = engine.plan(&only_b, &Quiet, 4).await.expect("plan runs");

    assert_eq!(names(&report), ["b"]);
    assert!(plans_of(&engine, "a").is_empty());
    assert!(plans_of(&engine, "c").is_empty());
    // `a` is outside the selection and has no state: unknown to `b`.
    assert!(unit(&report, "b").unknown_inputs);

    let base = engine
        .select(&Selection {
            layers: vec!["base".to_owned()],
            ..Selection::default()
        })
        .expect("the layer exists");
    let report = engine.plan(&base, &Quiet, 4).await.expect("plan runs");
    assert_eq!(names(&report), ["a", "c"]);

    let unknown = engine.select(&Selection {
        units: vec!["nope".to_owned()],
        ..Selection::default()
    });
    assert!(
        matches!(unknown, Err(EngineError::UnknownUnit { ref name, .. }) if name == "nope"),
        "{unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_a_unit_whose_dependency_was_never_applied_fails_without_calling_apply() {
    let dir = project(&[
        (
            "a",
            "layer: base\nkind: fake\nfake:\n  outputs: {port: 8080}\n",
        ),
        (
            "b",
            "layer: apps\nkind: fake\ninputs:\n  port: \"${unit.a.outputs.port}\"\n",
        ),
    ]);
    let engine = open(dir.path());

    let report = engine
        .apply(&select(&engine, &["b"]), &options(4), Arc::new(Quiet))
        .await
        .expect("apply runs");

    assert_eq!(names(&report), ["b"]);
    assert_eq!(unit(&report, "b").outcome, Outcome::Failed);
    let message = error_of(&report, "b");
    assert!(
        message.contains("outputs of a ") && message.contains("never been applied"),
        "{message}"
    );
    assert!(applies_of(&engine, "b").is_empty());
    assert!(applies_of(&engine, "a").is_empty());
    assert_unlocked(&engine, "b").await;
}

// ---------------------------------------------------------------------------
// Interrupts
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_before_apply_starts_no_unit() {
    let dir = project(&[
        ("a", "layer: base\nkind: fake\n"),
        ("b", "layer: apps\nkind: fake\ndependsOn: [a]\n"),
        ("c", "layer: base\nkind: fake\n"),
    ]);
    let engine = open(dir.path());
    let opts = options(4);
    opts.interrupt.trigger();

    let report = engine
        .apply(&select(&engine, &[]), &opts, Arc::new(Quiet))
        .await
        .expect("apply runs");

    assert!(report.interrupted);
    assert_eq!(report.units.len(), 3);
    assert!(
        report
            .units
            .iter()
            .all(|u| u.outcome == Outcome::Interrupted),
        "{report:?}"
    );
    assert!(labels(&engine).is_empty(), "{:?}", labels(&engine));
    assert_ne!(report.exit_code(), 0);
    for name in ["a", "b", "c"] {
        let state = engine
            .state()
            .read(engine.environment(), name)
            .await
            .expect("state readable");
        assert!(state.is_none(), "{name} has state");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_mid_run_lets_the_running_unit_finish_and_starts_no_other() {
    let dir = project(&[
        ("a", "layer: base\nkind: fake\n"),
        ("b", "layer: base\nkind: fake\ndependsOn: [a]\n"),
        ("c", "layer: base\nkind: fake\ndependsOn: [b]\n"),
    ]);
    let engine = open(dir.path());
    let opts = options(4);
    let progress = Arc::new(InterruptAfter {
        unit: "a",
        interrupt: opts.interrupt.clone(),
    });

    let report = engine
        .apply(&select(&engine, &[]), &opts, progress)
        .await
        .expect("apply runs");

    assert!(report.interrupted);
    assert_eq!(unit(&report, "a").outcome, Outcome::Applied);
    assert_eq!(unit(&report, "b").outcome, Outcome::Interrupted);
    assert_eq!(unit(&report, "c").outcome, Outcome::Interrupted);
    assert!(applies_of(&engine, "b").is_empty());
    assert!(applies_of(&engine, "c").is_empty());
}

// ---------------------------------------------------------------------------
// Destroy
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_removes_dependents_first_and_forgets_their_state() {
    let dir = project(&[
        (
            "a",
            "layer: base\nkind: fake\nfake:\n  outputs: {port: 8080}\n",
        ),
        (
            "b",
            "layer: apps\nkind: fake\ninputs:\n  port: \"${unit.a.outputs.port}\"\n",
        ),
        ("c", "layer: base\nkind: fake\n"),
    ]);
    let engine = open(dir.path());
    assert_eq!(apply_all(&engine, 4).await.exit_code(), 0);
    let env = engine.environment().to_owned();
    let only_a = select(&engine, &["a"]);

    let dry = engine
        .destroy(&only_a, &[], &options(4), true, &Quiet)
        .await
        .expect("destroy plans");

    assert_eq!(
        names(&dry),
        ["b", "a"],
        "dependents first, with the selection"
    );
    assert!(dry.units.iter().all(|u| u.action == Some(Action::Delete)));
    assert!(dry.units.iter().all(|u| u.outcome == Outcome::Planned));
    assert!(
        !labels(&engine).iter().any(|l| l.starts_with("destroy:")),
        "a dry run destroyed something"
    );
    for name in ["a", "b"] {
        let state = engine.state().read(&env, name).await.expect("readable");
        assert!(state.is_some(), "a dry run removed the state of {name}");
    }

    let report = engine
        .destroy(&only_a, &[], &options(4), false, &Quiet)
        .await
        .expect("destroy runs");

    assert_eq!(names(&report), ["b", "a"]);
    assert!(report.units.iter().all(|u| u.outcome == Outcome::Destroyed));
    let seen = labels(&engine);
    assert!(
        position(&seen, "destroy:b") < position(&seen, "destroy:a"),
        "{seen:?}"
    );
    for name in ["a", "b"] {
        let state = engine.state().read(&env, name).await.expect("readable");
        assert!(state.is_none(), "{name} still has state");
        assert_unlocked(&engine, name).await;
    }
    let c = engine.state().read(&env, "c").await.expect("readable");
    assert!(c.is_some(), "destroy reached the unselected, independent c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_planning_fails_its_unit_alone() {
    let dir = project(&[
        ("a", "layer: base\nkind: fake\nfake:\n  panicPlan: true\n"),
        ("b", "layer: apps\nkind: fake\ndependsOn: [a]\n"),
        ("c", "layer: base\nkind: fake\n"),
    ]);
    let engine = open(dir.path());

    let report = plan_all(&engine).await;

    assert_eq!(unit(&report, "a").outcome, Outcome::Failed);
    assert!(
        error_of(&report, "a").contains("panicked while planning `a`"),
        "{}",
        error_of(&report, "a")
    );
    assert_eq!(unit(&report, "b").outcome, Outcome::Skipped);
    assert_eq!(unit(&report, "b").skipped_because.as_deref(), Some("a"));
    assert_eq!(unit(&report, "c").outcome, Outcome::Planned);
    assert_eq!(unit(&report, "c").action, Some(Action::Create));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_destroy_keeps_only_what_it_depends_on() {
    let dir = project(&[
        ("a", "layer: base\nkind: fake\n"),
        (
            "b",
            "layer: apps\nkind: fake\ndependsOn: [a]\nfake:\n  fail: destroy\n",
        ),
        ("c", "layer: base\nkind: fake\n"),
        ("d", "layer: apps\nkind: fake\ndependsOn: [c]\n"),
    ]);
    let engine = open(dir.path());
    assert_eq!(apply_all(&engine, 4).await.exit_code(), 0);
    let env = engine.environment().to_owned();

    let report = engine
        .destroy(&select(&engine, &[]), &[], &options(1), false, &Quiet)
        .await
        .expect("destroy runs");

    assert_eq!(unit(&report, "b").outcome, Outcome::Failed);
    // `b` still stands, so what it depends on stays.
    assert_eq!(unit(&report, "a").outcome, Outcome::Skipped);
    assert_eq!(unit(&report, "a").skipped_because.as_deref(), Some("b"));
    // The rest of the graph has nothing to do with `b`.
    assert_eq!(unit(&report, "c").outcome, Outcome::Destroyed);
    assert_eq!(unit(&report, "d").outcome, Outcome::Destroyed);
    for (name, kept) in [("a", true), ("b", true), ("c", false), ("d", false)] {
        let state = engine.state().read(&env, name).await.expect("readable");
        assert_eq!(state.is_some(), kept, "state of {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_unit_prints_while_it_applies_reaches_the_progress_view_by_unit() {
    let dir = project(&[
        ("a", "layer: base\nkind: fake\nfake:\n  say: creating a\n"),
        ("b", "layer: base\nkind: fake\nfake:\n  say: creating b\n"),
    ]);
    let engine = open(dir.path());
    let progress = Arc::new(Recorder::default());

    let report = engine
        .apply(&select(&engine, &[]), &options(2), progress.clone())
        .await
        .expect("apply runs");

    assert_eq!(report.exit_code(), 0);
    let mut lines = progress
        .lines
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    lines.sort();
    assert_eq!(
        lines,
        [
            ("a".to_owned(), "creating a".to_owned()),
            ("b".to_owned(), "creating b".to_owned())
        ]
    );
}
