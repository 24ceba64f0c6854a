//! The `${...}` expression language used in `unit.yaml`, manifests and
//! settings.
//!
//! - `${env}`: the environment's name;
//! - `${var.NAME}`: a variable, with `.key`, `[0]` and `["key"]` steps into
//!   structured values;
//! - `${unit.NAME.outputs.KEY}`: another unit's output (this also makes
//!   the other unit a dependency);
//! - `${secret.PATH#KEY.PATH}`: a value from a SOPS file, through the
//!   [`Scope::secret`] hook;
//! - `${input.NAME}`: one of the unit's inputs, in the unit's own files
//!   (manifests); `unit.yaml` itself cannot use it.
//!
//! A string that is exactly one expression takes the expression's type
//! (list, map, number); inside a longer string the value is interpolated.
//! `$${` writes a literal `${`.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::value_path::{Seg, ValuePath};

/// What a dependent sees in place of an output that exists only after its
/// unit is applied.
pub const UNKNOWN: &str = "(known after apply)";

/// One parsed `${...}` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Env,
    Var { name: String, path: Vec<Seg> },
    Input { name: String, path: Vec<Seg> },
    UnitOutput { unit: String, path: Vec<Seg> },
    Secret { file: String, key: Vec<Seg> },
}

/// A piece of a string: literal text or an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Expr {
        expr: Expr,
        /// Byte offset of the `$` in the string.
        offset: usize,
        /// The expression as written, `${` to `}`.
        source: String,
    },
}

/// A string split into text and expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub pieces: Vec<Piece>,
}

impl Template {
    /// Whether the string has any expression in it.
    pub fn has_expressions(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Expr { .. }))
    }

    /// The expression, if the string is exactly one expression.
    fn single(&self) -> Option<(&Expr, usize, &str)> {
        match self.pieces.as_slice() {
            [
                Piece::Expr {
                    expr,
                    offset,
                    source,
                },
            ] => Some((expr, *offset, source)),
            _ => None,
        }
    }
}

/// Why an expression could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("`${{` is not closed by `}}`")]
    Unterminated,
    #[error("empty expression `${{}}`")]
    Empty,
    #[error("unknown expression `{0}`")]
    UnknownRoot(String),
    #[error("`{0}` is not a valid name")]
    BadName(String),
    #[error("`${{unit.{0}...}}` must continue with `.outputs`")]
    ExpectedOutputs(String),
    #[error("unexpected `{0}` in expression")]
    Unexpected(String),
    #[error("a secret reference needs a file and a key: `${{secret.PATH#KEY}}`")]
    BadSecret,
}

impl ParseErrorKind {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ParseErrorKind::Unterminated => {
                Some("close the expression with `}`, or write `$${` for a literal `${`")
            }
            ParseErrorKind::UnknownRoot(_) | ParseErrorKind::Empty => Some(
                "expressions are `${env}`, `${var.NAME}`, `${input.NAME}`, `${unit.NAME.outputs.KEY}` and `${secret.PATH#KEY}`; write `$${` for a literal `${`",
            ),
            ParseErrorKind::ExpectedOutputs(_) => Some("write `${unit.NAME.outputs.KEY}`"),
            _ => None,
        }
    }
}

/// A parse error with its place in the string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ParseError {
    pub kind: ParseErrorKind,
    /// Byte offset of the problem in the string.
    pub offset: usize,
    /// The text of the offending expression.
    pub source_text: String,
}

/// Splits a string into text and expressions.
pub fn parse(input: &str) -> Result<Template, ParseError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if input[i..].starts_with("$${") {
            text.push_str("${");
            i += 3;
        } else if input[i..].starts_with("${") {
            let Some(close) = find_close(&input[i + 2..]) else {
                return Err(ParseError {
                    kind: ParseErrorKind::Unterminated,
                    offset: i,
                    source_text: input[i..].to_owned(),
                });
            };
            let inner = &input[i + 2..i + 2 + close];
            let source = &input[i..i + 3 + close];
            let expr = parse_expr(inner).map_err(|kind| ParseError {
                kind,
                offset: i,
                source_text: source.to_owned(),
            })?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Expr {
                expr,
                offset: i,
                source: source.to_owned(),
            });
            i += 3 + close;
        } else {
            let ch = input[i..].chars().next().expect("i is on a char boundary");
            text.push(ch);
            i += ch.len_utf8();
        }
    }
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(Template { pieces })
}

