//! Backup policies: the seed schema (`db_identifier`, `db_type`, `schedule {frequency,
//! preferred_window, priority}`, `retention {period_days, min_snapshots}`) plus Bulwark's
//! optional extensions, and the validator that checks a body against the rule table.
//!
//! Enumerations (`db_type`, `priority`, `backup_method`) and numbers are taken as raw values and
//! checked here rather than by the JSON decoder, so that one request reports every problem at
//! once, each with its JSON path, instead of stopping at the first unknown value.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::database::{Database, DatabaseType};
use super::drill::{self, DrillBody, DrillSpec};
use super::rules::{self, BackupMethod};
use super::schedule::{human, Frequency, Window, DAY};
use super::workspace::{Workspace, MAX_PERIOD_DAYS};
use super::{check_slug, Violation};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
    Critical,
}

/// Upper bound for `min_snapshots` and the `keep_*` counts: far above any real policy, low
/// enough that arithmetic on them cannot overflow.
pub const MAX_COUNT: i64 = 100_000;

/// Most policies one database may have. Real ones have a few (daily, weekly, monthly); every
/// policy costs planning work on each scheduler tick and `/schedule/upcoming` request, and one
/// tenant with hundreds on a database slowed every other tenant's requests.
pub const MAX_POLICIES_PER_DATABASE: usize = 10;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// `hourly`, `daily`, `weekly`, `monthly`, `every <n>m`, `every <n>h`, or a cron expression.
    #[schema(example = "daily")]
    pub frequency: String,
    /// `HH:MM-HH:MM` in the policy's time zone; may wrap midnight (`22:00-02:00`).
    #[schema(example = "01:00-05:00")]
    pub preferred_window: String,
    #[schema(value_type = Priority)]
    pub priority: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    /// 1..3650, and not below the workspace's compliance floor.
    pub period_days: i64,
    /// At least 1, and reachable within `period_days` at the schedule's frequency.
    pub min_snapshots: i64,
}

/// What a client sends to create, replace or dry-run a policy.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    pub db_identifier: String,
    #[schema(value_type = DatabaseType)]
    pub db_type: String,
    pub schedule: ScheduleBody,
    pub retention: RetentionBody,
    /// IANA time zone of the schedule and window; default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub keep_last: Option<i64>,
    #[serde(default)]
    pub keep_daily: Option<i64>,
    #[serde(default)]
    pub keep_weekly: Option<i64>,
    #[serde(default)]
    pub keep_monthly: Option<i64>,
    #[serde(default)]
    pub keep_yearly: Option<i64>,
    /// Default: the technology's default method (see the rule table).
    #[serde(default)]
    #[schema(value_type = Option<BackupMethod>)]
    pub backup_method: Option<String>,
    /// Point-in-time recovery: PostgreSQL (physical) and MySQL/MariaDB only.
    #[serde(default)]
    pub pitr: Option<bool>,
    #[serde(default)]
    pub storage_id: Option<String>,
    #[serde(default)]
    pub verify_after_backup: Option<bool>,
    #[serde(default)]
    pub require_restore_approval: Option<bool>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A restore drill that proves the policy's backups on a schedule.
    #[serde(default)]
    pub drill: Option<DrillBody>,
    /// The longest a restore may take (checked by the drills), 1..527040 minutes.
    #[serde(default)]
    pub rto_target_minutes: Option<i64>,
    /// The most data a restore may lose (checked by the drills and the compliance report).
    #[serde(default)]
    pub rpo_target_minutes: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    pub frequency: String,
    pub preferred_window: String,
    pub priority: Priority,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Retention {
    pub period_days: u32,
    pub min_snapshots: u32,
}

/// A stored policy, with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    pub id: String,
    pub workspace_id: String,
    pub db_identifier: String,
    pub db_type: DatabaseType,
    pub schedule: Schedule,
    pub retention: Retention,
    pub timezone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    pub backup_method: BackupMethod,
    pub pitr: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
    pub verify_after_backup: bool,
    pub require_restore_approval: bool,
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_target_minutes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_target_minutes: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Policy {
    /// Two policies of one database may coexist only with different schedules.
    pub fn schedule_key(&self) -> String {
        let freq = self
            .schedule
            .frequency
            .parse::<Frequency>()
            .map(|f| f.normalized())
            .unwrap_or_else(|_| self.schedule.frequency.clone());
        format!("{freq}|{}", self.schedule.preferred_window)
    }
}

