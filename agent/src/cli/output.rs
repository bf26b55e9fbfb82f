//! How results reach the user: a JSON document on stdout for scripts, text for people, and a
//! progress bar on stderr while long commands run on a terminal.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bulwark_core::repo::backup::Progress;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde::Serialize;

pub fn json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("output serializes")
    );
}

pub fn bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// Draws `progress` until dropped. `total` of `None` shows a byte counter with a rate.
pub struct Bar {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    pub fn start(
        enabled: bool,
        label: &str,
        total: Option<u64>,
        progress: Arc<Progress>,
        stored: bool,
    ) -> Bar {
        if !enabled {
            return Bar {
                bar: None,
                ticker: None,
            };
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} {bytes} read {binary_bytes_per_sec} {prefix}",
                )
                .expect("template"),
            ),
        };
        bar.set_message(label.to_string());
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                b.set_position(progress.bytes_read.load(Ordering::Relaxed));
                if stored {
                    b.set_prefix(format!(
                        "({} new stored)",
                        bytes(progress.bytes_stored.load(Ordering::Relaxed))
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Bar {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
