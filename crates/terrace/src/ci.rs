//! `terrace ci`: what a pull request's pipeline runs. The units affected
//! since the base revision are checked against policy and planned; the
//! result is written as a pull-request comment (markdown), JUnit XML (a
//! test case per unit and per policy violation) and JSON. Secret keys
//! are not needed: a unit whose secrets this machine cannot open says so
//! instead of failing the run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use terrace_core::diag::Cause;
use terrace_core::policy::{self, Level};
use terrace_engine::Engine;
use terrace_engine::run::{Outcome, Report, UnitReport};

use crate::cli::{CiArgs, OutputFormat};
use crate::diagnostics::CliError;
use crate::output;
use crate::output::{out, outln};

/// GitHub refuses longer pull-request comments.
pub const MAX_COMMENT: usize = 65_536;

/// One rule an object of an affected unit breaks.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    pub unit: String,
    pub object: String,
    pub rule: &'static str,
    pub level: Level,
    pub field: String,
    pub message: String,
}

/// Everything `terrace ci` found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CiReport {
    pub base: String,
    pub changed_files: usize,
    /// Units that could not be planned here for want of secret keys.
    pub needs_keys: Vec<String>,
    pub violations: Vec<Violation>,
    pub plan: Report,
}

impl CiReport {
    fn needs_keys(&self, u: &UnitReport) -> bool {
        self.needs_keys.contains(&u.unit)
    }

    /// As `plan`: 1 if a unit failed (wanting keys is no failure), 2 if
    /// something would change, else 0.
    pub fn exit_code(&self) -> u8 {
        let failed = self.plan.units.iter().any(|u| {
            !self.needs_keys(u)
                && matches!(
                    u.outcome,
                    Outcome::Failed | Outcome::Skipped | Outcome::Interrupted
                )
        });
        if failed {
            1
        } else if self.plan.has_changes() {
            2
        } else {
            0
        }
    }

    fn status(&self, u: &UnitReport) -> String {
        if self.needs_keys(u) {
            "needs secret keys".to_owned()
        } else if let Some(c) = &u.skipped_because {
            format!("skipped: `{c}` failed")
        } else {
            output::status_word(u)
        }
    }
}

/// The base revision: `--base`, else the pull request's target branch as
/// GitHub Actions or GitLab CI name it, else `origin/main`.
fn base_of(a: &CiArgs) -> String {
    if let Some(b) = &a.base {
        return b.clone();
    }
    for var in ["GITHUB_BASE_REF", "CI_MERGE_REQUEST_TARGET_BRANCH_NAME"] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            return format!("origin/{v}");
        }
    }
    "origin/main".to_owned()
}

/// The policy findings of the selected units' objects, at the levels the
/// project sets; units that want keys to render are added to `needs`.
async fn violations(
    engine: &Engine,
    selected: &BTreeSet<usize>,
    needs: &mut BTreeSet<String>,
) -> Vec<Violation> {
    let project = &engine.project;
    let Some(config) = project.file.policy.as_ref() else {
        return Vec::new();
    };
    let ws = &engine.workspace;
    let secrets = terrace_secrets::SecretStore::new(&project.root);
    let views = HashMap::new();
    let mut out = Vec::new();
    for &i in selected {
        let unit = match ws.evaluate(project, i, &views, Some(&secrets)) {
            Ok(u) => u.preview(),
            Err(d) => {
                if d.cause == Some(Cause::MissingKeys) {
                    needs.insert(ws.units[i].name.clone());
                }
                continue;
            }
        };
        // Rendered with the policy off: every finding is wanted here, at
        // its level, not only the first enforced one.
        let ctx = terrace_core::driver::UnitContext {
            secrets: Some(&secrets),
            refresh: false,
            policy: None,
            ..engine.unit_context(&unit, None, None)
        };
        let rendered = match terrace_engine::render_with_driver(project, &ctx).await {
            Ok(r) => r,
            Err(terrace_core::driver::DriverError::Input(d))
                if d.cause == Some(Cause::MissingKeys) =>
            {
                needs.insert(unit.name.clone());
                continue;
            }
            Err(_) => continue,
        };
        for doc in rendered.documents {
            // Sealed documents hold secrets, never pods.
            if doc.content.contains("ENC[AES256_GCM") {
                continue;
            }
            let Ok(values) = terrace_yaml::documents(&doc.content, Path::new(&doc.address)) else {
                continue;
            };
            for (_, value) in values {
                let exempt = policy::exemptions(&value).unwrap_or_default();
                let namespace = value["metadata"]["namespace"].as_str();
                for f in policy::findings(&value) {
                    if policy::is_exempt(&exempt, f.rule) {
                        continue;
                    }
                    let level = config.level(f.rule, &unit.layer, namespace);
                    if level == Level::Off {
                        continue;
                    }
                    out.push(Violation {
                        unit: unit.name.clone(),
                        object: doc.address.clone(),
                        rule: f.rule.id(),
                        level,
                        field: f.field,
                        message: f.message,
                    });
                }
            }
        }
    }
    out
}

