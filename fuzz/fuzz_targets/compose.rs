//! Compose files: any text loads or fails with a diagnostic, within the
//! parser's budgets; interpolation, shell words and env files never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = |n: &str| (n == "SET").then(|| "v".to_owned());
    let _ = terrace_compose::load(s, std::path::Path::new("compose.yaml"), &lookup);
    let _ = terrace_compose::interpolate(s, &lookup, &mut Default::default());
    let _ = terrace_compose::shell_words(s);
    let _ = terrace_compose::duration(s);
    let _ = terrace_compose::bytes(s);
    let _ = terrace_compose::dotenv::parse(s, &lookup, &Default::default(), &mut Default::default());
});
