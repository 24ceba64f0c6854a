//! The one place terrace reads and writes YAML (with `serde-saphyr`).
//!
//! - [`from_str`] parses a typed file strictly and turns errors into
//!   [`Diagnostic`]s with line and column;
//! - [`documents`] reads a multi-document file into `serde_json::Value`s,
//!   the form manifests live in;
//! - [`locate`] finds where a value at a [`ValuePath`] sits in the source,
//!   so errors found after parsing (in expressions, in the graph) still
//!   point at the file, line and column;
//! - [`to_string`] writes YAML.
//!
//! Messages from the YAML libraries can quote the input; what goes into a
//! [`Diagnostic`] is cut to 200 characters, so a huge one-line file that
//! fails to parse gives a short error. Alias expansion is budgeted here by
//! serde-saphyr's defaults and in [`tree`] by its own.

pub mod tree;

use std::path::Path;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_saphyr::Spanned;
use terrace_core::diag::{Diagnostic, Location};
use terrace_core::{Seg, ValuePath};

/// Parses one YAML document into `T`; unknown fields are errors when `T`
/// says so. Errors name `file` and the place.
pub fn from_str<T: DeserializeOwned>(src: &str, file: &Path) -> Result<T, Diagnostic> {
    serde_saphyr::from_str(src).map_err(|e| error_diagnostic(&e, src, file))
}

/// Reads every document of a YAML stream; empty documents are left out.
/// Each value comes with its document index in the stream.
pub fn documents(src: &str, file: &Path) -> Result<Vec<(usize, Value)>, Diagnostic> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(src).map_err(|e| error_diagnostic(&e, src, file))?;
    Ok(docs
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .collect())
}

/// Writes a value as YAML.
pub fn to_string<T: Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).expect("JSON-shaped values always serialize to YAML")
}

/// How many characters of a library's message a [`Diagnostic`] keeps.
pub(crate) const MESSAGE_CHARS: usize = 200;

/// `s` cut to at most `max` characters, on a character boundary, with `…`
/// standing for what was cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// The start of `value`'s text, at most `max_bytes` long: a message that
/// quotes a huge input is not copied whole only to be cut.
fn display_prefix(value: &dyn std::fmt::Display, max_bytes: usize) -> String {
    struct Bounded {
        text: String,
        max_bytes: usize,
    }
    impl std::fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = self.max_bytes.saturating_sub(self.text.len());
            if s.len() <= room {
                self.text.push_str(s);
                return Ok(());
            }
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.text.push_str(&s[..end]);
            // Stops the formatting: the rest would be cut anyway.
            Err(std::fmt::Error)
        }
    }
    let mut out = Bounded {
        text: String::new(),
        max_bytes,
    };
    // An error here only means the text was cut short.
    let _ = std::fmt::write(&mut out, format_args!("{value}"));
    out.text
}

fn error_diagnostic(e: &serde_saphyr::Error, src: &str, file: &Path) -> Diagnostic {
    let location = e.location().and_then(|l| to_location(&l, src));
    // Room for saphyr's location suffix, which `first_line` takes off.
    let text = display_prefix(e.without_snippet(), 16 * MESSAGE_CHARS);
    let message = clip(&first_line(&text), MESSAGE_CHARS);
    let hint = if message.contains("unknown field") {
        Some("check the spelling; the JSON Schemas under schemas/ list every field")
    } else {
        None
    };
    let d = Diagnostic::new(message).in_file(file).at(location);
    match hint {
        Some(h) => d.with_hint(h),
        None => d,
    }
}

/// The message without saphyr's own location suffix and snippet: ours are
/// rendered by the CLI.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = match line.rfind(" at line ") {
        Some(i) => &line[..i],
        None => line,
    };
    line.trim_start_matches("error: ").to_owned()
}

fn to_location(l: &serde_saphyr::Location, src: &str) -> Option<Location> {
    if l.line() == 0 {
        return None;
    }
    let line = u32::try_from(l.line()).ok()?;
    let column = u32::try_from(l.column()).ok()?;
    let offset = l
        .span()
        .byte_offset()
        .and_then(|o| usize::try_from(o).ok())
        .unwrap_or_else(|| offset_of(src, line, column));
    let len = l
        .span()
        .byte_len()
        .and_then(|o| usize::try_from(o).ok())
        .unwrap_or(1)
        .max(1);
    Some(Location {
        line,
        column,
        offset,
        len,
    })
}

pub use terrace_core::diag::line_col;
use terrace_core::diag::offset_of;

