//! A YAML tree that keeps what a person wrote around the data: key order
//! and comments. Secrets files are decrypted, edited and re-encrypted
//! through it, so a round trip changes only what the user changed.
//!
//! Comments are kept the way sops keeps them: as their own entries, in the
//! mapping or sequence they sit in, before the item they describe (a
//! comment at the end of a line moves above that line). Anchors and aliases
//! are resolved to copies of their value.
//!
//! Reading fails closed. Copying aliases is budgeted: a stream that expands
//! to more than [`MAX_NODES`] nodes (an alias bomb such as "billion laughs"
//! is a few hundred bytes) or nests collections more than [`MAX_DEPTH`]
//! levels deep is refused with an error rather than exhausting memory or the
//! stack. A key that appears twice in one mapping is an error, as it is for
//! kustomize and sops. Every error names the place of the event that caused
//! it, and messages that quote the input are cut short.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use granit_parser::{Event, Marker, Parser, Placement, ScalarStyle, Span, StructureStyle};
use terrace_core::diag::{Diagnostic, Location};

use crate::{MESSAGE_CHARS, clip};

/// The most nodes a YAML stream may hold, counting every scalar, collection
/// and comment, every node an alias copies and the copy an anchor keeps of
/// its value. [`parse_stream`] refuses a stream past it: aliases are
/// resolved to copies, so a few hundred bytes of nested aliases would
/// otherwise expand until memory runs out.
pub const MAX_NODES: usize = 1_000_000;

/// The most bytes of text (strings, keys, comments) that aliases and
/// anchors may copy in one stream: an alias to a long string costs one node
/// but copies all of it. [`parse_stream`] refuses a stream past it.
pub const MAX_ALIAS_BYTES: usize = 64 * 1024 * 1024;

/// How deeply collections may nest, aliases' contents included, before
/// [`parse_stream`] refuses the stream. Writing a tree and converting it to
/// JSON recurse once per level; the cap keeps them far from the end of the
/// stack, and below the parser's own limits (255 block and 255 flow levels),
/// so whatever is read can be written and read back.
pub const MAX_DEPTH: usize = 128;

/// One YAML value with the comments around its items.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Items in order; comments are `Node::Comment` entries.
    Seq(Vec<Node>),
    /// Entries in order; comments are `Key::Comment` with a `Null` value.
    Map(Vec<(Key, Node)>),
    /// A comment line inside a sequence (text after `#`).
    Comment(String),
}

/// A mapping key, or a comment standing where a key would.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Name(String),
    /// The text after `#`.
    Comment(String),
}

impl Node {
    /// Whether the node holds nothing but comments (or nothing at all).
    pub fn is_empty_collection(&self) -> bool {
        match self {
            Node::Map(items) => items.iter().all(|(k, _)| matches!(k, Key::Comment(_))),
            Node::Seq(items) => items.iter().all(|n| matches!(n, Node::Comment(_))),
            _ => false,
        }
    }

