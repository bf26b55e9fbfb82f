//! The scheduler: decides which policies are due and has [`jobs`](crate::jobs) make their
//! runs; one periodic tick also has the lost-job sweep run, the upkeep pass
//! ([`jobs::upkeep::due`]: daily retention, each storage's gc and verify) and the daily usage
//! reconcile ([`jobs::reconcile::due`]).
//!
//! Why not a cron library firing callbacks (tokio-cron-scheduler, as DESIGN.md proposed): a
//! policy's run is not "at this cron instant" but "somewhere in this window, spread from the
//! other policies, early enough for its learned duration", and the only memory that survives a
//! restart is redb. So each policy keeps `next_due` in the store (`schedule_state`), computed by
//! the pure planner (`domain::plan`), and one periodic tick compares it with the clock: a slot
//! that passed while the control plane was down is found on the first tick after the restart and
//! run once — the next slot is computed from *now*, never from the missed one, so nothing is
//! run once per missed tick. Cron expressions are still evaluated by `croner`, as in validation.

use std::sync::Arc;

use chrono::DateTime;
use chrono::Utc;

use crate::domain::plan::{self, PlanInput};
use crate::domain::policy::Policy;
use crate::domain::schedule;
use crate::domain::schedule::Frequency;
use crate::jobs::{self, system_actor, Board};
use crate::store::jobs::ScheduleState;
use crate::store::{self, Store, StoreError, Tx};

/// Kept here too: the settings were the scheduler's before jobs had a module of their own.
pub use crate::jobs::JobSettings;

/// What one tick did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub created: Vec<String>,
    pub skipped: Vec<String>,
    pub lost: Vec<String>,
    pub retried: Vec<String>,
}

/// One pass: due policies become jobs, silent agents' jobs fail (and are retried).
pub async fn tick(store: &Store, board: &Board) -> Result<TickReport, StoreError> {
    let settings = board.settings;
    let mut report = store
        .write(system_actor(), move |tx| plan_due(tx, settings))
        .await?;
    // Upkeep: the daily retention pass, and each storage's gc and verify when due.
    let recent = chrono::Duration::from_std(settings.lost_after).unwrap_or_default();
    let upkeep = store
        .write(system_actor(), move |tx| {
            jobs::upkeep::due(tx, settings.upkeep, recent, settings.max_attempts)
        })
        .await?;
    report.created.extend(upkeep.into_iter().map(|j| j.id));
    let lost = jobs::lost::sweep(store, board).await?;
    report.lost = lost.iter().map(|(l, _)| l.clone()).collect();
    report.retried = lost.into_iter().filter_map(|(_, r)| r).collect();
    // The daily usage reconcile: it makes no jobs, so its failure is only logged and holds up
    // nothing else of the tick.
    if let Err(e) = store.write(system_actor(), jobs::reconcile::due).await {
        tracing::error!(error = %e, "usage reconcile failed");
    }
    // Policies whose restore drill is due (inside their window).
    match store.write(system_actor(), jobs::drills::due).await {
        Ok(made) => report.created.extend(made.into_iter().map(|d| d.job_id)),
        Err(e) => tracing::error!(error = %e, "making due restore drills failed"),
    }
    // Restores nobody approved in time.
    match store
        .write(system_actor(), jobs::restores::expire_due)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(expired = n, "restore requests expired without approval"),
        Err(e) => tracing::error!(error = %e, "expiring restore requests failed"),
    }
    // Four-eyes requests nobody decided in time.
    match store
        .write(system_actor(), jobs::approvals::expire_due)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(expired = n, "four-eyes requests expired without a decision"),
        Err(e) => tracing::error!(error = %e, "expiring four-eyes requests failed"),
    }
    let rtx = store.read()?;
    for id in &report.created {
        if let Some(job) = store::jobs::get(&rtx, id)? {
            board.wake(&job.agent_id);
        }
    }
    Ok(report)
}

/// What a stored slot was planned from: when it changes (frequency, window, time zone), the
/// slot is planned again.
pub fn plan_key(policy: &Policy) -> String {
    format!("{}|{}", policy.schedule_key(), policy.timezone)
}

/// A policy with its parsed frequency and learned duration: what the planner needs, owned.
pub struct Plan {
    policy: Policy,
    frequency: Frequency,
    expected_secs: i64,
}

