//! Loading a project: find the root, read `terrace.yaml`, discover and read
//! every `unit.yaml`, and check what can be checked without an environment.
//! Every problem found is reported, not only the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use terrace_core::ValuePath;
use terrace_core::config::{IGNORE_FILE, PROJECT_FILE, ProjectFile, UNIT_FILE, UnitFile, WORK_DIR};
use terrace_core::diag::Diagnostic;
use terrace_core::expr::is_valid_name;
use terrace_core::kind::{Kind, Registry, SettingsError};

use crate::error::EngineError;
use crate::locate::{at_key, at_value};

/// Directories discovery never enters.
pub const SKIPPED_DIRS: &[&str] = &[".git", WORK_DIR, ".terraform", "node_modules"];

/// A loaded project.
#[derive(Debug)]
pub struct Project {
    /// Absolute.
    pub root: PathBuf,
    pub file: ProjectFile,
    pub source: Arc<str>,
    /// Sorted by name.
    pub units: Vec<UnitDecl>,
    /// The kinds this build knows; every unit's kind is one of them.
    pub kinds: Arc<Registry>,
}

/// A unit as written, before any environment applies.
#[derive(Debug, Clone)]
pub struct UnitDecl {
    pub name: String,
    /// The unit directory, relative to the root, `/`-separated (`.` for the
    /// root itself).
    pub dir: String,
    /// `dir/unit.yaml`.
    pub file_path: String,
    pub file: UnitFile,
    pub source: Arc<str>,
}

/// The directory holding `terrace.yaml`, from `start` upwards.
pub fn find_root(start: &Path) -> Result<PathBuf, EngineError> {
    let start = std::path::absolute(start)?;
    let mut dir = Some(start.as_path());
    while let Some(d) = dir {
        if d.join(PROJECT_FILE).is_file() {
            return Ok(d.to_owned());
        }
        dir = d.parent();
    }
    Err(EngineError::NotAProject { start })
}

impl Project {
    /// Finds the project from `start` and loads it.
    pub fn discover(start: &Path, kinds: Arc<Registry>) -> Result<Project, EngineError> {
        Project::load(&find_root(start)?, kinds)
    }