    /// The value under `name` in a mapping.
    pub fn get(&self, name: &str) -> Option<&Node> {
        match self {
            Node::Map(items) => items.iter().find_map(|(k, v)| match k {
                Key::Name(n) if n == name => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The node as JSON, comments left out.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Node::Null | Node::Comment(_) => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
            Node::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Node::Str(s) => Value::String(s.clone()),
            Node::Seq(items) => Value::Array(
                items
                    .iter()
                    .filter(|n| !matches!(n, Node::Comment(_)))
                    .map(Node::to_json)
                    .collect(),
            ),
            Node::Map(items) => {
                // YAML 1.1 merge keys (`<<: *base`, `<<: [*a, *b]`), as
                // Go's YAML decoder (and so kubectl) resolves them: keys
                // written in the map win, then earlier merged maps.
                let mut out = serde_json::Map::new();
                let mut merged: Vec<&Node> = Vec::new();
                for (k, v) in items {
                    match (k, v) {
                        (Key::Name(n), Node::Map(_)) if n == "<<" => merged.push(v),
                        (Key::Name(n), Node::Seq(list)) if n == "<<" => {
                            merged.extend(list.iter().filter(|m| matches!(m, Node::Map(_))));
                        }
                        (Key::Name(n), _) => {
                            out.insert(n.clone(), v.to_json());
                        }
                        (Key::Comment(_), _) => {}
                    }
                }
                for source in merged {
                    if let Value::Object(entries) = source.to_json() {
                        for (k, v) in entries {
                            out.entry(k).or_insert(v);
                        }
                    }
                }
                Value::Object(out)
            }
        }
    }

    /// A node from JSON; integers stay integers.
    pub fn from_json(value: &serde_json::Value) -> Node {
        use serde_json::Value;
        match value {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Node::Int(i),
                None => Node::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Node::Str(s.clone()),
            Value::Array(items) => Node::Seq(items.iter().map(Node::from_json).collect()),
            Value::Object(map) => Node::Map(
                map.iter()
                    .map(|(k, v)| (Key::Name(k.clone()), Node::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Parses every document of a YAML stream, keeping comments. An empty
/// document is `Node::Null` (with its comments in a mapping, if it had any).
///
/// Refuses a stream that expands past [`MAX_NODES`] nodes or nests deeper
/// than [`MAX_DEPTH`] levels, and a mapping with the same key twice; the
/// error is located at the event that crossed the line.
pub fn parse_stream(src: &str, file: &Path) -> Result<Vec<Node>, Diagnostic> {
    parse_stream_with(src, file, Schema::Core)
}

/// How plain (unquoted) scalars are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Schema {
    /// The YAML 1.2 core schema: `0400` is 400, `no` a string.
    #[default]
    Core,
    /// As kustomize's kyaml (Go's yaml.v3) reads numbers: Go's integer
    /// syntax with `_` separators, so `0400` is octal (256), `0b101` is 5
    /// and `1_000` is 1000; what is no integer but looks like a float is
    /// one (`09` is 9). Words are read as in the core schema.
    Kyaml,
}

/// [`parse_stream`] with a choice of [`Schema`].
pub fn parse_stream_with(src: &str, file: &Path, schema: Schema) -> Result<Vec<Node>, Diagnostic> {
    parse(src, file, schema, false)
}

/// [`parse_stream_with`], where a key given twice in a mapping keeps its
/// last value instead of being refused: how Go's `sigs.k8s.io/yaml` reads
/// a kustomization file (kustomize accepts `literals:` twice, the second
/// winning).
pub fn parse_stream_last_key_wins(
    src: &str,
    file: &Path,
    schema: Schema,
) -> Result<Vec<Node>, Diagnostic> {
    parse(src, file, schema, true)
}

fn parse(
    src: &str,
    file: &Path,
    schema: Schema,
    last_key_wins: bool,
) -> Result<Vec<Node>, Diagnostic> {
    let mut builder = Builder {
        schema,
        last_key_wins,
        ..Builder::default()
    };
    for next in Parser::new_from_str(src) {
        let (event, span) = next.map_err(|e| {
            // The parser's message can quote the input.
            Diagnostic::new(format!("invalid YAML: {}", clip(&e.info(), MESSAGE_CHARS)))
                .in_file(file)
                .at(Some(location(src, *e.marker(), 1)))
        })?;
        builder.event(event, span).map_err(|message| {
            Diagnostic::new(clip(&message, MESSAGE_CHARS))
                .in_file(file)
                .at(Some(location(src, span.start, span_len(&span))))
        })?;
    }
    Ok(builder.docs)
}

/// Where a parser marker points, as a [`Location`] covering `len` bytes.
fn location(src: &str, m: Marker, len: usize) -> Location {
    let offset = m
        .byte_offset()
        .unwrap_or_else(|| byte_offset(src, m.index()))
        .min(src.len());
    Location {
        line: m.line() as u32,
        column: m.col() as u32 + 1,
        offset,
        len,
    }
}

/// How many bytes an event's span covers when it stays on one line (a key,
/// an alias), else one: the start is what the error points at.
fn span_len(span: &Span) -> usize {
    match span.byte_range() {
        Some(range) if span.end.line() == span.start.line() => {
            range.end.saturating_sub(range.start).max(1)
        }
        _ => 1,
    }
}

fn byte_offset(src: &str, chars: usize) -> usize {
    src.char_indices().nth(chars).map_or(src.len(), |(i, _)| i)
}

/// A collection being built. `start` is the size of the stream built
/// before the collection began, so the size when it ends tells what it holds
/// (what each alias to it will copy); `height` is the most levels any of its
/// items nests.
#[derive(Debug)]
enum Frame {
    Map {
        items: Vec<(Key, Node)>,
        key: Option<String>,
        /// The keys seen so far, to refuse one given twice.
        keys: HashSet<String>,
        indent: Option<usize>,
        anchor: usize,
        line: usize,
        start: Size,
        height: usize,
    },
    Seq {
        items: Vec<Node>,
        indent: Option<usize>,
        anchor: usize,
        line: usize,
        start: Size,
        height: usize,
    },
}

impl Frame {
    fn indent(&self) -> Option<usize> {
        match self {
            Frame::Map { indent, .. } | Frame::Seq { indent, .. } => *indent,
        }
    }

    /// The line the collection starts on.
    fn line(&self) -> usize {
        match self {
            Frame::Map { line, .. } | Frame::Seq { line, .. } => *line,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Frame::Map { items, key, .. } => items.is_empty() && key.is_none(),
            Frame::Seq { items, .. } => items.is_empty(),
        }
    }

    fn push_comment(&mut self, text: String) {
        match self {
            Frame::Map { items, .. } => items.push((Key::Comment(text), Node::Null)),
            Frame::Seq { items, .. } => items.push(Node::Comment(text)),
        }
    }
}

/// How much a part of the tree holds: nodes (comments included) and bytes
/// of text in them.
#[derive(Debug, Default, Clone, Copy)]
struct Size {
    nodes: usize,
    bytes: usize,
}

impl Size {
    /// One node holding `bytes` of text.
    fn node(bytes: usize) -> Size {
        Size { nodes: 1, bytes }
    }

    fn add(&mut self, other: Size) {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }

    fn since(self, start: Size) -> Size {
        Size {
            nodes: self.nodes.saturating_sub(start.nodes),
            bytes: self.bytes.saturating_sub(start.bytes),
        }
    }
}

/// An anchored value and what each alias to it costs.
#[derive(Debug)]
struct Anchored {
    node: Node,
    /// What an alias to it adds to the stream.
    size: Size,
    /// Collection levels in it (0 for a scalar).
    height: usize,
}

#[derive(Debug, Default)]
struct Builder {
    schema: Schema,
    /// A key given twice replaces the earlier entry (else it is refused).
    last_key_wins: bool,
    /// Per open collection, whether it is a flow one; and how many are.
    flows: Vec<bool>,
    flow_depth: usize,
    docs: Vec<Node>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    /// What the stream's trees hold so far, aliases' copies included.
    built: Size,
    /// What anchors' own copies of their values hold.
    kept: Size,
    /// Bytes of text aliases have copied.
    alias_bytes: usize,
    /// Whether an alias has been copied (the budget's error says so).
    aliased: bool,
    /// Comments waiting for the frame at a given depth to take its next item.
    pending: Vec<(usize, String)>,
    /// Comments seen outside any collection (document level).
    loose: Vec<String>,
    /// How many documents were complete when this one started.
    doc_start: usize,
    /// Own-line comments between a key and its nested collection.
    ahead: Vec<String>,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), String> {
        match event {
            Event::StreamStart | Event::StreamEnd => {}
            Event::DocumentStart(..) => self.doc_start = self.docs.len(),
            Event::DocumentEnd => self.end_document(),
            // A flow collection is written back in block style, where a
            // comment inside it has no faithful place: such comments are
            // dropped rather than moved to another collection.
            Event::Comment(..) if self.flow_depth > 0 => {}
            Event::Comment(text, placement) => {
                self.count(Size::node(text.len()))?;
                self.comment(text.into_owned(), placement, span);
            }
            Event::Scalar(value, style, anchor, tag) => {
                let size = Size::node(value.len());
                self.count(size)?;
                let tag = tag.map(|t| t.suffix().to_owned());
                let node = match (self.schema, style, &tag) {
                    (Schema::Kyaml, ScalarStyle::Plain, None) => {
                        go_number(&value).unwrap_or_else(|| plain(&value))
                    }
                    (Schema::Kyaml, ScalarStyle::Folded, _) => {
                        scalar(&go_folded(&value), style, tag.as_deref())?
                    }
                    _ => scalar(&value, style, tag.as_deref())?,
                };
                if anchor != 0 {
                    self.keep(size)?;
                    self.anchors.insert(
                        anchor,
                        Anchored {
                            node: node.clone(),
                            size,
                            height: 0,
                        },
                    );
                }
                self.value(node, span.start.col())?;
            }
            Event::Alias(id) => {
                let (size, height) = match self.anchors.get(&id) {
                    Some(anchored) => (anchored.size, anchored.height),
                    None => return Err("alias to an unknown anchor".to_owned()),
                };
                // Counted before copying, so a bomb stops before it is built.
                self.aliased = true;
                self.alias_bytes = self.alias_bytes.saturating_add(size.bytes);
                self.count(size)?;
                check_depth(self.stack.len() + height, height > 0)?;
                let node = match self.anchors.get(&id) {
                    Some(anchored) => anchored.node.clone(),
                    None => return Err("alias to an unknown anchor".to_owned()),
                };
                self.raise_height(height);
                self.value(node, span.start.col())?;
            }
            Event::MappingStart(style, anchor, _) => {
                self.flows.push(style == StructureStyle::Flow);
                self.flow_depth += usize::from(style == StructureStyle::Flow);
                let start = self.open()?;
                self.note_child_column(span.start.col());
                let items = self
                    .ahead
                    .drain(..)
                    .map(|c| (Key::Comment(c), Node::Null))
                    .collect();
                self.stack.push(Frame::Map {
                    items,
                    key: None,
                    keys: HashSet::new(),
                    indent: None,
                    anchor,
                    line: span.start.line(),
                    start,
                    height: 0,
                });
            }
            Event::SequenceStart(style, anchor, _) => {
                self.flows.push(style == StructureStyle::Flow);
                self.flow_depth += usize::from(style == StructureStyle::Flow);
                let start = self.open()?;
                self.note_child_column(span.start.col());
                let items = self.ahead.drain(..).map(Node::Comment).collect();
                self.stack.push(Frame::Seq {
                    items,
                    // A block sequence's comments are indented as its `-`
                    // (its first item's column can be a block scalar's
                    // content, further in).
                    indent: (style == StructureStyle::Block).then(|| span.start.col()),
                    anchor,
                    line: span.start.line(),
                    start,
                    height: 0,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if self.flows.pop() == Some(true) {
                    self.flow_depth -= 1;
                }
                let frame = self.stack.pop().ok_or("unbalanced YAML events")?;
                let depth = self.stack.len();
                let (mut node, anchor, start, height) = match frame {
                    Frame::Map {
                        items,
                        anchor,
                        start,
                        height,
                        ..
                    } => (Node::Map(items), anchor, start, height + 1),
                    Frame::Seq {
                        items,
                        anchor,
                        start,
                        height,
                        ..
                    } => (Node::Seq(items), anchor, start, height + 1),
                };
                // Comments still aimed at the closed frame end it.
                let mut rest = Vec::new();
                for (d, text) in self.pending.drain(..) {
                    if d >= depth {
                        match &mut node {
                            Node::Map(items) => items.push((Key::Comment(text), Node::Null)),
                            Node::Seq(items) => items.push(Node::Comment(text)),
                            _ => {}
                        }
                    } else {
                        rest.push((d, text));
                    }
                }
                self.pending = rest;
                // Only a flow collection can hold comments and nothing else
                // (`[ # note` … `]`); it is written back as `[]`, so its
                // comments are dropped rather than moved elsewhere.
                if node.is_empty_collection() {
                    match &mut node {
                        Node::Map(items) => items.clear(),
                        Node::Seq(items) => items.clear(),
                        _ => {}
                    }
                }
                if anchor != 0 {
                    let size = self.built.since(start);
                    self.keep(size)?;
                    self.anchors.insert(
                        anchor,
                        Anchored {
                            node: node.clone(),
                            size,
                            height,
                        },
                    );
                }
                self.raise_height(height);
                self.attach(node)?;
            }
            _ => return Err("unsupported YAML construct".to_owned()),
        }
        Ok(())
    }

    /// Adds what is about to be built to the stream's count.
    fn count(&mut self, size: Size) -> Result<(), String> {
        self.built.add(size);
        self.check_budget()
    }

    /// Adds the copy an anchor keeps of its value to the stream's count.
    fn keep(&mut self, size: Size) -> Result<(), String> {
        self.kept.add(size);
        self.check_budget()
    }

    /// Past [`MAX_NODES`] or [`MAX_ALIAS_BYTES`], an error.
    fn check_budget(&self) -> Result<(), String> {
        if self.built.nodes.saturating_add(self.kept.nodes) > MAX_NODES {
            return Err(if self.aliased {
                format!(
                    "YAML file expands to more than {MAX_NODES} nodes (through aliases); \
                     a file this large is refused: remove the repeated aliases"
                )
            } else {
                format!(
                    "YAML file has more than {MAX_NODES} nodes; \
                     a file this large is refused: split it into smaller files"
                )
            });
        }
        if self.alias_bytes.saturating_add(self.kept.bytes) > MAX_ALIAS_BYTES {
            return Err(format!(
                "YAML file copies more than {} MiB of text through anchors and aliases; \
                 a file this large is refused: remove the repeated aliases",
                MAX_ALIAS_BYTES >> 20
            ));
        }
        Ok(())
    }

    /// Counts a collection that is starting and checks how deep it sits.
    /// Returns where its own size starts: comments read ahead of it (and
    /// already counted) become its first items, so they are part of it.
    fn open(&mut self) -> Result<Size, String> {
        let ahead = Size {
            nodes: self.ahead.len(),
            bytes: self.ahead.iter().map(String::len).sum(),
        };
        let start = self.built.since(ahead);
        self.count(Size::node(0))?;
        check_depth(self.stack.len() + 1, false)?;
        Ok(start)
    }

    /// Records that the top collection holds an item `height` levels deep.
    fn raise_height(&mut self, child: usize) {
        if let Some(Frame::Map { height, .. } | Frame::Seq { height, .. }) = self.stack.last_mut() {
            *height = (*height).max(child);
        }
    }

    /// Records the column of a collection's first child, which is how
    /// far its own comments are indented.
    fn note_child_column(&mut self, col: usize) {
        if let Some(top) = self.stack.last_mut() {
            match top {
                Frame::Map { indent, key, .. } if indent.is_none() && key.is_none() => {
                    *indent = Some(col)
                }
                Frame::Seq { indent, .. } if indent.is_none() => {
                    *indent = Some(col.saturating_sub(2))
                }
                _ => {}
            }
        }
    }

    fn value(&mut self, node: Node, col: usize) -> Result<(), String> {
        self.note_child_column(col);
        let last_key_wins = self.last_key_wins;
        if let Some(Frame::Map {
            key, keys, items, ..
        }) = self.stack.last_mut()
            && key.is_none()
        {
            let name = match node {
                Node::Str(s) => s,
                Node::Null => String::new(),
                Node::Bool(b) => b.to_string(),
                Node::Int(i) => i.to_string(),
                Node::Float(f) => f.to_string(),
                _ => return Err("mapping keys must be scalars".to_owned()),
            };
            // Comments are `Key::Comment` entries and never pass here: only
            // names are compared.
            if !keys.insert(name.clone()) {
                if !last_key_wins {
                    return Err(format!(
                        "duplicate key `{}` in a mapping: keep one of the two entries",
                        clip(&name, 80)
                    ));
                }
                items.retain(|(k, _)| !matches!(k, Key::Name(n) if *n == name));
            }
            *key = Some(name);
            self.flush_pending();
            return Ok(());
        }
        self.attach(node)
    }

    fn attach(&mut self, node: Node) -> Result<(), String> {
        match self.stack.last_mut() {
            None => {
                let mut node = node;
                if !self.loose.is_empty() {
                    let mut items: Vec<(Key, Node)> = self
                        .loose
                        .drain(..)
                        .map(|c| (Key::Comment(c), Node::Null))
                        .collect();
                    match &mut node {
                        Node::Map(rest) => {
                            items.append(rest);
                            *rest = items;
                        }
                        Node::Seq(rest) => {
                            let mut seq: Vec<Node> = items
                                .into_iter()
                                .filter_map(|(k, _)| match k {
                                    Key::Comment(c) => Some(Node::Comment(c)),
                                    Key::Name(_) => None,
                                })
                                .collect();
                            seq.append(rest);
                            *rest = seq;
                        }
                        _ => {}
                    }
                }
                self.docs.push(node);
            }
            Some(Frame::Map { items, key, .. }) => {
                let name = key.take().ok_or("a mapping value without a key")?;
                items.extend(self.ahead.drain(..).map(|c| (Key::Comment(c), Node::Null)));
                items.push((Key::Name(name), node));
            }
            Some(Frame::Seq { items, .. }) => {
                // Comments leading a collection item are written above its
                // dash, so they are read as the sequence's.
                let mut node = node;
                match &mut node {
                    Node::Map(entries) => {
                        let n = entries
                            .iter()
                            .take_while(|(k, _)| matches!(k, Key::Comment(_)))
                            .count();
                        if n < entries.len() {
                            for (k, _) in entries.drain(..n) {
                                if let Key::Comment(c) = k {
                                    items.push(Node::Comment(c));
                                }
                            }
                        }
                    }
                    Node::Seq(inner) => {
                        let n = inner
                            .iter()
                            .take_while(|i| matches!(i, Node::Comment(_)))
                            .count();
                        if n < inner.len() {
                            items.extend(inner.drain(..n));
                        }
                    }
                    _ => {}
                }
                items.push(node);
                self.flush_pending();
            }
        }
        Ok(())
    }

    /// Moves comments aimed at the top frame into it.
    fn flush_pending(&mut self) {
        let depth = self.stack.len() - 1;
        if !self.pending.iter().any(|(d, _)| *d == depth) {
            return;
        }
        let (mine, rest): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(d, _)| *d == depth);
        self.pending = rest;
        // They were read after the item that just ended (a nested block),
        // and before the next key.
        let top = self.stack.last_mut().expect("depth came from the stack");
        for (_, text) in mine {
            top.push_comment(text);
        }
    }

    fn comment(&mut self, text: String, placement: Placement, span: Span) {
        let col = span.start.col();
        // A comment above a collection that has just started (its events
        // can come before the comment's) belongs before that collection.
        let line = span.start.line();
        let mut depth = self.stack.len();
        while depth > 1 && self.stack[depth - 1].is_empty() && self.stack[depth - 1].line() > line {
            depth -= 1;
        }
        if depth < self.stack.len() {
            self.stack[depth - 1].push_comment(text);
            return;
        }
        let Some(top) = self.stack.last_mut() else {
            self.loose.push(text);
            return;
        };
        if placement == Placement::Right {
            // A comment at the end of a line goes above that line's item.
            match top {
                Frame::Map {
                    items, key: None, ..
                } if !items.is_empty() => {
                    let last = items.pop().expect("not empty");
                    items.push((Key::Comment(text), Node::Null));
                    items.push(last);
                }
                Frame::Seq { items, .. } if !items.is_empty() => {
                    let last = items.pop().expect("not empty");
                    items.push(Node::Comment(text));
                    items.push(last);
                }
                _ => top.push_comment(text),
            }
            return;
        }
        // Between a key and its nested block: it belongs to that block.
        if let Frame::Map {
            key: Some(_),
            indent,
            ..
        } = top
            && indent.is_none_or(|i| col > i)
        {
            self.ahead.push(text);
            return;
        }
        // An own-line comment belongs to the innermost collection indented
        // no deeper than the comment.
        let mut depth = self.stack.len() - 1;
        while depth > 0 {
            match self.stack[depth].indent() {
                Some(indent) if col < indent => depth -= 1,
                _ => break,
            }
        }
        if depth == self.stack.len() - 1 {
            self.stack[depth].push_comment(text);
        } else {
            self.pending.push((depth, text));
        }
    }

    fn end_document(&mut self) {
        let comments: Vec<(Key, Node)> = self
            .loose
            .drain(..)
            .map(|c| (Key::Comment(c), Node::Null))
            .collect();
        if self.docs.len() == self.doc_start {
            // Nothing was attached: an empty document.
            self.docs.push(if comments.is_empty() {
                Node::Null
            } else {
                Node::Map(comments)
            });
        } else if let Some(Node::Map(items)) = self.docs.last_mut() {
            items.extend(comments);
        }
    }
}

/// Refuses collections nested deeper than [`MAX_DEPTH`] levels.
fn check_depth(depth: usize, through_alias: bool) -> Result<(), String> {
    if depth <= MAX_DEPTH {
        return Ok(());
    }
    let how = if through_alias {
        " (through aliases)"
    } else {
        ""
    };
    Err(format!(
        "YAML nests collections more than {MAX_DEPTH} levels deep{how}; \
         a file nested this deeply is refused: flatten the structure"
    ))
}

/// Resolves a scalar the way YAML 1.2's core schema does; quoted and
/// block scalars are strings.
/// A folded scalar's text as go-yaml (and so kustomize) reads it: a
/// more-indented line after a line that is not gets one line break more
/// than the YAML spec gives (`a\n  b` is `a\n\n  b`), also across blank
/// lines; more-indented lines after one another are as the spec says.
fn go_folded(value: &str) -> String {
    let more = |line: &str| line.starts_with([' ', '\t']);
    let mut out = String::with_capacity(value.len() + 8);
    // Whether the last line with text in it was more-indented.
    let mut last_more: Option<bool> = None;
    for (i, line) in value.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if !line.is_empty() {
            if more(line) && last_more == Some(false) {
                out.push('\n');
            }
            last_more = Some(more(line));
        }
        out.push_str(line);
    }
    out
}

fn scalar(value: &str, style: ScalarStyle, tag: Option<&str>) -> Result<Node, String> {
    if let Some(tag) = tag {
        return Ok(match tag {
            "str" | "binary" => Node::Str(value.to_owned()),
            "null" => Node::Null,
            "bool" => match plain(value) {
                n @ Node::Bool(_) => n,
                _ => return Err(format!("`{}` is not a !!bool", clip(value, 80))),
            },
            "int" => match plain(value) {
                n @ Node::Int(_) => n,
                _ => return Err(format!("`{}` is not an !!int", clip(value, 80))),
            },
            "float" => match plain(value) {
                Node::Int(i) => Node::Float(i as f64),
                n @ Node::Float(_) => n,
                _ => return Err(format!("`{}` is not a !!float", clip(value, 80))),
            },
            _ => Node::Str(value.to_owned()),
        });
    }
    Ok(match style {
        ScalarStyle::Plain => plain(value),
        _ => Node::Str(value.to_owned()),
    })
}

/// A plain scalar read as Go's yaml.v3 reads numbers (see
/// [`Schema::Kyaml`]); `None` when it is no number.
fn go_number(text: &str) -> Option<Node> {
    let first = text.bytes().next()?;
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-')) {
        return None;
    }
    let plain: String = text.chars().filter(|&c| c != '_').collect();
    let (negative, digits) = match plain.as_bytes().first() {
        Some(b'-') => (true, &plain[1..]),
        Some(b'+') => (false, &plain[1..]),
        _ => (false, plain.as_str()),
    };
    let (radix, body) = if let Some(r) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        (16, r)
    } else if let Some(r) = digits
        .strip_prefix("0o")
        .or_else(|| digits.strip_prefix("0O"))
    {
        (8, r)
    } else if let Some(r) = digits
        .strip_prefix("0b")
        .or_else(|| digits.strip_prefix("0B"))
    {
        (2, r)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_alphanumeric())
        && let Ok(v) = i64::from_str_radix(body, radix)
    {
        return Some(Node::Int(if negative { -v } else { v }));
    }
    // yaml.v3's float syntax; a whole float prints as an integer.
    let float_like = {
        let d = plain.strip_prefix(['+', '-']).unwrap_or(&plain);
        let (mantissa, exponent) = match d.find(['e', 'E']) {
            Some(i) => (&d[..i], Some(&d[i + 1..])),
            None => (d, None),
        };
        let mantissa_ok = match mantissa.split_once('.') {
            Some((a, b)) => {
                (!a.is_empty() || !b.is_empty())
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
            }
            None => !mantissa.is_empty() && mantissa.bytes().all(|c| c.is_ascii_digit()),
        };
        let exponent_ok = exponent.is_none_or(|e| {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit())
        });
        mantissa_ok && exponent_ok
    };
    if float_like && let Ok(f) = plain.parse::<f64>() {
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
            return Some(Node::Int(f as i64));
        }
        return Some(Node::Float(f));
    }
    None
}

/// The value a plain (unquoted) YAML scalar with this text stands for,
/// under the YAML 1.2 core schema: `3` is a number, `true` a bool, `~` null.
pub fn plain_scalar(text: &str) -> serde_json::Value {
    plain(text).to_json()
}

fn plain(value: &str) -> Node {
    match value {
        "" | "~" | "null" | "Null" | "NULL" => return Node::Null,
        "true" | "True" | "TRUE" => return Node::Bool(true),
        "false" | "False" | "FALSE" => return Node::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Node::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Node::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Node::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = value.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Node::Int(i);
        }
    } else if let Some(oct) = value.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Node::Int(i);
        }
    } else if is_decimal_int(value) {
        if let Ok(i) = value.parse::<i64>() {
            return Node::Int(i);
        }
        if let Ok(f) = value.parse::<f64>() {
            return Node::Float(f);
        }
    } else if is_float(value)
        && let Ok(f) = value.parse::<f64>()
    {
        return Node::Float(f);
    }
    Node::Str(value.to_owned())
}

