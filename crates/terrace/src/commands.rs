//! The commands: each opens what it needs, acts, prints, and returns the
//! exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use terrace_core::config::TargetBinding;
use terrace_core::expr;
use terrace_engine::run::{ApplyOptions, Interrupt, Progress, Quiet, Report};
use terrace_engine::saved::SavedPlan;
use terrace_engine::{Engine, Project, Selection, Workspace};

use crate::cli::{Cli, Command, GraphFormat, OutputFormat, SelectArgs, StateCommand};
use crate::diagnostics::CliError;
use crate::output;
use crate::output::{errln, out, outln};
use crate::progress::Reporter;

/// The project at (or above) `start`, with the kinds this build knows.
pub fn load_project(start: &Path) -> Result<Project, CliError> {
    Ok(Project::discover(
        start,
        std::sync::Arc::new(terrace_drivers::registry()),
    )?)
}

/// The engine of the project at `start`, built from its parts: the
/// built-in kinds, the local state backend, the SOPS secret store.
pub fn open_engine(start: &Path, env: Option<&str>) -> Result<Engine, CliError> {
    let project = load_project(start)?;
    let state = terrace_server::state_backend(&project)?;
    let secrets = std::sync::Arc::new(terrace_secrets::SecretStore::new(&project.root));
    Ok(Engine::new(project, env, state, secrets)?)
}

