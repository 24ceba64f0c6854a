//! Flux's post-build variable substitution (`postBuild.substitute` of a
//! Flux Kustomization), for `kustomize` and `manifests` units: `${VAR}`,
//! the default forms `${VAR:=d}`, `${VAR:-d}`, `${VAR=d}` (and `:?`, `:+`,
//! which Flux also treats as defaults), `${#VAR}`, case (`^ ^^ , ,,`),
//! substrings (`${VAR:2:3}`), trims (`# ## % %%`, glob patterns) and
//! replacements (`/ // /# /%`). `$$` writes one `$`, so `$${VAR}` is the
//! literal text `${VAR}`; `$VAR` without braces is plain text.
//!
//! Flux substitutes in each object's YAML text and parses it again. Here
//! every string of the object (keys too) is substituted in place, and a
//! string that changed is read again as a YAML scalar: `replicas: ${R}`
//! with `R: "3"` becomes the number 3, as with Flux, but a value can
//! never add keys or break the document. Unset variables are empty
//! unless `strict` is on; then they are an error, but where a default
//! applies. Objects labelled or annotated
//! `kustomize.toolkit.fluxcd.io/substitute: disabled` are left alone.
//! Parsing has a budget: a string over [`MAX_TEXT`] bytes, or nesting
//! deeper than [`MAX_DEPTH`], is an error.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The label or annotation that turns substitution off for one object.
pub const DISABLE_KEY: &str = "kustomize.toolkit.fluxcd.io/substitute";
/// The longest string substituted.
pub const MAX_TEXT: usize = 1 << 20;
/// How deeply `${...}` may nest in a default or an argument.
pub const MAX_DEPTH: usize = 32;

/// Why a substitution failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstError {
    #[error("variable not set (strict mode): \"{0}\"")]
    NotSet(String),
    #[error("{0}")]
    Parse(&'static str),
    #[error(
        "`{0}` is not a valid variable name: it must match ^[_[:alpha:]][_[:alpha:][:digit:]]*$"
    )]
    BadName(String),
    #[error("the text is over {MAX_TEXT} bytes, or nests `${{...}}` deeper than {MAX_DEPTH}")]
    Budget,
}

const BAD: SubstError = SubstError::Parse("bad substitution");
const NO_BRACE: SubstError = SubstError::Parse("missing closing brace");
const NO_NAME: SubstError = SubstError::Parse("unable to parse variable name");
const NO_ARG: SubstError = SubstError::Parse("unable to parse substitution within function");

/// The variables, and whether an unset one is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    pub values: BTreeMap<String, String>,
    pub strict: bool,
}

impl Vars {
    /// Checks every name as Flux does: ASCII letters, digits and `_`, not
    /// starting with a digit.
    pub fn check_names(&self) -> Result<(), SubstError> {
        for name in self.values.keys() {
            let mut chars = name.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c == '_' || c.is_ascii_alphabetic());
            if !first_ok || !chars.all(|c| c == '_' || c.is_ascii_alphanumeric()) {
                return Err(SubstError::BadName(name.clone()));
            }
        }
        Ok(())
    }

    /// Sets `name` as Flux does: every newline taken out.
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_owned(), value.replace('\n', ""));
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Var { name: String, op: Op },
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Plain,
    Len,
    Default(Vec<Node>),
    Upper {
        all: bool,
    },
    Lower {
        all: bool,
    },
    /// A casing operator Flux does not know (`,^`): the value as it is.
    Same,
    Substr(Vec<Node>, Option<Vec<Node>>),
    Trim {
        suffix: bool,
        longest: bool,
        pattern: Vec<Node>,
    },
    Replace {
        how: Replace,
        pattern: String,
        with: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    First,
    All,
    Prefix,
    Suffix,
}

struct Parser<'a> {
    chars: Vec<char>,
    at: usize,
    _src: &'a str,
}

