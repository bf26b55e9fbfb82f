//! Which snapshots a retention policy keeps — a pure function of (snapshots, rules, now).
//!
//! Semantics follow restic's `forget`, which operators already know: each `keep_<period>` rule
//! keeps the newest snapshot in each of the last N periods that have one; `keep_last` keeps the
//! N newest; `keep_within` keeps everything younger than a duration. On top of that,
//! `keep_min` always keeps the N newest snapshots, so no combination of rules can remove the
//! last good copies. The plan is a value: `--dry-run` prints it, `prune` executes it, and the
//! tests below read as tables.

use chrono::{DateTime, Datelike, Duration, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub keep_within: Option<Duration>,
    /// Never keep fewer than this many snapshots (the newest ones).
    pub keep_min: u32,
}

impl Rules {
    /// True when some rule other than `keep_min` selects snapshots to keep.
    pub fn has_selection_rule(&self) -> bool {
        self.keep_last
            + self.keep_hourly
            + self.keep_daily
            + self.keep_weekly
            + self.keep_monthly
            + self.keep_yearly
            > 0
            || self.keep_within.is_some()
    }

    /// True when no rule keeps anything: pruning with such rules would delete everything.
    pub fn keeps_nothing(&self) -> bool {
        !self.has_selection_rule() && self.keep_min == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub name: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    /// Why it is kept (every rule that keeps it), or why it goes.
    pub reasons: Vec<String>,
}

/// Decides for every snapshot, newest first. `snapshots` is (name, time) in any order.
pub fn plan(
    snapshots: &[(String, DateTime<Utc>)],
    rules: &Rules,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut sorted: Vec<_> = snapshots.to_vec();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut decisions: Vec<Decision> = sorted
        .into_iter()
        .map(|(name, time)| Decision {
            name,
            time,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();

    type Bucket = fn(&DateTime<Utc>) -> String;
    let periodic: [(&str, u32, Bucket); 5] = [
        ("hourly", rules.keep_hourly, |t| {
            t.format("%Y-%m-%dT%H").to_string()
        }),
        ("daily", rules.keep_daily, |t| {
            t.format("%Y-%m-%d").to_string()
        }),
        ("weekly", rules.keep_weekly, |t| {
            let w = t.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        ("monthly", rules.keep_monthly, |t| {
            t.format("%Y-%m").to_string()
        }),
        ("yearly", rules.keep_yearly, |t| t.format("%Y").to_string()),
    ];
    for (label, count, bucket) in periodic {
        let mut left = count;
        let mut last: Option<String> = None;
        for d in decisions.iter_mut() {
            if left == 0 {
                break;
            }
            let b = bucket(&d.time);
            if last.as_ref() != Some(&b) {
                d.keep = true;
                d.reasons.push(format!("{label} {b}"));
                last = Some(b);
                left -= 1;
            }
        }
    }
    for (i, d) in decisions.iter_mut().enumerate() {
        if (i as u32) < rules.keep_last {
            d.keep = true;
            d.reasons.push(format!("last {}", i + 1));
        }
        if let Some(within) = rules.keep_within {
            if d.time >= now - within {
                d.keep = true;
                d.reasons.push(format!("within {}", human_duration(within)));
            }
        }
        if (i as u32) < rules.keep_min {
            d.keep = true;
            d.reasons.push(format!("minimum count {}", rules.keep_min));
        }
        if !d.keep {
            d.reasons.push("matches no keep rule".into());
        }
    }
    decisions
}

fn human_duration(d: Duration) -> String {
    if d.num_hours() % 24 == 0 {
        format!("{}d", d.num_days())
    } else {
        format!("{}h", d.num_hours())
    }
}

/// Parses `30d`, `12h`, `2w` for `--keep-within`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    match unit {
        "h" => Some(Duration::hours(n)),
        "d" => Some(Duration::days(n)),
        "w" => Some(Duration::weeks(n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    /// Snapshots at the given times, named by their time.
    fn kept(times: &[&str], rules: Rules, now: &str) -> Vec<String> {
        let snaps: Vec<_> = times.iter().map(|t| (t.to_string(), at(t))).collect();
        plan(&snaps, &rules, at(now))
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.name)
            .collect()
    }

    const WEEK: &[&str] = &[
        "2026-11-16T01:00:00Z",
        "2026-11-17T01:00:00Z",
        "2026-11-17T13:00:00Z",
        "2026-11-18T01:00:00Z",
        "2026-11-19T01:00:00Z",
        "2026-11-20T01:00:00Z",
        "2026-11-21T01:00:00Z",
        "2026-11-22T01:00:00Z",
        "2026-11-22T13:00:00Z",
        "2026-11-23T01:00:00Z",
    ];
    const NOW: &str = "2026-11-23T12:00:00Z";

    #[test]
    fn table() {
        let r = |f: fn(&mut Rules)| {
            let mut rules = Rules::default();
            f(&mut rules);
            rules
        };
        let cases: Vec<(&str, Rules, Vec<&str>)> = vec![
            (
                "keep-last 2",
                r(|r| r.keep_last = 2),
                vec!["2026-11-23T01:00:00Z", "2026-11-22T13:00:00Z"],
            ),
            (
                "keep-daily 3: newest of each of the last 3 days",
                r(|r| r.keep_daily = 3),
                vec![
                    "2026-11-23T01:00:00Z",
                    "2026-11-22T13:00:00Z",
                    "2026-11-21T01:00:00Z",
                ],
            ),
            (
                "keep-weekly 2: ISO weeks 48 and 47",
                r(|r| r.keep_weekly = 2),
                vec!["2026-11-23T01:00:00Z", "2026-11-22T13:00:00Z"],
            ),
            (
                "keep-monthly 5: only one month exists",
                r(|r| r.keep_monthly = 5),
                vec!["2026-11-23T01:00:00Z"],
            ),
            (
                "keep-yearly 1",
                r(|r| r.keep_yearly = 1),
                vec!["2026-11-23T01:00:00Z"],
            ),
            (
                "keep-hourly 2",
                r(|r| r.keep_hourly = 2),
                vec!["2026-11-23T01:00:00Z", "2026-11-22T13:00:00Z"],
            ),
            (
                "keep-within 2d",
                r(|r| r.keep_within = Some(Duration::days(2))),
                vec![
                    "2026-11-23T01:00:00Z",
                    "2026-11-22T13:00:00Z",
                    "2026-11-22T01:00:00Z",
                ],
            ),
            (
                "keep-min 3 beats a rule that keeps fewer",
                r(|r| {
                    r.keep_last = 1;
                    r.keep_min = 3
                }),
                vec![
                    "2026-11-23T01:00:00Z",
                    "2026-11-22T13:00:00Z",
                    "2026-11-22T01:00:00Z",
                ],
            ),
            (
                "daily 2 + weekly 2 overlap",
                r(|r| {
                    r.keep_daily = 2;
                    r.keep_weekly = 2
                }),
                vec!["2026-11-23T01:00:00Z", "2026-11-22T13:00:00Z"],
            ),
        ];
        for (label, rules, expected) in cases {
            assert_eq!(kept(WEEK, rules, NOW), expected, "{label}");
        }
    }

    #[test]
    fn keep_within_relative_to_now_never_empties_with_keep_min() {
        let rules = Rules {
            keep_within: Some(Duration::days(1)),
            keep_min: 2,
            ..Rules::default()
        };
        // A month without backups: keep-within alone would keep nothing.
        let kept = kept(WEEK, rules, "2026-12-24T00:00:00Z");
        assert_eq!(kept, vec!["2026-11-23T01:00:00Z", "2026-11-22T13:00:00Z"]);
    }

    #[test]
    fn reasons_explain_each_decision() {
        let snaps: Vec<_> = WEEK.iter().map(|t| (t.to_string(), at(t))).collect();
        let rules = Rules {
            keep_daily: 1,
            keep_last: 1,
            ..Rules::default()
        };
        let p = plan(&snaps, &rules, at(NOW));
        assert_eq!(p[0].reasons, vec!["daily 2026-11-23", "last 1"]);
        assert_eq!(p[1].reasons, vec!["matches no keep rule"]);
        assert!(Rules::default().keeps_nothing());
        assert_eq!(parse_duration("30d"), Some(Duration::days(30)));
        assert_eq!(parse_duration("x"), None);
    }
}
