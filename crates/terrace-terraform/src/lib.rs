//! The `terraform` kind: the unit directory is a Terraform or OpenTofu root
//! module, used as it is.
//!
//! - State is per environment and unit: terrace owns the backend (a local
//!   state file under `.terrace/terraform/<env>/<unit>/`, set through
//!   `terrace_backend_override.tf.json`, the one file terrace writes into the
//!   module) unless the unit says `backend: own`. `TF_DATA_DIR` is per
//!   environment and unit too, so environments never share `.terraform/`.
//! - Inputs become `TF_VAR_*` environment variables (JSON for lists and
//!   maps): secrets never touch the disk.
//! - `init` runs once and again only when what it depends on changes (the
//!   binary, the backend, provider and module requirements, the lock file);
//!   providers come from one shared plugin cache.
//! - Plan is `plan -out` then `show -json`; apply applies exactly that saved
//!   plan, and refuses it when the module or inputs changed since.
//! - Outputs are read from the state file directly, not with
//!   `terraform output`. Sensitive outputs are not stored in terrace's
//!   state (only their names); dependents get the value from the state
//!   file.
//! - Every command runs through `terrace-exec`: a cleared environment
//!   (the basics, common providers' credentials, the unit's `passEnv`), a
//!   timeout, lines streamed to the progress view, secrets redacted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use terrace_core::config::WORK_DIR;
use terrace_core::driver::{
    Applied, ApplyContext, BoxFuture, DestroyContext, Driver, DriverError, Lines, Rendered,
    RenderedDocument, SENSITIVE, UnitContext,
};
use terrace_core::kind::{Timeout, TypedKind, parse_settings};
use terrace_core::plan::{Action, Change, UnitPlan};
use terrace_core::secrets::Plaintexts;
use terrace_core::state::{InventoryItem, UnitState};
use terrace_exec::{ExecError, Finished, Program};

use terrace_fs::digest::digest;

/// The `terraform` driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct TerraformDriver;

/// The file terrace writes into a module to own its backend.
pub const OVERRIDE_FILE: &str = "terrace_backend_override.tf.json";
const OVERRIDE_CONTENT: &str = "{\"terraform\": {\"backend\": {\"local\": {}}}}\n";
/// The inventory entry that remembers where the module is.
/// The module entry of an inventory: its directory, binary and backend.
fn module_of(inventory: &[InventoryItem]) -> Option<(&str, &str, &str)> {
    inventory.iter().find_map(|i| match i {
        InventoryItem::TerraformModule {
            dir,
            binary,
            backend,
        } => Some((dir.as_str(), binary.as_str(), backend.as_str())),
        _ => None,
    })
}

/// Terraform's own `s3` backend, beside terrace's state in the same
/// bucket: one key per environment and unit, locked by Terraform's
/// lock file (`use_lockfile`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteState {
    bucket: String,
    key: String,
    endpoint: Option<String>,
    region: Option<String>,
}

impl RemoteState {
    /// With S3 state, where the unit's Terraform state goes.
    fn of(
        state: Option<&terrace_core::config::StateConfig>,
        project: &str,
        environment: &str,
        unit: &str,
    ) -> Option<RemoteState> {
        let c = state?;
        if c.backend != terrace_core::config::StateBackendKind::S3 {
            return None;
        }
        let prefix = c
            .prefix
            .clone()
            .unwrap_or_else(|| project.to_owned())
            .trim_matches('/')
            .to_owned();
        Some(RemoteState {
            bucket: c.bucket.clone().unwrap_or_default(),
            key: format!("{prefix}/{environment}/terraform/{unit}.tfstate"),
            endpoint: c.endpoint.clone(),
            region: c.region.clone(),
        })
    }

    fn backend_json(&self) -> String {
        let mut b = serde_json::json!({
            "bucket": self.bucket,
            "key": self.key,
            "region": self.region.clone().unwrap_or_else(|| "us-east-1".to_owned()),
            "use_lockfile": true,
        });
        if let Some(e) = &self.endpoint {
            b["endpoints"] = serde_json::json!({ "s3": e });
            b["use_path_style"] = Value::Bool(true);
            b["skip_credentials_validation"] = Value::Bool(true);
            b["skip_requesting_account_id"] = Value::Bool(true);
            b["skip_metadata_api_check"] = Value::Bool(true);
            b["skip_region_validation"] = Value::Bool(true);
        }
        format!(
            "{}\n",
            serde_json::json!({ "terraform": { "backend": { "s3": b } } })
        )
    }
}

/// Where a unit's Terraform files live.
#[derive(Debug, Clone)]
struct Layout {
    /// The root module (the unit directory), absolute.
    module: PathBuf,
    /// `.terrace/terraform/<env>/<unit>`, absolute.
    work: PathBuf,
    plugin_cache: PathBuf,
    own_backend: bool,
    /// With S3 state: Terraform's state in the bucket too.
    remote: Option<RemoteState>,
}

