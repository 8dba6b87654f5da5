//! Echo: answers every request with its own body and content type, streamed back as it arrives.
use watchdog_sdk::http::{header::CONTENT_TYPE, HeaderMap};
use watchdog_sdk::{Reply, Request};
#[tokio::main(flavor = "current_thread")] // one thread per worker process: scale with the watchdog's `workers`
async fn main() -> Result<(), watchdog_sdk::Error> {
    watchdog_sdk::serve(|req: Request| async move {
        let mut headers = HeaderMap::new();
        if let Some(content_type) = req.headers().get(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, content_type.clone());
        }
        Ok(Reply::response(200, headers, req.into_body()))
    })
    .await
}
