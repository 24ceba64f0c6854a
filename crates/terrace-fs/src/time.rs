//! The clock as terrace records it.

use std::time::SystemTime;

/// Now, as RFC 3339 UTC with seconds (`2026-11-30T16:20:00Z`): state
/// records, locks, run history and sops's `lastmodified`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
