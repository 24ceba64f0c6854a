//! A connection to one cluster: the client, and what API discovery found,
//! cached for the run.
//!
//! A cluster is reached only through what its binding names: a kubeconfig
//! file (and context), or the in-cluster service account. The shell's
//! `KUBECONFIG` and `~/.kube/config` are never read, so a binding that names
//! nothing can never reach a real cluster by accident.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kube::Client;
use kube::api::{ApiResource, DynamicObject};
use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use kube::core::{GroupVersion, GroupVersionKind, Resource as _};
use kube::discovery::Scope;
use serde_json::Value;

use crate::KubeError;

/// Where a cluster is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A kubeconfig file and, optionally, one of its contexts (else its
    /// current context).
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
    /// The service account of the pod terrace runs in.
    InCluster,
    /// A kubeconfig's text (a unit's output), kept in memory.
    Inline {
        kubeconfig: InlineText,
        context: Option<String>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Kubeconfig {
                path,
                context: Some(c),
            } => write!(f, "{} (context {c})", path.display()),
            Endpoint::Kubeconfig {
                path,
                context: None,
            } => write!(f, "{}", path.display()),
            Endpoint::InCluster => f.write_str("in-cluster service account"),
            // Its text holds credentials: never shown.
            Endpoint::Inline { .. } => f.write_str("the kubeconfig a unit's output gives"),
        }
    }
}

/// A kubeconfig's text: compared and hashed as text, never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InlineText(pub std::sync::Arc<String>);

impl std::fmt::Debug for InlineText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(a kubeconfig from a unit output)")
    }
}

/// How a kind is reached on this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `deployments`.
    pub plural: String,
    pub namespaced: bool,
}

/// A cluster: a client and a discovery cache.
pub struct Cluster {
    /// The target's name, for messages.
    pub name: String,
    client: Client,
    /// Which API server it is (its URL) and the default namespace: what
    /// identifies the cluster whatever file its binding was read from.
    identity: String,
    /// Per `apiVersion`: its kinds (`None` when the cluster does not serve
    /// that group version).
    discovered: Mutex<HashMap<String, Option<HashMap<String, Resource>>>>,
    /// What Helm's `.Capabilities` say of it, found once.
    capabilities: tokio::sync::OnceCell<Capabilities>,
}