pub async fn dispatch(cli: &Cli) -> Result<u8, CliError> {
    // `secrets edit` handles signals itself while the editor runs.
    let interrupt = Interrupt::default();
    if !matches!(cli.command, Command::Secrets(_)) {
        let graceful = matches!(
            cli.command,
            Command::Apply(_)
                | Command::Destroy(_)
                | Command::Plan(_)
                | Command::Ci(_)
                | Command::Render(_)
                | Command::Serve(_)
                | Command::Dashboard(_)
        );
        crate::signals::install(interrupt.clone(), graceful);
    }
    let start = cli.directory.clone().unwrap_or_else(|| PathBuf::from("."));
    let env = cli.env.as_deref();
    let bindings = cluster_bindings(cli)?;
    let open = |start: &Path, env: Option<&str>| -> Result<Engine, CliError> {
        Ok(open_engine(start, env)?.bind_targets(&bindings)?)
    };
    match &cli.command {
        Command::Init(a) => {
            let dir = match &cli.directory {
                Some(d) => d.join(&a.dir),
                None => a.dir.clone(),
            };
            let written = crate::init::init(&dir, a.name.as_deref())?;
            match cli.output {
                OutputFormat::Json => outln!("{}", json!({"created": written})),
                _ => {
                    for w in &written {
                        outln!("created {}", dir.join(w).display());
                    }
                    outln!("\nNext: terrace -C {} plan", dir.display());
                }
            }
            Ok(0)
        }
        Command::Validate => validate(&start, env, cli.output).await,
        Command::Graph(a) => {
            let engine = open(&start, env)?;
            let g = &engine.workspace.graph;
            let layers = &engine.project.file.layers;
            let text = match (cli.output, a.format) {
                (OutputFormat::Json, _) => {
                    let nodes: Vec<Value> = g
                        .topological_order()
                        .into_iter()
                        .map(|i| {
                            let n = g.node(i);
                            json!({
                                "name": n.name, "layer": n.layer, "kind": n.kind,
                                "dependsOn": g.dependencies(i).iter().map(|&d| g.node(d).name.clone()).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    let waves: Vec<Vec<String>> = g
                        .waves()
                        .iter()
                        .map(|w| w.iter().map(|&i| g.node(i).name.clone()).collect())
                        .collect();
                    format!("{}\n", serde_json::to_string_pretty(&json!({"environment": engine.environment(), "units": nodes, "waves": waves})).expect("json"))
                }
                (_, GraphFormat::Dot) => g.to_dot(layers),
                (_, GraphFormat::Mermaid) => g.to_mermaid(layers),
                (_, GraphFormat::Text) => g.to_text(),
            };
            out!("{text}");
            Ok(0)
        }
        Command::Render(a) => {
            let engine = open(&start, env)?;
            match engine.render(&a.unit).await? {
                Ok((unit, rendered)) => {
                    match cli.output {
                        OutputFormat::Json => outln!(
                            "{}",
                            serde_json::to_string_pretty(
                                &json!({"unit": unit, "documents": rendered.documents})
                            )
                            .expect("json")
                        ),
                        _ => {
                            for (i, d) in rendered.documents.iter().enumerate() {
                                if i > 0 || d.path.is_some() {
                                    outln!("---");
                                }
                                if let Some(p) = &d.path {
                                    outln!("# {p}");
                                }
                                out!("{}", d.content);
                                if !d.content.ends_with('\n') {
                                    outln!();
                                }
                            }
                        }
                    }
                    Ok(0)
                }
                Err(e) => {
                    crate::diagnostics::report_unit_error(&e, &engine.project.root, cli.output);
                    Ok(1)
                }
            }
        }
        Command::Plan(a) => {
            let engine = Arc::new(open(&start, env)?.with_refresh(a.refresh));
            let selected = engine.select(&selection(&a.select))?;
            let progress = Reporter::new(selected.len(), "plan", false);
            let report = engine.plan(&selected, &progress, a.jobs).await?;
            progress.finish();
            print_report(&report, &engine.project.root, cli.output, a.full_diff);
            if let Some(out) = &a.out {
                save_plan(&engine, &report, a.refresh, out)?;
            }
            Ok(report.exit_code() as u8)
        }
        Command::Ci(a) => {
            let engine = Arc::new(open(&start, env)?.with_refresh(false));
            crate::ci::ci(engine, a, cli.output).await
        }
        Command::Apply(a) if a.plan.is_some() => {
            apply_saved(&start, env, &bindings, a, cli.output, &interrupt).await
        }
        Command::Apply(a) => {
            let mut engine = open(&start, env)?;
            if a.replace {
                engine = engine.with_replace(a.select.units.iter().cloned());
            }
            let engine = Arc::new(engine);
            let selected = engine.select(&selection(&a.select))?;
            let report = run_apply(&engine, &selected, a, &interrupt, None, cli.output).await?;
            Ok(report.exit_code() as u8)
        }
        Command::Destroy(a) => destroy(open(&start, env)?, a, cli.output, &interrupt).await,
        Command::Backup(b) => backup(open(&start, env)?, b, cli.output).await,
        Command::Output(a) => {
            let engine = open(&start, env)?;
            let Some(unit) = &a.unit else {
                let all = Value::Object(engine.all_outputs().await?);
                match cli.output {
                    OutputFormat::Json => {
                        outln!("{}", serde_json::to_string_pretty(&all).expect("json"))
                    }
                    _ => out!("{}", terrace_yaml::to_string(&all)),
                }
                return Ok(0);
            };
            let outputs = engine.outputs(unit).await?.ok_or_else(|| {
                CliError::message(
                    format!(
                        "unit `{}` has not been applied in environment `{}`",
                        unit,
                        engine.environment()
                    ),
                    Some(format!("run `terrace apply --unit {unit}` first")),
                )
            })?;
            let value = match &a.key {
                None => Value::Object(outputs),
                Some(key) => lookup(&outputs, key).ok_or_else(|| {
                    CliError::message(
                        format!("unit `{unit}` has no output `{key}`"),
                        Some(format!(
                            "its outputs: {}",
                            outputs.keys().cloned().collect::<Vec<_>>().join(", ")
                        )),
                    )
                })?,
            };
            match (&value, cli.output) {
                (Value::String(s), OutputFormat::Text) => outln!("{s}"),
                (_, OutputFormat::Json) => {
                    outln!("{}", serde_json::to_string_pretty(&value).expect("json"))
                }
                _ => out!("{}", terrace_yaml::to_string(&value)),
            }
            Ok(0)
        }
        Command::State(s) => state(&start, env, s, cli.output).await,
        Command::Runs => state(&start, env, &StateCommand::History, cli.output).await,
        Command::Status(a) => status(&start, env, a, cli.output, &interrupt).await,
        Command::Dashboard(a) => dashboard(&start, env, a, &interrupt).await,
        Command::Secrets(s) => crate::secrets::run(s, cli.output).await,
        Command::Serve(a) => serve(a, env, &interrupt).await,
        Command::Import(crate::cli::ImportCommand::Flux(a)) => {
            import_tree(&start, "flux", a, cli.output)
        }
        Command::Import(crate::cli::ImportCommand::Argocd(a)) => {
            import_tree(&start, "argocd", a, cli.output)
        }
        Command::Import(crate::cli::ImportCommand::Terragrunt(a)) => {
            import_tree(&start, "terragrunt", a, cli.output)
        }
        Command::Charts(crate::cli::ChartsCommand::Update { charts }) => {
            let project = load_project(&start)?;
            let defaults = project.file.defaults.get("helm");
            let binary = defaults
                .and_then(|d| d.get("binary"))
                .and_then(serde_json::Value::as_str);
            let moved = terrace_drivers::helm::chart::update_pins(
                &project.root,
                binary,
                Duration::from_secs(300),
                charts,
            )
            .await
            .map_err(|e| CliError::message(e.to_string(), None))?;
            match cli.output {
                OutputFormat::Json => {
                    let list: Vec<Value> = moved
                        .iter()
                        .map(|(old, new)| {
                            json!({"source": new.source, "chart": new.chart, "constraint": new.constraint,
                                   "from": old.version, "to": new.version, "digest": new.digest})
                        })
                        .collect();
                    outln!("{}", json!({ "charts": list }));
                }
                _ => {
                    if moved.is_empty() {
                        outln!(
                            "no chart pins in terrace.lock (a helm unit's remote chart is pinned when it is first planned)"
                        );
                    }
                    for (old, new) in &moved {
                        if old.version == new.version && old.digest == new.digest {
                            outln!("{} {}: unchanged ({})", new.chart, new.version, new.source);
                        } else {
                            outln!(
                                "{}: {} → {} ({})",
                                new.chart,
                                old.version,
                                new.version,
                                new.source
                            );
                        }
                    }
                }
            }
            Ok(0)
        }
        Command::Kustomize(crate::cli::KustomizeCommand::Build {
            dirs,
            load_restrictor,
            enable_helm,
            helm_command,
        }) => {
            let helm = if *enable_helm {
                Some(
                    terrace_drivers::helm::KustomizeHelm::standalone(helm_command.as_deref())
                        .map_err(|e| CliError::message(e.to_string(), None))?,
                )
            } else {
                None
            };
            let unrestricted = terrace_kustomize::Unrestricted(terrace_kustomize::DiskFs);
            let base: &dyn terrace_kustomize::Fs = match load_restrictor {
                crate::cli::LoadRestrictor::LoadRestrictionsRootOnly => &terrace_kustomize::DiskFs,
                crate::cli::LoadRestrictor::LoadRestrictionsNone => &unrestricted,
            };
            let with_helm = helm
                .as_ref()
                .map(|h| terrace_kustomize::WithHelm { fs: base, helm: h });
            let fs: &dyn terrace_kustomize::Fs = match &with_helm {
                Some(w) => w,
                None => base,
            };
            // Overlays built together share their bases' files.
            let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
            let objects = terrace_kustomize::build_all(fs, &dirs)
                .map_err(|e| CliError::message(e.to_string(), None))?;
            match cli.output {
                OutputFormat::Json => {
                    outln!("{}", serde_json::to_string_pretty(&objects).expect("json"))
                }
                _ => out!("{}", terrace_kustomize::to_yaml(&objects)),
            }
            Ok(0)
        }
        Command::Schema(a) => {
            for (name, text) in crate::schema::schemas() {
                match &a.write {
                    Some(dir) => {
                        let path = dir.join(&name);
                        if let Some(parent) = path.parent() {
                            fs_err::create_dir_all(parent)?;
                        }
                        fs_err::write(&path, text)?;
                        outln!("wrote {}", path.display());
                    }
                    None => out!("{text}"),
                }
            }
            Ok(0)
        }
    }
}

/// `plan --out FILE`: the plan, sealed as it was printed, with each
/// unit's fingerprint.
fn save_plan(engine: &Engine, report: &Report, refresh: bool, out: &Path) -> Result<(), CliError> {
    let revision = terrace_engine::affected::revision(&engine.project.root);
    let saved = SavedPlan::from_report(&engine.project.file.name, refresh, revision, report)
        .map_err(|e| {
            CliError::message(
                format!("the plan was not saved to {}: {e}", out.display()),
                Some("fix the failing units and plan again".to_owned()),
            )
        })?;
    terrace_fs::atomic::write(out, saved.to_json().as_bytes(), terrace_fs::Mode::Shared)?;
    errln!(
        "Saved the plan of {} unit(s) to {}: apply it with `terrace apply {}`.",
        saved.units.len(),
        out.display(),
        out.display()
    );
    Ok(())
}

/// `apply FILE`: the saved plan's environment and units, each applied
/// only when a fresh plan of it is the saved one.
async fn apply_saved(
    start: &Path,
    env: Option<&str>,
    bindings: &[(String, terrace_core::config::TargetBinding)],
    a: &crate::cli::ApplyArgs,
    format: OutputFormat,
    interrupt: &Interrupt,
) -> Result<u8, CliError> {
    let file = a.plan.as_deref().expect("apply_saved has a plan file");
    let saved = read_saved_plan(file)?;
    if let Some(env) = env
        && env != saved.environment
    {
        return Err(CliError::message(
            format!(
                "{} is a plan of environment `{}`, not `{env}`",
                file.display(),
                saved.environment
            ),
            Some(
                "leave out --env (the plan names its environment), or plan that environment"
                    .to_owned(),
            ),
        ));
    }
    let engine = Arc::new(
        open_engine(start, Some(&saved.environment))?
            .bind_targets(bindings)?
            .with_refresh(saved.refresh),
    );
    if engine.project.file.name != saved.project {
        return Err(CliError::message(
            format!(
                "{} is a plan of project `{}`, not of `{}`",
                file.display(),
                saved.project,
                engine.project.file.name
            ),
            None,
        ));
    }
    let terrace_engine::saved::SavedSelection {
        applied: selected,
        waiting: deferred,
        mut moved,
    } = engine.select_saved(&saved);
    // Nothing is applied unless every unit still plans as saved.
    if moved.is_empty() {
        let fresh = engine.plan(&selected, &Quiet, a.jobs).await?;
        moved = saved.compare(&fresh);
    }
    if !moved.is_empty() {
        let list: Vec<String> = moved.iter().map(|m| format!("  {m}")).collect();
        return Err(CliError::message(
            format!(
                "the saved plan {} no longer holds; nothing was applied:\n{}",
                file.display(),
                list.join("\n")
            ),
            Some("plan again (`terrace plan --out FILE`) and review the new plan".to_owned()),
        ));
    }
    let report = run_apply(
        &engine,
        &selected,
        a,
        interrupt,
        Some(Arc::new(saved)),
        format,
    )
    .await?;
    if !deferred.is_empty() && format == OutputFormat::Text {
        outln!(
            "Not in the saved plan's reach (deferred, or waiting for a dependency's outputs): {}. Plan again now that their dependencies are applied.",
            deferred.join(", ")
        );
    }
    Ok(report.exit_code() as u8)
}

/// Applies `selected` with progress shown, then prints the report.
async fn run_apply(
    engine: &Arc<Engine>,
    selected: &std::collections::BTreeSet<usize>,
    a: &crate::cli::ApplyArgs,
    interrupt: &Interrupt,
    saved: Option<Arc<SavedPlan>>,
    format: OutputFormat,
) -> Result<Report, CliError> {
    let progress = Arc::new(Reporter::new(selected.len(), "apply", true));
    let opts = ApplyOptions {
        jobs: a.jobs,
        lock_timeout: Duration::from_secs(a.lock_timeout),
        command: "apply".to_owned(),
        interrupt: interrupt.clone(),
        saved,
        force: a.force,
        volumes: false,
    };
    let report = engine
        .apply(selected, &opts, Arc::clone(&progress) as Arc<dyn Progress>)
        .await?;
    progress.finish();
    print_report(&report, &engine.project.root, format, false);
    Ok(report)
}

/// Reads a saved plan, refusing a file that is not one or is too large.
fn read_saved_plan(file: &Path) -> Result<SavedPlan, CliError> {
    let size = fs_err::metadata(file)?.len();
    if size > terrace_engine::saved::MAX_SAVED_PLAN_BYTES {
        return Err(CliError::message(
            format!(
                "{} is {size} bytes; a saved plan is at most {} bytes",
                file.display(),
                terrace_engine::saved::MAX_SAVED_PLAN_BYTES
            ),
            Some("give the file `terrace plan --out FILE` wrote".to_owned()),
        ));
    }
    let text = fs_err::read_to_string(file)?;
    SavedPlan::parse(&text, file).map_err(|d| terrace_engine::EngineError::Invalid(vec![d]).into())
}

fn selection(s: &SelectArgs) -> Selection {
    Selection {
        units: s.units.clone(),
        layers: s.layers.clone(),
        affected_since: s.affected_since.clone(),
    }
}

fn print_report(report: &Report, root: &Path, format: OutputFormat, full_diff: bool) {
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(report).expect("json")),
        OutputFormat::Markdown => out!("{}", output::markdown(report)),
        OutputFormat::Text => out!("{}", output::text(report, root, full_diff)),
    }
}

/// `--cluster TARGET=KUBECONFIG` and `--cluster-context TARGET=CONTEXT`
/// as bindings; relative kubeconfig paths are taken from the working
/// directory.
fn cluster_bindings(cli: &Cli) -> Result<Vec<(String, TargetBinding)>, CliError> {
    let mut out: Vec<(String, TargetBinding)> = Vec::new();
    let split = |flag: &str, text: &str| -> Result<(String, String), CliError> {
        match text.split_once('=') {
            Some((t, v)) if !t.trim().is_empty() && !v.trim().is_empty() => {
                Ok((t.trim().to_owned(), v.trim().to_owned()))
            }
            _ => Err(CliError::Message {
                message: format!("{flag} `{text}` is not of the form TARGET=VALUE"),
                hint: Some(format!(
                    "name the cluster target and its value, as in {flag} k3s=/path/to/kubeconfig"
                )),
            }),
        }
    };
    fn entry(out: &mut Vec<(String, TargetBinding)>, target: String) -> &mut TargetBinding {
        let i = match out.iter().position(|(t, _)| *t == target) {
            Some(i) => i,
            None => {
                out.push((target, TargetBinding::default()));
                out.len() - 1
            }
        };
        &mut out[i].1
    }
    for c in &cli.clusters {
        let (target, value) = split("--cluster", c)?;
        let b = entry(&mut out, target);
        if value == "in-cluster" {
            b.in_cluster = Some(true);
        } else {
            let path = std::path::absolute(&value).map_err(|e| CliError::Message {
                message: format!("--cluster: cannot resolve the path {value}: {e}"),
                hint: None,
            })?;
            b.kubeconfig = Some(path.display().to_string());
        }
    }
    for c in &cli.cluster_contexts {
        let (target, value) = split("--cluster-context", c)?;
        entry(&mut out, target).context = Some(value);
    }
    for c in &cli.dockers {
        let (target, value) = split("--docker", c)?;
        entry(&mut out, target).host = Some(value);
    }
    Ok(out)
}

/// `validate`: every environment (or the one asked for), fully evaluated
/// with unknown outputs, and every unit rendered.
async fn validate(start: &Path, env: Option<&str>, format: OutputFormat) -> Result<u8, CliError> {
    let project = load_project(start)?;
    let envs = match env {
        Some(e) => vec![project.pick_environment(Some(e))?],
        None => project.environments(),
    };
    let mut problems = Vec::new();
    let mut counts = Vec::new();
    for e in &envs {
        let ws = match Workspace::new(&project, e) {
            Ok(ws) => ws,
            Err(terrace_engine::EngineError::Invalid(d)) => {
                problems.extend(d);
                continue;
            }
            Err(other) => return Err(other.into()),
        };
        let views = Default::default();
        let secrets = terrace_secrets::SecretStore::new(&project.root);
        let before = problems.len();
        for i in 0..ws.units.len() {
            match ws.evaluate(&project, i, &views, Some(&secrets)) {
                Ok(unit) => {
                    // Outputs are unknown here: placeholders stand in.
                    let unit = unit.preview();
                    let ctx = terrace_core::driver::UnitContext {
                        root: &project.root,
                        project: &project.file.name,
                        environment: e,
                        vars: &ws.vars,
                        unit: &unit,
                        prior: None,
                        secrets: Some(&secrets),
                        refresh: true,
                        lines: None,
                        state: Some(&project.file.state),
                        policy: project.file.policy.as_ref(),
                        tiers: &project.file.tiers,
                        targets: &ws.targets,
                    };
                    if let Err(err) = terrace_drivers_render(&project, &ctx).await {
                        problems.push(err);
                    }
                }
                Err(d) => problems.push(d),
            }
        }
        // A message that quotes a decrypted value shows it as sensitive.
        let plain = terrace_core::secrets::SecretSource::plaintexts(&secrets);
        for d in &mut problems[before..] {
            plain.redact_in_place(&mut d.message);
            if let Some(h) = &mut d.hint {
                plain.redact_in_place(h);
            }
        }
        counts.push(json!({"environment": e, "units": ws.units.len()}));
    }
    problems.dedup();
    if !problems.is_empty() {
        return Err(terrace_engine::EngineError::Invalid(problems).into());
    }
    match format {
        OutputFormat::Json => outln!("{}", json!({"valid": true, "environments": counts})),
        _ => {
            for c in &counts {
                outln!(
                    "{}: {} units ok",
                    c["environment"].as_str().unwrap_or_default(),
                    c["units"]
                );
            }
            outln!(
                "valid: {} layers, {} environment(s)",
                project.file.layers.len(),
                envs.len()
            );
        }
    }
    Ok(0)
}

async fn terrace_drivers_render(
    project: &Project,
    ctx: &terrace_core::driver::UnitContext<'_>,
) -> Result<(), terrace_core::Diagnostic> {
    use terrace_core::driver::DriverError;
    match terrace_engine::render_with_driver(project, ctx).await {
        Ok(_) => Ok(()),
        Err(DriverError::Input(d)) => Err(*d),
        Err(DriverError::Target(_)) => Ok(()),
        Err(other) => Err(terrace_core::Diagnostic::new(format!(
            "unit `{}`: {other}",
            ctx.unit.name
        ))),
    }
}

/// One unit in `terrace status`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusRow {
    unit: String,
    layer: String,
    kind: String,
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    depends_on: Vec<String>,
}

/// Every unit of the local project, from its state.
async fn local_status(engine: &Engine) -> Result<(String, Vec<StatusRow>), CliError> {
    let envname = engine.environment().to_owned();
    let ws = &engine.workspace;
    let mut records = std::collections::HashMap::new();
    for u in &ws.units {
        records.insert(
            u.name.clone(),
            engine.state().read(&envname, &u.name).await?,
        );
    }
    let mut rows = Vec::new();
    for i in ws.graph.topological_order() {
        let u = &ws.units[i];
        let rec = records.get(&u.name).and_then(Option::as_ref);
        let waiting: Vec<&str> = ws
            .graph
            .dependencies(i)
            .iter()
            .map(|&d| ws.units[d].name.as_str())
            .filter(|d| !matches!(records.get(*d), Some(Some(r)) if r.status == terrace_core::state::UnitStatus::Applied))
            .collect();
        let (state, reason) = match rec.map(|r| r.status) {
            None if waiting.is_empty() => {
                ("not applied", Some("planned on the next apply".to_owned()))
            }
            None => (
                "not applied",
                Some(format!("waits for {} to be applied", waiting.join(", "))),
            ),
            Some(terrace_core::state::UnitStatus::Failed) => (
                "failed",
                Some("its last apply failed part way; the next apply runs it again".to_owned()),
            ),
            Some(terrace_core::state::UnitStatus::Applied)
                if u.lifecycle == terrace_core::config::Lifecycle::Once =>
            {
                (
                    "once",
                    Some("applied once; `apply --unit NAME --replace` applies it again".to_owned()),
                )
            }
            Some(terrace_core::state::UnitStatus::Applied) => ("applied", None),
        };
        let locked = engine.state().lock_holder(&envname, &u.name).await?;
        let reason = match locked {
            Some(holder) => Some(format!("locked by {holder}")),
            None => reason,
        };
        rows.push(StatusRow {
            unit: u.name.clone(),
            layer: u.layer.clone(),
            kind: u.kind.as_str().to_owned(),
            state: state.to_owned(),
            revision: rec.and_then(|r| r.revision.clone()),
            since: rec.map(|r| r.updated_at.clone()),
            reason,
            depends_on: ws
                .graph
                .dependencies(i)
                .iter()
                .map(|&d| ws.units[d].name.clone())
                .collect(),
        });
    }
    Ok((envname, rows))
}

/// Every unit a running daemon knows, from its API.
async fn remote_status(server: &str) -> Result<(String, Vec<StatusRow>), CliError> {
    let token = std::env::var("TERRACE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let url = format!("{}/api/v1/units", server.trim_end_matches('/'));
    let answer = terrace_server::http::get_json(&url, token.as_deref())
        .await
        .map_err(|e| {
            CliError::message(
                format!("{url}: {e}"),
                Some(
                    "is `terrace serve` running there, and is TERRACE_TOKEN its read token?"
                        .to_owned(),
                ),
            )
        })?;
    let mut rows = Vec::new();
    for (unit, v) in answer.as_object().into_iter().flatten() {
        let text = |k: &str| v[k].as_str().map(str::to_owned);
        rows.push(StatusRow {
            unit: unit.clone(),
            layer: text("layer").unwrap_or_default(),
            kind: text("kind").unwrap_or_default(),
            state: text("state").unwrap_or_default(),
            revision: text("revision"),
            since: None,
            reason: text("reason"),
            depends_on: v["dependsOn"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect(),
        });
    }
    rows.sort_by(|a, b| (&a.layer, &a.unit).cmp(&(&b.layer, &b.unit)));
    Ok((server.to_owned(), rows))
}

/// The local project's units in the daemon's terms, for the dashboard.
async fn fill_dashboard(
    start: &Path,
    env: Option<&str>,
    shared: &terrace_server::http::Shared,
) -> Result<(), CliError> {
    let engine = open_engine(start, env)?;
    let (envname, rows) = local_status(&engine).await?;
    let mut units = std::collections::BTreeMap::new();
    for r in rows {
        units.insert(
            r.unit.clone(),
            terrace_server::http::UnitView {
                state: r.state,
                layer: r.layer,
                kind: r.kind,
                revision: r.revision.unwrap_or_default(),
                reason: r.reason,
                depends_on: r.depends_on,
            },
        );
    }
    *shared
        .units
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = units;
    *shared
        .layers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = engine.project.file.layers.clone();
    *shared
        .environment
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(envname);
    // Unit pages read inputs and records through it.
    *shared
        .engine
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(engine));
    shared
        .metrics
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .ready = true;
    Ok(())
}

async fn dashboard(
    start: &Path,
    env: Option<&str>,
    a: &crate::cli::DashboardArgs,
    interrupt: &Interrupt,
) -> Result<u8, CliError> {
    if !a.listen.ip().is_loopback() {
        return Err(CliError::message(
            format!(
                "{} is reachable from other machines, and `terrace dashboard` has no tokens",
                a.listen
            ),
            Some("listen on 127.0.0.1, or run `terrace serve` with tokens".to_owned()),
        ));
    }
    let project = load_project(start)?;
    let shared = Arc::new(terrace_server::http::Shared::read_only(
        project.state_dir(),
        project
            .root
            .join(terrace_core::config::WORK_DIR)
            .join("dashboard"),
    ));
    fill_dashboard(start, env, &shared).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| CliError::message(format!("{}: {e}", a.listen), None))?;
    eprintln!(
        "dashboard of {} at http://{}/ (read-only; Ctrl-C stops it)",
        project.root.display(),
        listener
            .local_addr()
            .map_err(|e| CliError::message(e.to_string(), None))?
    );
    let stop = interrupt.clone();
    let server = tokio::spawn(terrace_server::http::serve_until(
        Arc::clone(&shared),
        listener,
        async move { stop.wait().await },
    ));
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {
                if let Err(e) = fill_dashboard(start, env, &shared).await {
                    eprintln!("could not read the project: {e:?}");
                }
            }
            () = interrupt.wait() => break,
        }
    }
    let _ = server.await;
    Ok(0)
}

