//! The IC's HTTP interface over the local runtime: what `icllm replica`
//! serves, so that agents nobody here wrote (ic-agent, @dfinity/agent,
//! dfx, icp-cli) can deploy and call canisters as on a real network.
//!
//! * `GET /api/v2/status`: CBOR, with the root key.
//! * `POST /api/{v2,v3,v4}/canister/<id>/call`: v3/v4 answer synchronously
//!   with a certificate; v2 answers 202 and the reply is read with
//!   `read_state`. Also `/api/{v3,v4}/subnet/<id>/call` (canister creation).
//! * `POST /api/{v2,v3}/canister/<id>/query`: replies signed by the node key.
//! * `POST /api/{v2,v3}/canister/<id>/read_state` and
//!   `/api/{v2,v3}/subnet/<id>/read_state`: `time`, `request_status`,
//!   `subnet`, `canister_ranges`, `canister/<id>/{module_hash,controllers,metadata}`.
//! * Anything else: the `raw` HTTP gateway ([`gateway`]), e.g.
//!   `http://<canister-id>.raw.localhost:<port>/health`.
//!
//! Every request is authenticated ([`envelope`]): request id, sender
//! signature (Ed25519, secp256k1, delegations, anonymous) and ingress
//! expiry; refusals are HTTP 400 with the replica's wording. Certificates
//! are hash trees ([`hash_tree`]) signed by the subnet's BLS12-381 key
//! ([`keys`]). The management canister is in [`management`].
//!
//! One thread owns the [`Runtime`]: HTTP handlers send it closures, and
//! between them it follows the wall clock, firing due timers one round at
//! a time, so timers run in real time while calls interleave.
//!
//! Deviations: one node; no query statistics or cycles accounting beyond
//! the runtime's; `stop_canister` answers at once (the canister may still
//! be stopping, as `canister_status` shows) where the replica answers once
//! it is stopped; state lives in memory only (a restart starts empty).

pub mod envelope;
mod gateway;
pub mod hash_tree;
pub mod keys;
mod management;
pub mod request_id;

use crate::{CanisterStatus, Error, ExecError, MessageKind, RejectCode, Runtime, RuntimeConfig};
use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use candid::Principal;
use ciborium::Value;
use envelope::{authenticate, Envelope, Refusal, Request};
use hash_tree::StateTree;
use keys::ReplicaKeys;
use request_id::{hash_map, leb128};
use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The CBOR self-describe tag the IC puts on its messages.
const SELF_DESCRIBE: u64 = 55799;
/// How long a request's status stays readable after its expiry.
const STATUS_KEPT_NANOS: u64 = 5 * 60 * 1_000_000_000;

pub fn wall_clock_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Replied(Vec<u8>),
    Rejected {
        code: u8,
        message: String,
        error_code: String,
    },
}

/// The IC's reject code and error code for a runtime error.
pub(crate) fn outcome_of_error(e: &Error) -> Outcome {
    let (code, error_code) = match e {
        Error::Canister { reason, .. } => (
            RejectCode::CanisterError as u8,
            match reason {
                ExecError::InstructionLimitExceeded(_) | ExecError::SliceOverrun { .. } => "IC0522",
                ExecError::CalledTrap(_) => "IC0503",
                ExecError::Trapped(_) => "IC0502",
                ExecError::MethodNotFound { .. } => "IC0536",
                ExecError::ContractViolation(_) => "IC0504",
                ExecError::InvalidWasm(_) => "IC0505",
                ExecError::MessageRejected => "IC0406",
                ExecError::FunctionNotFound(..) => "IC0502",
                ExecError::Internal(_) => "IC0502",
            },
        ),
        Error::Rejected { code, .. } => (
            *code as u8,
            match code {
                RejectCode::CanisterReject => "IC0406",
                RejectCode::SysTransient => "IC0207",
                RejectCode::DestinationInvalid => "IC0301",
                _ => "IC0503",
            },
        ),
        Error::NoResponse(_) => (RejectCode::CanisterError as u8, "IC0506"),
        Error::CanisterNotFound(_) => (RejectCode::DestinationInvalid as u8, "IC0301"),
        Error::Unsupported(_) => (RejectCode::CanisterError as u8, "IC0504"),
    };
    let message = match e {
        Error::Rejected { message, .. } => message.clone(),
        other => other.to_string(),
    };
    Outcome::Rejected {
        code,
        message,
        error_code: error_code.into(),
    }
}