/// Where the value at `path` in document `doc` sits in `src`. When
/// `needle` is given (an expression as written) and found in that value,
/// the location points at it rather than at the start of the value.
pub fn locate(src: &str, doc: usize, path: &ValuePath, needle: Option<&str>) -> Option<Location> {
    let docs: Vec<Spanned<Node>> = serde_saphyr::from_multiple(src).ok()?;
    // Empty documents are left out of the list saphyr returns for values;
    // count documents the same way the reader does.
    let node = docs.get(doc)?;
    let mut cur = node;
    for seg in path.segments() {
        cur = match (seg, &cur.value) {
            (Seg::Key(k), Node::Map(entries)) => &entries.iter().find(|(key, _)| key == k)?.1,
            (Seg::Index(i), Node::Seq(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    let base = to_location(&cur.referenced, src)?;
    if let Some(needle) = needle {
        // The value's text starts at `base`; block scalars start on a later
        // line, so search a little way on.
        let window = &src[base.offset..];
        let window = &window[..window.len().min(64 * 1024)];
        if let Some(i) = window.find(needle) {
            let offset = base.offset + i;
            let (line, column) = line_col(src, offset);
            return Some(Location {
                line,
                column,
                offset,
                len: needle.len(),
            });
        }
    }
    Some(base)
}

/// A YAML node tree with a location on every node.
#[derive(Debug)]
enum Node {
    Scalar,
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Value>()? {
            let key = match key {
                Value::String(s) => s,
                other => other.to_string(),
            };
            entries.push((key, map.next_value::<Spanned<Node>>()?));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        name: String,
        #[serde(default)]
        items: Vec<u32>,
    }

    #[test]
    fn unknown_field_has_a_location() {
        let src = "name: a\nitmes: [1]\n";
        let d = from_str::<Cfg>(src, Path::new("x.yaml")).expect_err("unknown field");
        assert!(d.message.contains("unknown field `itmes`"), "{}", d.message);
        let loc = d.location.expect("located");
        assert_eq!((loc.line, loc.column), (2, 1));
    }

    #[test]
    fn locate_finds_nested_values_and_needles() {
        let src = "a: 1\n---\nkind: X\nspec:\n  list:\n    - one\n    - \"two ${var.x} three\"\n";
        let loc = locate(
            src,
            1,
            &ValuePath::root().key("spec").key("list").index(1),
            None,
        )
        .expect("found");
        assert_eq!((loc.line, loc.column), (7, 7));
        let loc = locate(
            src,
            1,
            &ValuePath::root().key("spec").key("list").index(1),
            Some("${var.x}"),
        )
        .expect("found");
        assert_eq!((loc.line, loc.column), (7, 12));
        assert_eq!(&src[loc.offset..loc.offset + loc.len], "${var.x}");
    }

    #[test]
    fn documents_skip_empty_ones() {
        let docs = documents("---\na: 1\n---\n---\nb: [x]\n", Path::new("m.yaml")).expect("ok");
        let idx: Vec<usize> = docs.iter().map(|(i, _)| *i).collect();
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert_eq!(docs[1].1, serde_json::json!({"b": ["x"]}));
        assert!(idx[0] < idx[1]);
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncdé f", 8), (2, 5));
    }

    #[test]
    fn clip_cuts_on_a_char_boundary() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééééé", 3), "ééé…");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn a_message_quoting_a_huge_input_is_cut() {
        // An unknown field whose name is a megabyte long, on one line (an
        // explicit `?` key has no length limit): saphyr's message quotes it.
        let src = format!("name: a\n? {}\n: 1\n", "k".repeat(1_000_000));
        let d = from_str::<Cfg>(&src, Path::new("x.yaml")).expect_err("unknown field");
        assert!(
            d.message.contains("unknown field `kkk"),
            "{}",
            clip(&d.message, 300)
        );
        assert!(d.message.ends_with('…'), "{}", clip(&d.message, 300));
        assert!(
            d.message.chars().count() <= MESSAGE_CHARS + 1,
            "{}",
            d.message.len()
        );
    }

    #[test]
    fn a_huge_invalid_line_gives_a_short_message() {
        let src = format!("a: [{}\n", "x".repeat(1_000_000));
        let d = documents(&src, Path::new("m.yaml")).expect_err("unclosed flow sequence");
        assert!(
            d.message.chars().count() <= MESSAGE_CHARS + 1,
            "{}",
            d.message.len()
        );
        assert!(d.location.is_some());
    }
}
