//! A fixed pool of CPU worker threads, one per core, for hashing, compression and encryption.
//!
//! tokio's blocking pool grows to hundreds of threads when file I/O (which OpenDAL's `fs`
//! service runs there) is busy, and every thread that ever sealed a blob would keep its own
//! zstd context and scratch buffers: memory would grow with the thread count. A fixed pool
//! bounds both the parallelism and the per-thread state.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

fn pool() -> &'static Mutex<mpsc::Sender<Job>> {
    static POOL: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("bulwark-cpu-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().expect("worker queue").recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .expect("spawn CPU worker thread");
        }
        Mutex::new(tx)
    })
}

/// Runs `f` on a CPU worker and awaits its result.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    pool()
        .lock()
        .expect("worker queue")
        .send(job)
        .expect("CPU workers are running");
    rx.await.expect("CPU worker panicked")
}

/// Number of CPU workers: how many CPU jobs are worth keeping in flight.
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
