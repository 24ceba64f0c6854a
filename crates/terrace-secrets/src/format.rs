//! The three file formats: YAML (multi-document, comments kept), JSON and
//! dotenv, each read into and written from the same tree, with the `sops`
//! metadata split off and put back the way sops stores it.

use std::fmt::Write as _;
use std::path::Path;

use terrace_core::diag::{Diagnostic, Location};
use terrace_yaml::tree::{self, Key, Node};

use crate::cipher::format_go_float;
use crate::error::SecretsError;

/// A secrets file's format, from its name or given explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Yaml,
    Json,
    Dotenv,
}

impl Format {
    /// By extension, as sops decides: `.json`, `.env`, else YAML.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            Some("env") => Format::Dotenv,
            _ => Format::Yaml,
        }
    }

    /// `yaml`, `json` or `dotenv` (sops's `--input-type` names).
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            "dotenv" | "env" => Some(Format::Dotenv),
            _ => None,
        }
    }
}

/// Reads a file's documents (plaintext or encrypted; the metadata stays in).
pub fn load(format: Format, text: &str, file: &Path) -> Result<Vec<Node>, SecretsError> {
    match format {
        Format::Yaml => {
            let docs =
                tree::parse_stream(text, file).map_err(|d| SecretsError::Parse(Box::new(d)))?;
            for doc in &docs {
                if !matches!(doc, Node::Map(_) | Node::Null) {
                    return Err(SecretsError::Unsupported {
                        file: file.to_owned(),
                        what: "a YAML document must be a mapping (sops cannot store top-level sequences or scalars)".into(),
                    });
                }
            }
            Ok(docs
                .into_iter()
                .map(|d| {
                    if d == Node::Null {
                        Node::Map(Vec::new())
                    } else {
                        d
                    }
                })
                .collect())
        }
        Format::Json => {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                // serde_json counts columns in bytes; locations count
                // characters.
                let line_start: usize = text
                    .split_inclusive('\n')
                    .take(e.line().saturating_sub(1))
                    .map(str::len)
                    .sum();
                let mut offset = (line_start + e.column().saturating_sub(1)).min(text.len());
                while !text.is_char_boundary(offset) {
                    offset -= 1;
                }
                let (line, column) = terrace_core::diag::line_col(text, offset);
                SecretsError::Parse(Box::new(
                    Diagnostic::new(format!("invalid JSON: {e}"))
                        .in_file(file)
                        .at(Some(Location {
                            line,
                            column,
                            offset,
                            len: 1,
                        })),
                ))
            })?;
            if !value.is_object() {
                return Err(SecretsError::Unsupported {
                    file: file.to_owned(),
                    what: "the top level of a JSON secrets file must be an object".into(),
                });
            }
            Ok(vec![json_node(&value)])
        }
        Format::Dotenv => Ok(vec![load_dotenv(text, file)?]),
    }
}

/// JSON numbers are floats, as sops reads them.
fn json_node(value: &serde_json::Value) -> Node {
    use serde_json::Value;
    match value {
        Value::Null => Node::Null,
        Value::Bool(b) => Node::Bool(*b),
        Value::Number(n) => Node::Float(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Node::Str(s.clone()),
        Value::Array(items) => Node::Seq(items.iter().map(json_node).collect()),
        Value::Object(map) => Node::Map(
            map.iter()
                .map(|(k, v)| (Key::Name(k.clone()), json_node(v)))
                .collect(),
        ),
    }
}

fn load_dotenv(text: &str, file: &Path) -> Result<Node, SecretsError> {
    let mut items = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            items.push((Key::Comment(comment.to_owned()), Node::Null));
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            let offset = text.split_inclusive('\n').take(i).map(str::len).sum();
            return Err(SecretsError::Parse(Box::new(
                Diagnostic::new("a dotenv line must be KEY=VALUE or a # comment")
                    .in_file(file)
                    .at(Some(Location {
                        line: i as u32 + 1,
                        column: 1,
                        offset,
                        len: line.len().max(1),
                    })),
            )));
        };
        items.push((
            Key::Name(key.to_owned()),
            Node::Str(value.replace("\\n", "\n")),
        ));
    }
    Ok(Node::Map(items))
}

