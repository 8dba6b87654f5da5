//! Server reflection, v1 and v1alpha: the watchdog's services, gRPC health, and the user's descriptor set.

use prost_types::FileDescriptorSet;
use tonic::Status;
use tonic_reflection::server::Builder;

use super::{boxed, Handler, ACCEPTED_COMPRESSION};

fn builder(user: Option<&FileDescriptorSet>) -> Builder<'static> {
    let mut builder = Builder::configure()
        .register_encoded_file_descriptor_set(crate::envelope::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    if let Some(set) = user {
        builder = builder.register_file_descriptor_set(set.clone());
    }
    builder
}

/// The v1 and v1alpha reflection services. A user descriptor set reflection cannot index is logged and left out.
pub(super) fn services(user: Option<FileDescriptorSet>) -> (Handler, Handler) {
    let v1 = builder(user.as_ref()).build_v1().or_else(|e| {
        tracing::error!("grpc_descriptor_set left out of reflection: {e}");
        builder(None).build_v1()
    });
    let v1alpha = builder(user.as_ref()).build_v1alpha().or_else(|_| builder(None).build_v1alpha());
    let v1 = match v1 {
        Ok(service) => boxed(ACCEPTED_COMPRESSION.into_iter().fold(service, |s, e| s.accept_compressed(e))),
        Err(e) => unavailable(e.to_string()),
    };
    let v1alpha = match v1alpha {
        Ok(service) => boxed(ACCEPTED_COMPRESSION.into_iter().fold(service, |s, e| s.accept_compressed(e))),
        Err(e) => unavailable(e.to_string()),
    };
    (v1, v1alpha)
}

/// A handler answering UNIMPLEMENTED, for a reflection service that could not be built.
fn unavailable(reason: String) -> Handler {
    Box::new(move |_| {
        let status = Status::unimplemented(format!("reflection is unavailable: {reason}"));
        Box::pin(async move { status.into_http() })
    })
}