fn ident(c: char) -> bool {
    c.is_alphabetic() || c.is_numeric() || c == '_'
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.at + n).copied()
    }

    /// Top-level text: `$$` escapes, `${` opens an expression.
    fn text(&mut self, depth: usize) -> Result<Vec<Node>, SubstError> {
        let mut out = Vec::new();
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if c == '$' && self.peek_at(1) == Some('$') {
                text.push('$');
                self.at += 2;
            } else if c == '$' && self.peek_at(1) == Some('{') {
                if !text.is_empty() {
                    out.push(Node::Text(std::mem::take(&mut text)));
                }
                self.at += 2;
                out.push(self.expr(depth + 1)?);
            } else {
                text.push(c);
                self.at += 1;
            }
        }
        if !text.is_empty() {
            out.push(Node::Text(text));
        }
        Ok(out)
    }

    /// An argument up to (not past) a stop character, with nested
    /// `${...}`; no escapes.
    fn arg(&mut self, stop: &[char], depth: usize) -> Result<Vec<Node>, SubstError> {
        let mut out = Vec::new();
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(NO_BRACE),
                Some(c) if stop.contains(&c) => break,
                Some('$') if self.peek_at(1) == Some('{') => {
                    if !text.is_empty() {
                        out.push(Node::Text(std::mem::take(&mut text)));
                    }
                    self.at += 2;
                    out.push(self.expr(depth + 1)?);
                }
                Some(c) => {
                    text.push(c);
                    self.at += 1;
                }
            }
        }
        if !text.is_empty() {
            out.push(Node::Text(text));
        }
        Ok(out)
    }

    /// A replacement's pattern or text: `\/`, `\\` and `$$` are escapes.
    fn literal(&mut self, stop: char) -> Result<Option<String>, SubstError> {
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(NO_BRACE),
                Some('}') if stop == '/' => return Ok(None),
                Some(c) if c == stop => return Ok(Some(out)),
                Some('\\') if matches!(self.peek_at(1), Some('/' | '\\')) => {
                    out.push(self.peek_at(1).unwrap_or('\\'));
                    self.at += 2;
                }
                Some('$') if self.peek_at(1) == Some('$') => {
                    out.push('$');
                    self.at += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
    }

    fn close(&mut self, err: SubstError) -> Result<(), SubstError> {
        if self.peek() == Some('}') {
            self.at += 1;
            Ok(())
        } else {
            Err(err)
        }
    }

    /// After `${`.
    fn expr(&mut self, depth: usize) -> Result<Node, SubstError> {
        if depth > MAX_DEPTH {
            return Err(SubstError::Budget);
        }
        if self.peek() == Some('#') {
            self.at += 1;
            let name = self.name();
            if name.is_empty() {
                return Err(BAD);
            }
            self.close(BAD)?;
            return Ok(Node::Var { name, op: Op::Len });
        }
        let name = self.name();
        if name.is_empty() {
            return Err(NO_NAME);
        }
        let op = match self.peek() {
            Some('}') => {
                self.at += 1;
                Op::Plain
            }
            Some(':') if matches!(self.peek_at(1), Some('=' | '-' | '?' | '+')) => {
                self.at += 2;
                let d = self.arg(&['}'], depth)?;
                self.at += 1;
                Op::Default(d)
            }
            Some('=') => {
                self.at += 1;
                let d = self.arg(&['}'], depth)?;
                self.at += 1;
                Op::Default(d)
            }
            Some(':') => {
                self.at += 1;
                let pos = self.arg(&[':', '}'], depth)?;
                if pos.is_empty() {
                    return Err(NO_ARG);
                }
                let len = if self.peek() == Some(':') {
                    self.at += 1;
                    let len = self.arg(&['}'], depth)?;
                    if len.is_empty() {
                        return Err(NO_ARG);
                    }
                    Some(len)
                } else {
                    None
                };
                self.at += 1;
                Op::Substr(pos, len)
            }
            Some(',' | '^') => {
                let mut op = String::new();
                while let Some(c @ (',' | '^')) = self.peek() {
                    op.push(c);
                    self.at += 1;
                    if op.len() > 2 {
                        return Err(BAD);
                    }
                }
                self.close(BAD)?;
                match op.as_str() {
                    "^" => Op::Upper { all: false },
                    "^^" => Op::Upper { all: true },
                    "," => Op::Lower { all: false },
                    ",," => Op::Lower { all: true },
                    _ => Op::Same,
                }
            }
            Some('/') => {
                self.at += 1;
                let how = match self.peek() {
                    Some('/') => Replace::All,
                    Some('#') => Replace::Prefix,
                    Some('%') => Replace::Suffix,
                    _ => Replace::First,
                };
                if how != Replace::First {
                    self.at += 1;
                }
                let pattern = self.literal('/')?.ok_or(BAD)?;
                if pattern.is_empty() {
                    return Err(if self.peek_at(1) == Some('}') {
                        BAD
                    } else {
                        NO_ARG
                    });
                }
                self.at += 1;
                let with = self.literal('}')?.unwrap_or_default();
                self.at += 1;
                Op::Replace { how, pattern, with }
            }
            Some(c @ ('#' | '%')) => {
                self.at += 1;
                let longest = self.peek() == Some(c);
                if longest {
                    self.at += 1;
                }
                let pattern = self.arg(&['}'], depth)?;
                if pattern.is_empty() {
                    return Err(NO_ARG);
                }
                self.at += 1;
                Op::Trim {
                    suffix: c == '%',
                    longest,
                    pattern,
                }
            }
            _ => return Err(NO_BRACE),
        };
        Ok(Node::Var { name, op })
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|c| ident(*c)) {
            name.push(c);
            self.at += 1;
        }
        name
    }
}