fn is_decimal_int(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_float(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (mantissa, None),
    };
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match frac {
        Some(f) => digits(int) && digits(f) && !(int.is_empty() && f.is_empty()),
        None => !int.is_empty() && digits(int),
    };
    let exponent_ok = match exponent {
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
        None => true,
    };
    mantissa_ok && exponent_ok && (frac.is_some() || exponent.is_some())
}

/// Writes documents as YAML in the layout sops writes (`indent` spaces per
/// level for mappings and sequences under keys, sequence items' mappings
/// two columns after the dash), documents separated by `---`.
pub fn emit_stream(docs: &[Node], indent: usize) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        match doc {
            Node::Map(items) if !doc.is_empty_collection() => {
                emit_map(items, 0, 0, indent, &mut out)
            }
            Node::Seq(items) if !doc.is_empty_collection() => emit_seq(items, 0, indent, &mut out),
            Node::Map(items) => {
                emit_comments(items.iter().filter_map(comment_of_key), 0, &mut out);
                out.push_str("{}\n");
            }
            Node::Seq(items) => {
                for item in items {
                    if let Node::Comment(c) = item {
                        let _ = writeln!(out, "#{c}");
                    }
                }
                out.push_str("[]\n");
            }
            other => {
                out.push_str(&inline_scalar(other, 0, indent));
                out.push('\n');
            }
        }
    }
    out
}