/// What the management canister keeps about a canister, code or not.
pub struct CanisterRecord {
    controllers: Vec<Principal>,
    /// Balance while the canister holds no code (the runtime's otherwise).
    cycles: u128,
    freezing_threshold: u64,
    module_hash: Option<[u8; 32]>,
    module_size: usize,
    metadata: BTreeMap<String, Vec<u8>>,
    /// Set by `stop_canister`, cleared by `start_canister`; while the
    /// canister holds code the runtime tracks stopping → stopped.
    stopped: bool,
    chunks: BTreeMap<[u8; 32], Vec<u8>>,
}

struct RequestRecord {
    sender: Principal,
    expiry: u64,
    outcome: Outcome,
}

/// Everything the runtime thread owns.
pub struct State {
    rt: Runtime,
    canisters: BTreeMap<Principal, CanisterRecord>,
    requests: HashMap<[u8; 32], RequestRecord>,
    default_cycles: u128,
    log_messages: bool,
}

impl State {
    fn follow_clock(&mut self) {
        self.rt.set_time_nanos(wall_clock_nanos());
        let reports = self.rt.tick();
        self.log(&reports);
    }

    fn log(&self, reports: &[crate::MessageReport]) {
        if !self.log_messages {
            return;
        }
        for r in reports {
            eprintln!(
                "local-ic: {} {:?} {} by {}: {} instructions{}",
                r.canister,
                r.kind,
                r.method,
                r.caller,
                r.instructions,
                r.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
    }

    /// Runs an ingress call; `None` for a refusal the IC does not certify
    /// (`canister_inspect_message` said no or trapped).
    fn call(&mut self, env: &Envelope, canister_id: Principal, method: &str, arg: Vec<u8>) -> (Outcome, bool) {
        if let Some(done) = self.requests.get(&env.request_id) {
            return (done.outcome.clone(), true);
        }
        self.rt.set_time_nanos(wall_clock_nanos());
        let outcome = if canister_id == Principal::management_canister() {
            management::call(self, env.sender, method, &arg)
        } else if let Some(refused) = self.refusal(canister_id) {
            refused
        } else {
            match self.canisters.get(&canister_id) {
                None => Outcome::Rejected {
                    code: 3,
                    message: format!("Canister {canister_id} not found"),
                    error_code: "IC0301".into(),
                },
                Some(r) if r.module_hash.is_none() => Outcome::Rejected {
                    code: 5,
                    message: format!(
                        "Error from Canister {canister_id}: Attempted to execute a message, but the canister contains no Wasm module."
                    ),
                    error_code: "IC0537".into(),
                },
                Some(_) => {
                    let start = self.rt.reports().len();
                    let result = self.rt.update(canister_id, env.sender, method, arg);
                    self.log(&self.rt.reports()[start.min(self.rt.reports().len())..]);
                    match result {
                        Ok(reply) => Outcome::Replied(reply.bytes),
                        Err(e) if e.report().is_some_and(|r| r.kind == MessageKind::InspectMessage) => {
                            return (outcome_of_error(&e), false);
                        }
                        Err(e) => outcome_of_error(&e),
                    }
                }
            }
        };
        self.prune_requests();
        self.requests.insert(
            env.request_id,
            RequestRecord {
                sender: env.sender,
                expiry: env.ingress_expiry,
                outcome: outcome.clone(),
            },
        );
        (outcome, true)
    }

    /// The canister's run status: the runtime's while it holds code (it
    /// sees open call contexts close), the management record's otherwise.
    fn status(&self, id: Principal) -> CanisterStatus {
        match (self.rt.canister_status(id), self.canisters.get(&id)) {
            (Some(status), _) => status,
            (None, Some(r)) if r.stopped => CanisterStatus::Stopped,
            _ => CanisterStatus::Running,
        }
    }

    /// How the replica refuses a message to a canister that is not running.
    fn refusal(&self, id: Principal) -> Option<Outcome> {
        let (state, error_code) = match self.status(id) {
            CanisterStatus::Running => return None,
            CanisterStatus::Stopping => ("stopping", "IC0509"),
            CanisterStatus::Stopped => ("stopped", "IC0508"),
        };
        Some(Outcome::Rejected {
            code: 5,
            message: format!("Canister {id} is {state} and therefore does not have a CallContextManager"),
            error_code: error_code.into(),
        })
    }

    /// A call from the HTTP gateway: anonymous, a query unless `update`.
    fn gateway_call(&mut self, canister: Principal, method: &str, arg: Vec<u8>, update: bool) -> Outcome {
        self.rt.set_time_nanos(wall_clock_nanos());
        if self.canisters.get(&canister).is_none_or(|r| r.module_hash.is_none()) || self.refusal(canister).is_some() {
            return Outcome::Rejected {
                code: 3,
                message: format!("Canister {canister} not found, stopped, or empty"),
                error_code: "IC0301".into(),
            };
        }
        let result = if update {
            self.rt.update(canister, Principal::anonymous(), method, arg)
        } else {
            self.rt.query(canister, Principal::anonymous(), method, arg)
        };
        match result {
            Ok(reply) => Outcome::Replied(reply.bytes),
            Err(e) => outcome_of_error(&e),
        }
    }

    fn prune_requests(&mut self) {
        let now = wall_clock_nanos();
        self.requests
            .retain(|_, r| r.expiry.saturating_add(STATUS_KEPT_NANOS) > now);
    }

    fn query(&mut self, env: &Envelope, canister_id: Principal, method: &str, arg: Vec<u8>) -> Outcome {
        self.rt.set_time_nanos(wall_clock_nanos());
        if let Some(refused) = self.refusal(canister_id) {
            return refused;
        }
        match self.canisters.get(&canister_id) {
            None => Outcome::Rejected {
                code: 3,
                message: format!("Canister {canister_id} not found"),
                error_code: "IC0301".into(),
            },
            Some(_) => match self.rt.query(canister_id, env.sender, method, arg) {
                Ok(reply) => Outcome::Replied(reply.bytes),
                Err(e) => outcome_of_error(&e),
            },
        }
    }

    /// The state tree for a `read_state` request at `effective` (a
    /// canister id, or the subnet for subnet-scoped reads).
    fn read_state(
        &self,
        env: &Envelope,
        paths: &[Vec<Vec<u8>>],
        effective: Principal,
        keys: &ReplicaKeys,
    ) -> Result<StateTree, Refusal> {
        let refuse = |status: u16, message: String| Refusal { status, message };
        let mut tree = StateTree::default();
        let mut asked_request: Option<&[u8]> = None;
        for path in paths {
            let label = |i: usize| path.get(i).map(|l| l.as_slice());
            match label(0) {
                Some(b"time") if path.len() == 1 => {}
                Some(b"request_status") => {
                    let Some(rid) = label(1) else {
                        return Err(refuse(
                            400,
                            "Invalid path requested: request_status needs a request id".into(),
                        ));
                    };
                    if asked_request.is_some_and(|r| r != rid) {
                        return Err(refuse(
                            400,
                            "Can only request a single request ID in request_status paths".into(),
                        ));
                    }
                    asked_request = Some(rid);
                    let Some(record) = <[u8; 32]>::try_from(rid).ok().and_then(|r| self.requests.get(&r)) else {
                        tree.insert_subtree(&[b"request_status"]);
                        continue;
                    };
                    if record.sender != env.sender {
                        return Err(refuse(
                            403,
                            "Request IDs must be for requests signed by the caller.".into(),
                        ));
                    }
                    insert_request_status(&mut tree, rid, &record.outcome);
                }
                Some(b"subnet") | Some(b"canister_ranges") => insert_subnet(&mut tree, keys),
                Some(b"api_boundary_nodes") => tree.insert_subtree(&[b"api_boundary_nodes"]),
                Some(b"canister") => {
                    let (Some(id), Some(what)) = (label(1), label(2)) else {
                        return Err(refuse(400, "Invalid path requested: canister/<id>/<field>".into()));
                    };
                    if id != effective.as_slice() {
                        return Err(refuse(
                            400,
                            "Effective principal id in URL does not match requested principal id".into(),
                        ));
                    }
                    let Ok(cid) = Principal::try_from_slice(id) else {
                        return Err(refuse(400, "Invalid canister id in path".into()));
                    };
                    let Some(record) = self.canisters.get(&cid) else {
                        continue;
                    };
                    match what {
                        b"module_hash" => {
                            if let Some(h) = record.module_hash {
                                tree.insert(&[b"canister", id, b"module_hash"], h.to_vec());
                            }
                        }
                        b"controllers" => {
                            let list = record
                                .controllers
                                .iter()
                                .map(|c| Value::Bytes(c.as_slice().to_vec()))
                                .collect();
                            tree.insert(&[b"canister", id, b"controllers"], cbor(&Value::Array(list)));
                        }
                        b"metadata" => {
                            let Some(name) = label(3) else {
                                return Err(refuse(
                                    400,
                                    "Invalid path requested: canister/<id>/metadata/<name>".into(),
                                ));
                            };
                            let name_str = String::from_utf8_lossy(name);
                            if let Some(data) = record.metadata.get(name_str.as_ref()) {
                                tree.insert(&[b"canister", id, b"metadata", name], data.clone());
                            }
                        }
                        _ => return Err(refuse(404, "Invalid path requested.".into())),
                    }
                }
                _ => return Err(refuse(404, "Invalid path requested.".into())),
            }
        }
        tree.insert(&[b"time"], leb128(u128::from(wall_clock_nanos())));
        Ok(tree)
    }
}

fn insert_request_status(tree: &mut StateTree, rid: &[u8], outcome: &Outcome) {
    let base: [&[u8]; 2] = [b"request_status", rid];
    let at = |field: &'static [u8]| [base[0], base[1], field];
    match outcome {
        Outcome::Replied(bytes) => {
            tree.insert(&at(b"status"), b"replied".to_vec());
            tree.insert(&at(b"reply"), bytes.clone());
        }
        Outcome::Rejected {
            code,
            message,
            error_code,
        } => {
            tree.insert(&at(b"status"), b"rejected".to_vec());
            tree.insert(&at(b"reject_code"), leb128(u128::from(*code)));
            tree.insert(&at(b"reject_message"), message.as_bytes().to_vec());
            tree.insert(&at(b"error_code"), error_code.as_bytes().to_vec());
        }
    }
}

/// The one subnet: its key, its node and the canister id range it hosts.
fn insert_subnet(tree: &mut StateTree, keys: &ReplicaKeys) {
    let subnet = keys.subnet_id();
    let node = keys.node_id();
    let low = crate::canister_id(0);
    let high = crate::canister_id((1 << 20) - 1);
    let ranges = cbor(&Value::Array(vec![Value::Array(vec![
        Value::Bytes(low.as_slice().to_vec()),
        Value::Bytes(high.as_slice().to_vec()),
    ])]));
    let s = subnet.as_slice();
    tree.insert(&[b"subnet", s, b"public_key"], keys.root_key_der().to_vec());
    tree.insert(&[b"subnet", s, b"canister_ranges"], ranges.clone());
    tree.insert(&[b"subnet", s, b"type"], b"application".to_vec());
    tree.insert(
        &[b"subnet", s, b"node", node.as_slice(), b"public_key"],
        keys.node_key_der().to_vec(),
    );
    tree.insert(&[b"canister_ranges", s, low.as_slice()], ranges);
}

fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(&Value::Tag(SELF_DESCRIBE, Box::new(value.clone())), &mut out)
        .expect("CBOR encodes to memory");
    out
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

type Command = Box<dyn FnOnce(&mut State) + Send>;

struct Shared {
    keys: ReplicaKeys,
    commands: mpsc::Sender<Command>,
}

impl Shared {
    async fn exec<R: Send + 'static>(&self, f: impl FnOnce(&mut State) -> R + Send + 'static) -> R {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Box::new(move |state| {
                let _ = tx.send(f(state));
            }))
            .expect("the runtime thread outlives the server");
        rx.await.expect("the runtime thread answers every command")
    }