impl Layout {
    fn new(root: &Path, environment: &str, unit: &str, dir: &str, own_backend: bool) -> Layout {
        let base = root.join(WORK_DIR).join("terraform");
        Layout {
            module: root.join(dir),
            work: base.join(environment).join(unit),
            plugin_cache: base.join("plugin-cache"),
            own_backend,
            remote: None,
        }
    }

    fn with_remote(mut self, remote: Option<RemoteState>) -> Layout {
        if !self.own_backend {
            self.remote = remote;
        }
        self
    }

    /// The override terrace writes into the module.
    fn override_content(&self) -> String {
        match &self.remote {
            Some(r) => r.backend_json(),
            None => OVERRIDE_CONTENT.to_owned(),
        }
    }

    /// How the inventory names the backend.
    fn backend_name(&self) -> &'static str {
        if self.own_backend {
            "own"
        } else if self.remote.is_some() {
            "s3"
        } else {
            "terrace"
        }
    }

    fn state(&self) -> PathBuf {
        self.work.join("terraform.tfstate")
    }

    fn data_dir(&self) -> PathBuf {
        self.work.join("data")
    }
}

/// The binary and its version.
#[derive(Debug, Clone)]
struct Tool {
    binary: String,
    version: String,
    program: Program,
}

/// How one unit runs its tool: the variables it may pass on, how long a
/// command may take, and the secret values its output must not show.
#[derive(Debug, Clone)]
struct Runner {
    tool: Tool,
    pass_env: Vec<String>,
    timeout: Duration,
    redact: Plaintexts,
    /// Where what the tool prints goes while it runs.
    lines: Option<Lines>,
}

impl Runner {
    fn new(
        tool: Tool,
        settings: &TerraformSettings,
        redact: Plaintexts,
        lines: Option<&Lines>,
    ) -> Runner {
        Runner {
            lines: lines.cloned(),
            tool,
            pass_env: settings.pass_env.clone(),
            timeout: settings
                .timeout
                .as_ref()
                .map_or(DEFAULT_TIMEOUT, Timeout::duration),
            redact,
        }
    }
}

/// A saved plan holds the variables' values, so it lives in a private
/// temporary directory (in memory where possible) and is removed when the
/// plan is dropped.
#[derive(Debug)]
struct PlanFile {
    dir: tempfile::TempDir,
}

impl PlanFile {
    fn new() -> Result<PlanFile, DriverError> {
        use std::os::unix::fs::PermissionsExt;
        // Before the first plan of this process, not at every start-up.
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_stale_plans);
        let mut b = tempfile::Builder::new();
        // The pid in the name lets a later run sweep what a killed one
        // left (`sweep_stale_plans`).
        let prefix = format!("{PLAN_PREFIX}{}-", std::process::id());
        b.prefix(&prefix);
        b.permissions(std::fs::Permissions::from_mode(0o700));
        let shm = Path::new("/dev/shm");
        let dir = match shm.is_dir().then(|| b.tempdir_in(shm)) {
            Some(Ok(d)) => d,
            _ => b.tempdir()?,
        };
        Ok(PlanFile { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("plan.tfplan")
    }
}

const PLAN_PREFIX: &str = "terrace-tfplan-";

/// Removes saved-plan directories that a terrace process which no longer
/// runs left behind (killed with SIGKILL; after a power loss /dev/shm is
/// gone anyway). Directories of running processes are left alone. Runs
/// once per process, before its first saved plan.
fn sweep_stale_plans() {
    for base in [Path::new("/dev/shm").to_path_buf(), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PLAN_PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let mine = entry.metadata().is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.uid() == std::fs::metadata("/proc/self").map_or(u32::MAX, |s| s.uid())
            });
            if mine && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// What apply needs: exactly what plan ran. `Debug` leaves the
/// variables' values out (they may be secrets).
struct Payload {
    plan_file: PlanFile,
    unit: String,
    runner: Runner,
    layout: Layout,
    vars: Vec<(String, String)>,
    /// Module files and inputs when planned; apply refuses a change.
    fingerprint: String,
    dir: String,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("plan_file", &self.plan_file)
            .field("unit", &self.unit)
            .field("runner", &self.runner)
            .field("layout", &self.layout)
            .field(
                "vars",
                &self
                    .vars
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("fingerprint", &self.fingerprint)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The `terraform` kind: a root module, with state per environment and
/// unit.
pub fn kind() -> TypedKind<TerraformSettings> {
    TypedKind::new(
        "terraform",
        "A Terraform or OpenTofu root module (the unit directory), with state per environment and unit.",
        None,
        std::sync::Arc::new(TerraformDriver),
    )
}

fn settings(ctx: &UnitContext<'_>) -> Result<TerraformSettings, DriverError> {
    terrace_core::kind::unit_settings(ctx)
}

fn own_backend(s: &TerraformSettings) -> Result<bool, DriverError> {
    Ok(s.backend.unwrap_or_default() == TerraformBackend::Own)
}

/// Credentials and settings of common providers, passed to Terraform
/// besides a unit's `passEnv`: what a provider block reads when it is not
/// given them.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "AWS_*",
    "GOOGLE_*",
    "CLOUDSDK_*",
    "ARM_*",
    "AZURE_*",
    "HCLOUD_*",
    "DIGITALOCEAN_*",
    "CLOUDFLARE_*",
    "PROXMOX_VE_*",
    "PM_*",
    "VAULT_*",
    "KUBE_*",
    "TF_TOKEN_*",
    "TF_LOG*",
    "TF_CLI_CONFIG_FILE",
    "TF_REGISTRY_*",
];

/// Variables never passed whatever `passEnv` says: they would change what
/// a plan does behind terrace's back (terrace sets the ones it needs).
const DENIED_ENV: &[&str] = &[
    "TF_VAR_*",
    "TF_CLI_ARGS*",
    "TF_WORKSPACE",
    "TF_DATA_DIR",
    "TF_INPUT",
    "TF_IN_AUTOMATION",
    "TF_PLUGIN_CACHE_DIR",
];

/// How long one command may run when the unit says nothing.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// The binary: the unit's, else `TERRACE_TERRAFORM`, else `tofu` when it is
/// on the PATH, else `terraform`. It is found, and its version asked, once
/// per process.
async fn tool(setting: Option<&str>) -> Result<Tool, DriverError> {
    static CACHE: OnceLock<Mutex<HashMap<String, Tool>>> = OnceLock::new();
    let binary = setting
        .map(str::to_owned)
        .or_else(|| {
            std::env::var("TERRACE_TERRAFORM")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| {
            if Program::find("tofu").is_ok() {
                "tofu"
            } else {
                "terraform"
            }
            .to_owned()
        });
    let cache = CACHE.get_or_init(Default::default);
    if let Some(t) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&binary) {
        return Ok(t.clone());
    }
    let program = Program::find(&binary).map_err(|e| {
        DriverError::Target(format!(
            "{e}; install Terraform or OpenTofu, or set `terraform.binary` (in terrace.yaml for every unit)"
        ))
    })?;
    let out = program
        .command()
        .args(["version", "-json"])
        .env("CHECKPOINT_DISABLE", "1")
        .stream_stdout(false)
        .timeout(Duration::from_secs(60))
        .run()
        .await
        .and_then(|f| f.success("version"))
        .map_err(|e| DriverError::Target(e.to_string()))?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let version = v["terraform_version"]
        .as_str()
        .ok_or_else(|| {
            DriverError::Target(format!("`{binary} version -json` did not print a version"))
        })?
        .to_owned();
    let t = Tool {
        binary,
        version,
        program,
    };
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(t.binary.clone(), t.clone());
    Ok(t)
}

/// Inputs as `TF_VAR_*`: strings as they are, everything else as JSON.
fn tf_vars(inputs: &Map<String, Value>) -> Vec<(String, String)> {
    inputs
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (format!("TF_VAR_{k}"), value)
        })
        .collect()
}