fn parse(text: &str) -> Result<Vec<Node>, SubstError> {
    if text.len() > MAX_TEXT {
        return Err(SubstError::Budget);
    }
    Parser {
        chars: text.chars().collect(),
        at: 0,
        _src: text,
    }
    .text(0)
}

fn eval(nodes: &[Node], vars: &Vars, used: &mut BTreeSet<String>) -> Result<String, SubstError> {
    let mut out = String::new();
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Var { name, op } => out.push_str(&eval_var(name, op, vars, used)?),
        }
        // What substitution makes has the budget of what it reads.
        if out.len() > MAX_TEXT {
            return Err(SubstError::Budget);
        }
    }
    Ok(out)
}

fn eval_var(
    name: &str,
    op: &Op,
    vars: &Vars,
    used: &mut BTreeSet<String>,
) -> Result<String, SubstError> {
    // The arguments first, as Flux does (a strict error in one fails the
    // whole expression, whatever the variable).
    let args: Vec<String> = match op {
        Op::Default(d) => vec![eval(d, vars, used)?],
        Op::Substr(p, l) => {
            let mut a = vec![eval(p, vars, used)?];
            if let Some(l) = l {
                a.push(eval(l, vars, used)?);
            }
            a
        }
        Op::Trim { pattern, .. } => vec![eval(pattern, vars, used)?],
        _ => Vec::new(),
    };
    let value = vars.values.get(name);
    if value.is_some() {
        used.insert(name.to_owned());
    }
    if value.is_none() && vars.strict && !matches!(op, Op::Default(_)) {
        return Err(SubstError::NotSet(name.to_owned()));
    }
    let v = value.map_or("", String::as_str);
    Ok(match op {
        Op::Plain | Op::Same => v.to_owned(),
        Op::Len => v.len().to_string(),
        Op::Default(_) => {
            if v.is_empty() {
                args[0].clone()
            } else {
                v.to_owned()
            }
        }
        Op::Upper { all: true } => v.chars().flat_map(char::to_uppercase).collect(),
        Op::Lower { all: true } => v.chars().flat_map(char::to_lowercase).collect(),
        Op::Upper { all: false } | Op::Lower { all: false } => {
            let mut chars = v.chars();
            match chars.next() {
                None => String::new(),
                Some(first) => {
                    let first: String = if matches!(op, Op::Upper { .. }) {
                        first.to_uppercase().collect()
                    } else {
                        first.to_lowercase().collect()
                    };
                    first + chars.as_str()
                }
            }
        }
        Op::Substr(..) => substr(v, &args[0], args.get(1).map(String::as_str))?,
        Op::Trim {
            suffix, longest, ..
        } => trim(v, &args[0], *suffix, *longest),
        Op::Replace { how, pattern, with } => match how {
            Replace::First => v.replacen(pattern.as_str(), with, 1),
            Replace::All => v.replace(pattern.as_str(), with),
            Replace::Prefix => match v.strip_prefix(pattern.as_str()) {
                Some(rest) => format!("{with}{rest}"),
                None => v.to_owned(),
            },
            Replace::Suffix => match v.strip_suffix(pattern.as_str()) {
                Some(rest) => format!("{rest}{with}"),
                None => v.to_owned(),
            },
        },
    })
}

/// `${VAR:pos[:len]}` on bytes, as Flux counts; a position or length that
/// is not a number leaves the value as it is; a negative length is an
/// error (Flux panics on it).
fn substr(v: &str, pos: &str, len: Option<&str>) -> Result<String, SubstError> {
    let bytes = v.as_bytes();
    let Ok(pos) = pos.parse::<i64>() else {
        return Ok(v.to_owned());
    };
    let size = bytes.len() as i64;
    let start = if pos < 0 { (size + pos).max(0) } else { pos };
    if start >= size {
        return Ok(String::new());
    }
    let end = match len {
        None => size,
        Some(l) => match l.parse::<i64>() {
            Err(_) => return Ok(v.to_owned()),
            Ok(l) if l < 0 => return Err(SubstError::Parse("a substring's length is negative")),
            Ok(l) => start.saturating_add(l).min(size),
        },
    };
    let (start, end) = (start as usize, end as usize);
    Ok(String::from_utf8_lossy(&bytes[start..end]).into_owned())
}

