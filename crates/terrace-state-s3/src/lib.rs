//! State in an S3-compatible bucket (AWS, MinIO, R2, SeaweedFS), through
//! `object_store`:
//!
//! ```text
//! <prefix>/<environment>/units/<unit>.json   the unit's record
//! <prefix>/<environment>/locks/<unit>.json   the holder, while locked
//! <prefix>/<environment>/runs/<run-id>.json  one object per run
//! ```
//!
//! A lock is taken by a conditional create (`If-None-Match: *`) of its
//! object, which holds the holder record, so exactly one of two writers
//! gets it and the other is told who holds it. A record is written by
//! compare-and-swap: `If-Match` with the ETag this process read (or
//! `If-None-Match: *` when it read none), so a write based on a stale read
//! fails instead of overwriting another writer's record. Some
//! S3-compatible servers ignore conditional headers: [`S3Backend::open`]
//! checks by creating one probe object twice, and refuses a store that
//! lets the second create through. An environment's records are read
//! with one LIST and parallel GETs, then served from memory (each write
//! updates the copy).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use terrace_core::driver::BoxFuture;
use terrace_core::state::{LockInfo, RunRecord, UnitState};

use base64::Engine as _;
use terrace_state::{RecordCipher, StateBackend, StateError, hostname, is_stale};

/// Where an S3 state lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix, without a trailing `/`.
    pub prefix: String,
    /// `https://host[:port]` of an S3-compatible store; `None`: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// The project root: records already read are kept under its
    /// `.terrace/cache/state-s3/`, by ETag, so a plan that finds every
    /// ETag of the LIST unchanged makes no GET. `None`: no cache.
    pub cache_root: Option<std::path::PathBuf>,
}

/// What the AWS shared files hold for the profile in use (`AWS_PROFILE`,
/// else `default`): keys from the credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`), the
/// region from the config file (`AWS_CONFIG_FILE`, else `~/.aws/config`).
#[derive(Default)]
struct SharedProfile {
    keys: Option<(String, String)>,
    session_token: Option<String>,
    region: Option<String>,
}

impl std::fmt::Debug for SharedProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedProfile")
            .field("keys", &self.keys.is_some())
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The largest shared file read.
const MAX_SHARED_FILE: u64 = 1 << 20;

impl SharedProfile {
    fn from_env() -> Result<Option<SharedProfile>, StateError> {
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let file = |var: &str, rel: &str| {
            std::env::var_os(var)
                .map(std::path::PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(rel)))
        };
        let named = std::env::var("AWS_PROFILE").ok();
        let profile = named.clone().unwrap_or_else(|| "default".to_owned());
        let credentials = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
        let config = file("AWS_CONFIG_FILE", ".aws/config");
        let mut found = SharedProfile::default();
        let mut seen = false;
        if let Some(path) = &credentials
            && let Some(ini) = read_ini(path)?
            && let Some(sec) = ini.section(Some(profile.as_str()))
        {
            seen = true;
            if let (Some(id), Some(secret)) = (
                sec.get("aws_access_key_id"),
                sec.get("aws_secret_access_key"),
            ) {
                found.keys = Some((id.to_owned(), secret.to_owned()));
                found.session_token = sec.get("aws_session_token").map(str::to_owned);
            }
        }
        if let Some(path) = &config
            && let Some(ini) = read_ini(path)?
        {
            // The config file names profiles `[profile NAME]`, except
            // `[default]`.
            let name = if profile == "default" {
                profile.clone()
            } else {
                format!("profile {profile}")
            };
            if let Some(sec) = ini.section(Some(name.as_str())) {
                seen = true;
                found.region = sec.get("region").map(str::to_owned);
            }
        }
        if !seen && named.is_some() {
            return Err(StateError::Remote(format!(
                "AWS_PROFILE names profile `{profile}`, which neither {} nor {} holds",
                credentials.map_or("~/.aws/credentials".to_owned(), |p| p.display().to_string()),
                config.map_or("~/.aws/config".to_owned(), |p| p.display().to_string()),
            )));
        }
        Ok(seen.then_some(found))
    }
}