async fn status(
    start: &Path,
    env: Option<&str>,
    a: &crate::cli::UnitStatusArgs,
    format: OutputFormat,
    interrupt: &Interrupt,
) -> Result<u8, CliError> {
    loop {
        let (source, rows) = match &a.server {
            Some(url) => remote_status(url).await?,
            None => local_status(&open_engine(start, env)?).await?,
        };
        if a.watch && format == OutputFormat::Text {
            out!("\x1b[2J\x1b[H");
        }
        match format {
            OutputFormat::Json => outln!("{}", json!({"source": source, "units": rows})),
            OutputFormat::Markdown => {
                let mut layer = None;
                for r in &rows {
                    if layer != Some(&r.layer) {
                        outln!(
                            "\n### {}\n\n| unit | kind | state | revision | why |\n|---|---|---|---|---|",
                            r.layer
                        );
                        layer = Some(&r.layer);
                    }
                    outln!(
                        "| {} | {} | {} | {} | {} |",
                        r.unit,
                        r.kind,
                        r.state,
                        r.revision
                            .as_deref()
                            .map(|v| &v[..v.len().min(12)])
                            .unwrap_or(""),
                        r.reason.as_deref().unwrap_or("")
                    );
                }
            }
            OutputFormat::Text => {
                outln!("{source}");
                let mut layer = None;
                for r in &rows {
                    if layer != Some(&r.layer) {
                        outln!("{}", r.layer);
                        layer = Some(&r.layer);
                    }
                    let rev = r
                        .revision
                        .as_deref()
                        .map(|v| &v[..v.len().min(12)])
                        .unwrap_or("-");
                    let why = r
                        .reason
                        .as_deref()
                        .map(|w| format!("  {w}"))
                        .unwrap_or_default();
                    outln!("  {:<24} {:<10} {:<12} {rev}{why}", r.unit, r.kind, r.state);
                }
            }
        }
        if !a.watch {
            let failed = rows.iter().any(|r| r.state == "failed");
            return Ok(u8::from(failed));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = interrupt.wait() => return Ok(0),
        }
    }
}

