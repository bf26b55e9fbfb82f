//! Is the process that left something behind (a lease, a temporary file, a restore's staging
//! entry) still running?
//!
//! A process id means something only on the machine and in the pid namespace that issued it,
//! and only until that process exits, because Linux reuses pids. So every pid we record comes
//! with a *scope* (a hash of the hostname, the kernel's boot id and the pid namespace) and with
//! the process's start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`). A holder
//! is judged gone only when its scope is ours and either no process has its pid any more or the
//! process that has it started at another time. Everywhere else (another host, container or
//! boot; no `/proc`) nothing is concluded, and callers fall back on expiry times: wrongly
//! calling a live backup dead would let GC delete chunks it is about to reference.

use std::io;
use std::sync::OnceLock;

/// The running process, as others will later judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// 12 hex characters: BLAKE3 of hostname, boot id and pid namespace.
    pub scope: String,
    pub pid: u32,
    /// Clock ticks after boot at which the process started.
    pub start: u64,
}

impl Holder {
    /// `<scope>-<pid>-<start>`: a name part (temporary directories, staging entries) from which
    /// [`Holder::parse_tag`] recovers the holder.
    pub fn tag(&self) -> String {
        format!("{}-{}-{}", self.scope, self.pid, self.start)
    }

    pub fn parse_tag(tag: &str) -> Option<Holder> {
        let mut parts = tag.splitn(3, '-');
        let scope = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let hex = scope.len() == 12 && scope.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| Holder {
            scope: scope.to_string(),
            pid,
            start,
        })
    }

    /// Whether this holder is still running, as far as this process can tell.
    pub fn liveness(&self) -> Liveness {
        liveness(&self.scope, self.pid, Some(self.start))
    }
}

/// This process, or `None` where `/proc` does not say enough to be judged later.
pub fn current() -> Option<&'static Holder> {
    static CURRENT: OnceLock<Option<Holder>> = OnceLock::new();
    CURRENT
        .get_or_init(|| {
            let pid = std::process::id();
            Some(Holder {
                scope: local_scope()?,
                pid,
                start: start_time(pid)?,
            })
        })
        .as_ref()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// Certainly gone: same host, boot and pid namespace, and the pid is free or reused.
    Gone,
    /// Another host, container or boot, or no way to tell.
    Unknown,
}

/// Judges the process `pid` of `scope` that started at `start` (if known).
pub fn liveness(scope: &str, pid: u32, start: Option<u64>) -> Liveness {
    let Some(me) = current() else {
        return Liveness::Unknown;
    };
    if scope != me.scope || pid == 0 || pid > i32::MAX as u32 {
        return Liveness::Unknown;
    }
    if pid == me.pid {
        return match start {
            Some(s) if s != me.start => Liveness::Gone,
            _ => Liveness::Running,
        };
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is delivered.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => Liveness::Gone,
            Some(libc::EPERM) => started_as(pid, start), // exists, owned by someone else
            _ => Liveness::Unknown,
        };
    }
    started_as(pid, start)
}

/// `pid` exists; it is our holder unless it started at another time (a reused pid).
fn started_as(pid: u32, start: Option<u64>) -> Liveness {
    let Some(expected) = start else {
        return Liveness::Running;
    };
    match start_time(pid) {
        Some(actual) if actual == expected => Liveness::Running,
        Some(_) => Liveness::Gone,
        // Unreadable: it exited between the two looks, or `/proc` hides other users'
        // processes (`hidepid`), so only a second `kill` may call it gone.
        // SAFETY: as above.
        None if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) =>
        {
            Liveness::Gone
        }
        None => Liveness::Unknown,
    }
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted after its last `)`.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" come field 3 (state), 4, …; field 22 is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn local_scope() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let mut h = blake3::Hasher::new();
    h.update(crate::keys::hostname().as_bytes());
    h.update(b"\0");
    h.update(boot.trim().as_bytes());
    h.update(b"\0");
    h.update(ns.to_string_lossy().as_bytes());
    Some(hex::encode(&h.finalize().as_bytes()[..6]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_running_and_a_reaped_child_is_gone() {
        let me = current().expect("Linux with /proc");
        assert_eq!(me.liveness(), Liveness::Running);
        assert_eq!(Holder::parse_tag(&me.tag()), Some(me.clone()));

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid);
        child.wait().unwrap();
        assert_eq!(liveness(&me.scope, pid, start), Liveness::Gone);

        // A live pid with another start time is a reused pid: gone.
        assert_eq!(
            liveness(&me.scope, me.pid, Some(me.start + 1)),
            Liveness::Gone
        );
        // Pid 1 exists, but we did not record it: running (never called dead on a guess).
        assert_eq!(liveness(&me.scope, 1, None), Liveness::Running);
        // Another host or container: no conclusion.
        assert_eq!(liveness("000000000000", pid, start), Liveness::Unknown);
    }

    #[test]
    fn tags_that_are_not_ours_do_not_parse() {
        for bad in [
            "",
            "abc",
            "0123456789ab-x-1",
            "zz23456789ab-1-1",
            "0123456789ab-1",
        ] {
            assert_eq!(Holder::parse_tag(bad), None, "{bad}");
        }
    }
}
