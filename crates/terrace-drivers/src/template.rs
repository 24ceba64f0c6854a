//! The `template` kind: files rendered from Jinja templates (minijinja)
//! with the unit's inputs, optionally once per item of a list (`forEach`) —
//! how one cluster file becomes per-node cloud-init or Talos configs.
//!
//! Templates see every input by name and as `inputs`, plus `env`, `unit`,
//! and for `forEach`, `item` and `index`. An undefined name is an error
//! naming the template file and line. The outputs are the generated paths
//! and their content hashes.

use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{Map, Value, json};
use terrace_core::config::{UNIT_FILE, WORK_DIR};
use terrace_core::diag::{Diagnostic, Location};
use terrace_core::driver::{
    Applied, ApplyContext, BoxFuture, DestroyContext, Driver, DriverError, Rendered,
    RenderedDocument, UnitContext,
};
use terrace_core::expr::UNKNOWN;
use terrace_core::kind::TypedKind;
use terrace_core::plan::UnitPlan;

use crate::fileset::{self, DesiredFile, DesiredSet};
use crate::{clean_relative, digest};

/// The `template` driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct TemplateDriver;

struct Source {
    /// Name inside the template set (relative to the source), used by
    /// `{% include %}` and for the output name.
    name: String,
    /// Project-relative path, for errors.
    path: String,
}

