//! The daemon's HTTP side: webhooks that trigger an immediate fetch,
//! `/healthz`, `/readyz` and `/metrics` (Prometheus text format).
//!
//! Webhooks are accepted only with a secret configured, and only when
//! signed with it: GitHub (`X-Hub-Signature-256: sha256=<hex>` over the
//! body), Gitea and Forgejo (`X-Gitea-Signature`/`X-Forgejo-Signature`:
//! `<hex>`), GitLab (`X-Gitlab-Token`: the secret itself) and a generic
//! HMAC (`X-Signature: sha256=<hex>`). Comparisons take constant time. A
//! bad signature is 401 and counted; a body over 1 MiB is 413; a delivery
//! seen before (its delivery id, else the body's digest) is acknowledged
//! and does not trigger again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Where the daemon keeps what the API paused.
const PAUSED_FILE: &str = "paused.json";
/// The largest webhook body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// How many delivery ids are remembered to ignore replays.
const REMEMBERED: usize = 4096;

/// What the HTTP side shares with the reconcile loop.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set by a webhook: fetch now.
    pub trigger: tokio::sync::Notify,
    /// The webhook secret; `None`: webhooks are refused.
    pub secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// Tokens of the JSON API (`Authorization: Bearer`); the write token
    /// reads too. Neither: the API is served on loopback only.
    pub read_token: Option<zeroize::Zeroizing<String>>,
    pub write_token: Option<zeroize::Zeroizing<String>>,
    pub metrics: Mutex<Metrics>,
    pub(crate) seen: Mutex<VecDeque<String>>,
    /// The daemon's view of every unit it touched.
    pub units: Mutex<BTreeMap<String, UnitView>>,
    /// Units the API paused.
    pub paused: Mutex<std::collections::BTreeSet<String>>,
    /// A revision the API approved, for the loop to apply.
    pub approved: Mutex<Option<String>>,
    /// `serve.json`'s directory, and the work tree's state, for reads.
    pub workdir: std::path::PathBuf,
    /// The environment served (known after the first reconcile).
    pub environment: Mutex<Option<String>>,
    /// The project's layers, lowest first.
    pub layers: Mutex<Vec<String>>,
    /// The state directory runs are read from; `None`: the daemon's work
    /// tree's.
    pub state_dir: Option<std::path::PathBuf>,
    /// A dashboard without the daemon (`terrace dashboard`): nothing can
    /// be changed through it.
    pub read_only: bool,
    /// The daemon's runs, their logs, and the actions taken.
    pub history: crate::runs::History,
    /// Each unit's last plan or apply report (sealed by the engine).
    pub reports: Mutex<BTreeMap<String, terrace_engine::run::UnitReport>>,
    /// The project as last reconciled, for unit pages.
    pub engine: Mutex<Option<Arc<terrace_engine::Engine>>>,
    /// What woke the loop up (a webhook, an API call).
    pub wake: Mutex<Option<crate::runs::Trigger>>,
    /// Layers the API paused.
    pub paused_layers: Mutex<std::collections::BTreeSet<String>>,
    /// What this replica shares with the others through a remote state
    /// backend.
    pub(crate) replica: crate::replicas::Replica,
}

/// What the API paused, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Paused {
    units: std::collections::BTreeSet<String>,
    layers: std::collections::BTreeSet<String>,
    layer_of: BTreeMap<String, String>,
}

impl Paused {
    /// Whether unit `name` (of `layer`, when known) is held back.
    pub fn holds(&self, name: &str, layer: Option<&str>) -> bool {
        self.units.contains(name)
            || layer
                .or_else(|| self.layer_of.get(name).map(String::as_str))
                .is_some_and(|l| self.layers.contains(l))
    }
}

