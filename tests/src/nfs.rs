//! A real NFS-Ganesha server (VFS FSAL) for the NFS backend's tests: one per test, on free
//! loopback ports, exporting a temporary directory over NFSv3 and NFSv4, stopped on drop.
//!
//! Several servers run at once (nextest runs test binaries, and tests, in parallel): measured
//! with Ganesha 4.3, two instances with their own ports, config, pid file and NFSv4 recovery
//! directory serve side by side behind one `rpcbind`. Each registers its ports with rpcbind
//! (the last one started wins the registration) but nothing here asks the portmapper: every
//! URL carries `nfsport=` and `mountport=`. rpcbind itself must run, or Ganesha exits at
//! start, so the harness starts `rpcbind -w` once if none is running. Registering is the one
//! step that collides: two servers starting at the same moment make one fail ("Cannot
//! register NFS V3"), so starts are serialised by a file lock in the temp directory.
//!
//! `stop()` kills the server abruptly (SIGKILL, a crash or power cut as far as a client can
//! tell) and `start()` brings it back on the same ports and export; `Graceless` keeps NFSv4
//! from a grace period after the restart. A server with `size` exports a tmpfs of that size
//! (mounted before Ganesha starts, so Ganesha claims it as the export's file system), for the
//! full-export tests: that needs root, as the full-disk tests do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::free_port;

pub const GANESHA: &str = "ganesha.nfsd";

