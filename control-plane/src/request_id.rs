//! A request id for every request: generated here (never taken from the client, so a log line
//! cannot be forged through it), sent back as `x-request-id`, carried by the `request` log span
//! around everything the request logs, and put into the body of a 500 so that an operator can
//! find the cause in the log from what a user reports — the 500 itself says nothing internal.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `f` as the handling of request `id` (what [`current`] returns inside it).
pub async fn scope<F: std::future::Future>(id: String, f: F) -> F::Output {
    CURRENT.scope(id, f).await
}

/// `req_` and 16 random hex digits.
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!("req_{}", hex::encode(bytes))
}

/// Middleware (outermost): assigns the id, opens the span, echoes the header.
pub async fn assign(req: Request, next: Next) -> Response {
    let id = new_id();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let mut response = scope(id.clone(), next.run(req).instrument(span)).await;
    response.headers_mut().insert(
        HEADER,
        HeaderValue::from_str(&id).expect("hex is a valid header value"),
    );
    response
}
