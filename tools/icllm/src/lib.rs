//! Library side of the `icllm` tool: the local-canister driver shared by the
//! CLI subcommands and the integration tests.

pub mod local_canister;
pub mod local_sharded;
pub mod remote;
