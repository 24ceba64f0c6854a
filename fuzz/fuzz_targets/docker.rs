//! What a docker target reads: a target's `host` (with SSH and TLS
//! settings) never panics and never yields an SSH address that ssh would
//! read as an option; archives an engine sends are re-rooted without
//! panicking, and no entry climbs out of the directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let ssh = terrace_docker::SshOptions {
            known_hosts: Some("/k".into()),
            ..Default::default()
        };
        if let Ok(terrace_docker::Endpoint::Ssh(e)) = terrace_docker::Endpoint::parse(s, None, Some(ssh)) {
            assert!(!e.host.starts_with('-'));
            assert!(!e.user.as_deref().unwrap_or_default().starts_with('-'));
        }
        let _ = terrace_docker::Endpoint::parse(s, None, None);
    }
    if let Ok(tar) = terrace_docker::reroot(data, "data") {
        let mut a = tar::Archive::new(tar.as_slice());
        if let Ok(entries) = a.entries() {
            for e in entries.flatten() {
                let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                assert!(!p.split('/').any(|c| c == ".."), "{p}");
            }
        }
    }
});
