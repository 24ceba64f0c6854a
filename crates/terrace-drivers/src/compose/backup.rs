//! Backups of compose services, with restic as the engine.
//!
//! Each service may have a `backup:` entry in the unit's `compose:`
//! settings: what (a volume the service mounts, copied out of the
//! container as a tar archive through the Docker API, optionally with the
//! service stopped; or what a command run inside the container prints,
//! such as `pg_dump`), where (a restic repository: a path or
//! `s3:…`), the repository password (which must come from a secret: it
//! reaches restic in its environment only), when (`schedule`, run by
//! `terrace serve`) and what is kept (`keep`, `restic forget --prune`
//! after each backup). The bytes pass through terrace's memory, never a
//! file. Snapshots are tagged `terrace`, `unit:<unit>`, `service:<name>`
//! and `env:<environment>`, under the host name `<project>`, so every
//! machine that runs the backup writes to the same series.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use terrace_core::config::UNIT_FILE;
use terrace_core::diag::Diagnostic;
use terrace_core::driver::{DriverError, UnitContext};
use terrace_docker::Engine;
use terrace_exec::Program;

use super::{Desired, ServiceWant, docker_error, endpoint, target};

/// How one service is backed up.
#[derive(Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupSettings {
    /// Back up this volume (a key of the file's `volumes:` that the
    /// service mounts), as a tar archive of its mount point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Or back up what this command prints, run inside the service's
    /// container (`["pg_dump", "-U", "app", "app"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// With `command`: what restores a dump, run inside the container
    /// with the dump on its stdin (`["psql", "-U", "app", "app"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Vec<String>>,
    /// The restic repository: a directory (relative to the project
    /// root, or absolute) or `s3:https://HOST/BUCKET/PREFIX`.
    pub repository: String,
    /// The repository's password, from a secret
    /// (`${secret.secrets/backup.yaml#restic}`): a plain one is refused.
    pub password: String,
    /// More environment for restic, such as `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` for S3 (values may come from secrets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// When `terrace serve` runs it, in cron syntax (`0 3 * * *`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Snapshots kept after each backup (`restic forget --prune`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<Keep>,
    /// Stop the service while its volume is copied (a consistent copy of
    /// files a running database keeps changing).
    #[serde(default)]
    pub stop: bool,
    /// How long one restic run may take. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<terrace_core::kind::Timeout>,
}

/// The password and the environment's values are left out: they hold
/// secrets.
impl std::fmt::Debug for BackupSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSettings")
            .field("volume", &self.volume)
            .field("command", &self.command)
            .field("restore", &self.restore)
            .field("repository", &self.repository)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("schedule", &self.schedule)
            .field("keep", &self.keep)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

/// Snapshots kept, as restic's `forget` counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Keep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yearly: Option<u32>,
}

impl Keep {
    fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, n) in [
            ("--keep-last", self.last),
            ("--keep-hourly", self.hourly),
            ("--keep-daily", self.daily),
            ("--keep-weekly", self.weekly),
            ("--keep-monthly", self.monthly),
            ("--keep-yearly", self.yearly),
        ] {
            if let Some(n) = n {
                out.push(flag.to_owned());
                out.push(n.to_string());
            }
        }
        out
    }
}

/// One snapshot of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    /// As restic records it (RFC 3339).
    pub time: String,
    pub unit: String,
    pub service: String,
    /// `volume` or `command`.
    pub what: String,
}