fn comment_of_key((k, _): &(Key, Node)) -> Option<&str> {
    match k {
        Key::Comment(c) => Some(c),
        Key::Name(_) => None,
    }
}

fn emit_comments<'a>(comments: impl Iterator<Item = &'a str>, col: usize, out: &mut String) {
    for c in comments {
        let _ = writeln!(out, "{:col$}#{c}", "");
    }
}

/// Keys sit at `col`; what nests under them sits at `base + indent` (a
/// mapping inside a sequence item has its dash's column as `base`).
fn emit_map(items: &[(Key, Node)], col: usize, base: usize, indent: usize, out: &mut String) {
    for (key, value) in items {
        let name = match key {
            Key::Comment(c) => {
                let _ = writeln!(out, "{:col$}#{c}", "");
                continue;
            }
            Key::Name(n) => n,
        };
        let quoted = quote_key(name);
        // YAML allows an implicit key of at most 1024 characters; a
        // longer one is written as an explicit `? key` entry.
        if quoted.chars().count() > 1000 {
            let _ = write!(out, "{:col$}? {quoted}\n{:col$}:", "", "");
        } else {
            let _ = write!(out, "{:col$}{quoted}:", "");
        }
        write_value(value, base + indent, indent, out);
    }
}

/// Writes what follows `key:`: a nested block at `child` on the next
/// lines, or a scalar on this one.
fn write_value(value: &Node, child: usize, indent: usize, out: &mut String) {
    match value {
        Node::Map(items) if !value.is_empty_collection() => {
            out.push('\n');
            emit_map(items, child, child, indent, out);
        }
        Node::Seq(items) if !value.is_empty_collection() => {
            out.push('\n');
            emit_seq(items, child, indent, out);
        }
        Node::Map(_) => out.push_str(" {}\n"),
        Node::Seq(_) => out.push_str(" []\n"),
        scalar => {
            out.push(' ');
            out.push_str(&inline_scalar(scalar, child, indent));
            out.push('\n');
        }
    }
}

