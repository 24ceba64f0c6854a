//! Where a helm unit's chart comes from, and the pins that keep a remote
//! chart the same from one plan to the next.
//!
//! A remote chart (an HTTP repository's, or an `oci://` reference) is
//! pulled once with `helm pull` into `.terrace/charts/<sha256>.tgz` and
//! pinned in `terrace.lock` (committed beside terrace.yaml) by its source,
//! name and the version constraint as written, with the version it
//! resolved to and its digest. Later plans use the cached archive and
//! need no network; on a machine without it, the pinned version is pulled
//! and must have the pinned digest. `terrace charts update` resolves the
//! constraints again and moves the pins.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use terrace_core::config::{UNIT_FILE, WORK_DIR};
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{DriverError, UnitContext};
use terrace_exec::Program;

use super::{HelmSettings, Homes};
use crate::{clean_relative, digest};

/// The lock file, at the project root.
pub const LOCK_FILE: &str = "terrace.lock";

/// One read-modify-write of the lock file at a time in this process.
static LOCK_FILE_GUARD: Mutex<()> = Mutex::new(());

/// A chart ready for `helm template`.
#[derive(Debug, Clone)]
pub struct Chart {
    /// A directory or an archive, absolute.
    pub path: PathBuf,
    /// `sha256:<hex>` of the archive, or of a directory's files.
    pub digest: String,
    pub name: String,
    pub version: String,
    /// Where it came from, for messages: the directory, or the source.
    pub origin: String,
    /// Lines for the plan (a pin just written).
    pub notes: Vec<String>,
    /// The chart directory relative to the project root, for a local
    /// chart.
    pub local: Option<String>,
}

impl Chart {
    pub fn describe(&self) -> String {
        format!("{} {} from {}", self.name, self.version, self.origin)
    }
}

/// A pin of terrace.lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The repository URL, or the `oci://` reference without the chart.
    pub source: String,
    pub chart: String,
    /// The version as the unit writes it (`""`: the newest).
    #[serde(default)]
    pub constraint: String,
    /// The version it resolved to.
    pub version: String,
    /// `sha256:<hex>` of the chart archive.
    pub digest: String,
    /// The OCI registry is reached over plain HTTP.
    #[serde(
        default,
        rename = "plainHttp",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub plain_http: bool,
}

/// terrace.lock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    #[serde(default)]
    pub charts: Vec<Pin>,
}

impl Lock {
    fn find(&self, source: &str, chart: &str, constraint: &str) -> Option<&Pin> {
        self.charts
            .iter()
            .find(|p| p.source == source && p.chart == chart && p.constraint == constraint)
    }

    fn put(&mut self, pin: Pin) {
        self.charts.retain(|p| {
            !(p.source == pin.source && p.chart == pin.chart && p.constraint == pin.constraint)
        });
        self.charts.push(pin);
        self.charts.sort_by(|a, b| {
            (&a.source, &a.chart, &a.constraint).cmp(&(&b.source, &b.chart, &b.constraint))
        });
    }
}

/// Reads terrace.lock (empty when there is none).
pub fn read_lock(root: &Path) -> Result<Lock, DriverError> {
    let path = root.join(LOCK_FILE);
    match terrace_fs::read_to_string(root, &path) {
        Ok(text) => Ok(terrace_yaml::from_str(&text, Path::new(LOCK_FILE))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lock::default()),
        Err(e) => Err(e.into()),
    }
}

/// Writes terrace.lock atomically.
pub fn write_lock(root: &Path, lock: &Lock) -> Result<(), DriverError> {
    let mut text = String::from(
        "# Chart pins of helm units: written by terrace, moved by `terrace charts update`.\n# Commit this file: plans use exactly these charts.\n",
    );
    text.push_str(&terrace_yaml::to_string(lock));
    terrace_fs::write(root, LOCK_FILE, text.as_bytes(), terrace_fs::Mode::Shared)?;
    Ok(())
}

