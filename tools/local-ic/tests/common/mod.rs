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

/// Canisters already brought up to date by this test process.
static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The wasm of test canister `name` (crate `test-canister-<name>` under
/// integration-tests/canisters), built with the `canister` profile. Cargo is
/// run once per canister and test process (a no-op when up to date, so a
/// stale wasm is never tested); `cargo test` does not hold the build lock
/// while tests run, so this nested build does not deadlock. Set
/// `LOCAL_IC_NO_BUILD=1` to use prebuilt files only
/// (tools/build-test-canisters.sh builds them all).
pub fn wasm(name: &str) -> Vec<u8> {
    let path = target_dir()
        .join("wasm32-unknown-unknown/canister")
        .join(format!("{name}.wasm"));
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let skip = std::env::var_os("LOCAL_IC_NO_BUILD").is_some() && path.exists();
    if !skip && !built.iter().any(|b| b == name) {
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
        built.push(name.to_string());
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn controller() -> Principal {
    Principal::from_slice(&[0xC0, 0x17, 0x01])
}

pub fn user() -> Principal {
    Principal::from_slice(&[0x05, 0xE4])
}

/// Runtime config of the tests: compiled modules are cached in the target
/// directory so repeated test runs skip Cranelift.
pub fn config() -> RuntimeConfig {
    RuntimeConfig {
        module_cache_dir: Some(target_dir().join("local-ic-module-cache")),
        ..RuntimeConfig::default()
    }
}

pub fn runtime() -> Runtime {
    Runtime::new(config())
}
