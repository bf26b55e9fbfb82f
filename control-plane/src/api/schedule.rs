//! `GET /api/v1/schedule/upcoming`: what will run when, and why — computed by the same planner
//! the scheduler uses (`domain::plan`), from the same stored state (next due slot, learned
//! duration), plus the jobs already queued for a later time.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::ApiQuery;
use super::{ApiError, AppState};
use crate::domain::authz::{Access, Caller};
use crate::domain::job::{Job, JobStatus};
use crate::domain::plan;
use crate::domain::policy::{Policy, Priority};
use crate::store;

const DEFAULT_LIMIT: usize = 500;
const MAX_LIMIT: usize = 5000;
const MAX_HOURS: i64 = 24 * 31;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upcoming))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UpcomingQuery {
    /// How far ahead, 1..=744 hours (31 days); default 24.
    hours: Option<i64>,
    workspace: Option<String>,
    /// Most entries returned, 1..=5000; default 500.
    limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpcomingKind {
    /// A policy's slot.
    Scheduled,
    /// A job already in the queue (manual for later, or a retry).
    Queued,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UpcomingRun {
    pub at: DateTime<Utc>,
    pub kind: UpcomingKind,
    pub workspace_id: String,
    pub database_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub priority: Priority,
    /// Learned from earlier runs; absent before the first one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_duration_secs: Option<i64>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Upcoming {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub items: Vec<UpcomingRun>,
    /// More runs fall into the period than `limit` allowed.
    pub truncated: bool,
}

fn bad_query(field: &str, problem: String) -> ApiError {
    ApiError::bad_request("invalid_query", format!("{field} {problem}")).with_detail(field, problem)
}

#[utoipa::path(get, path = "/api/v1/schedule/upcoming", tag = "policies", params(UpcomingQuery), security(("bearer" = [])),
    responses((status = 200, body = Upcoming, description = "Soonest first"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn upcoming(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UpcomingQuery>,
) -> Result<Json<Upcoming>, ApiError> {
    let hours = q.hours.unwrap_or(24);
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(bad_query(
            "hours",
            format!("must be between 1 and {MAX_HOURS} (got {hours})"),
        ));
    }
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(bad_query(
                "limit",
                format!("must be between 1 and {MAX_LIMIT} (got {n})"),
            ))
        }
    };
    // Planning is CPU work (cron and time-zone arithmetic per slot): it runs on a blocking
    // thread, one request at a time, so one tenant asking in a loop keeps a core at most and the
    // async threads stay free for everybody else's requests.
    // The permit goes with the planning itself: a client that hangs up does not free it while
    // its planning still runs.
    let turn = PLANNING
        .acquire()
        .await
        .expect("the planning semaphore is never closed");
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        upcoming_runs(&store, &caller, q.workspace.as_deref(), hours, limit)
    })
    .await
    .map_err(|e| ApiError::internal(format!("planning the upcoming runs failed: {e}")))?
    .map(Json)
}

/// Requests of `/schedule/upcoming` planning at the same time.
static PLANNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Most slots one request computes (over all policies), whatever `hours` and `limit` ask: the
/// answer is marked `truncated` past it.
const SLOT_BUDGET: usize = 20_000;

fn upcoming_runs(
    store: &store::Store,
    caller: &Caller,
    workspace: Option<&str>,
    hours: i64,
    limit: usize,
) -> Result<Upcoming, ApiError> {
    let rtx = store.read()?;
    let scope = super::listing(&rtx, caller, workspace)?;
    if matches!(scope, super::Listing::Nothing) {
        return Ok(Upcoming {
            from: Utc::now(),
            to: Utc::now(),
            items: vec![],
            truncated: false,
        });
    }
    let from = Utc::now();
    let to = from + Duration::hours(hours);
    let visible = |ws: &str, db: &str| {
        caller.access(ws, Some(db)) >= Access::Read && scope.workspace().is_none_or(|s| s == ws)
    };
    let mut soonest = Soonest::new(limit);
    let mut after: Option<String> = None;
    loop {
        let (policies, more) = store::policies::list(
            &rtx,
            match scope.workspace() {
                Some(ws) => store::policies::Scope::Workspace(ws),
                None => store::policies::Scope::All,
            },
            None,
            |p| p.enabled && visible(&p.workspace_id, &p.db_identifier),
            after.as_deref(),
            super::MAX_PAGE_SIZE,
        )?;
        after = policies.last().map(|p| p.id.clone());
        for p in &policies {
            policy_runs(&rtx, p, from, to, &mut soonest)?;
        }
        if !more || soonest.budget == 0 {
            soonest.truncated |= more;
            break;
        }
    }
    let queued = store::jobs::queued(&rtx, |j| {
        j.status == JobStatus::Queued && visible(&j.workspace_id, &j.database_id)
    })?;
    for j in queued.into_iter().filter(|j| j.not_before <= to) {
        soonest.push(queued_run(j));
    }
    let (items, truncated) = soonest.into_sorted();
    Ok(Upcoming {
        from,
        to,
        items,
        truncated,
    })
}