/// What the validator needs to know besides the body.
pub struct Context<'a> {
    /// The database `db_identifier` names, if it exists and the caller may see it.
    pub database: Option<&'a Database>,
    /// Its workspace (for the compliance floor).
    pub workspace: Option<&'a Workspace>,
    /// The stored policy, on update.
    pub existing: Option<&'a Policy>,
    pub id: String,
    pub now: DateTime<Utc>,
}

fn parse_enum<T: for<'de> Deserialize<'de>>(
    problems: &mut Vec<Violation>,
    path: &str,
    raw: &str,
    allowed: &str,
) -> Option<T> {
    match serde_json::from_value(serde_json::Value::String(raw.to_string())) {
        Ok(v) => Some(v),
        Err(_) => {
            problems.push(Violation::new(
                path,
                format!("'{}' is not one of {allowed}", raw.escape_debug()),
            ));
            None
        }
    }
}

fn count(problems: &mut Vec<Violation>, path: &str, value: Option<i64>, min: i64) -> Option<u32> {
    let v = value?;
    if !(min..=MAX_COUNT).contains(&v) {
        problems.push(Violation::new(
            path,
            format!("must be between {min} and {MAX_COUNT} (got {v})"),
        ));
        return None;
    }
    Some(v as u32)
}

/// Checks `body` against the rule table and builds the stored policy, or returns every
/// violation found.
pub fn validate(body: &PolicyBody, ctx: &Context<'_>) -> Result<Policy, Vec<Violation>> {
    let mut problems = Vec::new();
    let p = &mut problems;

    let database = match check_slug(&body.db_identifier) {
        Err(e) => {
            p.push(Violation::new("db_identifier", e));
            None
        }
        Ok(()) if ctx.database.is_none() => {
            p.push(Violation::new(
                "db_identifier",
                format!(
                    "no database '{}' in your workspaces; register it under /api/v1/databases first",
                    body.db_identifier
                ),
            ));
            None
        }
        Ok(()) => ctx.database,
    };
    let db_type = parse_enum::<DatabaseType>(
        p,
        "db_type",
        &body.db_type,
        "postgresql, mysql, mariadb, sqlite, etcd, cassandra, files",
    );
    if let (Some(t), Some(db)) = (db_type, database) {
        if t != db.db_type {
            p.push(Violation::new(
                "db_type",
                format!(
                    "is '{}' but database '{}' is registered as '{}'",
                    t.as_str(),
                    db.id,
                    db.db_type.as_str()
                ),
            ));
        }
    }
    let priority = parse_enum::<Priority>(
        p,
        "schedule.priority",
        &body.schedule.priority,
        "low, normal, high, critical",
    );
    let tz = match body.timezone.as_deref().unwrap_or("UTC").parse::<Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            p.push(Violation::new(
                "timezone",
                format!(
                    "'{}' is not an IANA time zone; use a name such as UTC or Europe/Berlin",
                    body.timezone.as_deref().unwrap_or_default().escape_debug()
                ),
            ));
            None
        }
    };
    let cadence = match body.schedule.frequency.parse::<Frequency>() {
        Err(e) => {
            p.push(Violation::new("schedule.frequency", e));
            None
        }
        Ok(f) => match f.cadence(tz.unwrap_or(Tz::UTC)) {
            Err(e) => {
                p.push(Violation::new("schedule.frequency", e));
                None
            }
            Ok(c) => Some(c),
        },
    };
    let window = match body.schedule.preferred_window.parse::<Window>() {
        Err(e) => {
            p.push(Violation::new("schedule.preferred_window", e));
            None
        }
        Ok(w) => Some(w),
    };

    let tech = db_type.map(rules::for_type);
    let method = match &body.backup_method {
        None => tech.map(|t| t.default_method),
        Some(raw) => parse_enum::<BackupMethod>(p, "backup_method", raw, "logical, physical"),
    };
    let method_rule = match (tech, method) {
        (Some(t), Some(m)) => {
            let found = t.method(m);
            if found.is_none() {
                let allowed: Vec<_> = t
                    .methods
                    .iter()
                    .map(|r| format!("{:?}", r.method).to_lowercase())
                    .collect();
                p.push(Violation::new(
                    "backup_method",
                    format!(
                        "{} databases are backed up {}; '{:?}' is not available for them",
                        t.db_type.as_str(),
                        allowed.join(" or "),
                        m
                    )
                    .to_lowercase(),
                ));
            }
            found
        }
        _ => None,
    };

    if let (Some(rule), Some(c)) = (method_rule, &cadence) {
        if c.min_gap_seconds < rule.min_interval_seconds {
            p.push(Violation::new(
                "schedule.frequency",
                format!(
                    "runs every {} but {} backups of {} ({}) may run at most every {}",
                    human(c.min_gap_seconds),
                    format!("{:?}", rule.method).to_lowercase(),
                    db_type.map_or("", DatabaseType::as_str),
                    rule.how,
                    human(rule.min_interval_seconds)
                ),
            ));
        }
    }
    if let (Some(rule), Some(c), Some(w)) = (method_rule, &cadence, window) {
        check_window(p, rule.min_window_minutes, c, w);
    }

    let pitr = body.pitr.unwrap_or(false);
    if pitr {
        if let Some(rule) = method_rule {
            if !rule.pitr {
                p.push(Violation::new(
                    "pitr",
                    format!(
                        "point-in-time recovery is available for postgresql (physical) and mysql/mariadb only, not {} ({})",
                        db_type.map_or("", DatabaseType::as_str),
                        format!("{:?}", rule.method).to_lowercase()
                    ),
                ));
            }
        }
    }

    let drill = match (&body.drill, db_type, method) {
        (Some(d), Some(t), Some(m)) => drill::check(d, t, m, pitr, tz.unwrap_or(Tz::UTC), p),
        _ => None,
    };
    let rto_target_minutes = drill::check_target(p, "rto_target_minutes", body.rto_target_minutes);
    let rpo_target_minutes = drill::check_target(p, "rpo_target_minutes", body.rpo_target_minutes);

    let period = body.retention.period_days;
    let period_ok = if !(1..=MAX_PERIOD_DAYS).contains(&period) {
        p.push(Violation::new(
            "retention.period_days",
            format!("must be between 1 and {MAX_PERIOD_DAYS} (got {period})"),
        ));
        false
    } else {
        true
    };
    if let Some(floor) = ctx.workspace.and_then(|w| w.min_retention_days) {
        if period_ok && period < i64::from(floor) {
            p.push(Violation::new(
                "retention.period_days",
                format!("is {period} but workspace '{}' keeps backups at least {floor} days (its compliance floor)", ctx.workspace.map_or("", |w| w.id.as_str())),
            ));
        }
    }
    let min_snapshots = count(
        p,
        "retention.min_snapshots",
        Some(body.retention.min_snapshots),
        1,
    );
    if let (Some(min), Some(c), true) = (min_snapshots, &cadence, period_ok) {
        let reachable = period * DAY / c.avg_gap_seconds.max(1);
        if i64::from(min) > reachable {
            p.push(Violation::new(
                "retention.min_snapshots",
                format!(
                    "asks for {min} snapshots but only {reachable} backups fit into {period} days at '{}'; lower min_snapshots or lengthen period_days",
                    body.schedule.frequency.trim()
                ),
            ));
        }
    }
    let keep_last = count(p, "keep_last", body.keep_last, 0);
    let keep_daily = count(p, "keep_daily", body.keep_daily, 0);
    let keep_weekly = count(p, "keep_weekly", body.keep_weekly, 0);
    let keep_monthly = count(p, "keep_monthly", body.keep_monthly, 0);
    let keep_yearly = count(p, "keep_yearly", body.keep_yearly, 0);
    if let Some(storage) = &body.storage_id {
        if let Err(e) = check_slug(storage) {
            p.push(Violation::new("storage_id", e));
        }
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    // Every Option below is Some: a None would have left a violation.
    let database = database.expect("checked");
    Ok(Policy {
        id: ctx.id.clone(),
        workspace_id: database.workspace_id.clone(),
        db_identifier: database.id.clone(),
        db_type: database.db_type,
        schedule: Schedule {
            frequency: body.schedule.frequency.trim().to_string(),
            preferred_window: window.expect("checked").to_string(),
            priority: priority.expect("checked"),
        },
        retention: Retention {
            period_days: period as u32,
            min_snapshots: min_snapshots.expect("checked"),
        },
        timezone: tz.expect("checked").name().to_string(),
        keep_last,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        backup_method: method.expect("checked"),
        pitr,
        storage_id: body.storage_id.clone(),
        verify_after_backup: body.verify_after_backup.unwrap_or(false),
        require_restore_approval: body.require_restore_approval.unwrap_or(false),
        enabled: body.enabled.unwrap_or(true),
        drill,
        rto_target_minutes,
        rpo_target_minutes,
        created_at: ctx.existing.map_or(ctx.now, |e| e.created_at),
        updated_at: ctx.now,
    })
}