async fn serve(
    a: &crate::cli::ServeArgs,
    env: Option<&str>,
    interrupt: &Interrupt,
) -> Result<u8, CliError> {
    let repo = if a.repo.contains("://") {
        a.repo.clone()
    } else {
        let abs = std::path::absolute(&a.repo)
            .map_err(|e| CliError::message(format!("{}: {e}", a.repo), None))?;
        format!("file://{}", abs.display())
    };
    let reference = match &a.tag {
        Some(tag) => format!("refs/tags/{tag}"),
        None => format!("refs/heads/{}", a.branch),
    };
    let workdir = match &a.workdir {
        Some(w) => std::path::absolute(w).map_err(|e| CliError::message(e.to_string(), None))?,
        None => {
            let base = std::env::var_os("XDG_STATE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
                .ok_or_else(|| {
                    CliError::message(
                        "no --workdir, and neither XDG_STATE_HOME nor HOME is set",
                        None,
                    )
                })?;
            let digest = terrace_fs::digest::digest(format!("{repo}\0{reference}").as_bytes());
            let short = digest
                .trim_start_matches("sha256:")
                .chars()
                .take(16)
                .collect::<String>();
            base.join("terrace/serve").join(short)
        }
    };
    let secret_of = |file: &Option<PathBuf>,
                     what: &str|
     -> Result<Option<zeroize::Zeroizing<String>>, CliError> {
        let Some(path) = file else {
            return Ok(None);
        };
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| CliError::message(format!("{}: {e}", path.display()), None))?,
        );
        let text = String::from_utf8_lossy(&bytes);
        let secret = text.trim_end_matches(['\n', '\r']).to_owned();
        if secret.is_empty() {
            return Err(CliError::message(
                format!("{}: the {what} is empty", path.display()),
                Some(format!("write the {what} into the file")),
            ));
        }
        Ok(Some(zeroize::Zeroizing::new(secret)))
    };
    let webhook_secret = secret_of(&a.webhook_secret_file, "webhook secret")?
        .map(|s| zeroize::Zeroizing::new(s.as_bytes().to_vec()));
    let read_token = secret_of(&a.read_token_file, "read token")?;
    let write_token = secret_of(&a.write_token_file, "write token")?;
    let opts = terrace_server::Options {
        repo,
        reference: reference.clone(),
        path: a.path.clone(),
        workdir,
        interval: a.interval,
        environment: env.map(str::to_owned),
        jobs: a.jobs,
        once: a.once,
        shallow: a.shallow,
        listen: (!a.no_listen).then_some(a.listen),
        webhook_secret,
        read_token,
        write_token,
        leader: a.leader_election.then(|| terrace_server::Leader {
            endpoint: match &a.kubeconfig {
                Some(path) => terrace_kube::Endpoint::Kubeconfig {
                    path: path.clone(),
                    context: a.context.clone(),
                },
                None => terrace_kube::Endpoint::InCluster,
            },
            namespace: a.lease_namespace.clone(),
            name: a.lease_name.clone(),
            identity: format!(
                "{}-{}",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            ),
            duration: a.lease_duration,
        }),
    };
    eprintln!(
        "serving {} ({}) every {:?}; work directory {}",
        opts.repo,
        opts.reference,
        opts.interval,
        opts.workdir.display()
    );
    let say = |line: &str| outln!("{line}");
    match terrace_server::serve(&opts, interrupt, &say).await {
        Ok(true) => Ok(0),
        Ok(false) => Ok(1),
        Err(e) => Err(CliError::message(e.to_string(), None)),
    }
}

