//! Extracts the file descriptors of Envoy's ext_authz v3 API (and what it
//! imports) from the descriptor set that the `envoy-types` crate ships, for
//! gRPC reflection. Nothing is copied into this repository: the source is the
//! dependency itself, found through `cargo metadata`.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

const ROOT: &str = "envoy/service/auth/v3/external_auth.proto";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let dir = envoy_types_dir();
    let bin = dir.join("src/generated/types.bin");
    let bytes =
        std::fs::read(&bin).unwrap_or_else(|e| panic!("cannot read {}: {e}", bin.display()));
    let set = FileDescriptorSet::decode(bytes.as_slice())
        .expect("envoy-types ships a valid descriptor set");
    let by_name: HashMap<&str, &FileDescriptorProto> =
        set.file.iter().map(|f| (f.name(), f)).collect();
    // Transitive imports of the root, dependencies first.
    let mut ordered: Vec<FileDescriptorProto> = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        by_name: &HashMap<&str, &FileDescriptorProto>,
        seen: &mut BTreeSet<String>,
        ordered: &mut Vec<FileDescriptorProto>,
    ) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        let Some(file) = by_name.get(name) else {
            return;
        };
        for dep in &file.dependency {
            visit(dep, by_name, seen, ordered);
        }
        let mut file = (*file).clone();
        file.source_code_info = None;
        ordered.push(file);
    }
    visit(ROOT, &by_name, &mut seen, &mut ordered);
    assert!(
        ordered.iter().any(|f| f.name() == ROOT),
        "{ROOT} not found in envoy-types' descriptor set"
    );
    let filtered = FileDescriptorSet { file: ordered };
    std::fs::write(
        out.join("ext_authz_descriptors.bin"),
        filtered.encode_to_vec(),
    )
    .expect("OUT_DIR is writable");
}

/// Where cargo unpacked `envoy-types` (registry, vendor dir or git checkout).
fn envoy_types_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(&manifest_dir)
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("packages array");
    let manifest = packages
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types is a dependency");
    PathBuf::from(manifest)
        .parent()
        .expect("manifest has a parent directory")
        .to_path_buf()
}
