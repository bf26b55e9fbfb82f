//! PVE's asynchronous operations run as tasks named by a UPID; the call that starts one answers
//! the UPID, and the outcome is read by polling `GET /nodes/{node}/tasks/{upid}/status` on the
//! node inside the UPID until `status` is `stopped`, then reading `exitstatus` (NOTES.md A9).
//! `OK` and `WARNINGS: n` are success; anything else is the error text.
//!
//! Storage create/update/delete are synchronous and need none of this; deleting a volume (a
//! backup file) is a task.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;

use crate::client::Client;
use crate::de;
use crate::error::{Error, Result};
use crate::params::{segment, Params};
use crate::storage::check_id;

/// A parsed task id:
/// `UPID:<node>:<pid 8 hex>:<pstart 8-9 hex>:<starttime 8 hex>:<type>:<id>:<user>:`
/// (pve-common `UPID.pm`, whose `decode` regex this follows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upid {
    raw: String,
    pub node: String,
    pub pid: u32,
    pub pstart: u64,
    pub starttime: i64,
    pub task_type: String,
    pub id: String,
    pub user: String,
}

impl Upid {
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for Upid {
    type Err = Error;

    fn from_str(s: &str) -> Result<Upid> {
        let bad = |why: &str| Error::Decode {
            url: String::new(),
            reason: format!("'{s}' is not a UPID: {why}"),
        };
        let rest = s
            .strip_prefix("UPID:")
            .ok_or_else(|| bad("no UPID: prefix"))?;
        let rest = rest
            .strip_suffix(':')
            .ok_or_else(|| bad("no trailing colon"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        if parts.len() != 7 {
            return Err(bad("expected 7 fields"));
        }
        let hex = |v: &str, min: usize, max: usize, what: &str| -> Result<u64> {
            if v.len() < min || v.len() > max || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(what));
            }
            Ok(u64::from_str_radix(v, 16).expect("checked hex"))
        };
        if !crate::storage::is_node_name(parts[0]) {
            return Err(bad("bad node name"));
        }
        let no_space_colon = |v: &str| !v.contains(char::is_whitespace);
        if parts[4].is_empty()
            || parts[6].is_empty()
            || !parts[4..].iter().all(|p| no_space_colon(p))
        {
            return Err(bad("bad type, id or user"));
        }
        Ok(Upid {
            raw: s.to_string(),
            node: parts[0].to_string(),
            pid: hex(parts[1], 8, 8, "pid is not 8 hex digits")? as u32,
            pstart: hex(parts[2], 8, 9, "pstart is not 8-9 hex digits")?,
            starttime: hex(parts[3], 8, 8, "starttime is not 8 hex digits")? as i64,
            task_type: parts[4].to_string(),
            id: parts[5].to_string(),
            user: parts[6].to_string(),
        })
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TaskStatus {
    pub upid: String,
    /// `running` or `stopped`.
    pub status: String,
    /// Once stopped: `OK`, `WARNINGS: n`, or the error text.
    #[serde(default)]
    pub exitstatus: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(rename = "type", default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default, deserialize_with = "de::opt_i64_any")]
    pub starttime: Option<i64>,
}

impl TaskStatus {
    pub fn is_running(&self) -> bool {
        self.status != "stopped"
    }

    /// Stopped with `OK` or `WARNINGS: n` (pve-common `UPID.pm` `status_is_error`).
    pub fn succeeded(&self) -> bool {
        !self.is_running()
            && self
                .exitstatus
                .as_deref()
                .is_some_and(|s| s == "OK" || s.starts_with("WARNINGS: "))
    }
}

/// First and largest pause between two status polls.
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);
/// A task may not be visible on its node for a moment after it was started (bpg treats a 400
/// from the status call in that window as "not yet"); so do we, for this long.
const NOT_VISIBLE_GRACE: Duration = Duration::from_secs(5);

impl Client {
    /// One status read.
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus> {
        self.get(
            &format!(
                "/nodes/{}/tasks/{}/status",
                segment(&upid.node),
                segment(upid.as_str())
            ),
            Params::new(),
        )
        .await
    }

