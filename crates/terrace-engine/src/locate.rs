//! Turning "this value in this file" into a located [`Diagnostic`].

use terrace_core::ValuePath;
use terrace_core::diag::Diagnostic;

/// A diagnostic for the value at `path` of document `doc` in `source`
/// (the text of `file`); `needle` narrows it to an expression as written.
pub(crate) fn at_value(
    file: &str,
    source: &str,
    doc: usize,
    path: &ValuePath,
    needle: Option<&str>,
    message: impl Into<String>,
) -> Diagnostic {
    let location = terrace_yaml::locate(source, doc, path, needle)
        .or_else(|| parent_location(source, doc, path));
    Diagnostic::new(message).in_file(file).at(location)
}

/// The nearest located ancestor, when a value itself cannot be found (for
/// example a default).
fn parent_location(
    source: &str,
    doc: usize,
    path: &ValuePath,
) -> Option<terrace_core::diag::Location> {
    let mut segs = path.segments().to_vec();
    while segs.pop().is_some() {
        if let Some(l) = terrace_yaml::locate(source, doc, &ValuePath(segs.clone()), None) {
            return Some(l);
        }
    }
    None
}

/// A diagnostic pointing at the mapping key at the end of `path` (an
/// unknown field), not at its value: the key is the nearest text before
/// the value that spells it.
pub(crate) fn at_key(
    file: &str,
    source: &str,
    doc: usize,
    path: &ValuePath,
    message: impl Into<String>,
) -> Diagnostic {
    let key = match path.segments().last() {
        Some(terrace_core::Seg::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    let location = terrace_yaml::locate(source, doc, path, None).and_then(|value| {
        let key = key?;
        let before = source.get(..value.offset)?;
        let offset = before.rfind(key)?;
        let (line, column) = terrace_yaml::line_col(source, offset);
        Some(terrace_core::diag::Location {
            line,
            column,
            offset,
            len: key.len(),
        })
    });
    match location {
        Some(l) => Diagnostic::new(message).in_file(file).at(Some(l)),
        None => at_value(file, source, doc, path, None, message),
    }
}
