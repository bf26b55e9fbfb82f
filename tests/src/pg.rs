//! Harness for tests against real PostgreSQL 15 clusters: a throw-away cluster per test on its
//! own port and directory, psql/pgbench helpers, content fingerprints to compare a restored
//! database with its source, and an agent set-up that writes the agent's TOML config.
//!
//! PostgreSQL refuses to run as root, and CI runs the tests as root. So when the effective uid is
//! 0, every PostgreSQL server process and every agent invocation that touches a cluster runs as
//! the `postgres` OS user (`runuser -u postgres -- …`), and the directories those processes
//! write are handed to that user. Client tools (psql, pgbench) connect over TCP with a password
//! and run as the test process itself. When not root, everything runs as the current user.
//!
//! Everything is removed on drop, also when a test panics: servers are stopped with
//! `pg_ctl stop -m immediate` before their directory goes. Declare a [`RunningServer`] guard
//! *after* the [`AgentSetup`] or [`PgCluster`] whose directory holds its data directory, so it is
//! dropped (and the server stopped) first.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{agent_bin, free_port};

/// Where Debian's postgresql-15 package puts the server binaries.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The superuser password of every test cluster.
pub const PG_PASSWORD: &str = "bulwark-test-pw";
/// The OS user PostgreSQL (and the agent) run as when the tests run as root.
pub const DB_OS_USER: &str = "postgres";

/// A PostgreSQL 15 binary, e.g. `pg_bin("pg_ctl")`.
pub fn pg_bin(name: &str) -> PathBuf {
    Path::new(PG_BIN_DIR).join(name)
}

/// Whether PostgreSQL 15 is installed (scripts/setup.sh installs it).
pub fn pg_available() -> bool {
    pg_bin("initdb").exists() && pg_bin("pg_ctl").exists()
}

/// Whether this process runs with effective uid 0 (read from /proc, no libc needed).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// uid and gid of the `postgres` OS user (from /etc/passwd).
pub fn db_user_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == DB_OS_USER)
            .map(|f| (f[2].parse().unwrap(), f[3].parse().unwrap()))
            .unwrap_or_else(|| {
                panic!("no '{DB_OS_USER}' OS user: install postgresql-15 (scripts/setup.sh)")
            })
    })
}

/// A command that runs `cmd` as the `postgres` OS user when we are root
/// (`runuser -u postgres -- cmd`), otherwise directly. Its working directory is `/` (the
/// postgres user may not be allowed into the test's own directory); the environment is
/// inherited through runuser.
pub fn as_db_user(cmd: &Path) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", DB_OS_USER, "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    };
    c.current_dir("/");
    c
}

/// Hands `path` (recursively) to the `postgres` OS user when we are root; no-op otherwise.
pub fn give_to_db_user(path: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = db_user_ids();
    fn walk(p: &Path, uid: u32, gid: u32) {
        let meta =
            std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        if meta.is_dir() {
            for entry in std::fs::read_dir(p).unwrap() {
                walk(&entry.unwrap().path(), uid, gid);
            }
        }
    }
    walk(path, uid, gid);
}

/// A temporary directory that the `postgres` OS user owns (when root) and everyone may enter.
pub fn db_user_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("bulwark-pg-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    give_to_db_user(dir.path());
    dir
}

/// Writes a file only its owner can read, owned by the `postgres` OS user when root.
pub fn write_private_file(path: &Path, contents: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.write_all(contents.as_bytes()).unwrap();
    drop(f);
    give_to_db_user(path);
}

