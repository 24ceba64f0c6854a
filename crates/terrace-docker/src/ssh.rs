//! A Docker host reached over SSH: the system `ssh` forwards a local Unix
//! socket (in a private temporary directory) to the engine's socket on
//! the host. The host key must be in the target's known_hosts file:
//! `StrictHostKeyChecking=yes`, so an unknown or changed key is an error,
//! never a question.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// The files an SSH endpoint uses, already absolute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshOptions {
    pub known_hosts: Option<PathBuf>,
    pub identity: Option<PathBuf>,
    /// The engine's socket on the host.
    pub socket: Option<String>,
}

/// `ssh://USER@HOST[:PORT]` with its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshEndpoint {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub socket: String,
    pub known_hosts: PathBuf,
    pub identity: Option<PathBuf>,
}

impl std::fmt::Display for SshEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ssh://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

fn plain(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || extra.contains(&c)
        })
}

impl SshEndpoint {
    /// `rest`: what follows `ssh://`.
    pub(crate) fn parse(rest: &str, opts: SshOptions) -> Result<SshEndpoint, String> {
        let rest = rest.trim_end_matches('/');
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        if let Some(u) = user
            && !plain(u, &[])
        {
            return Err(format!("has a user name ssh would misread (`{u}`)"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
                h,
                Some(p.parse::<u16>().map_err(|_| "has a bad port".to_owned())?),
            ),
            _ => (hostport, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !plain(host, &[':']) {
            return Err(format!("has a host name ssh would misread (`{host}`)"));
        }
        let known_hosts = opts.known_hosts.ok_or_else(|| {
            "is reached over SSH, but the target has no `ssh.knownHosts`: terrace checks the host's key and never accepts one on first use".to_owned()
        })?;
        let socket = opts
            .socket
            .unwrap_or_else(|| "/var/run/docker.sock".to_owned());
        if !socket.starts_with('/') {
            return Err(format!(
                "has a remote socket that is not an absolute path (`{socket}`)"
            ));
        }
        Ok(SshEndpoint {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
            socket,
            known_hosts,
            identity: opts.identity,
        })
    }
}

/// A running `ssh -L` and its local socket; closed on drop.
#[derive(Debug)]
pub(crate) struct Tunnel {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Tunnel {
    pub(crate) async fn open(s: &SshEndpoint) -> Result<Tunnel, String> {
        if !s.known_hosts.is_file() {
            return Err(format!(
                "the known_hosts file {} does not exist",
                s.known_hosts.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("terrace-ssh-")
            .tempdir()
            .map_err(|e| format!("cannot make a private directory for the tunnel: {e}"))?;
        let local = dir.path().join("docker.sock");
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.env_clear();
        for k in ["PATH", "HOME", "USER", "LOGNAME", "SSH_AUTH_SOCK", "LANG"] {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd.args(["-N", "-T"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", s.known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "ExitOnForwardFailure=yes"])
            .args(["-o", "StreamLocalBindUnlink=yes"])
            .args(["-o", "ServerAliveInterval=15"])
            .args(["-o", "ConnectTimeout=15"]);
        if let Some(id) = &s.identity {
            cmd.arg("-i").arg(id).args(["-o", "IdentitiesOnly=yes"]);
        }
        if let Some(p) = s.port {
            cmd.arg("-p").arg(p.to_string());
        }
        cmd.arg("-L")
            .arg(format!("{}:{}", local.display(), s.socket))
            .arg("--")
            .arg(match &s.user {
                Some(u) => format!("{u}@{}", s.host),
                None => s.host.clone(),
            })
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("cannot run ssh: {e}"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if local.exists() {
                return Ok(Tunnel { child, dir });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                let err = err.trim();
                return Err(format!(
                    "ssh ended ({status}){}",
                    if err.is_empty() {
                        String::new()
                    } else {
                        format!(": {err}")
                    }
                ));
            }
            if std::time::Instant::now() > deadline {
                return Err("the SSH tunnel did not open in 20s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SshOptions {
        SshOptions {
            known_hosts: Some(PathBuf::from("/k")),
            ..SshOptions::default()
        }
    }

    #[test]
    fn addresses_are_read_and_hostile_ones_refused() {
        let e = SshEndpoint::parse("deploy@nas.lan:2222", opts()).expect("parses");
        assert_eq!(e.user.as_deref(), Some("deploy"));
        assert_eq!(e.host, "nas.lan");
        assert_eq!(e.port, Some(2222));
        assert_eq!(e.socket, "/var/run/docker.sock");
        for bad in [
            "-oProxyCommand=x@h",
            "u@-oProxyCommand=touch",
            "u@h;rm",
            "u@h:99999",
            "u p@h",
        ] {
            assert!(SshEndpoint::parse(bad, opts()).is_err(), "{bad}");
        }
        let err = SshEndpoint::parse("u@h", SshOptions::default()).expect_err("needs known hosts");
        assert!(err.contains("knownHosts"), "{err}");
    }
}