/// A remote chart as a unit names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub source: String,
    pub chart: String,
    pub constraint: String,
    /// An `oci://` registry without TLS (`--plain-http`).
    pub plain_http: bool,
}

impl Remote {
    /// What `helm pull` is given for it.
    fn pull_args(&self) -> Vec<String> {
        if self.source.starts_with("oci://") {
            let mut args = vec![format!("{}/{}", self.source, self.chart)];
            if self.plain_http {
                args.push("--plain-http".into());
            }
            args
        } else {
            vec![self.chart.clone(), "--repo".into(), self.source.clone()]
        }
    }

    fn describe(&self) -> String {
        if self.source.starts_with("oci://") {
            format!("{}/{}", self.source, self.chart)
        } else {
            format!("{} in {}", self.chart, self.source)
        }
    }
}

/// The unit's chart: local, or remote (and which).
fn remote_of(
    s: &HelmSettings,
    chart: &str,
    unit_file: &str,
) -> Result<Option<Remote>, DriverError> {
    let constraint = s.version.clone().unwrap_or_default();
    if let Some(reference) = chart.strip_prefix("oci://") {
        if s.repo.is_some() {
            return Err(Diagnostic::new(
                "`helm.repo` is for HTTP repositories; an `oci://` chart names its registry itself",
            )
            .in_file(unit_file)
            .with_hint("remove `helm.repo`")
            .into());
        }
        let (base, name) = reference.rsplit_once('/').ok_or_else(|| {
            Diagnostic::new(format!(
                "`{chart}` names no chart: write `oci://REGISTRY/PATH/CHART`"
            ))
            .in_file(unit_file)
        })?;
        if name.contains(':') || name.contains('@') {
            return Err(Diagnostic::new(format!(
                "`{chart}`: give the version in `helm.version`, not in the reference"
            ))
            .in_file(unit_file)
            .into());
        }
        return Ok(Some(Remote {
            source: format!("oci://{base}"),
            chart: name.to_owned(),
            constraint,
            plain_http: s.plain_http == Some(true),
        }));
    }
    if s.plain_http.is_some() {
        return Err(Diagnostic::new(
            "`helm.plainHttp` is for `oci://` registries; an HTTP repository's URL says http:// or https:// itself",
        )
        .in_file(unit_file)
        .with_hint("remove `helm.plainHttp`")
        .into());
    }
    match &s.repo {
        Some(repo) => {
            if !(repo.starts_with("https://") || repo.starts_with("http://")) {
                return Err(Diagnostic::new(format!(
                    "`helm.repo` is `{repo}`: a chart repository is an http(s) URL"
                ))
                .in_file(unit_file)
                .with_hint("for an OCI registry, write the chart as `oci://REGISTRY/PATH/CHART` without `repo`")
                .into());
            }
            if chart.contains('/') {
                return Err(Diagnostic::new(format!(
                    "`helm.chart` is `{chart}`: with `helm.repo`, name the chart alone (`podinfo`, not `repo/podinfo`)"
                ))
                .in_file(unit_file)
                .into());
            }
            Ok(Some(Remote {
                source: repo.trim_end_matches('/').to_owned(),
                chart: chart.to_owned(),
                constraint,
                plain_http: false,
            }))
        }
        None => {
            if s.version.is_some() {
                return Err(Diagnostic::new(
                    "`helm.version` is for remote charts; a chart directory has the version its Chart.yaml says",
                )
                .in_file(unit_file)
                .with_hint("remove `helm.version`, or set `helm.repo` to pull the chart from a repository")
                .into());
            }
            Ok(None)
        }
    }
}