/// The services of the unit with a backup, checked.
pub(super) fn check(
    ctx: &UnitContext<'_>,
    d: &Desired,
) -> Result<Vec<(String, BackupSettings)>, DriverError> {
    let uf = format!("{}/{UNIT_FILE}", ctx.unit.dir);
    let mut out = Vec::new();
    for (service, b) in &d.settings.backup {
        let place = |msg: String| -> DriverError {
            Diagnostic::new(format!("compose.backup.{service}: {msg}"))
                .in_file(&uf)
                .into()
        };
        let Some(w) = d.services.iter().find(|w| &w.service == service) else {
            return Err(place("the compose file has no such service".to_owned()));
        };
        match (&b.volume, &b.command) {
            (Some(v), None) => {
                if mount_of(d, w, v).is_none() {
                    return Err(place(format!(
                        "the service does not mount a volume `{v}` of the file"
                    )));
                }
            }
            (None, Some(c)) if !c.is_empty() => {}
            _ => {
                return Err(place(
                    "give either `volume:` (a volume the service mounts) or `command:` (what prints the backup)".to_owned(),
                ));
            }
        }
        if b.password.is_empty() || !password_is_secret(ctx, &b.password) {
            return Err(Diagnostic::new(format!(
                "compose.backup.{service}.password does not come from a secret; in unit.yaml it would sit on disk in plain text"
            ))
            .in_file(&uf)
            .with_hint("write it as ${secret.FILE#KEY}, from a SOPS-encrypted file")
            .into());
        }
        if let Some(s) = &b.schedule {
            parse_schedule(s)
                .map_err(|e| place(format!("schedule `{s}` is not cron syntax: {e}")))?;
        }
        out.push((service.clone(), b.clone()));
    }
    Ok(out)
}

/// Whether the password came from a secret: the `backup` settings hold
/// one, and this value is one the run decrypted.
fn password_is_secret(ctx: &UnitContext<'_>, password: &str) -> bool {
    ctx.unit.sensitive_settings.contains_key("backup")
        && ctx.secrets.is_some_and(|s| {
            let known = s.plaintexts();
            known.found_in(password) || known.found_in_name(password)
        })
}

/// The volume `key` as the service mounts it: (volume name, mount point).
fn mount_of<'a>(d: &Desired, w: &'a ServiceWant, key: &str) -> Option<(String, &'a str)> {
    let name = d
        .volumes
        .iter()
        .find(|v| v.key == key)
        .map_or_else(|| key.to_owned(), |v| v.name.clone());
    w.spec
        .mounts
        .iter()
        .find(|m| m.kind == "volume" && m.source.as_deref() == Some(name.as_str()))
        .map(|m| (name, m.target.as_str()))
}

/// A cron schedule (five fields, minute first, or six with seconds
/// first; in UTC), as `terrace serve` reads it.
pub fn parse_schedule(s: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(s)
        .map_err(|e| e.to_string())
}

/// When schedule `s` next fires after `after` (UTC).
pub fn next_run(s: &croner::Cron, after: jiff::Timestamp) -> Option<jiff::Timestamp> {
    let now = after.to_zoned(jiff::tz::TimeZone::UTC);
    s.find_next_occurrence(&now, false)
        .ok()
        .map(|z| z.timestamp())
}

struct Restic<'a> {
    program: Program,
    ctx: &'a UnitContext<'a>,
    b: &'a BackupSettings,
}

impl Restic<'_> {
    fn repository(&self) -> String {
        let r = &self.b.repository;
        if r.contains(':') || r.starts_with('/') {
            r.clone()
        } else {
            self.ctx.root.join(r).display().to_string()
        }
    }

    async fn run(
        &self,
        args: &[String],
        stdin: Option<Vec<u8>>,
        what: &str,
    ) -> Result<terrace_exec::Finished, DriverError> {
        let cache = self.ctx.root.join(".terrace/cache/restic");
        terrace_fs::private_dir(&cache)?;
        let mut cmd = self
            .program
            .command()
            .args(args)
            .env("RESTIC_REPOSITORY", self.repository())
            .env("RESTIC_PASSWORD", &self.b.password)
            .env("RESTIC_CACHE_DIR", &cache)
            .envs(self.b.env.iter())
            .timeout(self.b.timeout.as_ref().map_or(
                Duration::from_secs(3600),
                terrace_core::kind::Timeout::duration,
            ))
            .stream_stdout(false);
        if let Some(s) = self.ctx.secrets {
            cmd = cmd.redact(s.plaintexts());
        }
        if let Some(input) = stdin {
            cmd = cmd.stdin(input);
        }
        cmd.run()
            .await
            .and_then(|f| f.success(what))
            .map_err(|e| DriverError::Other(Box::new(e)))
    }

    /// Makes the repository when it does not exist yet, and removes the
    /// locks of restic runs that died (an interrupted backup or prune
    /// leaves one, and every later run would wait on it).
    async fn ensure(&self) -> Result<(), DriverError> {
        if self
            .run(
                &["cat".into(), "config".into()],
                None,
                "open the repository",
            )
            .await
            .is_ok()
        {
            // Only locks whose process is gone are removed.
            return self
                .run(&["unlock".into()], None, "remove stale locks")
                .await
                .map(drop);
        }
        self.run(&["init".into()], None, "create the repository")
            .await
            .map(drop)
    }

    async fn snapshots(&self, tags: &str) -> Result<Vec<RawSnapshot>, DriverError> {
        let out = self
            .run(
                &[
                    "snapshots".into(),
                    "--json".into(),
                    "--tag".into(),
                    tags.to_owned(),
                ],
                None,
                "list snapshots",
            )
            .await?;
        serde_json::from_slice::<Option<Vec<RawSnapshot>>>(&out.stdout)
            .map(Option::unwrap_or_default)
            .map_err(|e| DriverError::Other(format!("restic's snapshot list: {e}").into()))
    }
}

