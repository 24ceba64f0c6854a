//! `terrace import terragrunt`: every `terragrunt.hcl` under a directory
//! becomes a `terraform` unit. The HCL is read with hcl-rs and evaluated
//! as Terragrunt evaluates it, as far as a repository can tell: `include`
//! of a root file (its inputs merged shallow or deep, its locals visible
//! where exposed), `locals` referring to each other, `dependency` blocks
//! (their outputs become `${unit.X.outputs.Y}` inputs; `mock_outputs`
//! are dropped: terrace defers instead), `dependencies`, `inputs`,
//! `terraform.source` (a local module), and `generate` blocks (written as
//! files of the unit). Terragrunt's path functions, `get_env`,
//! `read_terragrunt_config` and the common Terraform functions are
//! evaluated; anything else is listed with the file.
//!
//! The unit directory holds a root module that calls the stack's module
//! (`module "this"`), passing the inputs the module declares and
//! re-exporting its outputs, so the stack runs as Terragrunt would run
//! it (its resources are under `module.this.` in terrace's state).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use serde_json::{Map, Value, json};

use crate::{ImportError, Imported, Options, UnitFile, Unmapped, dns_name};

/// The most files one evaluation may read (includes, configs, `file()`),
/// and how deeply `read_terragrunt_config` may nest.
const MAX_READS: usize = 256;
const MAX_DEPTH: usize = 4;
const MAX_FILE: u64 = 1 << 20;
/// The largest value one local may hold, and all of them together.
const MAX_VALUE: usize = 1 << 20;
const MAX_VALUES: usize = 16 << 20;

/// Where the functions of one evaluation are called from.
#[derive(Debug, Clone, Default)]
struct Here {
    root: PathBuf,
    /// The stack's directory (the path functions answer for it).
    unit_dir: PathBuf,
    /// The directory of the file being read (`file()` is relative to it).
    file_dir: PathBuf,
    /// The included root file's directory, while there is one.
    include_dir: Option<PathBuf>,
    reads: usize,
    depth: usize,
}

thread_local! {
    static HERE: RefCell<Here> = RefCell::new(Here::default());
}

fn here<T>(f: impl FnOnce(&mut Here) -> T) -> T {
    HERE.with(|h| f(&mut h.borrow_mut()))
}