/// Finds the unit's chart, pulling and pinning a remote one when needed.
pub(crate) async fn resolve(
    ctx: &UnitContext<'_>,
    s: &HelmSettings,
    program: &Program,
    timeout: Duration,
    unit_file: &str,
) -> Result<Chart, DriverError> {
    let chart = s.chart.as_deref().ok_or_else(|| {
        Diagnostic::new("a helm unit needs `helm.chart`: a chart directory, a chart name with `helm.repo`, or an `oci://` reference")
            .in_file(unit_file)
    })?;
    match remote_of(s, chart, unit_file)? {
        None => local(ctx, chart, unit_file),
        Some(remote) => {
            let pin = {
                let _guard = LOCK_FILE_GUARD.lock().unwrap_or_else(|p| p.into_inner());
                read_lock(ctx.root)?
                    .find(&remote.source, &remote.chart, &remote.constraint)
                    .cloned()
            };
            let mut notes = Vec::new();
            let pin = match pin {
                Some(pin) => {
                    ensure_cached(ctx.root, program, timeout, &remote, &pin, unit_file).await?;
                    pin
                }
                None => {
                    let pin = pull(ctx.root, program, timeout, &remote, None, unit_file).await?;
                    let _guard = LOCK_FILE_GUARD.lock().unwrap_or_else(|p| p.into_inner());
                    let mut lock = read_lock(ctx.root)?;
                    lock.put(pin.clone());
                    write_lock(ctx.root, &lock)?;
                    notes.push(format!(
                        "chart {} {} pinned in {LOCK_FILE} ({})",
                        pin.chart, pin.version, pin.digest
                    ));
                    pin
                }
            };
            Ok(Chart {
                path: ctx.root.join(archive_path(&pin.digest)),
                digest: pin.digest,
                name: pin.chart,
                version: pin.version,
                origin: remote.describe(),
                notes,
                local: None,
            })
        }
    }
}

/// Where a pulled archive is kept, absolute.
pub(crate) fn archive(root: &Path, digest: &str) -> PathBuf {
    root.join(archive_path(digest))
}

/// Where a pulled archive is kept, relative to the project root.
fn archive_path(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("{WORK_DIR}/charts/{hex}.tgz")
}

/// Makes sure the pinned archive is in the cache with its digest, pulling
/// the pinned version when it is not.
async fn ensure_cached(
    root: &Path,
    program: &Program,
    timeout: Duration,
    remote: &Remote,
    pin: &Pin,
    unit_file: &str,
) -> Result<(), DriverError> {
    let path = root.join(archive_path(&pin.digest));
    if let Ok(bytes) = terrace_fs::read(root, &path)
        && digest(&bytes) == pin.digest
    {
        return Ok(());
    }
    let pulled = pull(
        root,
        program,
        timeout,
        remote,
        Some(&pin.version),
        unit_file,
    )
    .await?;
    if pulled.digest != pin.digest {
        return Err(Diagnostic::new(format!(
            "chart {} {} from {} is not the one pinned in {LOCK_FILE}: its digest is {}, the pin says {}",
            remote.chart,
            pin.version,
            remote.source,
            pulled.digest,
            pin.digest
        ))
        .in_file(unit_file)
        .with_hint("the repository changed the chart under the same version; if you trust it, `terrace charts update` moves the pin")
        .into());
    }
    Ok(())
}

