//! State records and saved plans, the two files terrace reads back from
//! disk: any text either reads or is refused with an error, and a record
//! that reads (format 1 upgraded, or format 2) writes and reads back the
//! same.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use terrace_core::state::UnitState;
use terrace_engine::saved::SavedPlan;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(record) = UnitState::from_json(text) {
        let written = serde_json::to_string(&record).expect("a record serializes");
        let again = UnitState::from_json(&written).expect("what terrace writes reads back");
        assert_eq!(again, record);
    }
    if let Ok(plan) = SavedPlan::parse(text, Path::new("plan.json")) {
        let again = SavedPlan::parse(&plan.to_json(), Path::new("plan.json"))
            .expect("what terrace writes reads back");
        assert_eq!(again, plan);
    }
});