/// The index of the `}` closing an expression, skipping quoted keys.
fn find_close(s: &str) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '}' if !in_quote => return Some(i),
            '\n' if !in_quote => return None,
            _ => {}
        }
    }
    None
}

fn parse_expr(inner: &str) -> Result<Expr, ParseErrorKind> {
    let s = inner.trim();
    if s.is_empty() {
        return Err(ParseErrorKind::Empty);
    }
    if s == "env" {
        return Ok(Expr::Env);
    }
    if let Some(rest) = s.strip_prefix("var.") {
        let (name, rest) = take_name(rest)?;
        let path = parse_steps(rest)?;
        return Ok(Expr::Var { name, path });
    }
    if let Some(rest) = s.strip_prefix("input.") {
        let (name, rest) = take_name(rest)?;
        let path = parse_steps(rest)?;
        return Ok(Expr::Input { name, path });
    }
    if let Some(rest) = s.strip_prefix("unit.") {
        let (unit, rest) = take_name(rest)?;
        let Some(rest) = rest.strip_prefix(".outputs") else {
            return Err(ParseErrorKind::ExpectedOutputs(unit));
        };
        let path = parse_steps(rest)?;
        return Ok(Expr::UnitOutput { unit, path });
    }
    if let Some(rest) = s.strip_prefix("secret.") {
        let (file, key) = rest.split_once('#').ok_or(ParseErrorKind::BadSecret)?;
        if file.is_empty() || key.is_empty() {
            return Err(ParseErrorKind::BadSecret);
        }
        let key = parse_steps(&format!(".{key}"))?;
        return Ok(Expr::Secret {
            file: file.to_owned(),
            key,
        });
    }
    let root = s.split(['.', '[']).next().unwrap_or(s);
    Err(ParseErrorKind::UnknownRoot(root.to_owned()))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Whether `s` is a valid unit, variable or environment name.
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && chars.all(is_name_char)
}

fn take_name(s: &str) -> Result<(String, &str), ParseErrorKind> {
    let end = s.find(|c: char| !is_name_char(c)).unwrap_or(s.len());
    let name = &s[..end];
    if !is_valid_name(name) {
        let bad = s.split(['.', '[']).next().unwrap_or(s);
        return Err(ParseErrorKind::BadName(bad.to_owned()));
    }
    Ok((name.to_owned(), &s[end..]))
}