/// An AWS shared file, parsed; `None` where there is none.
fn read_ini(path: &std::path::Path) -> Result<Option<ini::Ini>, StateError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::Remote(format!("{}: {e}", path.display()))),
    };
    if meta.len() > MAX_SHARED_FILE {
        return Err(StateError::Remote(format!(
            "{} is {} bytes; an AWS shared file over {MAX_SHARED_FILE} is not read",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| StateError::Remote(format!("{}: {e}", path.display())))?;
    ini::Ini::load_from_str(&text).map(Some).map_err(|e| {
        StateError::Remote(format!("{} is not an AWS shared file: {e}", path.display()))
    })
}

/// A record as read: its ETag, for the next write's compare-and-swap.
#[derive(Debug, Clone)]
struct Seen {
    state: Option<UnitState>,
    version: Option<UpdateVersion>,
    /// The object as stored, for the local cache.
    raw: Option<Vec<u8>>,
}

/// State in an S3 bucket.
#[derive(Debug)]
pub struct S3Backend {
    store: Arc<AmazonS3>,
    settings: S3Settings,
    /// Per environment: every record read (one LIST and parallel GETs
    /// the first time), by unit.
    records: Mutex<HashMap<String, HashMap<String, Seen>>>,
    /// Set once the store was found to honour conditional writes.
    checked: tokio::sync::OnceCell<()>,
    /// Encryption at rest of records and runs.
    cipher: Option<Arc<dyn RecordCipher>>,
}

fn s3_error(doing: &str, e: object_store::Error) -> StateError {
    StateError::Remote(format!("{doing}: {e}"))
}

/// The largest object read (a record, a run, a shared document, a
/// Terraform state).
const MAX_OBJECT: u64 = 256 << 20;

/// The most GETs in flight at once.
const PARALLEL: usize = 64;

/// A record kept by ETag in the local cache.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Cached {
    e_tag: String,
    /// The object as stored (sealed when state is encrypted), base64.
    raw: String,
}

impl S3Backend {
    /// A client of the bucket; the first operation checks that the store
    /// honours conditional writes. Credentials come from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`), else the shared profile (`AWS_PROFILE`,
    /// `~/.aws/credentials`), else the instance's role.
    pub fn new(settings: S3Settings) -> Result<S3Backend, StateError> {
        Self::build(settings, None)
    }

    /// [`S3Backend::new`] with these keys instead of the environment's.
    pub fn with_credentials(
        settings: S3Settings,
        access_key: &str,
        secret_key: &str,
    ) -> Result<S3Backend, StateError> {
        Self::build(settings, Some((access_key, secret_key)))
    }

    fn build(settings: S3Settings, keys: Option<(&str, &str)>) -> Result<S3Backend, StateError> {
        if settings.bucket.is_empty() {
            return Err(StateError::Remote(
                "state.bucket is empty; name the bucket terrace keeps state in".to_owned(),
            ));
        }
        // A store that stopped answering fails the run within about 20s,
        // naming it, instead of being retried for object_store's 3 minutes.
        let retry = object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(20),
            ..Default::default()
        };
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(retry)
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60)),
            );
        // Keys given, else the environment's, else the shared profile's.
        let profile = match keys {
            None if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() => SharedProfile::from_env()?,
            _ => None,
        };
        if let Some((id, secret)) = keys {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        } else if let Some(p) = &profile
            && let Some((id, secret)) = &p.keys
        {
            b = b
                .with_access_key_id(id.as_str())
                .with_secret_access_key(secret.as_str());
            if let Some(t) = &p.session_token {
                b = b.with_token(t.as_str());
            }
        }
        let env_region = std::env::var_os("AWS_REGION").is_some()
            || std::env::var_os("AWS_DEFAULT_REGION").is_some();
        if let Some(r) = &settings.region {
            b = b.with_region(r);
        } else if !env_region {
            let r = profile.as_ref().and_then(|p| p.region.as_deref());
            b = b.with_region(r.unwrap_or("us-east-1"));
        }
        if let Some(e) = &settings.endpoint {
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = b
            .build()
            .map_err(|e| StateError::Remote(format!("state bucket {}: {e}", settings.bucket)))?;
        Ok(S3Backend {
            store: Arc::new(store),
            settings,
            records: Mutex::new(HashMap::new()),
            checked: tokio::sync::OnceCell::new(),
            cipher: None,
        })
    }

    /// Records and runs sealed by `cipher` before they are stored.
    pub fn with_cipher(mut self, cipher: Arc<dyn RecordCipher>) -> S3Backend {
        self.cipher = Some(cipher);
        self
    }

    /// What is stored for `plain`.
    fn encode(&self, plain: Vec<u8>) -> Result<Vec<u8>, StateError> {
        terrace_state::seal_with(self.cipher.as_deref(), plain)
    }

    /// The plaintext of what is stored at `at`.
    fn decode(&self, stored: &[u8], at: &str) -> Result<Vec<u8>, StateError> {
        terrace_state::open_with(self.cipher.as_deref(), stored, at)
    }

    /// Object `rel` (under the prefix) as stored, or `None`: what other
    /// tools keep beside the records (Terraform's state).
    pub async fn get_object(&self, rel: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.ready().await?;
        Ok(self.fetch(&self.key(rel)).await?.map(|(bytes, _)| bytes))
    }

    /// Object `key` as stored with its version, or `None`.
    async fn fetch(&self, key: &Path) -> Result<Option<(Vec<u8>, UpdateVersion)>, StateError> {
        let got = match self.store.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(s3_error(&format!("reading {key}"), e)),
        };
        // Sized before it is read: an object planted to exhaust memory is
        // refused unread.
        if got.meta.size > MAX_OBJECT {
            return Err(StateError::Remote(format!(
                "{key} is {} bytes; terrace reads state objects of at most {MAX_OBJECT}",
                got.meta.size
            )));
        }
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(|e| s3_error(&format!("reading {key}"), e))?;
        Ok(Some((bytes.to_vec(), version)))
    }

    /// A record as read from `key`: opened, parsed, kept as stored.
    fn read_seen(
        &self,
        key: &Path,
        raw: Vec<u8>,
        version: UpdateVersion,
    ) -> Result<Seen, StateError> {
        let plain = self.decode(&raw, key.as_ref())?;
        Ok(Seen {
            state: Some(parse(key, &plain)?),
            version: Some(version),
            raw: Some(raw),
        })
    }

    /// Writes object `rel` (under the prefix) as it is.
    pub async fn put_object(&self, rel: &str, bytes: Vec<u8>) -> Result<(), StateError> {
        self.ready().await?;
        let key = self.key(rel);
        self.store
            .put(&key, PutPayload::from(bytes))
            .await
            .map_err(|e| s3_error(&format!("writing {key}"), e))?;
        Ok(())
    }

    /// Where Terraform keeps a unit's state in the bucket (its `s3`
    /// backend, as the `terraform` kind configures it), under the prefix.
    pub fn terraform_state_key(env: &str, unit: &str) -> String {
        format!("{env}/terraform/{unit}.tfstate")
    }

    /// The lock file Terraform's `s3` backend keeps beside the unit's
    /// Terraform state (`use_lockfile`).
    fn terraform_lock_key(&self, env: &str, unit: &str) -> Path {
        self.key(&format!("{}.tflock", Self::terraform_state_key(env, unit)))
    }

    /// The store, once it was found to honour conditional writes.
    async fn ready(&self) -> Result<(), StateError> {
        self.checked
            .get_or_try_init(|| self.check_conditional_writes())
            .await
            .map(drop)
    }

    fn key(&self, rest: &str) -> Path {
        if self.settings.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.settings.prefix))
        }
    }

    fn unit_key(&self, env: &str, unit: &str) -> Result<Path, StateError> {
        terrace_fs::check_name("environment", env).map_err(std::io::Error::from)?;
        terrace_fs::check_name("unit", unit).map_err(std::io::Error::from)?;
        Ok(self.key(&format!("{env}/units/{unit}.json")))
    }

    fn lock_key(&self, env: &str, unit: &str) -> Result<Path, StateError> {
        terrace_fs::check_name("environment", env).map_err(std::io::Error::from)?;
        terrace_fs::check_name("unit", unit).map_err(std::io::Error::from)?;
        Ok(self.key(&format!("{env}/locks/{unit}.json")))
    }

    /// A store that lets a second conditional create through would let
    /// two processes hold one lock: refused.
    async fn check_conditional_writes(&self) -> Result<(), StateError> {
        let probe = self.key(&format!(
            ".terrace-probe/{}-{}",
            hostname(),
            terrace_state::new_run_id()
        ));
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(&probe, PutPayload::from_static(b"1"), create.clone())
            .await
            .map_err(|e| {
                s3_error(
                    &format!("writing to state bucket {}", self.settings.bucket),
                    e,
                )
            })?;
        let second = self
            .store
            .put_opts(&probe, PutPayload::from_static(b"2"), create)
            .await;
        let _ = self.store.delete(&probe).await;
        match second {
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(()),
            Ok(_) => Err(StateError::Remote(format!(
                "the S3 store of bucket {} ignores conditional writes (If-None-Match): two processes could hold one lock; use a store that honours them (AWS S3, R2, MinIO, SeaweedFS)",
                self.settings.bucket
            ))),
            Err(e) => Err(s3_error("checking conditional writes", e)),
        }
    }

    /// Every record of `env`: one LIST, then GETs in parallel of those
    /// whose ETag this machine has not cached.
    async fn load_env(&self, env: &str) -> Result<(), StateError> {
        if self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(env)
        {
            return Ok(());
        }
        terrace_fs::check_name("environment", env).map_err(std::io::Error::from)?;
        let prefix = self.key(&format!("{env}/units"));
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| s3_error(&format!("listing {prefix}"), e))?;
        let cached = self.cache_read(env);
        let mut loaded: Vec<(String, Seen)> = Vec::new();
        let mut fetch = Vec::new();
        for m in metas {
            let Some(name) = m
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".json"))
                .map(str::to_owned)
            else {
                continue;
            };
            // Unchanged since this machine read it: no GET.
            let hit = m.e_tag.as_ref().and_then(|tag| {
                let c = cached.get(&name).filter(|c| &c.e_tag == tag)?;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(&c.raw)
                    .ok()?;
                let plain = self.decode(&raw, m.location.as_ref()).ok()?;
                let state = parse(&m.location, &plain).ok()?;
                Some(Seen {
                    state: Some(state),
                    version: Some(UpdateVersion {
                        e_tag: Some(tag.clone()),
                        version: m.version.clone(),
                    }),
                    raw: Some(raw),
                })
            });
            match hit {
                Some(seen) => loaded.push((name, seen)),
                None => fetch.push((name, m.location)),
            }
        }
        let fetched: Vec<(String, Seen)> = futures::stream::iter(fetch)
            .map(|(name, location)| async move {
                // Listed a moment ago: gone since, it is no record.
                let (raw, version) = self.fetch(&location).await?.ok_or_else(|| {
                    StateError::Remote(format!("{location} was removed while it was read"))
                })?;
                Ok::<_, StateError>((name, self.read_seen(&location, raw, version)?))
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let refreshed = !fetched.is_empty() || loaded.len() != cached.len();
        loaded.extend(fetched);
        let map: HashMap<String, Seen> = loaded.into_iter().collect();
        if refreshed {
            self.cache_write(env, &map);
        }
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(env.to_owned())
            .or_insert(map);
        Ok(())
    }

    /// The cache file of `env`, under the project's `.terrace/cache/`.
    fn cache_rel(&self, env: &str) -> Option<String> {
        self.settings.cache_root.as_ref()?;
        let id = terrace_fs::digest::digest(
            format!(
                "{}\n{}\n{}",
                self.settings.endpoint.as_deref().unwrap_or("aws"),
                self.settings.bucket,
                self.settings.prefix
            )
            .as_bytes(),
        );
        let id = id.trim_start_matches("sha256:").to_owned();
        Some(format!(".terrace/cache/state-s3/{}/{env}.json", &id[..16]))
    }

    fn cache_read(&self, env: &str) -> HashMap<String, Cached> {
        let (Some(root), Some(rel)) = (&self.settings.cache_root, self.cache_rel(env)) else {
            return HashMap::new();
        };
        let path = root.join(&rel);
        // A cache is only ever a regular file of ours, of a sane size.
        let ok = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.file_type().is_file() && m.len() < 256 << 20);
        if !ok {
            return HashMap::new();
        }
        terrace_fs::read(root, &path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn cache_write(&self, env: &str, records: &HashMap<String, Seen>) {
        let (Some(root), Some(rel)) = (&self.settings.cache_root, self.cache_rel(env)) else {
            return;
        };
        let cache: HashMap<&String, Cached> = records
            .iter()
            .filter_map(|(name, seen)| {
                let tag = seen.version.as_ref()?.e_tag.clone()?;
                let raw = base64::engine::general_purpose::STANDARD.encode(seen.raw.as_ref()?);
                Some((name, Cached { e_tag: tag, raw }))
            })
            .collect();
        let Ok(body) = serde_json::to_vec(&cache) else {
            return;
        };
        if let Some(dir) = std::path::Path::new(&rel).parent() {
            let _ = terrace_fs::private_dir(&root.join(dir));
        }
        // Disposable: a failed write costs only speed.
        let _ = terrace_fs::write(root, &rel, &body, terrace_fs::Mode::Private);
    }

    fn seen(&self, env: &str, unit: &str) -> Option<Seen> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(env)
            .and_then(|m| m.get(unit).cloned())
    }

    /// Updates the copy of a loaded environment (one not loaded yet is
    /// read whole when first asked for).
    fn remember(&self, env: &str, unit: &str, seen: Seen) {
        if let Some(m) = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(env)
        {
            m.insert(unit.to_owned(), seen);
        }
    }

    async fn read_lock(&self, env: &str, unit: &str) -> Result<Option<LockInfo>, StateError> {
        let key = self.lock_key(env, unit)?;
        let Some((bytes, _)) = self.fetch(&key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Corrupt {
                path: key.to_string().into(),
                source,
            })
    }

    async fn try_lock(&self, env: &str, unit: &str, holder: &LockInfo) -> Result<bool, StateError> {
        let key = self.lock_key(env, unit)?;
        let body = serde_json::to_vec_pretty(holder).expect("lock info serializes");
        match self
            .store
            .put_opts(
                &key,
                PutPayload::from(body),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(s3_error(&format!("taking lock {key}"), e)),
        }
    }
}