    fn certificate(&self, tree: &StateTree) -> Vec<u8> {
        let tree = tree.to_hash_tree();
        let signature = self.keys.sign_state_root(&tree.digest());
        cbor(&Value::Map(vec![
            (text("tree"), tree.to_cbor()),
            (text("signature"), Value::Bytes(signature)),
        ]))
    }
}

/// How to start a replica.
#[derive(Clone)]
pub struct ReplicaConfig {
    pub runtime: RuntimeConfig,
    /// Seed of the subnet and node keys (random if `None`).
    pub key_seed: Option<[u8; 32]>,
    /// Print every message the runtime runs (method, caller, instructions).
    pub log_messages: bool,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            runtime: RuntimeConfig {
                start_time_nanos: wall_clock_nanos(),
                ..RuntimeConfig::default()
            },
            key_seed: None,
            log_messages: false,
        }
    }
}

/// A running replica: the HTTP server and the runtime thread. Dropping it
/// stops both.
pub struct Replica {
    url: String,
    root_key: Vec<u8>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    /// Binds `addr` (port 0 picks a free one) and starts serving.
    pub fn start(addr: std::net::SocketAddr, config: ReplicaConfig) -> std::io::Result<Replica> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let keys = ReplicaKeys::from_seed(config.key_seed.unwrap_or_else(keys::random_seed));
        let root_key = keys.root_key_der().to_vec();
        let (commands, inbox) = mpsc::channel::<Command>();
        let runtime_config = config.runtime.clone();
        let log_messages = config.log_messages;
        std::thread::Builder::new()
            .name("local-ic runtime".into())
            .spawn(move || {
                let mut state = State {
                    default_cycles: runtime_config.initial_cycles,
                    rt: Runtime::new(runtime_config),
                    canisters: BTreeMap::new(),
                    requests: HashMap::new(),
                    log_messages,
                };
                loop {
                    match inbox.recv_timeout(Duration::from_millis(20)) {
                        Ok(command) => command(&mut state),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    state.follow_clock();
                }
            })?;
        let shared = Arc::new(Shared { keys, commands });
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let app = router(shared);
        let server = std::thread::Builder::new()
            .name("local-ic http".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime starts");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener converts");
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stop.await;
                        })
                        .await;
                });
            })?;
        Ok(Replica {
            url,
            root_key,
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The DER root key certificates verify under.
    pub fn root_key(&self) -> &[u8] {
        &self.root_key
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v2/status", get(status))
        .route("/api/{version}/canister/{id}/call", post(call))
        .route("/api/{version}/subnet/{id}/call", post(call))
        .route("/api/{version}/canister/{id}/query", post(query))
        .route("/api/{version}/canister/{id}/read_state", post(read_state))
        .route("/api/{version}/subnet/{id}/read_state", post(read_state))
        .fallback({
            let shared = shared.clone();
            move |method, uri, headers, body| gateway::serve(shared.clone(), method, uri, headers, body)
        })
        .layer(axum::extract::DefaultBodyLimit::max(4 << 20))
        .with_state(shared)
}

fn cbor_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/cbor")], body).into_response()
}

fn refusal(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, [(header::CONTENT_TYPE, "text/plain")], r.message).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    refusal(Refusal {
        status: 400,
        message: message.into(),
    })
}

