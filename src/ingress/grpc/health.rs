//! `grpc.health.v1.Health`, computed on demand: SERVING exactly when `/_/ready` would not answer 503.

use std::sync::Arc;
use std::time::Duration;

use ::http::Request;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use hyper::body::Incoming;
use tonic::codegen::Service;
use tonic::Status;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::ingress::{probe, Ingress};

/// How often Watch looks for a change.
const POLL: Duration = Duration::from_millis(250);

/// Answers one call to the Health service.
pub(super) fn serve(ingress: Arc<Ingress>, req: Request<Incoming>) -> super::Call {
    let server = HealthServer::new(HealthService { ingress });
    let mut server = super::ACCEPTED_COMPRESSION.into_iter().fold(server, |s, e| s.accept_compressed(e));
    server.call(req)
}

struct HealthService {
    ingress: Arc<Ingress>,
}

/// The status of `service` now; `None` for a service the watchdog does not serve.
fn status(ingress: &Ingress, service: &str) -> Option<ServingStatus> {
    if !ingress.grpc.services.contains(service) {
        return None;
    }
    Some(if probe::serving(ingress).is_ok() { ServingStatus::Serving } else { ServingStatus::NotServing })
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        let status =
            status(&self.ingress, &service).ok_or_else(|| Status::not_found(format!("unknown service {service:?}")))?;
        Ok(tonic::Response::new(HealthCheckResponse { status: status as i32 }))
    }

    type WatchStream = BoxStream<'static, Result<HealthCheckResponse, Status>>;

    /// The current status, then each change. An unknown service gets SERVICE_UNKNOWN and the call stays open, as
    /// the health protocol says. Once shutdown has begun and NOT_SERVING (or SERVICE_UNKNOWN) was sent, the stream
    /// ends, so a watcher does not hold the drain open.
    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let ingress = Arc::clone(&self.ingress);
        let updates = futures_util::stream::unfold((ingress, service, None), |(ingress, service, last)| async move {
            loop {
                // Only shutdown ends the stream: before start-up completes, NOT_SERVING is followed by SERVING.
                if last.is_some_and(|s| s != ServingStatus::Serving) && ingress.lifecycle.stopping() {
                    return None;
                }
                let now = status(&ingress, &service).unwrap_or(ServingStatus::ServiceUnknown);
                if Some(now) != last {
                    let update = HealthCheckResponse { status: now as i32 };
                    return Some((Ok(update), (ingress, service, Some(now))));
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Ok(tonic::Response::new(updates.boxed()))
    }
}