async fn destroy(
    engine: Engine,
    a: &crate::cli::DestroyArgs,
    format: OutputFormat,
    interrupt: &Interrupt,
) -> Result<u8, CliError> {
    let orphans = engine.orphans().await?;
    // Named units that are orphans are destroyed from state alone.
    let (named_orphans, in_graph): (Vec<String>, Vec<String>) = a
        .select
        .units
        .iter()
        .cloned()
        .partition(|u| orphans.contains(u));
    let mut sel = selection(&a.select);
    sel.units = in_graph;
    let selected = if sel.units.is_empty() && !named_orphans.is_empty() && sel.layers.is_empty() {
        Default::default()
    } else {
        engine.select(&sel)?
    };
    let opts = ApplyOptions {
        jobs: 1,
        lock_timeout: Duration::from_secs(a.lock_timeout),
        command: "destroy".to_owned(),
        interrupt: interrupt.clone(),
        saved: None,
        force: false,
        volumes: a.volumes,
    };
    let progress = Reporter::new(selected.len() + named_orphans.len(), "destroy", a.yes);
    let report = engine
        .destroy(&selected, &named_orphans, &opts, !a.yes, &progress)
        .await?;
    progress.finish();
    print_report(&report, &engine.project.root, format, false);
    if !a.yes && format == OutputFormat::Text && report.has_changes() {
        outln!("Nothing was destroyed: re-run with --yes to destroy.");
    }
    Ok(report.exit_code() as u8)
}

