//! The canister behind `icllm serve`: one thread owns the local runtime
//! (wasmtime stores are driven from one place) and runs the requests the
//! HTTP handlers send it, between scheduler rounds. The canister's clock
//! follows the wall clock: a due timer fires as soon as the wall clock
//! reaches it, one round at a time, so a round that takes longer than the
//! timer's interval makes the clock lag (as a busy subnet's rounds do)
//! rather than fire a backlog of rounds at once. After every round the
//! round counter ([`Backend::rounds`]) moves on, which is what streams wait for.

use super::remote;
use candid::Principal;
use icllm::local_canister::{controller, LocalCanister};
use icllm_api::{
    ApiError, ApiResult, ChatCompletionRequest, Completion, CompletionRequest, Health, JobId, JobStatus, JobView,
    ModelInfo,
};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Longest wait for a request while no timer is armed.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// A call the runtime failed to run (a trap, a limit): the server's fault, not the client's.
pub type Call<T> = Result<T, String>;

pub enum Start {
    Text(CompletionRequest),
    Chat(ChatCompletionRequest),
}

enum Command {
    Start(Principal, Box<Start>, oneshot::Sender<Call<ApiResult<Completion>>>),
    Get(Principal, JobId, oneshot::Sender<Call<ApiResult<Completion>>>),
    Poll(Principal, JobId, oneshot::Sender<Call<ApiResult<JobView>>>),
    Cancel(Principal, JobId),
    Info(oneshot::Sender<Call<(ModelInfo, Health)>>),
}

/// The canister the server fronts: the embedded one on its runtime thread,
/// or a deployed one reached over the network. Cheap to clone.
#[derive(Clone)]
pub struct Backend {
    target: Target,
    rounds: watch::Receiver<u64>,
}

#[derive(Clone)]
enum Target {
    Local(mpsc::Sender<Command>),
    Remote(Arc<remote::Remote>),
}

impl Backend {
    /// Moves `canister` to a thread of its own and drives it there.
    pub fn spawn(canister: LocalCanister) -> Backend {
        let (tx, rx) = mpsc::channel();
        let (rounds_tx, rounds) = watch::channel(0);
        std::thread::Builder::new()
            .name("icllm-canister".into())
            .spawn(move || drive(canister, rx, rounds_tx))
            .expect("spawning the canister thread");
        Backend {
            target: Target::Local(tx),
            rounds,
        }
    }

    /// A deployed canister (see [`remote::Remote`]); call within a tokio runtime.
    pub fn remote(remote: remote::Remote) -> Backend {
        let (rounds_tx, rounds) = watch::channel(0);
        // No rounds to watch from outside the subnet: poll at a steady pace.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(remote::POLL_INTERVAL);
            loop {
                tick.tick().await;
                if rounds_tx.is_closed() {
                    return;
                }
                rounds_tx.send_modify(|r| *r += 1);
            }
        });
        Backend {
            target: Target::Remote(Arc::new(remote)),
            rounds,
        }
    }

    /// Scheduler rounds run so far; `changed()` wakes after the next (for a
    /// remote canister: after the next polling interval).
    pub fn rounds(&self) -> watch::Receiver<u64> {
        self.rounds.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Call<T>>) -> Command) -> Call<T> {
        let Target::Local(tx_cmd) = &self.target else {
            unreachable!("only the local canister takes commands")
        };
        let (tx, rx) = oneshot::channel();
        tx_cmd
            .send(make(tx))
            .map_err(|_| "the canister thread has stopped".to_string())?;
        rx.await.map_err(|_| "the canister thread has stopped".to_string())?
    }

    pub async fn start(&self, caller: Principal, req: Start) -> Call<ApiResult<Completion>> {
        match &self.target {
            Target::Remote(r) => r.start(caller, req).await,
            Target::Local(_) => self.ask(|tx| Command::Start(caller, Box::new(req), tx)).await,
        }
    }

    pub async fn get(&self, caller: Principal, id: JobId) -> Call<ApiResult<Completion>> {
        match &self.target {
            Target::Remote(r) => r.get(caller, id).await,
            Target::Local(_) => self.ask(|tx| Command::Get(caller, id, tx)).await,
        }
    }

    pub async fn poll(&self, caller: Principal, id: JobId) -> Call<ApiResult<JobView>> {
        match &self.target {
            Target::Remote(r) => r.poll(caller, id).await,
            Target::Local(_) => self.ask(|tx| Command::Poll(caller, id, tx)).await,
        }
    }

    pub async fn info(&self) -> Call<(ModelInfo, Health)> {
        match &self.target {
            Target::Remote(r) => r.info().await,
            Target::Local(_) => self.ask(Command::Info).await,
        }
    }

    /// Cancels the job (fire and forget: from `Drop` of an abandoned request).
    pub fn cancel(&self, caller: Principal, id: JobId) {
        match &self.target {
            Target::Remote(r) => {
                let r = r.clone();
                tokio::spawn(async move { r.cancel(caller, id).await });
            }
            Target::Local(tx) => {
                let _ = tx.send(Command::Cancel(caller, id));
            }
        }
    }
}

