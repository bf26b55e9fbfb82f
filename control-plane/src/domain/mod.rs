//! The control plane's rules, free of HTTP and storage so they can be tested as plain functions.

pub mod agent;
pub mod approval;
pub mod audit;
pub mod authz;
pub mod backup;
pub mod cluster;
pub mod compliance;
pub mod database;
pub mod drill;
pub mod job;
pub mod pitr;
pub mod plan;
pub mod policy;
pub mod quota;
pub mod reconcile;
pub mod recovery;
pub mod restore;
pub mod retention;
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

/// Unicode's explicit directional formatting characters (embeddings, overrides, isolates and
/// marks). In a name they make text display in another order than it is stored ("Trojan
/// Source"), so an audit entry or a console page could show something other than what was sent.
const BIDI_CONTROLS: [char; 12] = [
    '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}',
    '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
];

/// What is wrong with a free-text field (a name, a note, a host), if anything: 1 to `max`
/// characters, not only blanks, no NUL or other control characters (C0, DEL, C1: they corrupt logs, terminals and CSV
/// exports), and no bidirectional overrides. One rule for every such field, so none is missed.
pub fn text_problem(value: &str, max: usize) -> Option<String> {
    let len = value.chars().count();
    if value.trim().is_empty() || len > max {
        return Some(format!("must be 1 to {max} characters (got {len})"));
    }
    if let Some((i, c)) = value.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Some(format!(
            "contains the control character U+{:04X} at position {}; remove it",
            c as u32,
            i + 1
        ));
    }
    if let Some((i, c)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| BIDI_CONTROLS.contains(c))
    {
        return Some(format!(
            "contains the bidirectional formatting character U+{:04X} at position {}, which makes text display differently from what it is; remove it",
            c as u32,
            i + 1
        ));
    }
    None
}

/// Records the [`text_problem`] of `value` at `path`.
pub fn check_text(problems: &mut Vec<Violation>, path: &str, value: &str, max: usize) {
    if let Some(p) = text_problem(value, max) {
        problems.push(Violation::new(path, p));
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

    #[test]
    fn free_text_refuses_control_and_bidi_characters() {
        assert_eq!(text_problem("Payments – Zürich", 100), None);
        for bad in [
            "a\0b",
            "tab\there",
            "new\nline",
            "\u{7f}",
            "\u{85}",
            "x\u{202E}gpj.exe",
            "\u{2066}a",
        ] {
            assert!(text_problem(bad, 100).is_some(), "{bad:?}");
        }
        assert!(text_problem("x\u{202E}y", 100).unwrap().contains("U+202E"));
        assert!(text_problem("a\0", 100)
            .unwrap()
            .contains("U+0000 at position 2"));
        assert!(text_problem(" ", 100).is_some());
        assert!(text_problem(&"a".repeat(101), 100)
            .unwrap()
            .contains("got 101"));
    }
}