    /// Loads the project rooted at `root`, checking every unit's settings
    /// against its kind in `kinds`.
    pub fn load(root: &Path, kinds: Arc<Registry>) -> Result<Project, EngineError> {
        let root = std::path::absolute(root)?;
        let source: Arc<str> = fs_err::read_to_string(root.join(PROJECT_FILE))?.into();
        let file: ProjectFile = terrace_yaml::from_str(&source, Path::new(PROJECT_FILE))
            .map_err(|d| EngineError::Invalid(vec![d]))?;
        let mut diags = check_project(&file, &source, &kinds);

        // Unit files are read and parsed on every core at once.
        let paths = discover_unit_files(&root)?;
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, 8);
        let chunk = paths.len().div_ceil(threads).max(1);
        let read: Vec<Result<Result<UnitDecl, Diagnostic>, std::io::Error>> =
            std::thread::scope(|scope| {
                let workers: Vec<_> = paths
                    .chunks(chunk)
                    .map(|part| {
                        let root = &root;
                        scope.spawn(move || {
                            part.iter()
                                .map(|path| read_unit(root, path))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            });
        let mut units = Vec::new();
        for r in read {
            match r? {
                Ok(unit) => units.push(unit),
                Err(d) => diags.push(d),
            }
        }
        units.sort_by(|a, b| a.name.cmp(&b.name).then(a.file_path.cmp(&b.file_path)));
        diags.extend(check_units(&file, &units, &kinds));
        if !diags.is_empty() {
            return Err(EngineError::Invalid(diags));
        }
        Ok(Project {
            root,
            file,
            source,
            units,
            kinds,
        })
    }

    /// The environments, sorted; a project without any has `default`.
    pub fn environments(&self) -> Vec<String> {
        if self.file.environments.is_empty() {
            vec!["default".to_owned()]
        } else {
            self.file.environments.keys().cloned().collect()
        }
    }

    /// The environment `--env` names, or the default one.
    pub fn pick_environment(&self, requested: Option<&str>) -> Result<String, EngineError> {
        let known = self.environments();
        match requested.or(self.file.default_environment.as_deref()) {
            Some(name) if known.iter().any(|k| k == name) => Ok(name.to_owned()),
            Some(name) => Err(EngineError::UnknownEnvironment {
                name: name.to_owned(),
                known,
            }),
            None if known.len() == 1 => Ok(known[0].clone()),
            None => Err(EngineError::NoEnvironment { known }),
        }
    }

    pub fn unit(&self, name: &str) -> Option<&UnitDecl> {
        self.units
            .binary_search_by(|u| u.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.units[i])
    }

    pub fn layer_index(&self, layer: &str) -> Option<usize> {
        self.file.layers.iter().position(|l| l == layer)
    }

    /// The state directory, absolute.
    pub fn state_dir(&self) -> PathBuf {
        self.root
            .join(self.file.state.path.as_deref().unwrap_or(".terrace/state"))
    }
}

/// One `unit.yaml`, read and parsed: the unit as written, or what is
/// wrong with it.
fn read_unit(root: &Path, path: &Path) -> Result<Result<UnitDecl, Diagnostic>, std::io::Error> {
    let rel = relative(root, path);
    let text: Arc<str> = fs_err::read_to_string(path)?.into();
    Ok(
        terrace_yaml::from_str::<UnitFile>(&text, Path::new(&rel)).map(|file| {
            let dir = match rel.rsplit_once('/') {
                Some((d, _)) => d.to_owned(),
                None => ".".to_owned(),
            };
            let name = file.name.clone().unwrap_or_else(|| {
                if dir == "." {
                    root.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                } else {
                    dir.rsplit('/').next().unwrap_or(&dir).to_owned()
                }
            });
            UnitDecl {
                name,
                dir,
                file_path: rel,
                file,
                source: text,
            }
        }),
    )
}

/// Every `unit.yaml` under `root`, in path order.
pub fn discover_unit_files(root: &Path) -> Result<Vec<PathBuf>, EngineError> {
    // Walked on every core; the paths are sorted afterwards, so the order
    // is the same as a sorted walk's.
    let found = std::sync::Mutex::new(Vec::new());
    let failure = std::sync::Mutex::new(None::<String>);
    ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .hidden(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .filter_entry(|e| {
            !(e.file_type().is_some_and(|t| t.is_dir())
                && SKIPPED_DIRS.iter().any(|s| e.file_name() == *s))
        })
        .threads(
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(8),
        )
        .build_parallel()
        .run(|| {
            Box::new(|entry| match entry {
                Ok(entry) => {
                    if entry.file_name() == UNIT_FILE
                        && entry.file_type().is_some_and(|t| t.is_file())
                    {
                        found
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(entry.into_path());
                    }
                    ignore::WalkState::Continue
                }
                Err(e) => {
                    failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_or_insert(e.to_string());
                    ignore::WalkState::Quit
                }
            })
        });
    if let Some(e) = failure
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(std::io::Error::other(e).into());
    }
    let mut found = found
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    found.sort();
    Ok(found)
}

/// `path` relative to `root`, `/`-separated.
pub fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn check_project(file: &ProjectFile, source: &str, kinds: &Registry) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let at = |path: ValuePath, msg: String| at_value(PROJECT_FILE, source, 0, &path, None, msg);
    for (key, block) in &file.defaults {
        let path = ValuePath::root().key(key);
        let Some(kind) = kinds.get(key) else {
            diags.push(
                at_key(PROJECT_FILE, source, 0, &path, format!("unknown field `{key}`"))
                    .with_hint(format!(
                        "the fields here: name, layers, vars, environments, defaultEnvironment, state, targets, serve, and defaults for a kind under its name ({})",
                        kinds.names().collect::<Vec<_>>().join(", ")
                    )),
            );
            continue;
        };
        if let Err(e) = kind.check_settings(block) {
            diags.push(settings_diagnostic(
                PROJECT_FILE,
                source,
                path,
                kind.name(),
                &e,
            ));
        }
    }
    if file.layers.is_empty() {
        diags.push(
            at(
                ValuePath::root().key("layers"),
                "the project has no layers".into(),
            )
            .with_hint("list the layers, lowest first, e.g. `layers: [infra, platform, apps]`"),
        );
    }
    for (i, layer) in file.layers.iter().enumerate() {
        if file.layers[..i].contains(layer) {
            diags.push(at(
                ValuePath::root().key("layers").index(i),
                format!("layer `{layer}` is listed twice"),
            ));
        }
    }
    if let Some(def) = &file.default_environment
        && !file.environments.contains_key(def)
    {
        diags.push(
            at(
                ValuePath::root().key("defaultEnvironment"),
                format!("defaultEnvironment `{def}` is not one of the environments"),
            )
            .with_hint(format!(
                "define it under `environments`, or pick one of: {}",
                file.environments
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        );
    }
    for (env, cfg) in &file.environments {
        if !is_valid_name(env) {
            diags.push(at(
                ValuePath::root().key("environments").key(env),
                format!("`{env}` is not a valid environment name (letters, digits, `-`, `_`)"),
            ));
        }
        for target in cfg.targets.keys() {
            if !file.targets.contains_key(target) {
                diags.push(
                    at(
                        ValuePath::root().key("environments").key(env).key("targets").key(target),
                        format!("environment `{env}` binds `{target}`, which is not a target of the project"),
                    )
                    .with_hint("define it under `targets` in terrace.yaml"),
                );
            }
        }
    }
    diags
}

fn check_units(project: &ProjectFile, units: &[UnitDecl], kinds: &Registry) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut by_name: BTreeMap<&str, &UnitDecl> = BTreeMap::new();
    let envs: Vec<&str> = if project.environments.is_empty() {
        vec!["default"]
    } else {
        project.environments.keys().map(String::as_str).collect()
    };
    for u in units {
        let at =
            |path: ValuePath, msg: String| at_value(&u.file_path, &u.source, 0, &path, None, msg);
        if !is_valid_name(&u.name) {
            diags.push(
                at(
                    ValuePath::root().key("name"),
                    format!("`{}` is not a valid unit name", u.name),
                )
                .with_hint("use letters, digits, `-` and `_`, starting with a letter or digit"),
            );
        }
        if let Some(first) = by_name.insert(&u.name, u) {
            diags.push(
                at(
                    ValuePath::root().key("name"),
                    format!(
                        "unit name `{}` is already used by {}",
                        u.name, first.file_path
                    ),
                )
                .with_hint("unit names are unique in a project: set `name:` in one of them"),
            );
        }
        if !project.layers.contains(&u.file.layer) {
            diags.push(
                at(
                    ValuePath::root().key("layer"),
                    format!("unknown layer `{}`", u.file.layer),
                )
                .with_hint(format!(
                    "the project's layers: {}",
                    project.layers.join(", ")
                )),
            );
        }
        let kind = kinds.get(u.file.kind.as_str());
        match kind {
            None => diags.push(
                at(
                    ValuePath::root().key("kind"),
                    format!("unknown unit kind `{}`", u.file.kind),
                )
                .with_hint(format!(
                    "the kinds this build knows: {}",
                    kinds.names().collect::<Vec<_>>().join(", ")
                )),
            ),
            Some(kind) => check_settings(u, kind, kinds, &mut diags),
        }
        if let Some(t) = &u.file.target
            && !project.targets.contains_key(t)
        {
            diags.push(
                at(
                    ValuePath::root().key("target"),
                    format!("unknown target `{t}`"),
                )
                .with_hint("define it under `targets` in terrace.yaml"),
            );
        }
        let env_lists = [
            ("include", &u.file.environments.include),
            ("exclude", &u.file.environments.exclude),
        ];
        for (field, list) in env_lists {
            for (i, e) in list.iter().enumerate() {
                if !envs.contains(&e.as_str()) {
                    diags.push(
                        at(
                            ValuePath::root().key("environments").key(field).index(i),
                            format!("unknown environment `{e}`"),
                        )
                        .with_hint(format!("the project's environments: {}", envs.join(", "))),
                    );
                }
            }
        }
        for (e, o) in &u.file.overrides {
            let path = ValuePath::root().key("overrides").key(e);
            if !envs.contains(&e.as_str()) {
                diags.push(
                    at(
                        path.clone(),
                        format!("override for unknown environment `{e}`"),
                    )
                    .with_hint(format!("the project's environments: {}", envs.join(", "))),
                );
            }
            if let Some(t) = &o.target
                && !project.targets.contains_key(t)
            {
                diags.push(at(path.key("target"), format!("unknown target `{t}`")));
            }
        }
    }
    diags
}

/// The fields of `unit.yaml` besides the kind's settings block, for hints.
const UNIT_FIELDS: &str = "name, description, layer, kind, dependsOn, inputs, target, environments, overrides, lifecycle, handOver";
/// The fields of an override besides the kind's settings block.
const OVERRIDE_FIELDS: &str = "inputs, target";

/// Checks a unit's settings block, and each environment's override merged
/// onto it, against its kind; refuses keys that are neither fields nor
/// the kind's block. Each error points at the value as written: in the
/// override when the override gave it.
fn check_settings(u: &UnitDecl, kind: &dyn Kind, kinds: &Registry, diags: &mut Vec<Diagnostic>) {
    let name = kind.name();
    let at = |path: ValuePath, needle: Option<&str>, msg: String| {
        at_value(&u.file_path, &u.source, 0, &path, needle, msg)
    };
    let stray = |base: ValuePath, key: &str, fields: &str| {
        let d = at_key(
            &u.file_path,
            &u.source,
            0,
            &base.key(key),
            if kinds.get(key).is_some() {
                format!("`{key}` settings in a unit of kind `{name}`")
            } else {
                format!("unknown field `{key}`")
            },
        );
        if kinds.get(key).is_some() {
            d.with_hint(format!("remove the block, or change `kind` to `{key}`"))
        } else {
            d.with_hint(format!(
                "the fields here: {fields}, and `{name}` for the kind's settings"
            ))
        }
    };
    let located = |block: ValuePath, e: &SettingsError| {
        settings_diagnostic(&u.file_path, &u.source, block, name, e)
    };
    for key in u.file.settings.keys().filter(|k| *k != name) {
        diags.push(stray(ValuePath::root(), key, UNIT_FIELDS));
    }
    let base = u.file.own_settings().cloned().unwrap_or(Value::Null);
    let base_error = kind.check_settings(&base).err();
    if let Some(e) = &base_error {
        diags.push(located(ValuePath::root().key(name), e));
    }
    for (env, o) in &u.file.overrides {
        let ov_path = ValuePath::root().key("overrides").key(env);
        for key in o.settings.keys().filter(|k| *k != name) {
            diags.push(stray(ov_path.clone(), key, OVERRIDE_FIELDS));
        }
        let Some(ov) = o.settings_of(&u.file.kind) else {
            continue;
        };
        let Value::Object(ov) = ov else {
            diags.push(at(
                ov_path.key(name),
                None,
                format!("`overrides.{env}.{name}` must be a mapping of `{name}` settings keys"),
            ));
            continue;
        };
        let mut merged = match &base {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        for (k, v) in ov {
            merged.insert(k.clone(), v.clone());
        }
        if let Err(e) = kind.check_settings(&Value::Object(merged)) {
            let from_override = match e.path.segments().first() {
                Some(terrace_core::Seg::Key(k)) => ov.contains_key(k),
                _ => e.unknown_field.as_ref().is_some_and(|f| ov.contains_key(f)),
            };
            if from_override {
                diags.push(located(ov_path.key(name), &e));
            } else if base_error.is_none() {
                diags.push(located(ValuePath::root().key(name), &e));
            }
        }
    }
}

/// A settings error of kind `name` in the block at `block` of `file`,
/// pointing at the key (unknown field) or the value.
fn settings_diagnostic(
    file: &str,
    source: &str,
    block: ValuePath,
    name: &str,
    e: &SettingsError,
) -> Diagnostic {
    let mut path = block;
    path.0.extend(e.path.0.iter().cloned());
    let message = format!("invalid `{name}` settings: {}", e.message);
    let d = match &e.unknown_field {
        Some(field) => at_key(file, source, 0, &path.key(field), message),
        None => at_value(file, source, 0, &path, None, message),
    };
    d.with_hint(format!(
        "see schemas/kinds/{name}.schema.json (`terrace schema` prints every schema)"
    ))
}
