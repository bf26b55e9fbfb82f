//! A request body with a deadline. hyper bounds how long a request's header may take, not its
//! body, so a client could hold a connection (and its slot under `max_connections`) by sending
//! the body a byte a minute. The server wraps every body in [`TimedBody`]; a handler that reads
//! past the deadline gets a [`BodyTimeout`] and answers 408.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::metrics::Metrics;

/// The body of a request read slower than `body_read_timeout` allows (counted from the header's
/// arrival): an error for the handler reading it, which answers 408.
#[derive(Debug, thiserror::Error)]
#[error("the client did not send the whole body within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Whether a body-read error is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<BodyTimeout>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A request body with a deadline.
pub struct TimedBody<B> {
    inner: B,
    limit: Duration,
    deadline: tokio::time::Instant,
    /// Made on the first wait, so bodies that are already complete cost no timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Counts the cut-off (`slow_clients_cut_off{stage="body"}`).
    metrics: Arc<Metrics>,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, limit: Duration, metrics: Arc<Metrics>) -> Self {
        TimedBody {
            inner,
            limit,
            deadline: tokio::time::Instant::now() + limit,
            sleep: None,
            metrics,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.metrics.cut_off("body");
                Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