/// Pulls a chart (the constraint's newest version, or `exact`), keeps it
/// in the cache by digest, and says what it resolved to.
pub(crate) async fn pull(
    root: &Path,
    program: &Program,
    timeout: Duration,
    remote: &Remote,
    exact: Option<&str>,
    unit_file: &str,
) -> Result<Pin, DriverError> {
    let homes = Homes::of(root)?;
    let scratch = tempfile::Builder::new()
        .prefix("pull-")
        .tempdir_in(&homes.cache)?;
    let mut args = vec!["pull".to_owned()];
    args.extend(remote.pull_args());
    let version = exact.unwrap_or(&remote.constraint);
    if !version.is_empty() {
        args.push("--version".into());
        args.push(version.to_owned());
    }
    args.push("--destination".into());
    args.push(scratch.path().display().to_string());
    super::command(program, &homes, timeout)
        .args(&args)
        .current_dir(root)
        .run()
        .await
        .and_then(|f| f.success("pull"))
        .map_err(|e| {
            super::exec_error(
                e,
                unit_file,
                &format!("pulling chart {}", remote.describe()),
            )
        })?;
    let mut archives = Vec::new();
    for entry in std::fs::read_dir(scratch.path())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tgz") && entry.file_type()?.is_file() {
            archives.push(name);
        }
    }
    let [archive] = archives.as_slice() else {
        return Err(Diagnostic::new(format!(
            "`helm pull` of {} left {} archives where one was expected",
            remote.describe(),
            archives.len()
        ))
        .in_file(unit_file)
        .into());
    };
    let resolved = archive
        .strip_suffix(".tgz")
        .and_then(|n| n.strip_prefix(&format!("{}-", remote.chart)))
        .ok_or_else(|| {
            DriverError::from(
                Diagnostic::new(format!(
                    "`helm pull` of {} wrote `{archive}`, which is not named after the chart",
                    remote.describe()
                ))
                .in_file(unit_file),
            )
        })?
        .to_owned();
    let bytes = std::fs::read(scratch.path().join(archive))?;
    let sum = digest(&bytes);
    let cache_dir = root.join(WORK_DIR).join("charts");
    terrace_fs::private_dir(&cache_dir)?;
    terrace_fs::write(root, &archive_path(&sum), &bytes, terrace_fs::Mode::Private)?;
    Ok(Pin {
        source: remote.source.clone(),
        chart: remote.chart.clone(),
        constraint: remote.constraint.clone(),
        version: resolved,
        digest: sum,
        plain_http: remote.plain_http,
    })
}