fn emit_seq(items: &[Node], col: usize, indent: usize, out: &mut String) {
    for item in items {
        match item {
            Node::Comment(c) => {
                let _ = writeln!(out, "{:col$}#{c}", "");
            }
            Node::Map(entries) if !item.is_empty_collection() => {
                // Leading comments go above the dash; the first key shares
                // its line.
                let first = entries
                    .iter()
                    .position(|(k, _)| matches!(k, Key::Name(_)))
                    .unwrap_or(0);
                emit_comments(entries[..first].iter().filter_map(comment_of_key), col, out);
                let mut inner = String::new();
                emit_map(&entries[first..], col + 2, col, indent, &mut inner);
                let _ = write!(out, "{:col$}- ", "");
                out.push_str(&inner[col + 2..]);
            }
            Node::Seq(inner_items) if !item.is_empty_collection() => {
                let first = inner_items
                    .iter()
                    .position(|n| !matches!(n, Node::Comment(_)))
                    .unwrap_or(0);
                for c in &inner_items[..first] {
                    if let Node::Comment(c) = c {
                        let _ = writeln!(out, "{:col$}#{c}", "");
                    }
                }
                let mut inner = String::new();
                emit_seq(&inner_items[first..], col + 2, indent, &mut inner);
                let _ = write!(out, "{:col$}- ", "");
                out.push_str(&inner[col + 2..]);
            }
            Node::Map(_) => {
                let _ = writeln!(out, "{:col$}- {{}}", "");
            }
            Node::Seq(_) => {
                let _ = writeln!(out, "{:col$}- []", "");
            }
            scalar => {
                let _ = writeln!(
                    out,
                    "{:col$}- {}",
                    "",
                    inline_scalar(scalar, col + indent, indent)
                );
            }
        }
    }
}

