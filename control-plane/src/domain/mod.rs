//! The control plane's rules, free of HTTP and storage so they can be tested as plain functions.

pub mod agent;
pub mod audit;
pub mod authz;
pub mod backup;
pub mod cluster;
pub mod database;
pub mod job;
pub mod plan;
pub mod policy;
pub mod quota;
pub mod rules;
pub mod schedule;
pub mod storage;
pub mod user;
pub mod workspace;

use serde::Serialize;
use utoipa::ToSchema;

/// One thing wrong with a request body, named by its JSON path (`schedule.frequency`) so a form
/// can put the message next to the right field. Validators collect all of them instead of
/// stopping at the first, because users fix a form in one go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Violation {
    pub path: String,
    pub problem: String,
}

impl Violation {
    pub fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        Violation {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// Longest user-chosen identifier (workspace and database ids, label keys).
pub const MAX_SLUG_LEN: usize = 63;

/// A user-chosen identifier: lowercase letters, digits, `-`, `_` and `.`, starting with a letter
/// or digit. Such ids appear in URLs, repository paths (`snapshots/<database-id>/…`) and logs,
/// so they must need no escaping anywhere.
pub fn check_slug(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_SLUG_LEN {
        return Err(format!(
            "must be 1 to {MAX_SLUG_LEN} characters long (got {})",
            value.len()
        ));
    }
    let first_ok = value
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let all_ok = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !first_ok || !all_ok {
        return Err(format!(
            "'{}' is not a valid id: use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit",
            value.escape_debug()
        ));
    }
    Ok(())
}

/// A server-generated id: `<prefix>_` + 12 hex digits of milliseconds since the epoch + 16 random
/// hex digits. Ids sort by creation time, which makes "newest first" listings a range scan.
pub fn new_id(prefix: &str) -> String {
    let millis = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("the operating system's random source failed");
    format!("{prefix}_{millis:012x}{}", hex::encode(random))
}

/// Whether `value` has the shape of an id made by [`new_id`] with this prefix.
pub fn is_generated_id(prefix: &str, value: &str) -> bool {
    value
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| {
            hex.len() == 28
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_generated_ids() {
        assert!(check_slug("orders-db.prod_1").is_ok());
        for bad in ["", "Orders", "-x", "a b", "a/b", "ü", &"a".repeat(64)] {
            assert!(check_slug(bad).is_err(), "{bad}");
        }
        let id = new_id("pol");
        assert!(is_generated_id("pol", &id), "{id}");
        assert!(!is_generated_id("usr", &id));
        assert!(!is_generated_id("pol", "pol_zz"));
    }
}
