//! `nfs://SERVER[:PORT]/EXPORT[/SUBPATH]?version=3|4&mountport=M&nfsport=N&retrysecs=S`, read
//! once.
//!
//! The URL does not say where the export ends and the repository's sub-path begins (the server
//! knows, the client cannot): [`Location::mount_candidates`] gives the mount paths to try, the
//! longest first, so a repository directory that does not exist yet can still be created under
//! the export that does.

use crate::error::NfsError;

/// Which protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3,
    V40,
    V41,
}

impl Version {
    pub(crate) fn url_param(self) -> &'static str {
        match self {
            Version::V3 => "3",
            Version::V40 => "4.0",
            Version::V41 => "4.1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Version::V3 => "NFSv3",
            Version::V40 => "NFSv4.0",
            Version::V41 => "NFSv4.1",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// As given, for messages.
    pub text: String,
    pub host: String,
    /// The NFS port (`:PORT` or `nfsport=`); `None` asks the portmapper (v3) or uses 2049 (v4).
    pub nfs_port: Option<u16>,
    pub mount_port: Option<u16>,
    /// Path components after the host: the export's path (v3) or pseudo path (v4), then the
    /// repository's directory under it.
    pub path: Vec<String>,
    /// In the order to try; several only when the location names no version.
    pub versions: Vec<Version>,
    /// Bind an unprivileged source port (`noresvport=true`, which the server must allow);
    /// by default a root process binds a port below 1024, as the kernel client does, and any
    /// other process (which cannot) an unprivileged one.
    pub noresvport: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// How long a call that fails transiently (the server unreachable, restarting or busy) is
    /// tried again before it fails (`retrysecs=`); `None`: core's default retry budget.
    pub retry_secs: Option<u32>,
}

impl Location {
    pub fn parse(text: &str) -> Result<Location, NfsError> {
        let bad = |reason: &str| NfsError::InvalidLocation {
            location: text.to_string(),
            reason: reason.to_string(),
        };
        let rest = text
            .strip_prefix("nfs://")
            .ok_or_else(|| bad("it does not start with nfs://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad SERVER[:PORT]"))?;
        if host.is_empty() {
            return Err(bad("it names no server"));
        }
        let path: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect();
        if path.is_empty() {
            return Err(bad("it names no export: nfs://SERVER/EXPORT[/SUBPATH]"));
        }
        if path.iter().any(|c| c == "..") {
            return Err(bad("`..` is not allowed in the path"));
        }
        let mut loc = Location {
            text: text.to_string(),
            host: host.to_string(),
            nfs_port: port,
            mount_port: None,
            path,
            versions: vec![Version::V41, Version::V3],
            noresvport: !is_root(),
            uid: None,
            gid: None,
            retry_secs: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |what: &str| -> Result<u32, NfsError> {
                value
                    .parse::<u32>()
                    .map_err(|_| bad(&format!("{what}={value:?} is not a number")))
            };
            let port = |what: &str| -> Result<u16, NfsError> {
                match value.parse::<u16>() {
                    Ok(p) if p > 0 => Ok(p),
                    _ => Err(bad(&format!("{what}={value:?} is not a port"))),
                }
            };
            match key {
                "version" => {
                    loc.versions = vec![match value {
                        "3" => Version::V3,
                        "4" | "4.1" => Version::V41,
                        "4.0" => Version::V40,
                        _ => return Err(bad("version must be 3, 4 (4.1) or 4.0")),
                    }]
                }
                "nfsport" => loc.nfs_port = Some(port(key)?),
                "mountport" => loc.mount_port = Some(port(key)?),
                "noresvport" => loc.noresvport = matches!(value, "" | "1" | "true" | "yes"),
                "uid" => loc.uid = Some(number(key)?),
                "gid" => loc.gid = Some(number(key)?),
                "retrysecs" => loc.retry_secs = Some(number(key)?),
                _ => return Err(bad(&format!("unknown option {key:?} (known: version, nfsport, mountport, noresvport, uid, gid, retrysecs)"))),
            }
        }
        Ok(loc)
    }

    /// `host:port` for messages.
    pub fn server(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.nfs_port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }

    /// (mount path, components below it), longest mount path first.
    pub(crate) fn mount_candidates(&self) -> Vec<(String, Vec<String>)> {
        (1..=self.path.len())
            .rev()
            .map(|n| {
                (
                    format!("/{}", self.path[..n].join("/")),
                    self.path[n..].to_vec(),
                )
            })
            .collect()
    }

    /// The URL nfs-rs mounts.
    pub(crate) fn client_url(&self, version: Version, mount_path: &str) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut url = format!("nfs://{host}{mount_path}?version={}", version.url_param());
        if let Some(p) = self.nfs_port {
            url.push_str(&format!("&nfsport={p}"));
        }
        if let Some(p) = self.mount_port {
            url.push_str(&format!("&mountport={p}"));
        }
        if self.noresvport {
            url.push_str("&noresvport=true");
        }
        if let Some(uid) = self.uid {
            url.push_str(&format!("&uid={uid}"));
        }
        if let Some(gid) = self.gid {
            url.push_str(&format!("&gid={gid}"));
        }
        url
    }
}

/// Whether this process runs as root (may bind ports below 1024): the owner of `/proc/self`
/// is the effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.split_once(':') {
        Some((host, p)) => Some((host, Some(p.parse().ok()?))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let l =
            Location::parse("nfs://nas:2050/srv/backup/repo?version=3&mountport=20048").unwrap();
        assert_eq!(l.host, "nas");
        assert_eq!(l.nfs_port, Some(2050));
        assert_eq!(l.mount_port, Some(20048));
        assert_eq!(l.versions, vec![Version::V3]);
        assert_eq!(l.path, vec!["srv", "backup", "repo"]);
        assert_eq!(
            l.mount_candidates()[1],
            ("/srv/backup".to_string(), vec!["repo".to_string()])
        );
        assert_eq!(l.retry_secs, None);
        let l = Location::parse("nfs://10.0.0.1/export").unwrap();
        assert_eq!(l.versions, vec![Version::V41, Version::V3]);
        let l = Location::parse("nfs://10.0.0.1/export?retrysecs=15").unwrap();
        assert_eq!(l.retry_secs, Some(15));
        assert_eq!(l.server(), "10.0.0.1");
        let l = Location::parse("nfs://[::1]:2049/e?version=4&nfsport=3000").unwrap();
        assert_eq!((l.host.as_str(), l.nfs_port), ("::1", Some(3000)));
        assert_eq!(l.versions, vec![Version::V41]);
        assert!(l
            .client_url(Version::V41, "/e")
            .starts_with("nfs://[::1]/e?version=4.1"));
    }

    #[test]
    fn refuses_what_it_cannot_mean() {
        for bad in [
            "nfs://",
            "nfs://host",
            "nfs://host/",
            "nfs://host/e?version=5",
            "nfs://host/e?port=1",
            "nfs://host/e/../x",
            "nfs://host:x/e",
            "nfs://host/e?retrysecs=-1",
        ] {
            let err = Location::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