/// Runs one command of the unit's tool: a cleared environment (the
/// basics, provider credentials, the unit's `passEnv`, and what terrace
/// sets), no stdin, the unit's timeout, secret values redacted from what
/// it prints. `show -json` prints one large document: it is captured, not
/// streamed.
async fn run(
    runner: &Runner,
    layout: &Layout,
    args: &[&str],
    vars: &[(String, String)],
    stream: bool,
) -> Result<Finished, DriverError> {
    terrace_fs::atomic::create_dirs(&layout.work, terrace_fs::Mode::Private)?;
    terrace_fs::atomic::create_dirs(&layout.plugin_cache, terrace_fs::Mode::Private)?;
    let mut exec = runner
        .tool
        .program
        .command()
        .args(args)
        .current_dir(&layout.module)
        .timeout(runner.timeout)
        .redact(runner.redact.clone())
        .stream_stdout(args.first() != Some(&"show") && args.first() != Some(&"output"));
    for pattern in DEFAULT_PASS_ENV
        .iter()
        .copied()
        .chain(runner.pass_env.iter().map(String::as_str))
    {
        exec = match pattern.strip_suffix('*') {
            Some(prefix) => exec.pass_env_prefix(prefix),
            None => exec.pass_env(pattern),
        };
    }
    for pattern in DENIED_ENV {
        exec = exec.deny_env(pattern);
    }
    if let Some(lines) = runner.lines.clone().filter(|_| stream) {
        exec = exec.on_line(move |_, line| lines.send(line));
    }
    let exec = exec
        .env("TF_DATA_DIR", layout.data_dir())
        .env("TF_PLUGIN_CACHE_DIR", &layout.plugin_cache)
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .env("CHECKPOINT_DISABLE", "1")
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = exec.run().await.map_err(|e| match e {
        ExecError::Interrupted { .. } | ExecError::TimedOut { .. } => {
            DriverError::Other(Box::new(e))
        }
        other => DriverError::Target(other.to_string()),
    });
    // Terraform's state holds what its resources hold, secrets included;
    // terrace's copy of it is for the owner alone (Terraform writes 0644).
    if !layout.own_backend {
        use std::os::unix::fs::PermissionsExt;
        let state = layout.state();
        for f in [state.clone(), state.with_extension("tfstate.backup")] {
            if f.is_file() {
                let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
    out
}

/// A failed Terraform command, with what it printed (stdout, then the
/// end of stderr), secret values redacted.
fn failure(unit: &str, runner: &Runner, step: &str, out: &Finished) -> DriverError {
    let mut text = out.stdout_text();
    text.push_str(&out.stderr);
    DriverError::Other(
        format!(
            "{} {step} failed for unit `{unit}` ({}):\n{}",
            runner.tool.binary,
            out.status,
            text.trim_end()
        )
        .into(),
    )
}

/// Module files (`*.tf`, `*.tf.json`, `*.tfvars`, the lock file) with their
/// contents, sorted; terrace's own override file left out.
fn module_files(module: &Path) -> Result<Vec<(String, String)>, DriverError> {
    let mut files = Vec::new();
    for entry in fs_err::read_dir(module)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = name.ends_with(".tf")
            || name.ends_with(".tf.json")
            || name.ends_with(".tfvars")
            || name == ".terraform.lock.hcl";
        if wanted && name != OVERRIDE_FILE && entry.file_type()?.is_file() {
            files.push((name, fs_err::read_to_string(entry.path())?));
        }
    }
    files.sort();
    Ok(files)
}

/// Module files (from [`module_files`]) and variables, as one digest.
fn fingerprint(files: &[(String, String)], vars: &[(String, String)]) -> String {
    let mut text = String::new();
    for (name, content) in files {
        text.push_str(name);
        text.push('\0');
        text.push_str(content);
        text.push('\0');
    }
    for (k, v) in vars {
        text.push_str(k);
        text.push('=');
        text.push_str(v);
        text.push('\0');
    }
    digest(text.as_bytes())
}

/// What `init` depends on: the binary, the backend, and the lines of the
/// module that declare providers, modules and backends.
fn init_fingerprint(tool: &Tool, layout: &Layout, files: &[(String, String)]) -> String {
    let mut text = format!(
        "{} {}\nown_backend={}\nstate={}\nbackend={}\n",
        tool.binary,
        tool.version,
        layout.own_backend,
        layout.state().display(),
        layout.override_content()
    );
    for (name, content) in files {
        if name == ".terraform.lock.hcl" {
            text.push_str(content);
            continue;
        }
        for line in content.lines() {
            let l = line.trim();
            if [
                "source",
                "version",
                "backend",
                "required_providers",
                "module ",
                "cloud",
            ]
            .iter()
            .any(|k| l.contains(k))
            {
                text.push_str(l);
                text.push('\n');
            }
        }
    }
    digest(text.as_bytes())
}

/// Writes (or, with `backend: own`, removes) the backend override.
fn place_override(layout: &Layout) -> Result<(), DriverError> {
    let path = layout.module.join(OVERRIDE_FILE);
    if layout.own_backend {
        if path.exists() {
            fs_err::remove_file(&path)?;
        }
        return Ok(());
    }
    let content = layout.override_content();
    if fs_err::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
        terrace_fs::atomic::write(&path, content.as_bytes(), terrace_fs::Mode::Shared)?;
    }
    Ok(())
}

/// Runs `init` unless nothing it depends on changed since the last one.
async fn ensure_init(
    unit: &str,
    runner: &Runner,
    layout: &Layout,
    files: &[(String, String)],
) -> Result<(), DriverError> {
    place_override(layout)?;
    let marker = layout.work.join("init.fingerprint");
    let want = init_fingerprint(&runner.tool, layout, files);
    if layout.data_dir().is_dir()
        && fs_err::read_to_string(&marker).ok().as_deref() == Some(want.as_str())
    {
        return Ok(());
    }
    let backend_config = format!("-backend-config=path={}", layout.state().display());
    let mut args = vec!["init", "-input=false", "-no-color"];
    if !layout.own_backend {
        if layout.remote.is_none() {
            args.push(&backend_config);
        }
        args.push("-reconfigure");
    }
    let out = run(runner, layout, &args, &[], true).await?;
    if !out.status.success() {
        return Err(failure(unit, runner, "init", &out));
    }
    terrace_fs::atomic::write(&marker, want.as_bytes(), terrace_fs::Mode::Private)?;
    Ok(())
}

/// Replaces sensitive parts of a value (as `*_sensitive` marks them).
fn mask(value: &Value, sensitive: &Value) -> Value {
    match (value, sensitive) {
        (_, Value::Bool(true)) => Value::String(SENSITIVE.to_owned()),
        (Value::Object(m), Value::Object(s)) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), mask(v, s.get(k).unwrap_or(&Value::Null))))
                .collect(),
        ),
        (Value::Array(a), Value::Array(s)) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, v)| mask(v, s.get(i).unwrap_or(&Value::Null)))
                .collect(),
        ),
        (v, _) => v.clone(),
    }
}