fn rel(from: &Path, to: &Path) -> String {
    let a: Vec<_> = from.components().collect();
    let b: Vec<_> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".to_owned(); a.len() - common];
    parts.extend(
        b[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

/// Reads a file inside the project, within the budget.
fn read(path: &Path) -> Result<String, String> {
    let root = here(|h| {
        h.reads += 1;
        (h.reads <= MAX_READS).then(|| h.root.clone())
    })
    .ok_or_else(|| format!("more than {MAX_READS} files read while evaluating one stack"))?;
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > MAX_FILE {
        return Err(format!("{} is over 1 MiB", path.display()));
    }
    terrace_fs::read_to_string(&root, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn s(v: &hcl::Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("expected a string, got {v}"))
}

fn to_json(v: &hcl::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn from_json(v: Value) -> hcl::Value {
    serde_json::from_value(v).unwrap_or(hcl::Value::Null)
}

fn find_in_parent_folders(args: FuncArgs) -> Result<hcl::Value, String> {
    let name = args
        .first()
        .map(s)
        .transpose()?
        .unwrap_or("terragrunt.hcl")
        .to_owned();
    let (root, unit) = here(|h| (h.root.clone(), h.unit_dir.clone()));
    let mut dir = unit.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        if !d.starts_with(&root) {
            break;
        }
        let candidate = d.join(&name);
        if candidate.is_file() {
            return Ok(candidate.display().to_string().into());
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    match args.get(1) {
        Some(fallback) if args.len() == 2 => Ok(fallback.clone()),
        _ => Err(format!("no {name} in a parent folder inside the project")),
    }
}

fn path_relative_to_include(_: FuncArgs) -> Result<hcl::Value, String> {
    Ok(here(|h| match &h.include_dir {
        Some(i) => rel(i, &h.unit_dir),
        None => ".".to_owned(),
    })
    .into())
}

fn path_relative_from_include(_: FuncArgs) -> Result<hcl::Value, String> {
    Ok(here(|h| match &h.include_dir {
        Some(i) => rel(&h.unit_dir, i),
        None => ".".to_owned(),
    })
    .into())
}

fn get_terragrunt_dir(_: FuncArgs) -> Result<hcl::Value, String> {
    Ok(here(|h| h.unit_dir.display().to_string()).into())
}

fn get_parent_terragrunt_dir(_: FuncArgs) -> Result<hcl::Value, String> {
    Ok(here(|h| {
        h.include_dir
            .clone()
            .unwrap_or_else(|| h.unit_dir.clone())
            .display()
            .to_string()
    })
    .into())
}

fn get_repo_root(_: FuncArgs) -> Result<hcl::Value, String> {
    Ok(here(|h| h.root.display().to_string()).into())
}

fn get_path_to_repo_root(_: FuncArgs) -> Result<hcl::Value, String> {
    Ok(here(|h| rel(&h.unit_dir, &h.root)).into())
}

/// `get_env(NAME, DEFAULT)`: the default. The importer's own environment
/// is never read: its values (a password in `TF_VAR_*`) would be written
/// into files meant to be committed.
fn get_env(args: FuncArgs) -> Result<hcl::Value, String> {
    let name = s(&args[0])?;
    args.get(1).cloned().ok_or_else(|| {
        format!("get_env(\"{name}\") reads the environment of whoever runs the import, which is not written into units: set the input in unit.yaml (with `${{secret...}}` for a secret)")
    })
}

/// A path relative to the file being read.
fn at_file(p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        here(|h| h.file_dir.join(p))
    }
}

fn file(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(read(&at_file(s(&args[0])?))?.into())
}

fn dirname(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(Path::new(s(&args[0])?)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
        .into())
}

fn basename(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(Path::new(s(&args[0])?)
        .file_name()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
        .into())
}

fn read_terragrunt_config(args: FuncArgs) -> Result<hcl::Value, String> {
    let raw = s(&args[0])?;
    let path = {
        let p = Path::new(raw);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            here(|h| h.unit_dir.join(p))
        }
    };
    if !path.is_file() {
        return args
            .get(1)
            .cloned()
            .ok_or_else(|| format!("{raw}: no such file"));
    }
    let saved = here(|h| {
        h.depth += 1;
        (h.depth <= MAX_DEPTH).then(|| h.clone())
    })
    .ok_or_else(|| "read_terragrunt_config nests too deeply".to_owned())?;
    let result = (|| {
        let text = read(&path)?;
        let body: hcl::Body = hcl::parse(&text).map_err(|e| format!("{raw}: {e}"))?;
        here(|h| {
            h.file_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            h.unit_dir = h.file_dir.clone();
        });
        let (locals, errors) = eval_locals(&body, &Map::new());
        if let Some((k, e)) = errors.first() {
            return Err(format!("{raw}: locals.{k}: {e}"));
        }
        let mut out = Map::new();
        out.insert("locals".into(), Value::Object(locals.clone()));
        if let Some(inputs) = body.attributes().find(|a| a.key() == "inputs") {
            let ctx = context(&locals, &Map::new());
            let v = inputs
                .expr()
                .evaluate(&ctx)
                .map_err(|e| format!("{raw}: inputs: {e}"))?;
            out.insert("inputs".into(), to_json(&v));
        }
        Ok(from_json(Value::Object(out)))
    })();
    here(|h| {
        let reads = h.reads;
        *h = saved;
        h.reads = reads;
        h.depth -= 1;
    });
    result
}

fn merge(args: FuncArgs) -> Result<hcl::Value, String> {
    let mut out = Map::new();
    for a in args.iter() {
        match to_json(a) {
            Value::Object(m) => out.extend(m),
            Value::Null => {}
            other => return Err(format!("merge: {other} is not an object")),
        }
    }
    Ok(from_json(Value::Object(out)))
}

fn lookup(args: FuncArgs) -> Result<hcl::Value, String> {
    let key = s(&args[1])?;
    match args[0].as_object().and_then(|m| m.get(key)) {
        Some(v) => Ok(v.clone()),
        None => args
            .get(2)
            .cloned()
            .ok_or_else(|| format!("lookup: no key {key}")),
    }
}

fn format_fn(args: FuncArgs) -> Result<hcl::Value, String> {
    let spec = s(&args[0])?;
    let mut rest = args.iter().skip(1);
    let mut out = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('s' | 'd' | 'v' | 'q') => {
                let v = rest.next().ok_or("format: too few arguments")?;
                match v.as_str() {
                    Some(t) => out.push_str(t),
                    None => out.push_str(&v.to_string()),
                }
            }
            other => {
                return Err(format!(
                    "format: %{} is not supported by the import",
                    other.unwrap_or(' ')
                ));
            }
        }
    }
    Ok(out.into())
}

fn join(args: FuncArgs) -> Result<hcl::Value, String> {
    let sep = s(&args[0])?;
    let mut parts = Vec::new();
    for list in args.iter().skip(1) {
        for v in list.as_array().ok_or("join: not a list")? {
            parts.push(
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string()),
            );
        }
    }
    Ok(parts.join(sep).into())
}

fn split(args: FuncArgs) -> Result<hcl::Value, String> {
    let parts: Vec<Value> = s(&args[1])?.split(s(&args[0])?).map(|p| json!(p)).collect();
    Ok(from_json(Value::Array(parts)))
}

fn lower(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(s(&args[0])?.to_lowercase().into())
}

fn upper(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(s(&args[0])?.to_uppercase().into())
}

fn replace(args: FuncArgs) -> Result<hcl::Value, String> {
    let (text, from, to) = (s(&args[0])?, s(&args[1])?, s(&args[2])?);
    if from.starts_with('/') && from.ends_with('/') && from.len() > 1 {
        return Err("replace with a regular expression is not evaluated by the import".to_owned());
    }
    Ok(text.replace(from, to).into())
}

fn trimspace(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(s(&args[0])?.trim().into())
}

fn concat(args: FuncArgs) -> Result<hcl::Value, String> {
    let mut out = Vec::new();
    for a in args.iter() {
        out.extend(a.as_array().ok_or("concat: not a list")?.iter().cloned());
    }
    Ok(hcl::Value::Array(out))
}

fn length(args: FuncArgs) -> Result<hcl::Value, String> {
    let n = match &args[0] {
        hcl::Value::Array(a) => a.len(),
        hcl::Value::Object(o) => o.len(),
        hcl::Value::String(t) => t.chars().count(),
        other => return Err(format!("length of {other}")),
    };
    Ok((n as u64).into())
}

fn keys(args: FuncArgs) -> Result<hcl::Value, String> {
    let o = args[0].as_object().ok_or("keys: not an object")?;
    Ok(hcl::Value::Array(
        o.keys().map(|k| hcl::Value::from(k.clone())).collect(),
    ))
}

fn values(args: FuncArgs) -> Result<hcl::Value, String> {
    let o = args[0].as_object().ok_or("values: not an object")?;
    Ok(hcl::Value::Array(o.values().cloned().collect()))
}

fn element(args: FuncArgs) -> Result<hcl::Value, String> {
    let list = args[0].as_array().ok_or("element: not a list")?;
    let i = args[1].as_u64().ok_or("element: not an index")? as usize;
    if list.is_empty() {
        return Err("element of an empty list".to_owned());
    }
    Ok(list[i % list.len()].clone())
}

fn contains(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(args[0]
        .as_array()
        .ok_or("contains: not a list")?
        .contains(&args[1])
        .into())
}

fn jsonencode(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(to_json(&args[0]).to_string().into())
}

fn jsondecode(args: FuncArgs) -> Result<hcl::Value, String> {
    serde_json::from_str::<Value>(s(&args[0])?)
        .map(from_json)
        .map_err(|e| format!("jsondecode: {e}"))
}

fn yamldecode(args: FuncArgs) -> Result<hcl::Value, String> {
    terrace_yaml::from_str::<Value>(s(&args[0])?, Path::new("yamldecode"))
        .map(from_json)
        .map_err(|e| format!("yamldecode: {}", e.message))
}

fn tostring(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(match &args[0] {
        hcl::Value::String(t) => t.clone(),
        other => other.to_string(),
    }
    .into())
}

fn coalesce(args: FuncArgs) -> Result<hcl::Value, String> {
    args.iter()
        .find(|v| !v.is_null() && v.as_str() != Some(""))
        .cloned()
        .ok_or_else(|| "coalesce: every argument is null or empty".to_owned())
}

fn startswith(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(s(&args[0])?.starts_with(s(&args[1])?).into())
}

fn endswith(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(s(&args[0])?.ends_with(s(&args[1])?).into())
}

fn strcontains(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(s(&args[0])?.contains(s(&args[1])?).into())
}

/// A context with the functions, `local`, and `include`.
fn context(locals: &Map<String, Value>, include: &Map<String, Value>) -> Context<'static> {
    let mut ctx = Context::new();
    let any = || ParamType::Any;
    let text = || ParamType::String;
    let mut f =
        |name: &str, params: Vec<ParamType>, variadic: Option<ParamType>, func: hcl::eval::Func| {
            let mut b = FuncDef::builder().params(params);
            if let Some(v) = variadic {
                b = b.variadic_param(v);
            }
            ctx.declare_func(name, b.build(func));
        };
    f(
        "find_in_parent_folders",
        vec![],
        Some(any()),
        find_in_parent_folders,
    );
    f(
        "path_relative_to_include",
        vec![],
        Some(any()),
        path_relative_to_include,
    );
    f(
        "path_relative_from_include",
        vec![],
        Some(any()),
        path_relative_from_include,
    );
    f("get_terragrunt_dir", vec![], None, get_terragrunt_dir);
    f(
        "get_parent_terragrunt_dir",
        vec![],
        Some(any()),
        get_parent_terragrunt_dir,
    );
    f("get_repo_root", vec![], None, get_repo_root);
    f("get_path_to_repo_root", vec![], None, get_path_to_repo_root);
    f("get_env", vec![text()], Some(any()), get_env);
    f(
        "read_terragrunt_config",
        vec![text()],
        Some(any()),
        read_terragrunt_config,
    );
    f("file", vec![text()], None, file);
    f("dirname", vec![text()], None, dirname);
    f("basename", vec![text()], None, basename);
    f("merge", vec![], Some(any()), merge);
    f("lookup", vec![any(), text()], Some(any()), lookup);
    f("format", vec![text()], Some(any()), format_fn);
    f("join", vec![text()], Some(any()), join);
    f("split", vec![text(), text()], None, split);
    f("lower", vec![text()], None, lower);
    f("upper", vec![text()], None, upper);
    f("replace", vec![text(), text(), text()], None, replace);
    f("trimspace", vec![text()], None, trimspace);
    f("concat", vec![], Some(any()), concat);
    f("length", vec![any()], None, length);
    f("keys", vec![any()], None, keys);
    f("values", vec![any()], None, values);
    f("element", vec![any(), any()], None, element);
    f("contains", vec![any(), any()], None, contains);
    f("jsonencode", vec![any()], None, jsonencode);
    f("jsondecode", vec![text()], None, jsondecode);
    f("yamldecode", vec![text()], None, yamldecode);
    f("tostring", vec![any()], None, tostring);
    f("coalesce", vec![], Some(any()), coalesce);
    f("startswith", vec![text(), text()], None, startswith);
    f("endswith", vec![text(), text()], None, endswith);
    f("strcontains", vec![text(), text()], None, strcontains);
    ctx.declare_var("local", from_json(Value::Object(locals.clone())));
    ctx.declare_var("include", from_json(Value::Object(include.clone())));
    ctx
}

