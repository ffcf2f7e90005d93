//! Cycles: what the replica charges a canister for its messages, and the
//! freezing threshold below which its balance may not fall.
//!
//! Fees of an application subnet of the reference size (13 nodes), from
//! dfinity/ic `rs/config/src/subnet_config.rs`,
//! `CyclesAccountManagerConfig::application_subnet`:
//! `update_message_execution_fee` 5 M, `ten_update_instructions_execution_fee`
//! 10 (wasm32) and `ten_update_instructions_execution_fee_wasm64` 20
//! (`WASM64_INSTRUCTION_COST_OVERHEAD` 2 × 10; `rs/cycles_account_manager`,
//! `convert_instructions_to_cycles(n, WasmExecutionMode)`: a wasm64
//! instruction costs twice a wasm32 one, the fixed fee is the same),
//! `ingress_message_reception_fee` 1.2 M,
//! `ingress_byte_reception_fee` 2,000, `gib_storage_per_second_fee` 317,500
//! ("10 SDR per GiB per year") and `base_per_second_fee` 10,000. The
//! default freezing threshold is 30 days (`canister_settings` in the IC
//! interface specification).
//!
//! Deviations: every update-type message (update, timer, callback, cleanup)
//! pays its execution fee and instructions once it has run, where the
//! replica prepays the limit's worth and refunds the rest (the balance
//! after the message is the same); a message only runs if the liquid
//! balance covers that prepayment, as on the IC. A call pays
//! [`call_cost`] when it is made (the replica also prepays the response's
//! execution and refunds what is left of it); the cycles it carries move
//! from caller to callee as far as the callee accepts them, the rest come
//! back with the response. Install and upgrade fees are not charged, and
//! idle storage is not charged over time: it only sets the freezing
//! threshold.

use crate::types::WasmExecutionMode;

/// Charged for every executed update-type message.
pub const UPDATE_MESSAGE_EXECUTION_FEE: u128 = 5_000_000;
/// Cycles per ten wasm32 instructions.
pub const TEN_UPDATE_INSTRUCTIONS_EXECUTION_FEE: u128 = 10;
/// What a wasm64 instruction costs in wasm32 instructions' cycles
/// (`rs/config/src/subnet_config.rs`).
pub const WASM64_INSTRUCTION_COST_OVERHEAD: u128 = 2;
/// Cycles per ten wasm64 instructions.
pub const TEN_UPDATE_INSTRUCTIONS_EXECUTION_FEE_WASM64: u128 =
    TEN_UPDATE_INSTRUCTIONS_EXECUTION_FEE * WASM64_INSTRUCTION_COST_OVERHEAD;
/// Charged when an ingress message is inducted, plus per byte.
pub const INGRESS_MESSAGE_RECEPTION_FEE: u128 = 1_200_000;
pub const INGRESS_BYTE_RECEPTION_FEE: u128 = 2_000;
/// Storage: cycles per GiB per second, and a base per canister per second.
pub const GIB_STORAGE_PER_SECOND_FEE: u128 = 317_500;
pub const BASE_PER_SECOND_FEE: u128 = 10_000;
/// The default freezing threshold, in seconds (30 days).
pub const DEFAULT_FREEZING_THRESHOLD_SECONDS: u64 = 30 * 24 * 3600;

/// Charged for every inter-canister call, plus per byte of method name and
/// argument (`xnet_call_fee`, `xnet_byte_transmission_fee`).
pub const XNET_CALL_FEE: u128 = 260_000;
pub const XNET_BYTE_TRANSMISSION_FEE: u128 = 1_000;

const GIB: u128 = 1 << 30;

/// What a call with `bytes` of method name and argument costs its caller
/// (`ic0.cost_call`), besides the cycles it carries.
pub fn call_cost(bytes: usize) -> u128 {
    XNET_CALL_FEE + bytes as u128 * XNET_BYTE_TRANSMISSION_FEE
}

/// What executing `instructions` in one update-type message of a wasm32
/// canister costs.
pub fn execution_cost(instructions: u64) -> u128 {
    execution_cost_in(WasmExecutionMode::Wasm32, instructions)
}

/// What executing `instructions` in one update-type message of a canister
/// of `mode` costs: the fixed fee plus the instructions at the mode's rate.
pub fn execution_cost_in(mode: WasmExecutionMode, instructions: u64) -> u128 {
    UPDATE_MESSAGE_EXECUTION_FEE + instructions_cost(mode, instructions)
}

/// The instructions' part of [`execution_cost_in`]
/// (`convert_instructions_to_cycles`).
pub fn instructions_cost(mode: WasmExecutionMode, instructions: u64) -> u128 {
    let ten_fee = match mode {
        WasmExecutionMode::Wasm32 => TEN_UPDATE_INSTRUCTIONS_EXECUTION_FEE,
        WasmExecutionMode::Wasm64 => TEN_UPDATE_INSTRUCTIONS_EXECUTION_FEE_WASM64,
    };
    instructions as u128 * ten_fee / 10
}

/// What inducting an ingress message of `bytes` (method name and argument) costs.
pub fn ingress_induction_cost(bytes: usize) -> u128 {
    INGRESS_MESSAGE_RECEPTION_FEE + bytes as u128 * INGRESS_BYTE_RECEPTION_FEE
}

/// Cycles an idle canister of `memory_bytes` (heap and stable) burns per second.
pub fn idle_cycles_per_second(memory_bytes: u64) -> u128 {
    memory_bytes as u128 * GIB_STORAGE_PER_SECOND_FEE / GIB + BASE_PER_SECOND_FEE
}

/// The balance a canister must keep: what it would burn idle for the
/// freezing threshold.
pub fn freezing_reserve(memory_bytes: u64, threshold_seconds: u64) -> u128 {
    idle_cycles_per_second(memory_bytes) * threshold_seconds as u128
}

/// The balance above the freezing reserve (`canister_liquid_cycle_balance128`).
pub fn liquid(balance: u128, reserve: u128) -> u128 {
    balance.saturating_sub(reserve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fees_by_the_replica_s_table() {
        assert_eq!(execution_cost(40_000_000_000), 40_005_000_000);
        let wasm64 = WasmExecutionMode::Wasm64;
        assert_eq!(execution_cost_in(wasm64, 40_000_000_000), 80_005_000_000);
        assert_eq!(execution_cost_in(wasm64, 7), 5_000_014, "the fixed fee is not doubled");
        assert_eq!(ingress_induction_cost(100), 1_400_000);
        // 1 GiB for 30 days: 317,500 × 2,592,000 + the base fee's 25.9 B.
        assert_eq!(
            freezing_reserve(1 << 30, DEFAULT_FREEZING_THRESHOLD_SECONDS),
            848_880_000_000
        );
        assert_eq!(liquid(10, 20), 0);
        assert_eq!(liquid(30, 20), 10);
    }
}