fn err(e: local_ic::Error) -> String {
    format!("the canister call failed: {e}")
}

/// A start call's result: a request that `canister_inspect_message` drops
/// (as the IC would drop the ingress message) is outside the canister's
/// bounds, which is the client's error.
fn started(r: Result<(ApiResult<Completion>,), local_ic::Error>) -> Call<ApiResult<Completion>> {
    match r {
        Ok((r,)) => Ok(r),
        Err(local_ic::Error::Canister {
            reason: local_ic::ExecError::MessageRejected,
            ..
        }) => Ok(Err(ApiError::InvalidArgument(INGRESS_REFUSED.into()))),
        Err(e) => Err(err(e)),
    }
}

/// Why ingress was dropped: the bounds `inspect_message` checks.
pub(super) const INGRESS_REFUSED: &str =
    "the canister refused the request before running it: it is outside the canister's \
     bounds (at most 4 stop strings of 256 bytes each, 300 logit_bias entries, 256 bytes of user and model, \
     128 KiB of prompt or message text, 256 messages with roles of at most 64 bytes)";

fn run(c: &mut LocalCanister, cmd: Command) {
    match cmd {
        Command::Start(caller, start, reply) => {
            let r = match *start {
                Start::Text(req) => c.update(caller, "completions", (req,)),
                Start::Chat(req) => c.update(caller, "chat_completions", (req,)),
            };
            let _ = reply.send(started(r));
        }
        Command::Get(caller, id, reply) => {
            let r = c.query(caller, "get_completion", (id,)).map(|(r,)| r).map_err(err);
            let _ = reply.send(r);
        }
        Command::Poll(caller, id, reply) => {
            let _ = reply.send(c.poll(caller, id, 0).map_err(err));
        }
        Command::Cancel(caller, id) => {
            let _: Result<(ApiResult<JobStatus>,), _> = c.update(caller, "cancel", (id,));
        }
        Command::Info(reply) => {
            let info = c.query(controller(), "model_info", ()).map(|(i,)| i);
            let health = c.query(controller(), "health", ()).map(|(h,)| h);
            let _ = reply.send(info.and_then(|i| health.map(|h| (i, h))).map_err(err));
        }
    }
}

fn drive(mut c: LocalCanister, rx: mpsc::Receiver<Command>, rounds: watch::Sender<u64>) {
    let wall_start = Instant::now();
    let ic_start = c.rt.time_nanos();
    c.rt.clear_reports();
    loop {
        loop {
            match rx.try_recv() {
                Ok(cmd) => run(&mut c, cmd),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let wall = ic_start.saturating_add(wall_start.elapsed().as_nanos() as u64);
        let now = c.rt.time_nanos();
        let wait = match c.rt.global_timer(c.id).filter(|&t| t != 0) {
            Some(due) if due <= wall.max(now) => {
                c.rt.advance_time(Duration::from_nanos(due.saturating_sub(now)));
                c.rt.clear_reports();
                rounds.send_modify(|r| *r += 1);
                continue;
            }
            Some(due) => Duration::from_nanos(due - wall),
            None => {
                if wall > now {
                    c.rt.advance_time(Duration::from_nanos(wall - now));
                }
                IDLE_WAIT
            }
        };
        match rx.recv_timeout(wait) {
            Ok(cmd) => run(&mut c, cmd),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
