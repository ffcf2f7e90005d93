//! Shared helpers: locating (and if needed building) the test canisters.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use candid::Principal;
use local_ic::{Runtime, RuntimeConfig};

/// `$CARGO_TARGET_DIR`, or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

static BUILD: Mutex<()> = Mutex::new(());

/// The wasm of test canister `name` (crate `test-canister-<name>` under
/// integration-tests/canisters), built with the `canister` profile if it is
/// not there yet. `cargo test` does not hold the build lock while tests
/// run, so the nested build does not deadlock; tools/build-test-canisters.sh
/// builds them up front (CI does that to keep the output tidy).
pub fn wasm(name: &str) -> Vec<u8> {
    let path = target_dir()
        .join("wasm32-unknown-unknown/canister")
        .join(format!("{name}.wasm"));
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--profile",
                "canister",
                "--target",
                "wasm32-unknown-unknown",
                "-p",
                &format!("test-canister-{name}"),
                "--target-dir",
            ])
            .arg(target_dir())
            .status()
            .expect("run cargo to build a test canister");
        assert!(status.success(), "building test canister {name} failed");
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn controller() -> Principal {
    Principal::from_slice(&[0xC0, 0x17, 0x01])
}

pub fn user() -> Principal {
    Principal::from_slice(&[0x05, 0xE4])
}

pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default())
}
