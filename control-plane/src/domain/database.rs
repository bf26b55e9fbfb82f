//! Databases (the seeds call them applications; policies name them by `db_identifier`): what is
//! backed up, by which agent, and how to reach it. Connection secrets are write-only: they are
//! stored for the agent that needs them and never appear in a response or an audit entry.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_slug, Violation};

/// The technologies, shared with the agents (the wire strings are theirs too).
pub use bulwark_core::api::DatabaseType;

/// How to reach the database. Which fields are required depends on the type (see
/// [`DatabaseBody::check`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// A Unix socket directory or file, instead of host and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The database name inside the server (PostgreSQL, MySQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// A file (SQLite) or directory (files, Cassandra data) on the agent's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// etcd client URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
}

/// What a client sends to create or replace a database.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseBody {
    /// The `db_identifier` policies refer to. Required on create; immutable.
    #[serde(default)]
    pub id: Option<String>,
    /// Required on create; immutable.
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(rename = "type")]
    pub db_type: DatabaseType,
    /// The enrolled agent that backs this database up.
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub connection: Connection,
    /// Write-only (`password`, `tls_key`, …). On update, leaving it out keeps the stored ones.
    #[serde(default)]
    pub secrets: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A database as stored. `secrets` never leaves the store through the API: responses use
/// [`DatabaseView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Database {
    pub id: String,
    pub workspace_id: String,
    pub db_type: DatabaseType,
    pub agent_id: Option<String>,
    pub connection: Connection,
    pub secrets: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A database as the API shows it: the names of the stored secrets, never their values.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatabaseView {
    pub id: String,
    pub workspace_id: String,
    #[serde(rename = "type")]
    pub db_type: DatabaseType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub connection: Connection,
    pub secrets_set: Vec<String>,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// What a restore can reach (on `GET /api/v1/databases/{id}` only; absent while no good
    /// backup exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoverable: Option<super::pitr::RecoverableWindow>,
}

impl Database {
    pub fn view(&self) -> DatabaseView {
        DatabaseView {
            id: self.id.clone(),
            workspace_id: self.workspace_id.clone(),
            db_type: self.db_type,
            agent_id: self.agent_id.clone(),
            connection: self.connection.clone(),
            secrets_set: self.secrets.keys().cloned().collect(),
            labels: self.labels.clone(),
            description: self.description.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            recoverable: None,
        }
    }
}

const SECRET_NAMES: [&str; 4] = ["password", "tls_key", "token", "keyfile"];
const MAX_LABELS: usize = 32;