fn action_of(actions: &[Value]) -> Action {
    let a: Vec<&str> = actions.iter().filter_map(Value::as_str).collect();
    match a.as_slice() {
        ["create"] => Action::Create,
        ["update"] => Action::Update,
        ["delete"] => Action::Delete,
        ["delete", "create"] | ["create", "delete"] => Action::Replace,
        _ => Action::NoOp,
    }
}

/// What `show -json` of a plan says, in terrace's terms.
struct ParsedPlan {
    changes: Vec<Change>,
    unchanged: usize,
    drift: Vec<String>,
    /// Planned outputs when all are known.
    outputs: Option<Map<String, Value>>,
}

fn parse_plan(plan: &Value) -> ParsedPlan {
    let mut changes = Vec::new();
    let mut unchanged = 0;
    for rc in plan["resource_changes"].as_array().into_iter().flatten() {
        let change = &rc["change"];
        let action = action_of(change["actions"].as_array().map_or(&[][..], Vec::as_slice));
        let address = rc["address"].as_str().unwrap_or("?").to_owned();
        if action == Action::NoOp {
            unchanged += 1;
            continue;
        }
        let before = mask(&change["before"], &change["before_sensitive"]);
        let after = mask(&change["after"], &change["after_sensitive"]);
        let pretty = |v: &Value| {
            if v.is_null() {
                String::new()
            } else {
                serde_json::to_string_pretty(v).expect("JSON") + "\n"
            }
        };
        let mut diff =
            terrace_core::plan::unified_diff(&pretty(&before), &pretty(&after), &address);
        if change["after_unknown"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
        {
            let unknown: Vec<&String> = change["after_unknown"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, v)| **v == Value::Bool(true))
                        .map(|(k, _)| k)
                        .collect()
                })
                .unwrap_or_default();
            if !unknown.is_empty() {
                diff.push_str(&format!(
                    "(known after apply: {})\n",
                    unknown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        changes.push(Change {
            address,
            object: None,
            action,
            diff: Some(diff),
        });
    }
    for (name, oc) in plan["output_changes"].as_object().into_iter().flatten() {
        let action = action_of(oc["actions"].as_array().map_or(&[][..], Vec::as_slice));
        if action != Action::NoOp {
            changes.push(Change {
                address: format!("output.{name}"),
                object: None,
                action,
                diff: None,
            });
        }
    }
    let drift = plan["resource_drift"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let actions: Vec<&str> = d["change"]["actions"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!(
                "drift: {} changed outside Terraform ({})",
                d["address"].as_str().unwrap_or("?"),
                actions.join(", ")
            )
        })
        .collect();
    let mut outputs = Some(Map::new());
    for (name, oc) in plan["output_changes"].as_object().into_iter().flatten() {
        // Unknown is `true`, or (for a map or list output) `true` somewhere
        // inside: `after` then lacks those parts.
        let after_unknown = any_true(&oc["after_unknown"]);
        // A sensitive value is not in the plan; dependents get it from the
        // state (unchanged) or after apply.
        let sensitive = any_true(&oc["after_sensitive"]);
        match (&mut outputs, after_unknown || sensitive) {
            (Some(map), false) => {
                map.insert(name.clone(), oc["after"].clone());
            }
            _ => outputs = None,
        }
    }
    ParsedPlan {
        changes,
        unchanged,
        drift,
        outputs,
    }
}

/// Whether `true` appears anywhere in `v` (Terraform's unknown and
/// sensitive marks are `true`, or a structure holding `true` where parts
/// are).
fn any_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Array(items) => items.iter().any(any_true),
        Value::Object(m) => m.values().any(any_true),
        _ => false,
    }
}

