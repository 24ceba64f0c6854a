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
    pub metrics: Mutex<Metrics>,
    seen: Mutex<VecDeque<String>>,
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

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/hooks/{provider}", post(webhook))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
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
    let text = shared
        .metrics
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .render();
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
                shared.trigger.notify_one();
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