impl DatabaseBody {
    /// Checks every field against the database type. `existing` is the stored record on update,
    /// whose id, workspace and (when omitted) secrets are kept.
    pub fn into_database(
        self,
        path_id: Option<&str>,
        existing: Option<&Database>,
        now: DateTime<Utc>,
    ) -> Result<Database, Vec<Violation>> {
        let mut problems = Vec::new();
        let id = fixed_field(&mut problems, "id", self.id, path_id, "database in the URL");
        let workspace_id = fixed_field(
            &mut problems,
            "workspace_id",
            self.workspace_id,
            existing.map(|d| d.workspace_id.as_str()),
            "database's workspace",
        );
        if let Some(agent) = &self.agent_id {
            if let Err(e) = check_slug(agent) {
                problems.push(Violation::new("agent_id", e));
            }
        }
        check_connection(self.db_type, &self.connection, &mut problems);
        if let Some(secrets) = &self.secrets {
            for (name, value) in secrets {
                if !SECRET_NAMES.contains(&name.as_str()) {
                    problems.push(Violation::new(
                        format!("secrets.{name}"),
                        format!("unknown secret; known ones are {}", SECRET_NAMES.join(", ")),
                    ));
                }
                if value.is_empty() || value.len() > 8192 {
                    problems.push(Violation::new(
                        format!("secrets.{name}"),
                        "must be 1 to 8192 bytes",
                    ));
                }
            }
        }
        if self.labels.len() > MAX_LABELS {
            problems.push(Violation::new(
                "labels",
                format!("at most {MAX_LABELS} labels"),
            ));
        }
        for (key, value) in &self.labels {
            if let Err(e) = check_slug(key) {
                problems.push(Violation::new(
                    format!("labels.{key}"),
                    format!("label key {e}"),
                ));
            }
            if let Some(p) = super::text_problem(value, 255) {
                problems.push(Violation::new(
                    format!("labels.{key}"),
                    format!("value: {p}"),
                ));
            }
        }
        if let Some(description) = &self.description {
            super::check_text(&mut problems, "description", description, 1000);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let secrets = match (self.secrets, existing) {
            (Some(s), _) => s,
            (None, Some(old)) => old.secrets.clone(),
            (None, None) => BTreeMap::new(),
        };
        Ok(Database {
            id,
            workspace_id,
            db_type: self.db_type,
            agent_id: self.agent_id,
            connection: self.connection,
            secrets,
            labels: self.labels,
            description: self.description,
            created_at: existing.map_or(now, |d| d.created_at),
            updated_at: now,
        })
    }
}

/// An identifier that is given on create and may only be repeated (unchanged) on update.
fn fixed_field(
    problems: &mut Vec<Violation>,
    path: &str,
    given: Option<String>,
    fixed: Option<&str>,
    what: &str,
) -> String {
    match (given, fixed) {
        (Some(g), Some(f)) if g != f => {
            problems.push(Violation::new(
                path,
                format!("'{g}' differs from the {what} ('{f}'); it cannot be changed"),
            ));
            f.to_string()
        }
        (_, Some(f)) => f.to_string(),
        (Some(g), None) => {
            if let Err(e) = check_slug(&g) {
                problems.push(Violation::new(path, e));
            }
            g
        }
        (None, None) => {
            problems.push(Violation::new(path, "is required when creating a database"));
            String::new()
        }
    }
}

fn check_connection(db_type: DatabaseType, c: &Connection, problems: &mut Vec<Violation>) {
    let texts = [
        ("host", &c.host, 253),
        ("socket", &c.socket, 4096),
        ("user", &c.user, 128),
        ("database", &c.database, 128),
        ("path", &c.path, 4096),
    ];
    for (field, value, max) in texts {
        if let Some(p) = value.as_deref().and_then(|v| super::text_problem(v, max)) {
            problems.push(Violation::new(format!("connection.{field}"), p));
        }
    }
    for (i, url) in c.endpoints.iter().enumerate() {
        if let Some(p) = super::text_problem(url, 512) {
            problems.push(Violation::new(format!("connection.endpoints[{i}]"), p));
        }
    }
    let mut need = |ok: bool, path: &str, problem: &str| {
        if !ok {
            problems.push(Violation::new(format!("connection.{path}"), problem));
        }
    };
    match db_type {
        DatabaseType::Postgresql
        | DatabaseType::Mysql
        | DatabaseType::Mariadb
        | DatabaseType::Cassandra => need(
            c.host.is_some() || c.socket.is_some(),
            "host",
            "a host (or a Unix socket in `socket`) is required for this database type",
        ),
        DatabaseType::Sqlite | DatabaseType::Files => need(
            c.path.is_some(),
            "path",
            "a path on the agent's host is required for this database type",
        ),
        DatabaseType::Etcd => need(
            !c.endpoints.is_empty(),
            "endpoints",
            "at least one etcd client URL (http(s)://host:port) is required",
        ),
    }
    if let Some(port) = c.port {
        need(
            (1..=65535).contains(&port),
            "port",
            "must be between 1 and 65535",
        );
    }
    for (field, value) in [("path", &c.path), ("socket", &c.socket)] {
        if let Some(p) = value {
            need(
                p.starts_with('/') && !p.split('/').any(|s| s == ".."),
                field,
                "must be an absolute path without '..'",
            );
        }
    }
    if let Some(host) = &c.host {
        need(
            !host.is_empty() && host.len() <= 253 && !host.contains(['/', ' ', '@']),
            "host",
            "must be a host name or IP address",
        );
    }
    for (i, url) in c.endpoints.iter().enumerate() {
        need(
            (url.starts_with("http://") || url.starts_with("https://")) && url.len() <= 512,
            &format!("endpoints[{i}]"),
            "must be an http:// or https:// URL",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> DatabaseBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn required_connection_fields_depend_on_the_type() {
        let now = Utc::now();
        let pg = body(
            r#"{"id":"orders","workspace_id":"a","type":"postgresql","connection":{"path":"/x"}}"#,
        );
        let err = pg.into_database(None, None, now).unwrap_err();
        assert_eq!(err[0].path, "connection.host", "{err:?}");
        let sqlite = body(
            r#"{"id":"app","workspace_id":"a","type":"sqlite","connection":{"path":"/var/lib/app.db"},"secrets":{"password":"x"}}"#,
        );
        let db = sqlite.into_database(None, None, now).unwrap();
        assert_eq!(db.view().secrets_set, vec!["password"]);
        let etcd = body(
            r#"{"id":"e","workspace_id":"a","type":"etcd","connection":{"endpoints":["ftp://x"],"port":70000}}"#,
        );
        let err = etcd.into_database(None, None, now).unwrap_err();
        let paths: Vec<_> = err.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, ["connection.port", "connection.endpoints[0]"]);
    }

    #[test]
    fn updates_keep_id_workspace_and_secrets() {
        let now = Utc::now();
        let first = body(r#"{"id":"app","workspace_id":"a","type":"sqlite","connection":{"path":"/a.db"},"secrets":{"password":"s3cret"}}"#)
            .into_database(None, None, now)
            .unwrap();
        let second = body(r#"{"type":"sqlite","connection":{"path":"/b.db"}}"#)
            .into_database(Some("app"), Some(&first), now)
            .unwrap();
        assert_eq!(second.secrets["password"], "s3cret");
        assert_eq!(second.workspace_id, "a");
        let err = body(r#"{"workspace_id":"b","type":"sqlite","connection":{"path":"/b.db"}}"#)
            .into_database(Some("app"), Some(&first), now)
            .unwrap_err();
        assert_eq!(err[0].path, "workspace_id");
    }
}
