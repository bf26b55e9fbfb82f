//! Restore drills: a policy proves its backups by restoring them, on a schedule, into a scratch
//! instance that is checked, timed and thrown away.
//!
//! The policy's `drill` block says how often, what to restore (the newest state, or a point
//! such as "now minus 1 h" where the method recovers to any second) and which checks must pass;
//! the policy's `rto_target_minutes` / `rpo_target_minutes` say what is good enough. A drill is
//! a record of its own (like a restore) so that its result outlives its job and the compliance
//! report can read the last one per database. What a drill measured is judged here, from the
//! agent's report alone, so the same rules serve the API, the report and the tests.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use bulwark_core::api::{CheckResult, JobResult, ReachedPoint, RecoveryPoint, SqlCheck};

use super::database::DatabaseType;
use super::job::Progress;
use super::restore::Person;
use super::rules::BackupMethod;
use super::schedule::{human, Frequency};
use super::{check_text, Violation};

/// How often a policy's drill runs unless its block says otherwise.
pub const DEFAULT_FREQUENCY: &str = "weekly";
/// Drills restore whole databases: more often than hourly would compete with the backups.
pub const MIN_GAP_SECONDS: i64 = 3600;
pub const MAX_SQL_CHECKS: usize = 20;
/// The furthest back a point such as `now-<n>h` may reach: a week (older points are outside
/// most retention windows and would fail for that reason, not for the backups').
pub const MAX_AGO_SECONDS: i64 = 7 * 24 * 3600;
/// Upper bound of the RTO and RPO targets (a year), so arithmetic on them cannot overflow.
pub const MAX_TARGET_MINUTES: i64 = 366 * 24 * 60;

/// A policy's `drill` block as a client sends it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillBody {
    /// As the schedule's frequency (`weekly`, `daily`, `every 12h`, cron); default weekly,
    /// at most hourly. Drills start inside the policy's preferred window.
    #[serde(default)]
    pub frequency: Option<String>,
    /// `latest` (default), or `now-<n>m` / `now-<n>h` for point-in-time policies.
    #[serde(default)]
    pub point: Option<String>,
    /// Another enrolled agent of the workspace that drills (default: the database's own).
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The engine's own integrity check (pg_amcheck, PRAGMA integrity_check); default true.
    #[serde(default)]
    pub integrity: Option<bool>,
    /// Every table's row count against the count recorded at backup time; default true for
    /// dumps and SQLite copies (physical bases record none).
    #[serde(default)]
    pub row_counts: Option<bool>,
    #[serde(default)]
    pub sql_checks: Vec<SqlCheck>,
}

/// A policy's drill, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrillSpec {
    pub frequency: String,
    /// `latest` or `now-<n>m` / `now-<n>h`.
    pub point: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub integrity: bool,
    pub row_counts: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sql_checks: Vec<SqlCheck>,
}

/// What a drill restores: the newest state, or the state a while before the drill starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillPoint {
    Latest,
    Ago(i64),
}

impl DrillPoint {
    pub fn parse(s: &str) -> Result<DrillPoint, String> {
        let s = s.trim();
        if s == "latest" {
            return Ok(DrillPoint::Latest);
        }
        let bad = || {
            format!(
                "'{}' is not a drill point; use latest, now-<n>m or now-<n>h (for example now-1h)",
                s.escape_debug()
            )
        };
        let rest = s.strip_prefix("now-").ok_or_else(bad)?;
        let (n, unit) = rest.split_at(rest.len().saturating_sub(1));
        let n: i64 = n.parse().map_err(|_| bad())?;
        let secs = match unit {
            "m" => n.checked_mul(60),
            "h" => n.checked_mul(3600),
            _ => None,
        }
        .ok_or_else(bad)?;
        if !(60..=MAX_AGO_SECONDS).contains(&secs) {
            return Err(format!(
                "'{s}' reaches {} back; a drill point lies between 1 minute and {} before the drill",
                human(secs),
                human(MAX_AGO_SECONDS)
            ));
        }
        Ok(DrillPoint::Ago(secs))
    }

    /// The recovery point of a drill started at `now`, and the time it names.
    pub fn resolve(self, now: DateTime<Utc>) -> (RecoveryPoint, Option<DateTime<Utc>>) {
        match self {
            DrillPoint::Latest => (RecoveryPoint::Latest, None),
            DrillPoint::Ago(secs) => {
                let at = now - Duration::seconds(secs);
                (RecoveryPoint::Time(at), Some(at))
            }
        }
    }
}

