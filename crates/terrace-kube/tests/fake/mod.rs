//! A scripted fake of the Kubernetes API behind kube's `tower-test` mock:
//! discovery, GET, server-side apply (with dry-run, field-manager
//! conflicts and defaulted fields), DELETE, CRDs that become Established a
//! moment after they are created, and a stand-in for the controllers that
//! write `status`. Every request is recorded, in order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use terrace_kube::Cluster;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Call {
    /// A server-side apply that writes (not a dry run).
    pub fn is_write(&self) -> bool {
        (self.method == "PATCH" && !self.query.contains("dryRun")) || self.method == "DELETE"
    }
}

/// A field another manager owns: applying a different value conflicts.
#[derive(Debug, Clone)]
pub struct Owned {
    pub path: String,
    pub pointer: String,
    pub field: String,
    pub manager: String,
}

#[derive(Debug, Default)]
pub struct State {
    /// (apiVersion, kind) -> (plural, namespaced).
    pub served: BTreeMap<(String, String), (String, bool)>,
    pub objects: BTreeMap<String, Value>,
    pub calls: Vec<Call>,
    pub owned: Vec<Owned>,
    /// Deployments report every replica available.
    pub deployments_ready: bool,
    /// How many reads a CRD takes to become Established.
    pub crd_reads: BTreeMap<String, u32>,
    version: u64,
}

#[derive(Debug, Clone)]
pub struct Fake(pub Arc<Mutex<State>>);

fn status(code: u16, reason: &str, message: &str, causes: Value) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
        "reason": reason, "message": message, "details": {"causes": causes}});
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("json")))
        .expect("response")
}

fn ok(v: &Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("Content-Type", "application/json")
        .body(Body::from(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

/// Deep-merges `from` into `into`, maps only.
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

impl Fake {
    /// A fake serving the built-in kinds tests use.
    pub fn new() -> Fake {
        let mut s = State {
            deployments_ready: true,
            ..State::default()
        };
        for (av, kind, plural, ns) in [
            ("v1", "Namespace", "namespaces", false),
            ("v1", "ConfigMap", "configmaps", true),
            ("v1", "Secret", "secrets", true),
            ("v1", "Service", "services", true),
            ("v1", "ServiceAccount", "serviceaccounts", true),
            ("apps/v1", "Deployment", "deployments", true),
            ("batch/v1", "Job", "jobs", true),
            (
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
            ),
        ] {
            s.served
                .insert((av.into(), kind.into()), (plural.into(), ns));
        }
        Fake(Arc::new(Mutex::new(s)))
    }

    /// A cluster whose client talks to this fake.
    pub fn cluster(&self) -> Cluster {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("body");
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("JSON body")
                };
                let call = Call {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or("").to_owned(),
                    content_type: parts
                        .headers
                        .get("content-type")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_owned(),
                    body,
                };
                let response = fake.answer(call);
                respond.send_response(response);
            }
        });
        Cluster::new("fake", kube::Client::new(service, "default"))
    }

    pub fn calls(&self) -> Vec<Call> {
        self.0.lock().expect("lock").calls.clone()
    }

    pub fn clear_calls(&self) {
        self.0.lock().expect("lock").calls.clear();
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        self.0.lock().expect("lock").objects.get(path).cloned()
    }

    pub fn edit(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut s = self.0.lock().expect("lock");
        let o = s.objects.get_mut(path).expect("object exists");
        f(o);
    }

    fn answer(&self, call: Call) -> Response<Body> {
        let mut s = self.0.lock().expect("lock");
        s.calls.push(call.clone());
        let segments: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
        // Discovery: /api/v1 or /apis/group/version.
        let gv = match segments.as_slice() {
            ["api", v] => Some((*v).to_owned()),
            ["apis", g, v] => Some(format!("{g}/{v}")),
            _ => None,
        };
        if let Some(gv) = gv {
            let resources: Vec<Value> = s
                .served
                .iter()
                .filter(|((av, _), _)| *av == gv)
                .map(|((_, kind), (plural, ns))| json!({"name": plural, "kind": kind, "namespaced": ns, "verbs": ["get", "patch", "delete"]}))
                .collect();
            if resources.is_empty() {
                return status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                    json!([]),
                );
            }
            return ok(
                &json!({"kind": "APIResourceList", "groupVersion": gv, "resources": resources}),
            );
        }
        match call.method.as_str() {
            "GET"
                if s.served
                    .values()
                    .any(|(plural, _)| call.path.ends_with(&format!("/{plural}"))) =>
            {
                // A list: every object directly under the path.
                let prefix = format!("{}/", call.path);
                let paths: Vec<String> = s
                    .objects
                    .keys()
                    .filter(|p| {
                        p.strip_prefix(&prefix)
                            .is_some_and(|rest| !rest.contains('/'))
                    })
                    .cloned()
                    .collect();
                let mut items = Vec::new();
                for p in paths {
                    let mut obj = s.objects[&p].clone();
                    s.controllers(&p, &mut obj);
                    s.objects.insert(p, obj.clone());
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    items.push(obj);
                }
                ok(&json!({"kind": "List", "items": items}))
            }
            "GET" => {
                let mut st = s;
                let Some(mut obj) = st.objects.get(&call.path).cloned() else {
                    return status(404, "NotFound", "not found", json!([]));
                };
                st.controllers(&call.path, &mut obj);
                st.objects.insert(call.path.clone(), obj.clone());
                ok(&obj)
            }
            "PATCH" => s.apply(&call),
            "DELETE" => match s.objects.remove(&call.path) {
                Some(_) => ok(&json!({"kind": "Status", "status": "Success"})),
                None => status(404, "NotFound", "not found", json!([])),
            },
            other => status(405, "MethodNotAllowed", other, json!([])),
        }
    }
}

