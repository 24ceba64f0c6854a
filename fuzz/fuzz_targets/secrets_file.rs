//! Any bytes as a secrets file, in each format: parsing, metadata, and a
//! full decryption attempt with a fixed key must fail cleanly, never panic.
//! The seed corpus holds files encrypted to that key, so mutations reach
//! the value and MAC checks.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use terrace_secrets::{Format, Keyring, format, open};

/// The fuzzing key (age10zxq242juys0vxz8pfscemxyeqpmqwmj96hp582ukw3qfh3hws9qtdck5a), used only by this target's corpus.
pub const KEY: &str = "AGE-SECRET-KEY-1QGRT2RL2M32GTKP3N54N0GXCGVK3GMH5P52VWTTCXP26R2QSGPAQ702YYU";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut ring = Keyring::empty();
    ring.add_key_text(KEY, "fuzz", Path::new("fuzz")).expect("the fixed key parses");
    for f in [Format::Yaml, Format::Json, Format::Dotenv] {
        if let Ok(mut docs) = format::load(f, text, Path::new("f")) {
            let _ = format::split_metadata(f, &mut docs);
            let _ = format::emit(f, &docs);
        }
        if let Ok(opened) = open(text, Path::new("f"), f, &ring) {
            // Whatever decrypts must re-seal and open again to the same values.
            let sealed = opened.seal(&opened.plain).expect("re-seals");
            let again = open(&sealed, Path::new("f"), f, &ring).expect("re-opens");
            assert_eq!(again.plain, opened.plain);
        }
    }
});
