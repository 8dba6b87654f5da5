//! A classic-mode gRPC function: `helloworld.Greeter` (examples/grpc/greeter.proto) served through the watchdog's
//! passthrough. Each call is one process: `Grpc_Method` names the method; for the unary `SayHello` stdin is the
//! raw HelloRequest and stdout the raw HelloReply; for the server-streaming `SayHelloStream` (declared in the
//! descriptor set given as `grpc_descriptor_set`) both use gRPC's 5-byte message framing, and each reply is
//! flushed as soon as it is written, so the client sees it at once.
//!
//! ```text
//! fprocess=target/debug/examples/grpc_greeter grpc_descriptor_set=examples/grpc/greeter.binpb fwatchdog
//! ```

use std::io::{Read, Write};

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

fn main() {
    let method = std::env::var("Grpc_Method").unwrap_or_default();
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        fail(&format!("reading stdin: {e}"));
    }
    let mut out = std::io::stdout().lock();
    match method.as_str() {
        "/helloworld.Greeter/SayHello" => {
            let request = decode(&input);
            let reply = HelloReply { message: format!("Hello, {}!", request.name) };
            let _ = out.write_all(&prost::Message::encode_to_vec(&reply));
        }
        "/helloworld.Greeter/SayHelloStream" => {
            // One framed request: a flag byte, a big-endian length, the message.
            if input.len() < 5 {
                fail("expected one 5-byte framed HelloRequest on stdin");
            }
            let request = decode(&input[5..]);
            for n in 1..=3 {
                let reply =
                    prost::Message::encode_to_vec(&HelloReply { message: format!("Hello #{n}, {}!", request.name) });
                let mut framed = vec![0u8];
                framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                framed.extend_from_slice(&reply);
                if out.write_all(&framed).and_then(|_| out.flush()).is_err() {
                    std::process::exit(1);
                }
            }
        }
        other => fail(&format!("unknown method {other:?}")),
    }
}

fn decode(bytes: &[u8]) -> HelloRequest {
    match <HelloRequest as prost::Message>::decode(bytes) {
        Ok(request) => request,
        Err(e) => fail(&format!("not a HelloRequest: {e}")),
    }
}

/// Ends the call: the watchdog answers INTERNAL with this on stderr in the status message.
fn fail(message: &str) -> ! {
    eprintln!("greeter: {message}");
    std::process::exit(2);
}
