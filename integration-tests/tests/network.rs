//! The canister over the IC's HTTP interface (`icllm replica`'s server, in
//! this process), driven by clients nobody here wrote: `ic-agent` (deploy,
//! upload with resumption, jobs; it verifies every certificate and query
//! signature) and the JS agent `@icp-sdk/core` under Node; and raw
//! envelopes for what a replica must refuse.

use candid::{Decode, Encode, Principal};
use ic_agent::identity::{AnonymousIdentity, BasicIdentity, Secp256k1Identity};
use ic_agent::{Agent, Identity};
use icllm::remote::{self, UploadOptions};
use icllm_api::*;
use integration_tests::{canister_with_model, model_bytes, wasm};
use local_ic::network::{Replica, ReplicaConfig};
use std::sync::Arc;
use std::time::Duration;

/// From models/README.md: llama.cpp's greedy continuation of "Joe loves writing stories".
const GOLDEN_PROMPT: &str = "Joe loves writing stories";
const GOLDEN_IDS: [u32; 10] = [426, 346, 397, 355, 267, 337, 335, 345, 267, 422];

fn start_replica() -> Replica {
    Replica::start("127.0.0.1:0".parse().unwrap(), ReplicaConfig::default()).expect("replica starts")
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ed25519(seed: u8) -> Arc<dyn Identity> {
    Arc::new(BasicIdentity::from_raw_key(&[seed; 32]))
}

fn secp256k1(seed: u8) -> Arc<dyn Identity> {
    Arc::new(Secp256k1Identity::from_private_key(
        k256::SecretKey::from_slice(&[seed; 32]).unwrap(),
    ))
}

fn null_init() -> Vec<u8> {
    Encode!(&None::<InitArgs>).unwrap()
}

async fn deploy(agent: &Agent) -> Principal {
    let (id, action) = remote::deploy(agent, None, &wasm(), null_init(), null_init(), |_| {})
        .await
        .expect("deploy");
    assert_eq!(action, remote::Deployed::Installed);
    id
}

fn greedy(prompt: &str, n: u32) -> JobRequest {
    JobRequest {
        prompt: prompt.into(),
        max_tokens: n,
        temperature: Some(0.0),
        seed: Some(42),
        ..JobRequest::default()
    }
}

/// The job run in process, for comparison: its ids and final view.
fn in_process(req: JobRequest) -> (Vec<u32>, JobView) {
    let mut c = canister_with_model(local_ic::Limits::default().update);
    let caller = Principal::from_slice(&[9; 29]);
    let id = c.start_job(caller, req).expect("start_job").expect("accepted");
    let mut tokens = Vec::new();
    let view = c
        .run_job(caller, id, |v| tokens.extend_from_slice(&v.tokens))
        .expect("job ends");
    (tokens, view)
}

#[test]
fn ic_agent_deploys_uploads_with_resumption_and_gets_the_golden_ids() {
    let replica = start_replica();
    tokio().block_on(async {
        let controller = remote::connect(replica.url(), secp256k1(3)).await.expect("agent");
        let id = deploy(&controller).await;

        // Interrupted after 5 of 19 chunks; the next run sends only the rest.
        let model = model_bytes();
        let chunk = 65_536;
        let chunks = model.len().div_ceil(chunk);
        let opts = UploadOptions {
            chunk_bytes: chunk,
            stop_after_chunks: Some(5),
            ..UploadOptions::default()
        };
        let first = remote::upload(&controller, id, model, &opts, &())
            .await
            .expect("first part");
        assert!(!first.finished);
        assert_eq!((first.chunks_sent, first.bytes_sent), (5, 5 * chunk as u64));
        let opts = UploadOptions {
            chunk_bytes: chunk,
            ..UploadOptions::default()
        };
        let rest = remote::upload(&controller, id, model, &opts, &())
            .await
            .expect("resumed upload");
        assert!(rest.finished);
        assert_eq!(rest.chunks_sent, chunks - 5, "only the missing ranges are sent");
        assert_eq!(rest.bytes_resumed, 5 * chunk as u64);
        assert_eq!(rest.bytes_sent + rest.bytes_resumed, model.len() as u64);

        let user = remote::connect(replica.url(), ed25519(4)).await.expect("agent");
        let req = greedy(GOLDEN_PROMPT, 24);
        let job = remote::start_job(&user, id, req.clone()).await.expect("start_job");
        let mut tokens = Vec::new();
        let view = remote::follow(&user, id, job, |v| tokens.extend_from_slice(&v.tokens))
            .await
            .expect("job ends");
        assert_eq!(view.status, JobStatus::Done("max_tokens".into()));
        assert_eq!(tokens[..10], GOLDEN_IDS);

        // Upgraded over the network (the id holds icllm now): the model
        // reloads from stable memory and serves the same ids.
        let (again, action) = remote::deploy(&controller, Some(id), &wasm(), null_init(), null_init(), |_| {})
            .await
            .expect("upgrade");
        assert_eq!((again, action), (id, remote::Deployed::Upgraded));
        let job2 = remote::start_job(&user, id, req.clone())
            .await
            .expect("start_job after the upgrade");
        let mut tokens2 = Vec::new();
        remote::follow(&user, id, job2, |v| tokens2.extend_from_slice(&v.tokens))
            .await
            .expect("job ends");
        assert_eq!(tokens2, tokens);

        let (local_tokens, local) = in_process(req);
        assert_eq!(tokens, local_tokens, "the network path gives the in-process ids");
        // The same counts, reported the same way; not to the instruction:
        // the memory tracker charges 80,000 per 64 KiB page a message first
        // touches, and where the heap put things follows the upload's
        // chunking and arrival order (4 chunks in flight), so a few pages
        // differ from run to run.
        assert_eq!(view.messages, local.messages);
        let close = |a: u64, b: u64| a.abs_diff(b) * 100 <= b;
        assert!(
            close(view.instructions, local.instructions)
                && close(view.max_message_instructions, local.max_message_instructions),
            "network {} / {} vs in process {} / {}",
            view.instructions,
            view.max_message_instructions,
            local.instructions,
            local.max_message_instructions
        );

        // The canister's HTTP face through the replica's raw gateway.
        let get = |path: &str, host: Option<String>| {
            let url = replica.url().to_string();
            let path = path.to_string();
            std::thread::spawn(move || {
                let mut request = reqwest::blocking::Client::new().get(format!("{url}{path}"));
                if let Some(host) = host {
                    request = request.header("host", host);
                }
                let response = request.send().expect("the gateway answers");
                let status = response.status().as_u16();
                (
                    status,
                    serde_json::from_slice::<serde_json::Value>(&response.bytes().unwrap()).unwrap(),
                )
            })
            .join()
            .unwrap()
        };
        let (status, health) = get(&format!("/health?canisterId={id}"), None);
        assert_eq!(
            (status, health["model_state"].as_str()),
            (200, Some("ready")),
            "{health}"
        );
        let (status, models) = get("/v1/models", Some(format!("{id}.raw.localhost")));
        assert_eq!(status, 200, "{models}");
        assert_eq!(models["data"][0]["object"], "model", "{models}");
        // Gateway requests are anonymous: a signed-in user's job is not theirs.
        let (status, err) = get(&format!("/v1/jobs/{job}?canisterId={id}"), None);
        assert_eq!(status, 404, "{err}");
    });
}

/// A controller's update call that the canister accepts and answers
/// (setting the message limit to its default).
fn limit_call(agent: &Agent, canister: Principal) -> ic_agent::agent::UpdateBuilder<'_> {
    agent
        .update(&canister, "set_message_instruction_limit")
        .with_arg(Encode!(&40_000_000_000u64).unwrap())
}