/// Outputs in a state file: values, and which are sensitive.
fn state_outputs(path: &Path) -> Result<(Map<String, Value>, Vec<String>), DriverError> {
    let text = match fs_err::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Map::new(), Vec::new())),
        Err(e) => return Err(e.into()),
    };
    let state: Value = serde_json::from_str(&text).map_err(|e| {
        DriverError::Target(format!(
            "the state file {} is not JSON: {e}",
            path.display()
        ))
    })?;
    let mut outputs = Map::new();
    let mut sensitive = Vec::new();
    for (name, o) in state["outputs"].as_object().into_iter().flatten() {
        outputs.insert(name.clone(), o["value"].clone());
        if o["sensitive"] == Value::Bool(true) {
            sensitive.push(name.clone());
        }
    }
    Ok((outputs, sensitive))
}

/// Resource addresses in a state file, for the inventory.
fn state_resources(path: &Path) -> Vec<String> {
    let Ok(text) = fs_err::read_to_string(path) else {
        return Vec::new();
    };
    let state: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut out = Vec::new();
    for r in state["resources"].as_array().into_iter().flatten() {
        if r["mode"] != "managed" {
            continue;
        }
        let base = match r["module"].as_str() {
            Some(m) => format!(
                "{m}.{}.{}",
                r["type"].as_str().unwrap_or("?"),
                r["name"].as_str().unwrap_or("?")
            ),
            None => format!(
                "{}.{}",
                r["type"].as_str().unwrap_or("?"),
                r["name"].as_str().unwrap_or("?")
            ),
        };
        for inst in r["instances"].as_array().into_iter().flatten() {
            match &inst["index_key"] {
                Value::Null => out.push(base.clone()),
                Value::String(k) => out.push(format!("{base}[\"{k}\"]")),
                k => out.push(format!("{base}[{k}]")),
            }
        }
    }
    out
}

