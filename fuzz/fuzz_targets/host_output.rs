//! What a host prints back to a script unit (a host may be compromised):
//! the probe's report and the `::outputs::` line are read without
//! panicking, a file reading never spans lines or holds a tab in its
//! fields, and outputs that read are a JSON object that writes back with
//! the same keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use terrace_drivers::script::{HostReport, parse_outputs};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let report = HostReport::read(text);
    for (path, found) in report.files.iter().flatten() {
        assert!(!path.contains('\n'), "{path:?}");
        for field in [&found.sum, &found.mode, &found.names, &found.ids] {
            assert!(!field.contains(['\t', '\n']), "{field:?}");
        }
    }
    assert!(report.diff.lines().all(|l| !l.starts_with("::file::")));
    if let Some(Ok(outputs)) = parse_outputs(text) {
        let written = serde_json::to_string(&outputs).expect("outputs serialize");
        let again: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&written).expect("outputs read back");
        // Keys, not values: serde_json's float parsing is not exact.
        assert!(again.keys().eq(outputs.keys()));
    }
});