/// Parses `.key`, `[0]` and `["key"]` steps.
fn parse_steps(mut s: &str) -> Result<Vec<Seg>, ParseErrorKind> {
    let mut steps = Vec::new();
    while !s.is_empty() {
        if let Some(rest) = s.strip_prefix('.') {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let key = &rest[..end];
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(ParseErrorKind::Unexpected(s.to_owned()));
            }
            steps.push(Seg::Key(key.to_owned()));
            s = &rest[end..];
        } else if let Some(rest) = s.strip_prefix("[\"") {
            let mut key = String::new();
            let mut chars = rest.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            key.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => key.push(c),
                }
            }
            let end = end.ok_or_else(|| ParseErrorKind::Unexpected(s.to_owned()))?;
            let after = rest[end + 1..]
                .strip_prefix(']')
                .ok_or_else(|| ParseErrorKind::Unexpected(s.to_owned()))?;
            steps.push(Seg::Key(key));
            s = after;
        } else if let Some(rest) = s.strip_prefix('[') {
            let end = rest
                .find(']')
                .ok_or_else(|| ParseErrorKind::Unexpected(s.to_owned()))?;
            let index = rest[..end]
                .trim()
                .parse::<usize>()
                .map_err(|_| ParseErrorKind::Unexpected(format!("[{}]", &rest[..end])))?;
            steps.push(Seg::Index(index));
            s = &rest[end + 1..];
        } else {
            return Err(ParseErrorKind::Unexpected(s.to_owned()));
        }
    }
    Ok(steps)
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn steps(f: &mut fmt::Formatter<'_>, path: &[Seg]) -> fmt::Result {
            for s in path {
                match s {
                    Seg::Key(k) => write!(f, ".{k}")?,
                    Seg::Index(i) => write!(f, "[{i}]")?,
                }
            }
            Ok(())
        }
        match self {
            Expr::Env => f.write_str("env"),
            Expr::Var { name, path } => {
                write!(f, "var.{name}")?;
                steps(f, path)
            }
            Expr::Input { name, path } => {
                write!(f, "input.{name}")?;
                steps(f, path)
            }
            Expr::UnitOutput { unit, path } => {
                write!(f, "unit.{unit}.outputs")?;
                steps(f, path)
            }
            Expr::Secret { file, key } => {
                write!(f, "secret.{file}#")?;
                let mut first = true;
                for s in key {
                    match s {
                        Seg::Key(k) if first => write!(f, "{k}")?,
                        Seg::Key(k) => write!(f, ".{k}")?,
                        Seg::Index(i) => write!(f, "[{i}]")?,
                    }
                    first = false;
                }
                Ok(())
            }
        }
    }
}

/// A unit's outputs as a dependent sees them.
#[derive(Debug, Clone, Copy)]
pub enum Outputs<'a> {
    Known(&'a Map<String, Value>),
    /// The unit is not applied yet, or will change: its outputs exist only
    /// after apply.
    Unknown,
}

/// What expressions can see.
pub trait Scope {
    fn env(&self) -> &str;
    fn var(&self, name: &str) -> Option<&Value>;
    /// The names of every variable, for "did you mean" hints.
    fn var_names(&self) -> Vec<String>;
    /// The unit's inputs, where the scope has them (`None` in `unit.yaml`).
    fn inputs(&self) -> Option<&Map<String, Value>> {
        None
    }
    /// Whether the input `name` is known only after a dependency is
    /// applied.
    fn input_unknown(&self, _name: &str) -> bool {
        false
    }
    /// A dependency's outputs; `None` when `unit` is no unit of the project.
    fn unit_outputs(&self, unit: &str) -> Option<Outputs<'_>>;
    /// Whether `${unit...}` may be used in this scope.
    fn outputs_allowed(&self) -> bool {
        true
    }
    /// Where secret references are resolved; `None` where there is no
    /// secrets source.
    fn secret_source(&self) -> Option<&dyn crate::secrets::SecretSource> {
        None
    }
    /// Resolves a secret reference through [`Scope::secret_source`].
    fn secret(&self, file: &str, key: &[Seg]) -> Result<Value, SecretError> {
        match self.secret_source() {
            Some(s) => s.value(file, key),
            None => Err(SecretError::Unsupported),
        }
    }
    /// A label when a dependency's output is sensitive (it then counts as
    /// a secret where it is used).
    fn output_secret(&self, _unit: &str, _key: &str) -> Option<String> {
        None
    }
    /// The secrets files behind an input's value (empty for plain ones).
    fn input_secrets(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }
}

/// The scope of a unit's own files: its environment, variables and
/// evaluated inputs. Unit outputs reach files only through inputs, so every
/// dependency is declared in `unit.yaml`.
#[derive(Debug, Clone, Copy)]
pub struct ContentScope<'a> {
    pub env: &'a str,
    pub vars: &'a Map<String, Value>,
    pub inputs: &'a Map<String, Value>,
    /// Inputs known only after a dependency is applied.
    pub unknown_inputs: &'a std::collections::BTreeSet<String>,
    /// Which inputs hold secret values, and from which files.
    pub sensitive_inputs: &'a BTreeMap<String, Vec<String>>,
    pub secrets: Option<&'a dyn crate::secrets::SecretSource>,
}

