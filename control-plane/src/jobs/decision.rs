//! Who may decide a four-eyes request — a restore waiting for approval, or an approval of a
//! destructive act ([`super::approvals`]): a second person with admin rights on the workspace,
//! never the requester, with an optional note. Kept once so both kinds refuse alike.

use super::Error;
use crate::domain::audit::Actor;
use crate::domain::authz::{Access, Caller};
use crate::domain::restore::Person;

pub(crate) fn person(caller: &Caller) -> Person {
    Person {
        user_id: caller.user_id.clone(),
        name: caller.user_name.clone(),
    }
}

/// The audit log's name for a person's change.
pub(crate) fn user_actor(caller: &Caller) -> Actor {
    Actor {
        kind: "user".into(),
        id: caller.user_id.clone(),
        name: caller.user_name.clone(),
    }
}

/// Refuses a note that is not plain text of at most 1000 characters.
pub(crate) fn check_note(note: Option<&str>) -> Result<(), Error> {
    let mut problems = Vec::new();
    if let Some(n) = note {
        crate::domain::check_text(&mut problems, "note", n, 1000);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(problems))
    }
}

/// Refuses (403) the requester and anyone without admin rights on `workspace`. `what` names
/// the request (`restore 'rst_…'`).
pub(crate) fn check_decider(
    caller: &Caller,
    requested_by: &Person,
    workspace: &str,
    what: &str,
    approve: bool,
) -> Result<(), Error> {
    if requested_by.user_id == caller.user_id {
        return Err(Error::Forbidden(format!(
            "{what} was requested by you; a second admin of workspace '{workspace}' must {} it",
            if approve { "approve" } else { "reject" }
        )));
    }
    if caller.access(workspace, None) < Access::Admin {
        return Err(Error::Forbidden(format!(
            "deciding on {what} needs the workspace-admin role on workspace '{workspace}'"
        )));
    }
    Ok(())
}
