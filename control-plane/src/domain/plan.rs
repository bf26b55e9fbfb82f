//! When each policy's backups run: the exact start times of its upcoming jobs.
//!
//! The scheduler (which starts jobs) and `GET /api/v1/schedule/upcoming` (which shows them)
//! must agree to the minute on when a policy runs, so both call the pure functions here instead
//! of each deriving times on its own. Nothing in this module reads the clock or draws random
//! numbers: the same policy, duration and instant always give the same slots, which lets tests
//! pin exact times.
//!
//! How times are placed:
//!
//! * **Interval frequencies of a day or more** (`daily`, `weekly`, `monthly`, `every 48h`) run
//!   once on each due day, at a minute inside the window chosen from a hash of the policy id, so
//!   that a fleet of "daily, 01:00-05:00" policies does not start all at 01:00 and the same
//!   policy keeps the same time every day.
//! * **Shorter intervals** (`hourly`, `every 15m`) run one interval apart from an anchor inside
//!   the window, again offset by the hash, and only while inside the window.
//! * **Cron expressions** name their times, which are honoured as they are.
//!
//! A learned duration (see [`learn`]) moves starts earlier so that jobs end inside the window.
//! Local times are worked out in the policy's time zone; times in a skipped hour (DST spring
//! forward) move to the end of the gap, and repeated hours (fall back) take their first
//! occurrence.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use super::policy::Policy;
use super::schedule::{human, Frequency, Window, DAY, MINUTE};

/// How far ahead [`next_slot`] looks: more than a year, enough for monthly runs and yearly cron
/// expressions.
const HORIZON_DAYS: i64 = 400;

/// Longest stretch of skipped local time searched past when a local time does not exist.
const MAX_GAP_MINUTES: i64 = 24 * 60;

/// Weight of the previous estimate in [`learn`].
const LEARN_KEEP: f64 = 0.7;

/// Everything the planner needs to know about one policy.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Seeds the spread, so different policies start at different minutes.
    pub policy_id: &'a str,
    pub frequency: &'a Frequency,
    /// The preferred window, in `tz`.
    pub window: Window,
    pub tz: Tz,
    /// Learned duration of this policy's backups in seconds (0 = unknown).
    pub expected_secs: i64,
}

impl<'a> PlanInput<'a> {
    /// Builds the input from a stored policy, parsing its window and time zone; `frequency` is
    /// the policy's parsed frequency (see [`policy_frequency`]). The error names the bad field.
    pub fn from_policy(
        p: &'a Policy,
        frequency: &'a Frequency,
        expected_secs: i64,
    ) -> Result<PlanInput<'a>, String> {
        let window = p
            .schedule
            .preferred_window
            .parse::<Window>()
            .map_err(|e| format!("schedule.preferred_window: {e}"))?;
        let tz = p.timezone.parse::<Tz>().map_err(|_| {
            format!(
                "timezone: '{}' is not an IANA time zone",
                p.timezone.escape_debug()
            )
        })?;
        Ok(PlanInput {
            policy_id: &p.id,
            frequency,
            window,
            tz,
            expected_secs: expected_secs.max(0),
        })
    }
}

/// Parses a stored policy's frequency; the error names the field.
pub fn policy_frequency(p: &Policy) -> Result<Frequency, String> {
    p.schedule
        .frequency
        .parse::<Frequency>()
        .map_err(|e| format!("schedule.frequency: {e}"))
}

/// One planned run of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// When the job should start (after moving earlier for the expected duration).
    pub start: DateTime<Utc>,
    /// The nominal time before that adjustment.
    pub nominal: DateTime<Utc>,
    /// Human-readable: why this time, e.g. "daily, spread to 01:37 inside window 01:00-05:00
    /// (Europe/Berlin); starts 12m early: learned duration 40m" or "cron '0 2 * * *' (UTC)".
    pub reason: String,
}

/// The first slot whose `start` is strictly after `after` (looking at most about 400 days ahead).
pub fn next_slot(input: &PlanInput, after: DateTime<Utc>) -> Option<Slot> {
    let until = after + Duration::days(HORIZON_DAYS);
    slots_after(input, after, until).next()
}

