//! Compiles the .proto files with protox (pure Rust), so no system `protoc`
//! is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/nas/v1/tables.proto",
        "proto/nas/v1/backup.proto",
        "proto/nas/v1/admin.proto",
        "proto/nas/v1/raft.proto",
        "proto/nas/v1/nas.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    // The descriptor set, served by gRPC reflection so that tools such as
    // grpcurl need no .proto files.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("nas_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        // Table rows and commands travel inside openraft entries, which are
        // serde-encoded (postcard) on the Raft transport.
        .type_attribute(".nas.v1", "#[derive(serde::Serialize, serde::Deserialize)]")
        // File data: sliced out of the receive buffer instead of copied.
        .bytes(".nas.v1.WriteChunk.data")
        .bytes(".nas.v1.ReadChunk.data")
        .compile_fds(fds)?;
    Ok(())
}
