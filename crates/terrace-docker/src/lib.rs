//! Docker hosts as targets: a Docker or Podman engine reached over a Unix
//! socket, TCP with TLS client certificates, or an SSH tunnel to the
//! host's socket (the host key checked against a known_hosts file, never
//! accepted on first use), through bollard with the API version
//! negotiated, so Docker and Podman's compatible API both work.
//!
//! [`Engine`] is one connection; [`ContainerSpec`] is a container as
//! terrace wants it, turned into the API's create body; [`LiveContainer`]
//! is what runs, read from `inspect`; [`Engine::wait_healthy`] reads the
//! engine's health checks or, where the engine runs none (Podman without
//! systemd), runs the check itself through exec.

mod spec;
mod ssh;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use bollard;
use bollard::Docker;
use bollard::errors::Error as ApiError;
use bollard::query_parameters as q;
use futures::StreamExt;

pub use spec::{ContainerSpec, HealthSpec, MountSpec, PortSpec};

/// The label every Compose tool reads: the project a container, network
/// or volume belongs to.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// The service a container runs.
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
/// The key of a network or volume in its compose file.
pub const NETWORK_LABEL: &str = "com.docker.compose.network";
pub const VOLUME_LABEL: &str = "com.docker.compose.volume";
/// The terrace unit that made it.
pub const UNIT_LABEL: &str = "dev.terrace.unit";
/// The environment it was made for.
pub const ENVIRONMENT_LABEL: &str = "dev.terrace.environment";
/// The container as terrace created it ([`ContainerSpec`] without
/// environment values), what plans compare the desired one with.
pub const SPEC_LABEL: &str = "dev.terrace.spec";

/// Why talking to an engine failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The target's settings cannot be used.
    #[error("{0}")]
    Config(String),
    /// The engine could not be reached.
    #[error("cannot reach the Docker engine at {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    /// The engine refused or failed a request.
    #[error("{doing}: {source}")]
    Api {
        doing: String,
        #[source]
        source: ApiError,
    },
    /// A container did not become ready in time, or exited.
    #[error("{0}")]
    NotReady(String),
}

fn api(doing: impl Into<String>) -> impl FnOnce(ApiError) -> DockerError {
    let doing = doing.into();
    move |source| DockerError::Api { doing, source }
}

/// An error with its causes, `: `-joined (hyper's own message alone says
/// only "client error (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// `r`, with an answer whose status is one of `statuses` (404: not
/// there; 304: already so) taken as `None` rather than as an error.
fn tolerate<T>(
    r: Result<T, ApiError>,
    statuses: &[u16],
    doing: impl FnOnce() -> String,
) -> Result<Option<T>, DockerError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ApiError::DockerResponseServerError { status_code, .. })
            if statuses.contains(&status_code) =>
        {
            Ok(None)
        }
        Err(source) => Err(DockerError::Api {
            doing: doing(),
            source,
        }),
    }
}

/// TLS client files, as absolute paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where an engine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, with TLS or (only on a loopback address) without.
    Tcp {
        addr: String,
        tls: Option<TlsFiles>,
    },
    Ssh(ssh::SshEndpoint),
}

pub use ssh::{SshEndpoint, SshOptions};

