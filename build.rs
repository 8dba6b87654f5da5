//! Compiles `proto/` with protox (pure Rust), so a fresh machine needs no `protoc`. The watchdog's gRPC services
//! get tonic server code; the encoded descriptor set is kept for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files =
        ["proto/watchdog/v1/envelope.proto", "proto/watchdog/v1/frame.proto", "proto/watchdog/v1/function.proto"];
    let descriptors = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("watchdog_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    // A handful of attributes per event: a sorted map needs no hashing (SipHash was a visible part of an
    // event's cost) and iterates in name order, which the binding's header order wants anyway.
    config.btree_map([".io.cloudevents.v1.CloudEvent.attributes"]);
    // A frame is as large as its largest kind: with the two heads inline every frame (most are small Data, End
    // and WindowUpdate frames) took 456 bytes, copied on every move between the codec, the channels and the
    // streams.
    config.boxed(".watchdog.v1.Frame.kind.request_head");
    config.boxed(".watchdog.v1.Frame.kind.response_head");
    tonic_prost_build::configure()
        .build_transport(false)
        .build_client(true)
        .build_server(true)
        // Smaller first message buffers than tonic's default (see the codec's comment).
        .codec_path("crate::ingress::grpc::codec::MessageCodec")
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