impl Scope for ContentScope<'_> {
    fn env(&self) -> &str {
        self.env
    }
    fn var(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }
    fn var_names(&self) -> Vec<String> {
        self.vars.keys().cloned().collect()
    }
    fn inputs(&self) -> Option<&Map<String, Value>> {
        Some(self.inputs)
    }
    fn input_unknown(&self, name: &str) -> bool {
        self.unknown_inputs.contains(name)
    }
    fn unit_outputs(&self, _unit: &str) -> Option<Outputs<'_>> {
        None
    }
    fn secret_source(&self) -> Option<&dyn crate::secrets::SecretSource> {
        self.secrets
    }
    fn input_secrets(&self, name: &str) -> Vec<String> {
        self.sensitive_inputs.get(name).cloned().unwrap_or_default()
    }
    fn outputs_allowed(&self) -> bool {
        false
    }
}

/// Why a secret could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret references are not available here")]
    Unsupported,
    #[error("{message}")]
    Failed {
        message: String,
        hint: Option<String>,
    },
    /// No key this machine has opens the secret.
    #[error("{message}")]
    NoKeys {
        message: String,
        hint: Option<String>,
    },
}

impl SecretError {
    /// Why it happened, for callers that act on it.
    pub fn cause(&self) -> Option<crate::diag::Cause> {
        matches!(self, SecretError::NoKeys { .. }).then_some(crate::diag::Cause::MissingKeys)
    }
}

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalErrorKind {
    #[error(transparent)]
    Parse(#[from] ParseErrorKind),
    #[error("unknown variable `{name}`")]
    UnknownVar { name: String, known: Vec<String> },
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    #[error("`${{input.{0}}}` is not available here")]
    InputsUnavailable(String),
    #[error("unit outputs cannot be used here")]
    OutputsUnavailable,
    #[error("the unit has no input `{name}`")]
    UnknownInput { name: String, known: Vec<String> },
    #[error("`{expr}` has no value at `{step}`")]
    Missing { expr: String, step: String },
    #[error("cannot put a {0} inside a string")]
    NotInterpolable(&'static str),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl EvalErrorKind {
    pub fn hint(&self) -> Option<String> {
        match self {
            EvalErrorKind::Parse(p) => p.hint().map(str::to_owned),
            EvalErrorKind::UnknownVar { known, .. } if known.is_empty() => Some(
                "define it under `vars` in terrace.yaml or the environment's `vars`/`varFiles`"
                    .to_owned(),
            ),
            EvalErrorKind::UnknownVar { known, .. } => Some(format!(
                "define it under `vars` in terrace.yaml or the environment; known variables: {}",
                known.join(", ")
            )),
            EvalErrorKind::InputsUnavailable(_) => Some(
                "`${input.NAME}` works in a unit's own files; in unit.yaml use the value itself"
                    .to_owned(),
            ),
            EvalErrorKind::OutputsUnavailable => Some(
                "pass the output through an input in unit.yaml (`inputs: {x: ${unit.NAME.outputs.KEY}}`) and use `${input.x}`"
                    .to_owned(),
            ),
            EvalErrorKind::UnknownInput { known, .. } => Some(format!(
                "add it under `inputs` in unit.yaml; the unit's inputs: {}",
                if known.is_empty() { "(none)".to_owned() } else { known.join(", ") }
            )),
            EvalErrorKind::NotInterpolable(_) => Some(
                "make the whole value the expression to keep its type, e.g. `key: ${var.list}`"
                    .to_owned(),
            ),
            EvalErrorKind::Secret(SecretError::Unsupported) => Some(
                "secrets are resolved by the engine; this context has no secrets source".to_owned(),
            ),
            EvalErrorKind::Secret(
                SecretError::Failed { hint, .. } | SecretError::NoKeys { hint, .. },
            ) => hint.clone(),
            _ => None,
        }
    }

    /// Why it happened, for callers that act on it.
    pub fn cause(&self) -> Option<crate::diag::Cause> {
        match self {
            EvalErrorKind::Secret(s) => s.cause(),
            _ => None,
        }
    }
}

/// An evaluation error and where it happened.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}")]
pub struct EvalError {
    pub kind: EvalErrorKind,
    /// The value holding the expression.
    pub path: ValuePath,
    /// Byte offset of the expression in that string value.
    pub offset: usize,
    /// The expression as written.
    pub source_text: String,
}

/// The result of evaluating a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    pub value: Value,
    /// Whether some part is only known after a dependency is applied.
    pub unknown: bool,
    /// The secrets files whose values flowed into this value (directly,
    /// or through an input that holds one), sorted.
    pub secrets: Vec<String>,
}

/// What evaluation learns besides the value.
#[derive(Debug, Default)]
struct Flags {
    unknown: bool,
    secrets: std::collections::BTreeSet<String>,
}

/// Evaluates every expression in `value`; `path` is where `value` sits in its
/// file, for errors.
pub fn eval(value: &Value, path: &ValuePath, scope: &dyn Scope) -> Result<Evaluated, EvalError> {
    let mut flags = Flags::default();
    let value = eval_inner(value, path, scope, &mut flags)?;
    Ok(Evaluated {
        value,
        unknown: flags.unknown,
        secrets: flags.secrets.into_iter().collect(),
    })
}

fn eval_inner(
    value: &Value,
    path: &ValuePath,
    scope: &dyn Scope,
    flags: &mut Flags,
) -> Result<Value, EvalError> {
    Ok(match value {
        Value::String(s) => eval_string(s, path, scope, flags)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| eval_inner(v, &path.index(i), scope, flags))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), eval_inner(v, &path.key(k), scope, flags)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

fn eval_string(
    s: &str,
    path: &ValuePath,
    scope: &dyn Scope,
    flags: &mut Flags,
) -> Result<Value, EvalError> {
    if !s.contains("${") {
        return Ok(Value::String(s.to_owned()));
    }
    let template = parse(s).map_err(|e| EvalError {
        kind: EvalErrorKind::Parse(e.kind),
        path: path.clone(),
        offset: e.offset,
        source_text: e.source_text,
    })?;
    let at = |kind: EvalErrorKind, offset: usize, source: &str| EvalError {
        kind,
        path: path.clone(),
        offset,
        source_text: source.to_owned(),
    };
    if let Some((expr, offset, source)) = template.single() {
        return match resolve(expr, scope, flags).map_err(|k| at(k, offset, source))? {
            Resolved::Value(v) => Ok(v),
            Resolved::Unknown => {
                flags.unknown = true;
                Ok(Value::String(UNKNOWN.to_owned()))
            }
        };
    }
    let mut out = String::with_capacity(s.len());
    for piece in &template.pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Expr {
                expr,
                offset,
                source,
            } => match resolve(expr, scope, flags).map_err(|k| at(k, *offset, source))? {
                Resolved::Unknown => {
                    flags.unknown = true;
                    out.push_str(UNKNOWN);
                }
                Resolved::Value(v) => match v {
                    Value::String(s) => out.push_str(&s),
                    Value::Number(n) => out.push_str(&n.to_string()),
                    Value::Bool(b) => out.push_str(if b { "true" } else { "false" }),
                    Value::Null => {}
                    Value::Array(_) => {
                        return Err(at(EvalErrorKind::NotInterpolable("list"), *offset, source));
                    }
                    Value::Object(_) => {
                        return Err(at(EvalErrorKind::NotInterpolable("map"), *offset, source));
                    }
                },
            },
        }
    }
    Ok(Value::String(out))
}

