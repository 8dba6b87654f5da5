//! Generates the protocol types from the repository's `proto/` with protox (pure Rust): no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const ROOT: &str = "../../proto";
    println!("cargo:rerun-if-changed={ROOT}");
    let files = [format!("{ROOT}/watchdog/v1/frame.proto"), format!("{ROOT}/watchdog/v1/envelope.proto")];
    let descriptors = protox::compile(files, [ROOT])?;
    // Every `bytes` field as `bytes::Bytes`: Data payloads decode as zero-copy slices of the read buffer.
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
