//! `bulwark-control-plane`: the HTTP API, console, redb state, scheduler, policies, quotas,
//! audit and alerts. Built from issue 3 on; this crate is the place it goes, and it depends on
//! `bulwark-core` only for the types it shares with agents.