/// A signed call envelope from `identity`, as CBOR, ready to be altered.
async fn signed_call(agent: &Agent, canister: Principal, expire_after: Duration) -> ciborium::Value {
    let signed = limit_call(agent, canister)
        .expire_after(expire_after)
        .sign()
        .expect("sign");
    ciborium::from_reader(&signed.signed_update[..]).unwrap()
}

fn content_field<'a>(envelope: &'a mut ciborium::Value, name: &str) -> &'a mut ciborium::Value {
    let ciborium::Value::Tag(_, inner) = envelope else {
        panic!("tagged envelope")
    };
    let ciborium::Value::Map(fields) = inner.as_mut() else {
        panic!("map")
    };
    let (_, content) = fields.iter_mut().find(|(k, _)| k.as_text() == Some("content")).unwrap();
    let ciborium::Value::Map(content) = content else {
        panic!("content map")
    };
    &mut content.iter_mut().find(|(k, _)| k.as_text() == Some(name)).unwrap().1
}

fn post(url: &str, canister: Principal, envelope: &ciborium::Value) -> (u16, String) {
    let mut body = Vec::new();
    ciborium::into_writer(envelope, &mut body).unwrap();
    let response = reqwest::blocking::Client::new()
        .post(format!("{url}/api/v3/canister/{canister}/call"))
        .header("content-type", "application/cbor")
        .body(body)
        .send()
        .expect("the replica answers");
    let status = response.status().as_u16();
    (status, String::from_utf8_lossy(&response.bytes().unwrap()).into_owned())
}

