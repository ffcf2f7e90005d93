//! An example dApp: `tell(prompt, max_tokens)` asks icllm for a story and
//! returns a ticket; `story(ticket)` shows it as it stands. It uses
//! `icllm-client` the way a real dApp would: the waiting runs in a
//! migratory task, the job id is kept as soon as icllm gives it, and after
//! an upgrade the waiting resumes from the kept ids.

use candid::{CandidType, Deserialize, Principal};
use icllm_client::{Error, Icllm};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(CandidType, Deserialize, Clone, Debug, Default)]
struct Story {
    prompt: String,
    max_tokens: u32,
    job: Option<u64>,
    /// `asking`, `waiting`, `done` or `failed: …`.
    status: String,
    text: String,
    tokens: Vec<u32>,
}

#[derive(CandidType, Deserialize, Default)]
struct State {
    icllm: Option<Principal>,
    poll_ms: u64,
    next: u64,
    stories: BTreeMap<u64, Story>,
    /// For tests: `on_job_done` traps (a careless dApp).
    trap_on_notify: bool,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn icllm() -> Icllm {
    STATE.with_borrow(|s| {
        Icllm::new(s.icllm.expect("initialised with icllm's id")).poll_interval(Duration::from_millis(s.poll_ms))
    })
}

fn update_story(ticket: u64, f: impl FnOnce(&mut Story)) {
    STATE.with_borrow_mut(|s| {
        if let Some(story) = s.stories.get_mut(&ticket) {
            f(story)
        }
    })
}

fn finish(ticket: u64, reply: Result<icllm_client::Reply, Error>) {
    update_story(ticket, |story| match reply {
        Ok(r) => {
            story.status = "done".into();
            story.text = r.text;
            story.tokens = r.tokens;
        }
        Err(e) => story.status = format!("failed: {e}"),
    })
}

#[ic_cdk::init]
fn init(icllm: Principal, poll_ms: u64) {
    STATE.with_borrow_mut(|s| {
        s.icllm = Some(icllm);
        s.poll_ms = poll_ms;
    });
}

/// Asks for a story; its ticket.
#[ic_cdk::update]
fn tell(prompt: String, max_tokens: u32) -> u64 {
    ask(prompt, max_tokens, None)
}

/// Starts the story's job and waits for it in a task that outlives the
/// call; with `notify`, icllm also calls that method when the job ends (best
/// effort: the polling, at the dApp's pace, is the fallback).
fn ask(prompt: String, max_tokens: u32, notify: Option<&'static str>) -> u64 {
    let ticket = new_ticket(&prompt, max_tokens);
    ic_cdk::futures::spawn_migratory(async move {
        let mut request = icllm().complete(prompt).max_tokens(max_tokens).temperature(0.0).seed(1);
        if let Some(method) = notify {
            request = request.notify(method);
        }
        let job = match icllm().start(request.request()).await {
            Ok(job) => job,
            Err(e) => return finish(ticket, Err(e)),
        };
        update_story(ticket, |story| {
            story.job = Some(job);
            story.status = "waiting".into();
        });
        finish(ticket, icllm().wait(job, |_| {}).await);
    });
    ticket
}

fn new_ticket(prompt: &str, max_tokens: u32) -> u64 {
    STATE.with_borrow_mut(|s| {
        s.next += 1;
        s.stories.insert(
            s.next,
            Story {
                prompt: prompt.to_string(),
                max_tokens,
                status: "asking".into(),
                ..Story::default()
            },
        );
        s.next
    })
}

/// Asks for a story and lets icllm call `on_job_done` when it ends, so
/// the dApp can poll seldom.
#[ic_cdk::update]
fn tell_and_notify(prompt: String, max_tokens: u32) -> u64 {
    ask(prompt, max_tokens, Some("on_job_done"))
}

/// icllm's call when a job ends: fetch the text once.
#[ic_cdk::update]
fn on_job_done(job: u64, status: icllm_client::api::JobStatus) {
    let (from_icllm, trap) = STATE.with_borrow(|s| (s.icllm == Some(ic_cdk::api::msg_caller()), s.trap_on_notify));
    if !from_icllm {
        ic_cdk::trap("only icllm reports jobs here");
    }
    if trap {
        ic_cdk::trap(format!("careless dApp: trapped on the news of job {job} ({status:?})"));
    }
    let ticket = STATE.with_borrow(|s| s.stories.iter().find(|(_, st)| st.job == Some(job)).map(|(t, _)| *t));
    if let Some(ticket) = ticket {
        ic_cdk::futures::spawn_migratory(async move { finish(ticket, icllm().wait(job, |_| {}).await) });
    }
}

#[ic_cdk::update]
fn set_trap_on_notify(trap: bool) {
    STATE.with_borrow_mut(|s| s.trap_on_notify = trap);
}

#[ic_cdk::query]
fn story(ticket: u64) -> Option<Story> {
    STATE.with_borrow(|s| s.stories.get(&ticket).cloned())
}

#[ic_cdk::pre_upgrade]
fn pre_upgrade() {
    let bytes = STATE.with_borrow(|s| candid::encode_one(s).expect("state encodes"));
    let pages = ((bytes.len() + 8) as u64).div_ceil(65536);
    let have = ic_cdk::stable::stable_size();
    if pages > have {
        ic_cdk::stable::stable_grow(pages - have).expect("stable memory");
    }
    ic_cdk::stable::stable_write(0, &(bytes.len() as u64).to_le_bytes());
    ic_cdk::stable::stable_write(8, &bytes);
}

/// Restores the stories and resumes waiting for the jobs under way (from a
/// timer: post_upgrade itself may not call other canisters).
#[ic_cdk::post_upgrade]
fn post_upgrade() {
    let mut len = [0u8; 8];
    ic_cdk::stable::stable_read(0, &mut len);
    let mut bytes = vec![0u8; u64::from_le_bytes(len) as usize];
    ic_cdk::stable::stable_read(8, &mut bytes);
    let state: State = candid::decode_one(&bytes).expect("state decodes");
    let waiting: Vec<(u64, u64)> = state
        .stories
        .iter()
        .filter(|(_, s)| s.status == "waiting")
        .filter_map(|(t, s)| Some((*t, s.job?)))
        .collect();
    STATE.with_borrow_mut(|s| *s = state);
    ic_cdk_timers::set_timer(Duration::ZERO, async move {
        for (ticket, job) in waiting {
            ic_cdk::futures::spawn_migratory(async move { finish(ticket, icllm().wait(job, |_| {}).await) });
        }
    });
}
