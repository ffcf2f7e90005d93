//! The same scenario on every available backend (local-ic always; PocketIC
//! with `--features pocket-ic` and `POCKET_IC_BIN`).

mod common;

use std::time::Duration;

use candid::{Decode, Encode};
use common::{controller, user, wasm};
use local_ic::backend::backends;

#[test]
fn counter_and_timers_on_every_backend() {
    for mut ic in backends(common::config()) {
        let name = ic.name();
        let id = ic
            .install(&wasm("counter"), Encode!(&3u64).unwrap(), controller())
            .unwrap();
        let v = ic.update(id, user(), "increment", Encode!().unwrap()).unwrap();
        assert_eq!(Decode!(&v, u64).unwrap(), 4, "{name}");
        let err = ic
            .update(id, user(), "increment_then_trap", Encode!().unwrap())
            .unwrap_err();
        assert!(err.contains("boom after mutating"), "{name}: {err}");
        let v = ic.query(id, user(), "get", Encode!().unwrap()).unwrap();
        assert_eq!(Decode!(&v, u64).unwrap(), 4, "{name}: trap rolled back");
        ic.upgrade(id, &wasm("counter"), Encode!().unwrap(), controller())
            .unwrap();
        let v = ic.query(id, user(), "get_stable", Encode!().unwrap()).unwrap();
        assert_eq!(Decode!(&v, u64).unwrap(), 4, "{name}: stable kept");

        let t = ic.install(&wasm("timers"), vec![], controller()).unwrap();
        ic.update(t, user(), "start_chain", Encode!(&3u64, &1u64, &10u32).unwrap())
            .unwrap();
        for _ in 0..3 {
            ic.advance_time(Duration::from_secs(2));
        }
        let fired = ic.query(t, user(), "fired", Encode!().unwrap()).unwrap();
        assert_eq!(Decode!(&fired, Vec<u64>).unwrap(), vec![0, 1, 2], "{name}");
    }
}