/// A scalar as it sits after `key: ` or `- `. Multi-line strings become
/// literal blocks indented to `block_col`.
fn inline_scalar(node: &Node, block_col: usize, _indent: usize) -> String {
    match node {
        Node::Null | Node::Comment(_) | Node::Map(_) | Node::Seq(_) => "null".to_owned(),
        Node::Bool(b) => b.to_string(),
        Node::Int(i) => i.to_string(),
        Node::Float(f) => format_float(*f),
        Node::Str(s) => {
            if let Some(block) = literal_block(s, block_col) {
                block
            } else if plain_safe(s) {
                s.clone()
            } else {
                double_quoted(s)
            }
        }
    }
}

/// A float the way YAML reads it back as a float.
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        ".nan".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { ".inf" } else { "-.inf" }.to_owned()
    } else {
        let s = f.to_string();
        if s.contains(['.', 'e', 'E']) {
            s
        } else {
            format!("{s}.0")
        }
    }
}

fn literal_block(s: &str, col: usize) -> Option<String> {
    if !s.contains('\n') {
        return None;
    }
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    let ok = !body.is_empty()
        && !body.starts_with([' ', '\t'])
        && body
            .lines()
            .all(|l| !l.ends_with([' ', '\t']) && !l.chars().any(|c| c.is_control() && c != '\t'))
        && !body.contains('\r')
        // At the top level a line `---` or `...` would end the document.
        && (col > 0 || !body.lines().any(|l| l.starts_with("---") || l.starts_with("...")));
    if !ok {
        return None;
    }
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let mut out = format!("|{chomp}");
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            let _ = write!(out, "{:col$}{line}", "");
        }
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    Some(out)
}

fn quote_key(k: &str) -> String {
    if plain_safe(k) {
        k.to_owned()
    } else {
        double_quoted(k)
    }
}

/// Whether a string can be written without quotes and read back as the
/// same string (by YAML 1.1 and 1.2 readers alike).
pub fn plain_safe(s: &str) -> bool {
    if s.is_empty() || s.starts_with([' ', '\t']) || s.ends_with([' ', '\t', ':']) {
        return false;
    }
    // `...` and `---` at the start of a line end or start a document.
    if s.starts_with("...") {
        return false;
    }
    let first = s.chars().next().unwrap_or(' ');
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        // `-x`, `?x` and `:x` are plain in YAML, but quoting them is safer.
        return false;
    }
    if s.contains(": ") || s.contains(" #") || s.contains(['\n', '\r', '\t']) {
        return false;
    }
    if s.chars().any(|c| c.is_control() || c == '\u{feff}') {
        return false;
    }
    if !matches!(plain(s), Node::Str(_)) {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "~"
    ) {
        return false;
    }
    // Timestamps, base-60 and other YAML 1.1 forms: anything starting with
    // a digit or sign that has more than digits is quoted.
    if s.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '.')
        && s.chars().any(|c| matches!(c, ':' | '-' | '_' | ' '))
    {
        return false;
    }
    true
}

