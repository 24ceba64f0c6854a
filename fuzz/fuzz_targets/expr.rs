//! The `${...}` expression language and locating values in YAML: any text
//! parses or fails cleanly; what parses evaluates without panicking; and
//! `locate` of any path in any YAML never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use terrace_core::expr::{self, ContentScope};
use terrace_core::ValuePath;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = expr::parse(s) {
        // Printing what parsed is stable.
        let _ = format!("{t:?}");
    }
    let vars: Map<String, Value> = json!({"a": {"b": [1, "x"]}, "n": 3}).as_object().cloned().unwrap_or_default();
    let inputs: Map<String, Value> = json!({"i": "v", "l": [1, 2]}).as_object().cloned().unwrap_or_default();
    let sensitive = Default::default();
    let scope = ContentScope {
        env: "dev",
        vars: &vars,
        inputs: &inputs,
        sensitive_inputs: &sensitive,
        secrets: None,
    };
    let _ = expr::eval(&Value::String(s.to_owned()), &ValuePath::root(), &scope);
    // The same text as YAML, located by a path made from its own words.
    let mut path = ValuePath::root();
    for (i, word) in s.split_whitespace().take(4).enumerate() {
        path = if i % 2 == 0 { path.key(word) } else { path.index(word.len()) };
    }
    let _ = terrace_yaml::locate(s, 0, &path, s.split_whitespace().next());
});