enum Resolved {
    Value(Value),
    Unknown,
}

fn resolve(expr: &Expr, scope: &dyn Scope, flags: &mut Flags) -> Result<Resolved, EvalErrorKind> {
    match expr {
        Expr::Env => Ok(Resolved::Value(Value::String(scope.env().to_owned()))),
        Expr::Var { name, path } => {
            let root = scope.var(name).ok_or_else(|| {
                let mut known = scope.var_names();
                known.sort();
                EvalErrorKind::UnknownVar {
                    name: name.clone(),
                    known,
                }
            })?;
            walk(root, path, expr).map(Resolved::Value)
        }
        Expr::Input { name, path } => {
            let inputs = scope
                .inputs()
                .ok_or_else(|| EvalErrorKind::InputsUnavailable(name.clone()))?;
            if scope.input_unknown(name) {
                return Ok(Resolved::Unknown);
            }
            let root = inputs
                .get(name)
                .ok_or_else(|| EvalErrorKind::UnknownInput {
                    name: name.clone(),
                    known: inputs.keys().cloned().collect(),
                })?;
            if root.as_str() == Some(UNKNOWN) {
                return Ok(Resolved::Unknown);
            }
            flags.secrets.extend(scope.input_secrets(name));
            walk(root, path, expr).map(Resolved::Value)
        }
        Expr::UnitOutput { .. } if !scope.outputs_allowed() => {
            Err(EvalErrorKind::OutputsUnavailable)
        }
        Expr::UnitOutput { unit, path } => {
            match scope
                .unit_outputs(unit)
                .ok_or_else(|| EvalErrorKind::UnknownUnit(unit.clone()))?
            {
                Outputs::Unknown => Ok(Resolved::Unknown),
                Outputs::Known(map) => {
                    if let Some(Seg::Key(key)) = path.first()
                        && let Some(label) = scope.output_secret(unit, key)
                    {
                        flags.secrets.insert(label);
                    }
                    let root = Value::Object(map.clone());
                    walk(&root, path, expr).map(Resolved::Value)
                }
            }
        }
        Expr::Secret { file, key } => {
            let value = scope.secret(file, key)?;
            flags.secrets.insert(file.clone());
            Ok(Resolved::Value(value))
        }
    }
}