impl Endpoint {
    /// Reads a target's `host` (`unix://`, `tcp://`, `ssh://`). `tls`
    /// and `ssh` are its client files, already absolute.
    pub fn parse(
        host: &str,
        tls: Option<TlsFiles>,
        ssh: Option<SshOptions>,
    ) -> Result<Endpoint, DockerError> {
        let bad = |why: &str| {
            DockerError::Config(format!(
                "docker host `{host}` {why}; write unix:///PATH, tcp://HOST:PORT (with `tls`) or ssh://USER@HOST[:PORT]"
            ))
        };
        if let Some(path) = host.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("needs an absolute socket path"));
            }
            if tls.is_some() || ssh.is_some() {
                return Err(bad("is a Unix socket: `tls` and `ssh` do not apply"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = host.strip_prefix("tcp://") {
            let addr = addr.trim_end_matches('/');
            let (h, port) = addr.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
            port.parse::<u16>().map_err(|_| bad("has a bad port"))?;
            let loopback = matches!(h, "127.0.0.1" | "localhost" | "[::1]");
            if tls.is_none() && !loopback {
                return Err(DockerError::Config(format!(
                    "docker host `{host}` is plain TCP to another machine: anyone on the network could run containers as root there; give the target `tls: {{ca, cert, key}}`, or reach it over ssh://"
                )));
            }
            if ssh.is_some() {
                return Err(bad("is TCP: `ssh` does not apply"));
            }
            return Ok(Endpoint::Tcp {
                addr: addr.to_owned(),
                tls,
            });
        }
        if let Some(rest) = host.strip_prefix("ssh://") {
            if tls.is_some() {
                return Err(bad("is reached over SSH: `tls` does not apply"));
            }
            return ssh::SshEndpoint::parse(rest, ssh.unwrap_or_default())
                .map(Endpoint::Ssh)
                .map_err(|why| bad(&why));
        }
        Err(bad("is not an address terrace knows"))
    }

    /// The host other machines reach published ports at: the host's
    /// name, or `127.0.0.1` for a Unix socket.
    pub fn address(&self) -> String {
        match self {
            Endpoint::Unix(_) => "127.0.0.1".to_owned(),
            Endpoint::Tcp { addr, .. } => addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(h, _)| h)
                .to_owned(),
            Endpoint::Ssh(s) => s.host.clone(),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "tcp://{addr}"),
            Endpoint::Ssh(s) => write!(f, "{s}"),
        }
    }
}

/// Which engine answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    /// Podman's Docker-compatible API: health checks run only under
    /// systemd, so terrace runs them itself.
    Podman,
}

/// A connection to one engine.
#[derive(Debug)]
pub struct Engine {
    docker: Docker,
    pub kind: EngineKind,
    /// The engine's own version.
    pub version: String,
    /// The API version both sides speak.
    pub api_version: String,
    pub endpoint: Endpoint,
    /// Kept open for as long as the engine is used.
    _tunnel: Option<ssh::Tunnel>,
}

/// Seconds a single request may take.
const REQUEST_TIMEOUT: u64 = 120;