    /// Polls until the task stops or `timeout` passes. A failed exit status is
    /// [`Error::TaskFailed`]; still running at the deadline is [`Error::TaskTimeout`].
    pub async fn wait_task(&self, upid: &Upid, timeout: Duration) -> Result<TaskStatus> {
        let start = Instant::now();
        let mut pause = POLL_FIRST;
        loop {
            match self.task_status(upid).await {
                Ok(status) if !status.is_running() => {
                    if status.succeeded() {
                        return Ok(status);
                    }
                    return Err(Error::TaskFailed {
                        upid: upid.to_string(),
                        exitstatus: status
                            .exitstatus
                            .unwrap_or_else(|| "unexpected status".into()),
                    });
                }
                Ok(_) => {}
                Err(Error::Parameter { .. } | Error::NotFound { .. })
                    if start.elapsed() < NOT_VISIBLE_GRACE => {}
                Err(e) => return Err(e),
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::TaskTimeout {
                    upid: upid.to_string(),
                    waited,
                });
            }
            tokio::time::sleep(pause.min(timeout - waited)).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// `DELETE /nodes/{node}/storage/{storage}/content/{volume}`: starts a task deleting the
    /// volume and returns its UPID.
    pub async fn delete_volume(&self, node: &str, storage: &str, volume: &str) -> Result<Upid> {
        check_id(storage)?;
        let path = format!(
            "/nodes/{}/storage/{}/content/{}",
            segment(node),
            segment(storage),
            segment(volume)
        );
        let data = self.call(Method::DELETE, &path, Params::new()).await?;
        let raw: String = self.decode(&path, data)?;
        raw.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upids() {
        let raw = "UPID:pve1:000A1B2C:0012F00D:6560A1B2:imgdel::root@pam!bulwark:";
        let u: Upid = raw.parse().unwrap();
        assert_eq!(u.node, "pve1");
        assert_eq!(u.pid, 0x000A1B2C);
        assert_eq!(u.pstart, 0x0012F00D);
        assert_eq!(u.starttime, 0x6560A1B2);
        assert_eq!(u.task_type, "imgdel");
        assert_eq!(u.id, "");
        assert_eq!(u.user, "root@pam!bulwark");
        assert_eq!(u.to_string(), raw);
        let nine = "UPID:n-2:00000001:123456789:6560A1B2:vzdump:100:root@pam:";
        assert_eq!(nine.parse::<Upid>().unwrap().pstart, 0x123456789);
    }

    #[test]
    fn refuses_malformed_upids() {
        for bad in [
            "",
            "UPID:pve1:000A1B2C:0012F00D:6560A1B2:imgdel::root@pam", // no trailing colon
            "pve1:000A1B2C:0012F00D:6560A1B2:imgdel::root@pam:",     // no prefix
            "UPID:pve1:A1B2C:0012F00D:6560A1B2:imgdel::root@pam:",   // short pid
            "UPID:pve_1:000A1B2C:0012F00D:6560A1B2:imgdel::root@pam:", // bad node
            "UPID:pve1:000A1B2C:0012F00D:6560A1B2:::root@pam:",      // no type
            "UPID:pve1:000A1B2C:0012F00D:6560A1B2:imgdel:a:b:root@pam:", // extra field
        ] {
            assert!(bad.parse::<Upid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_statuses() {
        let st = |status: &str, exit: Option<&str>| TaskStatus {
            upid: String::new(),
            status: status.into(),
            exitstatus: exit.map(str::to_string),
            node: None,
            task_type: None,
            user: None,
            starttime: None,
        };
        assert!(st("stopped", Some("OK")).succeeded());
        assert!(st("stopped", Some("WARNINGS: 2")).succeeded());
        assert!(!st("stopped", Some("command 'rm' failed: exit code 1")).succeeded());
        assert!(!st("stopped", None).succeeded());
        assert!(st("running", None).is_running());
        assert!(!st("running", None).succeeded());
    }
}
