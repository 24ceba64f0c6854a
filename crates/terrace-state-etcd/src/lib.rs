//! State in etcd v3, through `etcd-client`:
//!
//! ```text
//! <prefix>/<environment>/units/<unit>   the unit's record
//! <prefix>/<environment>/locks/<unit>   the holder, while locked (on a lease)
//! <prefix>/<environment>/runs/<run-id>  one key per run
//! ```
//!
//! A record is written in a transaction that compares the key's
//! `mod_revision` with the one this process read (0 when it read none),
//! so a write based on a stale read fails instead of overwriting another
//! writer's record. A lock is a key created in a transaction that
//! requires it not to exist, attached to a lease this process keeps
//! alive: a holder killed outright stops renewing it, and etcd deletes
//! the lock when the lease's TTL runs out; until then the error names
//! the holder. An environment's records are read with one ranged GET
//! (paged), then served from memory (each write updates the copy).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use terrace_core::driver::BoxFuture;
use terrace_core::state::{LockInfo, RunRecord, UnitState};
use terrace_state::{RecordCipher, StateBackend, StateError, is_stale};

/// TLS to etcd: PEM contents, read by the caller from the project.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed the servers' certificates; `None`: the
    /// system's roots are not consulted, so give one.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key, for servers that require one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client key is a secret: never printed.
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// Where an etcd state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `http://host:port` (loopback only) or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Key prefix, without a trailing `/`.
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    /// How long a lock outlives a holder that stopped renewing it.
    pub lock_ttl: Duration,
}

impl EtcdSettings {
    /// The default time a dead holder's lock lasts.
    pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);
}

/// A record as read: the revision the next write compares against.
#[derive(Debug, Clone)]
struct Seen {
    state: Option<UnitState>,
    /// 0: the key did not exist.
    mod_revision: i64,
}

/// A lock this process holds: its lease, and the task renewing it. The
/// renewal stops when it is dropped, however the lock ends (an error, a
/// cancelled wait), so a lease is never renewed for a lock nobody holds.
#[derive(Debug)]
struct Held {
    lease: i64,
    keeper: tokio::task::AbortHandle,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// State in etcd.
pub struct EtcdBackend {
    settings: EtcdSettings,
    client: tokio::sync::OnceCell<Client>,
    /// Per environment: every record read (one ranged GET the first
    /// time), by unit.
    records: Mutex<HashMap<String, HashMap<String, Seen>>>,
    /// Locks this process holds, by environment and unit.
    held: Mutex<HashMap<(String, String), Held>>,
    cipher: Option<Arc<dyn RecordCipher>>,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("settings", &self.settings)
            .field("encrypted", &self.cipher.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        // Without renewal the leases lapse after their TTL; a run that
        // ends normally revoked them already.
        for (_, h) in self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
        {
            h.keeper.abort();
        }
    }
}

/// Keys per ranged GET: a page stays well under gRPC's message limit.
const PAGE: i64 = 256;

/// The host of `endpoint` (`scheme://host:port[/…]`), brackets removed.
fn endpoint_host(endpoint: &str) -> Option<&str> {
    let rest = endpoint.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next();
    }
    Some(authority.rsplit_once(':').map_or(authority, |(h, _)| h))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The first key after every key that starts with `prefix`.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdBackend {
    /// A client of the cluster; it connects at the first operation.
    /// Plain `http://` is refused to any host but this machine's: state
    /// would cross the network in clear.
    pub fn new(settings: EtcdSettings) -> Result<EtcdBackend, StateError> {
        let bad = |m: String| StateError::Remote(format!("state.endpoints: {m}"));
        if settings.endpoints.is_empty() {
            return Err(bad(
                "none given; list the etcd members, as https://etcd1:2379".to_owned(),
            ));
        }
        for e in &settings.endpoints {
            let host = endpoint_host(e)
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad(format!("`{e}` is not http(s)://host:port")))?;
            if e.starts_with("https://") {
                if settings.tls.is_none() {
                    return Err(bad(format!(
                        "`{e}` is https, and state has no `tls`; give at least its `ca`"
                    )));
                }
            } else if e.starts_with("http://") {
                if settings.tls.is_some() {
                    return Err(bad(format!(
                        "`{e}` is http, and state has `tls`: write https://"
                    )));
                }
                if !is_loopback(host) {
                    return Err(bad(format!(
                        "`{e}` is plain http to another host: state would cross the network in clear; use https:// with `tls`"
                    )));
                }
            } else {
                return Err(bad(format!("`{e}` is neither http:// nor https://")));
            }
        }
        if settings.lock_ttl < Duration::from_secs(5) {
            return Err(StateError::Remote(
                "state.lockTtl is under 5s: a lock could lapse between two renewals".to_owned(),
            ));
        }
        Ok(EtcdBackend {
            settings,
            client: tokio::sync::OnceCell::new(),
            records: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            cipher: None,
        })
    }

