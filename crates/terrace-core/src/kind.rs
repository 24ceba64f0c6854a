//! Unit kinds. A kind is one [`Kind`]: its name (the `kind:` value, and the
//! key of its settings block in `unit.yaml`), its typed settings, the kind
//! of target it acts on, and its driver. A [`Registry`] holds the kinds a
//! build knows; the CLI builds it and hands it to the engine, which checks
//! every unit's settings (and each environment's override of them) against
//! it when the project loads.
//!
//! Most kinds are a [`TypedKind`]: a settings type that derives
//! `Deserialize` (with `deny_unknown_fields`) and `JsonSchema`, so the check
//! at load time, the driver's reading and the published JSON Schema all come
//! from the one type.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{TargetKind, UnitKind};
use crate::driver::Driver;
use crate::value_path::ValuePath;

/// One unit kind.
pub trait Kind: Send + Sync + fmt::Debug {
    /// The `kind:` value, also the key of the settings block.
    fn name(&self) -> &'static str;

    /// One line for `--help`, schemas and errors.
    fn summary(&self) -> &'static str;

    /// The kind of target its units act on, if any.
    fn target_kind(&self) -> Option<TargetKind>;

    /// The JSON Schema of its settings block.
    fn settings_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;

    /// Checks a settings block as the driver will read it (`Null` when the
    /// unit has none). Expressions are not evaluated yet: a field that may
    /// hold one is a string in the settings type.
    fn check_settings(&self, settings: &Value) -> Result<(), SettingsError>;

    /// The driver that plans and applies its units.
    fn driver(&self) -> Arc<dyn Driver>;
}

/// Why a settings block is refused: where in the block, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    /// The path inside the settings block (root: the block itself).
    pub path: ValuePath,
    pub message: String,
    /// For an unknown field: its name, so the error can point at it.
    pub unknown_field: Option<String>,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for SettingsError {}

/// Reads a settings block as `S`; `Null` (no block) reads as `{}`, so a
/// kind whose fields all have defaults needs no block.
pub fn parse_settings<S: DeserializeOwned>(settings: &Value) -> Result<S, SettingsError> {
    let empty = Value::Object(serde_json::Map::new());
    let value = if settings.is_null() { &empty } else { settings };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = ValuePath(
            e.path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Seq { index } => {
                        Some(crate::value_path::Seg::Index(*index))
                    }
                    serde_path_to_error::Segment::Map { key } => {
                        Some(crate::value_path::Seg::Key(key.clone()))
                    }
                    serde_path_to_error::Segment::Enum { .. }
                    | serde_path_to_error::Segment::Unknown => None,
                })
                .collect(),
        );
        let message = e.inner().to_string();
        // serde says "unknown field `x`, expected ...": the field's name
        // lets the error point at the key itself.
        let unknown_field = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_owned());
        // The path ends at the unknown key itself; keep it to the mapping
        // that holds it, and the key in `unknown_field`.
        let mut path = path;
        if let (Some(field), Some(crate::value_path::Seg::Key(last))) =
            (&unknown_field, path.0.last())
            && field == last
        {
            path.0.pop();
        }
        SettingsError {
            path,
            message,
            unknown_field,
        }
    })
}

/// A kind whose settings are the type `S`.
pub struct TypedKind<S> {
    name: &'static str,
    summary: &'static str,
    target: Option<TargetKind>,
    /// Made once: a driver may own what lives across units (a cluster
    /// connection pool), for as long as the registry lives.
    driver: Arc<dyn Driver>,
    settings: PhantomData<fn() -> S>,
}

impl<S> TypedKind<S> {
    pub fn new(
        name: &'static str,
        summary: &'static str,
        target: Option<TargetKind>,
        driver: Arc<dyn Driver>,
    ) -> Self {
        TypedKind {
            name,
            summary,
            target,
            driver,
            settings: PhantomData,
        }
    }
}

impl<S> fmt::Debug for TypedKind<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedKind")
            .field("name", &self.name)
            .field("settings", &std::any::type_name::<S>())
            .finish()
    }
}

