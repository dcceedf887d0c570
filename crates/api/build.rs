//! Generates the gRPC code and the reflection descriptor set from `proto/`.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A protoc named in PROTOC wins. Otherwise the build uses the one vendored as a crate,
    // so that a fresh machine needs nothing outside the crate registry.
    if env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded, so nothing reads the environment
        // concurrently.
        unsafe { env::set_var("PROTOC", protoc) };
    }

    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos = [
        proto_root.join("order/v1/order.proto"),
        proto_root.join("order/v1/outbox_admin.proto"),
        proto_root.join("inventory/v1/inventory.proto"),
        proto_root.join("payment/v1/payment.proto"),
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    let descriptor_path = PathBuf::from(env::var("OUT_DIR")?).join("descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_protos(&protos, &[proto_root])?;
    Ok(())
}