/// A TOML basic string (quoted and escaped).
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A word for `sh -c` (single-quoted).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// An SQL identifier, double-quoted.
pub fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An SQL string literal.
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs a command, panics with its output unless it succeeds.
fn run_ok(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The last `lines` lines of a file (for panic messages), or a note that it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Connection to a server on 127.0.0.1 as the `postgres` superuser: psql, pgbench and
/// fingerprints. [`PgCluster`] and [`RunningServer`] have the same methods.
#[derive(Clone, Debug)]
pub struct PgClient {
    pub port: u16,
    pub password: String,
}

impl PgClient {
    fn client_cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(pg_bin(tool));
        c.env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGSERVICEFILE")
            .env_remove("PGPASSFILE")
            .env_remove("PGOPTIONS")
            .env_remove("PGSSLMODE")
            .stdin(Stdio::null());
        c
    }

    fn conn_args(&self, c: &mut Command, db: &str) {
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-d", db]);
    }

    /// Runs `sql` with psql; `Err(stderr)` on failure, else trimmed stdout (unaligned,
    /// tuples only: one row a line, columns separated by `|`).
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut c = self.client_cmd("psql");
        c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        self.conn_args(&mut c, db);
        c.arg("-c").arg(sql);
        let out = c.output().map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// Runs `sql` with psql and panics (with psql's stderr) on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql -p {} -d {db} -c {sql:?} failed:\n{e}", self.port))
    }

    /// Creates database `db` unless it exists.
    pub fn create_database(&self, db: &str) {
        let exists = self.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = {}",
                sql_literal(db)
            ),
        );
        if exists == "0" {
            self.psql("postgres", &format!("CREATE DATABASE {}", sql_ident(db)));
        }
    }

    /// Creates `db` (if needed) and fills it with `pgbench -i -s scale -q`
    /// (scale 1 = 100 000 rows in pgbench_accounts, about 15 MB).
    pub fn pgbench_init(&self, db: &str, scale: u32) {
        self.create_database(db);
        let mut c = self.client_cmd("pgbench");
        c.args(["-i", "-q", "-s", &scale.to_string()]);
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        c.arg(db);
        run_ok(c, &format!("pgbench -i -s {scale} {db}"));
    }

    /// Runs `pgbench` transactions against `db` (after [`pgbench_init`](Self::pgbench_init)):
    /// `transactions` per client, `clients` clients.
    pub fn pgbench_run(&self, db: &str, clients: u32, transactions: u32) {
        let mut c = self.client_cmd("pgbench");
        c.args([
            "-n",
            "-c",
            &clients.to_string(),
            "-t",
            &transactions.to_string(),
        ]);
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        c.arg(db);
        run_ok(c, &format!("pgbench -c {clients} -t {transactions} {db}"));
    }

    /// For every user table of `db` (every schema but pg_catalog, information_schema and the
    /// toast/temp schemas; key `schema.table`): its row count and the md5 of its rows as text,
    /// sorted. Two databases with equal fingerprints hold the same data.
    pub fn table_fingerprints(&self, db: &str) -> BTreeMap<String, (i64, String)> {
        let tables = self.psql(
            db,
            "SELECT n.nspname || '.' || c.relname || E'\\t' \
                    || quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             ORDER BY 1",
        );
        let mut out = BTreeMap::new();
        for line in tables.lines().filter(|l| !l.is_empty()) {
            let (key, quoted) = line.split_once('\t').expect("name<TAB>quoted name");
            let row = self.psql(
                db,
                &format!(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) \
                     FROM {quoted} t"
                ),
            );
            let (count, md5) = row.split_once('|').expect("count|md5");
            out.insert(key.to_string(), (count.parse().unwrap(), md5.to_string()));
        }
        out
    }

    /// Waits until the server accepts `SELECT 1` (panics with `log`'s tail after `timeout`).
    pub fn wait_ready(&self, timeout: Duration, log: &Path) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_psql("postgres", "SELECT 1") {
                Ok(_) => return,
                Err(e) if Instant::now() >= deadline => panic!(
                    "PostgreSQL on port {} not ready after {timeout:?}: {e}\nlog {}:\n{}",
                    self.port,
                    log.display(),
                    tail(log, 40)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// Options of [`PgCluster::start`].
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Turns on `archive_mode` with this `archive_command` (`%p`/`%f` as PostgreSQL expands
    /// them; it runs as the `postgres` OS user through `sh`).
    pub archive_command: Option<String>,
    /// More `postgresql.conf` lines, appended last (so they win).
    pub extra_conf: Vec<String>,
}

/// A PostgreSQL 15 cluster of its own in a temporary directory, listening on 127.0.0.1 on a
/// free port, superuser `postgres` with password [`PG_PASSWORD`] (scram-sha-256 everywhere).
/// Stopped (`-m immediate`) and removed on drop.
pub struct PgCluster {
    /// Holds everything: `data/`, `postgresql.log`, the Unix socket, password files.
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub port: u16,
    pub password: String,
    /// The server log (`pg_ctl -l`).
    pub log: PathBuf,
    /// A file holding [`password`](Self::password) (mode 0600, owned by the `postgres` OS user
    /// when root), for the agent's `connection.password_file`.
    pub password_file: PathBuf,
    pub client: PgClient,
}

impl PgCluster {
    /// initdb + configure + `pg_ctl start -w`; returns once the server answers queries.
    pub fn start(opts: PgOptions) -> PgCluster {
        assert!(
            pg_available(),
            "PostgreSQL 15 not found in {PG_BIN_DIR}: run scripts/setup.sh"
        );
        let dir = db_user_tempdir();
        let data_dir = dir.path().join("data");
        let log = dir.path().join("postgresql.log");
        let password = PG_PASSWORD.to_string();
        let initdb_pw = dir.path().join("initdb-pwfile");
        write_private_file(&initdb_pw, &format!("{password}\n"));
        let password_file = dir.path().join("pg-password");
        write_private_file(&password_file, &format!("{password}\n"));

        let mut initdb = as_db_user(&pg_bin("initdb"));
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", "postgres", "--auth=scram-sha-256", "--no-sync"])
            .args(["-E", "UTF8", "--no-locale"])
            .arg("--pwfile")
            .arg(&initdb_pw);
        run_ok(initdb, "initdb");
        let _ = std::fs::remove_file(&initdb_pw);

        let mut conf = vec![
            String::new(),
            "# bulwark test harness".to_string(),
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", dir.path().display()),
            "wal_level = replica".to_string(),
            "max_wal_senders = 4".to_string(),
            "archive_timeout = 0".to_string(),
            "shared_buffers = 64MB".to_string(),
            "max_connections = 40".to_string(),
        ];
        if let Some(cmd) = &opts.archive_command {
            conf.push("archive_mode = on".to_string());
            conf.push(format!("archive_command = {}", sql_literal(cmd)));
        }
        conf.extend(opts.extra_conf.iter().cloned());
        let conf_path = data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf.join("\n"));
        text.push('\n');
        std::fs::write(&conf_path, text).expect("write postgresql.conf");

        // A port that another test takes between free_port() and the server's bind makes the
        // start fail: try again with another port.
        let mut attempt = 0;
        let port = loop {
            attempt += 1;
            let port = free_port();
            let mut start = as_db_user(&pg_bin("pg_ctl"));
            start
                .arg("-D")
                .arg(&data_dir)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o", &format!("-p {port}"), "start"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let out = start.output().expect("run pg_ctl");
            if out.status.success() {
                break port;
            }
            let log_text = tail(&log, 40);
            if attempt < 4 && log_text.contains("could not bind") {
                continue;
            }
            panic!(
                "pg_ctl start failed ({}): {}\nlog:\n{log_text}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // Also record the port in the configuration, so a plain `pg_ctl start` (and a physical
        // copy of this data directory) uses the same one.
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&format!("port = {port}\n"));
        std::fs::write(&conf_path, text).unwrap();

        let client = PgClient {
            port,
            password: password.clone(),
        };
        let cluster = PgCluster {
            dir,
            data_dir,
            port,
            password,
            log,
            password_file,
            client,
        };
        cluster
            .client
            .wait_ready(Duration::from_secs(30), &cluster.log);
        cluster
    }

    /// A path inside the cluster's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.client.psql(db, sql)
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        self.client.try_psql(db, sql)
    }

    pub fn create_database(&self, db: &str) {
        self.client.create_database(db)
    }

    pub fn pgbench_init(&self, db: &str, scale: u32) {
        self.client.pgbench_init(db, scale)
    }

    pub fn pgbench_run(&self, db: &str, clients: u32, transactions: u32) {
        self.client.pgbench_run(db, clients, transactions)
    }

    pub fn table_fingerprints(&self, db: &str) -> BTreeMap<String, (i64, String)> {
        self.client.table_fingerprints(db)
    }

    /// The agent's `connection = { … }` inline table for database `dbname` of this cluster.
    pub fn connection_toml(&self, dbname: &str) -> String {
        format!(
            "{{ host = \"127.0.0.1\", port = {}, user = \"postgres\", dbname = {}, password_file = {} }}",
            self.port,
            toml_str(dbname),
            toml_str(&self.password_file.to_string_lossy())
        )
    }

    /// The same as a libpq DSN: `{ dsn = "…", password_file = "…" }`.
    pub fn connection_dsn_toml(&self, dbname: &str) -> String {
        format!(
            "{{ dsn = {}, password_file = {} }}",
            toml_str(&format!(
                "host=127.0.0.1 port={} user=postgres dbname={dbname}",
                self.port
            )),
            toml_str(&self.password_file.to_string_lossy())
        )
    }

    /// One `[[databases]]` entry (with its header) for this cluster: `method` is "logical" or
    /// "physical"; `data_dir` and `bin_dir` are always given.
    pub fn database_toml(&self, id: &str, method: &str, dbname: &str) -> String {
        format!(
            "[[databases]]\nid = {}\ntype = \"postgresql\"\nmethod = {}\ndata_dir = {}\nbin_dir = {}\nconnection = {}\n",
            toml_str(id),
            toml_str(method),
            toml_str(&self.data_dir.to_string_lossy()),
            toml_str(PG_BIN_DIR),
            self.connection_toml(dbname)
        )
    }

    /// `pg_ctl stop -m fast` (panics if it fails).
    pub fn stop(&self) {
        pg_ctl_stop(&self.data_dir, "fast")
            .unwrap_or_else(|e| panic!("pg_ctl stop failed: {e}\nlog:\n{}", tail(&self.log, 40)));
    }

    /// `pg_ctl start -w` again after [`stop`](Self::stop), on the same port.
    pub fn start_again(&self) {
        pg_ctl_start(&self.data_dir, self.port, &self.log, &[]);
        self.client.wait_ready(Duration::from_secs(30), &self.log);
    }

    /// `pg_ctl restart -m fast` (e.g. after changing postgresql.conf).
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Whether a postmaster is running on the data directory (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        pg_is_running(&self.data_dir)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = pg_ctl_stop(&self.data_dir, "immediate");
    }
}

/// `pg_ctl -D data_dir stop -m mode -w` as the db user; `Err` with its output on failure
/// (also when no server runs there).
pub fn pg_ctl_stop(data_dir: &Path, mode: &str) -> Result<(), String> {
    let out = as_db_user(&pg_bin("pg_ctl"))
        .arg("-D")
        .arg(data_dir)
        .args(["-m", mode, "-w", "-t", "60", "stop"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether `pg_ctl status` finds a running server on `data_dir`.
pub fn pg_is_running(data_dir: &Path) -> bool {
    as_db_user(&pg_bin("pg_ctl"))
        .arg("-D")
        .arg(data_dir)
        .arg("status")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `pg_ctl start -w` as the db user with `-p port` plus `-c` settings; panics with the log.
fn pg_ctl_start(data_dir: &Path, port: u16, log: &Path, settings: &[String]) {
    let mut opts = format!("-p {port}");
    for s in settings {
        opts.push_str(" -c ");
        opts.push_str(&shell_quote(s));
    }
    let out = as_db_user(&pg_bin("pg_ctl"))
        .arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", "120", "-o", &opts, "start"])
        .stdin(Stdio::null())
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl -D {} start failed ({}): {}{}\nlog {}:\n{}",
        data_dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log.display(),
        tail(log, 60)
    );
}

/// A server on another data directory, typically one the agent restored: stopped with
/// `pg_ctl -D data_dir stop -m immediate` on drop (errors ignored). It does not own the
/// directory; drop it before whatever does.
pub struct RunningServer {
    pub data_dir: PathBuf,
    pub port: u16,
    /// Where [`start`](Self::start) sends the server log (next to the data directory).
    pub log: PathBuf,
    pub client: PgClient,
}

impl RunningServer {
    /// Guards a server that someone else (the agent) starts or started on `data_dir` and
    /// `port`; the password is [`PG_PASSWORD`] (that of the cluster it was copied from).
    pub fn attach(data_dir: &Path, port: u16) -> RunningServer {
        RunningServer {
            data_dir: data_dir.to_path_buf(),
            port,
            log: log_beside(data_dir),
            client: PgClient {
                port,
                password: PG_PASSWORD.to_string(),
            },
        }
    }

    /// Starts the server on `data_dir` (e.g. a restored physical backup) on `port` with
    /// `pg_ctl start -w`, as the db user, and waits until it answers queries (after recovery
    /// when the data directory asks for it: pg_ctl waits for recovery to end unless the server
    /// stays a standby). The Unix socket goes into the data directory's parent (the original
    /// cluster's socket directory may be gone) and `archive_mode` is turned off unless
    /// `settings` (`name=value` strings, passed as `-c`) say otherwise.
    pub fn start(data_dir: &Path, port: u16, settings: &[&str]) -> RunningServer {
        let server = RunningServer::attach(data_dir, port);
        let socket_dir = data_dir.parent().unwrap_or(Path::new("/tmp"));
        let mut all = vec![
            format!("unix_socket_directories={}", socket_dir.display()),
            "archive_mode=off".to_string(),
        ];
        all.extend(settings.iter().map(|s| s.to_string()));
        pg_ctl_start(data_dir, port, &server.log, &all);
        server
            .client
            .wait_ready(Duration::from_secs(120), &server.log);
        server
    }

    /// Waits until the server answers queries (for a server the agent started).
    pub fn wait_ready(&self, timeout: Duration) {
        let log = if self.log.exists() {
            self.log.clone()
        } else {
            self.data_dir.join("log")
        };
        self.client.wait_ready(timeout, &log)
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.client.psql(db, sql)
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        self.client.try_psql(db, sql)
    }

    pub fn table_fingerprints(&self, db: &str) -> BTreeMap<String, (i64, String)> {
        self.client.table_fingerprints(db)
    }

    /// `pg_ctl stop -m fast` (panics if it fails).
    pub fn stop(&self) {
        pg_ctl_stop(&self.data_dir, "fast")
            .unwrap_or_else(|e| panic!("pg_ctl stop failed: {e}\nlog:\n{}", tail(&self.log, 40)));
    }

    pub fn is_running(&self) -> bool {
        pg_is_running(&self.data_dir)
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = pg_ctl_stop(&self.data_dir, "immediate");
    }
}

/// `<parent>/<name>.log` for a data directory `<parent>/<name>`.
fn log_beside(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pgdata".into());
    data_dir
        .parent()
        .unwrap_or(Path::new("/tmp"))
        .join(format!("{name}.log"))
}

/// An agent set-up: a directory owned by the db user (when root) holding the agent's TOML
/// config, the repository passphrase file and (by default) the repository, and a way to run
/// `bulwark-agent --config FILE …` as the db user.
///
/// ```ignore
/// let setup = AgentSetup::new();
/// let pg = PgCluster::start(PgOptions { archive_command: Some(setup.wal_push_command("orders")), ..Default::default() });
/// let mut setup = setup;
/// setup.add_postgres("orders", "physical", &pg, "orders");
/// setup.init();
/// let report = setup.agent_json(&["backup", "--database", "orders"]);
/// ```
pub struct AgentSetup {
    pub dir: tempfile::TempDir,
    /// The config file (`<dir>/agent.toml`), rewritten by every `add_*`.
    pub config: PathBuf,
    /// `[repository] location`: `<dir>/repo` unless [`with_repo`](Self::with_repo).
    pub repo: String,
    /// `[repository] password_file`.
    pub password_file: PathBuf,
    /// More environment for the agent (e.g. [`crate::S3Server::env`]).
    pub extra_env: Vec<(String, String)>,
    databases: Vec<String>,
}

impl AgentSetup {
    pub fn new() -> AgentSetup {
        let dir = db_user_tempdir();
        let password_file = dir.path().join("repo-passphrase");
        write_private_file(&password_file, "correct horse battery staple\n");
        let repo = dir.path().join("repo").to_string_lossy().into_owned();
        let setup = AgentSetup {
            config: dir.path().join("agent.toml"),
            dir,
            repo,
            password_file,
            extra_env: Vec::new(),
            databases: Vec::new(),
        };
        setup.write_config();
        setup
    }

    /// With another repository location (e.g. `s3://bucket/prefix`).
    pub fn with_repo(location: &str) -> AgentSetup {
        let mut setup = AgentSetup::new();
        setup.repo = location.to_string();
        setup.write_config();
        setup
    }

    /// A path in the set-up's directory (which the db user may write: use it for restore
    /// targets such as a new data directory).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Adds a `[[databases]]` entry given as TOML lines (with or without the header).
    pub fn add_database_toml(&mut self, entry: &str) -> &mut Self {
        let entry = entry.trim();
        let entry = if entry.starts_with("[[databases]]") {
            format!("{entry}\n")
        } else {
            format!("[[databases]]\n{entry}\n")
        };
        self.databases.push(entry);
        self.write_config();
        self
    }

    /// Adds database `dbname` of `cluster` as `id` with `method` "logical" or "physical".
    pub fn add_postgres(
        &mut self,
        id: &str,
        method: &str,
        cluster: &PgCluster,
        dbname: &str,
    ) -> &mut Self {
        let entry = cluster.database_toml(id, method, dbname);
        self.add_database_toml(&entry)
    }

    /// Adds a SQLite database file as `id` (hand the file to the db user with
    /// [`give_to_db_user`] if the test created it as root).
    pub fn add_sqlite(&mut self, id: &str, path: &Path) -> &mut Self {
        let entry = format!(
            "id = {}\ntype = \"sqlite\"\npath = {}\n",
            toml_str(id),
            toml_str(&path.to_string_lossy())
        );
        self.add_database_toml(&entry)
    }

    /// The config text as written.
    pub fn config_text(&self) -> String {
        let mut text = format!(
            "[repository]\nlocation = {}\npassword_file = {}\n",
            toml_str(&self.repo),
            toml_str(&self.password_file.to_string_lossy())
        );
        for db in &self.databases {
            text.push('\n');
            text.push_str(db);
        }
        text
    }

    /// (Re)writes the config file (readable by the db user).
    pub fn write_config(&self) {
        std::fs::write(&self.config, self.config_text()).expect("write agent config");
        std::fs::set_permissions(&self.config, std::fs::Permissions::from_mode(0o644)).unwrap();
        give_to_db_user(&self.config);
    }

    /// An `archive_command` for [`PgOptions`]: `bulwark-agent --config FILE wal-push
    /// --state-dir <setup>/agent-state --database ID %p` with `BULWARK_LOG=warn` (PostgreSQL
    /// runs it through `sh`). The state dir is where a [`crate::daemon::Daemon`] of this setup
    /// keeps its WAL bindings; without a daemon it does not exist and `[repository]` applies.
    pub fn wal_push_command(&self, id: &str) -> String {
        format!(
            "BULWARK_LOG=warn {} --config {} wal-push --state-dir {} --database {} %p",
            shell_quote(&agent_bin().to_string_lossy()),
            shell_quote(&self.config.to_string_lossy()),
            shell_quote(&self.path("agent-state").to_string_lossy()),
            shell_quote(id)
        )
    }

    /// The agent command (as the db user): `bulwark-agent --config FILE args…`, with
    /// `BULWARK_LOG=warn` and none of the BULWARK_REPO / BULWARK_PASSWORD* variables.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = as_db_user(&agent_bin());
        c.arg("--config").arg(&self.config).args(args);
        c.env("BULWARK_LOG", "warn")
            .env_remove("BULWARK_REPO")
            .env_remove("BULWARK_PASSWORD")
            .env_remove("BULWARK_PASSWORD_FILE")
            .env_remove("PGPASSWORD")
            .current_dir(self.dir.path());
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// Runs the agent; stdin is empty.
    pub fn agent(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run bulwark-agent")
    }

    /// Runs the agent with `input` on stdin.
    pub fn agent_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        crate::run_with_stdin(self.cmd(args), input)
    }

    /// Runs the agent and expects success; returns stdout.
    pub fn agent_ok(&self, args: &[&str]) -> String {
        let out = self.agent(args);
        assert!(
            out.status.success(),
            "bulwark-agent --config {} {args:?} failed ({}):\nstderr: {}\nstdout: {}",
            self.config.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Runs the agent with `--json` and expects success; returns the parsed stdout.
    pub fn agent_json(&self, args: &[&str]) -> serde_json::Value {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let out = self.agent_ok(&with_json);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("agent {args:?}: stdout is not JSON ({e}):\n{out}"))
    }

    /// `repo init` with cheap Argon2id parameters.
    pub fn init(&self) {
        self.agent_ok(&[
            "repo",
            "init",
            "--kdf-memory-mib",
            "8",
            "--kdf-iterations",
            "1",
        ]);
    }
}

impl Default for AgentSetup {
    fn default() -> Self {
        AgentSetup::new()
    }
}