pub async fn ci(engine: Arc<Engine>, a: &CiArgs, format: OutputFormat) -> Result<u8, CliError> {
    let base = base_of(a);
    let changed = terrace_engine::affected::changed_files(&engine.project.root, &base)?;
    let selected = engine.select(&terrace_engine::Selection {
        units: Vec::new(),
        layers: Vec::new(),
        affected_since: Some(base.clone()),
    })?;
    let mut needs = BTreeSet::new();
    let violations = violations(&engine, &selected, &mut needs).await;
    let quiet = terrace_engine::run::Quiet;
    let plan = engine.plan(&selected, &quiet, a.jobs).await?;
    for u in &plan.units {
        if u.error
            .as_ref()
            .and_then(|e| e.diagnostic.as_ref())
            .is_some_and(|d| d.cause == Some(Cause::MissingKeys))
        {
            needs.insert(u.unit.clone());
        }
    }
    // Units skipped only because a unit wanting keys could not be planned
    // want keys too.
    loop {
        let more: Vec<String> = plan
            .units
            .iter()
            .filter(|u| !needs.contains(&u.unit))
            .filter(|u| {
                u.skipped_because
                    .as_ref()
                    .is_some_and(|b| needs.contains(b))
            })
            .map(|u| u.unit.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        needs.extend(more);
    }
    let report = CiReport {
        base,
        changed_files: changed.len(),
        needs_keys: needs.into_iter().collect(),
        violations,
        plan,
    };
    if let Some(f) = &a.markdown {
        fs_err::write(f, markdown(&report))?;
    }
    if let Some(f) = &a.junit {
        fs_err::write(f, junit(&report))?;
    }
    if let Some(f) = &a.json {
        fs_err::write(f, serde_json::to_string_pretty(&report).expect("json"))?;
    }
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&report).expect("json")),
        OutputFormat::Markdown => out!("{}", markdown(&report)),
        OutputFormat::Text => out!("{}", text(&report)),
    }
    Ok(report.exit_code())
}

/// The plan's summary line, units that want keys counted apart.
fn summary(r: &CiReport) -> String {
    let mut planned = r.plan.clone();
    planned.units.retain(|u| !r.needs_keys(u));
    let mut line = output::summary_line(&planned);
    if !r.needs_keys.is_empty() {
        line.pop();
        line.push_str(&format!("; {} need secret keys.", r.needs_keys.len()));
    }
    line
}

fn counts(r: &CiReport) -> (usize, usize) {
    let enforced = r
        .violations
        .iter()
        .filter(|v| v.level == Level::Enforce)
        .count();
    (enforced, r.violations.len() - enforced)
}