/// A chart directory of the project: every file read through
/// `terrace_fs` (so none leads outside the project), digested together.
fn local(ctx: &UnitContext<'_>, chart: &str, unit_file: &str) -> Result<Chart, DriverError> {
    let dir = clean_relative(&ctx.unit.dir, chart).ok_or_else(|| {
        Diagnostic::new(format!(
            "chart directory `{chart}` leads outside the project"
        ))
        .in_file(unit_file)
        .with_hint(
            "vendor the chart inside the project, or pull it from a repository with `helm.repo`",
        )
    })?;
    let abs = ctx.root.join(&dir);
    let chart_yaml = abs.join("Chart.yaml");
    if !terrace_fs::is_dir(&abs) || !chart_yaml.is_file() {
        return Err(Diagnostic::new(format!(
            "`{dir}` is not a chart directory (no Chart.yaml there)"
        ))
        .in_file(unit_file)
        .with_hint("point `helm.chart` at a chart directory relative to the unit, or set `helm.repo` for a chart in a repository")
        .into());
    }
    let mut files = Vec::new();
    walk(&abs, "", &mut files)?;
    files.sort();
    let mut text = String::new();
    for rel in &files {
        let bytes = terrace_fs::read(ctx.root, &abs.join(rel))?;
        text.push_str(rel);
        text.push('\0');
        text.push_str(&digest(&bytes));
        text.push('\0');
    }
    let meta_text = terrace_fs::read_to_string(ctx.root, &chart_yaml)?;
    let meta: Value = terrace_yaml::documents(&meta_text, Path::new(&format!("{dir}/Chart.yaml")))?
        .into_iter()
        .next()
        .map(|(_, v)| v)
        .unwrap_or(Value::Null);
    let field = |k: &str| {
        meta.get(k).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    Ok(Chart {
        path: abs,
        digest: digest(text.as_bytes()),
        name: field("name").unwrap_or_else(|| dir.clone()),
        version: field("version").unwrap_or_default(),
        local: Some(dir.clone()),
        origin: dir,
        notes: Vec::new(),
    })
}

/// The files under a chart directory, relative to it. Hidden files count
/// too (Helm reads `.helmignore`).
fn walk(abs: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), DriverError> {
    for entry in terrace_fs::read_dir(abs)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&entry.path(), &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// Resolves every pin of terrace.lock again (its constraint's newest
/// version now) and writes the moved pins; returns each pin before and
/// after.
pub async fn update_pins(
    root: &Path,
    binary: Option<&str>,
    timeout: Duration,
    only: &[String],
) -> Result<Vec<(Pin, Pin)>, DriverError> {
    let program = super::program(binary, UNIT_FILE)?;
    let lock = {
        let _guard = LOCK_FILE_GUARD.lock().unwrap_or_else(|p| p.into_inner());
        read_lock(root)?
    };
    let mut moved = Vec::new();
    for pin in &lock.charts {
        if !only.is_empty() && !only.contains(&pin.chart) {
            continue;
        }
        let remote = Remote {
            source: pin.source.clone(),
            chart: pin.chart.clone(),
            constraint: pin.constraint.clone(),
            plain_http: pin.plain_http,
        };
        let new = pull(root, &program, timeout, &remote, None, LOCK_FILE).await?;
        moved.push((pin.clone(), new));
    }
    let _guard = LOCK_FILE_GUARD.lock().unwrap_or_else(|p| p.into_inner());
    let mut lock = read_lock(root)?;
    for (_, new) in &moved {
        lock.put(new.clone());
    }
    write_lock(root, &lock)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(chart: &str, repo: Option<&str>, version: Option<&str>) -> HelmSettings {
        HelmSettings {
            chart: Some(chart.to_owned()),
            repo: repo.map(str::to_owned),
            version: version.map(str::to_owned),
            ..HelmSettings::default()
        }
    }

    #[test]
    fn sources_are_told_apart() {
        let r = remote_of(
            &settings("podinfo", Some("https://c.example/"), Some("6.x")),
            "podinfo",
            "u",
        )
        .expect("valid")
        .expect("remote");
        assert_eq!(r.source, "https://c.example");
        assert_eq!(r.pull_args(), ["podinfo", "--repo", "https://c.example"]);
        let r = remote_of(
            &settings("oci://ghcr.io/o/charts/x", None, None),
            "oci://ghcr.io/o/charts/x",
            "u",
        )
        .expect("valid")
        .expect("remote");
        assert_eq!(
            (r.source.as_str(), r.chart.as_str()),
            ("oci://ghcr.io/o/charts", "x")
        );
        assert_eq!(r.pull_args(), ["oci://ghcr.io/o/charts/x"]);
        assert!(
            remote_of(&settings("./chart", None, None), "./chart", "u")
                .expect("valid")
                .is_none()
        );
        for (chart, repo, version) in [
            ("./chart", None, Some("1.0.0")),
            ("x", Some("file:///tmp"), None),
            ("repo/x", Some("https://c.example"), None),
            ("oci://r/x:1.0", None, None),
            ("oci://r/x", Some("https://c.example"), None),
        ] {
            assert!(
                remote_of(&settings(chart, repo, version), chart, "u").is_err(),
                "{chart}"
            );
        }
    }

    #[test]
    fn the_lock_keeps_one_pin_per_source_chart_and_constraint() {
        let pin = |c: &str, v: &str| Pin {
            source: "https://c.example".into(),
            chart: "x".into(),
            constraint: c.into(),
            version: v.into(),
            digest: format!("sha256:{v}"),
            plain_http: false,
        };
        let mut lock = Lock::default();
        lock.put(pin("1.x", "1.0.0"));
        lock.put(pin("2.x", "2.0.0"));
        lock.put(pin("1.x", "1.1.0"));
        assert_eq!(lock.charts.len(), 2);
        assert_eq!(
            lock.find("https://c.example", "x", "1.x")
                .map(|p| p.version.as_str()),
            Some("1.1.0")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        write_lock(dir.path(), &lock).expect("written");
        assert_eq!(read_lock(dir.path()).expect("read"), lock);
        std::fs::write(
            dir.path().join(LOCK_FILE),
            "charts:\n- source: x\n  bogus: 1\n",
        )
        .expect("write");
        assert!(read_lock(dir.path()).is_err());
    }
}