/// Renders the unit's files: (project-relative path, content), in order.
pub fn render_files(ctx: &UnitContext<'_>) -> Result<(String, Vec<(String, String)>), DriverError> {
    let unit_file = format!("{}/{UNIT_FILE}", ctx.unit.dir);
    let settings: TemplateSettings = crate::unit_settings(ctx)?;
    let src_rel = settings.source.as_deref().unwrap_or("templates");
    let source = clean_relative(&ctx.unit.dir, src_rel).ok_or_else(|| {
        Diagnostic::new(format!(
            "template source `{src_rel}` leads outside the project"
        ))
        .in_file(&unit_file)
    })?;
    let output = match &settings.output {
        Some(o) => clean_relative("", o)
            .filter(|o| !o.is_empty())
            .ok_or_else(|| {
                Diagnostic::new(format!(
                    "template output `{o}` must be a directory inside the project"
                ))
                .in_file(&unit_file)
            })?,
        None => format!("{WORK_DIR}/generated/{}/{}", ctx.environment, ctx.unit.name),
    };
    let why = crate::reserved(&output).or_else(|| {
        terrace_fs::is_within(&output, &format!("{WORK_DIR}/rendered"))
            .then_some("where cluster targets write their objects")
    });
    if let Some(why) = why {
        return Err(Diagnostic::new(format!(
            "template output `{output}` is {why}; a unit may not write there"
        ))
        .in_file(&unit_file)
        .with_hint("point `template.output` at a directory of its own, or leave it out (`.terrace/generated/<env>/<unit>`)")
        .into());
    }
    if output == ctx.unit.dir
        || output.starts_with(&format!("{}/", ctx.unit.dir)) && output.starts_with(&source)
    {
        return Err(
            Diagnostic::new("template output overlaps the template source")
                .in_file(&unit_file)
                .into(),
        );
    }

    let abs = ctx.root.join(&source);
    let mut sources = Vec::new();
    if terrace_fs::is_file(&abs) {
        let name = Path::new(&source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sources.push(Source {
            name,
            path: source.clone(),
        });
    } else if terrace_fs::is_dir(&abs) {
        collect(&abs, "", &source, &mut sources)?;
    } else {
        return Err(
            Diagnostic::new(format!("template source `{source}` does not exist"))
                .in_file(&unit_file)
                .with_hint("create it, or set `template.source` in unit.yaml")
                .into(),
        );
    }
    sources.sort_by(|a, b| a.name.cmp(&b.name));

    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Debug info names the undefined variable in the error; minijinja
    // turns it on only in debug builds unless asked.
    env.set_debug(true);
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    for s in &sources {
        let text = terrace_fs::read_to_string(ctx.root, &ctx.root.join(&s.path))?;
        env.add_template_owned(s.name.clone(), text)
            .map_err(|e| template_error(&e, &sources))?;
    }

    if let Some((name, files)) = ctx.unit.sensitive_inputs.iter().next() {
        return Err(Diagnostic::new(format!(
            "input `{name}` holds a secret (from {}), but a template unit writes plain files",
            files.join(", ")
        ))
        .in_file(format!("{}/{UNIT_FILE}", ctx.unit.dir))
        .with_hint("keep secrets in manifests units (written SOPS-encrypted) and pass the template only non-secret values")
        .into());
    }
    let mut base = Map::new();
    for (k, v) in &ctx.unit.inputs {
        base.insert(k.clone(), v.clone());
    }
    base.insert("inputs".into(), Value::Object(ctx.unit.inputs.clone()));
    base.insert("env".into(), json!(ctx.environment));
    base.insert("unit".into(), json!(ctx.unit.name));

    let items: Option<Vec<Value>> = match &settings.for_each {
        None => None,
        Some(Value::Array(items)) => Some(items.clone()),
        Some(Value::String(s)) if s == UNKNOWN => Some(Vec::new()),
        Some(other) => {
            return Err(Diagnostic::new(format!(
                "`template.forEach` must be a list, not {}",
                type_name(other)
            ))
            .in_file(&unit_file)
            .with_hint("use a list, e.g. `forEach: ${var.nodes}`")
            .into());
        }
    };

    let mut out = Vec::new();
    let mut render_set =
        |ctx_map: &Map<String, Value>, subdir: Option<String>| -> Result<(), DriverError> {
            for s in &sources {
                let tmpl = env
                    .get_template(&s.name)
                    .map_err(|e| template_error(&e, &sources))?;
                let text = tmpl
                    .render(minijinja::Value::from(minijinja::value::Serde(ctx_map)))
                    .map_err(|e| template_error(&e, &sources))?;
                let name = strip_suffix(&s.name);
                let path = match &subdir {
                    Some(d) => format!("{output}/{d}/{name}"),
                    None => format!("{output}/{name}"),
                };
                out.push((path, text));
            }
            Ok(())
        };
    match items {
        None => render_set(&base, None)?,
        Some(items) => {
            for (index, item) in items.iter().enumerate() {
                let mut m = base.clone();
                m.insert("item".into(), item.clone());
                m.insert("index".into(), json!(index));
                let subdir = match &settings.item_path {
                    Some(p) => env
                        .render_str(p, minijinja::Value::from(minijinja::value::Serde(&m)))
                        .map_err(|e| {
                            DriverError::from(
                                Diagnostic::new(format!(
                                    "`template.itemPath` failed for item {index}: {e}"
                                ))
                                .in_file(&unit_file),
                            )
                        })?,
                    None => item
                        .get("name")
                        .and_then(Value::as_str)
                        .map_or_else(|| index.to_string(), str::to_owned),
                };
                let subdir = clean_relative("", subdir.trim()).filter(|s| !s.is_empty()).ok_or_else(|| {
                    Diagnostic::new(format!("item {index} renders to the directory `{subdir}`, which is not a relative path"))
                        .in_file(&unit_file)
                })?;
                render_set(&m, Some(subdir))?;
            }
        }
    }
    // A template writes plain files: a secret value that reached it
    // without its provenance (a literal copy, say) is refused too.
    if let Some(secrets) = ctx.secrets {
        let plain = secrets.plaintexts();
        if let Some((path, _)) = out
            .iter()
            .find(|(p, text)| plain.found_in(text) || plain.found_in_name(p))
        {
            return Err(Diagnostic::new(format!(
                "template output `{}` would hold a secret value in plain text",
                plain.redact(path)
            ))
            .in_file(&unit_file)
            .with_hint(
                "keep secrets in manifests units (written SOPS-encrypted) and out of templates",
            )
            .into());
        }
    }
    // Another unit's directory belongs to that unit.
    for (path, _) in &out {
        if let Some(other) = other_unit_dir(ctx.root, path, &ctx.unit.dir) {
            return Err(Diagnostic::new(format!(
                "template output `{path}` lies in `{other}`, the directory of another unit"
            ))
            .in_file(&unit_file)
            .with_hint("a unit writes only into its own output directory; choose one no other unit.yaml sits in")
            .into());
        }
    }
    // Two items rendering to the same place would overwrite each other.
    let mut paths: Vec<&str> = out.iter().map(|(p, _)| p.as_str()).collect();
    paths.sort_unstable();
    if let Some(w) = paths.windows(2).find(|w| w[0] == w[1]) {
        return Err(
            Diagnostic::new(format!("two items render to the same file {}", w[0]))
                .in_file(&unit_file)
                .with_hint("give each item a distinct `name`, or set `template.itemPath`")
                .into(),
        );
    }
    Ok((output, out))
}

/// The nearest directory above `path` (project-relative) that holds a
/// `unit.yaml` of a unit other than the one in `own`, if any.
fn other_unit_dir(root: &Path, path: &str, own: &str) -> Option<String> {
    let mut dir = Path::new(path).parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            return None;
        }
        let rel = d.to_string_lossy();
        if rel == own {
            return None;
        }
        if root.join(d).join(UNIT_FILE).is_file() {
            return Some(rel.into_owned());
        }
        dir = d.parent();
    }
    None
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