#[test]
fn forged_expired_and_tampered_requests_are_refused_with_the_ics_errors() {
    let replica = start_replica();
    let url = replica.url().to_string();
    let rt = tokio();
    let (id, agent) = rt.block_on(async {
        let agent = remote::connect(&url, ed25519(5)).await.unwrap();
        (deploy(&agent).await, agent)
    });
    let envelope = rt.block_on(signed_call(&agent, id, Duration::from_secs(120)));
    let victim = ed25519(6).sender().unwrap();

    // Signed by one identity, claiming another as sender.
    let mut forged = envelope.clone();
    *content_field(&mut forged, "sender") = ciborium::Value::Bytes(victim.as_slice().to_vec());
    let (status, body) = post(&url, id, &forged);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Invalid user id"), "{body}");

    // The argument changed after signing.
    let mut tampered = envelope.clone();
    *content_field(&mut tampered, "arg") = ciborium::Value::Bytes(Encode!(&1u8).unwrap());
    let (status, body) = post(&url, id, &tampered);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Invalid signature"), "{body}");

    // Correctly signed, but expired (and one too far in the future).
    let expired = rt.block_on(signed_call(&agent, id, Duration::ZERO));
    std::thread::sleep(Duration::from_millis(20));
    let (status, body) = post(&url, id, &expired);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("Specified ingress_expiry not within expected range"),
        "{body}"
    );
    let future = rt.block_on(signed_call(&agent, id, Duration::from_secs(3600)));
    let (status, body) = post(&url, id, &future);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Maximum allowed expiry"), "{body}");

    // The untouched envelope is accepted (so the refusals above are not
    // a broken path).
    let (status, body) = post(&url, id, &envelope);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("replied") && body.contains("certificate"), "{body}");

    // The asynchronous v2 endpoint: 202, then the certified reply through
    // read_state, for the sender only.
    let signed = limit_call(&agent, id).sign().expect("sign");
    let response = reqwest::blocking::Client::new()
        .post(format!("{url}/api/v2/canister/{id}/call"))
        .header("content-type", "application/cbor")
        .body(signed.signed_update.clone())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    rt.block_on(async {
        let (status, _) = agent
            .request_status_raw(&signed.request_id, id)
            .await
            .expect("read_state");
        let ic_agent::agent::RequestStatusResponse::Replied(reply) = status else {
            panic!("the call has replied: {status:?}")
        };
        let result = Decode!(&reply.arg, ApiResult<()>).expect("the method's reply");
        assert_eq!(result, Ok(()));
        let other = remote::connect(&url, ed25519(6)).await.unwrap();
        let err = other
            .request_status_raw(&signed.request_id, id)
            .await
            .expect_err("another sender cannot read the status");
        assert!(err.to_string().contains("403"), "{err}");
    });
}