    /// Records and runs sealed by `cipher` before they are stored.
    pub fn with_cipher(mut self, cipher: Arc<dyn RecordCipher>) -> EtcdBackend {
        self.cipher = Some(cipher);
        self
    }

    fn err(&self, doing: &str, e: etcd_client::Error) -> StateError {
        StateError::Remote(format!(
            "{doing} at etcd {}: {e}",
            self.settings.endpoints.join(",")
        ))
    }

    /// Deletes `key` only if it is still at `revision` (nobody replaced
    /// it meanwhile): whether it was.
    async fn delete_at(&self, key: &str, revision: i64, doing: &str) -> Result<bool, StateError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client().await?;
        let r = c.txn(txn).await.map_err(|e| self.err(doing, e))?;
        Ok(r.succeeded())
    }

    async fn client(&self) -> Result<Client, StateError> {
        self.client
            .get_or_try_init(|| async {
                let mut o = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(15))
                    .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
                if let Some(tls) = &self.settings.tls {
                    let mut t = TlsOptions::new();
                    if let Some(ca) = &tls.ca {
                        t = t.ca_certificate(Certificate::from_pem(ca));
                    }
                    if let Some((cert, key)) = &tls.identity {
                        t = t.identity(Identity::from_pem(cert, key));
                    }
                    o = o.with_tls(t);
                }
                Client::connect(&self.settings.endpoints, Some(o))
                    .await
                    .map_err(|e| self.err("connecting", e))
            })
            .await
            .cloned()
    }

    fn key(&self, rest: &str) -> String {
        if self.settings.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.settings.prefix)
        }
    }

    fn named_key(&self, env: &str, what: &'static str, name: &str) -> Result<String, StateError> {
        terrace_fs::check_name("environment", env).map_err(std::io::Error::from)?;
        terrace_fs::check_name(what, name).map_err(std::io::Error::from)?;
        Ok(self.key(&format!("{env}/{what}s/{name}")))
    }

    /// Every key under `dir/` (paged, at one revision), in key order, with
    /// the name after `dir/`. Names that are not names terrace writes are
    /// skipped: a planted `../x` never reaches a path.
    async fn range(
        &self,
        dir: &str,
        what: &'static str,
    ) -> Result<Vec<(String, KeyValue)>, StateError> {
        let mut c = self.client().await?;
        let start = format!("{dir}/");
        let end = range_end(start.as_bytes());
        let mut from = start.as_bytes().to_vec();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let mut r = c
                .get(from.clone(), Some(opts))
                .await
                .map_err(|e| self.err(&format!("reading {start}"), e))?;
            if revision == 0 {
                revision = r.header().map_or(0, |h| h.revision());
            }
            let more = r.more();
            let kvs = r.take_kvs();
            let Some(last) = kvs.last().map(|kv| kv.key().to_vec()) else {
                break;
            };
            for kv in kvs {
                let name = kv
                    .key()
                    .strip_prefix(start.as_bytes())
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .filter(|n| terrace_fs::check_name(what, n).is_ok())
                    .map(str::to_owned);
                if let Some(name) = name {
                    out.push((name, kv));
                }
            }
            if !more {
                break;
            }
            from = last;
            from.push(0);
        }
        Ok(out)
    }

    /// A record's plaintext parsed, as the local backend reads its files.
    fn parse(&self, key: &str, stored: &[u8]) -> Result<UnitState, StateError> {
        let plain = terrace_state::open_with(self.cipher.as_deref(), stored, key)?;
        terrace_state::parse_state(std::path::Path::new(key), &plain)
    }

    /// Every record of `env`, the first time it is asked for.
    async fn load_env(&self, env: &str) -> Result<(), StateError> {
        if self.lock_records().contains_key(env) {
            return Ok(());
        }
        terrace_fs::check_name("environment", env).map_err(std::io::Error::from)?;
        let dir = self.key(&format!("{env}/units"));
        let mut map = HashMap::new();
        for (name, kv) in self.range(&dir, "unit").await? {
            let key = format!("{dir}/{name}");
            let state = self.parse(&key, kv.value())?;
            map.insert(
                name,
                Seen {
                    state: Some(state),
                    mod_revision: kv.mod_revision(),
                },
            );
        }
        self.lock_records().entry(env.to_owned()).or_insert(map);
        Ok(())
    }

    fn lock_records(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Seen>>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn seen(&self, env: &str, unit: &str) -> Option<Seen> {
        self.lock_records()
            .get(env)
            .and_then(|m| m.get(unit).cloned())
    }

    /// Updates the copy of a loaded environment (one not loaded yet is
    /// read whole when first asked for).
    fn remember(&self, env: &str, unit: &str, seen: Seen) {
        if let Some(m) = self.lock_records().get_mut(env) {
            m.insert(unit.to_owned(), seen);
        }
    }

    /// Reads one record again (after taking its lock).
    async fn refresh(&self, env: &str, unit: &str) -> Result<(), StateError> {
        let key = self.named_key(env, "unit", unit)?;
        let mut c = self.client().await?;
        let r = c
            .get(key.clone(), None)
            .await
            .map_err(|e| self.err(&format!("reading {key}"), e))?;
        let seen = match r.kvs().first() {
            Some(kv) => Seen {
                state: Some(self.parse(&key, kv.value())?),
                mod_revision: kv.mod_revision(),
            },
            None => Seen {
                state: None,
                mod_revision: 0,
            },
        };
        self.remember(env, unit, seen);
        Ok(())
    }

    /// The holder a lock key names, and the key's revision.
    fn holder(key: &str, kv: &KeyValue) -> Result<(LockInfo, i64), StateError> {
        serde_json::from_slice(kv.value())
            .map(|h| (h, kv.mod_revision()))
            .map_err(|source| StateError::Corrupt {
                path: key.into(),
                source,
            })
    }

    async fn read_lock(
        &self,
        env: &str,
        unit: &str,
    ) -> Result<Option<(LockInfo, i64)>, StateError> {
        let key = self.named_key(env, "lock", unit)?;
        let mut c = self.client().await?;
        let r = c
            .get(key.clone(), None)
            .await
            .map_err(|e| self.err(&format!("reading lock {key}"), e))?;
        r.kvs().first().map(|kv| Self::holder(&key, kv)).transpose()
    }

    /// A lease of the lock TTL, renewed every third of it by a task until
    /// the lock is released or this process ends.
    async fn lease(&self) -> Result<Held, StateError> {
        let mut c = self.client().await?;
        let ttl = self.settings.lock_ttl;
        let lease = c
            .lease_grant(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX), None)
            .await
            .map_err(|e| self.err("granting a lock lease", e))?
            .id();
        let (mut keeper, mut answers) = c
            .lease_keep_alive(lease)
            .await
            .map_err(|e| self.err("renewing a lock lease", e))?;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                // A renewal that takes longer than a third of the TTL is
                // given up and tried on a new stream.
                let renewed = tokio::time::timeout(ttl / 3, async {
                    match keeper.keep_alive().await {
                        Ok(()) => answers.message().await.ok().flatten().map(|a| a.ttl()),
                        Err(_) => None,
                    }
                })
                .await
                .ok()
                .flatten();
                match renewed {
                    // Gone: etcd no longer knows it; nothing to renew.
                    Some(ttl) if ttl <= 0 => return,
                    Some(_) => {}
                    // The stream broke (a member restarted): open another
                    // while the lease may still be alive.
                    None => match c.lease_keep_alive(lease).await {
                        Ok((k, a)) => (keeper, answers) = (k, a),
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    },
                }
            }
        });
        Ok(Held {
            lease,
            keeper: task.abort_handle(),
        })
    }

    /// Gives a lease up: its keys go with it.
    async fn release(&self, held: Held) {
        held.keeper.abort();
        if let Ok(mut c) = self.client().await {
            let _ = c.lease_revoke(held.lease).await;
        }
    }

    /// The lease of the lock this process holds on the unit, if it holds one.
    fn held_lease(&self, env: &str, unit: &str) -> Option<i64> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(env.to_owned(), unit.to_owned()))
            .map(|h| h.lease)
    }
}

