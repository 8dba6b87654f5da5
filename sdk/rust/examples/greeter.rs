//! Greeter: a gRPC service (`helloworld.Greeter`) served as a passthrough function, with prost messages.
//! Unary `SayHello`, server-streaming `SayHelloStream` (declared so by the watchdog's `grpc_descriptor_set`).
//! SayHello also sends response metadata: `x-served-by` (initial) and `x-greeted` (trailing).
use std::time::Duration;

use prost::Message;
use watchdog_sdk::http::{HeaderMap, HeaderValue};
use watchdog_sdk::{Bytes, GrpcStatus, HandlerError, Reply, Request, Response};

#[derive(Clone, PartialEq, Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

async fn greeter(mut req: Request) -> Result<Reply, HandlerError> {
    let method = req.grpc_method().unwrap_or_default().to_owned();
    if !matches!(method.as_str(), "/helloworld.Greeter/SayHello" | "/helloworld.Greeter/SayHelloStream") {
        return Err(GrpcStatus::unimplemented(format!("no method {method}")).into());
    }
    // A unary or server-streaming call has exactly one request message.
    let message = req.grpc_messages().await?.into_iter().next().unwrap_or_default();
    let request =
        HelloRequest::decode(message).map_err(|e| GrpcStatus::invalid_argument(format!("bad HelloRequest: {e}")))?;
    if request.name.is_empty() {
        return Err(GrpcStatus::invalid_argument("name is required").into());
    }
    if method == "/helloworld.Greeter/SayHello" {
        let mut headers = HeaderMap::new();
        headers.insert("x-served-by", HeaderValue::from_static("watchdog-sdk"));
        let mut trailers = HeaderMap::new();
        trailers.insert("x-greeted", HeaderValue::from_str(&request.name).unwrap_or(HeaderValue::from_static("?")));
        let body = HelloReply { message: format!("Hello, {}!", request.name) }.encode_to_vec();
        return Ok(Reply::Response(Response { status: 200, headers, body: Bytes::from(body).into(), trailers }));
    }
    // SayHelloStream: one message per item, each sent (and framed by the SDK) as soon as it is produced.
    let replies = futures_util::stream::unfold(0, move |i| {
        let name = request.name.clone();
        async move {
            if i == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((HelloReply { message: format!("Hello, {name}! #{i}") }.encode_to_vec(), i + 1))
        }
    });
    Ok(Reply::stream(replies))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), watchdog_sdk::Error> {
    watchdog_sdk::serve(greeter).await
}