/// A window must hold the runs the frequency asks for. Cron expressions name their times, which
/// must fall inside it; interval frequencies are placed by the scheduler, so the window must
/// hold all of a day's runs one interval apart plus the time one run may take.
fn check_window(p: &mut Vec<Violation>, min_window: u32, c: &super::schedule::Cadence, w: Window) {
    let length = w.length_minutes();
    if length < min_window {
        p.push(Violation::new(
            "schedule.preferred_window",
            format!(
                "{w} is {} long; a run needs at least {}",
                human(i64::from(length) * 60),
                human(i64::from(min_window) * 60)
            ),
        ));
        return;
    }
    if !c.fire_minutes.is_empty() {
        if let Some(outside) = c.fire_minutes.iter().find(|m| !w.contains_minute(**m)) {
            p.push(Violation::new(
                "schedule.preferred_window",
                format!(
                    "the cron expression fires at {:02}:{:02}, outside the preferred window {w}",
                    outside / 60,
                    outside % 60
                ),
            ));
        }
        return;
    }
    let interval_minutes = c.min_gap_seconds / 60;
    if interval_minutes >= 24 * 60 {
        return;
    }
    let runs_per_day = (24 * 60 + interval_minutes - 1) / interval_minutes;
    let needed = ((runs_per_day - 1) * interval_minutes + i64::from(min_window)).min(24 * 60);
    if i64::from(length) < needed {
        p.push(Violation::new(
            "schedule.preferred_window",
            format!(
                "{w} is {} long but {runs_per_day} runs a day, {} apart, need {}; widen the window (00:00-24:00 is the whole day) or run less often",
                human(i64::from(length) * 60),
                human(interval_minutes * 60),
                human(needed * 60)
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::database::DatabaseBody;

    fn db(kind: &str) -> Database {
        let conn = match kind {
            "sqlite" | "files" => r#"{"path":"/x"}"#,
            "etcd" => r#"{"endpoints":["http://127.0.0.1:2379"]}"#,
            _ => r#"{"host":"db1"}"#,
        };
        let body: DatabaseBody = serde_json::from_str(&format!(
            r#"{{"id":"d1","workspace_id":"ws","type":"{kind}","connection":{conn}}}"#
        ))
        .unwrap();
        body.into_database(None, None, Utc::now()).unwrap()
    }

    fn run(
        kind: &str,
        json: serde_json::Value,
        floor: Option<u32>,
    ) -> Result<Policy, Vec<Violation>> {
        let database = db(kind);
        let ws = Workspace {
            id: "ws".into(),
            name: "ws".into(),
            plan: super::super::workspace::Plan::Shared,
            quota_bytes: 0,
            min_retention_days: floor,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let mut body = serde_json::json!({
            "db_identifier": "d1", "db_type": kind,
            "schedule": {"frequency": "daily", "preferred_window": "01:00-05:00", "priority": "normal"},
            "retention": {"period_days": 30, "min_snapshots": 7}
        });
        merge(&mut body, json);
        let body: PolicyBody = serde_json::from_value(body).unwrap();
        validate(
            &body,
            &Context {
                database: Some(&database),
                workspace: Some(&ws),
                existing: None,
                id: "pol_x".into(),
                now: Utc::now(),
            },
        )
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn paths(r: Result<Policy, Vec<Violation>>) -> Vec<String> {
        match r {
            Ok(_) => vec![],
            Err(v) => v.into_iter().map(|v| v.path).collect(),
        }
    }

    #[test]
    fn seed_policy_is_valid_and_gets_defaults() {
        let p = run("postgresql", serde_json::json!({}), None).unwrap();
        assert_eq!(p.backup_method, BackupMethod::Logical);
        assert_eq!(
            (p.timezone.as_str(), p.enabled, p.pitr),
            ("UTC", true, false)
        );
        let p = run("sqlite", serde_json::json!({}), None).unwrap();
        assert_eq!(p.backup_method, BackupMethod::Physical);
    }

    #[test]
    fn rule_table_cases() {
        use serde_json::json;
        let cases: Vec<(&str, serde_json::Value, Option<u32>, Vec<&str>)> = vec![
            (
                "etcd",
                json!({"schedule": {"frequency": "every 5m", "preferred_window": "00:00-24:00"}, "retention": {"min_snapshots": 1}}),
                None,
                vec!["schedule.frequency"],
            ),
            (
                "etcd",
                json!({"schedule": {"frequency": "every 15m", "preferred_window": "00:00-24:00"}, "retention": {"min_snapshots": 1}}),
                None,
                vec![],
            ),
            (
                "cassandra",
                json!({"schedule": {"frequency": "every 30m", "preferred_window": "00:00-24:00"}}),
                None,
                vec!["schedule.frequency"],
            ),
            (
                "postgresql",
                json!({"schedule": {"frequency": "every 4m", "preferred_window": "00:00-24:00"}}),
                None,
                vec!["schedule.frequency"],
            ),
            ("postgresql", json!({"pitr": true}), None, vec!["pitr"]),
            (
                "postgresql",
                json!({"pitr": true, "backup_method": "physical"}),
                None,
                vec![],
            ),
            ("mariadb", json!({"pitr": true}), None, vec![]),
            (
                "sqlite",
                json!({"pitr": true, "backup_method": "logical"}),
                None,
                vec!["backup_method"],
            ),
            ("etcd", json!({"pitr": true}), None, vec!["pitr"]),
            (
                "postgresql",
                json!({"schedule": {"preferred_window": "22:00-02:00"}}),
                None,
                vec![],
            ),
            (
                "postgresql",
                json!({"schedule": {"preferred_window": "22:00-22:10"}}),
                None,
                vec!["schedule.preferred_window"],
            ),
            (
                "postgresql",
                json!({"schedule": {"frequency": "hourly", "preferred_window": "01:00-05:00"}}),
                None,
                vec!["schedule.preferred_window"],
            ),
            (
                "postgresql",
                json!({"schedule": {"frequency": "0 3 * * *", "preferred_window": "01:00-02:00"}}),
                None,
                vec!["schedule.preferred_window"],
            ),
            (
                "postgresql",
                json!({"schedule": {"frequency": "30 1 * * *"}}),
                None,
                vec![],
            ),
            (
                "postgresql",
                json!({"retention": {"period_days": 0}}),
                None,
                vec!["retention.period_days"],
            ),
            (
                "postgresql",
                json!({"retention": {"period_days": 3651}}),
                None,
                vec!["retention.period_days"],
            ),
            (
                "postgresql",
                json!({"retention": {"period_days": 14}}),
                Some(30),
                vec!["retention.period_days"],
            ),
            (
                "postgresql",
                json!({"retention": {"min_snapshots": 0}}),
                None,
                vec!["retention.min_snapshots"],
            ),
            (
                "postgresql",
                json!({"schedule": {"frequency": "weekly"}, "retention": {"period_days": 7, "min_snapshots": 3}}),
                None,
                vec!["retention.min_snapshots"],
            ),
            (
                "postgresql",
                json!({"schedule": {"priority": "urgent"}}),
                None,
                vec!["schedule.priority"],
            ),
            (
                "postgresql",
                json!({"db_type": "mysql"}),
                None,
                vec!["db_type"],
            ),
            (
                "postgresql",
                json!({"db_type": "oracle"}),
                None,
                vec!["db_type"],
            ),
            (
                "postgresql",
                json!({"timezone": "Mars/Olympus"}),
                None,
                vec!["timezone"],
            ),
            (
                "postgresql",
                json!({"timezone": "Europe/Berlin", "keep_daily": 7, "keep_last": -1}),
                None,
                vec!["keep_last"],
            ),
            // Everything wrong at once is reported at once.
            (
                "postgresql",
                json!({"schedule": {"frequency": "every 1m", "preferred_window": "25:00-01:00", "priority": "meh"}, "retention": {"period_days": -1, "min_snapshots": 0}, "pitr": true}),
                None,
                vec![
                    "schedule.priority",
                    "schedule.preferred_window",
                    "schedule.frequency",
                    "pitr",
                    "retention.period_days",
                    "retention.min_snapshots",
                ],
            ),
        ];
        for (kind, json, floor, want) in cases {
            let got = paths(run(kind, json.clone(), floor));
            assert_eq!(got, want, "{kind} {json}");
        }
    }
}