/// `locals`, each evaluated once what it refers to is: Terragrunt's
/// passes until nothing more resolves; what never does is returned with
/// its error.
fn eval_locals(
    body: &hcl::Body,
    include: &Map<String, Value>,
) -> (Map<String, Value>, Vec<(String, String)>) {
    let attrs: Vec<&hcl::Attribute> = body
        .blocks()
        .filter(|b| b.identifier() == "locals")
        .flat_map(|b| b.body().attributes())
        .collect();
    let mut done = Map::new();
    if attrs.len() > 1000 {
        return (
            done,
            vec![("locals".to_owned(), "more than 1,000 locals".to_owned())],
        );
    }
    let mut total = 0usize;
    let mut left: Vec<&hcl::Attribute> = attrs;
    loop {
        let ctx = context(&done, include);
        let mut errors = Vec::new();
        let mut next = Vec::new();
        for a in &left {
            match a.expr().evaluate(&ctx) {
                Ok(v) => {
                    let v = to_json(&v);
                    let size = v.to_string().len();
                    total += size;
                    if size > MAX_VALUE || total > MAX_VALUES {
                        errors.push((a.key().to_owned(), format!("over the import's budget ({MAX_VALUE} bytes a value, {MAX_VALUES} in all)")));
                        return (done, errors);
                    }
                    done.insert(a.key().to_owned(), v);
                }
                Err(e) => {
                    errors.push((a.key().to_owned(), e.to_string()));
                    next.push(*a);
                }
            }
        }
        if next.is_empty() || next.len() == left.len() {
            return (done, errors);
        }
        left = next;
    }
}

