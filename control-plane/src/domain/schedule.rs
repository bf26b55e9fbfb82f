//! Schedules as users write them: a frequency (`hourly`, `daily`, `weekly`, `monthly`,
//! `every <n>m`, `every <n>h`, or a cron expression) and a preferred window (`HH:MM-HH:MM`,
//! possibly wrapping midnight).
//!
//! Validation needs three numbers from a frequency: the shortest gap between two runs (against
//! the per-technology minimum), the average gap (how many backups fit into the retention period)
//! and, for cron expressions, the times of day it fires (which must fall inside the window).
//! Cron expressions are evaluated with `croner` over a fixed sample period instead of being
//! reasoned about symbolically: exact for every expression that repeats weekly, and a close
//! estimate for month-based ones.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;
/// A calendar month, on average.
const MONTH: i64 = 2_629_746;

/// Cron occurrences examined: enough for one run a minute over a day and a half, or for
/// monthly and yearly expressions over several years.
const CRON_SAMPLE_RUNS: usize = 2_000;
/// Expressions that do not fire within this long are refused as "never runs".
const CRON_HORIZON_DAYS: i64 = 400;

#[derive(Debug, Clone)]
pub enum Frequency {
    /// A run every so many seconds; the scheduler places the runs inside the window.
    Every { seconds: i64, label: String },
    /// Explicit times, evaluated in the policy's time zone.
    Cron(Box<Cron>),
}

/// What a frequency amounts to, computed once for validation.
#[derive(Debug, Clone)]
pub struct Cadence {
    pub min_gap_seconds: i64,
    pub avg_gap_seconds: i64,
    /// For cron expressions: the minutes of the day (in the policy's zone) at which it fires.
    pub fire_minutes: Vec<u32>,
}

impl FromStr for Frequency {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let s = raw.trim().to_ascii_lowercase();
        let every = |seconds: i64| Frequency::Every {
            seconds,
            label: s.clone(),
        };
        match s.as_str() {
            "" => return Err("is empty; use hourly, daily, weekly, monthly, 'every <n>m', 'every <n>h' or a cron expression".into()),
            "hourly" => return Ok(every(HOUR)),
            "daily" => return Ok(every(DAY)),
            "weekly" => return Ok(every(7 * DAY)),
            "monthly" => return Ok(every(MONTH)),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix("every") {
            let rest = rest.trim();
            let (number, unit) = rest.split_at(
                rest.find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len()),
            );
            let n: i64 = number.parse().map_err(|_| {
                format!("'{raw}' is not understood: write 'every <n>m' or 'every <n>h', e.g. 'every 30m'")
            })?;
            let unit_seconds = match unit.trim() {
                "m" | "min" | "minutes" => MINUTE,
                "h" | "hours" => HOUR,
                other => {
                    return Err(format!(
                        "'{raw}': unknown unit '{other}'; use m (minutes) or h (hours)"
                    ))
                }
            };
            if n < 1 || n > 24 * 366 {
                return Err(format!("'{raw}': the number must be between 1 and 8784"));
            }
            return Ok(every(n * unit_seconds));
        }
        let cron = Cron::from_str(raw.trim()).map_err(|e| {
            format!("'{raw}' is neither a keyword (hourly, daily, weekly, monthly, 'every <n>m|h') nor a valid cron expression: {e}")
        })?;
        Ok(Frequency::Cron(Box::new(cron)))
    }
}

impl Frequency {
    /// The normal form stored and compared for "same schedule" checks.
    pub fn normalized(&self) -> String {
        match self {
            Frequency::Every { label, .. } => label.clone(),
            Frequency::Cron(c) => c.pattern.to_string(),
        }
    }

    pub fn cadence(&self, tz: Tz) -> Result<Cadence, String> {
        match self {
            Frequency::Every { seconds, .. } => Ok(Cadence {
                min_gap_seconds: *seconds,
                avg_gap_seconds: *seconds,
                fire_minutes: Vec::new(),
            }),
            Frequency::Cron(cron) => cron_cadence(cron, tz),
        }
    }
}