/// A double-quoted YAML string (a JSON string is one).
pub fn double_quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(src: &str) -> String {
        emit_stream(&parse_stream(src, Path::new("t.yaml")).expect("parses"), 4)
    }

    #[test]
    fn keeps_order_comments_and_types() {
        let src = "# top\nb: 1\na:\n    # inside\n    x: 2.5\n    t: \"true\"\n    z: [1, two]\n# between\nc: |\n    line1\n    line2\n";
        let docs = parse_stream(src, Path::new("t.yaml")).expect("parses");
        let Node::Map(items) = &docs[0] else {
            panic!("a map")
        };
        assert_eq!(items[0].0, Key::Comment(" top".into()));
        assert_eq!(items[1], (Key::Name("b".into()), Node::Int(1)));
        let a = docs[0].get("a").expect("a");
        assert_eq!(a.get("x"), Some(&Node::Float(2.5)));
        assert_eq!(a.get("t"), Some(&Node::Str("true".into())));
        assert_eq!(
            emit_stream(&docs, 4),
            "# top\nb: 1\na:\n    # inside\n    x: 2.5\n    t: \"true\"\n    z:\n        - 1\n        - two\n# between\nc: |\n    line1\n    line2\n"
        );
    }

    #[test]
    fn end_of_line_comment_moves_above_its_item() {
        assert_eq!(round("a: 1 # one\nb: 2\n"), "# one\na: 1\nb: 2\n");
    }

    #[test]
    fn dedented_comment_belongs_to_the_outer_map() {
        let docs = parse_stream("a:\n  x: 1\n# about b\nb: 2\n", Path::new("t")).expect("ok");
        let Node::Map(items) = &docs[0] else {
            panic!("a map")
        };
        assert_eq!(items[1].0, Key::Comment(" about b".into()));
        assert_eq!(
            docs[0].get("a"),
            Some(&Node::Map(vec![(Key::Name("x".into()), Node::Int(1))]))
        );
    }

    #[test]
    fn sequences_of_maps_and_multi_documents() {
        let src = "l:\n    - name: a\n      v: 1\n    - - 1\n      - 2\n    - plain\n---\nx: y\n";
        assert_eq!(
            round(src),
            "l:\n    - name: a\n      v: 1\n    - - 1\n      - 2\n    - plain\n---\nx: \"y\"\n"
        );
    }

    #[test]
    fn quoting_keeps_strings_strings() {
        for s in [
            "",
            "1",
            "1.5",
            "true",
            "yes",
            "null",
            "a: b",
            "#x",
            "2026-01-01",
            " pad",
            "x\ty",
        ] {
            let doc = Node::Map(vec![(Key::Name("k".into()), Node::Str(s.into()))]);
            let back = parse_stream(&emit_stream(std::slice::from_ref(&doc), 4), Path::new("t"))
                .expect("ok");
            assert_eq!(back[0], doc, "string {s:?}");
        }
    }

    /// Found by the `yaml_tree` fuzz target: what is written must read back
    /// as the same tree.
    #[test]
    fn fuzz_regressions_read_back_the_same() {
        for src in [
            // A dedented comment after a list item's mapping.
            "- - x\n  - a: 1\n  # after a\n  - b: 2\n",
            // An end-of-line comment on a list item's first key.
            "l:\n    - a: one\n        two # note\n      b: 2\n",
            // A document that is a list holding only a comment.
            "#\"\n  []\n",
            // A comment after a list whose first item is written as a
            // block scalar (its content sits further in than the `-`).
            ":\n- 9\n\r 9\n#",
        ] {
            let docs = parse_stream(src, Path::new("t")).expect("parses");
            let text = emit_stream(&docs, 4);
            let again = parse_stream(&text, Path::new("t")).expect("re-parses");
            assert_eq!(again, docs, "{src:?} -> {text:?}");
        }
    }

    #[test]
    fn a_comment_after_a_list_items_mapping_stays_after_it() {
        let docs = parse_stream("- a: 1\n# after a\n- b: 2\n", Path::new("t")).expect("parses");
        let Node::Seq(items) = &docs[0] else {
            panic!("a list")
        };
        assert_eq!(items[1], Node::Comment(" after a".into()), "{items:?}");
    }

    #[test]
    fn a_flow_collection_of_only_comments_reads_back_the_same() {
        // Found by the yaml_tree fuzz target.
        assert_eq!(round("- [ #\n]\n"), "- []\n");
        assert_eq!(round("a: { # c\n}\n"), "a: {}\n");
        assert_eq!(round("- [k\n\nV\n #\n]\n"), round("- [k\n\nV\n]\n"));
    }

    /// What the yaml_tree fuzz target checks: written back and read
    /// again, the tree is the same.
    fn reads_back_the_same(src: &str) {
        let docs = parse_stream(src, Path::new("t.yaml")).expect("parses");
        let text = emit_stream(&docs, 4);
        assert_eq!(
            parse_stream(&text, Path::new("t.yaml")).expect("again"),
            docs,
            "{text}"
        );
    }

    #[test]
    fn kyaml_reads_numbers_as_go_does() {
        let src = "a: 0400\nb: 0775\nc: 09\nd: 1_000\ne: 0x1F\nf: +0755\ng: 1e3\nh: 0b101\ni: -010\nj: 1.5\nk: 1.2.3\nl: no\nm: 2024-01-01\nn: \"0400\"\n";
        let docs = parse_stream_with(src, Path::new("k.yaml"), Schema::Kyaml).expect("parses");
        assert_eq!(
            docs[0].to_json(),
            serde_json::json!({"a": 256, "b": 509, "c": 9, "d": 1000, "e": 31, "f": 493, "g": 1000,
                "h": 5, "i": -8, "j": 1.5, "k": "1.2.3", "l": "no", "m": "2024-01-01", "n": "0400"})
        );
        let core = parse_stream(src, Path::new("k.yaml")).expect("parses");
        assert_eq!(core[0].to_json()["a"], 400, "the core schema is unchanged");
    }

    #[test]
    fn a_document_end_marker_as_text_is_quoted() {
        // Found by the yaml_tree fuzz target.
        reads_back_the_same("\t...");
        assert!(!plain_safe("..."));
        assert!(!plain_safe("...x"));
    }

    #[test]
    fn a_key_longer_than_yaml_allows_inline_is_written_explicitly() {
        // Found by the yaml_tree fuzz target (an alias as a key).
        let key = "k".repeat(1500);
        reads_back_the_same(&format!("? {key}\n: [a]\nb: 1\n"));
    }

    #[test]
    fn a_top_level_text_with_a_document_marker_line_reads_back_the_same() {
        // Found by the yaml_tree fuzz target: `e\n---` as a literal block
        // at the top level would end the document at its second line.
        reads_back_the_same("e\r\r ---");
    }

    #[test]
    fn errors_are_located() {
        let e = parse_stream("a: [1, 2\n", Path::new("bad.yaml")).expect_err("invalid");
        assert_eq!(e.file.as_deref(), Some(Path::new("bad.yaml")));
        assert!(e.location.is_some());
    }

    /// "Billion laughs": `levels` anchors, each a list of nine aliases to the
    /// one before, so the last stands for 9^levels strings.
    fn laughs(levels: usize) -> String {
        let mut src = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..levels {
            let alias = format!("*l{}", i - 1);
            let aliases = [alias.as_str(); 9].join(", ");
            src.push_str(&format!("l{i}: &l{i} [{aliases}]\n"));
        }
        src
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let e = parse_stream(&laughs(9), Path::new("bomb.yaml")).expect_err("refused");
        assert!(
            e.message.contains(&format!(
                "expands to more than {MAX_NODES} nodes (through aliases)"
            )),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("remove the repeated aliases"),
            "{}",
            e.message
        );
        // The sixth line's anchor (about 600,000 nodes, kept and copied)
        // crosses the budget; nothing past it is built.
        assert_eq!(e.location.expect("located").line, 6);
    }

    #[test]
    fn a_chain_of_anchors_is_refused() {
        // 5,000 anchors (about 150 KB), each a pair of aliases to the one
        // before: the last would stand for 2^5000 strings.
        let mut src = String::from("a0: &a0 x\n");
        for i in 1..5000 {
            src.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}]\n", p = i - 1));
        }
        let e = parse_stream(&src, Path::new("chain.yaml")).expect_err("refused");
        assert!(e.message.contains("(through aliases)"), "{}", e.message);
        // Refused as soon as the doubling passes the budget: each node is
        // counted once built and once kept by its anchor.
        assert_eq!(e.location.expect("located").line, 18);
    }

    #[test]
    fn an_alias_to_a_long_string_is_charged_by_its_bytes() {
        // Each alias is one node, but copies a megabyte.
        let src = format!(
            "s: &s {}\nl: [{}]\n",
            "x".repeat(1 << 20),
            ["*s"; 100].join(", ")
        );
        let e = parse_stream(&src, Path::new("t")).expect_err("refused");
        assert!(e.message.contains("MiB of text"), "{}", e.message);
        assert_eq!(e.location.expect("located").line, 2);
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_stream(&deep, Path::new("deep.yaml")).expect_err("refused");
        // Our cap or the parser's own, whichever comes first.
        assert!(
            e.message.chars().count() <= MESSAGE_CHARS + 1,
            "{}",
            e.message
        );
        assert_eq!(e.location.expect("located").line, 1);
    }

    #[test]
    fn nesting_is_capped_at_max_depth() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let docs = parse_stream(&nest(MAX_DEPTH), Path::new("t")).expect("at the cap");
        // What is read at the cap is written and read back.
        let again = parse_stream(&emit_stream(&docs, 4), Path::new("t")).expect("re-parses");
        assert_eq!(again, docs);
        let e = parse_stream(&nest(MAX_DEPTH + 1), Path::new("t")).expect_err("past the cap");
        assert!(
            e.message
                .contains(&format!("more than {MAX_DEPTH} levels deep;")),
            "{}",
            e.message
        );
        let loc = e.location.expect("located");
        assert_eq!((loc.line, loc.column), (1, MAX_DEPTH as u32 + 1));
    }

    #[test]
    fn aliases_count_toward_the_depth() {
        let src = format!(
            "a: &a {}x{}\nb: {}*a{}\n",
            "[".repeat(100),
            "]".repeat(100),
            "[".repeat(50),
            "]".repeat(50)
        );
        let e = parse_stream(&src, Path::new("t")).expect_err("too deep through the alias");
        assert!(
            e.message.contains("levels deep (through aliases)"),
            "{}",
            e.message
        );
        let loc = e.location.expect("located");
        assert_eq!((loc.line, loc.column), (2, 54));
    }

    #[test]
    fn a_duplicate_key_can_keep_its_last_value() {
        let src = "name: a\nother: 1\nnested:\n  x: 1\n  x: 2\nname: b\n";
        let docs =
            parse_stream_last_key_wins(src, Path::new("k.yaml"), Schema::Kyaml).expect("accepted");
        assert_eq!(
            docs[0].to_json(),
            serde_json::json!({"other": 1, "nested": {"x": 2}, "name": "b"})
        );
    }

    #[test]
    fn a_duplicate_key_is_refused_where_it_repeats() {
        let src = "name: a\n# name: commented out\nother: 1\nname: b\n";
        let e = parse_stream(src, Path::new("dup.yaml")).expect_err("duplicate");
        assert!(
            e.message.contains("duplicate key `name` in a mapping"),
            "{}",
            e.message
        );
        let loc = e.location.expect("located");
        assert_eq!((loc.line, loc.column), (4, 1));
        assert!(src[loc.offset..].starts_with("name: b"), "{loc:?}");
        // In a nested mapping, inside a list.
        let e = parse_stream("l:\n- k: 1\n  k: 2\n", Path::new("t")).expect_err("duplicate");
        assert_eq!(e.location.expect("located").line, 3);
        // The same key in two mappings, and repeated comments, are fine.
        parse_stream("a:\n  name: x\nb:\n  name: y\n# b\n# b\n", Path::new("t")).expect("parses");
    }

    #[test]
    fn ordinary_aliases_and_merge_keys_still_parse() {
        let src = "base: &base\n  image: nginx\n  port: 80\nweb:\n  <<: *base\n  name: web\nboth: [*base, *base]\n";
        let docs = parse_stream(src, Path::new("t")).expect("parses");
        let base = docs[0].get("base").expect("base");
        assert_eq!(base.get("port"), Some(&Node::Int(80)));
        assert_eq!(docs[0].get("web").and_then(|w| w.get("<<")), Some(base));
        assert_eq!(
            docs[0].get("both"),
            Some(&Node::Seq(vec![base.clone(), base.clone()]))
        );
        // As data, the merge key is resolved (keys written win).
        let src = "a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nm:\n  <<: [*a, *b]\n  x: 0\n";
        let docs = parse_stream(src, Path::new("t")).expect("parses");
        assert_eq!(
            docs[0].to_json()["m"],
            serde_json::json!({"x": 0, "y": 1, "z": 2})
        );
    }

    #[test]
    fn a_huge_invalid_line_gives_a_short_message() {
        // The offending value is quoted in the message, cut short.
        let src = format!("a: !!bool {}\n", "x".repeat(1_000_000));
        let e = parse_stream(&src, Path::new("t")).expect_err("not a bool");
        assert!(
            e.message.contains("` is not a !!bool"),
            "{}",
            clip(&e.message, 300)
        );
        assert!(
            e.message.chars().count() <= MESSAGE_CHARS + 1,
            "{}",
            e.message.len()
        );
        // One the parser refuses.
        let src = format!("a: [{}\n", "x".repeat(1_000_000));
        let e = parse_stream(&src, Path::new("t")).expect_err("unclosed");
        assert!(
            e.message.chars().count() <= MESSAGE_CHARS + 1,
            "{}",
            e.message.len()
        );
    }
}