/// One stack as read: its file's body, and the included root file.
struct Stack {
    file: String,
    dir: PathBuf,
    text: String,
    body: hcl::Body,
    include: Option<Included>,
}

struct Included {
    text: String,
    label: String,
    dir: PathBuf,
    body: hcl::Body,
    expose: bool,
    deep: bool,
    /// `merge_strategy = "no_merge"`: nothing of it is merged in.
    no_merge: bool,
}

/// `dependency.NAME.outputs.KEY[...]` written as the terrace reference
/// to that unit's output (a string HCL keeps as it is), so evaluation
/// carries it through templates and into inputs.
pub fn rewrite_dependencies(src: &str, units: &BTreeMap<String, String>) -> Result<String, String> {
    let b = src.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let starts = src[i..].starts_with("dependency.")
            && (i == 0 || !(ident(b[i - 1]) || b[i - 1] == b'.'));
        if !starts {
            let c = src[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let mut j = i + "dependency.".len();
        let name_start = j;
        while j < b.len() && ident(b[j]) {
            j += 1;
        }
        let name = &src[name_start..j];
        if !src[j..].starts_with(".outputs.") {
            return Err(format!(
                "`dependency.{name}` is used other than as `dependency.{name}.outputs.KEY`"
            ));
        }
        j += ".outputs.".len();
        let key_start = j;
        while j < b.len() && ident(b[j]) {
            j += 1;
        }
        let key = &src[key_start..j];
        // Index and attribute steps after the key.
        let steps_start = j;
        loop {
            if j < b.len() && b[j] == b'[' {
                match src[j..].find(']') {
                    Some(end)
                        if src[j + 1..j + end]
                            .chars()
                            .all(|c| c.is_ascii_digit() || c == '"') =>
                    {
                        j += end + 1
                    }
                    _ => break,
                }
            } else if j + 1 < b.len()
                && b[j] == b'.'
                && (b[j + 1].is_ascii_alphabetic() || b[j + 1] == b'_')
            {
                j += 1;
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
            } else {
                break;
            }
        }
        let steps = &src[steps_start..j];
        let unit = units
            .get(name)
            .ok_or_else(|| format!("no `dependency \"{name}\"` block for `dependency.{name}`"))?;
        out.push_str(&format!(
            "\"$${{unit.{unit}.outputs.{key}{}}}\"",
            steps.replace('"', "\\\"")
        ));
        i = j;
    }
    Ok(out)
}

/// Reads every `terragrunt.hcl` under `opts.dir` into a `terraform` unit.
pub fn terragrunt(opts: &Options) -> Result<Imported, ImportError> {
    let mut configs = Vec::new();
    find_configs(&opts.root, &opts.dir, &opts.out, &mut configs)?;
    let mut out = Imported {
        files: configs.len(),
        ..Imported::default()
    };
    // Files other stacks include are root files, not stacks.
    let names: BTreeMap<PathBuf, String> = configs
        .iter()
        .map(|c| {
            let dir = c.parent().unwrap_or(&opts.root).to_path_buf();
            let rel = dir
                .strip_prefix(&opts.dir)
                .unwrap_or(&dir)
                .display()
                .to_string();
            let name: String = rel
                .to_lowercase()
                .chars()
                .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
                .collect();
            (dir, name.trim_matches('-').to_owned())
        })
        .collect();
    let mut included_files = std::collections::BTreeSet::new();
    let mut stacks = Vec::new();
    for c in &configs {
        let file = c
            .strip_prefix(&opts.root)
            .unwrap_or(c)
            .display()
            .to_string();
        let dir = c.parent().unwrap_or(&opts.root).to_path_buf();
        here(|h| {
            *h = Here {
                root: opts.root.clone(),
                unit_dir: dir.clone(),
                file_dir: dir.clone(),
                ..Here::default()
            };
        });
        let mut un = |what: &str, todo: &str| {
            out.unmapped.push(Unmapped {
                file: file.clone(),
                what: what.to_owned(),
                todo: todo.to_owned(),
            });
        };
        let text = match read(c) {
            Ok(t) => t,
            Err(e) => {
                un("the file", &e);
                continue;
            }
        };
        let body: hcl::Body = match hcl::parse(&text) {
            Ok(b) => b,
            Err(e) => {
                un(
                    "HCL",
                    &format!("{e}: fix the file (terragrunt would refuse it too)"),
                );
                continue;
            }
        };
        let includes: Vec<&hcl::Block> = body
            .blocks()
            .filter(|b| b.identifier() == "include")
            .collect();
        if includes.len() > 1 {
            un(
                "include",
                "more than one include: only the first is read; merge the others into it",
            );
        }
        let mut include = None;
        if let Some(inc) = includes.first() {
            let ctx = context(&Map::new(), &Map::new());
            let path = inc
                .body()
                .attributes()
                .find(|a| a.key() == "path")
                .map(|a| a.expr().evaluate(&ctx));
            match path {
                Some(Ok(v)) if v.as_str().is_some() => {
                    let p = Path::new(v.as_str().unwrap_or_default());
                    let p = if p.is_absolute() {
                        p.to_path_buf()
                    } else {
                        dir.join(p)
                    };
                    match read(&p)
                        .and_then(|t| hcl::parse(&t).map(|b| (t, b)).map_err(|e| e.to_string()))
                    {
                        Ok((itext, b)) => {
                            included_files.insert(p.clone());
                            let attr = |k: &str| {
                                inc.body()
                                    .attributes()
                                    .find(|a| a.key() == k)
                                    .and_then(|a| a.expr().evaluate(&ctx).ok())
                            };
                            include = Some(Included {
                                text: itext,
                                label: inc
                                    .labels()
                                    .first()
                                    .map(|l| l.as_str().to_owned())
                                    .unwrap_or_default(),
                                dir: p.parent().map(Path::to_path_buf).unwrap_or_default(),
                                body: b,
                                expose: attr("expose").and_then(|v| v.as_bool()) == Some(true),
                                deep: attr("merge_strategy")
                                    .as_ref()
                                    .and_then(|v| v.as_str().map(str::to_owned))
                                    .as_deref()
                                    == Some("deep"),
                                no_merge: attr("merge_strategy")
                                    .as_ref()
                                    .and_then(|v| v.as_str().map(str::to_owned))
                                    .as_deref()
                                    == Some("no_merge"),
                            });
                        }
                        Err(e) => un("include", &format!("{}: {e}", p.display())),
                    }
                }
                Some(Err(e)) => un("include.path", &e.to_string()),
                _ => un("include", "no `path`"),
            }
        }
        stacks.push(Stack {
            file,
            dir,
            text,
            body,
            include,
        });
    }
    for s in &stacks {
        if included_files.contains(&s.dir.join("terragrunt.hcl")) {
            continue;
        }
        let name = names.get(&s.dir).cloned().unwrap_or_default();
        if !dns_name(&name) {
            out.unmapped.push(Unmapped {
                file: s.file.clone(),
                what: format!("stack {:?}", name),
                todo: "its directory does not make a unit name: rename the directory".to_owned(),
            });
            continue;
        }
        let layer = opts
            .layers
            .iter()
            .find(|(prefix, _)| s.file.starts_with(prefix.trim_start_matches("./")))
            .map_or_else(|| opts.default_layer.clone(), |(_, l)| l.clone());
        if !out.layers.contains(&layer) {
            out.layers.push(layer.clone());
        }
        match stack_unit(opts, s, &name, &layer, &names) {
            Ok((unit, unmapped)) => {
                out.units.push(unit);
                out.unmapped.extend(unmapped);
            }
            Err(e) => out.unmapped.push(Unmapped {
                file: s.file.clone(),
                what: "the stack".to_owned(),
                todo: e,
            }),
        }
    }
    // Layers in the order the mapping gives, then the default.
    let mut layers: Vec<String> = opts
        .layers
        .iter()
        .map(|(_, l)| l.clone())
        .filter(|l| out.layers.contains(l))
        .collect();
    layers.dedup();
    for l in std::mem::take(&mut out.layers) {
        if !layers.contains(&l) {
            layers.push(l);
        }
    }
    out.layers = layers;
    out.units.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(out)
}

/// One stack's unit: unit.yaml, the root module calling its module, and
/// its generated files.
fn stack_unit(
    opts: &Options,
    s: &Stack,
    name: &str,
    layer: &str,
    names: &BTreeMap<PathBuf, String>,
) -> Result<(UnitFile, Vec<Unmapped>), String> {
    let mut unmapped = Vec::new();
    let mut un = |what: &str, todo: &str| {
        unmapped.push(Unmapped {
            file: s.file.clone(),
            what: what.to_owned(),
            todo: todo.to_owned(),
        });
    };
    here(|h| {
        *h = Here {
            root: opts.root.clone(),
            unit_dir: s.dir.clone(),
            file_dir: s.dir.clone(),
            include_dir: s.include.as_ref().map(|i| i.dir.clone()),
            ..Here::default()
        };
    });
    // Dependency blocks (child over root, by label) → unit names.
    let mut dep_blocks: BTreeMap<String, &hcl::Block> = BTreeMap::new();
    for body in s
        .include
        .iter()
        .filter(|i| !i.no_merge)
        .map(|i| &i.body)
        .chain(std::iter::once(&s.body))
    {
        for b in body.blocks().filter(|b| b.identifier() == "dependency") {
            if let Some(l) = b.labels().first() {
                dep_blocks.insert(l.as_str().to_owned(), b);
            }
        }
    }
    let ctx0 = context(&Map::new(), &Map::new());
    let mut dep_units = BTreeMap::new();
    for (label, b) in &dep_blocks {
        let Some(path) = b.body().attributes().find(|a| a.key() == "config_path") else {
            un(&format!("dependency {label}"), "no config_path");
            continue;
        };
        let p = path
            .expr()
            .evaluate(&ctx0)
            .map_err(|e| format!("dependency {label}: {e}"))?;
        let dir = clean_join(&s.dir, p.as_str().unwrap_or_default());
        match names.get(&dir) {
            Some(u) => {
                dep_units.insert(label.clone(), u.clone());
            }
            None => un(
                &format!("dependency {label}"),
                &format!(
                    "{} is not a stack of the tree: import it too, or set the input by hand",
                    dir.display()
                ),
            ),
        }
        if b.body().attributes().any(|a| a.key() == "skip_outputs") {
            un(
                &format!("dependency {label}: skip_outputs"),
                "terrace reads every dependency's outputs (a unit whose outputs are not known yet is deferred)",
            );
        }
    }
    let mut depends: Vec<String> = Vec::new();
    for body in s
        .include
        .iter()
        .filter(|i| !i.no_merge)
        .map(|i| &i.body)
        .chain(std::iter::once(&s.body))
    {
        for b in body.blocks().filter(|b| b.identifier() == "dependencies") {
            if let Some(paths) = b.body().attributes().find(|a| a.key() == "paths") {
                let v = paths
                    .expr()
                    .evaluate(&ctx0)
                    .map_err(|e| format!("dependencies.paths: {e}"))?;
                for p in v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str())
                {
                    match names.get(&clean_join(&s.dir, p)) {
                        Some(u) => depends.push(u.clone()),
                        None => un(&format!("dependencies {p}"), "not a stack of the tree"),
                    }
                }
            }
        }
    }
    // The files again, with dependency outputs as terrace references.
    let reparse = |text: &str, what: &str| -> Result<hcl::Body, String> {
        let rewritten =
            rewrite_dependencies(text, &dep_units).map_err(|e| format!("{what}: {e}"))?;
        hcl::parse(&rewritten).map_err(|e| format!("{what}: {e}"))
    };
    let child = reparse(&s.text, &s.file)?;
    let parent = s
        .include
        .as_ref()
        .map(|i| reparse(&i.text, "the included file"))
        .transpose()?;
    // `merge_strategy = "no_merge"`: the root file only lends what an
    // exposed include shows.
    let merged = s.include.as_ref().is_some_and(|i| !i.no_merge);
    let merged_parent = parent.as_ref().filter(|_| merged);
    // The root file's locals and inputs, in its own place.
    let mut include_var = Map::new();
    let mut parent_inputs = Value::Object(Map::new());
    if let (Some(inc), Some(pbody)) = (&s.include, &parent) {
        here(|h| h.file_dir = inc.dir.clone());
        let (locals, errors) = eval_locals(pbody, &Map::new());
        for (k, e) in errors {
            un(
                &format!("included locals.{k}"),
                &format!("not evaluated: {e}"),
            );
        }
        if let Some(a) = pbody.attributes().find(|a| a.key() == "inputs") {
            match a.expr().evaluate(&context(&locals, &Map::new())) {
                Ok(v) => parent_inputs = to_json(&v),
                Err(e) => un("included inputs", &format!("not evaluated: {e}")),
            }
        }
        if inc.expose {
            let exposed = json!({"locals": locals, "inputs": parent_inputs.clone()});
            if inc.label.is_empty() {
                if let Value::Object(m) = exposed {
                    include_var.extend(m);
                }
            } else {
                include_var.insert(inc.label.clone(), exposed);
            }
        }
        here(|h| h.file_dir = s.dir.clone());
    }
    let (locals, errors) = eval_locals(&child, &include_var);
    for (k, e) in errors {
        un(&format!("locals.{k}"), &format!("not evaluated: {e}"));
    }
    let ctx = context(&locals, &include_var);
    let mut inputs = if merged {
        parent_inputs
    } else {
        Value::Object(Map::new())
    };
    if let Some(a) = child.attributes().find(|a| a.key() == "inputs") {
        let v = to_json(
            &a.expr()
                .evaluate(&ctx)
                .map_err(|e| format!("inputs: {e}"))?,
        );
        let deep = s.include.as_ref().is_some_and(|i| i.deep);
        merge_into(&mut inputs, v, deep);
    }
    // terraform.source: the child's, else the root file's.
    let source = [Some(&child), merged_parent]
        .into_iter()
        .flatten()
        .find_map(|b| {
            b.blocks()
                .find(|t| t.identifier() == "terraform")
                .and_then(|t| {
                    t.body()
                        .attributes()
                        .find(|a| a.key() == "source")
                        .map(|a| (t, a.expr().clone()))
                })
        });
    let Some((_, source)) = source else {
        return Err("no `terraform { source }`: the stack's own directory is its module; import it as a `terraform` unit of that directory by hand".to_owned());
    };
    let source = source
        .evaluate(&ctx)
        .map_err(|e| format!("terraform.source: {e}"))?;
    let source = source.as_str().unwrap_or_default().to_owned();
    if source.contains("::")
        || source.starts_with("tfr:")
        || source.contains("://")
        || source.starts_with("github.com")
        || source.starts_with("git@")
    {
        return Err(format!(
            "terraform.source `{source}` is remote: vendor the module into the repository and point the source at it"
        ));
    }
    let local = source
        .split('?')
        .next()
        .unwrap_or_default()
        .replace("//", "/");
    let module_dir = clean_join(&s.dir, &local);
    if !module_dir.starts_with(&opts.root) || !module_dir.is_dir() {
        return Err(format!(
            "terraform.source `{source}`: {} is not a directory of the project",
            module_dir.display()
        ));
    }
    let (variables, outputs) = module_interface(&module_dir)?;
    // The unit's directory, and the module from there.
    let unit_dir = opts
        .root
        .join(format!("{}/{layer}/{name}", opts.out.trim_end_matches('/')));
    let module_rel = rel(&unit_dir, &module_dir);
    let mut main = format!(
        "# Generated by `terrace import terragrunt` from {}:\n# the stack's module, with its inputs, and its outputs.\nmodule \"this\" {{\n  source = \"./{}\"\n",
        s.file,
        module_rel.trim_start_matches("./")
    );
    let mut unit_inputs = Map::new();
    let mut ignored = Vec::new();
    for (k, v) in inputs.as_object().cloned().unwrap_or_default() {
        if variables.contains_key(&k) {
            main.push_str(&format!("  {k} = var.{k}\n"));
            unit_inputs.insert(k, v);
        } else {
            ignored.push(k);
        }
    }
    main.push_str("}\n");
    for k in unit_inputs.keys() {
        main.push_str(&format!("\nvariable \"{k}\" {{}}\n"));
    }
    for (o, sensitive) in &outputs {
        main.push_str(&format!(
            "\noutput \"{o}\" {{\n  value = module.this.{o}{}\n}}\n",
            if *sensitive {
                "\n  sensitive = true"
            } else {
                ""
            }
        ));
    }
    let mut extra = vec![("main.tf".to_owned(), main)];
    // generate blocks: the root file's, the stack's over them by label.
    let mut generate: BTreeMap<String, (Value, Value)> = BTreeMap::new();
    for body in merged_parent.into_iter().chain(std::iter::once(&child)) {
        for g in body.blocks().filter(|b| b.identifier() == "generate") {
            let label = g
                .labels()
                .first()
                .map(|l| l.as_str().to_owned())
                .unwrap_or_default();
            let attr = |k: &str| {
                g.body()
                    .attributes()
                    .find(|a| a.key() == k)
                    .map(|a| a.expr().evaluate(&ctx))
            };
            match (attr("path"), attr("contents")) {
                (Some(Ok(p)), Some(Ok(c))) => {
                    generate.insert(label, (to_json(&p), to_json(&c)));
                }
                _ => un(
                    &format!("generate {label}"),
                    "its path or contents could not be evaluated: write the file into the unit by hand",
                ),
            }
        }
    }
    for (label, (p, c)) in generate {
        let path = p.as_str().unwrap_or_default();
        let ok = !path.is_empty()
            && !path.contains('/')
            && !path.starts_with('.')
            && path != "main.tf"
            && path != crate::UNIT_YAML;
        if !ok {
            un(
                &format!("generate {label}"),
                &format!("path `{path}` is not a plain file name of the unit: write it by hand"),
            );
            continue;
        }
        extra.push((path.to_owned(), c.as_str().unwrap_or_default().to_owned()));
    }
    if child
        .blocks()
        .chain(merged_parent.into_iter().flat_map(|p| p.blocks()))
        .any(|b| b.identifier() == "remote_state")
        || child
            .attributes()
            .chain(merged_parent.into_iter().flat_map(|p| p.attributes()))
            .any(|a| a.key() == "remote_state")
    {
        un(
            "remote_state",
            "terrace keeps Terraform's state itself (under .terrace/terraform/); to keep what the stack's state holds, push it into the unit's state once and move each resource under `module.this.` (`terraform state mv`)",
        );
    }
    let mut doc = Map::new();
    doc.insert("layer".into(), json!(layer));
    doc.insert("kind".into(), json!("terraform"));
    if !depends.is_empty() {
        depends.sort();
        depends.dedup();
        doc.insert("dependsOn".into(), json!(depends));
    }
    if !unit_inputs.is_empty() {
        let mut inputs = Value::Object(unit_inputs);
        escape_literals(&mut inputs);
        doc.insert("inputs".into(), inputs);
    }
    let mut header = format!(
        "# Imported from {} by `terrace import terragrunt`;\n# that file is left as it is.\n",
        s.file
    );
    if !ignored.is_empty() {
        header.push_str(&format!(
            "# Inputs Terragrunt passed that the module does not declare (ignored, as Terragrunt ignores them): {}\n",
            ignored.join(", ")
        ));
    }
    let unit = UnitFile {
        name: name.to_owned(),
        layer: layer.to_owned(),
        kind: "terraform",
        dir: format!("{}/{layer}/{name}", opts.out.trim_end_matches('/')),
        from: s.file.clone(),
        text: format!("{header}{}", terrace_yaml::to_string(&Value::Object(doc))),
        extra,
    };
    Ok((unit, unmapped))
}

