//! PostgreSQL: logical backups with pg_dump, physical backups through the low-level backup
//! API plus archived WAL, and point-in-time recovery.
//!
//! Everything goes through PostgreSQL's own tools (psql, pg_dump, pg_restore, pg_ctl) rather
//! than a wire-protocol client: they are what operators trust, they follow libpq's
//! conventions (service files, SSL modes, DSNs), and their error text is what operators know.
//! Passwords reach them through a private temporary `PGPASSFILE`, never the command line.

mod drill;
mod logical;
pub mod physical;
mod recovery;
pub mod wal;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use bulwark_core::manifest::{Manifest, Source};
use bulwark_core::repo::backup::BackupSession;
use bulwark_core::repo::Repository;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::process;
use super::{Discovery, Driver, DriverError, Replacement, RestoreReport, RestoreRequest, Result};
use crate::config::{BackupMethod, DatabaseConfig, DatabaseType};

/// Stream names inside a PostgreSQL snapshot.
/// The dump is the snapshot's `data` stream, so `restore --stdout` gives it back as it is.
pub const DUMP_STREAM: &str = bulwark_core::archive::DATA_STREAM;
pub const DUMP_MEDIA_TYPE: &str = "application/vnd.postgresql.custom-dump";

pub struct Postgres {
    db: DatabaseConfig,
    passfile: OnceLock<std::result::Result<Option<tempfile::NamedTempFile>, String>>,
}

impl Postgres {
    pub fn new(db: DatabaseConfig) -> Self {
        Postgres {
            db,
            passfile: OnceLock::new(),
        }
    }

    fn id(&self) -> &str {
        &self.db.id
    }

    /// The configured default method, logical unless the config says otherwise.
    fn method(&self, requested: Option<BackupMethod>) -> BackupMethod {
        requested
            .or(self.db.method)
            .unwrap_or(BackupMethod::Logical)
    }

    /// A PostgreSQL program: from `bin_dir`, else the newest installed server version's
    /// directory, else PATH.
    fn tool(&self, name: &str) -> Result<Command> {
        self.tool_for(name, None)
    }

    /// A server-side program (pg_ctl) for the cluster in `data_dir`: the installed binaries of
    /// its own major version (`PG_VERSION`), which a newer pg_ctl would refuse to run.
    fn server_tool(&self, name: &str, data_dir: &Path) -> Result<Command> {
        let major = std::fs::read_to_string(data_dir.join("PG_VERSION")).ok();
        self.tool_for(name, major.as_deref().map(str::trim))
    }

