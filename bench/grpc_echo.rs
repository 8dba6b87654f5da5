//! Baseline for gRPC benchmarks: a plain tonic server implementing `watchdog.v1.Function/Invoke` as an echo,
//! served by hyper over h2c exactly as the watchdog serves its port, with no function behind it.
//!
//! ```text
//! cargo run --release --example grpc_echo -- 127.0.0.1:50051
//! ```

use std::convert::Infallible;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ng_watchdog::envelope::pb::watchdog::v1::function_server::{Function, FunctionServer};
use ng_watchdog::envelope::pb::watchdog::v1::{Chunk, InvokeRequest, InvokeResponse};
use tonic::{Request, Response, Status, Streaming};

/// Answers every call with its own body.
struct Echo;

#[tonic::async_trait]
impl Function for Echo {
    async fn invoke(&self, request: Request<InvokeRequest>) -> Result<Response<InvokeResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(InvokeResponse {
            body: request.body,
            content_type: request.content_type,
            metadata: Default::default(),
        }))
    }

    type InvokeStreamStream = BoxStream<'static, Result<Chunk, Status>>;

    async fn invoke_stream(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<Self::InvokeStreamStream>, Status> {
        Ok(Response::new(request.into_inner().boxed()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:50051".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("grpc_echo listening on {addr}");
    let server = FunctionServer::new(Echo);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let mut server = server.clone();
                async move {
                    Ok::<_, Infallible>(
                        tonic::codegen::Service::call(&mut server, req).await.unwrap_or_else(|e| match e {}),
                    )
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