#[test]
fn only_controllers_install_and_upload_and_anonymous_callers_cannot_start_jobs() {
    let replica = start_replica();
    tokio().block_on(async {
        let owner = remote::connect(replica.url(), ed25519(7)).await.unwrap();
        let id = deploy(&owner).await;
        let stranger = remote::connect(replica.url(), secp256k1(8)).await.unwrap();

        let err = remote::deploy(&stranger, Some(id), &wasm(), null_init(), null_init(), |_| {})
            .await
            .expect_err("a non-controller cannot install");
        let text = format!("{err:#}");
        assert!(text.contains("not a controller"), "{text}");

        let err = remote::upload(&stranger, id, model_bytes(), &UploadOptions::default(), &())
            .await
            .expect_err("a non-controller cannot upload");
        assert!(format!("{err:#}").contains("not a controller"), "{err:#}");

        let anonymous = remote::connect(replica.url(), Arc::new(AnonymousIdentity))
            .await
            .unwrap();
        let err = remote::start_job(&anonymous, id, greedy("Hi", 4))
            .await
            .expect_err("anonymous callers may not start jobs by default");
        // Refused before execution by canister_inspect_message, as on the
        // IC: an uncertified IC0406 rejection.
        let text = format!("{err:#}");
        assert!(
            text.contains("IC0406") && text.contains("rejected the message"),
            "{text}"
        );
    });
}

/// `integration-tests/js/agent-client.mjs` with `@icp-sdk/core` (installed
/// by tools/setup.sh into <target>/npm-agent) and the IDL generated from
/// candid/icllm.did by candid_parser's JavaScript binding.
#[test]
fn the_js_agent_calls_health_start_job_and_poll() {
    let target = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into()),
    );
    let dir = target.join("npm-agent");
    assert!(
        dir.join("node_modules/@icp-sdk/core/package.json").exists(),
        "@icp-sdk/core is missing: run tools/setup.sh"
    );
    let did = include_str!("../../candid/icllm.did");
    let (env, actor) = candid_parser::utils::CandidSource::Text(did)
        .load()
        .expect("did parses");
    let idl = candid_parser::bindings::javascript::compile(&env, &actor);
    let idl_path = dir.join("icllm.idl.mjs");
    std::fs::write(&idl_path, idl).unwrap();
    let script = dir.join("agent-client.mjs");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/js/agent-client.mjs"), &script).unwrap();

    let replica = start_replica();
    let id = tokio().block_on(async {
        let owner = remote::connect(replica.url(), ed25519(10)).await.unwrap();
        let id = deploy(&owner).await;
        let done = remote::upload(&owner, id, model_bytes(), &UploadOptions::default(), &())
            .await
            .expect("upload");
        assert!(done.finished);
        id
    });
    let out = std::process::Command::new("node")
        .arg(&script)
        .args([
            replica.url(),
            &id.to_text(),
            idl_path.to_str().unwrap(),
            GOLDEN_PROMPT,
            "12",
        ])
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(reply["model_state"], "ready", "{reply}");
    assert_eq!(reply["status"], serde_json::json!({"Done": "max_tokens"}), "{reply}");
    let tokens: Vec<u32> = serde_json::from_value(reply["tokens"].clone()).unwrap();
    assert_eq!(tokens[..10], GOLDEN_IDS, "{reply}");
}