/// Runs a `plan` (its arguments write `saved`), then `show -json` of it.
async fn plan_and_show(
    unit: &str,
    runner: &Runner,
    layout: &Layout,
    args: &[&str],
    vars: &[(String, String)],
    saved: &PlanFile,
    step: &str,
) -> Result<ParsedPlan, DriverError> {
    let out = run(runner, layout, args, vars, true).await?;
    if !out.status.success() {
        return Err(failure(unit, runner, step, &out));
    }
    let plan_path = saved.path().display().to_string();
    let show = run(
        runner,
        layout,
        &["show", "-json", "-no-color", &plan_path],
        vars,
        false,
    )
    .await?;
    if !show.status.success() {
        return Err(failure(unit, runner, "show", &show));
    }
    let json: Value = serde_json::from_slice(&show.stdout).map_err(|e| {
        DriverError::Target(format!(
            "`{} show -json` printed no JSON: {e}",
            runner.tool.binary
        ))
    })?;
    Ok(parse_plan(&json))
}

impl TerraformDriver {
    async fn plan_unit(&self, ctx: &UnitContext<'_>) -> Result<UnitPlan, DriverError> {
        let s = settings(ctx)?;
        let layout = Layout::new(
            ctx.root,
            ctx.environment,
            &ctx.unit.name,
            &ctx.unit.dir,
            own_backend(&s)?,
        )
        .with_remote(RemoteState::of(
            ctx.state,
            ctx.project,
            ctx.environment,
            &ctx.unit.name,
        ));
        let plaintexts = ctx.secrets.map(|s| s.plaintexts()).unwrap_or_default();
        let runner = Runner::new(tool(s.binary.as_deref()).await?, &s, plaintexts, ctx.lines);
        let files = module_files(&layout.module)?;
        ensure_init(&ctx.unit.name, &runner, &layout, &files).await?;
        let vars = tf_vars(&ctx.unit.inputs);
        let saved = PlanFile::new()?;
        let plan_file = saved.path();
        let out_arg = format!("-out={}", plan_file.display());
        let mut args = vec![
            "plan",
            "-input=false",
            "-no-color",
            "-lock-timeout=30s",
            &out_arg,
        ];
        if !ctx.refresh || s.refresh == Some(false) {
            args.push("-refresh=false");
        }
        let parsed = plan_and_show(
            &ctx.unit.name,
            &runner,
            &layout,
            &args,
            &vars,
            &saved,
            "plan",
        )
        .await?;
        let fingerprint = fingerprint(&files, &vars);
        let mut notes = vec![format!("{} {}", runner.tool.binary, runner.tool.version)];
        notes.extend(parsed.drift);
        Ok(UnitPlan {
            action: UnitPlan::action_for(ctx.prior.is_some(), &parsed.changes),
            changes: parsed.changes,
            unchanged: parsed.unchanged,
            outputs: parsed.outputs,
            render_hash: fingerprint.clone(),
            notes,
            payload: Some(Arc::new(Payload {
                plan_file: saved,
                unit: ctx.unit.name.clone(),
                runner,
                layout,
                vars,
                fingerprint,
                dir: ctx.unit.dir.clone(),
            })),
        })
    }

    async fn plan_destroy_unit(&self, ctx: &DestroyContext<'_>) -> Result<UnitPlan, DriverError> {
        let prior = ctx.prior;
        let Some((dir, binary, backend)) = module_of(&prior.inventory) else {
            return Ok(UnitPlan {
                action: Action::NoOp,
                changes: Vec::new(),
                unchanged: 0,
                outputs: Some(Map::new()),
                render_hash: String::new(),
                notes: vec!["nothing recorded to destroy".into()],
                payload: None,
            });
        };
        let dir = dir.to_owned();
        let own = backend == "own";
        let layout = Layout::new(ctx.root, ctx.environment, &prior.unit, &dir, own).with_remote(
            RemoteState::of(ctx.state, ctx.project, ctx.environment, &prior.unit),
        );
        if !layout.module.is_dir() {
            return Err(DriverError::Target(format!(
                "the module of unit `{}` ({dir}) is gone; restore it to destroy what it manages",
                prior.unit
            )));
        }
        // The unit's settings as they are now; a unit removed from the
        // repository runs with the defaults.
        let s: TerraformSettings = ctx
            .unit
            .and_then(|u| parse_settings(&u.settings).ok())
            .unwrap_or_default();
        let runner = Runner::new(tool(Some(binary)).await?, &s, Plaintexts::default(), None);
        let files = module_files(&layout.module)?;
        ensure_init(&prior.unit, &runner, &layout, &files).await?;
        // Variables come from the unit as it is now; a unit removed from the
        // repository has none (a module that requires some says so).
        let vars = ctx.unit.map(|u| tf_vars(&u.inputs)).unwrap_or_default();
        let saved = PlanFile::new()?;
        let out_arg = format!("-out={}", saved.path().display());
        let args = [
            "plan",
            "-destroy",
            "-input=false",
            "-no-color",
            "-lock-timeout=30s",
            &out_arg,
        ];
        let parsed = plan_and_show(
            &prior.unit,
            &runner,
            &layout,
            &args,
            &vars,
            &saved,
            "plan -destroy",
        )
        .await?;
        let fingerprint = fingerprint(&files, &vars);
        Ok(UnitPlan {
            action: Action::Delete,
            changes: parsed.changes,
            unchanged: 0,
            outputs: Some(Map::new()),
            render_hash: String::new(),
            notes: Vec::new(),
            payload: Some(Arc::new(Payload {
                plan_file: saved,
                unit: prior.unit.clone(),
                runner,
                layout,
                vars,
                fingerprint,
                dir,
            })),
        })
    }

