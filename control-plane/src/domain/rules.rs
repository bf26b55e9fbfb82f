//! The per-technology rule table behind policy validation. It is data, not code scattered over
//! `if`s, so that the API validator, the `GET /api/v1/policies/rules` endpoint (which the console
//! uses) and docs/policies.md all show one and the same table; a unit test fails when the
//! documentation no longer matches it.

use serde::Serialize;
use utoipa::ToSchema;

use super::database::DatabaseType;
use super::schedule::{human, HOUR, MINUTE};

pub use bulwark_core::api::BackupMethod;

/// What one (technology, method) pair allows.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct MethodRule {
    pub method: BackupMethod,
    /// How the agent takes it, for people reading the table.
    pub how: &'static str,
    /// No schedule may run this more often.
    pub min_interval_seconds: i64,
    /// Shortest preferred window that one run may be given.
    pub min_window_minutes: u32,
    /// Whether point-in-time recovery (WAL / binlog archiving) may be switched on with it.
    pub pitr: bool,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct TechnologyRule {
    pub db_type: DatabaseType,
    /// The method used when a policy names none.
    pub default_method: BackupMethod,
    pub methods: &'static [MethodRule],
}

const fn rule(
    method: BackupMethod,
    how: &'static str,
    min_interval_seconds: i64,
    min_window_minutes: u32,
    pitr: bool,
) -> MethodRule {
    MethodRule {
        method,
        how,
        min_interval_seconds,
        min_window_minutes,
        pitr,
    }
}

use BackupMethod::{Logical, Physical};

const POSTGRESQL: &[MethodRule] = &[
    rule(Logical, "pg_dump", 5 * MINUTE, 15, false),
    rule(Physical, "base backup + WAL archiving", HOUR, 30, true),
];
const MYSQL: &[MethodRule] = &[
    rule(
        Logical,
        "consistent-snapshot dump + binlog archiving",
        5 * MINUTE,
        15,
        true,
    ),
    rule(Physical, "mariabackup / xtrabackup", HOUR, 30, true),
];
const SQLITE: &[MethodRule] = &[rule(Physical, "online backup API", 5 * MINUTE, 15, false)];
const ETCD: &[MethodRule] = &[rule(Physical, "etcd v3 snapshot", 15 * MINUTE, 15, false)];
const CASSANDRA: &[MethodRule] = &[rule(
    Physical,
    "nodetool snapshot of sstables",
    HOUR,
    60,
    false,
)];
const FILES: &[MethodRule] = &[rule(
    Physical,
    "tree archive with a file index",
    15 * MINUTE,
    15,
    false,
)];

pub const TABLE: [TechnologyRule; 7] = [
    TechnologyRule {
        db_type: DatabaseType::Postgresql,
        default_method: Logical,
        methods: POSTGRESQL,
    },
    TechnologyRule {
        db_type: DatabaseType::Mysql,
        default_method: Logical,
        methods: MYSQL,
    },
    TechnologyRule {
        db_type: DatabaseType::Mariadb,
        default_method: Logical,
        methods: MYSQL,
    },
    TechnologyRule {
        db_type: DatabaseType::Sqlite,
        default_method: Physical,
        methods: SQLITE,
    },
    TechnologyRule {
        db_type: DatabaseType::Etcd,
        default_method: Physical,
        methods: ETCD,
    },
    TechnologyRule {
        db_type: DatabaseType::Cassandra,
        default_method: Physical,
        methods: CASSANDRA,
    },
    TechnologyRule {
        db_type: DatabaseType::Files,
        default_method: Physical,
        methods: FILES,
    },
];

pub fn for_type(db_type: DatabaseType) -> &'static TechnologyRule {
    TABLE
        .iter()
        .find(|r| r.db_type == db_type)
        .expect("every database type has a row in the rule table")
}

impl TechnologyRule {
    pub fn method(&self, method: BackupMethod) -> Option<&'static MethodRule> {
        self.methods.iter().find(|m| m.method == method)
    }
}

/// The table as Markdown, exactly as docs/policies.md carries it.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| db_type | backup_method | how | most often | shortest window per run | pitr |\n\
         |---|---|---|---|---|---|\n",
    );
    for tech in &TABLE {
        for m in tech.methods {
            let method = match m.method {
                Logical => "logical",
                Physical => "physical",
            };
            let default = if m.method == tech.default_method {
                " (default)"
            } else {
                ""
            };
            out.push_str(&format!(
                "| {} | {method}{default} | {} | every {} | {} | {} |\n",
                tech.db_type.as_str(),
                m.how,
                human(m.min_interval_seconds),
                human(i64::from(m.min_window_minutes) * MINUTE),
                if m.pitr { "allowed" } else { "no" },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_its_default_method_and_the_docs_carry_the_table() {
        for t in DatabaseType::ALL {
            let r = for_type(t);
            assert!(r.method(r.default_method).is_some(), "{t:?}");
        }
        let docs = include_str!("../../../docs/policies.md");
        let table = markdown_table();
        assert!(
            docs.contains(&table),
            "docs/policies.md must contain the rule table exactly as the code has it:\n{table}"
        );
    }
}
