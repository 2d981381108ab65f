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

/// Where cargo unpacked `envoy-types`: in the registry cache, for the
/// version Cargo.lock names (a build has just unpacked it there); else, for
/// vendored or git sources, where `cargo metadata` says.
fn envoy_types_dir() -> PathBuf {
    if let Some(dir) = from_registry() {
        return dir;
    }
    from_metadata().unwrap_or_else(|why| {
        panic!("cannot find the envoy-types sources: not under $CARGO_HOME/registry/src, and cargo metadata failed ({why})")
    })
}

/// `cargo metadata`, offline (vendored and git sources are local) and for
/// the target only (other platforms' packages are never unpacked).
fn from_metadata() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let mut cmd = Command::new(cargo);
    cmd.args(["metadata", "--format-version", "1", "--offline"]);
    if let Ok(target) = std::env::var("TARGET") {
        cmd.args(["--filter-platform", &target]);
    }
    let output = cmd
        .current_dir(&manifest_dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(err.lines().next().unwrap_or("").to_owned());
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    let manifest = meta["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "envoy-types"))
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("envoy-types is not in the metadata")?;
    PathBuf::from(manifest)
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| "manifest has no parent directory".into())
}

/// `$CARGO_HOME/registry/src/*/envoy-types-<version locked in Cargo.lock>`.
fn from_registry() -> Option<PathBuf> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?);
    let lock = std::fs::read_to_string(manifest_dir.join("Cargo.lock")).ok()?;
    let version = regex::Regex::new(r#"name = "envoy-types"\nversion = "([^"]+)""#)
        .ok()?
        .captures(&lock)?
        .get(1)?
        .as_str()
        .to_owned();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .filter_map(Result::ok)
        .map(|index| index.path().join(format!("envoy-types-{version}")))
        .find(|dir| dir.join("src/generated/types.bin").exists())
}