/// Whether Ganesha and rpcbind are installed (scripts/setup.sh installs them).
pub fn ganesha_available() -> bool {
    Command::new("sh")
        .args(["-c", "command -v ganesha.nfsd && command -v rpcbind"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub struct NfsServer {
    dir: tempfile::TempDir,
    pub nfs_port: u16,
    pub mount_port: u16,
    /// The exported directory (the export's real path, what NFSv3 mounts).
    pub export: PathBuf,
    /// The export's NFSv4 pseudo path.
    pub pseudo: String,
    tmpfs: bool,
    pid: Option<i32>,
}

impl NfsServer {
    /// An agent.toml `[[storage]]` entry for the storage `main` on this server: the built-in
    /// client over NFSv3 on its free ports, waiting `retry_secs` (when given) for a server that
    /// is gone before a job fails.
    pub fn storage_entry(&self, retry_secs: Option<u32>) -> String {
        let mut entry = format!(
            "\n[[storage]]\nid = \"main\"\nnfs_port = {}\nmount_port = {}\nnfs_version = \"3\"\n",
            self.nfs_port, self.mount_port
        );
        if let Some(secs) = retry_secs {
            entry.push_str(&format!("nfs_retry_secs = {secs}\n"));
        }
        entry
    }

    pub fn start() -> NfsServer {
        Self::start_with(None)
    }

    /// A server whose export is a tmpfs of `size` (`"16m"`); `None` when mounting is not
    /// allowed and BULWARK_SKIP_MOUNT_TESTS is set.
    pub fn start_small(size: &str) -> Option<NfsServer> {
        let server = Self::start_with(Some(size));
        server.tmpfs.then_some(server)
    }

    fn start_with(size: Option<&str>) -> NfsServer {
        assert!(
            ganesha_available(),
            "ganesha.nfsd or rpcbind missing: run scripts/setup.sh"
        );
        ensure_rpcbind();
        let dir = tempfile::tempdir().expect("temp dir");
        let export = dir.path().join("export");
        std::fs::create_dir_all(&export).unwrap();
        let mut tmpfs = false;
        if let Some(size) = size {
            tmpfs = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(&export)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                tmpfs || std::env::var("BULWARK_SKIP_MOUNT_TESTS").is_ok(),
                "cannot mount a tmpfs at {} (not root?); set BULWARK_SKIP_MOUNT_TESTS=1 to skip",
                export.display()
            );
        }
        let recovery = dir.path().join("recovery");
        std::fs::create_dir_all(&recovery).unwrap();
        let (nfs_port, mount_port) = (free_port(), free_port());
        let pseudo = "/bulwark".to_string();
        let config = format!(
            r#"NFS_CORE_PARAM {{ Protocols = 3, 4; NFS_Port = {nfs_port}; MNT_Port = {mount_port}; Bind_addr = 127.0.0.1; Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; }}
NFSV4 {{ Graceless = true; Lease_Lifetime = 10; RecoveryBackend = fs; RecoveryRoot = "{recovery}"; }}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
  Export_Id = 1; Path = "{export}"; Pseudo = "{pseudo}";
  Access_Type = RW; Squash = No_Root_Squash; Protocols = 3, 4; Transports = TCP; SecType = sys;
  FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = WARN; }}
"#,
            recovery = recovery.display(),
            export = export.display(),
        );
        std::fs::write(dir.path().join("ganesha.conf"), config).unwrap();
        let mut server = NfsServer {
            dir,
            nfs_port,
            mount_port,
            export,
            pseudo,
            tmpfs,
            pid: None,
        };
        server.run();
        server
    }

    /// `nfs://` URL of the repository `sub` (a path under the export) over NFSv3.
    pub fn url_v3(&self, sub: &str) -> String {
        format!(
            "nfs://127.0.0.1{}/{sub}?version=3&nfsport={}&mountport={}",
            self.export.display(),
            self.nfs_port,
            self.mount_port
        )
    }

    /// `nfs://` URL of the repository `sub` over NFSv4.1 (the pseudo path).
    pub fn url_v4(&self, sub: &str) -> String {
        format!(
            "nfs://127.0.0.1{}/{sub}?version=4&nfsport={}",
            self.pseudo, self.nfs_port
        )
    }

    /// Where the server logs (for a failing test's message).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("ganesha.log")
    }

    pub fn is_running(&self) -> bool {
        self.pid.is_some()
    }

    fn run(&mut self) {
        // Registering with rpcbind fails when two servers register at the same moment: one
        // start at a time, across test processes too.
        let lock = std::fs::File::create(std::env::temp_dir().join("bulwark-ganesha-start.lock"))
            .expect("start lock file");
        lock.lock().expect("start lock");
        let pid_file = self.dir.path().join("ganesha.pid");
        let _ = std::fs::remove_file(&pid_file);
        let status = Command::new(GANESHA)
            .arg("-f")
            .arg(self.dir.path().join("ganesha.conf"))
            .arg("-L")
            .arg(self.log())
            .arg("-p")
            .arg(&pid_file)
            .args(["-N", "NIV_WARN"])
            .status()
            .expect("ganesha.nfsd (install with scripts/setup.sh)");
        assert!(
            status.success(),
            "ganesha.nfsd failed: see {}",
            self.log().display()
        );
        // It daemonises; it answers once both ports accept connections.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            let up = [self.nfs_port, self.mount_port]
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if let (Some(pid), true) = (pid, up) {
                self.pid = Some(pid);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ganesha did not come up on ports {}/{}: {}",
                self.nfs_port,
                self.mount_port,
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (SIGKILL) and waits until its port is closed.
    pub fn stop(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{pid}")).exists()
            || std::net::TcpStream::connect(("127.0.0.1", self.nfs_port)).is_ok()
        {
            assert!(Instant::now() < deadline, "ganesha {pid} did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the stopped server again, same ports and export.
    pub fn restart(&mut self) {
        assert!(self.pid.is_none(), "server already running");
        self.run();
    }
}

fn ensure_rpcbind() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let running = Command::new("pgrep")
            .args(["-x", "rpcbind"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !running {
            // `-w` keeps registrations across its own restarts; it daemonises. Another test
            // binary starting one at the same moment just makes the second one fail to bind.
            let _ = Command::new("rpcbind").arg("-w").status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", 111)).is_err() {
            assert!(Instant::now() < deadline, "rpcbind did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        self.stop();
        if self.tmpfs {
            let _ = Command::new("umount").arg("-l").arg(&self.export).status();
        }
    }
}