/// What a chart's `.Capabilities` say of a cluster, as Helm finds them on
/// a live cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The API server's version (`v1.33.1`).
    pub kube_version: String,
    /// Every group version it serves, alone and with each kind
    /// (`apps/v1`, `apps/v1/Deployment`), sorted.
    pub api_versions: Vec<String>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster over an existing client (tests pass a scripted one).
    pub fn new(name: impl Into<String>, client: Client) -> Cluster {
        crate::tls_provider();
        let identity = format!("(client) {}", client.default_namespace());
        Cluster::with_identity(name, client, identity)
    }

    fn with_identity(name: impl Into<String>, client: Client, identity: String) -> Cluster {
        Cluster {
            name: name.into(),
            client,
            identity,
            discovered: Mutex::new(HashMap::new()),
            capabilities: tokio::sync::OnceCell::new(),
        }
    }

    /// The cluster's version and everything it serves (one discovery of
    /// every group, once per run), for Helm's `.Capabilities`.
    pub async fn capabilities(&self) -> Result<&Capabilities, KubeError> {
        self.capabilities
            .get_or_try_init(|| async {
                let fail = |e: kube::Error| {
                    KubeError::Request(format!(
                        "API discovery for Helm's .Capabilities: {e} (cluster `{}`)",
                        self.name
                    ))
                };
                let version = self.client.apiserver_version().await.map_err(fail)?;
                // A group version that goes away between the list of
                // groups and its own request (a CRD deleted meanwhile)
                // answers 404: discovery runs again, up to three times.
                let mut attempt = 0;
                let discovery = loop {
                    attempt += 1;
                    match kube::discovery::Discovery::new(self.client.clone())
                        .run()
                        .await
                    {
                        Ok(d) => break d,
                        Err(kube::Error::Api(ae)) if ae.code == 404 && attempt < 3 => {
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(fail(e)),
                    }
                };
                let mut api_versions = Vec::new();
                for group in discovery.groups() {
                    for version in group.versions() {
                        let gv = if group.name().is_empty() {
                            version.to_owned()
                        } else {
                            format!("{}/{version}", group.name())
                        };
                        for (ar, _) in group.versioned_resources(version) {
                            api_versions.push(format!("{gv}/{}", ar.kind));
                        }
                        api_versions.push(gv);
                    }
                }
                api_versions.sort();
                api_versions.dedup();
                Ok(Capabilities {
                    kube_version: version.git_version,
                    api_versions,
                })
            })
            .await
    }

    /// Connects to `endpoint`.
    pub async fn connect(name: &str, endpoint: &Endpoint) -> Result<Cluster, KubeError> {
        crate::tls_provider();
        let fail = |message: String| KubeError::Connect {
            cluster: name.to_owned(),
            endpoint: endpoint.to_string(),
            message,
        };
        let config = match endpoint {
            Endpoint::Kubeconfig { path, context } => {
                let kubeconfig = read_kubeconfig(path).map_err(fail)?;
                let options = KubeConfigOptions {
                    context: context.clone(),
                    cluster: None,
                    user: None,
                };
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| fail(e.to_string()))?
            }
            Endpoint::InCluster => Config::incluster().map_err(|e| fail(e.to_string()))?,
            Endpoint::Inline {
                kubeconfig,
                context,
            } => {
                // The parser's message may quote the text: not repeated.
                let parsed = Kubeconfig::from_yaml(&kubeconfig.0).map_err(|_| {
                    fail("the unit's output is not a kubeconfig (YAML with clusters, users and contexts)".to_owned())
                })?;
                let options = KubeConfigOptions {
                    context: context.clone(),
                    cluster: None,
                    user: None,
                };
                Config::from_custom_kubeconfig(parsed, &options)
                    .await
                    .map_err(|e| fail(e.to_string()))?
            }
        };
        let identity = format!("{} {}", config.cluster_url, config.default_namespace);
        let client = Client::try_from(config).map_err(|e| fail(e.to_string()))?;
        Ok(Cluster::with_identity(name, client, identity))
    }

    /// The API server's URL and the default namespace: the same cluster
    /// reached through another kubeconfig file is the same identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The namespace of objects that name none (the context's, else
    /// `default`).
    pub fn default_namespace(&self) -> &str {
        self.client.default_namespace()
    }

    /// How `kind` of `api_version` is served, from discovery (one request
    /// per group version, cached); `None` when the cluster does not serve
    /// it.
    pub async fn resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<Option<Resource>, KubeError> {
        if let Some(known) = self.cached(api_version) {
            return Ok(known.and_then(|kinds| kinds.get(kind).cloned()));
        }
        let gv: GroupVersion = api_version.parse().map_err(|e| {
            KubeError::Request(format!("`{api_version}` is not an apiVersion: {e:?}"))
        })?;
        // kube's discovery of one group version (one request; subresources
        // are not kinds).
        let found = match kube::discovery::pinned_group(&self.client, &gv).await {
            Ok(group) => Some(
                group
                    .versioned_resources(&gv.version)
                    .into_iter()
                    .map(|(ar, caps)| {
                        (
                            ar.kind,
                            Resource {
                                plural: ar.plural,
                                namespaced: caps.scope == Scope::Namespaced,
                            },
                        )
                    })
                    .collect::<HashMap<_, _>>(),
            ),
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(kube::Error::Api(status)) => return Err(KubeError::Api(status)),
            Err(e) => {
                return Err(KubeError::Request(format!(
                    "API discovery of {api_version}: {e} (cluster `{}`)",
                    self.name
                )));
            }
        };
        let answer = found.as_ref().and_then(|k| k.get(kind).cloned());
        self.discovered
            .lock()
            .expect("discovery lock")
            .insert(api_version.to_owned(), found);
        Ok(answer)
    }

    /// Forgets what discovery said of `api_version` (after a CRD for it was
    /// established).
    pub fn forget(&self, api_version: &str) {
        self.discovered
            .lock()
            .expect("discovery lock")
            .remove(api_version);
    }

    fn cached(&self, api_version: &str) -> Option<Option<HashMap<String, Resource>>> {
        self.discovered
            .lock()
            .expect("discovery lock")
            .get(api_version)
            .cloned()
    }

    /// kube's requests for `kind` (of `api_version`, served as
    /// `resource`) in `namespace`; a cluster-scoped kind ignores it.
    pub fn requests(
        &self,
        api_version: &str,
        kind: &str,
        resource: &Resource,
        namespace: Option<&str>,
    ) -> kube::core::Request {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind),
            &resource.plural,
        );
        let namespace = if resource.namespaced { namespace } else { None };
        kube::core::Request::new(DynamicObject::url_path(&ar, namespace))
    }

    /// Opens a watch kube built: the object's changes as they happen.
    pub async fn watch(
        &self,
        built: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
        what: &str,
    ) -> Result<
        impl futures::Stream<Item = Result<kube::core::WatchEvent<Value>, kube::Error>> + use<>,
        KubeError,
    > {
        let request = built.map_err(|e| KubeError::Request(format!("{what}: {e}")))?;
        match self.client.request_events::<Value>(request).await {
            Ok(events) => Ok(events),
            Err(kube::Error::Api(status)) => Err(KubeError::Api(status)),
            Err(e) => Err(KubeError::Request(format!(
                "{what}: {e} (cluster `{}`)",
                self.name
            ))),
        }
    }

    /// Sends a request kube built and reads the JSON answer; API errors
    /// keep their status.
    pub async fn send(
        &self,
        built: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
        what: &str,
    ) -> Result<Value, KubeError> {
        let request = built.map_err(|e| KubeError::Request(format!("{what}: {e}")))?;
        match self.client.request_text(request).await {
            Ok(text) if text.trim().is_empty() => Ok(Value::Null),
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| KubeError::Request(format!("{what}: the answer is not JSON: {e}"))),
            Err(kube::Error::Api(status)) => Err(KubeError::Api(status)),
            Err(e) => Err(KubeError::Request(format!(
                "{what}: {e} (cluster `{}`)",
                self.name
            ))),
        }
    }
}