fn walk(root: &Value, path: &[Seg], expr: &Expr) -> Result<Value, EvalErrorKind> {
    let mut cur = root;
    for step in path {
        let next = match (step, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get(k),
            (Seg::Index(i), Value::Array(a)) => a.get(*i),
            _ => None,
        };
        cur = next.ok_or_else(|| EvalErrorKind::Missing {
            expr: expr.to_string(),
            step: match step {
                Seg::Key(k) => k.clone(),
                Seg::Index(i) => format!("[{i}]"),
            },
        })?;
    }
    Ok(cur.clone())
}

/// A `${unit.NAME...}` reference found in a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitReference {
    pub unit: String,
    pub path: ValuePath,
    pub offset: usize,
    pub source_text: String,
}

/// Every unit reference in `value`, and the first parse error, if any.
pub fn unit_references(value: &Value, path: &ValuePath) -> Result<Vec<UnitReference>, ParseError> {
    let mut refs = Vec::new();
    collect_refs(value, path, &mut refs).map_err(|(_, e)| e)?;
    Ok(refs)
}

/// Like [`unit_references`], but reports where a parse error happened.
pub fn unit_references_at(
    value: &Value,
    path: &ValuePath,
) -> Result<Vec<UnitReference>, (ValuePath, ParseError)> {
    let mut refs = Vec::new();
    collect_refs(value, path, &mut refs)?;
    Ok(refs)
}