/// A `${` in an input that is not one of the unit references the import
/// wrote is text: written `$${` for terrace.
fn escape_literals(v: &mut Value) {
    match v {
        Value::String(t) if t.contains("${") => {
            let mut out = String::new();
            let mut rest = t.as_str();
            while let Some(at) = rest.find("${") {
                out.push_str(&rest[..at]);
                if !rest[at..].starts_with("${unit.") {
                    out.push('$');
                }
                out.push_str("${");
                rest = &rest[at + 2..];
            }
            out.push_str(rest);
            *t = out;
        }
        Value::Array(items) => items.iter_mut().for_each(escape_literals),
        Value::Object(map) => map.values_mut().for_each(escape_literals),
        _ => {}
    }
}

/// `dir/rel`, with `.` and `..` taken out.
fn clean_join(dir: &Path, rel: &str) -> PathBuf {
    let mut out = if Path::new(rel).is_absolute() {
        PathBuf::new()
    } else {
        dir.to_path_buf()
    };
    for c in Path::new(rel).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn merge_into(base: &mut Value, over: Value, deep: bool) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if deep && existing.is_object() && v.is_object() => {
                        merge_into(existing, v, true)
                    }
                    Some(Value::Array(existing)) if deep && v.is_array() => {
                        existing.extend(v.as_array().cloned().unwrap_or_default());
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The variables (and whether each has a default) and outputs (and
/// whether each is sensitive) a module declares.
type Interface = (BTreeMap<String, bool>, BTreeMap<String, bool>);

fn module_interface(dir: &Path) -> Result<Interface, String> {
    let mut variables = BTreeMap::new();
    let mut outputs = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("tf") {
            continue;
        }
        let text = read(&p)?;
        let body: hcl::Body = hcl::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        for b in body.blocks() {
            let Some(label) = b.labels().first().map(|l| l.as_str().to_owned()) else {
                continue;
            };
            match b.identifier() {
                "variable" => {
                    variables.insert(label, b.body().attributes().any(|a| a.key() == "default"));
                }
                "output" => {
                    let sensitive = b.body().attributes().any(|a| {
                        a.key() == "sensitive" && matches!(a.expr(), hcl::Expression::Bool(true))
                    });
                    outputs.insert(label, sensitive);
                }
                _ => {}
            }
        }
    }
    Ok((variables, outputs))
}

fn find_configs(
    root: &Path,
    dir: &Path,
    out_dir: &str,
    found: &mut Vec<PathBuf>,
) -> Result<(), ImportError> {
    for entry in terrace_fs::read_dir(dir)
        .map_err(|e| ImportError::Invalid(format!("{}: {e}", dir.display())))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ft = entry.file_type()?;
        if ft.is_symlink()
            || matches!(
                name.as_str(),
                ".terragrunt-cache" | ".terraform" | ".git" | ".terrace"
            )
        {
            continue;
        }
        let path = entry.path();
        if ft.is_dir() {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            if rel != out_dir.trim_end_matches('/') {
                find_configs(root, &path, out_dir, found)?;
            }
        } else if name == "terragrunt.hcl" {
            if found.len() >= 5000 {
                return Err(ImportError::Invalid(
                    "more than 5,000 terragrunt.hcl files: import a smaller part of the tree"
                        .to_owned(),
                ));
            }
            found.push(path);
        }
    }
    found.sort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_outputs_become_unit_references() {
        let units: BTreeMap<String, String> = [("vpc".to_owned(), "prod-vpc".to_owned())].into();
        let out = rewrite_dependencies(
            r#"inputs = { id = dependency.vpc.outputs.vpc_id, first = dependency.vpc.outputs.subnets[0], name = "${dependency.vpc.outputs.name}-x" }"#,
            &units,
        )
        .expect("rewrites");
        assert!(
            out.contains(r#"id = "$${unit.prod-vpc.outputs.vpc_id}""#),
            "{out}"
        );
        assert!(
            out.contains(r#"first = "$${unit.prod-vpc.outputs.subnets[0]}""#),
            "{out}"
        );
        assert!(
            out.contains(r#"name = "${"$${unit.prod-vpc.outputs.name}"}-x""#),
            "{out}"
        );
        assert!(rewrite_dependencies("x = dependency.db.outputs.a", &units).is_err());
        assert!(rewrite_dependencies("x = dependency.vpc", &units).is_err());
        // Not a reference: part of another name.
        assert_eq!(
            rewrite_dependencies("x = my_dependency.vpc", &units).expect("ok"),
            "x = my_dependency.vpc"
        );
    }

    #[test]
    fn paths_and_merges() {
        assert_eq!(rel(Path::new("/a/b"), Path::new("/a/b/c/d")), "c/d");
        assert_eq!(rel(Path::new("/a/b/c/d"), Path::new("/a/b")), "../..");
        assert_eq!(
            clean_join(Path::new("/r/live/prod/db"), "../vpc"),
            PathBuf::from("/r/live/prod/vpc")
        );
        let mut a = json!({"tags": {"a": 1}, "list": [1], "x": 1});
        merge_into(&mut a, json!({"tags": {"b": 2}, "list": [2]}), true);
        assert_eq!(a, json!({"tags": {"a": 1, "b": 2}, "list": [1, 2], "x": 1}));
        let mut b = json!({"tags": {"a": 1}});
        merge_into(&mut b, json!({"tags": {"b": 2}}), false);
        assert_eq!(b, json!({"tags": {"b": 2}}));
    }
}