    async fn apply_plan(
        &self,
        plan: &UnitPlan,
        lines: Option<&Lines>,
    ) -> Result<Applied, DriverError> {
        let p: &Payload = plan.payload().ok_or_else(|| {
            DriverError::Target(
                "this plan cannot be applied: it was deferred or made by another driver".into(),
            )
        })?;
        // Exactly what was planned, or nothing.
        if fingerprint(&module_files(&p.layout.module)?, &p.vars) != p.fingerprint {
            return Err(DriverError::Target(format!(
                "the saved plan of unit `{}` is stale: its module files or inputs changed since it was planned; plan again",
                p.unit
            )));
        }
        let plan_file = p.plan_file.path();
        if !plan_file.is_file() {
            return Err(DriverError::Target(format!(
                "the saved plan of unit `{}` is missing ({}); plan again",
                p.unit,
                plan_file.display()
            )));
        }
        let plan_path = plan_file.display().to_string();
        let args = [
            "apply",
            "-input=false",
            "-no-color",
            "-lock-timeout=30s",
            "-auto-approve",
            &plan_path,
        ];
        let runner = Runner {
            lines: lines.cloned(),
            ..p.runner.clone()
        };
        let out = run(&runner, &p.layout, &args, &p.vars, true).await?;
        if !out.status.success() {
            return Err(failure(&p.unit, &p.runner, "apply", &out));
        }
        let state = p.layout.state();
        if p.layout.remote.is_some() {
            pull_state(&runner, p).await?;
        }
        let (outputs, sensitive) = if p.layout.own_backend {
            own_backend_outputs(p).await?
        } else {
            state_outputs(&state)?
        };
        if plan.action == Action::Delete {
            return Ok(Applied::default());
        }
        let mut inventory = vec![InventoryItem::TerraformModule {
            dir: p.dir.clone(),
            binary: p.runner.tool.binary.clone(),
            backend: p.layout.backend_name().to_owned(),
        }];
        inventory.extend(
            state_resources(&state)
                .into_iter()
                .map(|address| InventoryItem::TerraformResource { address }),
        );
        Ok(Applied {
            outputs,
            inventory,
            sensitive,
        })
    }
}

/// With Terraform's state in the bucket, a private copy is pulled where
/// the local backend keeps it, so outputs (sensitive ones included) and
/// resources are read as for local state, without `terraform output`.
async fn pull_state(runner: &Runner, p: &Payload) -> Result<(), DriverError> {
    let out = run(runner, &p.layout, &["state", "pull"], &p.vars, false).await?;
    if !out.status.success() {
        return Err(failure(&p.unit, &p.runner, "state pull", &out));
    }
    terrace_fs::atomic::write(&p.layout.state(), &out.stdout, terrace_fs::Mode::Private)?;
    Ok(())
}

/// With the module's own backend the state is not a local file terrace
/// knows: `output -json` is the fallback.
async fn own_backend_outputs(
    p: &Payload,
) -> Result<(Map<String, Value>, Vec<String>), DriverError> {
    let out = run(
        &p.runner,
        &p.layout,
        &["output", "-json", "-no-color"],
        &p.vars,
        false,
    )
    .await?;
    if !out.status.success() {
        return Err(failure(&p.unit, &p.runner, "output", &out));
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut outputs = Map::new();
    let mut sensitive = Vec::new();
    for (name, o) in v.as_object().into_iter().flatten() {
        outputs.insert(name.clone(), o["value"].clone());
        if o["sensitive"] == Value::Bool(true) {
            sensitive.push(name.clone());
        }
    }
    Ok((outputs, sensitive))
}

impl Driver for TerraformDriver {
    fn render<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<Rendered, DriverError>> {
        Box::pin(async move {
            // What terraform would be given: the inputs as variables.
            let s = settings(ctx)?;
            let own = own_backend(&s)?;
            let mut doc = Map::new();
            for (k, v) in &ctx.unit.inputs {
                let shown = if ctx.unit.sensitive_inputs.contains_key(k) {
                    Value::String(SENSITIVE.to_owned())
                } else {
                    v.clone()
                };
                doc.insert(k.clone(), shown);
            }
            Ok(Rendered {
                documents: vec![RenderedDocument {
                    address: format!("{} (variables)", ctx.unit.dir),
                    path: None,
                    content: format!(
                        "# TF_VAR_* for {} (backend: {})\n{}",
                        ctx.unit.dir,
                        if own {
                            "the module's own"
                        } else {
                            "terrace, local state"
                        },
                        serde_json::to_string_pretty(&doc).expect("JSON")
                    ),
                }],
            })
        })
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a UnitContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(self.plan_unit(ctx))
    }

    fn plan_destroy<'a>(
        &'a self,
        ctx: &'a DestroyContext<'a>,
    ) -> BoxFuture<'a, Result<UnitPlan, DriverError>> {
        Box::pin(self.plan_destroy_unit(ctx))
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ApplyContext<'a>,
        plan: &'a UnitPlan,
    ) -> BoxFuture<'a, Result<Applied, DriverError>> {
        Box::pin(self.apply_plan(plan, ctx.lines))
    }

    fn read_outputs(
        &self,
        root: &Path,
        prior: &UnitState,
    ) -> Option<Result<Map<String, Value>, DriverError>> {
        let (dir, _, backend) = module_of(&prior.inventory)?;
        if backend == "own" {
            // Only `terraform output` knows; the record's outputs stand.
            return None;
        }
        let layout = Layout::new(root, &prior.environment, &prior.unit, dir, false);
        Some(state_outputs(&layout.state()).map(|(o, _)| o))
    }
}