/// `# ## % %%`: the shortest or longest prefix (suffix) matching the
/// glob, taken off.
fn trim(v: &str, pattern: &str, suffix: bool, longest: bool) -> String {
    let pat: Vec<char> = pattern.chars().collect();
    let cuts: Vec<usize> = v
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(v.len()))
        .collect();
    let candidates: Box<dyn Iterator<Item = usize>> = if suffix == longest {
        // Shortest prefix, or longest suffix: the cut nearest the start.
        Box::new(cuts.iter().copied())
    } else {
        Box::new(cuts.iter().rev().copied())
    };
    for cut in candidates {
        let part = if suffix { &v[cut..] } else { &v[..cut] };
        if part.is_empty() {
            continue;
        }
        if glob(&pat, &part.chars().collect::<Vec<_>>()) {
            return if suffix {
                v[..cut].to_owned()
            } else {
                v[cut..].to_owned()
            };
        }
    }
    v.to_owned()
}

/// A shell glob: `*` (any run, `/` included), `?`, `[...]` with ranges
/// and `!`/`^`, `\` escapes.
fn glob(p: &[char], s: &[char]) -> bool {
    // Iterative with one backtrack point, as `*` needs.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(p, pi, s[si])
                        && matched
                    {
                        pi = next;
                        si += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() && p[pi + 1] == s[si] => {
                    pi += 2;
                    si += 1;
                    continue;
                }
                '\\' if pi + 1 < p.len() => {}
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `[...]` at `p[at]` against `c`: whether it matches, and where the
/// pattern goes on; `None` when the class is not closed (then `[` is
/// literal).
fn class(p: &[char], at: usize, c: char) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let lo = if p[i] == '\\' && i + 1 < p.len() {
            i += 1;
            p[i]
        } else {
            p[i]
        };
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            let hi = p[i + 2];
            if lo <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
    if p[at] == '[' && c == '[' {
        return Some((true, at + 1));
    }
    None
}

/// Substitutes one string; the variables it read are added to `used`.
pub fn substitute_str(
    text: &str,
    vars: &Vars,
    used: &mut BTreeSet<String>,
) -> Result<String, SubstError> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    eval(&parse(text)?, vars, used)
}

/// Whether the object opts out (label or annotation `disabled`).
pub fn disabled(object: &Value) -> bool {
    ["labels", "annotations"].iter().any(|k| {
        object
            .pointer(&format!("/metadata/{k}"))
            .and_then(|m| m.get(DISABLE_KEY))
            .and_then(Value::as_str)
            == Some("disabled")
    })
}

/// Substitutes every key and string of `object` (unless it opts out);
/// the names of the variables it read. A string that changed is read
/// again as a YAML scalar, as Flux's parse of the substituted text would.
pub fn substitute_object(object: &mut Value, vars: &Vars) -> Result<BTreeSet<String>, SubstError> {
    let mut used = BTreeSet::new();
    if disabled(object) {
        return Ok(used);
    }
    walk(object, vars, &mut used)?;
    Ok(used)
}

fn walk(v: &mut Value, vars: &Vars, used: &mut BTreeSet<String>) -> Result<(), SubstError> {
    match v {
        Value::String(s) if s.contains('$') => {
            let out = substitute_str(s, vars, used)?;
            if out != *s {
                // Flux substitutes in the YAML text, where a string that
                // needs quotes is quoted: only a plain one is read again.
                *v = if terrace_yaml::tree::plain_safe(s) {
                    retype(out)
                } else {
                    Value::String(out)
                };
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, vars, used)?;
            }
        }
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('$')) {
                let old = std::mem::take(map);
                for (k, mut item) in old {
                    walk(&mut item, vars, used)?;
                    let k = substitute_str(&k, vars, used)?;
                    map.insert(k, item);
                }
            } else {
                for item in map.values_mut() {
                    walk(item, vars, used)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A substituted string as YAML would read it: `3` a number, `true` a
/// boolean, `""` an empty string's quotes taken off, empty null; text
/// that YAML would read as a collection or not at all stays a string.
fn retype(text: String) -> Value {
    if text.contains('\n') {
        return Value::String(text);
    }
    match terrace_yaml::documents(
        &format!("v: {text}\n"),
        std::path::Path::new("substitution"),
    ) {
        Ok(docs) if docs.len() == 1 => match docs[0].1.get("v") {
            Some(v @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))) => {
                v.clone()
            }
            _ => Value::String(text),
        },
        _ => Value::String(text),
    }
}