impl Engine {
    /// Connects to `endpoint` and negotiates the API version.
    pub async fn connect(endpoint: &Endpoint) -> Result<Engine, DockerError> {
        let fail = |message: String| DockerError::Connect {
            endpoint: endpoint.to_string(),
            message,
        };
        let mut tunnel = None;
        let docker = match endpoint {
            Endpoint::Unix(path) => Docker::connect_with_unix(
                &path.display().to_string(),
                REQUEST_TIMEOUT,
                bollard::API_DEFAULT_VERSION,
            ),
            Endpoint::Tcp { addr, tls: None } => Docker::connect_with_http(
                &format!("http://{addr}"),
                REQUEST_TIMEOUT,
                bollard::API_DEFAULT_VERSION,
            ),
            Endpoint::Tcp {
                addr,
                tls: Some(tls),
            } => {
                for f in [&tls.ca, &tls.cert, &tls.key] {
                    if !f.is_file() {
                        return Err(DockerError::Config(format!(
                            "the TLS file {} of docker host tcp://{addr} does not exist",
                            f.display()
                        )));
                    }
                }
                Docker::connect_with_ssl(
                    addr,
                    &tls.key,
                    &tls.cert,
                    &tls.ca,
                    REQUEST_TIMEOUT,
                    bollard::API_DEFAULT_VERSION,
                )
            }
            Endpoint::Ssh(s) => {
                let t = ssh::Tunnel::open(s).await.map_err(fail)?;
                let sock = t.socket().display().to_string();
                tunnel = Some(t);
                Docker::connect_with_unix(&sock, REQUEST_TIMEOUT, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| fail(chain(&e)))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| fail(chain(&e)))?;
        let version = docker.version().await.map_err(|e| fail(chain(&e)))?;
        let podman = version
            .components
            .iter()
            .flatten()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"));
        let v = docker.client_version();
        Ok(Engine {
            kind: if podman {
                EngineKind::Podman
            } else {
                EngineKind::Docker
            },
            version: version.version.unwrap_or_default(),
            api_version: format!("{}.{}", v.major_version, v.minor_version),
            docker,
            endpoint: endpoint.clone(),
            _tunnel: tunnel,
        })
    }

    /// The bollard client, for what this crate does not wrap.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Every container of Compose project `project` (running or not).
    pub async fn project_containers(
        &self,
        project: &str,
    ) -> Result<Vec<LiveContainer>, DockerError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{PROJECT_LABEL}={project}")],
        )]);
        let list = self
            .docker
            .list_containers(Some(q::ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(api(format!("listing the containers of project {project}")))?;
        let mut out = Vec::new();
        for c in list {
            let Some(id) = c.id else { continue };
            match self.inspect(&id).await {
                Ok(Some(live)) => out.push(live),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A container by name or id; `None` when there is none.
    pub async fn inspect(&self, name: &str) -> Result<Option<LiveContainer>, DockerError> {
        let found = self
            .docker
            .inspect_container(name, None::<q::InspectContainerOptions>)
            .await;
        Ok(
            tolerate(found, &[404], || format!("inspecting container {name}"))?
                .map(LiveContainer::from_inspect),
        )
    }

    /// The id of image `image` if the engine has it.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        let found = self.docker.inspect_image(image).await;
        Ok(tolerate(found, &[404], || format!("inspecting image {image}"))?.and_then(|i| i.id))
    }

    /// Pulls `image`; each progress status goes to `progress`.
    pub async fn pull(
        &self,
        image: &str,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(), DockerError> {
        let mut stream = self.docker.create_image(
            Some(q::CreateImageOptions {
                from_image: Some(image.to_owned()),
                ..Default::default()
            }),
            None,
            None,
        );
        let mut last = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(api(format!("pulling image {image}")))?;
            if let Some(status) = info.status
                && status != last
            {
                progress(&format!("{image}: {status}"));
                last = status;
            }
        }
        Ok(())
    }

    /// Networks and volumes of project `project`, by name.
    pub async fn project_networks(&self, project: &str) -> Result<Vec<String>, DockerError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{PROJECT_LABEL}={project}")],
        )]);
        let list = self
            .docker
            .list_networks(Some(q::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(api(format!("listing the networks of project {project}")))?;
        let mut out: Vec<String> = list.into_iter().filter_map(|n| n.name).collect();
        out.sort();
        Ok(out)
    }

    pub async fn project_volumes(&self, project: &str) -> Result<Vec<String>, DockerError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{PROJECT_LABEL}={project}")],
        )]);
        let list = self
            .docker
            .list_volumes(Some(q::ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(api(format!("listing the volumes of project {project}")))?;
        let mut out: Vec<String> = list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Whether network `name` exists (made by anyone).
    pub async fn network_exists(&self, name: &str) -> Result<bool, DockerError> {
        let found = self
            .docker
            .inspect_network(name, None::<q::InspectNetworkOptions>)
            .await;
        Ok(tolerate(found, &[404], || format!("inspecting network {name}"))?.is_some())
    }

    pub async fn volume_exists(&self, name: &str) -> Result<bool, DockerError> {
        let found = self.docker.inspect_volume(name).await;
        Ok(tolerate(found, &[404], || format!("inspecting volume {name}"))?.is_some())
    }

    pub async fn create_network(
        &self,
        name: &str,
        driver: Option<&str>,
        internal: bool,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), DockerError> {
        self.docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.to_owned(),
                driver: driver.map(str::to_owned),
                internal: Some(internal),
                labels: Some(labels.clone().into_iter().collect()),
                ..Default::default()
            })
            .await
            .map_err(api(format!("creating network {name}")))?;
        Ok(())
    }

    pub async fn remove_network(&self, name: &str) -> Result<(), DockerError> {
        let removed = self.docker.remove_network(name).await;
        tolerate(removed, &[404], || format!("removing network {name}")).map(drop)
    }

    pub async fn create_volume(
        &self,
        name: &str,
        driver: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), DockerError> {
        self.docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(name.to_owned()),
                driver: driver.map(str::to_owned),
                labels: Some(labels.clone().into_iter().collect()),
                ..Default::default()
            })
            .await
            .map_err(api(format!("creating volume {name}")))?;
        Ok(())
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        let removed = self
            .docker
            .remove_volume(name, None::<q::RemoveVolumeOptions>)
            .await;
        tolerate(removed, &[404], || format!("removing volume {name}")).map(drop)
    }

    /// Stops (10 s, then killed) and removes container `name`, keeping
    /// its named volumes; nothing when it does not exist.
    pub async fn remove_container(&self, name: &str) -> Result<(), DockerError> {
        self.stop_unless(name, &[304, 404]).await?;
        let removed = self
            .docker
            .remove_container(
                name,
                Some(q::RemoveContainerOptions {
                    force: true,
                    v: false,
                    link: false,
                }),
            )
            .await;
        tolerate(removed, &[404], || format!("removing container {name}")).map(drop)
    }

    /// Stops container `name` (10 s, then killed), an answer of one of
    /// `statuses` taken as done.
    async fn stop_unless(&self, name: &str, statuses: &[u16]) -> Result<(), DockerError> {
        let stopped = self
            .docker
            .stop_container(
                name,
                Some(q::StopContainerOptions {
                    t: Some(10),
                    signal: None,
                }),
            )
            .await;
        tolerate(stopped, statuses, || format!("stopping container {name}")).map(drop)
    }

    /// Creates and starts the container `spec` describes (the old one of
    /// the same name must be gone). Secret environment values travel in
    /// the request body only.
    pub async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let (body, more_networks) = spec.create_body();
        let created = self
            .docker
            .create_container(
                Some(q::CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    platform: String::new(),
                }),
                body,
            )
            .await
            .map_err(api(format!("creating container {}", spec.name)))?;
        // Older API versions take one network at creation; the others are
        // joined before the container starts.
        for (network, aliases) in more_networks {
            self.docker
                .connect_network(
                    &network,
                    bollard::models::NetworkConnectRequest {
                        container: spec.name.clone(),
                        endpoint_config: Some(bollard::models::EndpointSettings {
                            aliases: Some(aliases),
                            ..Default::default()
                        }),
                    },
                )
                .await
                .map_err(api(format!(
                    "connecting container {} to network {network}",
                    spec.name
                )))?;
        }
        self.docker
            .start_container(&created.id, None::<q::StartContainerOptions>)
            .await
            .map_err(api(format!("starting container {}", spec.name)))?;
        Ok(created.id)
    }

    /// Runs `argv` in container `name`; its exit code and the end of its
    /// output. Stops waiting after `timeout` (the exit code is then
    /// `None`).
    pub async fn exec(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(Option<i64>, String), DockerError> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let exec = self
            .docker
            .create_exec(
                name,
                CreateExecOptions {
                    cmd: Some(argv.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(api(format!("running a command in container {name}")))?;
        let run = async {
            let mut out = String::new();
            if let StartExecResults::Attached { mut output, .. } = self
                .docker
                .start_exec(&exec.id, None)
                .await
                .map_err(api(format!("running a command in container {name}")))?
            {
                while let Some(chunk) = output.next().await {
                    let Ok(chunk) = chunk else { break };
                    out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                    if out.len() > 8192 {
                        let cut = out.len() - 4096;
                        let cut = (cut..out.len())
                            .find(|i| out.is_char_boundary(*i))
                            .unwrap_or(out.len());
                        out.drain(..cut);
                    }
                }
            }
            Ok::<_, DockerError>(out)
        };
        let Ok(out) = tokio::time::timeout(timeout, run).await else {
            return Ok((None, format!("timed out after {}s", timeout.as_secs())));
        };
        let out = out?;
        let inspect = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(api(format!(
                "reading a command's exit code in container {name}"
            )))?;
        Ok((inspect.exit_code, out))
    }

    /// Waits until container `name` is healthy (or, without a health
    /// check, running), at most `timeout`. Reads the engine's health
    /// status; where the engine runs no checks (Podman without systemd,
    /// or no result after the first interval), runs `check` itself.
    pub async fn wait_healthy(
        &self,
        name: &str,
        check: Option<&HealthSpec>,
        timeout: Duration,
    ) -> Result<(), DockerError> {
        let started = Instant::now();
        let mut own = self.kind == EngineKind::Podman;
        let mut last = String::new();
        loop {
            let live = self
                .inspect(name)
                .await?
                .ok_or_else(|| DockerError::NotReady(format!("container {name} is gone")))?;
            if !live.running {
                return Err(DockerError::NotReady(format!(
                    "container {name} is not running ({}, exit code {})",
                    live.status,
                    live.exit_code.unwrap_or_default()
                )));
            }
            let Some(check) = check.filter(|c| !c.disabled()) else {
                return Ok(());
            };
            if !own {
                match live.health.as_deref() {
                    Some("healthy") => return Ok(()),
                    Some("unhealthy") => {
                        return Err(DockerError::NotReady(format!(
                            "container {name} is unhealthy: {}",
                            live.health_output.trim()
                        )));
                    }
                    _ => {}
                }
                // An engine that runs checks has a result after one
                // interval (plus the check's own time).
                if live.health_log_len == 0
                    && started.elapsed()
                        > check.interval() + check.timeout() + Duration::from_secs(5)
                {
                    own = true;
                }
            }
            if own {
                let (code, out) = self.exec(name, &check.argv(), check.timeout()).await?;
                if code == Some(0) {
                    return Ok(());
                }
                last = match code {
                    Some(c) => format!("the check exited {c}: {}", out.trim()),
                    None => out,
                };
            }
            if started.elapsed() >= timeout {
                return Err(DockerError::NotReady(format!(
                    "container {name} was not healthy after {}s{}",
                    timeout.as_secs(),
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(": {last}")
                    }
                )));
            }
            let pause = check.interval().min(Duration::from_secs(1));
            tokio::time::sleep(pause.max(Duration::from_millis(200))).await;
        }
    }

    /// Stops container `name` (10 s, then killed).
    pub async fn stop(&self, name: &str) -> Result<(), DockerError> {
        self.stop_unless(name, &[304]).await
    }

    pub async fn start(&self, name: &str) -> Result<(), DockerError> {
        let started = self
            .docker
            .start_container(name, None::<q::StartContainerOptions>)
            .await;
        tolerate(started, &[304], || format!("starting container {name}")).map(drop)
    }

    /// A tar archive of what directory `path` of container `name` holds
    /// (running or not), its entries relative to `path`: engines name
    /// them differently (Docker and a running Podman container under the
    /// directory's own name, a stopped or paused Podman container from
    /// `/`), so they are read again under one rule. Held in memory.
    pub async fn archive_contents(&self, name: &str, path: &str) -> Result<Vec<u8>, DockerError> {
        let raw = self.archive(name, path).await?;
        let base = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        reroot(&raw, base).map_err(|e| {
            DockerError::NotReady(format!(
                "the archive of {path} in container {name} cannot be read: {e}"
            ))
        })
    }

    /// A tar archive of `path` in container `name`, as the engine gives it.
    pub async fn archive(&self, name: &str, path: &str) -> Result<Vec<u8>, DockerError> {
        let mut stream = self.docker.download_from_container(
            name,
            Some(q::DownloadFromContainerOptions {
                path: path.to_owned(),
            }),
        );
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(api(format!("copying {path} out of container {name}")))?;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Unpacks tar archive `tar` into directory `path` of container `name`.
    pub async fn put_archive(
        &self,
        name: &str,
        path: &str,
        tar: Vec<u8>,
    ) -> Result<(), DockerError> {
        self.docker
            .upload_to_container(
                name,
                Some(q::UploadToContainerOptions {
                    path: path.to_owned(),
                    ..Default::default()
                }),
                bollard::body_full(bytes::Bytes::from(tar)),
            )
            .await
            .map_err(api(format!("copying into {path} of container {name}")))
    }

    /// Runs `argv` in container `name`, feeding it `input` on stdin (then
    /// closing it); its exit code, its whole stdout, and the end of its
    /// stderr.
    pub async fn exec_io(
        &self,
        name: &str,
        argv: &[String],
        input: Option<&[u8]>,
    ) -> Result<(Option<i64>, Vec<u8>, String), DockerError> {
        use bollard::container::LogOutput;
        use bollard::exec::{CreateExecOptions, StartExecResults};
        use tokio::io::AsyncWriteExt;
        let exec = self
            .docker
            .create_exec(
                name,
                CreateExecOptions {
                    cmd: Some(argv.to_vec()),
                    attach_stdin: Some(input.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(api(format!(
                "running {} in container {name}",
                argv.join(" ")
            )))?;
        let mut stdout = Vec::new();
        let mut stderr = String::new();
        if let StartExecResults::Attached {
            mut output,
            input: mut pipe,
        } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(api(format!(
                "running {} in container {name}",
                argv.join(" ")
            )))?
        {
            let feed = async {
                if let Some(bytes) = input {
                    let _ = pipe.write_all(bytes).await;
                }
                let _ = pipe.shutdown().await;
            };
            let read = async {
                while let Some(chunk) = output.next().await {
                    match chunk {
                        Ok(LogOutput::StdOut { message }) => stdout.extend_from_slice(&message),
                        Ok(LogOutput::StdErr { message }) => {
                            stderr.push_str(&String::from_utf8_lossy(&message));
                            if stderr.len() > 8192 {
                                let cut = stderr.len() - 4096;
                                let cut = (cut..stderr.len())
                                    .find(|i| stderr.is_char_boundary(*i))
                                    .unwrap_or(stderr.len());
                                stderr.drain(..cut);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            return Err(api(format!(
                                "reading {} in container {name}",
                                argv.join(" ")
                            ))(e));
                        }
                    }
                }
                Ok(())
            };
            let ((), read) = tokio::join!(feed, read);
            read?;
        }
        let inspect = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(api(format!(
                "reading the exit code of {} in container {name}",
                argv.join(" ")
            )))?;
        Ok((inspect.exit_code, stdout, stderr))
    }

    /// Waits until container `name` has exited; its exit code.
    pub async fn wait_exited(&self, name: &str, timeout: Duration) -> Result<i64, DockerError> {
        let started = Instant::now();
        loop {
            let live = self
                .inspect(name)
                .await?
                .ok_or_else(|| DockerError::NotReady(format!("container {name} is gone")))?;
            if !live.running && live.status != "created" {
                return Ok(live.exit_code.unwrap_or_default());
            }
            if started.elapsed() >= timeout {
                return Err(DockerError::NotReady(format!(
                    "container {name} was still running after {}s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// `raw` with every entry relative to the archived directory (named
/// `base` in archives that hold the directory itself); the directory's
/// own entry left out.
pub fn reroot(raw: &[u8], base: &str) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Archive::new(raw);
    let mut out = tar::Builder::new(Vec::new());
    let mut rooted_at_slash: Option<bool> = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rooted =
            *rooted_at_slash.get_or_insert(path.starts_with('/') || path == "." || path == "./");
        let rel = if rooted {
            path.trim_start_matches("./")
                .trim_start_matches('/')
                .to_owned()
        } else {
            let p = path.trim_start_matches("./");
            match p.strip_prefix(base) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                    rest.trim_start_matches('/').to_owned()
                }
                _ => p.to_owned(),
            }
        };
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            continue;
        }
        let mut header = entry.header().clone();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut body)?;
        if let Some(l) = link {
            out.append_link(&mut header, &rel, String::from_utf8_lossy(&l).as_ref())?;
        } else {
            out.append_data(&mut header, &rel, body.as_slice())?;
        }
    }
    out.into_inner()
}

/// A container as the engine reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveContainer {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The image id it runs.
    pub image_id: String,
    pub running: bool,
    /// `running`, `exited`, `created`, …
    pub status: String,
    pub exit_code: Option<i64>,
    /// `starting`, `healthy`, `unhealthy`, when the engine checks health.
    pub health: Option<String>,
    pub health_log_len: usize,
    pub health_output: String,
    /// Its environment (the image's included). In memory only: it may
    /// hold secrets.
    pub env: BTreeMap<String, String>,
    /// `PORT/PROTO` → host ports it is published on.
    pub ports: BTreeMap<String, Vec<u16>>,
}

impl LiveContainer {
    fn from_inspect(c: bollard::models::ContainerInspectResponse) -> LiveContainer {
        let config = c.config.unwrap_or_default();
        let state = c.state.unwrap_or_default();
        let health = state.health.unwrap_or_default();
        let log = health.log.unwrap_or_default();
        let mut ports: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for (k, v) in c.network_settings.and_then(|n| n.ports).unwrap_or_default() {
            let e = ports.entry(k).or_default();
            for b in v.unwrap_or_default() {
                if let Some(p) = b.host_port.and_then(|p| p.parse().ok())
                    && !e.contains(&p)
                {
                    e.push(p);
                }
            }
        }
        LiveContainer {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            image_id: c.image.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code: state.exit_code,
            health: health
                .status
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            health_log_len: log.len(),
            health_output: log
                .last()
                .and_then(|l| l.output.clone())
                .unwrap_or_default(),
            env: config
                .env
                .unwrap_or_default()
                .into_iter()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect(),
            ports,
        }
    }

    /// The spec terrace created it with, when it carries one.
    pub fn spec(&self) -> Option<ContainerSpec> {
        self.labels
            .get(SPEC_LABEL)
            .and_then(|s| serde_json::from_str(s).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::reroot;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
            }
            // Raw names: `append_data` would refuse a leading `/`.
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *body).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn names(tar: &[u8]) -> Vec<String> {
        tar::Archive::new(tar)
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn archives_of_either_engine_read_as_the_directory_contents() {
        let docker = tar_of(&[
            ("data/", b""),
            ("data/f", b"hi\n"),
            ("data/sub/", b""),
            ("data/sub/g", b"x"),
        ]);
        let podman_stopped = tar_of(&[
            ("/", b""),
            ("/f", b"hi\n"),
            ("/sub/", b""),
            ("/sub/g", b"x"),
        ]);
        let want = ["f", "sub/", "sub/g"];
        assert_eq!(names(&reroot(&docker, "data").expect("docker")), want);
        assert_eq!(
            names(&reroot(&podman_stopped, "data").expect("podman")),
            want
        );
        // Nothing climbs out of the directory.
        let hostile = tar_of(&[("data/", b""), ("data/../../etc/x", b"no")]);
        assert!(names(&reroot(&hostile, "data").expect("hostile")).is_empty());
    }
}
