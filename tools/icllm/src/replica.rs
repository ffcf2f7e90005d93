//! `icllm replica`: the local IC runtime behind the IC's HTTP interface,
//! for agents and tools (ic-agent, @dfinity/agent, dfx, icp-cli).

use anyhow::{Context, Result};
use local_ic::network::{Replica, ReplicaConfig};
use local_ic::MemoryCharges;
use std::net::{Ipv4Addr, SocketAddr};

#[derive(clap::Args)]
pub struct ReplicaArgs {
    /// Port on 127.0.0.1 (0: any free port; the URL is printed).
    #[arg(long, default_value_t = 4943)]
    port: u16,
    /// Print each message the runtime executes: canister, method, caller, instructions.
    #[arg(long)]
    log_messages: bool,
    /// Memory charges: dmt (mainnet's deterministic memory tracker) or legacy.
    #[arg(long, default_value = "dmt")]
    memory_charges: MemoryCharges,
}

pub fn run(args: ReplicaArgs) -> Result<()> {
    let mut config = ReplicaConfig {
        log_messages: args.log_messages,
        ..ReplicaConfig::default()
    };
    config.runtime.memory_charges = args.memory_charges;
    let replica = Replica::start(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)), config)
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    eprintln!("listening on {}", replica.url());
    eprintln!("root key: {}", icllm::remote::hex(replica.root_key()));
    replica.wait();
    Ok(())
}