/// Checks a policy's drill block against the policy's engine and method; problems are pushed
/// with paths under `drill.`.
pub fn check(
    body: &DrillBody,
    db_type: DatabaseType,
    method: BackupMethod,
    pitr: bool,
    tz: Tz,
    p: &mut Vec<Violation>,
) -> Option<DrillSpec> {
    let before = p.len();
    if !matches!(db_type, DatabaseType::Postgresql | DatabaseType::Sqlite) {
        p.push(Violation::new(
            "drill",
            format!(
                "drills restore postgresql and sqlite databases; {} drills come with its agent driver",
                db_type.as_str()
            ),
        ));
        return None;
    }
    let frequency = body
        .frequency
        .as_deref()
        .unwrap_or(DEFAULT_FREQUENCY)
        .trim();
    match frequency.parse::<Frequency>().and_then(|f| f.cadence(tz)) {
        Err(e) => p.push(Violation::new("drill.frequency", e)),
        Ok(c) if c.min_gap_seconds < MIN_GAP_SECONDS => p.push(Violation::new(
            "drill.frequency",
            format!(
                "runs every {}; drills run at most hourly",
                human(c.min_gap_seconds)
            ),
        )),
        Ok(_) => {}
    }
    // A PostgreSQL base backup; a SQLite "physical" copy is a consistent file that records its counts.
    let physical = db_type == DatabaseType::Postgresql && method == BackupMethod::Physical;
    let point = body.point.as_deref().unwrap_or("latest").trim();
    match DrillPoint::parse(point) {
        Err(e) => p.push(Violation::new("drill.point", e)),
        Ok(DrillPoint::Ago(_)) if !(physical && pitr) => p.push(Violation::new(
            "drill.point",
            "a point before the newest state needs point-in-time recovery (a postgresql physical policy with pitr); use latest",
        )),
        Ok(_) => {}
    }
    if let Some(agent) = &body.agent_id {
        if !super::is_generated_id("agt", agent) {
            p.push(Violation::new(
                "drill.agent_id",
                format!("'{}' is not an agent id", agent.escape_debug()),
            ));
        }
    }
    let row_counts = match body.row_counts {
        Some(true) if physical => {
            p.push(Violation::new(
                "drill.row_counts",
                "physical base backups record no row counts (replayed WAL changes them); use sql_checks",
            ));
            false
        }
        Some(v) => v,
        None => !physical,
    };
    if body.sql_checks.len() > MAX_SQL_CHECKS {
        p.push(Violation::new(
            "drill.sql_checks",
            format!("at most {MAX_SQL_CHECKS} checks"),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in body.sql_checks.iter().enumerate() {
        let at = |f: &str| format!("drill.sql_checks[{i}].{f}");
        check_text(p, &at("name"), &c.name, 64);
        if matches!(c.name.as_str(), "integrity" | "row_counts") || !names.insert(c.name.as_str()) {
            p.push(Violation::new(
                &at("name"),
                "a name of its own: not integrity or row_counts, not used twice",
            ));
        }
        // Queries span lines; only NUL (which no server takes) is refused.
        if c.query.trim().is_empty() || c.query.len() > 4096 || c.query.contains('\0') {
            p.push(Violation::new(
                &at("query"),
                "1 to 4096 bytes of SQL, no NUL characters",
            ));
        }
        // The expected answer is one value per line.
        if c.expect.len() > 4096 || c.expect.contains('\0') {
            p.push(Violation::new(
                &at("expect"),
                "at most 4096 bytes, no NUL characters",
            ));
        }
    }
    (p.len() == before).then(|| DrillSpec {
        frequency: frequency.to_string(),
        point: point.to_string(),
        agent_id: body.agent_id.clone(),
        integrity: body.integrity.unwrap_or(true),
        row_counts,
        sql_checks: body.sql_checks.clone(),
    })
}

/// A policy's RTO or RPO target in minutes (1 minute to a year).
pub fn check_target(p: &mut Vec<Violation>, path: &str, value: Option<i64>) -> Option<u32> {
    let v = value?;
    if !(1..=MAX_TARGET_MINUTES).contains(&v) {
        p.push(Violation::new(
            path,
            format!("must be between 1 and {MAX_TARGET_MINUTES} minutes (got {v})"),
        ));
        return None;
    }
    Some(v as u32)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DrillStatus {
    Queued,
    Running,
    /// Every check passed (whether the targets were met is `targets_met`).
    Passed,
    Failed,
}

impl DrillStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DrillStatus::Queued => "queued",
            DrillStatus::Running => "running",
            DrillStatus::Passed => "passed",
            DrillStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DrillTrigger {
    /// `POST /api/v1/policies/{id}/drills`.
    Manual,
    /// The policy's drill frequency.
    Scheduled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Drill {
    pub id: String,
    pub workspace_id: String,
    pub database_id: String,
    pub db_type: DatabaseType,
    pub policy_id: String,
    /// The agent that drills (the database's own, or the policy's scratch agent).
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
    pub job_id: String,
    pub trigger: DrillTrigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<Person>,
    /// What the policy asked for (`latest`, `now-1h`), and the time it named when the drill
    /// was made.
    pub point: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<DateTime<Utc>>,
    /// A physical base with WAL (PostgreSQL) rather than the newest dump.
    pub physical: bool,
    pub status: DrillStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The snapshot restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub reached: Option<ReachedPoint>,
    /// The newest state the restored copy held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_to: Option<DateTime<Utc>>,
    /// Seconds from the job's start until the copy answered every check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_secs: Option<f64>,
    /// The data a real restore at that moment would have lost: the requested point against
    /// the point reached, or for `latest` the age of the newest recovered state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_target_minutes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_target_minutes: Option<u32>,
    /// Both targets met (true when the policy sets none); absent until the drill ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets_met: Option<bool>,
    /// Each target missed, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub misses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_removed: Option<bool>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Drill {
    pub fn is_final(&self) -> bool {
        matches!(self.status, DrillStatus::Passed | DrillStatus::Failed)
    }

    /// Whether the drill proves its policy: every check passed and both targets met.
    pub fn proves(&self) -> bool {
        self.status == DrillStatus::Passed && self.targets_met == Some(true)
    }

    /// Records what the agent reported and judges it against the targets.
    pub fn finish(&mut self, result: &JobResult) {
        let outcome = result.drill.clone().unwrap_or_default();
        self.status = if result.succeeded {
            DrillStatus::Passed
        } else {
            DrillStatus::Failed
        };
        self.snapshot = (!outcome.snapshot.is_empty()).then(|| outcome.snapshot.clone());
        self.checks = outcome.checks.clone();
        self.reached = outcome.reached.clone();
        self.recovered_to = outcome.recovered_to;
        self.scratch_removed = result.drill.as_ref().map(|d| d.scratch_removed);
        self.started_at = Some(result.started_at);
        self.finished_at = Some(result.finished_at);
        self.error = result.error.clone();
        self.progress = None;
        if !result.succeeded {
            // A copy that failed its checks answered nothing worth timing.
            self.targets_met = Some(false);
            return;
        }
        self.rto_secs = Some(outcome.ready_secs.max(0.0));
        // Against what was asked: the named time, or (latest) the moment the drill started.
        let asked = self.target_time.unwrap_or(result.started_at);
        self.rpo_secs = outcome
            .recovered_to
            .map(|t| ((asked - t).num_milliseconds().max(0) as f64) / 1000.0);
        self.misses.clear();
        if let Some(target) = self.rto_target_minutes {
            let rto = self.rto_secs.unwrap_or_default();
            if rto > f64::from(target) * 60.0 {
                self.misses.push(format!(
                    "RTO {} is over the target of {target} min",
                    human(rto.ceil() as i64)
                ));
            }
        }
        if let Some(target) = self.rpo_target_minutes {
            match self.rpo_secs {
                None => self.misses.push(
                    "the point the copy recovered to is unknown, so the RPO target cannot be shown met"
                        .to_string(),
                ),
                Some(rpo) if rpo > f64::from(target) * 60.0 => self.misses.push(format!(
                    "RPO {} is over the target of {target} min",
                    human(rpo.ceil() as i64)
                )),
                Some(_) => {}
            }
        }
        self.targets_met = Some(self.misses.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_core::api::DrillOutcome;

    fn spec(
        json: serde_json::Value,
        db: DatabaseType,
        method: BackupMethod,
        pitr: bool,
    ) -> Result<DrillSpec, Vec<Violation>> {
        let body: DrillBody = serde_json::from_value(json).unwrap();
        let mut p = Vec::new();
        check(&body, db, method, pitr, Tz::UTC, &mut p).ok_or(p)
    }

    fn paths(e: Vec<Violation>) -> Vec<String> {
        e.into_iter().map(|v| v.path).collect()
    }

    #[test]
    fn defaults_follow_the_method() {
        use serde_json::json;
        let logical = spec(
            json!({}),
            DatabaseType::Postgresql,
            BackupMethod::Logical,
            false,
        )
        .unwrap();
        assert_eq!(
            (logical.frequency.as_str(), logical.point.as_str()),
            ("weekly", "latest")
        );
        assert!(logical.integrity && logical.row_counts);
        let physical = spec(
            json!({"point": "now-1h"}),
            DatabaseType::Postgresql,
            BackupMethod::Physical,
            true,
        )
        .unwrap();
        assert!(!physical.row_counts, "a physical base records no counts");
        assert_eq!(
            DrillPoint::parse(&physical.point),
            Ok(DrillPoint::Ago(3600))
        );
    }

    #[test]
    fn every_problem_is_named_at_its_path() {
        use serde_json::json;
        let e = spec(
            json!({"frequency": "every 10m", "point": "now-1h", "row_counts": true, "agent_id": "nope",
                "sql_checks": [{"name": "integrity", "query": "", "expect": "1"},
                               {"name": "a", "query": "select 1", "expect": "1"},
                               {"name": "a", "query": "select 1", "expect": "1"}]}),
            DatabaseType::Postgresql,
            BackupMethod::Physical,
            false,
        )
        .unwrap_err();
        assert_eq!(
            paths(e),
            [
                "drill.frequency",
                "drill.point",
                "drill.agent_id",
                "drill.row_counts",
                "drill.sql_checks[0].name",
                "drill.sql_checks[0].query",
                "drill.sql_checks[2].name"
            ]
        );
        let e = spec(json!({}), DatabaseType::Mysql, BackupMethod::Logical, false).unwrap_err();
        assert_eq!(paths(e), ["drill"]);
        for bad in [
            "now",
            "now-0m",
            "now-30s",
            "now-9999h",
            "yesterday",
            "now-1.5h",
        ] {
            assert!(DrillPoint::parse(bad).is_err(), "{bad}");
        }
    }

    fn drill(target_time: Option<DateTime<Utc>>) -> Drill {
        Drill {
            id: "drl_x".into(),
            workspace_id: "acme".into(),
            database_id: "shop".into(),
            db_type: DatabaseType::Postgresql,
            policy_id: "pol".into(),
            agent_id: "agt".into(),
            storage_id: None,
            job_id: "job".into(),
            trigger: DrillTrigger::Manual,
            requested_by: None,
            point: "latest".into(),
            target_time,
            physical: false,
            status: DrillStatus::Queued,
            progress: None,
            snapshot: None,
            checks: Vec::new(),
            reached: None,
            recovered_to: None,
            rto_secs: None,
            rpo_secs: None,
            rto_target_minutes: Some(5),
            rpo_target_minutes: Some(60),
            targets_met: None,
            misses: Vec::new(),
            scratch_removed: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            error: None,
        }
    }

    fn result(started: DateTime<Utc>, ready: f64, recovered: DateTime<Utc>) -> JobResult {
        JobResult {
            succeeded: true,
            snapshot: Some("s".into()),
            started_at: started,
            finished_at: started + Duration::seconds(ready as i64 + 1),
            drill: Some(DrillOutcome {
                snapshot: "s".into(),
                ready_secs: ready,
                recovered_to: Some(recovered),
                reached: None,
                checks: Vec::new(),
                scratch_removed: true,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn rto_and_rpo_are_judged_against_the_targets() {
        let start = Utc::now();
        // latest: the RPO is the age of the newest recovered state when the drill started.
        let mut d = drill(None);
        d.finish(&result(start, 42.0, start - Duration::minutes(30)));
        assert_eq!((d.status, d.targets_met), (DrillStatus::Passed, Some(true)));
        assert_eq!((d.rto_secs, d.rpo_secs), (Some(42.0), Some(1800.0)));
        assert!(d.proves());
        let mut d = drill(None);
        d.finish(&result(start, 400.0, start - Duration::minutes(90)));
        assert_eq!(d.targets_met, Some(false));
        assert_eq!(d.misses.len(), 2, "{:?}", d.misses);
        assert!(d.misses[0].contains("RTO"), "{:?}", d.misses);
        // A point in time: the RPO is the distance between the asked and the reached point.
        let asked = start - Duration::hours(1);
        let mut d = drill(Some(asked));
        d.finish(&result(start, 10.0, asked - Duration::seconds(2)));
        assert_eq!(d.rpo_secs, Some(2.0));
        // A failed drill proves nothing, whatever it measured.
        let mut failed = result(start, 1.0, start);
        failed.succeeded = false;
        failed.error = Some("row_counts: t: 3 backed up, 2 restored".into());
        let mut d = drill(None);
        d.finish(&failed);
        assert_eq!(
            (d.status, d.targets_met),
            (DrillStatus::Failed, Some(false))
        );
        assert!(!d.proves());
    }
}
