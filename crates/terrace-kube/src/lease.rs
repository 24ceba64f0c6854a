//! Leader election through a `coordination.k8s.io/v1` Lease, as
//! Kubernetes controllers elect theirs: the holder renews `renewTime`
//! well within `leaseDurationSeconds`; anyone else takes the Lease over
//! once it has not been renewed for that long. Every write carries the
//! `resourceVersion` it read, so two candidates never both win: the
//! second write is refused (409) and that candidate stays a standby.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::api::{GetParams, PostParams};
use serde_json::{Value, json};

use crate::{Cluster, KubeError};

/// One candidate for one Lease.
#[derive(Debug, Clone)]
pub struct Lease {
    pub cluster: Arc<Cluster>,
    pub namespace: String,
    pub name: String,
    /// Who this candidate is (host and process).
    pub identity: String,
    pub duration: Duration,
}

/// Whether this candidate holds the Lease, and who does when it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Mine,
    Theirs(String),
}

fn now_micro() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

impl Lease {
    fn request(&self) -> kube::core::Request {
        kube::core::Request::new(format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
            self.namespace
        ))
    }

    fn body(&self, resource_version: Option<&str>, transitions: i64, acquired: &str) -> Vec<u8> {
        let mut metadata = json!({"name": self.name, "namespace": self.namespace});
        if let Some(rv) = resource_version {
            metadata["resourceVersion"] = json!(rv);
        }
        let seconds = i64::try_from(self.duration.as_secs().max(1)).unwrap_or(i64::MAX);
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": seconds,
                "acquireTime": acquired,
                "renewTime": now_micro(),
                "leaseTransitions": transitions,
            }
        })
        .to_string()
        .into_bytes()
    }

    /// Takes or renews the Lease when it is free, expired or ours.
    pub async fn try_acquire(&self) -> Result<Held, KubeError> {
        let what = format!("lease {}/{}", self.namespace, self.name);
        let current = match self
            .cluster
            .send(self.request().get(&self.name, &GetParams::default()), &what)
            .await
        {
            Ok(v) => Some(v),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let Some(lease) = current else {
            let body = self.body(None, 0, &now_micro());
            return match self
                .cluster
                .send(self.request().create(&PostParams::default(), body), &what)
                .await
            {
                Ok(_) => Ok(Held::Mine),
                Err(KubeError::Api(s)) if s.code == 409 => {
                    Ok(Held::Theirs("another candidate".into()))
                }
                Err(e) => Err(e),
            };
        };
        let spec = &lease["spec"];
        let holder = spec["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let renewed = spec["renewTime"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        let seconds = spec["leaseDurationSeconds"].as_u64().unwrap_or(15);
        let expired =
            renewed.is_none_or(|at| at + Duration::from_secs(seconds) < SystemTime::now());
        let mine = holder == self.identity;
        if !(mine || holder.is_empty() || expired) {
            return Ok(Held::Theirs(holder));
        }
        let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0) + i64::from(!mine);
        let acquired = if mine {
            spec["acquireTime"]
                .as_str()
                .map_or_else(now_micro, str::to_owned)
        } else {
            now_micro()
        };
        let rv = lease["metadata"]["resourceVersion"].as_str();
        let body = self.body(rv, transitions, &acquired);
        match self
            .cluster
            .send(
                self.request()
                    .replace(&self.name, &PostParams::default(), body),
                &what,
            )
            .await
        {
            Ok(_) => Ok(Held::Mine),
            // Someone else wrote it since we read it.
            Err(KubeError::Api(s)) if s.code == 409 => Ok(Held::Theirs(holder)),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (a clean stop), so a standby takes over at once.
    pub async fn release(&self) -> Result<(), KubeError> {
        let what = format!("lease {}/{}", self.namespace, self.name);
        let lease = self
            .cluster
            .send(self.request().get(&self.name, &GetParams::default()), &what)
            .await?;
        if lease["spec"]["holderIdentity"].as_str() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let mut released: Value = lease.clone();
        released["spec"]["holderIdentity"] = Value::Null;
        released["spec"]["renewTime"] = Value::Null;
        if let Some(meta) = released["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
        self.cluster
            .send(
                self.request().replace(
                    &self.name,
                    &PostParams::default(),
                    released.to_string().into_bytes(),
                ),
                &what,
            )
            .await
            .map(|_| ())
    }
}