/// The connections to clusters, one per endpoint, made on first use so
/// every unit on a cluster shares the client and what discovery found.
/// Whoever holds the pool owns the connections (the engine, through its
/// kind registry); they close when it is dropped.
///
/// Each endpoint connects on its own: the map is locked only to find the
/// endpoint's cell, never across a connection, so a hanging exec-auth
/// plugin stalls the units of its cluster alone.
#[derive(Debug, Default)]
pub struct ClusterPool {
    cells: Mutex<HashMap<Endpoint, Arc<tokio::sync::OnceCell<Arc<Cluster>>>>>,
}

impl ClusterPool {
    /// The connection to `endpoint` (the target `name`, for messages).
    pub async fn get(&self, name: &str, endpoint: &Endpoint) -> Result<Arc<Cluster>, KubeError> {
        let cell = {
            let mut cells = self
                .cells
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(cells.entry(endpoint.clone()).or_default())
        };
        cell.get_or_try_init(|| async { Cluster::connect(name, endpoint).await.map(Arc::new) })
            .await
            .map(Arc::clone)
    }
}

fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, String> {
    if !path.is_file() {
        return Err(format!(
            "the kubeconfig {} does not exist or is not a file",
            path.display()
        ));
    }
    Kubeconfig::read_from(path).map_err(|e| e.to_string())
}