/// Settings of a `terraform` unit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TerraformSettings {
    /// `terrace` (default): terrace owns the backend, with local state under
    /// `.terrace/terraform/<env>/<unit>/` (it writes
    /// `terrace_backend_override.tf.json` into the module). `own`: the
    /// module's own `backend` block is used as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<TerraformBackend>,
    /// The binary: `tofu`, `terraform`, or a path (default: the
    /// `TERRACE_TERRAFORM` variable, else `tofu` when it is on the PATH,
    /// else `terraform`). Usually set once for the project, in
    /// terrace.yaml's `terraform:` defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Variables of terrace's own environment that Terraform and its
    /// providers get, by name or as `PREFIX*`, besides the basics (`PATH`,
    /// `HOME`, locale, proxies, certificates) and the credentials of common
    /// providers (see `DEFAULT_PASS_ENV`). Nothing else is inherited: a
    /// shell's `TF_VAR_*`, `TF_CLI_ARGS*` or `TF_WORKSPACE` never changes
    /// a plan, and terrace's own keys (`SOPS_*`, `TERRACE_*`) never reach a
    /// provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
    /// How long one `terraform` command of this unit may run, as `90s`,
    /// `30m` or `2h` (default `1h`). When it is up, Terraform gets one
    /// SIGINT (it stops and releases its state lock), then is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// Whether plans refresh from real infrastructure (default true);
    /// `false` is the fast path that trusts the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<bool>,
}

/// Who owns a Terraform unit's backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TerraformBackend {
    /// terrace: local state under `.terrace/terraform/<env>/<unit>/`.
    #[default]
    Terrace,
    /// The module's own `backend` block.
    Own,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plan_json_maps_to_changes_with_masked_secrets() {
        let plan = json!({
            "resource_changes": [
                {"address": "terraform_data.a", "change": {"actions": ["no-op"], "before": {}, "after": {}}},
                {"address": "terraform_data.b", "change": {"actions": ["update"],
                    "before": {"input": "x", "token": "old"}, "after": {"input": "y", "token": "new"},
                    "before_sensitive": {"token": true}, "after_sensitive": {"token": true}}},
                {"address": "terraform_data.c", "change": {"actions": ["delete", "create"], "before": {}, "after": {}}}
            ],
            "output_changes": {
                "id": {"actions": ["update"], "after_unknown": true},
                "name": {"actions": ["no-op"], "after": "vm", "after_unknown": false}
            },
            "resource_drift": [{"address": "terraform_data.b", "change": {"actions": ["update"]}}]
        });
        let p = parse_plan(&plan);
        assert_eq!(p.unchanged, 1);
        let actions: Vec<(String, Action)> = p
            .changes
            .iter()
            .map(|c| (c.address.clone(), c.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("terraform_data.b".to_owned(), Action::Update),
                ("terraform_data.c".to_owned(), Action::Replace),
                ("output.id".to_owned(), Action::Update),
            ]
        );
        let diff = p.changes[0].diff.as_deref().expect("diff");
        assert!(
            diff.contains("-  \"input\": \"x\"") && diff.contains("+  \"input\": \"y\""),
            "{diff}"
        );
        assert!(!diff.contains("old") && !diff.contains("new"), "{diff}");
        assert!(p.outputs.is_none(), "an output is known only after apply");
        assert_eq!(
            p.drift,
            ["drift: terraform_data.b changed outside Terraform (update)"]
        );
    }

    #[test]
    fn inputs_become_tf_vars() {
        let inputs = json!({"name": "vm", "count": 3, "tags": {"a": "b"}});
        let vars = tf_vars(inputs.as_object().expect("map"));
        assert_eq!(
            vars,
            [
                ("TF_VAR_name".to_owned(), "vm".to_owned()),
                ("TF_VAR_count".to_owned(), "3".to_owned()),
                ("TF_VAR_tags".to_owned(), "{\"a\":\"b\"}".to_owned()),
            ]
        );
    }
}