fn collect_refs(
    value: &Value,
    path: &ValuePath,
    refs: &mut Vec<UnitReference>,
) -> Result<(), (ValuePath, ParseError)> {
    match value {
        Value::String(s) if s.contains("${") => {
            let t = parse(s).map_err(|e| (path.clone(), e))?;
            for p in t.pieces {
                if let Piece::Expr {
                    expr: Expr::UnitOutput { unit, .. },
                    offset,
                    source,
                } = p
                {
                    refs.push(UnitReference {
                        unit,
                        path: path.clone(),
                        offset,
                        source_text: source,
                    });
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                collect_refs(v, &path.index(i), refs)?;
            }
        }
        Value::Object(m) => {
            for (k, v) in m {
                collect_refs(v, &path.key(k), refs)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    struct TestScope {
        vars: Map<String, Value>,
        outputs: BTreeMap<String, Option<Map<String, Value>>>,
    }

    impl Scope for TestScope {
        fn env(&self) -> &str {
            "prod"
        }
        fn var(&self, name: &str) -> Option<&Value> {
            self.vars.get(name)
        }
        fn var_names(&self) -> Vec<String> {
            self.vars.keys().cloned().collect()
        }
        fn unit_outputs(&self, unit: &str) -> Option<Outputs<'_>> {
            self.outputs.get(unit).map(|o| match o {
                Some(m) => Outputs::Known(m),
                None => Outputs::Unknown,
            })
        }
    }

    fn scope() -> TestScope {
        let vars = json!({
            "replicas": 3,
            "domain": "home.arpa",
            "nodes": [{"name": "n1", "ip": "10.0.0.1"}, {"name": "n2"}],
            "tags": {"a.b": "dotted"},
            "on": true,
        });
        let mut outputs = BTreeMap::new();
        outputs.insert(
            "net".to_owned(),
            Some(
                json!({"cidr": "10.0.0.0/24", "ids": [7, 8]})
                    .as_object()
                    .cloned()
                    .expect("map"),
            ),
        );
        outputs.insert("vm".to_owned(), None);
        TestScope {
            vars: vars.as_object().cloned().expect("map"),
            outputs,
        }
    }

    fn ev(v: Value) -> Result<Evaluated, EvalError> {
        eval(&v, &ValuePath::root().key("inputs"), &scope())
    }

    #[test]
    fn whole_expression_keeps_its_type() {
        assert_eq!(ev(json!("${var.replicas}")).expect("ok").value, json!(3));
        assert_eq!(ev(json!("${ var.on }")).expect("ok").value, json!(true));
        assert_eq!(
            ev(json!("${var.nodes}")).expect("ok").value,
            json!([{"name": "n1", "ip": "10.0.0.1"}, {"name": "n2"}])
        );
        assert_eq!(
            ev(json!("${unit.net.outputs.ids}")).expect("ok").value,
            json!([7, 8])
        );
    }

    #[test]
    fn interpolation_stringifies_scalars() {
        let v = ev(json!("web.${var.domain}:${var.replicas}/${env}/${var.on}")).expect("ok");
        assert_eq!(v.value, json!("web.home.arpa:3/prod/true"));
        assert!(!v.unknown);
    }

    #[test]
    fn steps_index_and_quoted_keys() {
        assert_eq!(
            ev(json!("${var.nodes[0].ip}")).expect("ok").value,
            json!("10.0.0.1")
        );
        assert_eq!(
            ev(json!(r#"${var.tags["a.b"]}"#)).expect("ok").value,
            json!("dotted")
        );
    }

    #[test]
    fn escape_writes_a_literal() {
        assert_eq!(
            ev(json!("echo $${HOME} ${env}")).expect("ok").value,
            json!("echo ${HOME} prod")
        );
    }

    #[test]
    fn unknown_outputs_are_marked() {
        let v =
            ev(json!({"a": "${unit.vm.outputs.ip}", "b": "ip=${unit.vm.outputs.ip}"})).expect("ok");
        assert!(v.unknown);
        assert_eq!(v.value, json!({"a": UNKNOWN, "b": format!("ip={UNKNOWN}")}));
    }

    #[test]
    fn errors_carry_path_and_offset() {
        let e = ev(json!({"x": ["ok", "abc ${var.nope} def"]})).expect_err("unknown var");
        assert_eq!(e.path.to_string(), "inputs.x[1]");
        assert_eq!(e.offset, 4);
        assert_eq!(e.source_text, "${var.nope}");
        assert!(matches!(e.kind, EvalErrorKind::UnknownVar { .. }));
    }

    #[test]
    fn lists_do_not_interpolate() {
        let e = ev(json!("nodes: ${var.nodes}")).expect_err("list in string");
        assert_eq!(e.kind, EvalErrorKind::NotInterpolable("list"));
    }

    #[test]
    fn secrets_without_a_source_fail_clearly() {
        let e = ev(json!("${secret.secrets/db.sops.yaml#password}")).expect_err("no secrets");
        assert_eq!(e.kind, EvalErrorKind::Secret(SecretError::Unsupported));
    }

    #[test]
    fn content_scope_has_inputs_but_no_outputs() {
        let vars = json!({"domain": "home.arpa"})
            .as_object()
            .cloned()
            .expect("map");
        let inputs = json!({"replicas": 2}).as_object().cloned().expect("map");
        let unknown: std::collections::BTreeSet<String> = ["later".to_owned()].into();
        let sensitive: BTreeMap<String, Vec<String>> =
            [("replicas".to_owned(), vec!["secrets/app.yaml".to_owned()])].into();
        let s = ContentScope {
            env: "dev",
            vars: &vars,
            inputs: &inputs,
            unknown_inputs: &unknown,
            sensitive_inputs: &sensitive,
            secrets: None,
        };
        let p = ValuePath::root();
        // A value drawn from a secret input carries its secrets file along.
        assert_eq!(
            eval(&json!({"a": "n=${input.replicas}"}), &p, &s)
                .expect("ok")
                .secrets,
            vec!["secrets/app.yaml".to_owned()]
        );
        assert!(
            eval(&json!("${env}"), &p, &s)
                .expect("ok")
                .secrets
                .is_empty()
        );
        assert_eq!(
            eval(&json!("${input.replicas}"), &p, &s).expect("ok").value,
            json!(2)
        );
        assert!(eval(&json!("${input.later}"), &p, &s).expect("ok").unknown);
        let e = eval(&json!("${input.nope}"), &p, &s).expect_err("no such input");
        assert!(matches!(e.kind, EvalErrorKind::UnknownInput { .. }));
        let e = eval(&json!("${unit.a.outputs.b}"), &p, &s).expect_err("no outputs");
        assert_eq!(e.kind, EvalErrorKind::OutputsUnavailable);
        let e = ev(json!("${input.x}")).expect_err("no inputs in unit.yaml");
        assert_eq!(e.kind, EvalErrorKind::InputsUnavailable("x".into()));
    }

    #[test]
    fn parse_errors() {
        let cases = [
            ("${var.x", ParseErrorKind::Unterminated),
            ("${}", ParseErrorKind::Empty),
            ("${HOME}", ParseErrorKind::UnknownRoot("HOME".into())),
            ("${unit.a.out}", ParseErrorKind::ExpectedOutputs("a".into())),
            ("${secret.file}", ParseErrorKind::BadSecret),
            ("${var.a[x]}", ParseErrorKind::Unexpected("[x]".into())),
        ];
        for (input, kind) in cases {
            assert_eq!(parse(input).expect_err(input).kind, kind, "{input}");
        }
    }

    #[test]
    fn references_are_found_everywhere() {
        let v = json!({"a": ["${unit.net.outputs.cidr}", {"b": "x ${unit.vm.outputs.ip} y"}]});
        let refs = unit_references(&v, &ValuePath::root()).expect("parses");
        let units: Vec<_> = refs.iter().map(|r| r.unit.as_str()).collect();
        assert_eq!(units, ["net", "vm"]);
        assert_eq!(refs[1].path.to_string(), "a[1].b");
        assert_eq!(refs[1].offset, 2);
    }
}
