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