#[derive(Debug, Deserialize)]
struct RawSnapshot {
    id: String,
    short_id: String,
    time: String,
    #[serde(default)]
    tags: Vec<String>,
}

impl RawSnapshot {
    fn tag(&self, prefix: &str) -> String {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(prefix))
            .unwrap_or_default()
            .to_owned()
    }

    fn into_snapshot(self) -> Snapshot {
        Snapshot {
            unit: self.tag("unit:"),
            service: self.tag("service:"),
            what: self.tag("what:"),
            id: self.id,
            short_id: self.short_id,
            time: self.time,
        }
    }
}

fn tags(ctx: &UnitContext<'_>, service: &str) -> String {
    format!(
        "unit:{},service:{service},env:{}",
        ctx.unit.name, ctx.environment
    )
}

async fn connect(ctx: &UnitContext<'_>) -> Result<(Desired, Engine), DriverError> {
    let t = target(ctx)?;
    let d = super::desired(ctx)?;
    let Some(ep) = endpoint(ctx.root, t)? else {
        return Err(DriverError::Target(format!(
            "target `{}` has no Docker host: there is nothing running to back up or restore (set its `host`, or pass --docker {}=HOST)",
            t.name, t.name
        )));
    };
    let engine = Engine::connect(&ep).await.map_err(docker_error)?;
    Ok((d, engine))
}

fn selected(
    all: Vec<(String, BackupSettings)>,
    only: Option<&str>,
    unit: &str,
) -> Result<Vec<(String, BackupSettings)>, DriverError> {
    match only {
        None => Ok(all),
        Some(s) => {
            let names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
            let picked: Vec<_> = all.into_iter().filter(|(n, _)| n == s).collect();
            if picked.is_empty() {
                return Err(DriverError::Target(format!(
                    "unit `{unit}` has no backup of service `{s}`; its backups: {}",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )));
            }
            Ok(picked)
        }
    }
}

/// Runs `cmd` in `container` (fed `input`); its stdout, or an error
/// naming the service, the command and how it ended.
async fn run_in(
    engine: &Engine,
    container: &str,
    service: &str,
    cmd: &[String],
    input: Option<&[u8]>,
) -> Result<Vec<u8>, DriverError> {
    let (code, out, err) = engine
        .exec_io(container, cmd, input)
        .await
        .map_err(docker_error)?;
    if code != Some(0) {
        return Err(DriverError::Target(format!(
            "{service}: `{}` exited with {}: {}",
            cmd.join(" "),
            code.map_or("no code".to_owned(), |c| c.to_string()),
            err.trim()
        )));
    }
    Ok(out)
}