async fn state(
    start: &Path,
    env: Option<&str>,
    cmd: &StateCommand,
    format: OutputFormat,
) -> Result<u8, CliError> {
    let engine = open_engine(start, env)?;
    let backend = engine.state();
    let envname = engine.environment().to_owned();
    match cmd {
        StateCommand::List => {
            let names = backend.list(&envname).await?;
            let mut rows = Vec::new();
            for n in &names {
                if let Some(s) = backend.read(&envname, n).await? {
                    let lock = backend.lock_holder(&envname, n).await?;
                    rows.push(json!({
                        "unit": s.unit, "kind": s.kind, "layer": s.layer, "serial": s.serial,
                        "status": s.status, "updatedAt": s.updated_at,
                        "orphan": engine.workspace.index_of(n).is_none(),
                        "lockedBy": lock,
                    }));
                }
            }
            if format == OutputFormat::Json {
                outln!("{}", serde_json::to_string_pretty(&rows).expect("json"));
            } else if rows.is_empty() {
                outln!(
                    "no state in environment `{envname}` ({})",
                    backend.describe()
                );
            } else {
                for r in &rows {
                    outln!(
                        "{:<24} {:<10} {:<10} serial {:<4} {}{}{}",
                        r["unit"].as_str().unwrap_or_default(),
                        r["kind"].as_str().unwrap_or_default(),
                        r["layer"].as_str().unwrap_or_default(),
                        r["serial"],
                        r["updatedAt"].as_str().unwrap_or_default(),
                        if r["orphan"] == json!(true) {
                            "  (orphan)"
                        } else {
                            ""
                        },
                        if r["lockedBy"].is_null() {
                            ""
                        } else {
                            "  (locked)"
                        },
                    );
                }
            }
            Ok(0)
        }
        StateCommand::Show { unit } => {
            let s = backend.read(&envname, unit).await?.ok_or_else(|| {
                CliError::message(
                    format!("no state for unit `{unit}` in environment `{envname}`"),
                    None,
                )
            })?;
            let v = serde_json::to_value(&s).expect("json");
            match format {
                OutputFormat::Json => {
                    outln!("{}", serde_json::to_string_pretty(&v).expect("json"))
                }
                _ => out!("{}", terrace_yaml::to_string(&v)),
            }
            Ok(0)
        }
        StateCommand::Unlock { unit } => {
            match backend.force_unlock(&envname, unit).await? {
                Some(h) => outln!("broke the lock on `{unit}` held by {h}"),
                None => outln!("`{unit}` was not locked"),
            }
            Ok(0)
        }
        StateCommand::Migrate { to } => migrate(&engine, to, format).await,
        StateCommand::History => {
            let runs = backend.runs(&envname).await?;
            if format == OutputFormat::Json {
                outln!("{}", serde_json::to_string_pretty(&runs).expect("json"));
            } else {
                for r in &runs {
                    let failed = r
                        .units
                        .iter()
                        .filter(|u| u.outcome == terrace_core::plan::Outcome::Failed)
                        .count();
                    outln!(
                        "{}  {:<8} {} units, {} failed  {}",
                        r.started_at,
                        r.command,
                        r.units.len(),
                        failed,
                        r.revision.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(0)
        }
    }
}

/// The backend `--to` names; a remote one seals what it stores with
/// `cipher` (the project's `state.encryption`).
fn backend_at(
    project_root: &Path,
    to: &str,
    cipher: Option<Arc<dyn terrace_state::RecordCipher>>,
) -> Result<Arc<dyn terrace_state::StateBackend>, CliError> {
    let bad = |why: &str| {
        CliError::message(
            format!("--to `{to}` {why}"),
            Some(
                "write local, local:DIR, s3://BUCKET/PREFIX?endpoint=URL, or etcd://HOST:PORT/PREFIX"
                    .to_owned(),
            ),
        )
    };
    if to == "local" {
        return Ok(Arc::new(terrace_state::LocalBackend::new(
            project_root.join(".terrace/state"),
        )));
    }
    if let Some(dir) = to.strip_prefix("local:") {
        let rel = terrace_fs::clean_relative("", dir)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| bad("names a directory outside the project"))?;
        return Ok(Arc::new(terrace_state::LocalBackend::new(
            project_root.join(rel),
        )));
    }
    if to.starts_with("s3://") {
        let b = s3_backend_at(project_root, to)?;
        return Ok(match cipher {
            Some(c) => Arc::new(b.with_cipher(c)),
            None => Arc::new(b),
        });
    }
    if to.starts_with("etcd://") || to.starts_with("etcd+https://") {
        let b = etcd_backend_at(project_root, to)?;
        return Ok(match cipher {
            Some(c) => Arc::new(b.with_cipher(c)),
            None => Arc::new(b),
        });
    }
    Err(bad("is not a backend terrace knows"))
}

/// The etcd backend `--to etcd://HOST:PORT[,HOST:PORT]/PREFIX` names
/// (plain, this machine only), or `etcd+https://…?ca=F&cert=F&key=F`.
fn etcd_backend_at(
    project_root: &Path,
    to: &str,
) -> Result<terrace_state_etcd::EtcdBackend, CliError> {
    let bad = |why: &str| {
        CliError::message(
            format!("--to `{to}` {why}"),
            Some(
                "write etcd://HOST:PORT/PREFIX, or etcd+https://HOST:PORT/PREFIX?ca=FILE[&cert=FILE&key=FILE]"
                    .to_owned(),
            ),
        )
    };
    let (scheme, rest) = match to.split_once("://") {
        Some(("etcd", r)) => ("http", r),
        Some(("etcd+https", r)) => ("https", r),
        _ => return Err(bad("is not an etcd:// address")),
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (hosts, prefix) = path.split_once('/').unwrap_or((path, ""));
    if hosts.is_empty() {
        return Err(bad("names no endpoint"));
    }
    let mut tls = terrace_core::config::StateTls::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ca", v)) if scheme == "https" => tls.ca = v.to_owned(),
            Some(("cert", v)) if scheme == "https" => tls.cert = Some(v.to_owned()),
            Some(("key", v)) if scheme == "https" => tls.key = Some(v.to_owned()),
            _ => {
                return Err(bad(&format!(
                    "has `{pair}`, which is not ca=, cert= or key= of etcd+https"
                )));
            }
        }
    }
    let tls = match scheme {
        "https" if tls.ca.is_empty() => return Err(bad("names no ca=")),
        "https" => Some(terrace_server::read_tls(project_root, &tls)?),
        _ => None,
    };
    Ok(terrace_state_etcd::EtcdBackend::new(
        terrace_state_etcd::EtcdSettings {
            endpoints: hosts
                .split(',')
                .map(|h| format!("{scheme}://{h}"))
                .collect(),
            prefix: prefix.trim_matches('/').to_owned(),
            tls,
            lock_ttl: terrace_state_etcd::EtcdSettings::DEFAULT_LOCK_TTL,
        },
    )?)
}

/// The S3 backend `--to s3://BUCKET/PREFIX?endpoint=…` names.
fn s3_backend_at(project_root: &Path, to: &str) -> Result<terrace_state_s3::S3Backend, CliError> {
    let bad = |why: &str| {
        CliError::message(
            format!("--to `{to}` {why}"),
            Some("write s3://BUCKET/PREFIX?endpoint=URL".to_owned()),
        )
    };
    if let Some(rest) = to.strip_prefix("s3://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("names no bucket"));
        }
        let mut settings = terrace_state_s3::S3Settings {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: None,
            region: None,
            cache_root: Some(project_root.to_owned()),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", v)) => settings.endpoint = Some(v.to_owned()),
                Some(("region", v)) => settings.region = Some(v.to_owned()),
                _ => {
                    return Err(bad(&format!(
                        "has `{pair}`, which is neither endpoint= nor region="
                    )));
                }
            }
        }
        return Ok(terrace_state_s3::S3Backend::new(settings)?);
    }
    Err(bad("is not an s3:// address"))
}

/// `state migrate`: every record and run of every environment copied,
/// then read back and compared.
async fn migrate(engine: &Engine, to: &str, format: OutputFormat) -> Result<u8, CliError> {
    let from = engine.state();
    let cipher = terrace_server::project_cipher(&engine.project)?;
    let dest = backend_at(&engine.project.root, to, cipher)?;
    if dest.describe() == from.describe() {
        return Err(CliError::message(
            format!(
                "--to `{to}` is where the state already is ({})",
                from.describe()
            ),
            None,
        ));
    }
    let envs = engine.project.environments();
    // Nothing may be applying meanwhile, and nothing may be overwritten.
    let mut plan: Vec<(String, Vec<String>)> = Vec::new();
    for env in &envs {
        let units = from.list(env).await?;
        for u in &units {
            if let Some(h) = from.lock_holder(env, u).await? {
                return Err(CliError::message(
                    format!("unit `{u}` in environment `{env}` is locked by {h}: a run is applying it"),
                    Some("let it finish (or break a dead holder's lock with `terrace state unlock`), then migrate".to_owned()),
                ));
            }
        }
        let there = dest.list(env).await?;
        if !there.is_empty() {
            return Err(CliError::message(
                format!(
                    "{} already holds state for environment `{env}` ({} units)",
                    dest.describe(),
                    there.len()
                ),
                Some("migrate into an empty place".to_owned()),
            ));
        }
        plan.push((env.clone(), units));
    }
    // Terraform units keep their own state beside terrace's: a local file
    // with local state, an object of the bucket with S3 state. It moves
    // too, so the next plan finds it where the kind will look.
    let from_s3 = terrace_server::s3_settings(&engine.project)
        .map(terrace_state_s3::S3Backend::new)
        .transpose()?;
    let dest_s3 = match to.strip_prefix("s3://") {
        Some(_) => Some(s3_backend_at(&engine.project.root, to)?),
        None => None,
    };
    let local_tfstate = |env: &str, unit: &str| {
        engine
            .project
            .root
            .join(".terrace/terraform")
            .join(env)
            .join(unit)
            .join("terraform.tfstate")
    };
    let mut counts = Vec::new();
    for (env, units) in &plan {
        let mut records = 0;
        for u in units {
            if let Some(record) = from.read(env, u).await? {
                let terraform = record.inventory.iter().any(|i| {
                    matches!(i, terrace_core::state::InventoryItem::TerraformModule { backend, .. } if backend != "own")
                });
                if terraform {
                    let key = terrace_state_s3::S3Backend::terraform_state_key(env, u);
                    let tfstate = match &from_s3 {
                        Some(s) => s.get_object(&key).await?,
                        None => std::fs::read(local_tfstate(env, u)).ok(),
                    };
                    if let Some(bytes) = tfstate {
                        match &dest_s3 {
                            Some(d) => d.put_object(&key, bytes).await?,
                            None => {
                                let path = local_tfstate(env, u);
                                terrace_fs::private_dir(path.parent().expect("a parent"))?;
                                terrace_fs::atomic::write(
                                    &path,
                                    &bytes,
                                    terrace_fs::Mode::Private,
                                )?;
                            }
                        }
                    }
                }
                dest.write(&record).await?;
                let back = dest.read(env, u).await?;
                if back.as_ref() != Some(&record) {
                    return Err(CliError::message(
                        format!(
                            "unit `{u}` in environment `{env}` did not read back as written from {}",
                            dest.describe()
                        ),
                        Some(
                            "the source is untouched; check the destination and migrate again"
                                .to_owned(),
                        ),
                    ));
                }
                records += 1;
            }
        }
        let runs = from.runs(env).await?;
        for r in &runs {
            dest.record_run(r).await?;
        }
        let back = dest.runs(env).await?.len();
        if back < runs.len() {
            return Err(CliError::message(
                format!(
                    "{} runs of environment `{env}` were copied but {back} read back",
                    runs.len()
                ),
                None,
            ));
        }
        counts
            .push(serde_json::json!({"environment": env, "records": records, "runs": runs.len()}));
    }
    match format {
        OutputFormat::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "from": from.describe(), "to": dest.describe(), "environments": counts
            }))
            .expect("json")
        ),
        _ => {
            for c in &counts {
                outln!(
                    "{}: {} records and {} runs copied and read back",
                    c["environment"].as_str().unwrap_or_default(),
                    c["records"],
                    c["runs"]
                );
            }
            outln!(
                "from {} to {}; the source is left as it was. Point terrace.yaml's `state:` at the destination.",
                from.describe(),
                dest.describe()
            );
        }
    }
    Ok(0)
}

