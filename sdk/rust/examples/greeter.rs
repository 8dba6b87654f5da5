//! `helloworld.Greeter/SayHello` (examples/grpc/greeter.proto in the watchdog's repository) as an http-mode
//! function: the watchdog passes the call through, and the handler gets the raw HelloRequest bytes as the body and
//! returns the raw HelloReply bytes. An unknown method answers 404, which a gRPC client sees as UNIMPLEMENTED.
//!
//! ```text
//! mode=http fprocess=target/debug/examples/greeter fwatchdog
//! ```
use prost::Message;
use watchdog_sdk::http::HeaderMap;
use watchdog_sdk::{HandlerError, Reply, Request};

/// `helloworld.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    /// The name.
    #[prost(string, tag = "1")]
    name: String,
}

/// `helloworld.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    /// The text.
    #[prost(string, tag = "1")]
    message: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), watchdog_sdk::Error> {
    watchdog_sdk::serve(|req: Request| async move {
        match req.grpc_method() {
            Some("/helloworld.Greeter/SayHello") => {
                let body = req.into_body().bytes().await?;
                let request = HelloRequest::decode(body).map_err(|e| HandlerError::permanent(e.to_string()))?;
                let reply = HelloReply { message: format!("Hello, {}!", request.name) };
                Ok(Reply::bytes(reply.encode_to_vec()))
            }
            Some(other) => Ok(Reply::response(404, HeaderMap::new(), format!("unknown method {other}"))),
            None => Err(HandlerError::permanent("this function only answers gRPC calls")),
        }
    })
    .await
}