/// A proxy in front of the replica that answers every third call request
/// with HTTP 500 itself (a flaky network or boundary node), passing all
/// else through. The uploader's retries carry the upload through.
#[test]
fn an_upload_through_a_failing_network_retries_its_chunks_and_completes() {
    let replica = start_replica();
    let upstream = replica.url().to_string();
    let rt = tokio();
    let (proxy_url, id, owner_url) = rt.block_on(async {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = reqwest::Client::new();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method, uri: axum::http::Uri, body: axum::body::Bytes| {
                let (calls, client, upstream) = (calls.clone(), client.clone(), upstream.clone());
                async move {
                    use axum::response::IntoResponse;
                    let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
                    if path.ends_with("/call") && calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 3 == 2 {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "injected fault").into_response();
                    }
                    let response = client
                        .request(method, format!("{upstream}{path}"))
                        .header("content-type", "application/cbor")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let status = axum::http::StatusCode::from_u16(response.status().as_u16()).unwrap();
                    (status, response.bytes().await.unwrap()).into_response()
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let owner = remote::connect(replica.url(), ed25519(11)).await.unwrap();
        (proxy_url, deploy(&owner).await, replica.url().to_string())
    });
    rt.block_on(async {
        let flaky = remote::connect(&proxy_url, ed25519(11)).await.unwrap();
        let opts = UploadOptions {
            chunk_bytes: 65_536,
            parallel: 2,
            ..UploadOptions::default()
        };
        let summary = remote::upload(&flaky, id, model_bytes(), &opts, &())
            .await
            .expect("the upload completes");
        assert!(summary.finished);
        assert!(
            summary.retries >= 5,
            "a third of 19 chunk calls failed once: {summary:?}"
        );
        assert_eq!(summary.bytes_sent, model_bytes().len() as u64);
        // The model is the file (upload checked the SHA-256); it answers.
        let direct = remote::connect(&owner_url, ed25519(11)).await.unwrap();
        let job = remote::start_job(&direct, id, greedy(GOLDEN_PROMPT, 10)).await.unwrap();
        let mut tokens = Vec::new();
        remote::follow(&direct, id, job, |v| tokens.extend_from_slice(&v.tokens))
            .await
            .unwrap();
        assert_eq!(tokens, GOLDEN_IDS);
    });
}

/// `stop_canister` through ic-agent: the canister refuses calls with the
/// replica's IC0508 until `start_canister`, and keeps its state.
#[test]
fn a_stopped_canister_refuses_calls_until_it_is_started() {
    #[derive(candid::CandidType, serde::Deserialize)]
    struct CanisterIdRecord {
        canister_id: Principal,
    }
    #[derive(candid::CandidType, serde::Deserialize, Debug, PartialEq)]
    enum RunStatus {
        #[serde(rename = "running")]
        Running,
        #[serde(rename = "stopping")]
        Stopping,
        #[serde(rename = "stopped")]
        Stopped,
    }
    /// The part of `canister_status`'s reply this test reads.
    #[derive(candid::CandidType, serde::Deserialize)]
    struct Status {
        status: RunStatus,
    }
    let replica = start_replica();
    tokio().block_on(async {
        let owner = remote::connect(replica.url(), ed25519(7)).await.unwrap();
        let id = deploy(&owner).await;
        let management = |method: &'static str| {
            let owner = &owner;
            async move {
                owner
                    .update(&Principal::management_canister(), method)
                    .with_effective_canister_id(id)
                    .with_arg(Encode!(&CanisterIdRecord { canister_id: id }).unwrap())
                    .call_and_wait()
                    .await
                    .unwrap_or_else(|e| panic!("{method}: {e}"))
            }
        };
        let run_status = |reply: Vec<u8>| Decode!(&reply, Status).unwrap().status;
        let health = || remote::query::<_, (Health,)>(&owner, id, "health", ());
        assert!(health().await.is_ok());

        management("stop_canister").await;
        assert_eq!(run_status(management("canister_status").await), RunStatus::Stopped);
        let refused = format!("{:#}", health().await.expect_err("a stopped canister answers no query"));
        assert!(refused.contains(&format!("Canister {id} is stopped")), "{refused}");
        let refused = format!(
            "{:#}",
            remote::start_job(&owner, id, greedy("Hi", 2))
                .await
                .expect_err("nor an update")
        );
        assert!(
            refused.contains("IC0508") && refused.contains("is stopped"),
            "{refused}"
        );

        management("start_canister").await;
        assert_eq!(run_status(management("canister_status").await), RunStatus::Running);
        assert!(health().await.is_ok(), "running again");
    });
}
