//! Flux-style `${VAR}` substitution: any text substitutes or fails
//! cleanly, within its budget, in strict mode and not; an object made
//! from the text substitutes without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use terrace_drivers::substitute::{Vars, substitute_object, substitute_str};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut vars = Vars::default();
    vars.set("A", "abc/déf.txt");
    vars.set("N", "3");
    vars.set("E", "");
    for strict in [false, true] {
        vars.strict = strict;
        let mut used = Default::default();
        if let Ok(out) = substitute_str(s, &vars, &mut used) {
            // No variable was read that is not set.
            assert!(used.iter().all(|u: &String| vars.values.contains_key(u)));
            let _ = out;
        }
        let mut object = json!({"metadata": {"name": s, "labels": {s: s}}, "data": [s, {"k": s}]});
        let _ = substitute_object(&mut object, &vars);
    }
});