/// The checks every endpoint makes before anything runs: a known API
/// version, an effective id, an authentic and unexpired envelope.
fn admit(version: &str, allowed: &[&str], id: &str, body: &[u8]) -> Result<(Principal, Envelope), Refusal> {
    if !allowed.contains(&version) {
        return Err(Refusal {
            status: 404,
            message: format!("unknown API version {version}"),
        });
    }
    let effective = Principal::from_text(id).map_err(|e| Refusal {
        status: 400,
        message: format!("Invalid effective id {id}: {e}"),
    })?;
    let env = authenticate(body, wall_clock_nanos())?;
    Ok((effective, env))
}

async fn status(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let body = cbor(&Value::Map(vec![
        (text("ic_api_version"), text("0.18.0")),
        (
            text("impl_version"),
            text(concat!("local-ic ", env!("CARGO_PKG_VERSION"))),
        ),
        (text("root_key"), Value::Bytes(shared.keys.root_key_der().to_vec())),
        (text("replica_health_status"), text("healthy")),
    ]));
    cbor_response(StatusCode::OK, body)
}

async fn call(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (effective, env) = match admit(&version, &["v2", "v3", "v4"], &id, &body) {
        Ok(admitted) => admitted,
        Err(r) => return refusal(r),
    };
    let Request::Call {
        canister_id,
        method_name,
        arg,
    } = env.request.clone()
    else {
        return bad_request("Expected a call request on the call endpoint");
    };
    if canister_id != Principal::management_canister() && canister_id != effective {
        return bad_request(format!(
            "Specified CanisterId {canister_id} does not match effective canister id in URL {effective}"
        ));
    }
    let env_for_state = env.clone();
    let (outcome, certified) = shared
        .exec(move |state| state.call(&env_for_state, canister_id, &method_name, arg))
        .await;
    if !certified {
        return non_replicated(&outcome);
    }
    if version == "v2" {
        return StatusCode::ACCEPTED.into_response();
    }
    let mut tree = StateTree::default();
    insert_request_status(&mut tree, &env.request_id, &outcome);
    tree.insert(&[b"time"], leb128(u128::from(wall_clock_nanos())));
    let body = cbor(&Value::Map(vec![
        (text("status"), text("replied")),
        (text("certificate"), Value::Bytes(shared.certificate(&tree))),
    ]));
    cbor_response(StatusCode::OK, body)
}

