//! One interface over the local runtime and, where available, PocketIC, so
//! integration tests can run the same scenario on both.
//!
//! [`backends`] always returns the local runtime. With the `pocket-ic` cargo
//! feature and `POCKET_IC_BIN` pointing at a PocketIC server binary it also
//! returns a PocketIC instance; otherwise it prints why PocketIC is skipped
//! (visible with `--nocapture` or on failure). The feature is off by default:
//! the `pocket-ic` crate pulls in an HTTP/async stack CI does not need.

use std::time::Duration;

use candid::Principal;

use crate::{Runtime, RuntimeConfig};

/// The operations integration tests need, on any IC implementation. Errors
/// are the implementation's error text.
pub trait Backend {
    /// "local-ic" or "pocket-ic".
    fn name(&self) -> &'static str;
    fn install(&mut self, wasm: &[u8], init_arg: Vec<u8>, controller: Principal) -> Result<Principal, String>;
    fn update(&mut self, id: Principal, caller: Principal, method: &str, arg: Vec<u8>) -> Result<Vec<u8>, String>;
    fn query(&mut self, id: Principal, caller: Principal, method: &str, arg: Vec<u8>) -> Result<Vec<u8>, String>;
    fn upgrade(&mut self, id: Principal, wasm: &[u8], arg: Vec<u8>, caller: Principal) -> Result<(), String>;
    /// Advances the clock and lets due timers run.
    fn advance_time(&mut self, d: Duration);
}

impl Backend for Runtime {
    fn name(&self) -> &'static str {
        "local-ic"
    }
    fn install(&mut self, wasm: &[u8], init_arg: Vec<u8>, controller: Principal) -> Result<Principal, String> {
        Runtime::install(self, wasm, init_arg, vec![controller]).map_err(|e| e.to_string())
    }
    fn update(&mut self, id: Principal, caller: Principal, method: &str, arg: Vec<u8>) -> Result<Vec<u8>, String> {
        Runtime::update(self, id, caller, method, arg)
            .map(|r| r.bytes)
            .map_err(|e| e.to_string())
    }
    fn query(&mut self, id: Principal, caller: Principal, method: &str, arg: Vec<u8>) -> Result<Vec<u8>, String> {
        Runtime::query(self, id, caller, method, arg)
            .map(|r| r.bytes)
            .map_err(|e| e.to_string())
    }
    fn upgrade(&mut self, id: Principal, wasm: &[u8], arg: Vec<u8>, caller: Principal) -> Result<(), String> {
        Runtime::upgrade(self, id, wasm, arg, caller)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn advance_time(&mut self, d: Duration) {
        Runtime::advance_time(self, d);
    }
}

#[cfg(feature = "pocket-ic")]
mod pocket {
    use super::*;
    use pocket_ic::PocketIc;

    /// PocketIC through the `pocket-ic` crate (server from `POCKET_IC_BIN`).
    pub struct PocketIcBackend(pub PocketIc);

    impl Backend for PocketIcBackend {
        fn name(&self) -> &'static str {
            "pocket-ic"
        }
        fn install(&mut self, wasm: &[u8], init_arg: Vec<u8>, controller: Principal) -> Result<Principal, String> {
            let id = self.0.create_canister_with_settings(Some(controller), None);
            self.0.add_cycles(id, 100_000_000_000_000);
            // pocket-ic panics on install failure; keep the signature honest.
            let pic = &self.0;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pic.install_canister(id, wasm.to_vec(), init_arg, Some(controller))
            }))
            .map_err(|_| "install_canister failed (see the panic above)".to_string())?;
            Ok(id)
        }
        fn update(&mut self, id: Principal, caller: Principal, method: &str, arg: Vec<u8>) -> Result<Vec<u8>, String> {
            self.0.update_call(id, caller, method, arg).map_err(|e| e.to_string())
        }
        fn query(&mut self, id: Principal, caller: Principal, method: &str, arg: Vec<u8>) -> Result<Vec<u8>, String> {
            self.0.query_call(id, caller, method, arg).map_err(|e| e.to_string())
        }
        fn upgrade(&mut self, id: Principal, wasm: &[u8], arg: Vec<u8>, caller: Principal) -> Result<(), String> {
            self.0
                .upgrade_canister(id, wasm.to_vec(), arg, Some(caller))
                .map_err(|e| e.to_string())
        }
        fn advance_time(&mut self, d: Duration) {
            self.0.advance_time(d);
            // Timers fire in rounds; a few ticks let self-calls and
            // callbacks complete.
            for _ in 0..5 {
                self.0.tick();
            }
        }
    }
}

#[cfg(feature = "pocket-ic")]
pub use pocket::PocketIcBackend;

/// The backends to run a scenario on: the local runtime, plus PocketIC when
/// it is compiled in and `POCKET_IC_BIN` is set. Prints a visible note when
/// PocketIC is skipped.
pub fn backends(config: RuntimeConfig) -> Vec<Box<dyn Backend>> {
    #[cfg_attr(not(feature = "pocket-ic"), allow(unused_mut))]
    let mut out: Vec<Box<dyn Backend>> = vec![Box::new(Runtime::new(config))];
    let bin = std::env::var_os("POCKET_IC_BIN");
    #[cfg(feature = "pocket-ic")]
    match bin {
        Some(_) => out.push(Box::new(PocketIcBackend(pocket_ic::PocketIc::new()))),
        None => eprintln!("PocketIC: skipped (POCKET_IC_BIN is not set)"),
    }
    #[cfg(not(feature = "pocket-ic"))]
    match bin {
        Some(path) => eprintln!(
            "PocketIC: skipped: POCKET_IC_BIN={} is set but local-ic was built without the \
             `pocket-ic` feature (cargo test -p local-ic --features pocket-ic)",
            path.to_string_lossy()
        ),
        None => eprintln!("PocketIC: skipped (POCKET_IC_BIN is not set; needs the `pocket-ic` feature too)"),
    }
    out
}