/// Writes documents in a format. YAML uses sops's four-space indent, JSON
/// its tab indent.
pub fn emit(format: Format, docs: &[Node]) -> Result<String, String> {
    match format {
        Format::Yaml => Ok(tree::emit_stream(docs, 4)),
        Format::Json => {
            let mut out = String::new();
            let doc = docs.first().cloned().unwrap_or(Node::Map(Vec::new()));
            write_json(&doc, 0, &mut out);
            out.push('\n');
            Ok(out)
        }
        Format::Dotenv => {
            let mut out = String::new();
            let Some(Node::Map(items)) = docs.first() else {
                return Ok(out);
            };
            for (k, v) in items {
                match k {
                    Key::Comment(c) => {
                        let _ = writeln!(out, "#{c}");
                    }
                    Key::Name(name) => {
                        let value = match v {
                            Node::Str(s) => s.clone(),
                            Node::Int(i) => i.to_string(),
                            Node::Float(f) => format_go_float(*f),
                            Node::Bool(b) => b.to_string(),
                            Node::Null => String::new(),
                            _ => {
                                return Err(format!(
                                    "`{name}` holds a list or mapping, which a dotenv file cannot"
                                ));
                            }
                        };
                        let _ = writeln!(out, "{name}={}", value.replace('\n', "\\n"));
                    }
                }
            }
            Ok(out)
        }
    }
}

fn write_json(node: &Node, depth: usize, out: &mut String) {
    let tabs = |n: usize| "\t".repeat(n);
    match node {
        Node::Null | Node::Comment(_) => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Int(i) => out.push_str(&i.to_string()),
        Node::Float(f) => {
            if f.is_finite() && f.abs() < 1e21 {
                out.push_str(&format_go_float(*f));
            } else if f.is_finite() {
                out.push_str(&format!("{f:e}"));
            } else {
                out.push_str("null");
            }
        }
        Node::Str(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
        Node::Seq(items) => {
            let items: Vec<&Node> = items
                .iter()
                .filter(|n| !matches!(n, Node::Comment(_)))
                .collect();
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&tabs(depth + 1));
                write_json(item, depth + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&tabs(depth));
            out.push(']');
        }
        Node::Map(items) => {
            let items: Vec<(&String, &Node)> = items
                .iter()
                .filter_map(|(k, v)| match k {
                    Key::Name(n) => Some((n, v)),
                    Key::Comment(_) => None,
                })
                .collect();
            if items.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push_str("{\n");
            for (i, (k, v)) in items.iter().enumerate() {
                out.push_str(&tabs(depth + 1));
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push_str(": ");
                write_json(v, depth + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&tabs(depth));
            out.push('}');
        }
    }
}

const DOTENV_PREFIX: &str = "sops_";

/// Takes the `sops` metadata out of the documents. `None` when there is
/// none.
pub fn split_metadata(format: Format, docs: &mut [Node]) -> Option<Node> {
    let mut found = None;
    match format {
        Format::Yaml | Format::Json => {
            for doc in docs.iter_mut() {
                if let Node::Map(items) = doc
                    && let Some(i) = items
                        .iter()
                        .position(|(k, _)| *k == Key::Name("sops".into()))
                {
                    let (_, meta) = items.remove(i);
                    found.get_or_insert(meta);
                }
            }
        }
        Format::Dotenv => {
            let Some(Node::Map(items)) = docs.first_mut() else {
                return None;
            };
            let mut flat = Vec::new();
            items.retain(|(k, v)| match k {
                Key::Name(n) if n.starts_with(DOTENV_PREFIX) => {
                    flat.push((n[DOTENV_PREFIX.len()..].to_owned(), v.clone()));
                    false
                }
                _ => true,
            });
            if !flat.is_empty() {
                found = Some(unflatten(flat));
            }
        }
    }
    found
}

/// Puts the metadata back into the documents, where sops keeps it.
pub fn join_metadata(format: Format, docs: &mut [Node], meta: &Node) {
    match format {
        Format::Yaml | Format::Json => {
            for doc in docs.iter_mut() {
                if let Node::Map(items) = doc {
                    items.push((Key::Name("sops".into()), meta.clone()));
                }
            }
        }
        Format::Dotenv => {
            let mut flat = Vec::new();
            flatten(meta, String::new(), &mut flat);
            flat.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(Node::Map(items)) = docs.first_mut() {
                for (k, v) in flat {
                    items.push((Key::Name(format!("{DOTENV_PREFIX}{k}")), v));
                }
            }
        }
    }
}

const MAP_SEP: &str = "__map_";
const LIST_SEP: &str = "__list_";

fn flatten(node: &Node, prefix: String, out: &mut Vec<(String, Node)>) {
    match node {
        Node::Map(items) => {
            for (k, v) in items {
                if let Key::Name(k) = k {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}{MAP_SEP}{k}")
                    };
                    flatten(v, key, out);
                }
            }
        }
        Node::Seq(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, format!("{prefix}{LIST_SEP}{i}"), out);
            }
        }
        Node::Bool(b) => out.push((prefix, Node::Str(b.to_string()))),
        Node::Int(i) => out.push((prefix, Node::Str(i.to_string()))),
        Node::Null | Node::Comment(_) => {}
        other => out.push((prefix, other.clone())),
    }
}

