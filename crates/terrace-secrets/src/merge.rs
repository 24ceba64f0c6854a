//! Three-way merge of decrypted documents, by key path. Used by the Git
//! merge driver: conflicts are reported as paths, never as ciphertext.

use terrace_yaml::tree::{Key, Node};

/// One path changed differently on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub path: String,
    pub what: &'static str,
}

/// Merges `ours` and `theirs` against their common `base`.
pub fn merge(base: &[Node], ours: &[Node], theirs: &[Node]) -> Result<Vec<Node>, Vec<Conflict>> {
    let mut conflicts = Vec::new();
    let n = ours.len().max(theirs.len());
    let empty = Node::Map(Vec::new());
    let mut out = Vec::new();
    for i in 0..n {
        let prefix = if n > 1 {
            format!("[doc {i}]")
        } else {
            String::new()
        };
        let merged = merge_opt(
            base.get(i),
            ours.get(i),
            theirs.get(i),
            &prefix,
            &mut conflicts,
        );
        out.push(merged.unwrap_or_else(|| empty.clone()));
    }
    if conflicts.is_empty() {
        Ok(out)
    } else {
        Err(conflicts)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn merge_opt(
    base: Option<&Node>,
    ours: Option<&Node>,
    theirs: Option<&Node>,
    path: &str,
    conflicts: &mut Vec<Conflict>,
) -> Option<Node> {
    match (base, ours, theirs) {
        (_, None, None) => None,
        (None, Some(o), None) => Some(o.clone()),
        (None, None, Some(t)) => Some(t.clone()),
        (Some(b), None, Some(t)) => {
            if b == t {
                None
            } else {
                conflicts.push(Conflict {
                    path: path.to_owned(),
                    what: "deleted on this branch, changed on the other",
                });
                None
            }
        }
        (Some(b), Some(o), None) => {
            if b == o {
                None
            } else {
                conflicts.push(Conflict {
                    path: path.to_owned(),
                    what: "changed on this branch, deleted on the other",
                });
                Some(o.clone())
            }
        }
        (b, Some(o), Some(t)) => Some(merge_node(b, o, t, path, conflicts)),
    }
}

fn merge_node(
    base: Option<&Node>,
    ours: &Node,
    theirs: &Node,
    path: &str,
    conflicts: &mut Vec<Conflict>,
) -> Node {
    if ours == theirs {
        return ours.clone();
    }
    if base == Some(ours) {
        return theirs.clone();
    }
    if base == Some(theirs) {
        return ours.clone();
    }
    if let (Node::Map(o), Node::Map(t)) = (ours, theirs) {
        let empty = Vec::new();
        let b = match base {
            Some(Node::Map(b)) => b,
            _ => &empty,
        };
        return Node::Map(merge_maps(b, o, t, path, conflicts));
    }
    conflicts.push(Conflict {
        path: path.to_owned(),
        what: "changed differently on both branches",
    });
    ours.clone()
}

fn get<'a>(items: &'a [(Key, Node)], name: &str) -> Option<&'a Node> {
    items.iter().find_map(|(k, v)| match k {
        Key::Name(n) if n == name => Some(v),
        _ => None,
    })
}

fn merge_maps(
    base: &[(Key, Node)],
    ours: &[(Key, Node)],
    theirs: &[(Key, Node)],
    path: &str,
    conflicts: &mut Vec<Conflict>,
) -> Vec<(Key, Node)> {
    let mut out: Vec<(Key, Node)> = Vec::new();
    // Our order and comments first.
    for (k, v) in ours {
        match k {
            Key::Comment(_) => out.push((k.clone(), v.clone())),
            Key::Name(name) => {
                if let Some(m) = merge_opt(
                    get(base, name),
                    Some(v),
                    get(theirs, name),
                    &join(path, name),
                    conflicts,
                ) {
                    out.push((k.clone(), m));
                }
            }
        }
    }
    // Then keys only the other branch added, after the key that precedes
    // them there, with the comments just above them.
    let mut pending_comments: Vec<(Key, Node)> = Vec::new();
    let mut previous: Option<&str> = None;
    for (k, v) in theirs {
        match k {
            Key::Comment(_) => pending_comments.push((k.clone(), v.clone())),
            Key::Name(name) => {
                let in_ours = get(ours, name).is_some();
                let in_base = get(base, name).is_some();
                if !in_ours && !in_base {
                    let at = previous
                        .and_then(|p| out.iter().position(|(k, _)| *k == Key::Name(p.to_owned())))
                        .map_or(out.len(), |i| i + 1);
                    let mut insert = std::mem::take(&mut pending_comments);
                    insert.push((k.clone(), v.clone()));
                    for (j, item) in insert.into_iter().enumerate() {
                        out.insert(at + j, item);
                    }
                } else if !in_ours {
                    // Deleted here: merge_opt decides (it may conflict).
                    let _ = merge_opt(get(base, name), None, Some(v), &join(path, name), conflicts);
                }
                pending_comments.clear();
                previous = Some(name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn d(src: &str) -> Vec<Node> {
        terrace_yaml::tree::parse_stream(src, Path::new("t")).expect("parses")
    }

    #[test]
    fn edits_to_different_keys_merge() {
        let base = d("a: 1\nb: 2\nc: 3\n");
        let ours = d("a: 10\nb: 2\nc: 3\n");
        let theirs = d("a: 1\nb: 2\n# new\nn: 5\nc: 30\n");
        let merged = merge(&base, &ours, &theirs).expect("no conflict");
        assert_eq!(merged, d("a: 10\nb: 2\n# new\nn: 5\nc: 30\n"));
    }

    #[test]
    fn same_key_changed_twice_is_a_conflict_by_path() {
        let base = d("db:\n  password: a\n");
        let ours = d("db:\n  password: b\n");
        let theirs = d("db:\n  password: c\n");
        let conflicts = merge(&base, &ours, &theirs).expect_err("conflict");
        assert_eq!(conflicts[0].path, "db.password");
    }

    #[test]
    fn deletion_against_unchanged_wins() {
        let merged = merge(&d("a: 1\nb: 2\n"), &d("a: 1\n"), &d("a: 1\nb: 2\n")).expect("clean");
        assert_eq!(merged, d("a: 1\n"));
    }
}
