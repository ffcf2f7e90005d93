//! `icllm serve --canister-id ID --network N`: the server in front of a
//! deployed canister, through ic-agent. Each API key still has its own
//! jobs, quota and kept conversations: the key's caller principal is mapped
//! to an Ed25519 identity derived from the server's secret (the `--identity`
//! PEM's bytes, else random per process) and the key, so the canister sees
//! one principal per key, stable across restarts of the server.

use super::backend::{Call, Start, INGRESS_REFUSED};
use candid::Principal;
use ic_agent::identity::BasicIdentity;
use ic_agent::Agent;
use icllm::remote;
use icllm_api::{ApiError, ApiResult, Completion, Health, JobId, JobStatus, JobView, ModelInfo};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How often a waiting request or stream polls the canister.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

pub struct Remote {
    url: String,
    canister: Principal,
    secret: [u8; 32],
    root_key: Vec<u8>,
    /// The server's own agent (model info, health).
    own: Agent,
    agents: Mutex<HashMap<Principal, Agent>>,
}

impl Remote {
    pub async fn connect(
        url: String,
        canister: Principal,
        identity: Option<&std::path::Path>,
    ) -> anyhow::Result<Remote> {
        let secret: [u8; 32] = match identity {
            Some(path) => Sha256::digest(std::fs::read(path)?).into(),
            None => local_ic::network::keys::random_seed(),
        };
        let own = remote::connect(&url, remote::load_identity(identity)?).await?;
        let root_key = own.read_root_key();
        Ok(Remote {
            url,
            canister,
            secret,
            root_key,
            own,
            agents: Mutex::new(HashMap::new()),
        })
    }

    /// The agent that signs for `caller` (one per API key).
    fn agent(&self, caller: Principal) -> Call<Agent> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = agents.get(&caller) {
            return Ok(a.clone());
        }
        let seed: [u8; 32] = Sha256::new()
            .chain_update(self.secret)
            .chain_update(caller.as_slice())
            .finalize()
            .into();
        let agent = Agent::builder()
            .with_url(&self.url)
            .with_identity(BasicIdentity::from_raw_key(&seed))
            .build()
            .map_err(|e| format!("cannot create an agent: {e}"))?;
        agent.set_root_key(self.root_key.clone());
        agents.insert(caller, agent.clone());
        Ok(agent)
    }

    pub async fn start(&self, caller: Principal, req: Start) -> Call<ApiResult<Completion>> {
        let agent = self.agent(caller)?;
        let r: anyhow::Result<(ApiResult<Completion>,)> = match req {
            Start::Text(req) => remote::update(&agent, self.canister, "completions", (req,)).await,
            Start::Chat(req) => remote::update(&agent, self.canister, "chat_completions", (req,)).await,
        };
        match r {
            Ok((r,)) => Ok(r),
            // Dropped by canister_inspect_message: outside the canister's bounds.
            Err(e) if format!("{e:#}").contains("IC0406") => Ok(Err(ApiError::InvalidArgument(INGRESS_REFUSED.into()))),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    pub async fn get(&self, caller: Principal, id: JobId) -> Call<ApiResult<Completion>> {
        let agent = self.agent(caller)?;
        let r: anyhow::Result<(ApiResult<Completion>,)> =
            remote::query(&agent, self.canister, "get_completion", (id,)).await;
        r.map(|(r,)| r).map_err(|e| format!("{e:#}"))
    }

    pub async fn poll(&self, caller: Principal, id: JobId) -> Call<ApiResult<JobView>> {
        let agent = self.agent(caller)?;
        let r: anyhow::Result<(ApiResult<JobView>,)> =
            remote::query(&agent, self.canister, "poll", (id, Some(0u32))).await;
        r.map(|(r,)| r).map_err(|e| format!("{e:#}"))
    }

    pub async fn info(&self) -> Call<(ModelInfo, Health)> {
        let (info,): (ModelInfo,) = remote::query(&self.own, self.canister, "model_info", ())
            .await
            .map_err(|e| format!("{e:#}"))?;
        let (health,): (Health,) = remote::query(&self.own, self.canister, "health", ())
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok((info, health))
    }

    pub async fn cancel(&self, caller: Principal, id: JobId) {
        if let Ok(agent) = self.agent(caller) {
            let _: anyhow::Result<(ApiResult<JobStatus>,)> =
                remote::update(&agent, self.canister, "cancel", (id,)).await;
        }
    }
}