impl State {
    /// What controllers would have written by the time of a read.
    fn controllers(&mut self, path: &str, obj: &mut Value) {
        match obj["kind"].as_str() {
            Some("CustomResourceDefinition") => {
                let reads = self.crd_reads.entry(path.to_owned()).or_insert(0);
                *reads += 1;
                if *reads >= 2 {
                    obj["status"] =
                        json!({"conditions": [{"type": "Established", "status": "True"}]});
                    let group = obj["spec"]["group"].as_str().unwrap_or("").to_owned();
                    let kind = obj["spec"]["names"]["kind"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    let plural = obj["spec"]["names"]["plural"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    let namespaced = obj["spec"]["scope"] == "Namespaced";
                    for v in obj["spec"]["versions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                    {
                        let av = format!("{group}/{}", v["name"].as_str().unwrap_or(""));
                        self.served
                            .insert((av, kind.clone()), (plural.clone(), namespaced));
                    }
                }
            }
            Some("Deployment") => {
                let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
                let available = if self.deployments_ready { want } else { 0 };
                obj["status"] = json!({"observedGeneration": obj["metadata"]["generation"],
                    "replicas": want, "updatedReplicas": want, "availableReplicas": available});
            }
            Some("Job") => {
                obj["status"] =
                    json!({"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1});
            }
            Some("Namespace") => obj["status"] = json!({"phase": "Active"}),
            _ => {}
        }
    }

    fn apply(&mut self, call: &Call) -> Response<Body> {
        if call.content_type != "application/apply-patch+yaml" {
            return status(415, "UnsupportedMediaType", "not an apply patch", json!([]));
        }
        let force = call.query.contains("force=true");
        let dry_run = call.query.contains("dryRun=All");
        let live = self.objects.get(&call.path).cloned();
        let mut causes = Vec::new();
        for o in self.owned.iter().filter(|o| o.path == call.path) {
            let mine = call.body.pointer(&o.pointer);
            let theirs = live.as_ref().and_then(|l| l.pointer(&o.pointer));
            if mine.is_some() && mine != theirs {
                causes.push(json!({"reason": "FieldManagerConflict", "field": o.field,
                    "message": format!("conflict with \"{}\" using apps/v1", o.manager)}));
            }
        }
        if !causes.is_empty() && !force {
            return status(
                409,
                "Conflict",
                "Apply failed with conflicts",
                Value::Array(causes),
            );
        }
        let mut next = call.body.clone();
        // Defaulted fields: the server fills them in.
        if next["kind"] == "Deployment" {
            let mut defaults = json!({"spec": {"revisionHistoryLimit": 10, "strategy": {"type": "RollingUpdate"}}});
            merge(&mut defaults, &next);
            next = defaults;
        }
        if let Some(live) = &live {
            // Fields other managers own stay theirs (unless forced).
            for o in self.owned.iter().filter(|o| o.path == call.path) {
                if force {
                    continue;
                }
                if let (Some(theirs), None) =
                    (live.pointer(&o.pointer), call.body.pointer(&o.pointer))
                {
                    set_pointer(&mut next, &o.pointer, theirs.clone());
                }
            }
            next["status"] = live["status"].clone();
            for k in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                next["metadata"][k] = live["metadata"][k].clone();
            }
        } else {
            next["metadata"]["uid"] = json!(format!("uid-{}", call.path.len()));
            next["metadata"]["creationTimestamp"] = json!("2026-11-22T00:00:00Z");
            next["metadata"]["generation"] = json!(1);
            next["metadata"]["resourceVersion"] = json!("0");
        }
        next["metadata"]["managedFields"] = json!([{"manager": "terrace", "operation": "Apply"}]);
        let changed = live.as_ref().is_none_or(|l| {
            terrace_kube::diff::normalize(l) != terrace_kube::diff::normalize(&next)
        });
        if changed {
            self.version += 1;
            next["metadata"]["resourceVersion"] = json!(self.version.to_string());
            if live.as_ref().is_some_and(|l| l["spec"] != next["spec"]) {
                let g = next["metadata"]["generation"].as_i64().unwrap_or(1);
                next["metadata"]["generation"] = json!(g + 1);
            }
        }
        if force {
            self.owned.retain(|o| o.path != call.path);
        }
        if !dry_run {
            self.objects.insert(call.path.clone(), next.clone());
        }
        ok(&next)
    }
}

fn set_pointer(v: &mut Value, pointer: &str, new: Value) {
    let mut cur = v;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur[*p] = new;
            return;
        }
        cur = &mut cur[*p];
    }
}