/// The `limit` soonest runs seen so far. Once it is full, its latest entry is the horizon past
/// which a policy's slots need not be computed at all: with many policies, each one after the
/// first few only plans up to that point, so the work stays near `limit` slots in all rather
/// than `limit` per policy. A budget caps the slots planned per request outright.
struct Soonest {
    heap: std::collections::BinaryHeap<ByTime>,
    limit: usize,
    budget: usize,
    truncated: bool,
}

struct ByTime(UpcomingRun);

impl ByTime {
    fn key(&self) -> (DateTime<Utc>, &str) {
        (self.0.at, self.0.database_id.as_str())
    }
}

impl PartialEq for ByTime {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for ByTime {}
impl PartialOrd for ByTime {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByTime {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl Soonest {
    fn new(limit: usize) -> Self {
        Soonest {
            heap: std::collections::BinaryHeap::with_capacity(limit + 1),
            limit,
            budget: SLOT_BUDGET,
            truncated: false,
        }
    }

    /// Slots after this time cannot make the answer (it is full of earlier ones).
    fn horizon(&self, to: DateTime<Utc>) -> DateTime<Utc> {
        match self.heap.peek() {
            Some(latest) if self.heap.len() >= self.limit => latest.0.at.min(to),
            _ => to,
        }
    }

    fn push(&mut self, run: UpcomingRun) {
        self.heap.push(ByTime(run));
        if self.heap.len() > self.limit {
            self.heap.pop();
            self.truncated = true;
        }
    }

    fn into_sorted(self) -> (Vec<UpcomingRun>, bool) {
        let items = self
            .heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0)
            .collect();
        (items, self.truncated)
    }
}

fn policy_runs(
    rtx: &store::ReadTx,
    p: &Policy,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    out: &mut Soonest,
) -> Result<(), ApiError> {
    let st = store::jobs::schedule_state(rtx, &p.id)?;
    let Ok(plan) = crate::scheduler::plan_for(p, &st) else {
        return Ok(());
    };
    // As the scheduler sees it: only a live agent of the policy's workspace runs it.
    let mut agent = store::databases::get(rtx, &p.db_identifier)?.and_then(|d| d.agent_id);
    if let Some(id) = &agent {
        let serving = store::agents::get(rtx, id)?
            .is_some_and(|a| a.workspace_id == p.workspace_id && a.revoked_at.is_none());
        if !serving {
            agent = None;
        }
    }
    let caveat = match &agent {
        Some(_) => String::new(),
        None => format!(
            "; will be skipped: no enrolled agent serves database '{}'",
            p.db_identifier
        ),
    };
    let run = |at: DateTime<Utc>, reason: String| UpcomingRun {
        at,
        kind: UpcomingKind::Scheduled,
        workspace_id: p.workspace_id.clone(),
        database_id: p.db_identifier.clone(),
        policy_id: Some(p.id.clone()),
        job_id: None,
        agent_id: agent.clone(),
        priority: p.schedule.priority,
        expected_duration_secs: st.expected_secs,
        reason: format!("{reason}{caveat}"),
    };
    let input = plan.input();
    // Past the horizon nothing can make the answer; but whether something was left out there
    // must still be said.
    let end = to;
    let to = out.horizon(end);
    // A slot planned from an older version of the policy is replaced at the next tick.
    let stored = st
        .next_due
        .filter(|_| st.plan_key.as_deref() == Some(crate::scheduler::plan_key(p).as_str()));
    let start = match stored {
        Some(due) if due <= from => {
            out.push(run(
                from,
                format!("due since {due}: starts at the scheduler's next tick"),
            ));
            from
        }
        Some(due) if due <= to => {
            // The slot the scheduler stored is authoritative (the learned duration may have
            // changed since it was planned).
            let reason = plan::next_slot(&input, due - Duration::seconds(1))
                .map_or_else(|| format!("planned for {due}"), |s| s.reason);
            out.push(run(due, reason));
            due
        }
        Some(due) => {
            out.truncated |= due <= end;
            return Ok(());
        }
        None => from,
    };
    let most = out.budget.min(out.limit + 1);
    let slots = plan::slots_between(&input, start, to, most);
    out.budget -= slots.len();
    if slots.len() == most && out.budget == 0 {
        out.truncated = true;
    }
    for slot in slots {
        out.push(run(slot.start, slot.reason));
    }
    if to < end && plan::next_slot(&input, to).is_some_and(|s| s.start <= end) {
        out.truncated = true;
    }
    Ok(())
}

fn queued_run(j: Job) -> UpcomingRun {
    UpcomingRun {
        at: j.not_before,
        kind: UpcomingKind::Queued,
        workspace_id: j.workspace_id,
        database_id: j.database_id,
        policy_id: j.policy_id,
        job_id: Some(j.id),
        agent_id: Some(j.agent_id),
        priority: j.priority,
        expected_duration_secs: None,
        reason: j.reason,
    }
}
