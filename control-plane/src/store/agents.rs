//! Agents and enrolment tokens.
//!
//! Tables: `agents` (id → Agent), `agents_by_workspace` ((workspace, id)), `agent_certs`
//! (certificate fingerprint → agent id: the lookup every `/agent/v1` request makes; the
//! fingerprints of a revoked agent stay so its requests are answered "revoked", not "unknown"),
//! `enrollment_tokens` (hash of the secret → token record; the secret itself is never stored).
//!
//! Enrolment consumes its token inside the same transaction that creates the agent, so two
//! agents racing with one token cannot both succeed.

use std::collections::BTreeMap;

use bulwark_core::api::{DatabaseConflict, DeclaredDatabase};
use chrono::{DateTime, Utc};
use redb::ReadTransaction;

use super::{get_json, put_json, Index2, Records, Result, StoreError, Tx};
use crate::domain::agent::{
    check_declared, Agent, AgentCert, AgentDatabase, EnrollmentToken, TokenRefusal,
};
use crate::domain::database::{Connection, Database};

pub const AGENTS: Records = Records::new("agents");
pub const BY_WORKSPACE: Index2 = Index2::new("agents_by_workspace");
pub const CERTS: redb::TableDefinition<'static, &'static str, &'static str> =
    redb::TableDefinition::new("agent_certs");
pub const TOKENS: Records = Records::new("enrollment_tokens");

pub fn get(rtx: &ReadTransaction, id: &str) -> Result<Option<Agent>> {
    get_json(&rtx.open_table(AGENTS)?, "agent", id)
}

/// The agent a certificate was issued to.
pub fn by_fingerprint(rtx: &ReadTransaction, fingerprint: &str) -> Result<Option<Agent>> {
    let Some(id) = rtx
        .open_table(CERTS)?
        .get(fingerprint)?
        .map(|v| v.value().to_string())
    else {
        return Ok(None);
    };
    get(rtx, &id)
}

pub fn token(rtx: &ReadTransaction, hash: &str) -> Result<Option<EnrollmentToken>> {
    get_json(&rtx.open_table(TOKENS)?, "enrollment token", hash)
}

/// Agents of one workspace (or all), in id order after `after`.
pub fn list(
    rtx: &ReadTransaction,
    workspace: Option<&str>,
    visible: impl Fn(&Agent) -> bool,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Agent>, bool)> {
    super::page(
        rtx,
        AGENTS,
        "agent",
        workspace.map(|ws| (BY_WORKSPACE, ws)),
        after,
        limit,
        visible,
    )
}

impl Tx {
    pub fn agent(&self, id: &str) -> Result<Option<Agent>> {
        get_json(&self.txn.open_table(AGENTS)?, "agent", id)
    }