/// Slots with `start` in `(from, to]`, in increasing order, at most `limit`.
pub fn slots_between(
    input: &PlanInput,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: usize,
) -> Vec<Slot> {
    if to <= from {
        return Vec::new();
    }
    // A start is at most the expected duration before its nominal time.
    let until = to + Duration::seconds(input.expected_secs.max(0));
    slots_after(input, from, until)
        .take_while(|s| s.start <= to)
        .take(limit)
        .collect()
}

/// Updates a learned duration: exponentially weighted (`old·0.7 + observed·0.3`), the first
/// observation taken as is. Negative observations count as 0.
pub fn learn(previous: Option<i64>, observed_secs: i64) -> i64 {
    let observed = observed_secs.max(0);
    match previous {
        None => observed,
        Some(old) => {
            let mixed = old.max(0) as f64 * LEARN_KEEP + observed as f64 * (1.0 - LEARN_KEEP);
            mixed.round() as i64
        }
    }
}

/// Slots starting after `after`, strictly increasing, generated up to about `until` (nominal
/// times for cron, window days for intervals). [`next_slot`] and [`slots_between`] share it, so
/// they agree by construction.
fn slots_after<'s>(
    input: &'s PlanInput<'s>,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> impl Iterator<Item = Slot> + 's {
    let raw: Box<dyn Iterator<Item = Slot> + 's> = match input.frequency {
        Frequency::Every { seconds, label } => Box::new(interval_slots(
            input,
            (*seconds).max(MINUTE),
            label,
            after,
            until,
        )),
        Frequency::Cron(cron) => Box::new(cron_slots(input, cron, after, until)),
    };
    let mut last = after;
    raw.filter(move |s| {
        let keep = s.start > last;
        if keep {
            last = s.start;
        }
        keep
    })
}

// ---------------------------------------------------------------------------------------------
// Time zone and window helpers

