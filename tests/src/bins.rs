//! Where the binaries under test and the model live.
//!
//! Binaries: `VITALS_AGENT_BIN` / `VITALS_WORKER_BIN` when set, else the cargo target folder
//! the test executable itself was built into (`target/debug/deps/e2e-…` →
//! `target/debug/vitals-agent`; a bench's `target/release/deps/footprint-…` →
//! `target/release/vitals-agent`). Cargo does not build a workspace's other binaries for an
//! integration test or a bench, so `make test` runs `cargo build --workspace --bins` first
//! and `make bench` builds what its benches run (and names the static agent it measures).
//! The model: `VITALS_MODEL_DIR` when set, else `models/all-MiniLM-L6-v2` at the repo root.

use std::path::{Path, PathBuf};

/// The agent binary.
pub fn agent_bin() -> PathBuf {
    locate("VITALS_AGENT_BIN", "vitals-agent")
}

/// The worker binary.
pub fn worker_bin() -> PathBuf {
    locate("VITALS_WORKER_BIN", "vitals-worker")
}

/// One of this crate's own binaries (`fake-vllm`, `soak-worker`), beside the executable
/// running (cargo builds a package's binaries for its integration tests), or from the
/// variable `VITALS_<NAME>_BIN` (`VITALS_SOAK_WORKER_BIN`).
pub fn e2e_bin(name: &str) -> PathBuf {
    let env = format!("VITALS_{}_BIN", name.to_uppercase().replace('-', "_"));
    locate(&env, name)
}

fn locate(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env}={} does not name a file; unset it to use the cargo target folder",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable knows its own path");
    let path = target_profile_dir(&exe).join(name);
    assert!(
        path.is_file(),
        "{name} is not built at {}: run `cargo build --workspace --bins` first, with \
         `--release` for a bench (`make test` and `make bench` do), or point {env} at the binary",
        path.display()
    );
    path
}

/// `target/debug/deps/x` → `target/debug`; `target/debug/x` → `target/debug`.
fn target_profile_dir(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The model folder the worker loads.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("VITALS_MODEL_DIR").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("models")
                .join("all-MiniLM-L6-v2")
        },
        PathBuf::from,
    );
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model at {}: run `make model` (or set VITALS_MODEL_DIR)",
        dir.display()
    );
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_profile_folder() {
        assert_eq!(
            target_profile_dir(Path::new("/w/target/debug/deps/e2e-0f3a")),
            Path::new("/w/target/debug")
        );
        assert_eq!(
            target_profile_dir(Path::new("/w/target/release/vitals_e2e")),
            Path::new("/w/target/release")
        );
    }
}