fn strip_suffix(name: &str) -> &str {
    name.strip_suffix(".j2")
        .or_else(|| name.strip_suffix(".jinja"))
        .unwrap_or(name)
}

fn collect(abs: &Path, rel: &str, base: &str, out: &mut Vec<Source>) -> Result<(), DriverError> {
    for entry in terrace_fs::read_dir(abs)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if entry.file_type()?.is_dir() {
            collect(&entry.path(), &child, base, out)?;
        } else {
            out.push(Source {
                path: format!("{base}/{child}"),
                name: child,
            });
        }
    }
    Ok(())
}

fn template_error(e: &minijinja::Error, sources: &[Source]) -> DriverError {
    let file = e
        .name()
        .and_then(|n| sources.iter().find(|s| s.name == n))
        .map(|s| s.path.clone());
    let location = e.line().map(|line| Location {
        line: line as u32,
        column: 1,
        offset: 0,
        len: 0,
    });
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    let mut d = Diagnostic::new(format!("template error: {}{detail}", e.kind())).at(location);
    if let Some(f) = file {
        d = d.in_file(f);
    }
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        d = d.with_hint("templates see the unit's inputs by name, `inputs`, `env`, `unit`, and `item`/`index` under forEach");
    }
    DriverError::from(d)
}

fn desired(ctx: &UnitContext<'_>) -> Result<DesiredSet, DriverError> {
    let (output, files) = render_files(ctx)?;
    let mut outputs_files = Map::new();
    for (path, content) in &files {
        let rel = path.strip_prefix(&format!("{output}/")).unwrap_or(path);
        outputs_files.insert(
            rel.to_owned(),
            json!({"path": path, "sha256": digest(content.as_bytes()).trim_start_matches("sha256:")}),
        );
    }
    let outputs = json!({
        "dir": output,
        "paths": files.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
        "files": outputs_files,
    });
    let desired = files
        .into_iter()
        .map(|(path, content)| DesiredFile {
            object: None,
            address: path.clone(),
            path,
            content,
            sensitive: false,
            secret_sources: Vec::new(),
        })
        .collect();
    Ok(DesiredSet {
        files: desired,
        dir: output,
        outputs: outputs.as_object().cloned().expect("a map"),
    })
}

impl Driver for TemplateDriver {
    fn plan_is_reusable(&self, _ctx: &UnitContext<'_>) -> bool {
        true
    }

    fn render<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<Rendered, DriverError>> {
        Box::pin(async move {
            let (_, files) = render_files(ctx)?;
            Ok(Rendered {
                documents: files
                    .into_iter()
                    .map(|(path, content)| RenderedDocument {
                        address: path.clone(),
                        path: Some(path),
                        content,
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
            let set = desired(ctx)?;
            fileset::plan(ctx.root, set.files, ctx.prior, set.outputs, vec![set.dir])
        })
    }

    fn plan_destroy<'a>(
        &'a self,
        ctx: &'a DestroyContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(async move { fileset::plan_destroy_from_state(ctx, "dir") })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ApplyContext<'a>,
        plan: &'a UnitPlan,
    ) -> BoxFuture<'a, Result<Applied, DriverError>> {
        Box::pin(async move { fileset::apply(ctx.root, plan) })
    }
}

/// The `template` kind: files rendered from Jinja templates.
pub fn kind() -> TypedKind<TemplateSettings> {
    TypedKind::new(
        "template",
        "Files rendered from Jinja templates, optionally once per list item.",
        None,
        std::sync::Arc::new(TemplateDriver),
    )
}

/// Settings of a `template` unit. Strings may use `${...}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TemplateSettings {
    /// A template file or a directory of them, relative to the unit
    /// directory (default `templates`). A file's `.j2` or `.jinja` suffix is
    /// dropped from the name of what it renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Where rendered files go, relative to the project root (default
    /// `.terrace/generated/<env>/<unit>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// A list: the templates are rendered once per item, each into its own
    /// subdirectory, with the item as `item` and its position as `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<Value>,
    /// The subdirectory for each item, as a template (default
    /// `{{ item.name }}` when items have a name, else the index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_path: Option<String>,
}
