//! The terraform driver against the real terraform on this machine.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use terrace_core::config::UnitKind;
use terrace_core::driver::{ApplyContext, Driver, ResolvedUnit, UnitContext};
use terrace_core::plan::Action;
use terrace_terraform::TerraformDriver;

static NO_TIERS: std::collections::BTreeMap<String, terrace_core::config::TierConfig> =
    std::collections::BTreeMap::new();
static NO_TARGETS: std::collections::BTreeMap<String, terrace_core::driver::ResolvedTarget> =
    std::collections::BTreeMap::new();

fn apply_ctx(root: &std::path::Path) -> ApplyContext<'_> {
    ApplyContext {
        root,
        lines: None,
        force: false,
        jobs: 1,
    }
}

fn unit(inputs: Value) -> ResolvedUnit {
    ResolvedUnit {
        name: "net".into(),
        layer: "infra".into(),
        kind: UnitKind::new("terraform"),
        dir: "infra/net".into(),
        inputs: inputs.as_object().cloned().unwrap_or_default(),
        unknown_inputs: Default::default(),
        settings: Value::Null,
        unknown: false,
        waiting_for: Vec::new(),
        sensitive_inputs: BTreeMap::new(),
        sensitive_settings: BTreeMap::new(),
        adopts_from: Vec::new(),
        target: None,
    }
}

fn module() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join("infra/net");
    std::fs::create_dir_all(&m).expect("mkdir");
    std::fs::write(
        m.join("main.tf"),
        "variable \"cidr\" {\n  type = string\n}\nresource \"terraform_data\" \"net\" {\n  input = var.cidr\n}\noutput \"cidr\" {\n  value = var.cidr\n}\n",
    )
    .expect("write");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_is_refused_once_the_module_changed() {
    let dir = module();
    let vars = Map::new();
    let u = unit(json!({"cidr": "10.0.0.0/24"}));
    let ctx = UnitContext {
        root: dir.path(),
        project: "p",
        environment: "test",
        vars: &vars,
        unit: &u,
        prior: None,
        secrets: None,
        refresh: true,
        lines: None,
        state: None,
        policy: None,
        tiers: &NO_TIERS,
        targets: &NO_TARGETS,
    };
    let driver = TerraformDriver;
    let plan = driver.plan(&ctx).await.expect("plans");
    assert_eq!(plan.action, Action::Create);
    assert!(
        plan.notes[0].starts_with("terraform 1."),
        "{:?}",
        plan.notes
    );
    // Someone edits the module between plan and apply.
    let main = dir.path().join("infra/net/main.tf");
    let text = std::fs::read_to_string(&main).expect("read");
    std::fs::write(
        &main,
        text.replace("input = var.cidr", "input = \"${var.cidr}-changed\""),
    )
    .expect("write");
    let err = driver
        .apply(&apply_ctx(dir.path()), &plan)
        .await
        .expect_err("stale");
    assert!(err.to_string().contains("stale"), "{err}");
    let state = dir
        .path()
        .join(".terrace/terraform/test/net/terraform.tfstate");
    assert!(!state.exists(), "nothing was applied");

    // Planned again, it applies; the outputs come from the state file.
    let plan = driver.plan(&ctx).await.expect("plans");
    let applied = driver
        .apply(&apply_ctx(dir.path()), &plan)
        .await
        .expect("applies");
    assert_eq!(applied.outputs["cidr"], "10.0.0.0/24");
    assert!(state.is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_plan_cannot_be_applied_again() {
    let dir = module();
    let vars = Map::new();
    let first = unit(json!({"cidr": "10.0.0.0/24"}));
    let ctx = UnitContext {
        root: dir.path(),
        project: "p",
        environment: "test",
        vars: &vars,
        unit: &first,
        prior: None,
        secrets: None,
        refresh: true,
        lines: None,
        state: None,
        policy: None,
        tiers: &NO_TIERS,
        targets: &NO_TARGETS,
    };
    let plan = TerraformDriver.plan(&ctx).await.expect("plans");
    let applied = TerraformDriver
        .apply(&apply_ctx(dir.path()), &plan)
        .await
        .expect("applies");
    assert_eq!(applied.outputs["cidr"], "10.0.0.0/24");
    // ...and applying it twice is refused by terraform itself (the state
    // moved on), with its whole message.
    let err = TerraformDriver
        .apply(&apply_ctx(dir.path()), &plan)
        .await
        .expect_err("used plan");
    let text = err.to_string();
    assert!(
        text.contains("apply failed for unit `net`") || text.contains("missing"),
        "{text}"
    );
}