impl StateBackend for EtcdBackend {
    fn describe(&self) -> String {
        format!(
            "etcd://{}/{}",
            self.settings
                .endpoints
                .iter()
                .map(|e| e.split_once("://").map_or(e.as_str(), |(_, r)| r))
                .collect::<Vec<_>>()
                .join(","),
            self.settings.prefix
        )
    }

    fn read<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<UnitState>, StateError>> {
        Box::pin(async move {
            self.named_key(environment, "unit", unit)?;
            self.load_env(environment).await?;
            Ok(self.seen(environment, unit).and_then(|s| s.state))
        })
    }

    fn write<'a>(&'a self, state: &'a UnitState) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let key = self.named_key(&state.environment, "unit", &state.unit)?;
            self.load_env(&state.environment).await?;
            let mut body = serde_json::to_vec_pretty(state).expect("state serializes");
            body.push(b'\n');
            let body = terrace_state::seal_with(self.cipher.as_deref(), body)?;
            let read_at = self
                .seen(&state.environment, &state.unit)
                .map_or(0, |s| s.mod_revision);
            // Under this process's lock, the write also requires the lock
            // still to be on its lease: a lock that lapsed (etcd did not
            // hear from this process within the TTL) may be another's now.
            let mut when = vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                read_at,
            )];
            let lease = self.held_lease(&state.environment, &state.unit);
            let lock_key = self.named_key(&state.environment, "lock", &state.unit)?;
            if let Some(lease) = lease {
                when.push(Compare::lease(lock_key.clone(), CompareOp::Equal, lease));
            }
            let txn = Txn::new()
                .when(when)
                .and_then([TxnOp::put(key.clone(), body, None)])
                .or_else([TxnOp::get(lock_key.clone(), None)]);
            let mut c = self.client().await?;
            let r = c
                .txn(txn)
                .await
                .map_err(|e| self.err(&format!("writing {key}"), e))?;
            if !r.succeeded() {
                let lock_lease = r.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Get(g) => Some(g.kvs().first().map(KeyValue::lease)),
                    _ => None,
                });
                if let Some(ours) = lease
                    && lock_lease.flatten() != Some(ours)
                {
                    return Err(StateError::Remote(format!(
                        "the lock of unit `{}` in environment `{}` lapsed while this run held it (etcd did not hear from it within state.lockTtl); nothing was written",
                        state.unit, state.environment
                    )));
                }
                return Err(StateError::Conflict {
                    environment: state.environment.clone(),
                    unit: state.unit.clone(),
                });
            }
            // A missing header leaves revision 0: the next write is then
            // refused as a conflict, never let through.
            let written = r.header().map_or(0, |h| h.revision());
            self.remember(
                &state.environment,
                &state.unit,
                Seen {
                    state: Some(state.clone()),
                    mod_revision: written,
                },
            );
            Ok(())
        })
    }

    fn remove<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let key = self.named_key(environment, "unit", unit)?;
            let mut c = self.client().await?;
            c.delete(key.clone(), None)
                .await
                .map_err(|e| self.err(&format!("removing {key}"), e))?;
            self.remember(
                environment,
                unit,
                Seen {
                    state: None,
                    mod_revision: 0,
                },
            );
            Ok(())
        })
    }

    fn list<'a>(&'a self, environment: &'a str) -> BoxFuture<'a, Result<Vec<String>, StateError>> {
        Box::pin(async move {
            self.load_env(environment).await?;
            let mut names: Vec<String> = self
                .lock_records()
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
            let key = self.named_key(environment, "lock", unit)?;
            let body = serde_json::to_vec_pretty(holder).expect("lock info serializes");
            // Renewed from the start: a wait longer than the TTL must not
            // let the lease lapse before the lock is taken.
            let held = self.lease().await?;
            let started = Instant::now();
            let mut taken_over = None;
            let outcome = loop {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        body.clone(),
                        Some(PutOptions::new().with_lease(held.lease)),
                    )])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let mut c = match self.client().await {
                    Ok(c) => c,
                    Err(e) => break Err(e),
                };
                let r = match c.txn(txn).await {
                    Ok(r) => r,
                    Err(e) => break Err(self.err(&format!("taking lock {key}"), e)),
                };
                if r.succeeded() {
                    break Ok(());
                }
                let current = r.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                    _ => None,
                });
                if let Some(kv) = current {
                    let (current, revision) = match Self::holder(&key, &kv) {
                        Ok(h) => h,
                        Err(e) => break Err(e),
                    };
                    if is_stale(&current) && taken_over.is_none() {
                        // Its holder ran here and is gone: removed only
                        // if nobody replaced it meanwhile.
                        match self
                            .delete_at(&key, revision, &format!("breaking lock {key}"))
                            .await
                        {
                            Err(e) => break Err(e),
                            // Replaced meanwhile: looked at again.
                            Ok(false) => continue,
                            Ok(true) => {}
                        }
                        taken_over = Some(current);
                        continue;
                    }
                    if started.elapsed() >= wait {
                        break Err(StateError::Locked {
                            environment: environment.to_owned(),
                            unit: unit.to_owned(),
                            stale: false,
                            holder: Box::new(current),
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            match outcome {
                Ok(()) => {
                    let previous = self
                        .held
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert((environment.to_owned(), unit.to_owned()), held);
                    if let Some(p) = previous {
                        self.release(p).await;
                    }
                    // The record may have moved while another held the
                    // lock: read it again under ours. If that fails, the
                    // lock is given back: the caller never unlocks a lock
                    // it was not given.
                    if let Err(e) = self.refresh(environment, unit).await {
                        let ours = self
                            .held
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&(environment.to_owned(), unit.to_owned()));
                        if let Some(h) = ours {
                            self.release(h).await;
                        }
                        return Err(e);
                    }
                    Ok(taken_over)
                }
                Err(e) => {
                    self.release(held).await;
                    Err(e)
                }
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
            let ours = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&(environment.to_owned(), unit.to_owned()));
            match self.read_lock(environment, unit).await? {
                Some((current, revision)) if current.run_id == run_id => {
                    let key = self.named_key(environment, "lock", unit)?;
                    self.delete_at(&key, revision, &format!("releasing lock {key}"))
                        .await?;
                }
                _ => {}
            }
            if let Some(h) = ours {
                self.release(h).await;
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
            let current = self.read_lock(environment, unit).await?;
            if let Some((holder, revision)) = &current {
                // Only the lock read: one taken meanwhile is another's.
                let key = self.named_key(environment, "lock", unit)?;
                let deleted = self
                    .delete_at(&key, *revision, &format!("breaking lock {key}"))
                    .await?;
                if !deleted {
                    return Err(StateError::Remote(format!(
                        "the lock of unit `{unit}` changed hands while it was broken (it was {holder}); look again with `terrace state show {unit}`"
                    )));
                }
            }
            Ok(current.map(|(h, _)| h))
        })
    }

    fn lock_holder<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>> {
        Box::pin(async move {
            Ok(self
                .read_lock(environment, unit)
                .await?
                .map(|(holder, _)| holder))
        })
    }

    fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let key = self.named_key(&run.environment, "run", &run.id)?;
            let body = terrace_state::seal_with(
                self.cipher.as_deref(),
                serde_json::to_vec_pretty(run).expect("runs serialize"),
            )?;
            let mut c = self.client().await?;
            c.put(key.clone(), body, None)
                .await
                .map_err(|e| self.err(&format!("writing {key}"), e))?;
            Ok(())
        })
    }

    fn runs<'a>(
        &'a self,
        environment: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StateError>> {
        Box::pin(async move {
            terrace_fs::check_name("environment", environment).map_err(std::io::Error::from)?;
            let dir = self.key(&format!("{environment}/runs"));
            self.range(&dir, "run")
                .await?
                .into_iter()
                .map(|(name, kv)| {
                    let key = format!("{dir}/{name}");
                    let plain = terrace_state::open_with(self.cipher.as_deref(), kv.value(), &key)?;
                    serde_json::from_slice::<RunRecord>(&plain).map_err(|source| {
                        StateError::Corrupt {
                            path: key.into(),
                            source,
                        }
                    })
                })
                .collect()
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
            let key = self.key(&terrace_state::document_key(name)?);
            let mut c = self.client().await?;
            let r = c
                .get(key.clone(), None)
                .await
                .map_err(|e| self.err(&format!("reading {key}"), e))?;
            r.kvs()
                .first()
                .map(|kv| terrace_state::open_with(self.cipher.as_deref(), kv.value(), &key))
                .transpose()
        })
    }

    fn write_document<'a>(
        &'a self,
        name: &'a str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let key = self.key(&terrace_state::document_key(name)?);
            let body = terrace_state::seal_with(self.cipher.as_deref(), bytes)?;
            let mut c = self.client().await?;
            c.put(key.clone(), body, None)
                .await
                .map_err(|e| self.err(&format!("writing {key}"), e))?;
            Ok(())
        })
    }

    fn remove_document<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let key = self.key(&terrace_state::document_key(name)?);
            let mut c = self.client().await?;
            c.delete(key.clone(), None)
                .await
                .map_err(|e| self.err(&format!("removing {key}"), e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoints: &[&str], tls: bool) -> EtcdSettings {
        EtcdSettings {
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            prefix: "terrace/p".to_owned(),
            tls: tls.then(EtcdTls::default),
            lock_ttl: EtcdSettings::DEFAULT_LOCK_TTL,
        }
    }

    #[test]
    fn plain_http_is_refused_beyond_this_machine() {
        for ok in [
            "http://127.0.0.1:2379",
            "http://localhost:2379",
            "http://[::1]:2379",
        ] {
            assert!(EtcdBackend::new(settings(&[ok], false)).is_ok(), "{ok}");
        }
        let e = EtcdBackend::new(settings(&["http://10.0.0.5:2379"], false))
            .expect_err("plain http to another host");
        assert!(e.to_string().contains("in clear"), "{e}");
        let e = EtcdBackend::new(settings(&["https://etcd:2379"], false))
            .expect_err("https without tls");
        assert!(e.to_string().contains("`ca`"), "{e}");
        assert!(EtcdBackend::new(settings(&["https://etcd:2379"], true)).is_ok());
        for bad in ["etcd:2379", "ftp://x:1", "http://:2379", ""] {
            assert!(
                EtcdBackend::new(settings(&[bad], false)).is_err(),
                "{bad} is refused"
            );
        }
        assert!(EtcdBackend::new(settings(&[], false)).is_err());
    }

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(range_end(b"a/units/"), b"a/units0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn the_client_key_is_never_printed() {
        let tls = EtcdTls {
            ca: None,
            identity: Some((b"cert".to_vec(), b"PRIVATE KEY 123".to_vec())),
        };
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }
}
