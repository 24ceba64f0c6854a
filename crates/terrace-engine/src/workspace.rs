//! One environment of a project: its variables, its units with overrides
//! applied, their dependencies (explicit and from `${unit...}` references)
//! and the graph. [`Workspace::evaluate`] turns a unit into the
//! [`ResolvedUnit`] a driver works from.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Map, Value};
use terrace_core::ValuePath;
use terrace_core::config::{PROJECT_FILE, TargetKind, UnitKind};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{ResolvedTarget, ResolvedUnit};
use terrace_core::expr::{self, Outputs, Scope};
use terrace_core::graph::{Graph, GraphError, NodeSpec};
use terrace_core::secrets::SecretSource;

use crate::error::EngineError;
use crate::locate::at_value;
use crate::project::Project;

/// A unit in one environment, overrides applied, not yet evaluated.
#[derive(Debug, Clone)]
pub struct UnitSpec {
    /// Index into [`Project::units`].
    pub decl: usize,
    pub name: String,
    pub layer: String,
    pub kind: UnitKind,
    pub dir: String,
    pub file_path: String,
    /// Each input with the place it was written (the unit's own `inputs` or
    /// an override).
    pub inputs: Vec<(String, Value, ValuePath)>,
    /// The kind's settings, each key with the place it was written.
    pub settings: Vec<(String, Value, ValuePath)>,
    pub target: Option<String>,
    /// Every dependency with the place that asked for it, and the
    /// expression text for implicit ones.
    pub dependencies: Vec<(String, ValuePath, Option<String>)>,
    /// `lifecycle: once` or always.
    pub lifecycle: terrace_core::config::Lifecycle,
    /// The unit this one hands its objects over to.
    pub hand_over: Option<String>,
    /// The units that hand their objects over to this one.
    pub adopts_from: Vec<String>,
}

/// A project seen from one environment.
#[derive(Debug)]
pub struct Workspace {
    pub environment: String,
    pub vars: Map<String, Value>,
    /// In the graph's node order.
    pub units: Vec<UnitSpec>,
    pub graph: Graph,
    pub targets: BTreeMap<String, ResolvedTarget>,
}

/// How a dependent sees a unit's outputs.
#[derive(Debug, Clone)]
pub enum OutputView {
    /// The outputs, and which of them are sensitive (values that count as
    /// secrets in the units that use them).
    Known(Map<String, Value>, Vec<String>),
    Unknown,
}