    /// The agents of `workspace`, in id order.
    pub fn agents_of(&self, workspace: &str) -> Result<Vec<Agent>> {
        let table = self.txn.open_table(AGENTS)?;
        let mut out = Vec::new();
        super::scan_index(&self.txn.open_table(BY_WORKSPACE)?, workspace, None, |id| {
            if let Some(a) = get_json(&table, "agent", id)? {
                out.push(a);
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Stores an agent as it is, for tests that need one without an enrolment.
    #[cfg(test)]
    pub(crate) fn put_agent_for_tests(&mut self, agent: &Agent) -> Result<()> {
        self.txn
            .open_table(BY_WORKSPACE)?
            .insert((agent.workspace_id.as_str(), agent.id.as_str()), ())?;
        self.put_agent(agent)
    }

    fn put_agent(&mut self, agent: &Agent) -> Result<()> {
        put_json(&mut self.txn.open_table(AGENTS)?, &agent.id, agent)
    }

    pub fn create_enrollment_token(&mut self, hash: &str, token: &EnrollmentToken) -> Result<()> {
        put_json(&mut self.txn.open_table(TOKENS)?, hash, token)?;
        self.audit(
            "agent.enrollment_token.create",
            "enrollment_token",
            &token.id,
            Some(&token.workspace_id),
            None,
            None::<&()>,
            Some(token),
        )?;
        Ok(())
    }

    /// Consumes the token `hash` and records `agent` (whose workspace must be the token's) with
    /// its first certificate and declared databases. Returns the databases that could not be
    /// registered.
    pub fn enroll_agent(
        &mut self,
        hash: &str,
        agent: &Agent,
        declared: &[DeclaredDatabase],
    ) -> Result<Vec<DatabaseConflict>> {
        let mut token: EnrollmentToken =
            get_json(&self.txn.open_table(TOKENS)?, "enrollment token", hash)?
                .ok_or_else(|| StoreError::Unauthorized(TokenRefusal::Unknown.message()))?;
        token
            .usable(self.now)
            .map_err(|r| StoreError::Unauthorized(r.message()))?;
        if token.workspace_id != agent.workspace_id {
            return Err(StoreError::Unauthorized(
                "the enrolment token belongs to another workspace".into(),
            ));
        }
        if self.workspace(&agent.workspace_id)?.is_none() {
            return Err(StoreError::Unauthorized(format!(
                "workspace '{}' of the enrolment token no longer exists",
                agent.workspace_id
            )));
        }
        token.used_at = Some(self.now);
        token.used_by_agent = Some(agent.id.clone());
        put_json(&mut self.txn.open_table(TOKENS)?, hash, &token)?;
        self.audit(
            "agent.enrollment_token.use",
            "enrollment_token",
            &token.id,
            Some(&token.workspace_id),
            None,
            None::<&()>,
            Some(&token),
        )?;
        let mut agent = agent.clone();
        // Recorded before its databases, which name it (and are checked to).
        self.put_agent(&agent)?;
        let conflicts = self.sync_agent_databases(&mut agent, declared)?;
        self.put_agent(&agent)?;
        self.txn
            .open_table(BY_WORKSPACE)?
            .insert((agent.workspace_id.as_str(), agent.id.as_str()), ())?;
        self.txn
            .open_table(CERTS)?
            .insert(agent.cert.fingerprint.as_str(), agent.id.as_str())?;
        self.audit(
            "agent.enroll",
            "agent",
            &agent.id,
            Some(&agent.workspace_id),
            None,
            None::<&()>,
            Some(&agent.view()),
        )?;
        Ok(conflicts)
    }

    /// Records a heartbeat sent with the certificate `fingerprint`: version, databases (new ones
    /// registered in the workspace) and time. The first request with a renewed certificate
    /// retires the previous one. Heartbeats are observations: only changes of version or
    /// databases are audited.
    pub fn agent_heartbeat(
        &mut self,
        id: &str,
        fingerprint: &str,
        version: &str,
        declared: &[DeclaredDatabase],
    ) -> Result<(Agent, Vec<DatabaseConflict>)> {
        let before = self.agent(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "agent",
            id: id.to_string(),
        })?;
        if before.revoked_at.is_some() {
            return Err(StoreError::Unauthorized(format!(
                "agent '{id}' was revoked"
            )));
        }
        let mut agent = before.clone();
        agent.version = version.to_string();
        agent.last_heartbeat_at = Some(self.now);
        let conflicts = self.sync_agent_databases(&mut agent, declared)?;
        self.retire_previous_cert(&mut agent, fingerprint)?;
        self.put_agent(&agent)?;
        if before.version != agent.version || before.databases != agent.databases {
            self.audit(
                "agent.update",
                "agent",
                id,
                Some(&agent.workspace_id),
                None,
                Some(&before.view()),
                Some(&agent.view()),
            )?;
        }
        Ok((agent, conflicts))
    }

    fn retire_previous_cert(&mut self, agent: &mut Agent, fingerprint: &str) -> Result<()> {
        if agent.cert.fingerprint == fingerprint {
            if let Some(old) = agent.previous_cert.take() {
                self.txn
                    .open_table(CERTS)?
                    .remove(old.fingerprint.as_str())?;
            }
        }
        Ok(())
    }

    /// Makes `cert` the agent's certificate; the one in use stays valid until `cert` is first
    /// used (an older previous one is retired now).
    pub fn renew_agent_cert(&mut self, id: &str, cert: AgentCert) -> Result<Agent> {
        let mut agent = self.agent(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "agent",
            id: id.to_string(),
        })?;
        if agent.revoked_at.is_some() {
            return Err(StoreError::Unauthorized(format!(
                "agent '{id}' was revoked"
            )));
        }
        let before = agent.view();
        if let Some(old) = agent.previous_cert.take() {
            self.txn
                .open_table(CERTS)?
                .remove(old.fingerprint.as_str())?;
        }
        self.txn
            .open_table(CERTS)?
            .insert(cert.fingerprint.as_str(), id)?;
        agent.previous_cert = Some(std::mem::replace(&mut agent.cert, cert));
        self.put_agent(&agent)?;
        self.audit(
            "agent.certificate.renew",
            "agent",
            id,
            Some(&agent.workspace_id),
            None,
            Some(&before),
            Some(&agent.view()),
        )?;
        Ok(agent)
    }

    /// Revokes the agent: every later request with any of its certificates is refused.
    /// Revoking twice changes nothing.
    pub fn revoke_agent(&mut self, id: &str) -> Result<Agent> {
        let mut agent = self.agent(id)?.ok_or_else(|| StoreError::NotFound {
            kind: "agent",
            id: id.to_string(),
        })?;
        if agent.revoked_at.is_some() {
            return Ok(agent);
        }
        let before = agent.view();
        agent.revoked_at = Some(self.now);
        self.put_agent(&agent)?;
        self.audit(
            "agent.revoke",
            "agent",
            id,
            Some(&agent.workspace_id),
            None,
            Some(&before),
            Some(&agent.view()),
        )?;
        Ok(agent)
    }

    /// Registers the declared databases in the agent's workspace (id = the configuration id),
    /// or points existing ones of that workspace at this agent. An id held by another workspace,
    /// or one registered with another type, is reported back and left alone.
    fn sync_agent_databases(
        &mut self,
        agent: &mut Agent,
        declared: &[DeclaredDatabase],
    ) -> Result<Vec<DatabaseConflict>> {
        let mut conflicts = Vec::new();
        let mut kept: BTreeMap<String, AgentDatabase> = BTreeMap::new();
        for d in declared {
            let conflict = |problem: String| DatabaseConflict {
                id: d.id.clone(),
                problem,
            };
            let db = match check_declared(d) {
                Ok(db) => db,
                Err(problem) => {
                    conflicts.push(conflict(problem));
                    continue;
                }
            };
            if kept.contains_key(&db.id) {
                conflicts.push(conflict("declared twice".into()));
                continue;
            }
            match self.database(&db.id)? {
                Some(existing) if existing.workspace_id != agent.workspace_id => {
                    conflicts.push(conflict(format!(
                        "database id '{}' is taken by another workspace; rename the [[databases]] entry",
                        db.id
                    )));
                    continue;
                }
                Some(existing) if existing.db_type != db.db_type => {
                    conflicts.push(conflict(format!(
                        "database '{}' is registered as type '{}', not '{}'",
                        db.id,
                        existing.db_type.as_str(),
                        db.db_type.as_str()
                    )));
                    continue;
                }
                Some(existing) => {
                    if existing.agent_id.as_deref() != Some(agent.id.as_str()) {
                        let mut updated = existing.clone();
                        updated.agent_id = Some(agent.id.clone());
                        updated.updated_at = self.now;
                        self.update_database(&updated)?;
                    }
                }
                None => self.create_database(&agent_database(agent, &db, self.now))?,
            }
            kept.insert(db.id.clone(), db);
        }
        agent.databases = kept.into_values().collect();
        Ok(conflicts)
    }
}

fn agent_database(agent: &Agent, db: &AgentDatabase, now: DateTime<Utc>) -> Database {
    Database {
        id: db.id.clone(),
        workspace_id: agent.workspace_id.clone(),
        db_type: db.db_type,
        agent_id: Some(agent.id.clone()),
        connection: Connection::default(),
        secrets: BTreeMap::new(),
        labels: BTreeMap::from([("registered-by".to_string(), "agent".to_string())]),
        description: Some(format!(
            "declared by agent {} on {}",
            agent.id, agent.hostname
        )),
        created_at: now,
        updated_at: now,
    }
}