/// `substitute:` of a `kustomize` or `manifests` unit: Flux's
/// `postBuild.substitute` and `substituteFrom`.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubstituteSettings {
    /// Variables by name (letters, digits and `_`), each a string, number
    /// or boolean; they may use `${...}`: `${var.domain}`,
    /// `${unit.db.outputs.host}`, secrets. They win over `from`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, Value>,
    /// ConfigMap and Secret manifests in the project (SOPS-encrypted or
    /// not; relative to the unit directory) whose data become variables,
    /// in order: a later one wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<SubstituteFrom>,
    /// Fail on a variable that is not set, where no default applies
    /// (default false; Flux's controllers turn it on since v2.5).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

/// One file of `substitute.from`.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubstituteFrom {
    /// The file, relative to the unit directory.
    pub path: String,
    /// A missing file is no error (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// The variables of a unit, with the secrets files behind each secret
/// one.
#[derive(Debug, Clone, Default)]
pub struct Substitution {
    pub vars: Vars,
    secret_of: BTreeMap<String, Vec<std::path::PathBuf>>,
}

impl Substitution {
    /// Reads the unit's `substitute:` settings and files.
    pub fn load(
        ctx: &terrace_core::driver::UnitContext<'_>,
        settings: &SubstituteSettings,
    ) -> Result<Substitution, terrace_core::driver::DriverError> {
        use terrace_core::diag::Diagnostic;
        let unit_file = format!("{}/{}", ctx.unit.dir, terrace_core::config::UNIT_FILE);
        let mut out = Substitution::default();
        out.vars.strict = settings.strict;
        for from in &settings.from {
            let rel = crate::clean_relative(&ctx.unit.dir, &from.path).ok_or_else(|| {
                Diagnostic::new(format!(
                    "substitute.from `{}` leads outside the project",
                    from.path
                ))
                .in_file(&unit_file)
            })?;
            let abs = ctx.root.join(&rel);
            if !abs.is_file() {
                if from.optional {
                    continue;
                }
                return Err(
                    Diagnostic::new(format!("substitute.from `{rel}` does not exist"))
                        .in_file(&unit_file)
                        .with_hint("create it, fix the path, or mark it `optional: true`")
                        .into(),
                );
            }
            let text = terrace_fs::read_to_string(ctx.root, &abs)?;
            let encrypted = terrace_core::secrets::looks_encrypted(&text);
            let docs: Vec<Value> = if encrypted {
                let Some(secrets) = ctx.secrets else {
                    return Err(Diagnostic::new(
                        "this file is SOPS-encrypted, and secrets are not available here",
                    )
                    .in_file(&rel)
                    .into());
                };
                terrace_fs::watch::taint();
                secrets
                    .open_documents(std::path::Path::new(&rel), &text)
                    .map_err(|e| Diagnostic::new(e.to_string()).in_file(&rel))?
                    .unwrap_or_default()
            } else {
                terrace_yaml::documents(&text, std::path::Path::new(&rel))?
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect()
            };
            for doc in docs.into_iter().filter(|d| !d.is_null()) {
                let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
                let mut data: Vec<(String, String)> = Vec::new();
                let strings = |key: &str| -> Vec<(String, String)> {
                    doc.get(key)
                        .and_then(Value::as_object)
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), scalar(v).unwrap_or_default()))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                match kind {
                    "ConfigMap" => data.extend(strings("data")),
                    "Secret" => {
                        use base64::Engine as _;
                        for (k, v) in strings("data") {
                            let bytes = base64::engine::general_purpose::STANDARD
                                .decode(v.trim())
                                .map_err(|e| {
                                    Diagnostic::new(format!("Secret data `{k}` is not base64: {e}"))
                                        .in_file(&rel)
                                })?;
                            data.push((k, String::from_utf8_lossy(&bytes).into_owned()));
                        }
                        // What the API server would merge over `data`.
                        data.extend(strings("stringData"));
                    }
                    other => {
                        return Err(Diagnostic::new(format!(
                            "substitute.from `{rel}` holds a {}; only ConfigMaps and Secrets give variables",
                            if other.is_empty() { "document without a kind" } else { other }
                        ))
                        .in_file(&unit_file)
                        .into());
                    }
                }
                let sealed = encrypted || kind == "Secret";
                for (k, v) in data {
                    out.vars.set(&k, &v);
                    if sealed {
                        out.secret_of
                            .insert(k, vec![std::path::PathBuf::from(&rel)]);
                    } else {
                        out.secret_of.remove(&k);
                    }
                }
            }
        }
        let secret_settings = ctx.unit.sensitive_settings.get("substitute");
        for (k, v) in &settings.vars {
            let Some(text) = scalar(v) else {
                return Err(Diagnostic::new(format!(
                    "substitute.vars.{k} is a list or a mapping; a variable is a string, number or boolean"
                ))
                .in_file(&unit_file)
                .into());
            };
            out.vars.set(k, &text);
            match secret_settings {
                Some(files) => {
                    out.secret_of.insert(
                        k.clone(),
                        files.iter().map(std::path::PathBuf::from).collect(),
                    );
                }
                None => {
                    out.secret_of.remove(k);
                }
            }
        }
        out.vars
            .check_names()
            .map_err(|e| Diagnostic::new(e.to_string()).in_file(&unit_file))?;
        Ok(out)
    }

    /// Substitutes one object (nothing at all when there is no variable,
    /// as with Flux); the secrets files whose values it may now hold.
    pub fn apply(&self, object: &mut Value) -> Result<Vec<std::path::PathBuf>, SubstError> {
        if self.vars.values.is_empty() {
            return Ok(Vec::new());
        }
        let used = substitute_object(object, &self.vars)?;
        let mut files: Vec<std::path::PathBuf> = used
            .iter()
            .filter_map(|v| self.secret_of.get(v))
            .flatten()
            .cloned()
            .collect();
        files.sort();
        files.dedup();
        Ok(files)
    }
}

