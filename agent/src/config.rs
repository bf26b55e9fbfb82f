//! `/etc/bulwark/agent.toml`: the repository and the databases this host backs up.
//!
//! Read raw (unknown keys refused, so a typo is named instead of silently ignored), then
//! validated into [`AgentConfig`] before any command runs. Secrets never appear in the file:
//! it names files (or environment variables) that hold them, so the config can be world-
//! readable and nothing secret ends up on a command line that `ps` shows.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/bulwark/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the agent configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("agent configuration {path}: {key} {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    /// How this host reaches the control plane's backup storages (`[[storage]]`): a mount
    /// point, or the built-in NFS client's ports and version (see [`crate::storage`]).
    #[serde(default)]
    pub storage: Vec<crate::storage::StorageConfig>,
    /// Where the file came from, for messages (not read from the file).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// A directory (local, NFS, CephFS) or `s3://bucket/prefix`.
    pub location: Option<String>,
    /// File whose first line is the repository passphrase.
    pub password_file: Option<PathBuf>,
}

/// The technologies and methods, shared with the control plane (one set of names).
pub use bulwark_core::api::{BackupMethod, DatabaseType};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: DatabaseType,
    /// PostgreSQL: the default method of `backup`.
    pub method: Option<BackupMethod>,
    /// PostgreSQL: the cluster's data directory (physical backups).
    pub data_dir: Option<PathBuf>,
    /// SQLite: the database file.
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub connection: Connection,
    /// PostgreSQL: directory of pg_dump, pg_restore, pg_ctl (default: the newest
    /// /usr/lib/postgresql/<version>/bin, then PATH).
    pub bin_dir: Option<PathBuf>,
}

/// How to reach a server: a libpq DSN or discrete fields (discrete fields override the DSN).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub dsn: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub dbname: Option<String>,
    /// File whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
}

impl AgentConfig {
    /// Reads and validates `path`. A missing file is no error when it is the default path
    /// (one-shot commands can run on flags alone); a file named with `--config` must exist.
    pub fn load(path: &Path, explicit: bool) -> Result<AgentConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(AgentConfig {
                    path: path.to_path_buf(),
                    ..AgentConfig::default()
                })
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut config: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.path = path.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, key: String, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            key,
            problem: problem.into(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut storages = BTreeSet::new();
        for (i, st) in self.storage.iter().enumerate() {
            if !storages.insert(st.id.as_str()) {
                return Err(
                    self.invalid(format!("storage[{i}] ({}).id", st.id), "is declared twice")
                );
            }
            if let Err(problem) = st.check() {
                return Err(self.invalid(format!("storage[{i}] ({})", st.id), problem));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, db) in self.databases.iter().enumerate() {
            let key = |field: &str| format!("databases[{i}] ({}).{field}", db.id);
            if let Err(e) = bulwark_core::manifest::validate_database_id(&db.id) {
                return Err(self.invalid(format!("databases[{i}].id"), e.to_string()));
            }
            if !seen.insert(db.id.as_str()) {
                return Err(self.invalid(key("id"), "is declared twice"));
            }
            match db.kind {
                DatabaseType::Postgresql => {
                    if db.path.is_some() {
                        return Err(self.invalid(
                            key("path"),
                            "is for sqlite databases; PostgreSQL takes data_dir and connection",
                        ));
                    }
                    if db.method == Some(BackupMethod::Physical) && db.data_dir.is_none() {
                        return Err(self.invalid(
                            key("data_dir"),
                            "is required with method = \"physical\" (the cluster's data directory)",
                        ));
                    }
                    let c = &db.connection;
                    if c.password_file.is_some() && c.password_env.is_some() {
                        return Err(self.invalid(
                            key("connection"),
                            "sets both password_file and password_env; keep one",
                        ));
                    }
                    if let Some(dsn) = &c.dsn {
                        if dsn.contains("password=") {
                            return Err(self.invalid(
                                key("connection.dsn"),
                                "contains a password; put it in connection.password_file instead",
                            ));
                        }
                    }
                    if c.port == Some(0) {
                        return Err(self.invalid(key("connection.port"), "must be 1-65535"));
                    }
                }
                DatabaseType::Sqlite => {
                    if db.path.is_none() {
                        return Err(self.invalid(key("path"), "is required for sqlite databases"));
                    }
                    if db.method == Some(BackupMethod::Logical) || db.data_dir.is_some() {
                        return Err(self.invalid(
                            key("method"),
                            "SQLite is backed up by an online copy of its file (method \"physical\", the default); leave method out",
                        ));
                    }
                }
                other => return Err(self.invalid(key("type"), crate::drivers::unsupported(other))),
            }
        }
        Ok(())
    }

    pub fn database(&self, id: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(&path, true)
    }

    #[test]
    fn a_full_config_loads() {
        let c = parse(
            r#"
[repository]
location = "/srv/backup"
password_file = "/etc/bulwark/repo.pass"

[[databases]]
id = "orders"
type = "postgresql"
method = "physical"
data_dir = "/var/lib/postgresql/15/main"
connection = { host = "127.0.0.1", port = 5432, user = "postgres", dbname = "orders", password_file = "/etc/bulwark/pg.pass" }

[[databases]]
id = "app"
type = "sqlite"
path = "/var/lib/app/app.db"
"#,
        )
        .unwrap();
        assert_eq!(c.databases.len(), 2);
        assert_eq!(
            c.database("orders").unwrap().method,
            Some(BackupMethod::Physical)
        );
        assert_eq!(c.database("app").unwrap().kind, DatabaseType::Sqlite);
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, needle) in [
            ("[repository]\nlocaton = \"x\"\n", "locaton"),
            (
                "[[databases]]\nid = \"a\"\ntype = \"oracle\"\n",
                "oracle",
            ),
            (
                "[[databases]]\nid = \"a/b\"\ntype = \"sqlite\"\npath = \"x\"\n",
                "databases[0].id",
            ),
            (
                "[[databases]]\nid = \"a\"\ntype = \"sqlite\"\n",
                "(a).path",
            ),
            (
                "[[databases]]\nid = \"a\"\ntype = \"postgresql\"\nmethod = \"physical\"\n",
                "data_dir",
            ),
            (
                "[[databases]]\nid = \"a\"\ntype = \"sqlite\"\npath = \"x\"\nmethod = \"logical\"\n",
                "online copy",
            ),
            (
                "[[databases]]\nid = \"a\"\ntype = \"etcd\"\n",
                "etcd is not supported by this agent",
            ),
            (
                "[[databases]]\nid = \"a\"\ntype = \"postgresql\"\nconnection = { dsn = \"host=x password=y\" }\n",
                "connection.dsn",
            ),
            (
                "[[databases]]\nid = \"a\"\ntype = \"sqlite\"\npath = \"x\"\n[[databases]]\nid = \"a\"\ntype = \"sqlite\"\npath = \"y\"\n",
                "declared twice",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_missing_default_file_is_empty_but_a_named_one_is_an_error() {
        let missing = Path::new("/nonexistent/bulwark/agent.toml");
        assert!(AgentConfig::load(missing, false)
            .unwrap()
            .databases
            .is_empty());
        assert!(AgentConfig::load(missing, true).is_err());
    }
}