#[derive(Debug)]
enum Token {
    Map(String),
    List(usize),
}

fn tokenize(path: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = path;
    let mut kind_list = false;
    loop {
        let next = [rest.find(MAP_SEP), rest.find(LIST_SEP)]
            .into_iter()
            .flatten()
            .min();
        let (head, tail) = match next {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        tokens.push(if kind_list {
            Token::List(head.parse().unwrap_or(0))
        } else {
            Token::Map(head.to_owned())
        });
        match tail {
            Some(t) if t.starts_with(MAP_SEP) => {
                kind_list = false;
                rest = &t[MAP_SEP.len()..];
            }
            Some(t) => {
                kind_list = true;
                rest = &t[LIST_SEP.len()..];
            }
            None => break,
        }
    }
    tokens
}

fn unflatten(flat: Vec<(String, Node)>) -> Node {
    let mut root = Node::Map(Vec::new());
    for (path, value) in flat {
        let tokens = tokenize(&path);
        insert(&mut root, &tokens, value);
    }
    root
}

fn insert(node: &mut Node, tokens: &[Token], value: Node) {
    let Some((first, rest)) = tokens.split_first() else {
        *node = value.clone();
        return;
    };
    let child_template = match rest.first() {
        None => Node::Null,
        Some(Token::Map(_)) => Node::Map(Vec::new()),
        Some(Token::List(_)) => Node::Seq(Vec::new()),
    };
    let child = match (first, node) {
        (Token::Map(k), Node::Map(items)) => {
            let pos = match items
                .iter()
                .position(|(key, _)| *key == Key::Name(k.clone()))
            {
                Some(p) => p,
                None => {
                    items.push((Key::Name(k.clone()), child_template));
                    items.len() - 1
                }
            };
            &mut items[pos].1
        }
        (Token::List(i), Node::Seq(items)) => {
            while items.len() <= *i {
                items.push(child_template.clone());
            }
            &mut items[*i]
        }
        _ => return,
    };
    if rest.is_empty() {
        *child = value;
    } else {
        insert(child, rest, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_metadata_flattens_like_sops() {
        let meta = Node::Map(vec![
            (
                Key::Name("age".into()),
                Node::Seq(vec![Node::Map(vec![
                    (Key::Name("recipient".into()), Node::Str("age1x".into())),
                    (Key::Name("enc".into()), Node::Str("A\nB\n".into())),
                ])]),
            ),
            (Key::Name("mac".into()), Node::Str("ENC[x]".into())),
        ]);
        let mut docs = vec![Node::Map(vec![(
            Key::Name("A".into()),
            Node::Str("1".into()),
        )])];
        join_metadata(Format::Dotenv, &mut docs, &meta);
        let text = emit(Format::Dotenv, &docs).expect("flat");
        assert_eq!(
            text,
            "A=1\nsops_age__list_0__map_enc=A\\nB\\n\nsops_age__list_0__map_recipient=age1x\nsops_mac=ENC[x]\n"
        );
        let mut back = load(Format::Dotenv, &text, Path::new("x.env")).expect("loads");
        let got = split_metadata(Format::Dotenv, &mut back).expect("metadata");
        assert_eq!(
            got.get("age").and_then(|a| match a {
                Node::Seq(s) => s[0].get("enc").cloned(),
                _ => None,
            }),
            Some(Node::Str("A\nB\n".into()))
        );
        assert_eq!(
            back,
            vec![Node::Map(vec![(
                Key::Name("A".into()),
                Node::Str("1".into())
            )])]
        );
    }

    #[test]
    fn json_writes_tabs_and_integral_floats_plainly() {
        let docs = load(
            Format::Json,
            r#"{"a": 1, "b": [1.5, "x"], "c": {}}"#,
            Path::new("x.json"),
        )
        .expect("ok");
        assert_eq!(
            emit(Format::Json, &docs).expect("ok"),
            "{\n\t\"a\": 1,\n\t\"b\": [\n\t\t1.5,\n\t\t\"x\"\n\t],\n\t\"c\": {}\n}\n"
        );
    }

    #[test]
    fn bad_dotenv_line_is_located() {
        let err = load(Format::Dotenv, "A=1\nnot a pair\n", Path::new("x.env")).expect_err("bad");
        let SecretsError::Parse(d) = err else {
            panic!("a parse error")
        };
        assert_eq!(d.location.map(|l| l.line), Some(2));
    }
}