impl Plan {
    pub fn input(&self) -> PlanInput<'_> {
        PlanInput::from_policy(&self.policy, &self.frequency, self.expected_secs)
            .expect("checked when the plan was made")
    }

    /// Why the slot at `due` is there (the planner's reason for it).
    pub fn reason_for(&self, due: DateTime<Utc>) -> String {
        plan::next_slot(&self.input(), due - chrono::Duration::seconds(1))
            .filter(|s| s.start == due)
            .map_or_else(|| format!("slot planned for {due}"), |s| s.reason)
    }
}

/// The planner's view of a policy, with its learned duration.
pub fn plan_for(policy: &Policy, state: &ScheduleState) -> Result<Plan, String> {
    let frequency = plan::policy_frequency(policy)?;
    let expected_secs = state.expected_secs.unwrap_or(0);
    PlanInput::from_policy(policy, &frequency, expected_secs)?;
    Ok(Plan {
        policy: policy.clone(),
        frequency,
        expected_secs,
    })
}

fn plan_due(tx: &mut Tx, settings: JobSettings) -> Result<TickReport, StoreError> {
    let now = tx.now;
    let mut report = TickReport::default();
    for policy in tx.all_policies()? {
        let mut state = tx.schedule_state(&policy.id)?;
        if !policy.enabled {
            // Forget the planned slot: re-enabling plans afresh instead of catching up.
            if state.next_due.take().is_some() {
                tx.put_schedule_state(&policy.id, &state)?;
            }
            continue;
        }
        let plan = match plan_for(&policy, &state) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(policy = %policy.id, error = %e, "policy cannot be planned");
                continue;
            }
        };
        let key = plan_key(&policy);
        let (Some(due), true) = (
            state.next_due,
            state.plan_key.as_deref() == Some(key.as_str()),
        ) else {
            // First sight of the policy, or its schedule changed: the next slot, not now.
            state.next_due = plan::next_slot(&plan.input(), now).map(|s| s.start);
            state.plan_key = Some(key);
            tx.put_schedule_state(&policy.id, &state)?;
            continue;
        };
        if due > now {
            continue;
        }
        state.next_due = plan::next_slot(&plan.input(), now).map(|s| s.start);
        let late = (now - due).num_seconds();
        let catch_up = late > (settings.tick.as_secs() as i64) * 2 + 60;
        let previous_active = match &state.last_job {
            Some(id) => tx.job(id)?.is_some_and(|j| j.status.is_active()),
            None => false,
        };
        let db = tx.database(&policy.db_identifier)?;
        let agent = match &db {
            Some(d) => tx.serving_agent(d)?.map(|a| a.id),
            None => None,
        };
        match (db, agent) {
            _ if previous_active => {
                tracing::info!(policy = %policy.id, "slot skipped: the previous run is still queued or running");
                report.skipped.push(policy.id.clone());
            }
            (Some(db), Some(agent)) => {
                let reason = if catch_up {
                    format!(
                        "catch-up: the slot at {due} was missed ({} late; the control plane was not running); run once now",
                        schedule::human(late)
                    )
                } else {
                    format!("schedule: {}", plan.reason_for(due))
                };
                let job = jobs::make::scheduled(
                    tx,
                    &db,
                    &agent,
                    &policy,
                    reason,
                    settings.max_attempts,
                    state.last_stored_bytes,
                )?;
                state.last_job = Some(job.id.clone());
                report.created.push(job.id);
            }
            _ => {
                tracing::warn!(policy = %policy.id, database = %policy.db_identifier, "slot skipped: no enrolled agent serves this database");
                report.skipped.push(policy.id.clone());
            }
        }
        tx.put_schedule_state(&policy.id, &state)?;
    }
    Ok(report)
}

/// The scheduler task: a [`tick`] every `settings.tick` until `stop` changes.
pub async fn run(store: Store, board: Arc<Board>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = board.settings.tick;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => match tick(&store, &board).await {
                Ok(r) if r != TickReport::default() => tracing::info!(
                    created = r.created.len(), skipped = r.skipped.len(), lost = r.lost.len(),
                    retried = r.retried.len(), "scheduler pass"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "scheduler pass failed"),
            },
            _ = stop.changed() => break,
        }
    }
}