/// Backs up the unit's services (or `only` that one) now, then applies
/// each one's retention.
pub async fn run(
    ctx: &UnitContext<'_>,
    only: Option<&str>,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Snapshot>, DriverError> {
    let (d, engine) = connect(ctx).await?;
    let jobs = selected(check(ctx, &d)?, only, &ctx.unit.name)?;
    let program = Program::find("restic").map_err(|e| DriverError::Other(Box::new(e)))?;
    let mut done = Vec::new();
    for (service, b) in &jobs {
        let w = d
            .services
            .iter()
            .find(|w| &w.service == service)
            .expect("checked");
        let container = &w.spec.name;
        let restic = Restic {
            program: program.clone(),
            ctx,
            b,
        };
        restic.ensure().await?;
        let (bytes, file, what) = match (&b.volume, &b.command) {
            (Some(v), _) => {
                let (_, path) = mount_of(&d, w, v).expect("checked");
                if b.stop {
                    say(&format!(
                        "{service}: stopping {container} for a consistent copy"
                    ));
                    engine.stop(container).await.map_err(docker_error)?;
                }
                say(&format!("{service}: copying volume {v} ({path})"));
                let copied = engine.archive_contents(container, path).await;
                if b.stop {
                    engine.start(container).await.map_err(docker_error)?;
                }
                (
                    copied.map_err(docker_error)?,
                    format!("{service}-{v}.tar"),
                    "volume",
                )
            }
            (None, Some(cmd)) => {
                say(&format!("{service}: running {}", cmd.join(" ")));
                let out = run_in(&engine, container, service, cmd, None).await?;
                (out, format!("{service}.dump"), "command")
            }
            (None, None) => unreachable!("checked"),
        };
        say(&format!("{service}: {} bytes to restic", bytes.len()));
        let mut args: Vec<String> = vec![
            "backup".into(),
            "--stdin".into(),
            "--stdin-filename".into(),
            file,
            "--host".into(),
            ctx.project.to_owned(),
            "--json".into(),
        ];
        for t in [
            "terrace".to_owned(),
            format!("unit:{}", ctx.unit.name),
            format!("service:{service}"),
            format!("env:{}", ctx.environment),
            format!("what:{what}"),
        ] {
            args.push("--tag".into());
            args.push(t);
        }
        let out = restic.run(&args, Some(bytes), "back up").await?;
        let id = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .and_then(|v| v["snapshot_id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if let Some(keep) = &b.keep {
            let mut args: Vec<String> = vec![
                "forget".into(),
                "--tag".into(),
                tags(ctx, service),
                "--group-by".into(),
                "host,tags".into(),
                "--prune".into(),
            ];
            args.extend(keep.args());
            restic.run(&args, None, "apply retention").await?;
        }
        let snap = restic
            .snapshots(&tags(ctx, service))
            .await?
            .into_iter()
            .find(|s| s.id == id || (!id.is_empty() && s.id.starts_with(&id)))
            .map(RawSnapshot::into_snapshot)
            .unwrap_or(Snapshot {
                short_id: id.chars().take(8).collect(),
                id,
                time: String::new(),
                unit: ctx.unit.name.clone(),
                service: service.clone(),
                what: what.to_owned(),
            });
        say(&format!("{service}: snapshot {}", snap.short_id));
        done.push(snap);
    }
    Ok(done)
}

/// The unit's snapshots (or `only` that service's), oldest first.
pub async fn list(ctx: &UnitContext<'_>, only: Option<&str>) -> Result<Vec<Snapshot>, DriverError> {
    let d = super::desired(ctx)?;
    let jobs = selected(check(ctx, &d)?, only, &ctx.unit.name)?;
    let program = Program::find("restic").map_err(|e| DriverError::Other(Box::new(e)))?;
    let mut out = Vec::new();
    for (service, b) in &jobs {
        let restic = Restic {
            program: program.clone(),
            ctx,
            b,
        };
        let snaps = restic.snapshots(&tags(ctx, service)).await?;
        out.extend(snaps.into_iter().map(RawSnapshot::into_snapshot));
    }
    out.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(out)
}

/// When a snapshot was taken, in nanoseconds since the epoch.
fn nanos(time: &str) -> Option<i128> {
    let t = humantime::parse_rfc3339_weak(time.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(time))
        .ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos()
        .try_into()
        .ok()
}

/// Restores service `service` from the latest snapshot, or the one `at`
/// names (an id or its prefix, or a time: the latest taken at or before
/// it). A volume is copied back into the stopped service, which is then
/// started again; a dump is fed to the `restore` command.
pub async fn restore(
    ctx: &UnitContext<'_>,
    service: &str,
    at: Option<&str>,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Snapshot, DriverError> {
    let (d, engine) = connect(ctx).await?;
    let (_, b) = selected(check(ctx, &d)?, Some(service), &ctx.unit.name)?
        .into_iter()
        .next()
        .expect("selected one");
    let w = d
        .services
        .iter()
        .find(|w| w.service == service)
        .expect("checked");
    let program = Program::find("restic").map_err(|e| DriverError::Other(Box::new(e)))?;
    let restic = Restic {
        program,
        ctx,
        b: &b,
    };
    let snaps: Vec<RawSnapshot> = restic.snapshots(&tags(ctx, service)).await?;
    let snap = match at {
        None => snaps.into_iter().max_by(|a, b| a.time.cmp(&b.time)),
        Some(a) if a.len() >= 4 && a.chars().all(|c| c.is_ascii_hexdigit()) => {
            snaps.into_iter().find(|s| s.id.starts_with(a))
        }
        Some(a) => {
            let limit = nanos(a).ok_or_else(|| {
                DriverError::Target(format!(
                    "--at `{a}` is neither a snapshot id nor a time (2026-12-01T03:00:00Z)"
                ))
            })?;
            snaps
                .into_iter()
                .filter(|s| nanos(&s.time).is_some_and(|t| t <= limit))
                .max_by(|a, b| a.time.cmp(&b.time))
        }
    }
    .ok_or_else(|| {
        DriverError::Target(format!(
            "no snapshot of service `{service}` of unit `{}`{}",
            ctx.unit.name,
            at.map(|a| format!(" matches `{a}`")).unwrap_or_default()
        ))
    })?;
    let container = &w.spec.name;
    if engine
        .inspect(container)
        .await
        .map_err(docker_error)?
        .is_none()
    {
        return Err(DriverError::Target(format!(
            "service `{service}` has no container on the host; apply the unit first (the restore goes into its volume)"
        )));
    }
    match (&b.volume, &b.restore) {
        (Some(v), _) => {
            let (_, path) = mount_of(&d, w, v).expect("checked");
            let file = format!("/{service}-{v}.tar");
            let tar = restic
                .run(
                    &["dump".into(), snap.id.clone(), file],
                    None,
                    "read the snapshot",
                )
                .await?
                .stdout;
            say(&format!("{service}: stopping {container}"));
            engine.stop(container).await.map_err(docker_error)?;
            say(&format!(
                "{service}: restoring {path} from {}",
                snap.short_id
            ));
            engine
                .put_archive(container, path, tar)
                .await
                .map_err(docker_error)?;
            engine.start(container).await.map_err(docker_error)?;
            engine
                .wait_healthy(
                    container,
                    w.spec.healthcheck.as_ref(),
                    Duration::from_secs(300),
                )
                .await
                .map_err(docker_error)?;
        }
        (None, Some(cmd)) => {
            let dump = restic
                .run(
                    &["dump".into(), snap.id.clone(), format!("/{service}.dump")],
                    None,
                    "read the snapshot",
                )
                .await?
                .stdout;
            engine
                .wait_healthy(
                    container,
                    w.spec.healthcheck.as_ref(),
                    Duration::from_secs(300),
                )
                .await
                .map_err(docker_error)?;
            say(&format!(
                "{service}: running {} with {}",
                cmd.join(" "),
                snap.short_id
            ));
            run_in(&engine, container, service, cmd, Some(&dump)).await?;
        }
        (None, None) => {
            return Err(Diagnostic::new(format!(
                "compose.backup.{service} has a `command` but no `restore`: terrace cannot know how to load the dump"
            ))
            .in_file(format!("{}/{UNIT_FILE}", ctx.unit.dir))
            .with_hint("add `restore:` (the command that reads the dump on stdin, such as psql)")
            .into());
        }
    }
    Ok(snap.into_snapshot())
}