/// What the API says of a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitView {
    /// `applied`, `unchanged`, `failed`, `skipped`, `planned`,
    /// `approval`, `paused`, `drift`.
    pub state: String,
    pub layer: String,
    pub kind: String,
    pub revision: String,
    /// Why it waits, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The units it depends on (the graph's edges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// The daemon's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles by outcome (`applied`, `failed`, `unchanged`, `error`).
    pub reconciles: BTreeMap<String, u64>,
    /// Seconds each reconcile of a new revision took.
    pub durations: Vec<f64>,
    /// Git fetches by outcome (`ok`, `error`).
    pub fetches: BTreeMap<String, u64>,
    /// Webhook requests by provider and result.
    pub webhooks: BTreeMap<(String, String), u64>,
    /// Unit applies by outcome.
    pub units: BTreeMap<String, u64>,
    /// The last revision applied whole.
    pub applied_revision: Option<String>,
    /// Whether a reconcile has finished since start.
    pub ready: bool,
    /// Seconds each unit's apply took, by layer.
    pub layer_durations: BTreeMap<String, Vec<f64>>,
    /// Units the last drift check found drifted.
    pub drifted: usize,
}

/// Histogram buckets of reconcile durations, in seconds.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl Metrics {
    /// The Prometheus text exposition of every figure.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        };
        family(
            "terrace_reconciles_total",
            "counter",
            "Reconciles of the Git source, by outcome.",
        );
        let mut lines = String::new();
        for (outcome, n) in &self.reconciles {
            lines.push_str(&format!(
                "terrace_reconciles_total{{outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        out.push_str(&lines);
        out.push_str("# HELP terrace_reconcile_duration_seconds How long a reconcile of a new revision took.\n# TYPE terrace_reconcile_duration_seconds histogram\n");
        for b in BUCKETS {
            let n = self.durations.iter().filter(|d| **d <= b).count();
            out.push_str(&format!(
                "terrace_reconcile_duration_seconds_bucket{{le=\"{b}\"}} {n}\n"
            ));
        }
        out.push_str(&format!(
            "terrace_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}\nterrace_reconcile_duration_seconds_sum {}\nterrace_reconcile_duration_seconds_count {}\n",
            self.durations.len(),
            self.durations.iter().sum::<f64>(),
            self.durations.len()
        ));
        out.push_str("# HELP terrace_git_fetches_total Fetches of the Git remote, by outcome.\n# TYPE terrace_git_fetches_total counter\n");
        for (outcome, n) in &self.fetches {
            out.push_str(&format!(
                "terrace_git_fetches_total{{outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP terrace_webhook_requests_total Webhook requests, by provider and result.\n# TYPE terrace_webhook_requests_total counter\n");
        for ((provider, result), n) in &self.webhooks {
            out.push_str(&format!(
                "terrace_webhook_requests_total{{provider=\"{provider}\",result=\"{result}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP terrace_unit_applies_total Unit applies, by outcome.\n# TYPE terrace_unit_applies_total counter\n");
        for (outcome, n) in &self.units {
            out.push_str(&format!(
                "terrace_unit_applies_total{{outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP terrace_unit_apply_duration_seconds How long applying a unit took, by layer.\n# TYPE terrace_unit_apply_duration_seconds histogram\n");
        for (layer, durations) in &self.layer_durations {
            for b in BUCKETS {
                let n = durations.iter().filter(|d| **d <= b).count();
                out.push_str(&format!(
                    "terrace_unit_apply_duration_seconds_bucket{{layer=\"{layer}\",le=\"{b}\"}} {n}\n"
                ));
            }
            out.push_str(&format!(
                "terrace_unit_apply_duration_seconds_bucket{{layer=\"{layer}\",le=\"+Inf\"}} {}\nterrace_unit_apply_duration_seconds_sum{{layer=\"{layer}\"}} {}\nterrace_unit_apply_duration_seconds_count{{layer=\"{layer}\"}} {}\n",
                durations.len(),
                durations.iter().sum::<f64>(),
                durations.len()
            ));
        }
        out.push_str(&format!(
            "# HELP terrace_drifted_units Units the last drift check found drifted.\n# TYPE terrace_drifted_units gauge\nterrace_drifted_units {}\n",
            self.drifted
        ));
        out.push_str("# HELP terrace_applied_revision_info The last revision applied whole.\n# TYPE terrace_applied_revision_info gauge\n");
        if let Some(rev) = &self.applied_revision {
            out.push_str(&format!(
                "terrace_applied_revision_info{{revision=\"{rev}\"}} 1\n"
            ));
        }
        out
    }
}

impl Shared {
    pub fn new(secret: Option<zeroize::Zeroizing<Vec<u8>>>) -> Shared {
        Shared {
            secret,
            ..Shared::default()
        }
    }

    /// A read-only dashboard's (`terrace dashboard`): runs from
    /// `state_dir`, nothing can be changed.
    pub fn read_only(state_dir: std::path::PathBuf, workdir: std::path::PathBuf) -> Shared {
        Shared {
            state_dir: Some(state_dir),
            read_only: true,
            workdir,
            ..Shared::default()
        }
    }

    /// Whether the request may read (`write`: may change things; never
    /// on a read-only dashboard).
    fn allowed(&self, headers: &HeaderMap, write: bool) -> bool {
        if write && self.read_only {
            return false;
        }
        let given = header(headers, "authorization").and_then(|h| h.strip_prefix("Bearer "));
        let matches = |t: &Option<zeroize::Zeroizing<String>>| {
            t.as_ref()
                .zip(given)
                .is_some_and(|(t, g)| same(t.as_bytes(), g.as_bytes()))
        };
        if self.read_token.is_none() && self.write_token.is_none() {
            // Served on loopback only (checked at start).
            return true;
        }
        matches(&self.write_token) || (!write && matches(&self.read_token))
    }

    /// What is paused now: units, and layers whole.
    pub fn paused_units(&self) -> Paused {
        Paused {
            units: self
                .paused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            layers: self
                .paused_layers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            layer_of: self
                .units
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(n, u)| (n.clone(), u.layer.clone()))
                .collect(),
        }
    }

    /// Keeps what is paused in `paused.json` of the work directory, so a
    /// restarted daemon still holds it.
    fn save_paused(&self) {
        let units: Vec<String> = self
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        let layers: Vec<String> = self
            .paused_layers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        let text = serde_json::json!({"units": units, "layers": layers}).to_string();
        let _ = terrace_fs::atomic::write(
            &self.workdir.join(PAUSED_FILE),
            text.as_bytes(),
            terrace_fs::Mode::Private,
        );
    }

    /// Pauses or resumes `name` in `set` (the units' or the layers'),
    /// keeps it on disk, and on resume reconciles at once.
    fn set_paused(
        &self,
        set: &Mutex<std::collections::BTreeSet<String>>,
        name: String,
        pause: bool,
    ) {
        {
            let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
            if pause {
                set.insert(name);
            } else {
                set.remove(&name);
            }
        }
        self.save_paused();
        if !pause {
            self.wake(crate::runs::Trigger::Manual);
        }
    }

    /// What a daemon before this one left paused.
    pub fn load_paused(&self) {
        // None left (or another replica resumed them all): nothing paused.
        let v = std::fs::read_to_string(self.workdir.join(PAUSED_FILE))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .unwrap_or_default();
        let names = |key: &str| -> std::collections::BTreeSet<String> {
            v[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        };
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner) = names("units");
        *self
            .paused_layers
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = names("layers");
    }

    /// Wakes the loop up now, saying why.
    pub fn wake(&self, why: crate::runs::Trigger) {
        *self.wake.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        self.trigger.notify_one();
    }

    /// Who made a write request: the name the client gave
    /// (`X-Terrace-Actor`), with the credential that allowed it; and the
    /// address it came from.
    fn actor(&self, headers: &HeaderMap, extensions: &axum::http::Extensions) -> (String, String) {
        let by = if self.write_token.is_some() {
            "write token"
        } else {
            "loopback, no token"
        };
        let who = match header(headers, "x-terrace-actor").map(str::trim) {
            Some(name) if !name.is_empty() => {
                let name: String = name.chars().take(60).collect();
                format!("{name} ({by})")
            }
            _ => by.to_owned(),
        };
        let from = extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        (who, from)
    }

    /// The runs the state backend recorded (`terrace dashboard`: every
    /// `apply` and `destroy`), in the daemon's terms.
    async fn state_runs(&self) -> Result<Vec<crate::runs::Run>, String> {
        use terrace_state::StateBackend;
        let Some(env) = self
            .environment
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return Ok(Vec::new());
        };
        let dir = self.state_dir.clone().unwrap_or_else(|| {
            self.workdir
                .join("tree")
                .join(terrace_core::config::WORK_DIR)
                .join("state")
        });
        let backend = terrace_state::LocalBackend::new(dir);
        let records = backend.runs(&env).await.map_err(|e| e.to_string())?;
        let layers: BTreeMap<String, String> = self
            .units
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(n, u)| (n.clone(), u.layer.clone()))
            .collect();
        Ok(records
            .into_iter()
            .enumerate()
            .map(|(i, r)| crate::runs::Run::from_record(i as u64 + 1, &r, &layers))
            .collect())
    }

    fn count(&self, provider: &str, result: &str) {
        let mut m = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        *m.webhooks
            .entry((provider.to_owned(), result.to_owned()))
            .or_default() += 1;
    }

    /// Whether `delivery` is new (and remembers it).
    fn first_time(&self, delivery: String) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(&delivery) {
            return false;
        }
        if seen.len() == REMEMBERED {
            seen.pop_front();
        }
        seen.push_back(delivery);
        true
    }
}

/// GETs `url` (http or https) and reads the JSON answer; `token` goes
/// as `Authorization: Bearer`.
pub async fn get_json(url: &str, token: Option<&str>) -> Result<serde_json::Value, String> {
    use http_body_util::BodyExt;
    let client = client()?;
    let mut request = hyper::Request::get(url).header(header::USER_AGENT, "terrace");
    if let Some(t) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request
        .body(http_body_util::Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = answer.status();
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))
}

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/hooks/{provider}", post(webhook))
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/units", get(api_units))
        .route("/api/v1/runs", get(api_runs))
        .route("/api/v1/approval", get(api_approval))
        .route("/api/v1/reconcile", post(api_reconcile))
        .route("/api/v1/approve", post(api_approve))
        .route("/api/v1/units/{unit}", get(api_unit))
        .route("/api/v1/units/{unit}/{action}", post(api_pause))
        .route("/api/v1/layers/{layer}/{action}", post(api_pause_layer))
        .route("/api/v1/runs/{id}", get(api_run))
        .route("/api/v1/runs/{id}/log", get(api_run_log))
        .route("/api/v1/actions", get(api_actions))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// Serves the routes on `listener` until `stop` resolves.
pub async fn serve_until(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(shared).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
}

/// Why a write is refused: 403 on a read-only dashboard, 401 without the
/// write token; `None` when it may go on.
fn may_write(shared: &Shared, headers: &HeaderMap) -> Option<axum::response::Response> {
    if shared.read_only {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "a read-only dashboard (terrace dashboard): changes go through `terrace apply`, or a running `terrace serve`\n",
            )
                .into_response(),
        );
    }
    (!shared.allowed(headers, true)).then(denied)
}

