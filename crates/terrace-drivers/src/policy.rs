//! terrace.yaml's `policy:` applied to the objects a unit renders, at
//! plan time, before anything is applied: every kind that yields objects
//! (manifests, kustomize, helm, app, imported ones) goes through
//! [`check`]. An enforced rule an object breaks fails the unit's plan,
//! naming the object, its file, the field and the rule; audited ones
//! become lines of the plan.

use terrace_core::config::{PROJECT_FILE, UNIT_FILE};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{DriverError, UnitContext};
use terrace_core::policy::{self, Level, PolicyConfig};

use crate::manifests::Object;

/// The audit lines of `objects`, or the error of the rules they break
/// that are enforced. `namespace`: where objects that name none land.
pub(crate) fn check(
    ctx: &UnitContext<'_>,
    config: &PolicyConfig,
    objects: &[Object],
    namespace: Option<&str>,
) -> Result<Vec<String>, DriverError> {
    let unknown = config.unknown_names();
    if !unknown.is_empty() {
        return Err(Diagnostic::new(format!(
            "policy names {} that is neither a rule nor a group",
            unknown
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .in_file(PROJECT_FILE)
        .with_hint(format!(
            "the groups are pss-baseline, pss-restricted and best-practices; the rules: {}",
            policy::Rule::ALL
                .iter()
                .map(|r| r.id())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    let mut enforced: Vec<(String, String)> = Vec::new();
    let mut audits = Vec::new();
    for o in objects {
        let exempt = match policy::exemptions(&o.value) {
            Ok(e) => e,
            Err(text) => {
                return Err(Diagnostic::new(format!(
                    "{}: its `{}` annotation (`{text}`) gives no reason",
                    o.address,
                    policy::EXEMPT
                ))
                .in_file(&o.source)
                .with_hint("write the reason after `#`: `privileged  # the CNI agent configures the node's network`")
                .into());
            }
        };
        let ns = o.object.namespace.as_deref().or(namespace);
        for f in policy::findings(&o.value) {
            if policy::is_exempt(&exempt, f.rule) {
                continue;
            }
            let line = format!(
                "{}: {} ({}): {} {}",
                o.address,
                f.rule.id(),
                f.rule.about(),
                f.field,
                f.message
            );
            match config.level(f.rule, &ctx.unit.layer, ns) {
                Level::Enforce => enforced.push((o.source.clone(), line)),
                Level::Audit => audits.push(format!("policy audit: {line}")),
                Level::Off => {}
            }
        }
    }
    if let Some((file, _)) = enforced.first() {
        let file = if file.is_empty() {
            format!("{}/{UNIT_FILE}", ctx.unit.dir)
        } else {
            file.clone()
        };
        let mut message = format!("policy: {} enforced rule violation(s)", enforced.len());
        for (source, line) in &enforced {
            message.push_str(&format!("\n  - {line} (in {source})"));
        }
        return Err(Diagnostic::new(message)
            .in_file(file)
            .with_hint(format!(
                "fix the object; or exempt it with the annotation {}: \"RULE  # reason\"; or set the rule to audit in {PROJECT_FILE}'s policy",
                policy::EXEMPT
            ))
            .into());
    }
    Ok(audits)
}
