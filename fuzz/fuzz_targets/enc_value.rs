//! Any string as an `ENC[AES256_GCM,...]` value: parsing and decryption
//! fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use terrace_secrets::cipher;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cipher::parse(s);
    let _ = cipher::decrypt(s, &[7u8; 32], "a:b:");
});