/// A client for http and https (the system's roots, ring's TLS).
pub(crate) type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<Bytes>,
>;

pub(crate) fn client() -> Result<Client, String> {
    terrace_kube::tls_provider();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

fn denied() -> axum::response::Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a token is needed: Authorization: Bearer <token>\n",
    )
        .into_response()
}

fn json(value: &serde_json::Value) -> axum::response::Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{value}\n"),
    )
        .into_response()
}

async fn api_status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !shared.allowed(&headers, false) {
        return denied();
    }
    let status = crate::Status::load(&shared.workdir);
    let paused: Vec<String> = shared
        .paused
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    let layers = shared
        .layers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    json(&serde_json::json!({
        "readOnly": shared.read_only,
        "layers": layers,
        "checkedOut": status.checked_out,
        "applied": status.applied,
        "pending": status.pending,
        "pendingRevision": status.pending_revision,
        "held": status.held,
        "paused": paused,
        "pausedLayers": shared
            .paused_layers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect::<Vec<_>>(),
    }))
}

async fn api_units(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !shared.allowed(&headers, false) {
        return denied();
    }
    let units = shared
        .units
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    json(&serde_json::to_value(units).unwrap_or_default())
}

async fn api_runs(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !shared.allowed(&headers, false) {
        return denied();
    }
    if shared.state_dir.is_none() {
        return json(&serde_json::to_value(shared.history.runs()).unwrap_or_default());
    }
    match shared.state_runs().await {
        Ok(runs) => json(&serde_json::to_value(runs).unwrap_or_default()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// One run, with its log so far.
async fn api_run(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !shared.allowed(&headers, false) {
        return denied();
    }
    let run = if shared.state_dir.is_none() {
        shared.history.run(id)
    } else {
        shared
            .state_runs()
            .await
            .ok()
            .and_then(|runs| runs.into_iter().find(|r| r.id == id))
    };
    let Some(run) = run else {
        return (StatusCode::NOT_FOUND, format!("no run {id} is kept\n")).into_response();
    };
    let (log, running) = shared.history.log(id).unwrap_or_default();
    let mut value = serde_json::to_value(run).unwrap_or_default();
    value["log"] = serde_json::json!(log);
    value["running"] = serde_json::json!(running);
    json(&value)
}

/// A run's log as server-sent events: the lines so far, then each new
/// line while it runs (`event: line`), then `event: end`.
async fn api_run_log(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> axum::response::Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    if !shared.allowed(&headers, false) {
        return denied();
    }
    // Subscribed before the lines so far are read: none is missed (one
    // may come twice, and is dropped by its number).
    let follow = shared.history.lines.subscribe();
    let Some((so_far, running)) = shared.history.log(id) else {
        return (StatusCode::NOT_FOUND, format!("no run {id} is kept\n")).into_response();
    };
    let seen = so_far.len();
    let first: Vec<Result<Event, std::convert::Infallible>> = so_far
        .into_iter()
        .enumerate()
        .map(|(n, l)| Ok(Event::default().event("line").id(n.to_string()).data(l)))
        .collect();
    let head = futures::stream::iter(first);
    let tail = futures::stream::unfold(running.then_some(follow), move |rx| async move {
        use tokio::sync::broadcast::error::RecvError;
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(crate::runs::LogEvent {
                    run,
                    line: Some((n, text)),
                }) if run == id => {
                    if n < seen {
                        // Read with the log so far.
                        continue;
                    }
                    let event = Event::default().event("line").id(n.to_string()).data(text);
                    return Some((Ok(event), Some(rx)));
                }
                Ok(crate::runs::LogEvent { run, line: None }) if run == id => {
                    return Some((Ok(Event::default().event("end").data("end")), None));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(k)) => {
                    let event = Event::default().event("lagged").data(format!(
                        "{k} line(s) went by too fast to stream; the run's page has them all"
                    ));
                    return Some((Ok(event), Some(rx)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    let end = futures::stream::iter(if running {
        Vec::new()
    } else {
        vec![Ok(Event::default().event("end").data("end"))]
    });
    Sse::new(futures::StreamExt::chain(
        futures::StreamExt::chain(head, tail),
        end,
    ))
    .keep_alive(KeepAlive::default())
    .into_response()
}

/// The plan waiting for approval (its changes and diffs, sealed as every
/// saved plan is), or 404.
async fn api_approval(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !shared.allowed(&headers, false) {
        return denied();
    }
    match std::fs::read_to_string(shared.workdir.join("approval.plan")) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "no plan waits for approval\n").into_response(),
    }
}

async fn api_reconcile(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> axum::response::Response {
    if let Some(refused) = may_write(&shared, &headers) {
        return refused;
    }
    let (who, from) = shared.actor(&headers, &extensions);
    shared.history.act(&who, &from, "reconcile", "");
    shared.wake(crate::runs::Trigger::Manual);
    (StatusCode::ACCEPTED, "reconciling now\n").into_response()
}

async fn api_approve(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> axum::response::Response {
    if let Some(refused) = may_write(&shared, &headers) {
        return refused;
    }
    let Some(revision) = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["revision"].as_str().map(str::to_owned))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "send {\"revision\": \"<the revision whose plan you approve>\"}\n",
        )
            .into_response();
    };
    let status = crate::Status::load(&shared.workdir);
    if status.pending_revision.as_deref() != Some(revision.as_str()) {
        return (
            StatusCode::CONFLICT,
            format!(
                "no plan of revision {revision} waits for approval{}\n",
                status
                    .pending_revision
                    .map(|r| format!(" (the one waiting is of {r})"))
                    .unwrap_or_default()
            ),
        )
            .into_response();
    }
    *shared
        .approved
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(revision.clone());
    let (who, from) = shared.actor(&headers, &extensions);
    shared.history.act(&who, &from, "approve", &revision);
    shared.wake(crate::runs::Trigger::Approval);
    (StatusCode::ACCEPTED, "approved: applying the plan\n").into_response()
}

async fn api_pause(
    State(shared): State<Arc<Shared>>,
    Path((unit, action)): Path<(String, String)>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> axum::response::Response {
    if let Some(refused) = may_write(&shared, &headers) {
        return refused;
    }
    if !matches!(action.as_str(), "pause" | "resume") {
        return (StatusCode::NOT_FOUND, "POST .../pause or .../resume\n").into_response();
    }
    let known = shared
        .units
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains_key(&unit);
    let paused_now = shared
        .paused
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&unit);
    // Only a unit the daemon knows (or one paused before) is kept.
    if !known && !paused_now {
        return (
            StatusCode::NOT_FOUND,
            format!("no unit {unit}: GET /api/v1/units lists them\n"),
        )
            .into_response();
    }
    let (who, from) = shared.actor(&headers, &extensions);
    shared
        .history
        .act(&who, &from, &action, &format!("unit/{unit}"));
    shared.set_paused(&shared.paused, unit, action == "pause");
    (StatusCode::OK, format!("{action}d\n")).into_response()
}

/// Pauses or resumes every unit of a layer.
async fn api_pause_layer(
    State(shared): State<Arc<Shared>>,
    Path((layer, action)): Path<(String, String)>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> axum::response::Response {
    if let Some(refused) = may_write(&shared, &headers) {
        return refused;
    }
    if !matches!(action.as_str(), "pause" | "resume") {
        return (StatusCode::NOT_FOUND, "POST .../pause or .../resume\n").into_response();
    }
    let known = shared
        .layers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&layer);
    if !known {
        return (
            StatusCode::NOT_FOUND,
            format!("no layer {layer}: GET /api/v1/status lists the layers\n"),
        )
            .into_response();
    }
    let (who, from) = shared.actor(&headers, &extensions);
    shared
        .history
        .act(&who, &from, &action, &format!("layer/{layer}"));
    shared.set_paused(&shared.paused_layers, layer, action == "pause");
    (StatusCode::OK, format!("{action}d\n")).into_response()
}

async fn api_actions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !shared.allowed(&headers, false) {
        return denied();
    }
    json(&serde_json::to_value(shared.history.actions()).unwrap_or_default())
}

/// A unit's page: what the daemon last saw of it, its inputs (secrets
/// shown as sensitive), its recorded outputs (sensitive ones named, never
/// shown) and inventory, its last plan with the diffs (sealed as the
/// CLI's are), and the runs it took part in with the files that touched
/// it.
async fn api_unit(
    State(shared): State<Arc<Shared>>,
    Path(unit): Path<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !shared.allowed(&headers, false) {
        return denied();
    }
    let view = shared
        .units
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&unit)
        .cloned();
    let Some(view) = view else {
        return (
            StatusCode::NOT_FOUND,
            format!("no unit {unit}: GET /api/v1/units lists them\n"),
        )
            .into_response();
    };
    let engine = shared
        .engine
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut page = serde_json::json!({ "unit": unit, "view": view });
    if let Some(engine) = engine {
        match engine.inputs(&unit).await {
            Ok(Ok(resolved)) => {
                page["dir"] = serde_json::json!(resolved.dir);
                page["inputs"] = serde_json::json!(resolved.inputs);
                page["unknownInputs"] = serde_json::json!(resolved.unknown_inputs);
                page["sensitiveInputs"] =
                    serde_json::json!(resolved.sensitive_inputs.keys().collect::<Vec<_>>());
                page["settings"] = resolved.settings.clone();
                page["target"] = serde_json::to_value(&resolved.target).unwrap_or_default();
            }
            Ok(Err(e)) => page["inputsError"] = serde_json::json!(e.message),
            Err(e) => page["inputsError"] = serde_json::json!(e.to_string()),
        }
        match engine.state().read(engine.environment(), &unit).await {
            Ok(Some(record)) => {
                page["record"] = serde_json::json!({
                    "revision": record.revision,
                    "updatedAt": record.updated_at,
                    "status": record.status,
                    "serial": record.serial,
                    "outputs": record.outputs,
                    "sensitiveOutputs": record.sensitive_outputs,
                    "inventory": record.inventory,
                });
            }
            Ok(None) => page["record"] = serde_json::Value::Null,
            Err(e) => page["recordError"] = serde_json::json!(e.to_string()),
        }
    }
    let report = shared
        .reports
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&unit)
        .cloned();
    if let Some(r) = report {
        page["lastPlan"] = serde_json::to_value(&r).unwrap_or_default();
    }
    let runs: Vec<serde_json::Value> = shared
        .history
        .of_unit(&unit, 20)
        .into_iter()
        .map(|(run, u)| {
            serde_json::json!({
                "id": run.id,
                "trigger": run.trigger,
                "revision": run.revision,
                "startedAt": run.started_at,
                "outcome": u.outcome,
                "durationMs": u.duration_ms,
                "files": u.files,
            })
        })
        .collect();
    page["runs"] = serde_json::json!(runs);
    // Whatever slipped through, no secret value this run knows leaves.
    if let Some(engine) = shared
        .engine
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        engine.plaintexts().redact_value(&mut page);
    }
    json(&page)
}

/// The dashboard: one page, embedded, reading the JSON API (tokens asked
/// for when the API wants them, kept for the browser session).
async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        include_str!("dashboard.html"),
    )
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let ready = shared
        .metrics
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .ready;
    if ready {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the first reconcile has not finished\n",
        )
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let mut text = shared
        .metrics
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .render();
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    for u in shared
        .units
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
    {
        *states.entry(u.state.clone()).or_default() += 1;
    }
    text.push_str("# HELP terrace_units Units the daemon touched, by their last state.\n# TYPE terrace_units gauge\n");
    for (state, n) in states {
        text.push_str(&format!("terrace_units{{state=\"{state}\"}} {n}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// HMAC-SHA256 of `body` with `secret`, as lower-case hex.
pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    hmac_hex(secret, body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Vec::new();
    };
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// `hex` decoded, or `None`.
fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Whether a request of `provider` is signed with `secret`, and its
/// delivery id.
fn verify(
    provider: &str,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<String>, &'static str> {
    let signed = |given: Option<&str>, prefix: &str| -> bool {
        given
            .and_then(|g| g.strip_prefix(prefix))
            .and_then(unhex)
            .is_some_and(|sig| same(&sig, &hmac_hex(secret, body)))
    };
    let ok = match provider {
        "github" => signed(header(headers, "x-hub-signature-256"), "sha256="),
        "gitea" | "forgejo" => signed(
            header(headers, "x-gitea-signature").or_else(|| header(headers, "x-forgejo-signature")),
            "",
        ),
        "gitlab" => header(headers, "x-gitlab-token").is_some_and(|t| same(t.as_bytes(), secret)),
        "generic" => signed(header(headers, "x-signature"), "sha256="),
        _ => return Err("unknown provider"),
    };
    if !ok {
        return Err("bad signature");
    }
    let delivery = [
        "x-github-delivery",
        "x-gitea-delivery",
        "x-forgejo-delivery",
        "x-gitlab-event-uuid",
        "x-delivery",
    ]
    .iter()
    .find_map(|h| header(headers, h))
    .map(str::to_owned);
    Ok(delivery)
}

async fn webhook(
    State(shared): State<Arc<Shared>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let known = ["github", "gitlab", "gitea", "forgejo", "generic"];
    if !known.contains(&provider.as_str()) {
        return (
            StatusCode::NOT_FOUND,
            "webhooks are /hooks/github, /hooks/gitlab, /hooks/gitea, /hooks/forgejo and /hooks/generic\n",
        );
    }
    let Some(secret) = &shared.secret else {
        shared.count(&provider, "no-secret");
        return (
            StatusCode::FORBIDDEN,
            "no webhook secret is configured (terrace serve --webhook-secret-file)\n",
        );
    };
    match verify(&provider, secret, &headers, &body) {
        Err(_) => {
            shared.count(&provider, "bad-signature");
            (StatusCode::UNAUTHORIZED, "bad signature\n")
        }
        Ok(delivery) => {
            let id = delivery.unwrap_or_else(|| terrace_fs::digest::digest(&body));
            if shared.first_time(format!("{provider}:{id}")) {
                shared.count(&provider, "accepted");
                shared.wake(crate::runs::Trigger::Webhook);
                (StatusCode::ACCEPTED, "fetching now\n")
            } else {
                shared.count(&provider, "replayed");
                (StatusCode::OK, "seen before: ignored\n")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn signatures_of_every_provider() {
        let secret = b"s3cret";
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = hex(&hmac_hex(secret, body));
        let ok = |provider: &str, h: HeaderMap| verify(provider, secret, &h, body);
        assert!(
            ok(
                "github",
                headers(&[("x-hub-signature-256", format!("sha256={sig}"))])
            )
            .is_ok()
        );
        assert!(ok("gitea", headers(&[("x-gitea-signature", sig.clone())])).is_ok());
        assert!(ok("forgejo", headers(&[("x-forgejo-signature", sig.clone())])).is_ok());
        assert!(
            ok(
                "generic",
                headers(&[("x-signature", format!("sha256={sig}"))])
            )
            .is_ok()
        );
        assert!(ok("gitlab", headers(&[("x-gitlab-token", "s3cret".into())])).is_ok());
        let bad = hex(&hmac_hex(b"other", body));
        assert!(
            ok(
                "github",
                headers(&[("x-hub-signature-256", format!("sha256={bad}"))])
            )
            .is_err()
        );
        assert!(
            ok("github", headers(&[("x-hub-signature-256", sig.clone())])).is_err(),
            "no prefix"
        );
        assert!(ok("gitlab", headers(&[("x-gitlab-token", "s3cre".into())])).is_err());
        assert!(ok("generic", HeaderMap::new()).is_err());
        assert!(ok("gitea", headers(&[("x-gitea-signature", "zz".into())])).is_err());
        let with_id = ok(
            "github",
            headers(&[
                ("x-hub-signature-256", format!("sha256={sig}")),
                ("x-github-delivery", "abc".into()),
            ]),
        );
        assert_eq!(with_id, Ok(Some("abc".to_owned())));
    }

    #[test]
    fn what_is_paused_outlives_the_daemon() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Shared {
            workdir: dir.path().to_owned(),
            ..Shared::default()
        };
        first.paused.lock().expect("lock").insert("web".to_owned());
        first
            .paused_layers
            .lock()
            .expect("lock")
            .insert("apps".to_owned());
        first.save_paused();
        let second = Shared {
            workdir: dir.path().to_owned(),
            ..Shared::default()
        };
        second.load_paused();
        let held = second.paused_units();
        assert!(held.holds("web", None));
        assert!(held.holds("other", Some("apps")));
        assert!(!held.holds("other", Some("base")));
        // A broken file pauses nothing.
        std::fs::write(dir.path().join(PAUSED_FILE), b"{broken").expect("write");
        let third = Shared {
            workdir: dir.path().to_owned(),
            ..Shared::default()
        };
        third.load_paused();
        assert!(!third.paused_units().holds("web", None));
    }

    #[test]
    fn replays_are_remembered_and_bounded() {
        let shared = Shared::default();
        assert!(shared.first_time("a".into()));
        assert!(!shared.first_time("a".into()));
        for i in 0..REMEMBERED {
            shared.first_time(format!("x{i}"));
        }
        assert!(
            shared.first_time("a".into()),
            "forgotten after {REMEMBERED} others"
        );
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let mut m = Metrics::default();
        m.reconciles.insert("applied".into(), 2);
        m.durations = vec![0.07, 3.0];
        m.applied_revision = Some("abc".into());
        let text = m.render();
        assert!(text.contains("terrace_reconciles_total{outcome=\"applied\"} 2\n"));
        assert!(text.contains("terrace_reconcile_duration_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(text.contains("terrace_reconcile_duration_seconds_count 2\n"));
        assert!(text.contains("terrace_applied_revision_info{revision=\"abc\"} 1\n"));
    }
}