/// The UTC instant of a local time. Repeated local times (DST fall back) take their first
/// occurrence; skipped ones (spring forward) move to the first valid minute after the gap. Both
/// keep the mapping non-decreasing, so slots stay in order across DST changes.
fn to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    (0..=MAX_GAP_MINUTES)
        .find_map(|m| {
            tz.from_local_datetime(&(local + Duration::minutes(m)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&local))
}

/// One day's occurrence of the window: it opens on `date` and may close the next day.
struct Occurrence {
    local_start: NaiveDateTime,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

fn occurrence(input: &PlanInput, date: NaiveDate) -> Occurrence {
    let length = i64::from(input.window.length_minutes());
    let local_start =
        date.and_time(NaiveTime::MIN) + Duration::minutes(i64::from(input.window.start_minute));
    let start = to_utc(input.tz, local_start);
    let mut end = to_utc(input.tz, local_start + Duration::minutes(length));
    if end <= start {
        // The whole window lies in a skipped hour: keep its length from where it opens.
        end = start + Duration::minutes(length);
    }
    Occurrence {
        local_start,
        start,
        end,
    }
}

/// `HH:MM` of a local time, for reasons.
fn hm(local: NaiveDateTime) -> String {
    local.format("%H:%M").to_string()
}

/// The "; starts … early" part of a reason, empty when the start did not move.
fn early_note(shift_secs: i64, expected_secs: i64) -> String {
    if shift_secs <= 0 {
        return String::new();
    }
    format!(
        "; starts {} early: learned duration {}",
        human(shift_secs),
        human(expected_secs)
    )
}

/// Two independent numbers from the policy id: the first 8 bytes of its BLAKE3 hash place the
/// time of day, the next 8 the run day of multi-day periods.
fn spread_hash(policy_id: &str) -> (u64, u64) {
    let hash = blake3::hash(policy_id.as_bytes());
    let bytes = hash.as_bytes();
    (
        u64::from_le_bytes(std::array::from_fn(|i| bytes[i])),
        u64::from_le_bytes(std::array::from_fn(|i| bytes[8 + i])),
    )
}

/// `hash` reduced to `[0, span)`; `span` must be positive.
fn pick(hash: u64, span: i64) -> i64 {
    (hash % span.max(1) as u64) as i64
}

// ---------------------------------------------------------------------------------------------
// Interval frequencies

fn interval_slots<'s>(
    input: &'s PlanInput<'s>,
    seconds: i64,
    label: &'s str,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> impl Iterator<Item = Slot> + 's {
    // The window that opened the day before may still be open after `after`.
    let first = after.with_timezone(&input.tz).date_naive();
    let first = first.pred_opt().unwrap_or(first);
    let last = until.with_timezone(&input.tz).date_naive();
    first
        .iter_days()
        .take_while(move |d| *d <= last)
        .flat_map(move |date| day_slots(input, seconds, label, date))
}

/// The runs of the window that opens on `date`, in order.
fn day_slots(input: &PlanInput, seconds: i64, label: &str, date: NaiveDate) -> Vec<Slot> {
    if seconds >= DAY {
        long_period_slot(input, seconds, label, date)
            .into_iter()
            .collect()
    } else {
        sub_day_slots(input, seconds, label, date)
    }
}

/// Days between runs of a period of a day or more, rounded to whole days. Monthly
/// (2 629 746 s ≈ 30.44 days) becomes every 30 days: runs stay exactly a fixed number of days
/// apart instead of following the calendar month, which is close enough for a backup schedule.
fn period_days(seconds: i64) -> i64 {
    ((seconds + DAY / 2) / DAY).max(1)
}

/// Whether a run of a multi-day period is due on `date`: days since 1970-01-01 (in the policy's
/// zone) plus a per-policy phase, modulo the period, so runs are exactly the period apart.
fn is_run_day(date: NaiveDate, period: i64, day_hash: u64) -> bool {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN);
    let day = date.signed_duration_since(epoch).num_days();
    (day + pick(day_hash, period)).rem_euclid(period) == 0
}

/// The one run of a daily (or longer) frequency on `date`, if due.
///
/// The nominal minute is `hash % window length`. With a learned duration the start is scaled
/// into `[0, window length − duration)`, so the job ends inside the window while policies stay
/// spread out; a duration that does not fit starts at the window start.
fn long_period_slot(input: &PlanInput, seconds: i64, label: &str, date: NaiveDate) -> Option<Slot> {
    let (minute_hash, day_hash) = spread_hash(input.policy_id);
    let period = period_days(seconds);
    if !is_run_day(date, period, day_hash) {
        return None;
    }
    let length = i64::from(input.window.length_minutes());
    let expected = input.expected_secs.max(0);
    let usable = ((length * MINUTE - expected) / MINUTE).max(1);
    let nominal_minute = pick(minute_hash, length);
    let start_minute = nominal_minute * usable / length;

    let occ = occurrence(input, date);
    let nominal_local = occ.local_start + Duration::minutes(nominal_minute);
    let start_local = occ.local_start + Duration::minutes(start_minute);
    let nominal = to_utc(input.tz, nominal_local);
    let start = to_utc(input.tz, start_local);

    let what = if period > 1 {
        format!("{label} (every {period} days)")
    } else {
        label.to_string()
    };
    let mut reason = format!(
        "{what}, spread to {} inside window {} ({})",
        hm(nominal_local),
        input.window,
        input.tz
    );
    reason.push_str(&early_note((nominal - start).num_seconds(), expected));
    if expected >= length * MINUTE {
        reason.push_str(" (longer than the window: starts at the window start)");
    }
    Some(Slot {
        start,
        nominal,
        reason,
    })
}

/// The runs of a sub-day interval inside the window that opens on `date`.
///
/// Runs are `seconds` apart from an anchor `hash % room` after the window start, where `room`
/// is the part of the window (at most one interval) left after a day's runs: policy validation
/// guarantees the window holds `ceil(day / interval)` runs one interval apart, and spreading
/// only over the slack keeps all of them. For a whole-day window and an interval dividing the
/// day this is simply `hash % interval`. Runs past the window end are dropped.
///
/// A learned duration moves a run that would end after the window end earlier, by at most
/// `interval − 1 minute` (so it stays after the previous run) and never before the window start.
fn sub_day_slots(input: &PlanInput, seconds: i64, label: &str, date: NaiveDate) -> Vec<Slot> {
    let (minute_hash, _) = spread_hash(input.policy_id);
    let window_secs = i64::from(input.window.length_minutes()) * MINUTE;
    let runs_per_day = (DAY + seconds - 1) / seconds;
    let room = (window_secs - (runs_per_day - 1) * seconds).clamp(MINUTE, seconds);
    let anchor = pick(minute_hash, room / MINUTE) * MINUTE;

    let occ = occurrence(input, date);
    let open_secs = (occ.end - occ.start).num_seconds();
    let expected = input.expected_secs.max(0);
    let reason_base = format!(
        "{label} from {} inside window {} ({})",
        hm(occ.local_start + Duration::seconds(anchor)),
        input.window,
        input.tz
    );
    (0..)
        .map(|k| anchor + k * seconds)
        .take_while(|offset| *offset < open_secs)
        .map(|offset| {
            let overrun = (offset + expected - open_secs).max(0);
            let shift = overrun.min(seconds - MINUTE).min(offset);
            Slot {
                start: occ.start + Duration::seconds(offset - shift),
                nominal: occ.start + Duration::seconds(offset),
                reason: format!("{reason_base}{}", early_note(shift, expected)),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Cron expressions

/// The cron's fire times after `after` (evaluated in the policy's zone) up to `until`, each
/// moved earlier if the learned duration would run past its window.
fn cron_slots<'s>(
    input: &'s PlanInput<'s>,
    cron: &'s Cron,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> impl Iterator<Item = Slot> + 's {
    // A start is never later than its nominal time, so fire times up to `after` cannot
    // produce a start after it.
    cron.iter_after(after.with_timezone(&input.tz))
        .map(|t| t.with_timezone(&Utc))
        .take_while(move |t| *t <= until)
        .map(move |t| cron_slot(input, cron, t))
}

/// Start = nominal, unless nominal + duration passes the end of the window holding the nominal
/// time: then `max(window end − duration, window start)`. No spread: explicit times are honoured.
fn cron_slot(input: &PlanInput, cron: &Cron, nominal: DateTime<Utc>) -> Slot {
    let expected = input.expected_secs.max(0);
    let start = match containing_window(input, nominal) {
        Some(occ) if nominal + Duration::seconds(expected) > occ.end => {
            (occ.end - Duration::seconds(expected)).max(occ.start)
        }
        _ => nominal,
    };
    let reason = format!(
        "cron '{}' ({}){}",
        cron.pattern,
        input.tz,
        early_note((nominal - start).num_seconds(), expected)
    );
    Slot {
        start,
        nominal,
        reason,
    }
}

/// The window occurrence holding `t`: the one opening on `t`'s local date or, for windows that
/// wrap midnight, the day before.
fn containing_window(input: &PlanInput, t: DateTime<Utc>) -> Option<Occurrence> {
    let date = t.with_timezone(&input.tz).date_naive();
    [date.pred_opt(), Some(date)]
        .into_iter()
        .flatten()
        .map(|d| occurrence(input, d))
        .find(|occ| occ.start <= t && t < occ.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::database::DatabaseType;
    use crate::domain::policy::{Priority, Retention, Schedule};
    use crate::domain::rules::BackupMethod;
    use chrono::Timelike;
    use std::collections::HashSet;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn freq(s: &str) -> Frequency {
        s.parse().unwrap()
    }

    fn input<'a>(id: &'a str, f: &'a Frequency, window: &str, tz: Tz, e: i64) -> PlanInput<'a> {
        PlanInput {
            policy_id: id,
            frequency: f,
            window: window.parse().unwrap(),
            tz,
            expected_secs: e,
        }
    }

    fn local_minute(t: DateTime<Utc>, tz: Tz) -> u32 {
        let l = t.with_timezone(&tz);
        l.hour() * 60 + l.minute()
    }

    fn assert_increasing(slots: &[Slot]) {
        for w in slots.windows(2) {
            assert!(w[0].start < w[1].start, "{:?} then {:?}", w[0], w[1]);
        }
    }

    const JAN: &str = "2025-01-06T00:00:00Z";

    #[test]
    fn daily_runs_spread_over_the_window() {
        let f = freq("daily");
        let ids: Vec<String> = (0..50).map(|i| format!("pol_{i}")).collect();
        let mut minutes = HashSet::new();
        for id in &ids {
            let inp = input(id, &f, "01:00-05:00", Tz::UTC, 0);
            let slots = slots_between(&inp, utc(JAN), utc(JAN) + Duration::days(5), 100);
            assert_eq!(slots.len(), 5, "{id}");
            let m = local_minute(slots[0].start, Tz::UTC);
            assert!((60..300).contains(&m), "{id}: {m}");
            for s in &slots {
                assert_eq!(local_minute(s.start, Tz::UTC), m, "same time every day");
                assert_eq!(s.start, s.nominal);
                assert!(s.reason.starts_with("daily, spread to "), "{}", s.reason);
            }
            minutes.insert(m);
        }
        assert!(
            minutes.len() >= 20,
            "only {} distinct minutes",
            minutes.len()
        );
    }

    #[test]
    fn weekly_and_monthly_runs_are_a_fixed_number_of_days_apart() {
        for (name, days) in [("weekly", 7), ("monthly", 30), ("every 48h", 2)] {
            let f = freq(name);
            let mut weekdays = HashSet::new();
            for i in 0..20 {
                let id = format!("pol_{i}");
                let inp = input(&id, &f, "01:00-05:00", Tz::UTC, 0);
                let slots = slots_between(&inp, utc(JAN), utc(JAN) + Duration::days(200), 100);
                assert!(slots.len() >= 200 / days as usize - 1, "{name}");
                for w in slots.windows(2) {
                    assert_eq!(w[1].start - w[0].start, Duration::days(days), "{name}");
                }
                weekdays.insert(slots[0].start.date_naive());
            }
            assert!(weekdays.len() >= 2, "{name}: all ids on one day");
        }
    }

    #[test]
    fn learned_duration_moves_daily_start_earlier() {
        let f = freq("daily");
        let mut moved = 0;
        for i in 0..20 {
            let id = format!("db-{i}");
            let inp = input(&id, &f, "01:00-05:00", Tz::UTC, 3 * 3600);
            let s = next_slot(&inp, utc(JAN)).unwrap();
            let m = local_minute(s.start, Tz::UTC);
            assert!((60..120).contains(&m), "{id}: starts at minute {m}");
            assert!(s.start + Duration::hours(3) <= utc("2025-01-06T05:00:00Z"));
            assert!(s.start <= s.nominal);
            if s.start < s.nominal {
                moved += 1;
                assert!(s.reason.contains("learned duration 3h"), "{}", s.reason);
            }
        }
        assert!(moved > 10);
    }

    #[test]
    fn duration_longer_than_the_window_starts_at_the_window_start() {
        let f = freq("daily");
        let inp = input("pol_x", &f, "01:00-05:00", Tz::UTC, 5 * 3600);
        let s = next_slot(&inp, utc(JAN)).unwrap();
        assert_eq!(s.start, utc("2025-01-06T01:00:00Z"));
        assert!(s.reason.contains("longer than the window"), "{}", s.reason);
    }

    #[test]
    fn every_5m_and_hourly_over_a_whole_day() {
        let f = freq("every 5m");
        let inp = input("pol_a", &f, "00:00-24:00", Tz::UTC, 0);
        let slots = slots_between(&inp, utc(JAN), utc(JAN) + Duration::days(1), 1000);
        assert_eq!(slots.len(), 288);
        for w in slots.windows(2) {
            assert_eq!(w[1].start - w[0].start, Duration::minutes(5));
        }
        let f = freq("hourly");
        let inp = input("pol_a", &f, "00:00-24:00", Tz::UTC, 0);
        let slots = slots_between(&inp, utc(JAN), utc(JAN) + Duration::days(1), 1000);
        assert_eq!(slots.len(), 24);
        assert_increasing(&slots);
        assert_eq!(
            slots_between(&inp, utc(JAN), utc(JAN) + Duration::days(1), 5).len(),
            5
        );
    }

    #[test]
    fn sub_day_duration_moves_late_runs_earlier() {
        let f = freq("hourly");
        for i in 0..10 {
            let id = format!("pol_{i}");
            let inp = input(&id, &f, "00:00-24:00", Tz::UTC, 40 * 60);
            let slots = slots_between(&inp, utc(JAN), utc(JAN) + Duration::days(2), 100);
            assert_increasing(&slots);
            for s in &slots {
                let shift = s.nominal - s.start;
                assert!(shift >= Duration::zero() && shift <= Duration::minutes(59));
                let window_end = s
                    .nominal
                    .date_naive()
                    .succ_opt()
                    .unwrap()
                    .and_time(NaiveTime::MIN)
                    .and_utc();
                if shift > Duration::zero() {
                    assert!(s.reason.contains("learned duration 40m"), "{}", s.reason);
                    assert_eq!(s.start + Duration::minutes(40), window_end);
                } else {
                    assert!(s.start + Duration::minutes(40) <= window_end);
                }
            }
        }
    }

    #[test]
    fn windows_wrapping_midnight() {
        let w: Window = "22:00-02:00".parse().unwrap();
        for name in ["daily", "hourly", "every 30m"] {
            let f = freq(name);
            for i in 0..10 {
                let id = format!("pol_{i}");
                let inp = input(&id, &f, "22:00-02:00", Tz::UTC, 0);
                let slots = slots_between(&inp, utc(JAN), utc(JAN) + Duration::days(3), 1000);
                assert!(!slots.is_empty(), "{name}");
                assert_increasing(&slots);
                for s in &slots {
                    assert!(
                        w.contains_minute(local_minute(s.start, Tz::UTC)),
                        "{name}: {s:?}"
                    );
                }
            }
        }
        let f = freq("hourly");
        let inp = input("pol_1", &f, "22:00-02:00", Tz::UTC, 0);
        let day = slots_between(
            &inp,
            utc("2025-01-06T12:00:00Z"),
            utc("2025-01-07T12:00:00Z"),
            100,
        );
        assert_eq!(day.len(), 4);
    }

    #[test]
    fn cron_times_are_honoured() {
        let f = freq("0 2 * * *");
        let inp = input("pol_c", &f, "01:00-05:00", Tz::UTC, 0);
        let slots = slots_between(&inp, utc(JAN), utc(JAN) + Duration::days(3), 10);
        let starts: Vec<_> = slots.iter().map(|s| s.start).collect();
        assert_eq!(
            starts,
            [
                utc("2025-01-06T02:00:00Z"),
                utc("2025-01-07T02:00:00Z"),
                utc("2025-01-08T02:00:00Z")
            ]
        );
        assert_eq!(slots[0].reason, "cron '0 2 * * *' (UTC)");

        let inp = input("pol_c", &f, "01:00-04:00", Tz::UTC, 9000);
        let s = next_slot(&inp, utc(JAN)).unwrap();
        assert_eq!(
            (s.start, s.nominal),
            (utc("2025-01-06T01:30:00Z"), utc("2025-01-06T02:00:00Z"))
        );
        assert!(
            s.reason
                .contains("starts 30m early: learned duration 2h30m"),
            "{}",
            s.reason
        );

        let inp = input("pol_c", &f, "01:00-05:00", Tz::Europe__Berlin, 0);
        let s = next_slot(&inp, utc(JAN)).unwrap();
        assert_eq!(s.start, utc("2025-01-06T01:00:00Z"));
    }

    #[test]
    fn cron_in_a_window_wrapping_midnight() {
        let f = freq("30 1 * * *");
        let inp = input("pol_c", &f, "22:00-02:00", Tz::UTC, 3600);
        let s = next_slot(&inp, utc(JAN)).unwrap();
        assert_eq!(s.start, utc("2025-01-06T01:00:00Z"));
        let f = freq("0 23 * * *");
        let inp = input("pol_c", &f, "22:00-02:00", Tz::UTC, 4 * 3600);
        let s = next_slot(&inp, utc(JAN)).unwrap();
        assert_eq!(
            (s.start, s.nominal),
            (utc("2025-01-06T22:00:00Z"), utc("2025-01-06T23:00:00Z"))
        );
    }

    #[test]
    fn dst_changes_do_not_panic_and_keep_order() {
        let tz = Tz::Europe__Berlin;
        let cases = [
            ("daily", "01:00-05:00"),
            ("daily", "02:00-03:00"),
            ("hourly", "00:00-24:00"),
            ("every 15m", "00:00-24:00"),
            ("every 30m", "22:00-04:00"),
            ("every 48h", "02:00-03:00"),
            ("30 2 * * *", "02:00-03:00"),
            ("*/10 * * * *", "00:00-24:00"),
        ];
        for (from, to) in [
            ("2025-03-28T00:00:00Z", "2025-04-02T00:00:00Z"),
            ("2025-10-24T00:00:00Z", "2025-10-29T00:00:00Z"),
        ] {
            for (name, window) in cases {
                let f = freq(name);
                for i in 0..5 {
                    let id = format!("pol_{i}");
                    let inp = input(&id, &f, window, tz, 1800);
                    let slots = slots_between(&inp, utc(from), utc(to), 10_000);
                    assert!(!slots.is_empty(), "{name} {window}");
                    assert_increasing(&slots);
                }
            }
        }
        // The skipped-hour window still gets its daily run on the day of the change.
        let f = freq("daily");
        let inp = input("pol_1", &f, "02:00-03:00", tz, 0);
        let slots = slots_between(
            &inp,
            utc("2025-03-29T12:00:00Z"),
            utc("2025-03-30T12:00:00Z"),
            10,
        );
        assert_eq!(slots.len(), 1);
        let hourly = freq("hourly");
        let inp = input("pol_1", &hourly, "00:00-24:00", tz, 0);
        let spring = slots_between(
            &inp,
            utc("2025-03-29T23:00:00Z"),
            utc("2025-03-30T22:00:00Z"),
            100,
        );
        assert_eq!(spring.len(), 23);
    }

    #[test]
    fn next_slot_agrees_with_slots_between() {
        let names = [
            "daily",
            "weekly",
            "monthly",
            "hourly",
            "every 15m",
            "every 7h",
            "0 2 * * *",
            "15 */6 * * *",
        ];
        let afters = [
            "2025-01-06T00:00:00Z",
            "2025-01-06T03:17:42Z",
            "2025-03-30T01:30:00Z",
            "2025-12-31T23:59:59Z",
        ];
        for name in names {
            let f = freq(name);
            let window = if name.contains('*') {
                "00:00-24:00"
            } else {
                "01:00-05:00"
            };
            let window = if name == "hourly" || name.starts_with("every") {
                "00:00-24:00"
            } else {
                window
            };
            for (i, after) in afters.iter().enumerate() {
                let id = format!("pol_{i}");
                for e in [0, 1200, 4 * 3600] {
                    let inp = input(&id, &f, window, Tz::Europe__Berlin, e);
                    let after = utc(after);
                    let next = next_slot(&inp, after).unwrap();
                    assert!(next.start > after);
                    let between = slots_between(&inp, after, after + Duration::days(40), 3);
                    assert_eq!(between.first(), Some(&next), "{name} {after} {e}");
                }
            }
        }
    }

    #[test]
    fn learning_durations() {
        assert_eq!(learn(None, 600), 600);
        assert_eq!(learn(Some(100), 200), 130);
        assert_eq!(learn(Some(1000), 1000), 1000);
        assert_eq!(learn(None, -5), 0);
    }

    #[test]
    fn input_from_a_stored_policy() {
        let now = utc(JAN);
        let mut p = Policy {
            id: "pol_1".into(),
            workspace_id: "ws".into(),
            db_identifier: "orders".into(),
            db_type: DatabaseType::Postgresql,
            schedule: Schedule {
                frequency: "daily".into(),
                preferred_window: "01:00-05:00".into(),
                priority: Priority::Normal,
            },
            retention: Retention {
                period_days: 30,
                min_snapshots: 1,
            },
            timezone: "Europe/Berlin".into(),
            keep_last: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            keep_yearly: None,
            backup_method: BackupMethod::Logical,
            pitr: false,
            storage_id: None,
            verify_after_backup: false,
            require_restore_approval: false,
            enabled: true,
            drill: None,
            rto_target_minutes: None,
            rpo_target_minutes: None,
            created_at: now,
            updated_at: now,
        };
        let f = policy_frequency(&p).unwrap();
        let inp = PlanInput::from_policy(&p, &f, 600).unwrap();
        assert_eq!(
            (inp.policy_id, inp.tz, inp.expected_secs),
            ("pol_1", Tz::Europe__Berlin, 600)
        );
        let s = next_slot(&inp, now).unwrap();
        assert!(s.reason.contains("(Europe/Berlin)"), "{}", s.reason);

        p.timezone = "Mars/Olympus".into();
        let err = PlanInput::from_policy(&p, &f, 0).unwrap_err();
        assert!(err.starts_with("timezone:"), "{err}");
        p.timezone = "UTC".into();
        p.schedule.preferred_window = "5-6".into();
        let err = PlanInput::from_policy(&p, &f, 0).unwrap_err();
        assert!(err.starts_with("schedule.preferred_window:"), "{err}");
        p.schedule.frequency = "fortnightly".into();
        assert!(policy_frequency(&p)
            .unwrap_err()
            .starts_with("schedule.frequency:"));
    }
}