impl<S: DeserializeOwned + JsonSchema> Kind for TypedKind<S> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        self.summary
    }

    fn target_kind(&self) -> Option<TargetKind> {
        self.target
    }

    fn settings_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<S>()
    }

    fn check_settings(&self, settings: &Value) -> Result<(), SettingsError> {
        parse_settings::<S>(settings).map(drop)
    }

    fn driver(&self) -> Arc<dyn Driver> {
        Arc::clone(&self.driver)
    }
}

/// The kinds a build knows, in the order they were registered (the order
/// of documentation and schemas).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: Vec<Arc<dyn Kind>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds `kind`, replacing one of the same name (tests swap a driver
    /// for a fake this way).
    pub fn with(mut self, kind: impl Kind + 'static) -> Self {
        self.insert(Arc::new(kind));
        self
    }

    /// Adds `kind`, replacing one of the same name.
    pub fn insert(&mut self, kind: Arc<dyn Kind>) {
        match self.kinds.iter_mut().find(|k| k.name() == kind.name()) {
            Some(slot) => *slot = kind,
            None => self.kinds.push(kind),
        }
    }

    pub fn get(&self, name: &str) -> Option<&dyn Kind> {
        self.kinds
            .iter()
            .find(|k| k.name() == name)
            .map(|k| k.as_ref())
    }

    /// The kind of `kind`; a kind the registry lacks is a bug the project
    /// check prevents, so this is an error value, not a panic.
    pub fn of(&self, kind: &UnitKind) -> Result<&dyn Kind, UnknownKind> {
        self.get(kind.as_str()).ok_or_else(|| UnknownKind {
            kind: kind.clone(),
            known: self.names().collect(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.iter().map(|k| k.name())
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn Kind> + '_ {
        self.kinds.iter().map(|k| k.as_ref())
    }
}

/// A kind no registered kind has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown unit kind `{kind}` (this build knows: {})", known.join(", "))]
pub struct UnknownKind {
    pub kind: UnitKind,
    pub known: Vec<&'static str>,
}

/// A duration as written (`90s`, `5m`, `1h`), checked when the project
/// loads.
#[derive(Debug, Clone, PartialEq, serde::Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Timeout(#[schemars(regex(pattern = r"^[0-9]+\s*[a-z]+( *[0-9]+\s*[a-z]+)*$"))] String);

impl Timeout {
    pub fn duration(&self) -> std::time::Duration {
        humantime::parse_duration(&self.0).unwrap_or_default()
    }
}

impl<'de> serde::Deserialize<'de> for Timeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        match humantime::parse_duration(&text) {
            Ok(_) => Ok(Timeout(text)),
            Err(e) => Err(serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}): write one such as `90s`, `5m` or `1h`"
            ))),
        }
    }
}

/// A unit's settings as its kind's type `S`, expressions evaluated. The
/// project check already read them once, unevaluated, so an error here is
/// a value an expression produced.
pub fn unit_settings<S: DeserializeOwned>(
    ctx: &crate::driver::UnitContext<'_>,
) -> Result<S, crate::driver::DriverError> {
    parse_settings(&ctx.unit.settings).map_err(|e| {
        crate::diag::Diagnostic::new(format!("invalid `{}` settings: {e}", ctx.unit.kind))
            .in_file(format!("{}/{}", ctx.unit.dir, crate::config::UNIT_FILE))
            .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Settings {
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        apply: Option<Apply>,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Apply {
        wait: Option<bool>,
    }

    #[test]
    fn errors_name_the_path_inside_the_block() {
        let e = parse_settings::<Settings>(&serde_json::json!({"apply": {"wiat": true}}))
            .expect_err("typo refused");
        assert_eq!(e.path.to_string(), "apply");
        assert_eq!(e.unknown_field.as_deref(), Some("wiat"));
        let e = parse_settings::<Settings>(&serde_json::json!({"apply": {"wait": "yes"}}))
            .expect_err("type refused");
        assert_eq!(e.path.to_string(), "apply.wait");
        assert!(e.message.contains("boolean"), "{}", e.message);
        assert!(parse_settings::<Settings>(&Value::Null).is_ok());
    }
}