fn reject_fields(code: u8, message: &str, error_code: &str) -> Vec<(Value, Value)> {
    vec![
        (text("reject_code"), Value::Integer(code.into())),
        (text("reject_message"), text(message)),
        (text("error_code"), text(error_code)),
    ]
}

fn non_replicated(outcome: &Outcome) -> Response {
    let Outcome::Rejected {
        code,
        message,
        error_code,
    } = outcome
    else {
        unreachable!("only refusals skip certification")
    };
    let mut fields = vec![(text("status"), text("non_replicated_rejection"))];
    fields.extend(reject_fields(*code, message, error_code));
    cbor_response(StatusCode::OK, cbor(&Value::Map(fields)))
}

async fn query(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (effective, env) = match admit(&version, &["v2", "v3"], &id, &body) {
        Ok(admitted) => admitted,
        Err(r) => return refusal(r),
    };
    let Request::Query {
        canister_id,
        method_name,
        arg,
    } = env.request.clone()
    else {
        return bad_request("Expected a query request on the query endpoint");
    };
    if canister_id != effective {
        return bad_request(format!(
            "Specified CanisterId {canister_id} does not match effective canister id in URL {effective}"
        ));
    }
    let env_for_state = env.clone();
    let outcome = shared
        .exec(move |state| state.query(&env_for_state, canister_id, &method_name, arg))
        .await;
    let timestamp = wall_clock_nanos();
    let mut fields = match &outcome {
        Outcome::Replied(bytes) => vec![
            (text("status"), text("replied")),
            (
                text("reply"),
                Value::Map(vec![(text("arg"), Value::Bytes(bytes.clone()))]),
            ),
        ],
        Outcome::Rejected {
            code,
            message,
            error_code,
        } => {
            let mut f = vec![(text("status"), text("rejected"))];
            f.extend(reject_fields(*code, message, error_code));
            f
        }
    };
    let mut signed = fields.clone();
    signed.push((text("request_id"), Value::Bytes(env.request_id.to_vec())));
    signed.push((text("timestamp"), Value::Integer(timestamp.into())));
    let hash = hash_map(&signed).expect("a response hashes");
    let signature = Value::Map(vec![
        (text("timestamp"), Value::Integer(timestamp.into())),
        (text("signature"), Value::Bytes(shared.keys.sign_response(&hash))),
        (
            text("identity"),
            Value::Bytes(shared.keys.node_id().as_slice().to_vec()),
        ),
    ]);
    fields.push((text("signatures"), Value::Array(vec![signature])));
    cbor_response(StatusCode::OK, cbor(&Value::Map(fields)))
}

async fn read_state(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (effective, env) = match admit(&version, &["v2", "v3"], &id, &body) {
        Ok(admitted) => admitted,
        Err(r) => return refusal(r),
    };
    let Request::ReadState { paths } = env.request.clone() else {
        return bad_request("Expected a read_state request on the read_state endpoint");
    };
    let shared2 = shared.clone();
    let tree = shared
        .exec(move |state| state.read_state(&env, &paths, effective, &shared2.keys))
        .await;
    match tree {
        Ok(tree) => {
            let body = cbor(&Value::Map(vec![(
                text("certificate"),
                Value::Bytes(shared.certificate(&tree)),
            )]));
            cbor_response(StatusCode::OK, body)
        }
        Err(r) => refusal(r),
    }
}