    fn tool_for(&self, name: &str, major: Option<&str>) -> Result<Command> {
        let versioned = major
            .map(|v| {
                Path::new("/usr/lib/postgresql")
                    .join(v)
                    .join("bin")
                    .join(name)
            })
            .filter(|p| p.exists());
        let path = match (&self.db.bin_dir, versioned) {
            (Some(dir), _) => dir.join(name),
            (None, Some(p)) => p,
            (None, None) => default_bin_dir()
                .map(|d| d.join(name))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from(name)),
        };
        let mut cmd = Command::new(path);
        cmd.env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "bulwark-agent")
            .env_remove("PGPASSWORD");
        if let Some(file) = self.passfile()? {
            cmd.env("PGPASSFILE", file);
        }
        Ok(cmd)
    }

    /// A 0600 temporary pgpass file holding the configured password, made once per process.
    fn passfile(&self) -> Result<Option<&Path>> {
        let made = self.passfile.get_or_init(|| {
            let Some(password) = self.password().map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let mut file = tempfile::Builder::new()
                .prefix(".bulwark-pgpass-")
                .tempfile()
                .map_err(|e| format!("creating a temporary pgpass file: {e}"))?;
            let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
            writeln!(file, "*:*:*:*:{escaped}")
                .map_err(|e| format!("writing a temporary pgpass file: {e}"))?;
            Ok(Some(file))
        });
        match made {
            Ok(f) => Ok(f.as_ref().map(|f| f.path())),
            Err(msg) => Err(DriverError::invalid(
                self.id(),
                "connection password",
                msg.clone(),
            )),
        }
    }

    fn password(&self) -> Result<Option<String>> {
        let c = &self.db.connection;
        if let Some(path) = &c.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                DriverError::invalid(
                    self.id(),
                    "connection.password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            return Ok(Some(text.lines().next().unwrap_or_default().to_string()));
        }
        if let Some(var) = &c.password_env {
            return std::env::var(var).map(Some).map_err(|_| {
                DriverError::invalid(
                    self.id(),
                    "connection.password_env",
                    format!("environment variable {var} is not set"),
                )
            });
        }
        Ok(None)
    }

    /// A libpq connection string: the DSN, then the discrete fields, then the overrides
    /// (later keywords win in libpq).
    fn conninfo(&self, dbname: Option<&str>, port: Option<u16>) -> String {
        let c = &self.db.connection;
        let mut parts: Vec<String> = c.dsn.iter().cloned().collect();
        let mut kv = |k: &str, v: &str| parts.push(format!("{k}={}", quote(v)));
        if let Some(h) = &c.host {
            kv("host", h);
        }
        if let Some(p) = port.or(c.port) {
            kv("port", &p.to_string());
        }
        if let Some(u) = &c.user {
            kv("user", u);
        }
        if let Some(d) = dbname.or(c.dbname.as_deref()) {
            kv("dbname", d);
        }
        parts.join(" ")
    }

    /// Runs SQL through psql (stdin, so `:'var'` interpolation works) and returns the
    /// unaligned, tuples-only output.
    fn psql(&self, dbname: Option<&str>, vars: &[(&str, &str)], sql: &str) -> Result<String> {
        self.psql_at(dbname, None, vars, sql)
    }

    fn psql_at(
        &self,
        dbname: Option<&str>,
        port: Option<u16>,
        vars: &[(&str, &str)],
        sql: &str,
    ) -> Result<String> {
        let mut cmd = self.tool("psql")?;
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        for (k, v) in vars {
            cmd.arg("-v").arg(format!("{k}={v}"));
        }
        cmd.arg("-d")
            .arg(self.conninfo(dbname, port))
            .arg("-f")
            .arg("-");
        process::output_with_input(self.id(), "psql", &mut cmd, sql).map_err(|e| self.explain(e))
    }

    /// libpq names the pgpass file it used, which is our private temporary one; the operator
    /// needs to hear about the configured password file instead.
    fn explain(&self, e: DriverError) -> DriverError {
        let (Some(Ok(Some(tmp))), DriverError::Authentication { database, detail }) =
            (self.passfile.get(), &e)
        else {
            return e;
        };
        let c = &self.db.connection;
        let configured = match (&c.password_file, &c.password_env) {
            (Some(p), _) => format!("connection.password_file {}", p.display()),
            (None, Some(v)) => format!("connection.password_env {v}"),
            _ => "the configured password".to_string(),
        };
        DriverError::Authentication {
            database: database.clone(),
            detail: detail.replace(&format!("file \"{}\"", tmp.path().display()), &configured),
        }
    }

    /// The configured database name, or the server's default for the configured user.
    fn dbname(&self) -> Result<String> {
        match &self.db.connection.dbname {
            Some(d) => Ok(d.clone()),
            None => Ok(self
                .psql(None, &[], "SELECT current_database();")?
                .trim()
                .to_string()),
        }
    }

    fn server_version_num(&self) -> Result<u32> {
        let v = self.psql(None, &[], "SHOW server_version_num;")?;
        v.trim().parse().map_err(|_| {
            DriverError::invalid(
                self.id(),
                "server version",
                format!("unexpected reply {v:?}"),
            )
        })
    }

    fn data_dir(&self) -> Result<&Path> {
        self.db.data_dir.as_deref().ok_or_else(|| {
            DriverError::invalid(
                self.id(),
                "data_dir",
                "physical backups need data_dir (the cluster's data directory) in the agent configuration",
            )
        })
    }
}

