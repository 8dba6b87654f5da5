//! Generates the protocol types from the repository's `proto/` with protox (pure Rust): no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const ROOT: &str = "../../proto";
    println!("cargo:rerun-if-changed={ROOT}");
    let files = [format!("{ROOT}/watchdog/v1/frame.proto"), format!("{ROOT}/watchdog/v1/envelope.proto")];
    let descriptors = protox::compile(files, [ROOT])?;
    // Every `bytes` field as `bytes::Bytes`: Data payloads decode as zero-copy slices of the read buffer.
    // The two heads boxed: a frame is as large as its largest kind, and most frames are small Data, End and
    // WindowUpdate frames moved several times on their way. Maps (a CloudEvent's attributes) as BTreeMap, as in
    // the watchdog: no name hashed as it is decoded.
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        .boxed(".watchdog.v1.Frame.kind.request_head")
        .boxed(".watchdog.v1.Frame.kind.response_head")
        .compile_fds(descriptors)?;
    Ok(())
}