fn text(r: &CiReport) -> String {
    let mut out = format!(
        "terrace ci ({}): {} file(s) changed since {}; {} unit(s) planned\n",
        r.plan.environment,
        r.changed_files,
        r.base,
        r.plan.units.len()
    );
    for u in &r.plan.units {
        let _ = writeln!(
            out,
            "  {:<24} {:<10} {:<10} {:<24} {}",
            u.unit,
            u.layer,
            u.kind,
            r.status(u),
            output::change_cell(u)
        );
    }
    let (enforced, audited) = counts(r);
    let _ = writeln!(
        out,
        "policy: {enforced} enforced, {audited} audited violation(s)"
    );
    for v in &r.violations {
        let _ = writeln!(
            out,
            "  {:?} {}: {}: {} {}",
            v.level, v.object, v.rule, v.field, v.message
        );
    }
    if !r.needs_keys.is_empty() {
        let _ = writeln!(
            out,
            "needs secret keys (not planned here): {}",
            r.needs_keys.join(", ")
        );
    }
    let _ = writeln!(out, "{}", summary(r));
    out
}

/// Text inside a markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The pull-request comment: a summary table, the policy findings, then
/// each unit's changes in a collapsed block, cut to [`MAX_COMMENT`].
pub fn markdown(r: &CiReport) -> String {
    let mut head = format!(
        "### terrace ci — `{}`\n\n{} file(s) changed since `{}`; {} unit(s) affected.\n\n",
        r.plan.environment,
        r.changed_files,
        r.base,
        r.plan.units.len()
    );
    head.push_str(
        "| Unit | Layer | Kind | Status | Changes | Policy |\n|---|---|---|---|---|---|\n",
    );
    let mut per_unit: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for v in &r.violations {
        let e = per_unit.entry(&v.unit).or_default();
        if v.level == Level::Enforce {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    for u in &r.plan.units {
        let policy = match per_unit.get(u.unit.as_str()) {
            Some((0, a)) => format!("{a} audit"),
            Some((e, 0)) => format!("**{e} enforced**"),
            Some((e, a)) => format!("**{e} enforced**, {a} audit"),
            None => "ok".to_owned(),
        };
        let _ = writeln!(
            head,
            "| `{}` | {} | {} | {} | {} | {} |",
            u.unit,
            u.layer,
            u.kind,
            r.status(u),
            output::change_cell(u),
            policy
        );
    }
    head.push('\n');
    if !r.needs_keys.is_empty() {
        let _ = writeln!(
            head,
            "> Not planned here for want of secret keys: {}. They are planned where the keys are (the apply job).\n",
            r.needs_keys
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (enforced, audited) = counts(r);
    if !r.violations.is_empty() {
        let _ = writeln!(
            head,
            "#### Policy: {enforced} enforced, {audited} audited\n\n| Level | Rule | Object | Field | Finding |\n|---|---|---|---|---|"
        );
        for v in &r.violations {
            let _ = writeln!(
                head,
                "| {} | `{}` | `{}` | `{}` | {} |",
                if v.level == Level::Enforce {
                    "**enforce**"
                } else {
                    "audit"
                },
                v.rule,
                cell(&v.object),
                cell(&v.field),
                cell(&v.message)
            );
        }
        head.push('\n');
    }
    let mut details = Vec::new();
    for u in &r.plan.units {
        if (u.changes.is_empty() && u.error.is_none()) || r.needs_keys(u) {
            continue;
        }
        let mut d = format!(
            "<details><summary><code>{}</code>: {}</summary>\n\n",
            u.unit,
            r.status(u)
        );
        if let Some(e) = &u.error {
            let _ = writeln!(d, "```\n{}\n```\n", e.message);
        }
        for ch in &u.changes {
            let _ = writeln!(d, "- `{}` {}", ch.action.symbol(), ch.address);
        }
        let diffs: Vec<&str> = u.changes.iter().filter_map(|c| c.diff.as_deref()).collect();
        if !diffs.is_empty() {
            let _ = writeln!(d, "\n```diff\n{}```", diffs.concat());
        }
        d.push_str("\n</details>\n\n");
        details.push(d);
    }
    let tail = format!("{}\n", summary(r));
    let mut out = head;
    // Room for the tail and the note that says what was cut.
    let budget = MAX_COMMENT.saturating_sub(tail.len() + 200);
    let mut cut = 0;
    for d in details {
        if cut == 0 && out.len() + d.len() <= budget {
            out.push_str(&d);
        } else {
            cut += 1;
        }
    }
    if cut > 0 {
        let _ = writeln!(
            out,
            "> {cut} unit(s)' changes were cut to keep this comment under {MAX_COMMENT} characters; the job's log and `terrace ci --json FILE` hold them all.\n"
        );
    }
    out.push_str(&tail);
    if out.len() > MAX_COMMENT {
        // The table alone was too long: cut it too, at a line.
        let end = out[..MAX_COMMENT - 100].rfind('\n').unwrap_or(0);
        out.truncate(end);
        out.push_str("\n\n> (cut here: the comment would be over 65536 characters)\n");
    }
    out
}

fn xml(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// JUnit XML: a suite of the affected units (a failure per unit that
/// failed, skipped where keys were wanted) and a suite of the policy
/// findings (enforced ones failures, audited ones passing with the
/// finding as output).
pub fn junit(r: &CiReport) -> String {
    let env = &r.plan.environment;
    let unit_failures = r
        .plan
        .units
        .iter()
        .filter(|u| {
            !r.needs_keys(u)
                && matches!(
                    u.outcome,
                    Outcome::Failed | Outcome::Skipped | Outcome::Interrupted
                )
        })
        .count();
    let (enforced, _) = counts(r);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"terrace ci\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\">",
        r.plan.units.len() + r.violations.len(),
        unit_failures + enforced,
        r.needs_keys.len()
    );
    let time: f64 = r
        .plan
        .units
        .iter()
        .map(|u| u.duration_ms as f64 / 1000.0)
        .sum();
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{unit_failures}\" errors=\"0\" skipped=\"{}\" time=\"{time:.3}\">",
        xml(&format!("plan ({env})")),
        r.plan.units.len(),
        r.needs_keys.len()
    );
    for u in &r.plan.units {
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            xml(&format!("plan.{}", u.layer)),
            xml(&u.unit),
            u.duration_ms as f64 / 1000.0
        );
        if r.needs_keys(u) {
            out.push_str("<skipped message=\"needs secret keys\"/>");
        } else if matches!(
            u.outcome,
            Outcome::Failed | Outcome::Skipped | Outcome::Interrupted
        ) {
            let message = u
                .error
                .as_ref()
                .map_or_else(|| r.status(u), |e| e.message.clone());
            let first = message.lines().next().unwrap_or_default().to_owned();
            let _ = write!(
                out,
                "<failure message=\"{}\" type=\"{}\">{}</failure>",
                xml(&first),
                xml(&r.status(u)),
                xml(&message)
            );
        }
        let _ = write!(
            out,
            "<system-out>{}</system-out>",
            xml(&format!("{}: {}", r.status(u), output::change_cell(u)))
        );
        out.push_str("</testcase>\n");
    }
    out.push_str("  </testsuite>\n");
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{enforced}\" errors=\"0\" skipped=\"0\" time=\"0\">",
        xml(&format!("policy ({env})")),
        r.violations.len()
    );
    for v in &r.violations {
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"0\">",
            xml(&format!("policy.{}", v.rule)),
            xml(&format!("{} {}", v.object, v.field))
        );
        let text = format!("{}: {} {} ({})", v.object, v.field, v.message, v.unit);
        if v.level == Level::Enforce {
            let _ = write!(
                out,
                "<failure message=\"{}\" type=\"enforce\">{}</failure>",
                xml(&v.message),
                xml(&text)
            );
        } else {
            let _ = write!(
                out,
                "<system-out>{}</system-out>",
                xml(&format!("audit: {text}"))
            );
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