/// A record read from `location`, as the local backend reads its files.
fn parse(location: &Path, bytes: &[u8]) -> Result<UnitState, StateError> {
    terrace_state::parse_state(std::path::Path::new(location.as_ref()), bytes)
}

impl StateBackend for S3Backend {
    fn describe(&self) -> String {
        format!(
            "s3://{}/{}{}",
            self.settings.bucket,
            self.settings.prefix,
            self.settings
                .endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        )
    }

    fn read<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<UnitState>, StateError>> {
        Box::pin(async move {
            self.ready().await?;
            self.unit_key(environment, unit)?;
            self.load_env(environment).await?;
            Ok(self.seen(environment, unit).and_then(|s| s.state))
        })
    }

    fn write<'a>(&'a self, state: &'a UnitState) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            self.ready().await?;
            let key = self.unit_key(&state.environment, &state.unit)?;
            self.load_env(&state.environment).await?;
            let mut body = serde_json::to_vec_pretty(state).expect("state serializes");
            body.push(b'\n');
            let body = self.encode(body)?;
            let stored = body.clone();
            let mode = match self
                .seen(&state.environment, &state.unit)
                .and_then(|s| s.version)
            {
                Some(v) => PutMode::Update(v),
                None => PutMode::Create,
            };
            let put = self
                .store
                .put_opts(
                    &key,
                    PutPayload::from(body),
                    PutOptions {
                        mode,
                        ..Default::default()
                    },
                )
                .await;
            match put {
                Ok(r) => {
                    self.remember(
                        &state.environment,
                        &state.unit,
                        Seen {
                            state: Some(state.clone()),
                            version: Some(UpdateVersion {
                                e_tag: r.e_tag,
                                version: r.version,
                            }),
                            raw: Some(stored),
                        },
                    );
                    Ok(())
                }
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Err(StateError::Conflict {
                    environment: state.environment.clone(),
                    unit: state.unit.clone(),
                }),
                Err(e) => Err(s3_error(&format!("writing {key}"), e)),
            }
        })
    }

    fn remove<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            self.ready().await?;
            let key = self.unit_key(environment, unit)?;
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s3_error(&format!("removing {key}"), e)),
            }
            self.remember(
                environment,
                unit,
                Seen {
                    state: None,
                    version: None,
                    raw: None,
                },
            );
            Ok(())
        })
    }

    fn list<'a>(&'a self, environment: &'a str) -> BoxFuture<'a, Result<Vec<String>, StateError>> {
        Box::pin(async move {
            self.ready().await?;
            self.load_env(environment).await?;
            let mut names: Vec<String> = self
                .records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(environment)
                .map(|m| {
                    m.iter()
                        .filter(|(_, s)| s.state.is_some())
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            Ok(names)
        })
    }

    fn lock<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
        holder: &'a LockInfo,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>> {
        Box::pin(async move {
            self.ready().await?;
            let started = Instant::now();
            let mut taken_over = None;
            loop {
                if self.try_lock(environment, unit, holder).await? {
                    // The record may have moved while another held the
                    // lock: read it again under ours.
                    self.refresh(environment, unit).await?;
                    return Ok(taken_over);
                }
                if let Some(current) = self.read_lock(environment, unit).await? {
                    if is_stale(&current) && taken_over.is_none() {
                        // Its holder ran here and is gone: its lock goes,
                        // with the lock its Terraform left on the unit's
                        // state.
                        let key = self.lock_key(environment, unit)?;
                        let _ = self.store.delete(&key).await;
                        let _ = self
                            .store
                            .delete(&self.terraform_lock_key(environment, unit))
                            .await;
                        taken_over = Some(current);
                        continue;
                    }
                    if started.elapsed() >= wait {
                        return Err(StateError::Locked {
                            environment: environment.to_owned(),
                            unit: unit.to_owned(),
                            stale: false,
                            holder: Box::new(current),
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    }

    fn unlock<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            self.ready().await?;
            if let Some(current) = self.read_lock(environment, unit).await?
                && current.run_id == run_id
            {
                let key = self.lock_key(environment, unit)?;
                self.store
                    .delete(&key)
                    .await
                    .map_err(|e| s3_error(&format!("releasing lock {key}"), e))?;
            }
            Ok(())
        })
    }

    fn force_unlock<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>> {
        Box::pin(async move {
            self.ready().await?;
            let current = self.read_lock(environment, unit).await?;
            if current.is_some() {
                let key = self.lock_key(environment, unit)?;
                self.store
                    .delete(&key)
                    .await
                    .map_err(|e| s3_error(&format!("breaking lock {key}"), e))?;
                // The dead run's Terraform held its own lock file on the
                // unit's Terraform state: it goes with terrace's.
                let tf = self.terraform_lock_key(environment, unit);
                match self.store.delete(&tf).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(s3_error(&format!("breaking lock {tf}"), e)),
                }
            }
            Ok(current)
        })
    }

    fn lock_holder<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>> {
        Box::pin(async move {
            self.ready().await?;
            self.read_lock(environment, unit).await
        })
    }

    fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            self.ready().await?;
            terrace_fs::check_name("environment", &run.environment)
                .map_err(std::io::Error::from)?;
            terrace_fs::check_name("run", &run.id).map_err(std::io::Error::from)?;
            let key = self.key(&format!("{}/runs/{}.json", run.environment, run.id));
            let body = self.encode(serde_json::to_vec_pretty(run).expect("runs serialize"))?;
            self.store
                .put(&key, PutPayload::from(body))
                .await
                .map_err(|e| s3_error(&format!("writing {key}"), e))?;
            Ok(())
        })
    }

    fn runs<'a>(
        &'a self,
        environment: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StateError>> {
        Box::pin(async move {
            self.ready().await?;
            terrace_fs::check_name("environment", environment).map_err(std::io::Error::from)?;
            let prefix = self.key(&format!("{environment}/runs"));
            let mut metas: Vec<object_store::ObjectMeta> = self
                .store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|e| s3_error(&format!("listing {prefix}"), e))?;
            metas.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
            let runs: Vec<RunRecord> = futures::stream::iter(metas)
                .map(|m| async move {
                    let (bytes, _) = self.fetch(&m.location).await?.ok_or_else(|| {
                        StateError::Remote(format!("{} was removed while it was read", m.location))
                    })?;
                    let plain = self.decode(&bytes, m.location.as_ref())?;
                    serde_json::from_slice::<RunRecord>(&plain).map_err(|source| {
                        StateError::Corrupt {
                            path: m.location.to_string().into(),
                            source,
                        }
                    })
                })
                .buffered(PARALLEL)
                .try_collect()
                .await?;
            Ok(runs)
        })
    }

    fn shares_documents(&self) -> bool {
        true
    }

    fn read_document<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StateError>> {
        Box::pin(async move {
            self.ready().await?;
            let key = self.document(name)?;
            match self.fetch(&key).await? {
                Some((bytes, _)) => Ok(Some(self.decode(&bytes, key.as_ref())?)),
                None => Ok(None),
            }
        })
    }

    fn write_document<'a>(
        &'a self,
        name: &'a str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            self.ready().await?;
            let key = self.document(name)?;
            let body = self.encode(bytes)?;
            self.store
                .put(&key, PutPayload::from(body))
                .await
                .map_err(|e| s3_error(&format!("writing {key}"), e))?;
            Ok(())
        })
    }

    fn remove_document<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            self.ready().await?;
            let key = self.document(name)?;
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(s3_error(&format!("removing {key}"), e)),
            }
        })
    }
}

impl S3Backend {
    /// A shared document's object.
    fn document(&self, name: &str) -> Result<Path, StateError> {
        Ok(self.key(&terrace_state::document_key(name)?))
    }

    /// Reads one record again (after taking its lock).
    async fn refresh(&self, env: &str, unit: &str) -> Result<(), StateError> {
        let key = self.unit_key(env, unit)?;
        let seen = match self.fetch(&key).await? {
            Some((raw, version)) => self.read_seen(&key, raw, version)?,
            None => Seen {
                state: None,
                version: None,
                raw: None,
            },
        };
        self.remember(env, unit, seen);
        Ok(())
    }
}
