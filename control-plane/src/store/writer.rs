//! The writer thread behind [`Store::write`](super::Store::write): group commit on top of redb.
//!
//! Every change still gets a write transaction of its own; what is shared is the fsync. The
//! thread takes all changes waiting (up to [`MAX_GROUP`]), commits each with
//! `Durability::None`, and the group's last commit with `Durability::Immediate`, which makes the
//! earlier ones durable too (redb persists non-durable commits with the next durable one). A
//! change's caller is answered only after that durable commit, or at once when its change
//! failed (its transaction is simply dropped, which aborts it).

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, Durability};

use super::{Result, StoreError, Tx};
use crate::domain::audit::Actor;
use crate::secrets::SecretKey;

/// Most changes sharing one durable commit (bounds how long the first waits for the others).
const MAX_GROUP: usize = 128;

/// What a change did: whether its transaction is to be committed, and how to answer its caller
/// once the outcome is known.
struct Outcome {
    commit: bool,
    answer: Box<dyn FnOnce(Result<()>) + Send>,
}

type Change = Box<dyn FnOnce(&mut Tx) -> Outcome + Send>;

pub struct Writer {
    queue: Mutex<Option<Sender<(Actor, Change)>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub fn start(db: Arc<Database>, secrets: SecretKey, clock: super::Clock) -> Writer {
        let (queue, changes) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || run(&db, &secrets, &clock, &changes))
            .expect("the state-store writer thread starts");
        Writer {
            queue: Mutex::new(Some(queue)),
            thread: Mutex::new(Some(thread)),
        }
    }

    pub async fn write<T, F>(&self, actor: Actor, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T>>();
        let change: Change = Box::new(move |tx: &mut Tx| match change(tx) {
            Ok(value) => Outcome {
                commit: true,
                answer: Box::new(move |committed: Result<()>| {
                    let _ = reply.send(committed.map(|()| value));
                }),
            },
            Err(e) => Outcome {
                commit: false,
                answer: Box::new(move |_| {
                    let _ = reply.send(Err(e));
                }),
            },
        });
        let queued = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|q| q.send((actor, change)).is_ok())
            .unwrap_or(false);
        if !queued {
            return Err(StoreError::Task("the state store is closed".into()));
        }
        answer.await.map_err(|_| {
            StoreError::Task(
                "the state-store writer failed before committing this change (see the log)".into(),
            )
        })?
    }
}

impl Drop for Writer {
    /// Lets the thread finish what is queued, then waits for it.
    fn drop(&mut self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

fn run(
    db: &Database,
    secrets: &SecretKey,
    clock: &super::Clock,
    changes: &Receiver<(Actor, Change)>,
) {
    while let Ok(first) = changes.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match changes.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        commit_group(db, secrets, clock, group);
    }
}

/// Commits each change in its own transaction; answers the committed ones once the group is
/// durable.
fn commit_group(
    db: &Database,
    secrets: &SecretKey,
    clock: &super::Clock,
    group: Vec<(Actor, Change)>,
) {
    let last = group.len() - 1;
    let mut waiting: Vec<Box<dyn FnOnce(Result<()>) + Send>> = Vec::new();
    let mut durable = true;
    for (i, (actor, change)) in group.into_iter().enumerate() {
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                // Dropping the change drops its answer channel: the caller gets an error.
                tracing::error!(error = %e, "cannot begin a write transaction");
                continue;
            }
        };
        let mut tx = Tx {
            txn,
            actor,
            now: clock.now(),
            secrets: secrets.clone(),
        };
        let outcome = change(&mut tx);
        if !outcome.commit {
            drop(tx);
            (outcome.answer)(Ok(()));
            continue;
        }
        let immediate = i == last;
        if !immediate {
            let _ = tx.txn.set_durability(Durability::None);
        }
        match tx.txn.commit() {
            Ok(()) if immediate => {
                durable = true;
                waiting.push(outcome.answer);
            }
            Ok(()) => {
                durable = false;
                waiting.push(outcome.answer);
            }
            Err(e) => (outcome.answer)(Err(StoreError::from(e))),
        }
    }
    // The group's last change failed or aborted: make the others durable with an empty commit.
    let flushed = if durable {
        Ok(())
    } else {
        db.begin_write()
            .map_err(StoreError::from)
            .and_then(|t| t.commit().map_err(StoreError::from))
    };
    for answer in waiting {
        answer(match &flushed {
            Ok(()) => Ok(()),
            Err(e) => Err(StoreError::Task(format!(
                "making the commit durable failed: {e}"
            ))),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::{audit, Store};
    use super::*;

    fn actor() -> Actor {
        Actor {
            kind: "system".into(),
            id: "t".into(),
            name: "test".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_commit_alone_and_a_failing_one_aborts_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..60u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .write(actor(), move |tx| {
                        tx.audit(
                            "test.write",
                            "item",
                            &i.to_string(),
                            None,
                            None,
                            None::<&()>,
                            Some(&i),
                        )?;
                        if i % 7 == 3 {
                            return Err(StoreError::Refused(format!("item {i} refused")));
                        }
                        Ok(i)
                    })
                    .await
            }));
        }
        let mut ok = 0;
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(v) => {
                    assert_eq!(v as usize, i);
                    ok += 1;
                }
                Err(StoreError::Refused(m)) => assert!(i % 7 == 3, "{m}"),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, 60 - (0..60).filter(|i| i % 7 == 3).count());
        // Exactly the committed changes left their audit entries, in an unbroken chain.
        let v = audit::verify(&store.read().unwrap()).unwrap();
        assert!(v.ok, "{:?}", v.first_broken);
        assert_eq!(v.checked as usize, ok);
        // Dropping the last handle stops the writer: the file can be opened again at once.
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(
            audit::verify(&again.read().unwrap()).unwrap().checked as usize,
            ok
        );
    }
}