impl Workspace {
    /// Builds the environment `environment` of `project`, reporting every
    /// problem found.
    pub fn new(project: &Project, environment: &str) -> Result<Workspace, EngineError> {
        let mut diags = Vec::new();
        let vars = load_vars(project, environment, &mut diags);
        let env_cfg = project.file.environments.get(environment);
        let targets = project
            .file
            .targets
            .iter()
            .map(|(name, t)| {
                let binding = env_cfg
                    .and_then(|e| e.targets.get(name))
                    .map_or_else(|| t.binding(), |b| t.binding().overlay(b));
                (
                    name.clone(),
                    ResolvedTarget {
                        name: name.clone(),
                        kind: t.kind,
                        binding,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();

        let mut units = Vec::new();
        for (decl, u) in project.units.iter().enumerate() {
            if !u.file.environments.admits(environment) {
                continue;
            }
            let ov = u.file.overrides.get(environment);
            let ov_path = ValuePath::root().key("overrides").key(environment);
            let mut inputs: Vec<(String, Value, ValuePath)> = u
                .file
                .inputs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone(), ValuePath::root().key("inputs").key(k)))
                .collect();
            if let Some(ov) = ov {
                for (k, v) in &ov.inputs {
                    let origin = ov_path.key("inputs").key(k);
                    match inputs.iter_mut().find(|(key, _, _)| key == k) {
                        Some(slot) => *slot = (k.clone(), v.clone(), origin),
                        None => inputs.push((k.clone(), v.clone(), origin)),
                    }
                }
            }
            let kind_key = u.file.kind.as_str();
            // The project's defaults for the kind, then the unit's own.
            let mut base_settings = match project.file.defaults.get(u.file.kind.as_str()) {
                Some(Value::Object(m)) => m.clone(),
                _ => Map::new(),
            };
            if let Some(Value::Object(m)) = u.file.own_settings() {
                base_settings.extend(m.clone());
            }
            let mut settings: Vec<(String, Value, ValuePath)> = base_settings
                .into_iter()
                .map(|(k, v)| {
                    let p = ValuePath::root().key(kind_key).key(&k);
                    (k, v, p)
                })
                .collect();
            let ov_settings = ov
                .and_then(|o| o.settings_of(&u.file.kind))
                .and_then(Value::as_object);
            for (k, v) in ov_settings.into_iter().flatten() {
                let origin = ov_path.key(kind_key).key(k);
                match settings.iter_mut().find(|(key, _, _)| key == k) {
                    Some(slot) => *slot = (k.clone(), v.clone(), origin),
                    None => settings.push((k.clone(), v.clone(), origin)),
                }
            }
            let target = ov
                .and_then(|o| o.target.clone())
                .or_else(|| u.file.target.clone())
                .or_else(|| default_target(project, &u.file.kind, &targets));

            let mut dependencies: Vec<(String, ValuePath, Option<String>)> = u
                .file
                .depends_on
                .iter()
                .enumerate()
                .map(|(i, d)| (d.clone(), ValuePath::root().key("dependsOn").index(i), None))
                .collect();
            // A target whose kubeconfig is a unit's output: every unit
            // acting on it waits for that unit.
            if let Some(kc) = target
                .as_ref()
                .and_then(|t| targets.get(t))
                .and_then(|t| t.binding.kubeconfig_from_output())
            {
                let origin = ValuePath::root().key("target");
                match expr::unit_references_at(&Value::String(kc.to_owned()), &origin) {
                    Ok(refs) => {
                        for r in refs {
                            if !dependencies.iter().any(|(d, _, _)| *d == r.unit) {
                                dependencies.push((r.unit, r.path, Some(r.source_text)));
                            }
                        }
                    }
                    Err((_, e)) => diags.push(
                        Diagnostic::new(format!(
                            "the kubeconfig of target `{}` is not a valid expression: {}",
                            target.as_deref().unwrap_or_default(),
                            e.kind
                        ))
                        .in_file(PROJECT_FILE),
                    ),
                }
            }
            for (_, v, origin) in inputs.iter().chain(settings.iter()) {
                match expr::unit_references_at(v, origin) {
                    Ok(refs) => {
                        for r in refs {
                            if !dependencies.iter().any(|(d, _, _)| *d == r.unit) {
                                dependencies.push((r.unit, r.path, Some(r.source_text)));
                            }
                        }
                    }
                    Err((path, e)) => {
                        let mut d = at_value(
                            &u.file_path,
                            &u.source,
                            0,
                            &path,
                            Some(&e.source_text),
                            e.kind.to_string(),
                        );
                        if let Some(h) = e.kind.hint() {
                            d = d.with_hint(h);
                        }
                        diags.push(d);
                    }
                }
            }
            units.push(UnitSpec {
                decl,
                name: u.name.clone(),
                layer: u.file.layer.clone(),
                kind: u.file.kind.clone(),
                dir: u.dir.clone(),
                file_path: u.file_path.clone(),
                inputs,
                settings,
                target,
                dependencies,
                lifecycle: u.file.lifecycle,
                hand_over: u.file.hand_over.as_ref().map(|h| h.to.clone()),
                adopts_from: Vec::new(),
            });
        }
        // Hand-overs: to a unit of this environment, from a `once` unit.
        let handed: Vec<(usize, String)> = units
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.hand_over.clone().map(|to| (i, to)))
            .collect();
        for (i, to) in handed {
            let decl = &project.units[units[i].decl];
            let at = |msg: String, hint: &str| {
                at_value(
                    &decl.file_path,
                    &decl.source,
                    0,
                    &ValuePath::root().key("handOver").key("to"),
                    None,
                    msg,
                )
                .with_hint(hint.to_owned())
            };
            if units[i].lifecycle != terrace_core::config::Lifecycle::Once {
                diags.push(at(
                    format!(
                        "unit `{}` hands its objects over but is applied on every apply",
                        units[i].name
                    ),
                    "add `lifecycle: once`: a unit that keeps applying would take the objects back",
                ));
            } else if to == units[i].name {
                diags.push(at(
                    format!("unit `{to}` hands its objects over to itself"),
                    "name the unit that takes them over",
                ));
            } else if let Some(j) = units.iter().position(|u| u.name == to) {
                let from = units[i].name.clone();
                units[j].adopts_from.push(from);
            } else {
                diags.push(at(
                    format!("`handOver.to` names unit `{to}`, which is not in environment `{environment}`"),
                    "name a unit of the project that exists in this environment",
                ));
            }
        }

        let nodes = units
            .iter()
            .map(|u| NodeSpec {
                name: u.name.clone(),
                layer: u.layer.clone(),
                layer_index: project.layer_index(&u.layer).unwrap_or(usize::MAX),
                kind: u.kind.as_str().to_owned(),
                depends_on: u.dependencies.iter().map(|(d, _, _)| d.clone()).collect(),
            })
            .collect();
        let graph = match Graph::build(nodes) {
            Ok(g) => Some(g),
            Err(errors) => {
                for e in errors {
                    diags.push(graph_diagnostic(project, &units, environment, &e));
                }
                None
            }
        };
        match graph {
            Some(graph) if diags.is_empty() => Ok(Workspace {
                environment: environment.to_owned(),
                vars,
                units,
                graph,
                targets,
            }),
            _ => Err(EngineError::Invalid(diags)),
        }
    }

    pub fn index_of(&self, unit: &str) -> Option<usize> {
        self.graph.index_of(unit)
    }

    /// Evaluates unit `i` with the given view of its dependencies' outputs.
    pub fn evaluate(
        &self,
        project: &Project,
        i: usize,
        outputs: &HashMap<String, OutputView>,
        secrets: Option<&dyn SecretSource>,
    ) -> Result<ResolvedUnit, Diagnostic> {
        let spec = &self.units[i];
        let decl = &project.units[spec.decl];
        let scope = UnitScope {
            env: &self.environment,
            vars: &self.vars,
            outputs,
            secrets,
        };
        let mut unknown = false;
        let located = |e: expr::EvalError| {
            let mut d = at_value(
                &decl.file_path,
                &decl.source,
                0,
                &e.path,
                Some(&e.source_text),
                e.kind.to_string(),
            );
            if let Some(h) = e.kind.hint() {
                d = d.with_hint(h);
            }
            d.because(e.kind.cause())
        };
        let mut inputs = Map::new();
        let mut unknown_inputs = std::collections::BTreeSet::new();
        let mut sensitive_inputs = BTreeMap::new();
        for (k, v, origin) in &spec.inputs {
            let ev = expr::eval(v, origin, &scope).map_err(located)?;
            if !ev.secrets.is_empty() {
                sensitive_inputs.insert(k.clone(), ev.secrets);
            }
            // An input with any part known only after apply is unknown
            // whole: it is named, never given a placeholder value.
            if ev.unknown {
                unknown = true;
                unknown_inputs.insert(k.clone());
            } else {
                inputs.insert(k.clone(), ev.value);
            }
        }
        let mut settings = Map::new();
        let mut sensitive_settings = BTreeMap::new();
        for (k, v, origin) in &spec.settings {
            let ev = expr::eval(v, origin, &scope).map_err(located)?;
            unknown |= ev.unknown;
            if !ev.secrets.is_empty() {
                sensitive_settings.insert(k.clone(), ev.secrets);
            }
            settings.insert(k.clone(), ev.value);
        }
        let mut target = match &spec.target {
            Some(t) => Some(self.targets.get(t).cloned().ok_or_else(|| {
                Diagnostic::new(format!("unknown target `{t}`")).in_file(&decl.file_path)
            })?),
            None => None,
        };
        // A kubeconfig from a unit's output: its text, once that unit is
        // applied; until then the unit waits.
        if let Some(t) = target.as_mut()
            && let Some(kc) = t.binding.kubeconfig_from_output().map(str::to_owned)
        {
            let origin = ValuePath::root()
                .key("targets")
                .key(&t.name)
                .key("kubeconfig");
            let ev = expr::eval(&Value::String(kc), &origin, &scope).map_err(|e| {
                Diagnostic::new(format!("the kubeconfig of target `{}`: {}", t.name, e.kind))
                    .in_file(PROJECT_FILE)
            })?;
            t.binding.kubeconfig = None;
            if ev.unknown {
                unknown = true;
            } else {
                let text = match ev.value {
                    Value::String(s) => s,
                    other => {
                        return Err(Diagnostic::new(format!(
                            "the kubeconfig of target `{}` is {other}, not a kubeconfig's text",
                            t.name
                        ))
                        .in_file(PROJECT_FILE));
                    }
                };
                t.binding.kubeconfig_inline = Some(terrace_core::config::InlineKubeconfig(
                    std::sync::Arc::new(text),
                ));
            }
        }
        Ok(ResolvedUnit {
            name: spec.name.clone(),
            layer: spec.layer.clone(),
            kind: spec.kind.clone(),
            dir: spec.dir.clone(),
            inputs,
            unknown_inputs,
            settings: if settings.is_empty() {
                Value::Null
            } else {
                Value::Object(settings)
            },
            unknown,
            waiting_for: self
                .graph
                .dependencies(i)
                .iter()
                .map(|&d| &self.units[d].name)
                .filter(|n| !matches!(outputs.get(n.as_str()), Some(OutputView::Known(..))))
                .cloned()
                .collect(),
            sensitive_inputs,
            sensitive_settings,
            adopts_from: spec.adopts_from.clone(),
            target,
        })
    }
}

/// A unit's only cluster target when it names none and the project has
/// exactly one of the kind it needs.
fn default_target(
    project: &Project,
    kind: &UnitKind,
    targets: &BTreeMap<String, ResolvedTarget>,
) -> Option<String> {
    let wanted: TargetKind = project.kinds.get(kind.as_str())?.target_kind()?;
    let mut matching = targets.values().filter(|t| t.kind == wanted);
    match (matching.next(), matching.next()) {
        (Some(t), None) => Some(t.name.clone()),
        _ => None,
    }
}

fn load_vars(
    project: &Project,
    environment: &str,
    diags: &mut Vec<Diagnostic>,
) -> Map<String, Value> {
    let mut vars = project.file.vars.clone();
    let Some(env) = project.file.environments.get(environment) else {
        return vars;
    };
    for (i, rel) in env.var_files.iter().enumerate() {
        let path = project.root.join(rel);
        let at = || {
            at_value(
                PROJECT_FILE,
                &project.source,
                0,
                &ValuePath::root()
                    .key("environments")
                    .key(environment)
                    .key("varFiles")
                    .index(i),
                None,
                format!("cannot read variable file `{rel}`"),
            )
        };
        let text = match fs_err::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                diags.push(at().with_hint(e.to_string()));
                continue;
            }
        };
        match terrace_yaml::from_str::<Map<String, Value>>(&text, Path::new(rel)) {
            Ok(map) => vars.extend(map),
            Err(d) => {
                diags.push(d.with_hint("a variable file is a YAML mapping of names to values"))
            }
        }
    }
    vars.extend(env.vars.clone());
    vars
}