/// Quotes a libpq connection-string value.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The newest `/usr/lib/postgresql/<major>/bin` (Debian's layout).
fn default_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// Runs blocking driver work (child processes, file copies) without stalling the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Driver for Postgres {
    fn database_id(&self) -> &str {
        &self.db.id
    }

    fn database_type(&self) -> DatabaseType {
        DatabaseType::Postgresql
    }

    fn source(&self, method: Option<BackupMethod>) -> Source {
        match self.method(method) {
            BackupMethod::Logical => Source::Stream,
            BackupMethod::Physical => Source::Tree,
        }
    }

    fn discover(&self) -> BoxFuture<'_, Result<Discovery>> {
        async move {
            blocking(|| {
                let out = self.psql(
                    None,
                    &[],
                    "SELECT current_setting('server_version');\n\
                     SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE NOT datistemplate;\n\
                     SELECT sum(pg_database_size(oid)) FROM pg_database;",
                )?;
                let mut lines = out.lines();
                let version = lines.next().unwrap_or_default().to_string();
                let contents = lines
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                let size = lines.next().and_then(|s| s.trim().parse().ok());
                Ok(Discovery {
                    database_id: self.db.id.clone(),
                    database_type: "postgresql",
                    server_version: version,
                    contents,
                    size_bytes: size,
                })
            })
        }
        .boxed()
    }

    fn check(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            blocking(|| {
                let server = self.server_version_num()?;
                let dump = self.tool("pg_dump")?.arg("--version").output().map_err(|e| {
                    DriverError::invalid(self.id(), "pg_dump", format!("cannot run it: {e}"))
                })?;
                let text = String::from_utf8_lossy(&dump.stdout);
                let major: u32 = text
                    .split_whitespace()
                    .find_map(|w| w.split('.').next()?.parse().ok())
                    .unwrap_or(0);
                if major * 10000 < server - server % 10000 {
                    return Err(DriverError::invalid(
                        self.id(),
                        "pg_dump",
                        format!(
                            "{} is older than the server ({server}); install the client of the server's major version or set bin_dir",
                            text.trim()
                        ),
                    ));
                }
                if self.method(None) == BackupMethod::Physical {
                    physical::check_archiving(self)?;
                }
                Ok(())
            })
        }
        .boxed()
    }

    fn backup<'a>(
        &'a self,
        session: &'a mut BackupSession,
        method: Option<BackupMethod>,
        opts: crate::drivers::BackupOptions,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        async move {
            match self.method(method) {
                BackupMethod::Logical => logical::backup(self, session, opts).await,
                BackupMethod::Physical => physical::backup(self, session).await,
            }
        }
        .boxed()
    }

    fn replaces_existing<'a>(
        &'a self,
        manifest: &'a Manifest,
        req: &'a RestoreRequest,
    ) -> BoxFuture<'a, Result<bool>> {
        async move {
            // Requests that cannot be carried out are refused here, before the caller takes a
            // pre-restore snapshot for nothing.
            match manifest_method(manifest) {
                BackupMethod::Logical => {
                    logical::refuse_physical_options(self, req)?;
                    blocking(|| logical::replaces_existing(self, req))
                }
                BackupMethod::Physical => {
                    physical::refuse_logical_options(self, req)?;
                    Ok(false)
                }
            }
        }
        .boxed()
    }

    fn restore<'a>(
        &'a self,
        repo: &'a Repository,
        manifest: &'a Manifest,
        req: &'a RestoreRequest,
    ) -> BoxFuture<'a, Result<RestoreReport>> {
        async move {
            match manifest_method(manifest) {
                BackupMethod::Logical => logical::restore(self, repo, manifest, req).await,
                BackupMethod::Physical => physical::restore(self, repo, manifest, req).await,
            }
        }
        .boxed()
    }

    fn drill<'a>(
        &'a self,
        repo: &'a Repository,
        manifest: &'a Manifest,
        req: &'a crate::drivers::DrillRequest,
    ) -> BoxFuture<'a, Result<crate::drivers::DrillFindings>> {
        drill::drill(self, repo, manifest, req).boxed()
    }

    fn find_latest<'a>(
        &'a self,
        repo: &'a Repository,
        req: &'a RestoreRequest,
    ) -> BoxFuture<'a, Result<Manifest>> {
        async move {
            // The options say which method's snapshot is wanted; without any, the newest of
            // either.
            if req.data_dir.is_some() {
                physical::latest_base(self, repo, &req.target).await
            } else if req.has_logical_options() {
                logical::latest_dump(self, repo).await
            } else {
                Ok(repo.find_snapshot("latest", Some(self.id())).await?)
            }
        }
        .boxed()
    }

    fn replacement(&self, req: &RestoreRequest) -> Replacement {
        Replacement {
            replaced: req
                .into_database
                .clone()
                .unwrap_or_else(|| self.db.id.clone()),
            effect: "the whole database is dropped and recreated",
            beside: "--into-database NAME or --mode merge",
        }
    }

    fn pre_restore_backup(&self, req: &RestoreRequest) -> (Box<dyn Driver>, Option<BackupMethod>) {
        // What is replaced may be another database of the same server (--into-database); a
        // dump of it is what can be restored over it again.
        let mut target = self.db.clone();
        if let Some(name) = &req.into_database {
            target.connection.dbname = Some(name.clone());
        }
        (Box::new(Postgres::new(target)), Some(BackupMethod::Logical))
    }
}

fn manifest_method(m: &Manifest) -> BackupMethod {
    match m.details.get("method").map(String::as_str) {
        Some("physical") => BackupMethod::Physical,
        _ => BackupMethod::Logical,
    }
}
