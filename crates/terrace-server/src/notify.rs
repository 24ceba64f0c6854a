//! Notifications: what happened to units, sent where `serve.notify` says
//! (a JSON webhook signed with HMAC-SHA256, Slack, Discord).
//!
//! Each unit's state is sent once per revision and state (`applied`,
//! `failed`, `drift`, `recovered`, `planned`): a unit that keeps failing,
//! or keeps drifting, on every interval is told about once, and again
//! only when its revision or state changes. One message goes per
//! reconcile, naming every unit, never one message per unit.

use std::collections::BTreeMap;

use http_body_util::Full;
use hyper::body::Bytes;
use serde::Serialize;
use terrace_core::config::{NotifyConfig, NotifyKind};

/// What happened to a unit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Event {
    pub unit: String,
    /// `applied`, `failed`, `drift`, `recovered`, `planned`.
    pub state: String,
}

/// A notification target, with its URL and secret found.
#[derive(Clone)]
struct Target {
    kind: NotifyKind,
    url: String,
    secret: Option<zeroize::Zeroizing<String>>,
    events: Vec<String>,
}

/// Sends events once each.
pub struct Notifier {
    targets: Vec<Target>,
    /// Each unit's last revision and state told (`recovered` counted as
    /// `applied`): only a change is told again.
    last: BTreeMap<String, (String, String)>,
    client: crate::http::Client,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("targets", &self.targets.len())
            .field("units", &self.last.len())
            .finish_non_exhaustive()
    }
}

/// The message to send: a line per unit under a summary.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub revision: String,
    pub summary: String,
    pub events: Vec<Event>,
}

impl Notifier {
    /// The targets of `config`, their URLs and secrets read from the
    /// environment where they say so.
    pub fn new(config: &[NotifyConfig]) -> Result<Notifier, String> {
        let mut targets = Vec::new();
        for (i, c) in config.iter().enumerate() {
            let url = match (&c.url, &c.url_env) {
                (Some(u), None) => u.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    format!("serve.notify[{i}]: environment variable {var} (urlEnv) is not set")
                })?,
                _ => {
                    return Err(format!(
                        "serve.notify[{i}]: give exactly one of `url` and `urlEnv`"
                    ));
                }
            };
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("serve.notify[{i}]: the URL must be http(s)"));
            }
            let secret = match &c.secret_env {
                None => None,
                Some(var) => Some(zeroize::Zeroizing::new(std::env::var(var).map_err(
                    |_| {
                        format!(
                            "serve.notify[{i}]: environment variable {var} (secretEnv) is not set"
                        )
                    },
                )?)),
            };
            targets.push(Target {
                kind: c.kind,
                url,
                secret,
                events: c.events.clone(),
            });
        }
        let client = crate::http::client()?;
        Ok(Notifier {
            targets,
            last: BTreeMap::new(),
            client,
        })
    }

    /// The events of `outcomes` (unit, state) at `revision` that change
    /// what was last told of the unit (its revision or its state), a
    /// recovery told as such; remembers them.
    pub fn fresh(&mut self, revision: &str, outcomes: &[(String, String)]) -> Vec<Event> {
        let mut out = Vec::new();
        for (unit, state) in outcomes {
            let last = self.last.get(unit);
            if last.is_some_and(|(r, s)| r == revision && s == state) {
                continue;
            }
            let told = match (last.map(|(_, s)| s.as_str()), state.as_str()) {
                (Some("failed" | "drift"), "applied") => "recovered".to_owned(),
                _ => state.clone(),
            };
            self.last
                .insert(unit.clone(), (revision.to_owned(), state.clone()));
            out.push(Event {
                unit: unit.clone(),
                state: told,
            });
        }
        out
    }

    /// Sends `events` (one message per target); a target that fails is
    /// reported in the result, the others still get theirs.
    pub async fn send(&self, revision: &str, events: &[Event]) -> Vec<String> {
        let mut errors = Vec::new();
        for t in &self.targets {
            let chosen: Vec<Event> = events
                .iter()
                .filter(|e| t.events.is_empty() || t.events.contains(&e.state))
                .cloned()
                .collect();
            if chosen.is_empty() {
                continue;
            }
            let message = Message {
                revision: revision.to_owned(),
                summary: summary(revision, &chosen),
                events: chosen,
            };
            let body = match t.kind {
                NotifyKind::Webhook => serde_json::to_vec(&message),
                NotifyKind::Slack => {
                    serde_json::to_vec(&serde_json::json!({"text": message.summary}))
                }
                NotifyKind::Discord => {
                    serde_json::to_vec(&serde_json::json!({"content": message.summary}))
                }
            }
            .unwrap_or_default();
            let mut request = hyper::Request::post(&t.url)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::USER_AGENT, "terrace-serve");
            if let Some(secret) = &t.secret {
                request = request.header(
                    "X-Terrace-Signature",
                    format!("sha256={}", crate::http::sign_hex(secret.as_bytes(), &body)),
                );
            }
            let Ok(request) = request.body(Full::new(Bytes::from(body))) else {
                errors.push(format!("{:?}: could not build the request", t.kind));
                continue;
            };
            match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.client.request(request),
            )
            .await
            {
                Ok(Ok(r)) if r.status().is_success() => {}
                Ok(Ok(r)) => errors.push(format!(
                    "{:?}: the receiver answered {}",
                    t.kind,
                    r.status()
                )),
                Ok(Err(e)) => errors.push(format!("{:?}: {e}", t.kind)),
                Err(_) => errors.push(format!("{:?}: no answer within 10 s", t.kind)),
            }
        }
        errors
    }
}

/// One line per state, naming its units.
pub fn summary(revision: &str, events: &[Event]) -> String {
    let short = &revision[..revision.len().min(12)];
    let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in events {
        by.entry(e.state.as_str())
            .or_default()
            .push(e.unit.as_str());
    }
    let parts: Vec<String> = by
        .iter()
        .map(|(state, units)| format!("{state}: {}", units.join(", ")))
        .collect();
    format!("terrace {short}: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_is_told_once_per_revision_and_recoveries_are_named() {
        let mut n = Notifier::new(&[]).expect("no targets");
        let failed = vec![("web".to_owned(), "failed".to_owned())];
        assert_eq!(n.fresh("r1", &failed).len(), 1);
        assert!(
            n.fresh("r1", &failed).is_empty(),
            "not again on the next interval"
        );
        let fixed = vec![("web".to_owned(), "applied".to_owned())];
        let events = n.fresh("r2", &fixed);
        assert_eq!(events[0].state, "recovered");
        assert!(n.fresh("r2", &fixed).is_empty());
        // Drift and its healing at the same revision are both told.
        let drift = vec![
            ("web".to_owned(), "drift".to_owned()),
            ("web".to_owned(), "applied".to_owned()),
        ];
        let told: Vec<String> = n.fresh("r2", &drift).into_iter().map(|e| e.state).collect();
        assert_eq!(told, ["drift", "recovered"]);
        assert_eq!(
            summary(
                "0123456789abcdef",
                &[
                    Event {
                        unit: "a".into(),
                        state: "applied".into()
                    },
                    Event {
                        unit: "b".into(),
                        state: "applied".into()
                    }
                ]
            ),
            "terrace 0123456789ab: applied: a, b"
        );
    }
}