/// A variable's text: strings as they are, numbers and booleans written
/// out, null empty; `None` for lists and mappings.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::default();
        for (k, val) in pairs {
            v.set(k, val);
        }
        v
    }

    fn sub(text: &str, v: &Vars) -> Result<String, SubstError> {
        substitute_str(text, v, &mut BTreeSet::new())
    }

    /// Flux's own cases (fluxcd/pkg envsubst tests, and what its
    /// evaluator answers), input → output.
    #[test]
    fn flux_cases() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            (&[("var01", "abcdEFGH28ij")], "${#var01}", "12"),
            (&[("var01", "abcdEFGH28ij")], "${var01^}", "AbcdEFGH28ij"),
            (&[("var01", "abcdEFGH28ij")], "${var01^^}", "ABCDEFGH28IJ"),
            (&[("var01", "ABCDEFGH28IJ")], "${var01,}", "aBCDEFGH28IJ"),
            (&[("var01", "ABCDEFGH28IJ")], "${var01,,}", "abcdefgh28ij"),
            (
                &[("p", "/home/bozo/ideas/thoughts.for.today")],
                "${p:11}",
                "ideas/thoughts.for.today",
            ),
            (
                &[("p", "/home/bozo/ideas/thoughts.for.today")],
                "${p:11:5}",
                "ideas",
            ),
            (&[("var", "abc")], "${var=xyz}", "abc"),
            (&[], "${var=xyz}", "xyz"),
            (&[], "${var:=xyz}", "xyz"),
            (
                &[("default_var", "foo")],
                "something ${var=${default_var}}",
                "something foo",
            ),
            (
                &[("d", "foo1")],
                "foo: ${var=prefix${d}-suffix}",
                "foo: prefixfoo1-suffix",
            ),
            (
                &[("z", "abcABC123ABCabc")],
                "${z/%abc/XYZ}",
                "abcABC123ABCXYZ",
            ),
            (
                &[("z", "abcABC123ABCabc")],
                "${z/#abc/XYZ}",
                "XYZABC123ABCabc",
            ),
            (
                &[("z", "abcABC123ABCabc")],
                "${z//abc/xyz}",
                "xyzABC123ABCxyz",
            ),
            (
                &[("z", "abcABC123ABCabc")],
                "${z/abc/xyz}",
                "xyzABC123ABCabc",
            ),
            (&[("f", "bash.string.txt")], "${f#*.}", "string.txt"),
            (&[("f", "bash.string.txt")], "${f##*.}", "txt"),
            (&[("f", "bash.string.txt")], "${f%.*}", "bash.string"),
            (&[("f", "bash.string.txt")], "${f%%.*}", "bash"),
            (&[("f", "/path/to/file")], "${f#*/}", "path/to/file"),
            (&[("f", "/path/to/file")], "${f##*/}", "file"),
            (
                &[("var01", "abcdEFGH28ij")],
                "${var=${var01^^}}",
                "ABCDEFGH28IJ",
            ),
            (&[("var01", "abcdEFGH28ij")], "$${var01}", "${var01}"),
            (
                &[("var01", "abcdEFGH28ij")],
                "some text ${var01}$${var$${var01}$var01${var01}",
                "some text abcdEFGH28ij${var${var01}$var01abcdEFGH28ij",
            ),
            (
                &[("default_var", "foo")],
                "something $${var=${default_var}}",
                "something ${var=foo}",
            ),
            (&[("z", "foo/bar/baz")], "${z//\\//-}", "foo-bar-baz"),
            (
                &[("d", "foo")],
                "\\\\something ${var=${d}}",
                "\\\\something foo",
            ),
            (&[("z", "foo.bar")], "${z/./}", "foobar"),
            (
                &[("SET", "abc"), ("N", "3")],
                "x ${SET} y ${N}${N} ${UNSET}z",
                "x abc y 33 z",
            ),
            (&[("EMPTY", "")], "${EMPTY:=d}", "d"),
            (&[("EMPTY", "")], "${EMPTY=d}", "d"),
            (&[("EMPTY", "")], "${EMPTY:+d}", "d"),
            (&[("SET", "abc")], "${SET:+d}", "abc"),
            (&[], "${UNSET:?d}", "d"),
            (&[("SET", "abc")], "$SET", "$SET"),
            (&[("SET", "abc")], "$$SET", "$SET"),
            (&[], "$$", "$"),
            (&[], "$$$", "$$"),
            (&[("SET", "abc")], "$$${SET}", "$abc"),
            (&[], "$", "$"),
            (&[], "x$${", "x${"),
            (&[("SET", "abc")], "${SET}}", "abc}"),
            (&[("SET", "abc")], "\\${SET}", "\\abc"),
            (&[], "${UNSET:=a}b}", "ab}"),
            (&[], "${UNSET:=$$x}", "$$x"),
            (&[], "${UNSET:=${UNSET2:=deep}}", "deep"),
            (&[("S", "abc")], "${S: -1}", "abc"),
            (&[("S", "abc")], "${S:-1}", "abc"),
            (&[("S", "abc")], "${S:1:1:1}", "abc"),
            (&[("S", "abc")], "${S/*/x}", "abc"),
            (&[("S", "abc")], "${S/b/x/y}", "ax/yc"),
            (&[("S", "abc")], "${S,^}", "abc"),
            (&[("S", "abc"), ("N", "1")], "${S:${N}}", "bc"),
            (&[("U", "Héllo")], "${#U}", "6"),
        ];
        for (pairs, input, want) in cases {
            assert_eq!(sub(input, &vars(pairs)).as_deref(), Ok(*want), "{input}");
        }
    }

    #[test]
    fn flux_parse_errors() {
        let v = vars(&[("SET", "abc")]);
        for (input, want) in [
            ("${", NO_NAME),
            ("${}", NO_NAME),
            ("${ SET}", NO_NAME),
            ("${SET", NO_BRACE),
            ("${SET }", NO_BRACE),
            ("${SET.x}", NO_BRACE),
            ("${SET-x}", NO_BRACE),
            ("${SET+x}", NO_BRACE),
            ("${#}", BAD),
            ("${#SET:=x}", BAD),
            ("${SET/b}", BAD),
            ("${SET:}", NO_ARG),
            ("${SET^^^}", BAD),
            ("${SET#}", NO_ARG),
        ] {
            assert_eq!(sub(input, &v), Err(want), "{input}");
        }
        assert!(sub("${SET:0:-1}", &v).is_err(), "Flux panics; we refuse");
    }

    #[test]
    fn strict_mode_fails_on_unset_but_where_a_default_applies() {
        let mut v = vars(&[("foo", ""), ("SET", "abc")]);
        v.strict = true;
        assert_eq!(sub("${foo}", &v).as_deref(), Ok(""));
        assert_eq!(
            sub("${missing}", &v),
            Err(SubstError::NotSet("missing".into()))
        );
        assert_eq!(
            sub("${missing}", &v).expect_err("unset").to_string(),
            "variable not set (strict mode): \"missing\""
        );
        for (input, want) in [
            ("${missing:=default}", "default"),
            ("${missing:-fallback}", "fallback"),
            ("${missing=assigned}", "assigned"),
            ("${missing:?x}", "x"),
        ] {
            assert_eq!(sub(input, &v).as_deref(), Ok(want), "{input}");
        }
        for input in [
            "${#missing}",
            "${missing^^}",
            "${missing:0:10}",
            "${missing/p/r}",
            "${missing%%p}",
        ] {
            assert!(
                matches!(sub(input, &v), Err(SubstError::NotSet(_))),
                "{input}"
            );
        }
        // Arguments first: a missing one fails a set variable's default.
        assert_eq!(
            sub("${SET:=${MISSING}}", &v),
            Err(SubstError::NotSet("MISSING".into()))
        );
    }

    #[test]
    fn names_are_checked_as_flux_checks_them() {
        assert!(vars(&[("_Region", "x"), ("a1", "y")]).check_names().is_ok());
        for bad in ["my-var", "1abc", "ä", ""] {
            assert_eq!(
                vars(&[(bad, "x")]).check_names(),
                Err(SubstError::BadName(bad.into()))
            );
        }
        let mut v = Vars::default();
        v.set("zone", "\naz-1a\n");
        assert_eq!(v.values["zone"], "az-1a");
    }

    #[test]
    fn objects_are_substituted_typed_and_may_opt_out() {
        let v = vars(&[
            ("R", "3"),
            ("env", "prod"),
            ("q", "\""),
            ("T", "true"),
            ("E", ""),
            ("K", "team"),
        ]);
        let mut o = json!({
            "kind": "Deployment",
            "metadata": {"name": "web-${env}", "labels": {"${K}": "x", "id": "${q}123${q}"}},
            "spec": {"replicas": "${R}", "flag": "${T}", "empty": "${E}", "list": ["${env:=dev}", "$${kept}"],
                     "text": "a: b ${env}", "inject": "${q}${q}\n  evil: 1"},
        });
        let used = substitute_object(&mut o, &v).expect("substitutes");
        assert_eq!(o["metadata"]["name"], "web-prod");
        assert_eq!(o["metadata"]["labels"]["team"], "x");
        assert_eq!(o["metadata"]["labels"]["id"], "123", "quotes make a string");
        assert_eq!(o["spec"]["replicas"], 3);
        assert_eq!(o["spec"]["flag"], true);
        assert_eq!(o["spec"]["empty"], Value::Null);
        assert_eq!(o["spec"]["list"], json!(["prod", "${kept}"]));
        assert_eq!(o["spec"]["text"], "a: b prod", "not a mapping");
        // A string Flux's YAML would have quoted stays whole (review).
        let mut quoted = json!({"a": "Welcome to ${env} # note", "b": "'${R}'"});
        substitute_object(&mut quoted, &v).expect("substitutes");
        assert_eq!(quoted["a"], "Welcome to prod # note");
        assert_eq!(quoted["b"], "'3'");
        assert!(o["spec"].get("evil").is_none());
        assert_eq!(
            used,
            ["E", "K", "R", "T", "env", "q"].map(String::from).into()
        );

        let mut off = json!({"metadata": {"annotations": {DISABLE_KEY: "disabled"}}, "data": {"a": "$${x} ${env}"}});
        let before = off.clone();
        assert!(substitute_object(&mut off, &v).expect("ok").is_empty());
        assert_eq!(off, before);
    }

    #[test]
    fn the_budget_holds() {
        let deep = format!(
            "{}x{}",
            "${a:=".repeat(MAX_DEPTH + 2),
            "}".repeat(MAX_DEPTH + 2)
        );
        assert_eq!(sub(&deep, &Vars::default()), Err(SubstError::Budget));
        let long = "$".repeat(MAX_TEXT + 1);
        assert_eq!(sub(&long, &Vars::default()), Err(SubstError::Budget));
        // What it makes, too: many references to a large value.
        let big_value = "x".repeat(1 << 16);
        let big = vars(&[("A", big_value.as_str())]);
        assert_eq!(sub(&"${A}".repeat(64), &big), Err(SubstError::Budget));
        // A length past the end stops at the end (found in review).
        assert_eq!(
            sub("${A:1:9223372036854775807}", &vars(&[("A", "abc")])).as_deref(),
            Ok("bc")
        );
    }
}