/// An output by path: `a.b`, `a[0]`, `files["x.yaml"].path`.
fn lookup(outputs: &serde_json::Map<String, Value>, key: &str) -> Option<Value> {
    let parsed = expr::parse(&format!("${{var.{key}}}")).ok()?;
    let Some(expr::Piece::Expr {
        expr: expr::Expr::Var { name, path },
        ..
    }) = parsed.pieces.first()
    else {
        return None;
    };
    let mut cur = outputs.get(name)?;
    for seg in path {
        cur = match (seg, cur) {
            (terrace_core::Seg::Key(k), Value::Object(m)) => m.get(k)?,
            (terrace_core::Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            // Inside a sensitive output: that output is all there is to
            // say.
            (_, Value::String(s)) if s == terrace_core::driver::SENSITIVE => {
                return Some(cur.clone());
            }
            _ => return None,
        };
    }
    Some(cur.clone())
}

/// `terrace import flux|argocd`.
fn import_tree(
    start: &Path,
    tool: &str,
    a: &crate::cli::ImportArgs,
    format: OutputFormat,
) -> Result<u8, CliError> {
    let crate::cli::ImportArgs {
        dir,
        out,
        layers,
        default_layer,
        target,
        dry_run,
    } = a;
    let dry_run = *dry_run;
    let default_layer = default_layer.clone().unwrap_or_else(|| {
        if tool == "terragrunt" {
            "infra"
        } else {
            "apps"
        }
        .to_owned()
    });
    // The project root: where terrace.yaml is, else the start directory.
    let start_abs = std::fs::canonicalize(start)
        .map_err(|e| CliError::message(format!("{}: {e}", start.display()), None))?;
    let root = start_abs
        .ancestors()
        .find(|d| d.join(terrace_core::config::PROJECT_FILE).is_file())
        .map_or_else(|| start_abs.clone(), Path::to_path_buf);
    let tree = std::fs::canonicalize(start.join(dir)).map_err(|e| {
        CliError::message(
            format!("{}: {e}", dir.display()),
            Some("give the directory of the Flux tree, inside the project".to_owned()),
        )
    })?;
    if !tree.starts_with(&root) {
        return Err(CliError::message(
            format!(
                "{} is outside the project at {}",
                dir.display(),
                root.display()
            ),
            Some("run the import from the repository that holds the Flux tree".to_owned()),
        ));
    }
    let out = out.trim_matches('/').to_owned();
    if terrace_fs::clean_relative(".", &out).is_none_or(|c| c == ".") {
        return Err(CliError::message(
            format!("--out {out}: not a directory inside the project"),
            Some("give a relative path such as `terrace`".to_owned()),
        ));
    }
    let mut mapping = Vec::new();
    for l in layers {
        let Some((prefix, layer)) = l.split_once('=') else {
            return Err(CliError::message(
                format!("--layer {l}: expected PREFIX=LAYER"),
                Some("for example --layer kubernetes/apps/kube-system=platform".to_owned()),
            ));
        };
        terrace_fs::check_name("layer", layer)
            .map_err(|e| CliError::message(format!("--layer {l}: {e}"), None))?;
        mapping.push((prefix.trim_start_matches("./").to_owned(), layer.to_owned()));
    }
    terrace_fs::check_name("layer", &default_layer)
        .map_err(|e| CliError::message(format!("--default-layer {default_layer}: {e}"), None))?;
    let options = terrace_import::Options {
        root: root.clone(),
        dir: tree,
        out: out.clone(),
        layers: mapping,
        default_layer,
        target: target.clone(),
    };
    let imported = match tool {
        "flux" => terrace_import::flux(&options),
        "argocd" => terrace_import::argocd::argocd(&options),
        _ => terrace_import::terragrunt::terragrunt(&options),
    }
    .map_err(|e| CliError::message(e.to_string(), None))?;
    let project_file = root.join(terrace_core::config::PROJECT_FILE);
    let new_project = !project_file.is_file();
    let mut written = Vec::new();
    // Two units in one directory would overwrite each other; an extra
    // file is a plain name inside its unit's directory.
    let mut dirs = std::collections::BTreeSet::new();
    for u in &imported.units {
        if !dirs.insert(u.dir.clone()) {
            return Err(CliError::message(
                format!(
                    "two units would both be written to {}: nothing was written",
                    u.dir
                ),
                Some(
                    "rename one of the two objects, or import them from separate trees".to_owned(),
                ),
            ));
        }
        for (name, _) in &u.extra {
            if name.contains('/')
                || name.contains('\\')
                || name.starts_with('.')
                || name == terrace_core::config::UNIT_FILE
            {
                return Err(CliError::message(
                    format!(
                        "{}: `{name}` is not a file name of the unit: nothing was written",
                        u.dir
                    ),
                    None,
                ));
            }
        }
    }
    if !dry_run {
        for u in &imported.units {
            let dir = root.join(&u.dir);
            let file = dir.join(terrace_core::config::UNIT_FILE);
            if let Some((name, _)) = u.extra.iter().find(|(n, _)| dir.join(n).exists()) {
                return Err(CliError::message(
                    format!("{}/{name} exists already: nothing was written", u.dir),
                    Some(
                        "import into another --out directory, or remove the earlier import"
                            .to_owned(),
                    ),
                ));
            }
            if file.is_file() {
                return Err(CliError::message(
                    format!("{}/unit.yaml exists already: nothing was written", u.dir),
                    Some(
                        "import into another --out directory, or remove the earlier import"
                            .to_owned(),
                    ),
                ));
            }
        }
        for u in &imported.units {
            // No symlink on the way: nothing lands outside the project.
            terrace_fs::write(
                &root,
                &format!("{}/{}", u.dir, terrace_core::config::UNIT_FILE),
                u.text.as_bytes(),
                terrace_fs::Mode::Shared,
            )
            .map_err(|e| CliError::message(format!("{}: {e}", u.dir), None))?;
            written.push(format!("{}/unit.yaml", u.dir));
            for (name, text) in &u.extra {
                terrace_fs::write(
                    &root,
                    &format!("{}/{name}", u.dir),
                    text.as_bytes(),
                    terrace_fs::Mode::Shared,
                )
                .map_err(|e| CliError::message(format!("{}/{name}: {e}", u.dir), None))?;
                written.push(format!("{}/{name}", u.dir));
            }
        }
        if new_project {
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "imported".to_owned());
            let text = format!(
                "# Written by `terrace import {tool}`.\nname: {}\nlayers: [{}]\ntargets:\n  {target}:\n    type: cluster\n    description: The cluster Flux applied to; bind its kubeconfig per environment or with --cluster {target}=PATH.\n",
                name.replace(|c: char| !(c.is_ascii_alphanumeric() || c == '-'), "-"),
                imported.layers.join(", ")
            );
            terrace_fs::write(
                &root,
                terrace_core::config::PROJECT_FILE,
                text.as_bytes(),
                terrace_fs::Mode::Shared,
            )
            .map_err(|e| CliError::message(format!("terrace.yaml: {e}"), None))?;
            written.push("terrace.yaml".to_owned());
        }
    }
    match format {
        OutputFormat::Json => {
            let units: Vec<Value> = imported
                .units
                .iter()
                .map(|u| json!({"unit": u.name, "layer": u.layer, "kind": u.kind, "dir": u.dir, "from": u.from, "unitYaml": u.text,
                    "files": u.extra.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()}))
                .collect();
            let unmapped: Vec<Value> = imported
                .unmapped
                .iter()
                .map(|u| json!({"file": u.file, "what": u.what, "todo": u.todo}))
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "files": imported.files, "layers": imported.layers, "units": units,
                    "unmapped": unmapped, "written": written, "dryRun": dry_run,
                }))
                .expect("json")
            );
        }
        _ => {
            outln!(
                "Read {} {} file(s): {} unit(s) in layers {}.",
                imported.files,
                if tool == "terragrunt" {
                    "terragrunt.hcl"
                } else {
                    "YAML"
                },
                imported.units.len(),
                imported.layers.join(", ")
            );
            for u in &imported.units {
                outln!("  {:9} {:<32} {:<12} <- {}", u.kind, u.dir, u.layer, u.from);
            }
            if !imported.unmapped.is_empty() {
                outln!(
                    "\nNot mapped ({}): each needs a step of yours.",
                    imported.unmapped.len()
                );
                for u in &imported.unmapped {
                    outln!("  {}: {}\n    -> {}", u.file, u.what, u.todo);
                }
            }
            if dry_run {
                outln!("\nNothing was written (--dry-run).");
            } else if new_project {
                outln!(
                    "\nWrote {} file(s), terrace.yaml included. Next: terrace validate && terrace plan",
                    written.len()
                );
            } else {
                outln!(
                    "\nWrote {} file(s). terrace.yaml was kept: its `layers` must hold {}. Next: terrace validate && terrace plan",
                    written.len(),
                    imported.layers.join(", ")
                );
            }
        }
    }
    Ok(if imported.unmapped.is_empty() { 0 } else { 3 })
}