fn cron_cadence(cron: &Cron, tz: Tz) -> Result<Cadence, String> {
    // A fixed, ordinary start (a Monday) keeps validation deterministic.
    let start = tz.from_utc_datetime(
        &DateTime::<Utc>::from_timestamp(1_767_571_200, 0)
            .unwrap()
            .naive_utc(),
    );
    let horizon = start + Duration::days(CRON_HORIZON_DAYS);
    let mut times = Vec::new();
    for t in cron.iter_after(start) {
        if t > horizon || times.len() >= CRON_SAMPLE_RUNS {
            break;
        }
        times.push(t);
    }
    if times.len() < 2 {
        return Err(format!(
            "'{}' fires fewer than twice in {CRON_HORIZON_DAYS} days; a backup schedule must repeat",
            cron.pattern
        ));
    }
    let gaps = times.windows(2).map(|w| (w[1] - w[0]).num_seconds());
    let min_gap_seconds = gaps.clone().min().unwrap_or(0);
    let avg_gap_seconds =
        (times[times.len() - 1] - times[0]).num_seconds() / (times.len() as i64 - 1);
    let mut fire_minutes: Vec<u32> = times.iter().map(|t| t.hour() * 60 + t.minute()).collect();
    fire_minutes.sort_unstable();
    fire_minutes.dedup();
    Ok(Cadence {
        min_gap_seconds,
        avg_gap_seconds,
        fire_minutes,
    })
}

/// A daily window `HH:MM-HH:MM` in the policy's time zone; `end <= start` wraps midnight, and
/// `00:00-24:00` is the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_minute: u32,
    pub end_minute: u32,
}

impl FromStr for Window {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let bad = || {
            format!("'{raw}' is not a window: write HH:MM-HH:MM, e.g. 01:00-05:00 (it may wrap midnight: 22:00-02:00)")
        };
        let (a, b) = raw.trim().split_once('-').ok_or_else(bad)?;
        let minute = |s: &str, allow_24: bool| -> Result<u32, String> {
            let s = s.trim();
            if allow_24 && s == "24:00" {
                return Ok(24 * 60);
            }
            if s.len() != 5 {
                return Err(bad());
            }
            let t = NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| bad())?;
            Ok(t.hour() * 60 + t.minute())
        };
        let window = Window {
            start_minute: minute(a, false)?,
            end_minute: minute(b, true)?,
        };
        if window.start_minute == window.end_minute {
            return Err(format!(
                "'{raw}' is empty; use 00:00-24:00 for the whole day"
            ));
        }
        Ok(window)
    }
}

impl Window {
    pub fn length_minutes(&self) -> u32 {
        if self.end_minute > self.start_minute {
            self.end_minute - self.start_minute
        } else {
            24 * 60 - self.start_minute + self.end_minute
        }
    }

    pub fn contains_minute(&self, minute: u32) -> bool {
        if self.end_minute > self.start_minute {
            (self.start_minute..self.end_minute).contains(&minute)
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start_minute), hm(self.end_minute))
    }
}

/// `90` → `1h30m`, for messages.
pub fn human(seconds: i64) -> String {
    let (d, h, m) = (seconds / DAY, seconds % DAY / HOUR, seconds % HOUR / MINUTE);
    let mut out = String::new();
    if d > 0 {
        out.push_str(&format!("{d}d"));
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 || out.is_empty() {
        out.push_str(&format!("{m}m"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cadence(s: &str) -> Cadence {
        s.parse::<Frequency>().unwrap().cadence(Tz::UTC).unwrap()
    }

    #[test]
    fn keywords_intervals_and_cron() {
        assert_eq!(cadence("hourly").min_gap_seconds, HOUR);
        assert_eq!(cadence(" Every 15m ").min_gap_seconds, 15 * MINUTE);
        assert_eq!(cadence("every 6h").avg_gap_seconds, 6 * HOUR);
        let c = cadence("*/5 * * * *");
        assert_eq!(c.min_gap_seconds, 5 * MINUTE);
        let c = cadence("0 1,2 * * *");
        assert_eq!(
            (c.min_gap_seconds, c.fire_minutes.clone()),
            (HOUR, vec![60, 120])
        );
        let c = cadence("30 3 * * 1");
        assert_eq!(c.avg_gap_seconds, 7 * DAY);
        for bad in [
            "",
            "every",
            "every 0m",
            "every 5s",
            "fortnightly",
            "61 * * * *",
            "0 0 30 2 *",
        ] {
            let err = bad
                .parse::<Frequency>()
                .and_then(|f| f.cadence(Tz::UTC).map(|_| ()));
            assert!(err.is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_wrap_midnight() {
        let w: Window = "22:00-02:00".parse().unwrap();
        assert_eq!(w.length_minutes(), 240);
        assert!(w.contains_minute(23 * 60) && w.contains_minute(60) && !w.contains_minute(12 * 60));
        assert_eq!(
            "00:00-24:00".parse::<Window>().unwrap().length_minutes(),
            1440
        );
        for bad in [
            "1:00-2:00",
            "25:00-01:00",
            "01:00",
            "01:00-01:00",
            "01:60-02:00",
            "ab:cd-01:00",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
        assert_eq!(human(5400), "1h30m");
    }
}