fn graph_diagnostic(
    project: &Project,
    units: &[UnitSpec],
    env: &str,
    e: &GraphError,
) -> Diagnostic {
    let find = |unit: &str, dep: &str| -> Diagnostic {
        let spec = units
            .iter()
            .find(|u| u.name == unit)
            .expect("graph errors name known units");
        let decl = &project.units[spec.decl];
        let (_, path, needle) = spec
            .dependencies
            .iter()
            .find(|(d, _, _)| d == dep)
            .expect("the dependency is listed");
        at_value(
            &decl.file_path,
            &decl.source,
            0,
            path,
            needle.as_deref(),
            e.to_string(),
        )
    };
    let d = match e {
        GraphError::UnknownDependency { unit, dependency } => {
            let mut d = find(unit, dependency);
            if let Some(other) = project.unit(dependency) {
                d.message = format!(
                    "unit `{unit}` depends on `{dependency}`, which does not exist in environment `{env}` ({} limits its environments)",
                    other.file_path
                );
            }
            d
        }
        GraphError::LayerViolation {
            unit, dependency, ..
        } => find(unit, dependency),
        GraphError::Cycle { path } => {
            let first = &path[0];
            let second = path.get(1).unwrap_or(first);
            find(first, second)
        }
    };
    d.with_hint(e.hint())
}

/// What `unit.yaml` expressions see.
struct UnitScope<'a> {
    env: &'a str,
    vars: &'a Map<String, Value>,
    outputs: &'a HashMap<String, OutputView>,
    secrets: Option<&'a dyn SecretSource>,
}

impl Scope for UnitScope<'_> {
    fn env(&self) -> &str {
        self.env
    }
    fn var(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }
    fn var_names(&self) -> Vec<String> {
        self.vars.keys().cloned().collect()
    }
    fn unit_outputs(&self, unit: &str) -> Option<Outputs<'_>> {
        Some(match self.outputs.get(unit) {
            Some(OutputView::Known(m, _)) => Outputs::Known(m),
            Some(OutputView::Unknown) | None => Outputs::Unknown,
        })
    }
    fn output_secret(&self, unit: &str, key: &str) -> Option<String> {
        match self.outputs.get(unit) {
            Some(OutputView::Known(_, sensitive)) if sensitive.iter().any(|s| s == key) => {
                Some(format!("unit {unit} output {key}"))
            }
            _ => None,
        }
    }
    fn secret_source(&self) -> Option<&dyn SecretSource> {
        self.secrets
    }
}