/// `terrace backup run|list|restore`.
async fn backup(
    engine: Engine,
    cmd: &crate::cli::BackupCommand,
    format: OutputFormat,
) -> Result<u8, CliError> {
    use crate::cli::BackupCommand;
    use terrace_drivers::compose::backup as b;
    let compose_units = |only: Option<&String>| -> Result<Vec<String>, CliError> {
        let units: Vec<String> = engine
            .workspace
            .units
            .iter()
            .filter(|u| u.kind == *"compose")
            .filter(|u| only.is_none_or(|o| *o == u.name))
            .map(|u| u.name.clone())
            .collect();
        if let Some(o) = only
            && units.is_empty()
        {
            return Err(CliError::message(
                format!(
                    "`{o}` is not a compose unit of environment `{}`",
                    engine.environment()
                ),
                Some("`terrace status` lists the units and their kinds".to_owned()),
            ));
        }
        Ok(units)
    };
    let resolve = |name: String| {
        let engine = &engine;
        async move {
            let unit = engine.evaluate_from_state(&name).await?.map_err(|d| {
                CliError::message(
                    d.to_string(),
                    Some("`terrace validate` shows where".to_owned()),
                )
            })?;
            let prior = engine.state().read(engine.environment(), &name).await?;
            Ok::<_, CliError>((unit, prior))
        }
    };
    let failed = |unit: &str, e: terrace_core::driver::DriverError| {
        CliError::message(
            engine.plaintexts().redact(&format!("unit `{unit}`: {e}")),
            None,
        )
    };
    let say = |line: &str| errln!("{line}");
    match cmd {
        BackupCommand::Run { unit, service } => {
            let mut done = Vec::new();
            for name in compose_units(unit.as_ref())? {
                let (u, prior) = resolve(name.clone()).await?;
                let settings: terrace_drivers::compose::ComposeSettings =
                    serde_json::from_value(u.settings.clone()).unwrap_or_default();
                if settings.backup.is_empty() && unit.is_none() {
                    continue;
                }
                let ctx = engine.unit_context(&u, prior.as_ref(), None);
                let snaps = b::run(&ctx, service.as_deref(), &say)
                    .await
                    .map_err(|e| failed(&name, e))?;
                done.extend(snaps);
            }
            print_snapshots(&done, format, "backed up");
            Ok(0)
        }
        BackupCommand::List { unit, service } => {
            let mut all = Vec::new();
            for name in compose_units(unit.as_ref())? {
                let (u, prior) = resolve(name.clone()).await?;
                let settings: terrace_drivers::compose::ComposeSettings =
                    serde_json::from_value(u.settings.clone()).unwrap_or_default();
                if settings.backup.is_empty() && unit.is_none() {
                    continue;
                }
                let ctx = engine.unit_context(&u, prior.as_ref(), None);
                all.extend(
                    b::list(&ctx, service.as_deref())
                        .await
                        .map_err(|e| failed(&name, e))?,
                );
            }
            print_snapshots(&all, format, "snapshots");
            Ok(0)
        }
        BackupCommand::Restore {
            unit,
            service,
            at,
            yes,
        } => {
            compose_units(Some(unit))?;
            let (u, prior) = resolve(unit.clone()).await?;
            let ctx = engine.unit_context(&u, prior.as_ref(), None);
            if !yes {
                let snaps = b::list(&ctx, Some(service))
                    .await
                    .map_err(|e| failed(unit, e))?;
                outln!(
                    "would restore service `{service}` of unit `{unit}` from {} ({} snapshots); run again with --yes",
                    at.as_deref().unwrap_or("its latest snapshot"),
                    snaps.len()
                );
                return Ok(2);
            }
            let snap = b::restore(&ctx, service, at.as_deref(), &say)
                .await
                .map_err(|e| failed(unit, e))?;
            print_snapshots(std::slice::from_ref(&snap), format, "restored from");
            Ok(0)
        }
    }
}

fn print_snapshots(
    snaps: &[terrace_drivers::compose::backup::Snapshot],
    format: OutputFormat,
    what: &str,
) {
    match format {
        OutputFormat::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "snapshots": snaps })).expect("json")
        ),
        _ => {
            if snaps.is_empty() {
                outln!("no snapshots");
                return;
            }
            outln!("{what}:");
            outln!(
                "{:<10} {:<32} {:<16} {:<16} WHAT",
                "ID",
                "TIME",
                "UNIT",
                "SERVICE"
            );
            for s in snaps {
                outln!(
                    "{:<10} {:<32} {:<16} {:<16} {}",
                    s.short_id,
                    s.time,
                    s.unit,
                    s.service,
                    s.what
                );
            }
        }
    }
}
