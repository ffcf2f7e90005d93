//! `icllm sim`: run any canister wasm in the local IC runtime, one line per
//! step on stdout.
//!
//! Steps (`--call`, `--query`, `--upgrade`, `--advance-time`, `--tick`) run
//! in the order they appear on the command line. Each prints exactly one
//! line: the reply in candid text followed by ` instructions=N` (and
//! ` page_instructions=N`, the in-band page charges included in it, and
//! ` heap_dirty_page_instructions=N`, the replica's after-message charge for
//! dirty pages, counted apart; `--memory-charges` picks the rule), or the
//! error in the IC's wording. A trap does not end the run; later steps see
//! the rolled-back state. Installation problems and bad options end the run
//! with an error (exit code 1). Canister debug output and `--stats` go to
//! stderr.
//!
//! When the wasm carries its candid interface (the `candid:service` custom
//! section, as dfx and icp-cli read it), arguments are typed by the method's
//! parameter types (`(0.5)` becomes a `float32` where one is expected, a
//! record's missing `opt` fields become `null`) and replies print with their
//! field and variant names, as `dfx canister call` does. Without it, arguments
//! are typed as written and replies show hashed field ids.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use candid::types::{Type, TypeEnv};
use candid::{IDLArgs, Principal};
use candid_parser::utils::{instantiate_candid, CandidSource};
use clap::{ArgMatches, Args};
use local_ic::{Error, Limits, MessageKind, MessageReport, Reply, Runtime, RuntimeConfig};

#[derive(Args, Debug)]
#[command(after_help = "Candid arguments are typed by the wasm's candid:service metadata \
    when it has one; otherwise as written: a method taking nat64 needs '(42 : nat64)'.\n\
    Set LOCAL_IC_MODULE_CACHE=DIR to keep compiled modules between runs.\n\
    Example: icllm sim --wasm counter.wasm --init '(0 : nat64)' --call 'increment' \
    --query 'get' --upgrade --advance-time 5")]
pub struct SimArgs {
    /// Canister wasm module (uncompressed .wasm).
    #[arg(long)]
    pub wasm: PathBuf,
    /// Init argument, candid text.
    #[arg(long, default_value = "()", value_name = "ARGS")]
    pub init: String,
    /// Step: update call, e.g. 'increment' or 'add (5 : nat64)'.
    #[arg(long = "call", value_name = "METHOD (ARGS)")]
    pub calls: Vec<String>,
    /// Step: query call, e.g. 'get ()'.
    #[arg(long = "query", value_name = "METHOD (ARGS)")]
    pub queries: Vec<String>,
    /// Step: upgrade (to --upgrade-wasm, else the same wasm), with an
    /// optional post_upgrade argument: --upgrade or --upgrade='(true)'.
    #[arg(long = "upgrade", value_name = "ARGS", num_args = 0..=1,
          default_missing_value = "()", require_equals = true)]
    pub upgrades: Vec<String>,
    /// Step: advance the clock by SECONDS and run the timers that fall due.
    #[arg(long = "advance-time", value_name = "SECONDS")]
    pub advance: Vec<f64>,
    /// Step: run one round (due timers and queued messages) without
    /// advancing the clock.
    #[arg(long = "tick", num_args = 0, default_missing_value = "1")]
    pub ticks: Vec<String>,
    /// Module used by --upgrade.
    #[arg(long, value_name = "FILE")]
    pub upgrade_wasm: Option<PathBuf>,
    /// Caller (and controller) principal of every step.
    #[arg(long, default_value = "2vxsx-fae")]
    pub caller: String,
    /// Seed of raw_rand.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Instruction limit of update, timer and callback messages.
    #[arg(long)]
    pub limit_update: Option<u64>,
    /// Instruction limit of queries.
    #[arg(long)]
    pub limit_query: Option<u64>,
    /// Instruction limit of init and of pre_upgrade + post_upgrade.
    #[arg(long)]
    pub limit_install: Option<u64>,
    /// Instruction limit of canister_inspect_message.
    #[arg(long)]
    pub limit_inspect: Option<u64>,
    /// Print per-method totals to stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// Echo the canister's debug_print output to stderr.
    #[arg(long)]
    pub debug_print: bool,
    /// Memory charges: dmt (the replica's deterministic memory tracker,
    /// in-band per touched page) or legacy (1,000 per dirty page after the
    /// message).
    #[arg(long, default_value = "dmt")]
    pub memory_charges: local_ic::MemoryCharges,
}

/// One step of the run, in command-line order.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Call(String),
    Query(String),
    Upgrade(String),
    Advance(f64),
    Tick,
}

/// Steps in the order given: clap keeps each option's values separately,
/// so the occurrences are merged by their command-line index.
fn ordered_steps(args: &SimArgs, matches: &ArgMatches) -> Vec<Step> {
    let mut steps: Vec<(usize, Step)> = Vec::new();
    let mut collect = |id: &str, make: &dyn Fn(usize) -> Step| {
        if let Some(indices) = matches.indices_of(id) {
            for (i, index) in indices.enumerate() {
                steps.push((index, make(i)));
            }
        }
    };
    collect("calls", &|i| Step::Call(args.calls[i].clone()));
    collect("queries", &|i| Step::Query(args.queries[i].clone()));
    collect("upgrades", &|i| Step::Upgrade(args.upgrades[i].clone()));
    collect("advance", &|i| Step::Advance(args.advance[i]));
    collect("ticks", &|_| Step::Tick);
    steps.sort_by_key(|(index, _)| *index);
    steps.into_iter().map(|(_, s)| s).collect()
}

/// Re-parses the `sim` part of the command line to learn the order of the
/// step options (the derived struct only has their values).
fn step_order_from_cli(args: &SimArgs) -> anyhow::Result<Vec<Step>> {
    let argv: Vec<String> = std::env::args().collect();
    let at = argv
        .iter()
        .position(|a| a == "sim")
        .ok_or_else(|| anyhow!("cannot find the `sim` subcommand in the command line"))?;
    let cmd = SimArgs::augment_args(clap::Command::new("sim"));
    let matches = cmd.try_get_matches_from(&argv[at..])?;
    Ok(ordered_steps(args, &matches))
}

/// The canister's candid interface, from the wasm's `candid:service` section.
struct Interface {
    env: TypeEnv,
    init: Vec<Type>,
    service: Type,
}

impl Interface {
    /// `None` when the wasm has no `candid:service` section (public or private).
    fn from_wasm(wasm: &[u8]) -> anyhow::Result<Option<Interface>> {
        let Some(did) = candid_service_section(wasm)? else {
            return Ok(None);
        };
        let (init, (env, service)) = instantiate_candid(CandidSource::Text(&did))
            .map_err(|e| anyhow!("the wasm's candid:service metadata does not parse: {e}"))?;
        Ok(Some(Interface { env, init, service }))
    }

    /// The parameter and result types of `method`, if the interface has it.
    fn method(&self, method: &str) -> Option<(&[Type], &[Type])> {
        let methods = self.env.as_service(&self.service).ok()?;
        let (_, ty) = methods.iter().find(|(name, _)| name == method)?;
        let func = self.env.as_func(ty).ok()?;
        Some((&func.args, &func.rets))
    }

    /// The environment and the install/upgrade argument types.
    fn init_types(&self) -> (&TypeEnv, &[Type]) {
        (&self.env, &self.init)
    }
}

/// The text of the `icp:public candid:service` (or `icp:private …`) section.
fn candid_service_section(wasm: &[u8]) -> anyhow::Result<Option<String>> {
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::CustomSection(section) = payload.context("the canister wasm does not parse")? {
            if matches!(
                section.name(),
                "icp:public candid:service" | "icp:private candid:service"
            ) {
                let text = String::from_utf8(section.data().to_vec()).context("candid:service is not UTF-8")?;
                return Ok(Some(text));
            }
        }
    }
    Ok(None)
}

/// Splits `method (args)` into the method name and candid-encoded args,
/// typed by the interface when it has the method.
fn parse_call(text: &str, interface: Option<&Interface>) -> anyhow::Result<(String, Vec<u8>)> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_whitespace() || c == '(').unwrap_or(text.len());
    let (method, rest) = text.split_at(split);
    if method.is_empty() {
        bail!("missing method name in {text:?}");
    }
    let rest = rest.trim();
    let types = interface.and_then(|i| Some((&i.env, i.method(method)?.0)));
    let bytes = encode_args(if rest.is_empty() { "()" } else { rest }, types)?;
    Ok((method.to_string(), bytes))
}

/// Candid text to bytes, typed by `types` (an environment and the parameter
/// types) when given, else as written.
fn encode_args(text: &str, types: Option<(&TypeEnv, &[Type])>) -> anyhow::Result<Vec<u8>> {
    let args =
        candid_parser::parse_idl_args(text).with_context(|| format!("cannot parse candid arguments {text:?}"))?;
    let bytes = match types {
        Some((env, types)) => args
            .annotate_types(true, env, types)
            .and_then(|args| args.to_bytes_with_types(env, types)),
        None => args.to_bytes(),
    };
    bytes.with_context(|| format!("cannot encode candid arguments {text:?}"))
}

/// Candid text of a reply, with names from `types` (an environment and the
/// result types) when given; raw hex if it is not candid.
fn reply_text(bytes: &[u8], types: Option<(&TypeEnv, &[Type])>) -> String {
    let typed = types.and_then(|(env, types)| IDLArgs::from_bytes_with_types(bytes, env, types).ok());
    match typed.map_or_else(|| IDLArgs::from_bytes(bytes), Ok) {
        Ok(args) => one_line(&args.to_string()),
        Err(_) => format!(
            "(raw 0x{})",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn error_line(e: &Error) -> String {
    e.to_string().replace('\n', "\\n")
}

fn call_line(result: Result<Reply, Error>, rets: Option<(&TypeEnv, &[Type])>) -> String {
    match result {
        Ok(reply) => {
            let mut line = format!(
                "{} instructions={}",
                reply_text(&reply.bytes, rets),
                reply.report.instructions
            );
            if reply.messages.len() > 1 {
                let total: u64 = reply.messages.iter().map(|m| m.instructions).sum();
                line.push_str(&format!(
                    " messages={} total_instructions={total}",
                    reply.messages.len()
                ));
            }
            let pages: u64 = reply.messages.iter().map(|m| m.page_instructions).sum();
            if pages > 0 {
                line.push_str(&format!(" page_instructions={pages}"));
            }
            let dirty: u64 = reply.messages.iter().map(|m| m.heap_dirty_page_instructions).sum();
            if dirty > 0 {
                line.push_str(&format!(" heap_dirty_page_instructions={dirty}"));
            }
            line
        }
        Err(e) => error_line(&e),
    }
}

fn timer_line(prefix: &str, reports: &[MessageReport]) -> String {
    let timers = reports.iter().filter(|r| r.kind == MessageKind::GlobalTimer).count();
    let total: u64 = reports.iter().map(|r| r.instructions).sum();
    let mut line = format!(
        "{prefix}, ran {timers} timer messages ({} messages in all) instructions={total}",
        reports.len()
    );
    let dirty: u64 = reports.iter().map(|r| r.heap_dirty_page_instructions).sum();
    if dirty > 0 {
        line.push_str(&format!(" heap_dirty_page_instructions={dirty}"));
    }
    let traps: Vec<&MessageReport> = reports.iter().filter(|r| r.error.is_some()).collect();
    if let Some(first) = traps.first() {
        line.push_str(&format!(
            " traps={} first_error={}",
            traps.len(),
            first.error.as_deref().unwrap_or_default().replace('\n', "\\n")
        ));
    }
    line
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let steps = step_order_from_cli(&args)?;
    let wasm = std::fs::read(&args.wasm).with_context(|| format!("read {}", args.wasm.display()))?;
    let upgrade_wasm = match &args.upgrade_wasm {
        Some(path) => std::fs::read(path).with_context(|| format!("read {}", path.display()))?,
        None => wasm.clone(),
    };
    let caller = Principal::from_text(&args.caller).map_err(|e| anyhow!("--caller {:?}: {e}", args.caller))?;
    let defaults = Limits::default();
    let limits = Limits {
        update: args.limit_update.unwrap_or(defaults.update),
        query: args.limit_query.unwrap_or(defaults.query),
        install: args.limit_install.unwrap_or(defaults.install),
        inspect_message: args.limit_inspect.unwrap_or(defaults.inspect_message),
        ..defaults
    };
    let mut rt = Runtime::new(RuntimeConfig {
        limits,
        seed: args.seed,
        print_debug: args.debug_print,
        memory_charges: args.memory_charges,
        ..RuntimeConfig::default()
    });
    let interface = Interface::from_wasm(&wasm)?;
    let upgrade_interface = Interface::from_wasm(&upgrade_wasm)?;
    let rets = |method: &str| interface.as_ref().and_then(|i| Some((&i.env, i.method(method)?.1)));
    let init = encode_args(&args.init, interface.as_ref().map(Interface::init_types)).context("--init")?;
    let id = rt
        .install(&wasm, init, vec![caller])
        .map_err(|e| anyhow!("install failed: {e}"))?;
    if let Some(report) = rt.last_report() {
        eprintln!("installed {id} (canister_init: instructions={})", report.instructions);
    } else {
        eprintln!("installed {id}");
    }

    for step in steps {
        let line = match step {
            Step::Call(text) => match parse_call(&text, interface.as_ref()) {
                Ok((method, arg)) => call_line(rt.update(id, caller, &method, arg), rets(&method)),
                Err(e) => format!("error: {e:#}"),
            },
            Step::Query(text) => match parse_call(&text, interface.as_ref()) {
                Ok((method, arg)) => call_line(rt.query(id, caller, &method, arg), rets(&method)),
                Err(e) => format!("error: {e:#}"),
            },
            Step::Upgrade(text) => match encode_args(&text, upgrade_interface.as_ref().map(Interface::init_types)) {
                Ok(arg) => match rt.upgrade(id, &upgrade_wasm, arg, caller) {
                    Ok(report) => format!("upgraded instructions={}", report.instructions),
                    Err(e) => error_line(&e),
                },
                Err(e) => format!("error: {e:#}"),
            },
            Step::Advance(seconds) => {
                if !(seconds.is_finite() && seconds >= 0.0) {
                    format!("error: --advance-time {seconds}: not a non-negative number of seconds")
                } else {
                    let reports = rt.advance_time(Duration::from_secs_f64(seconds));
                    timer_line(&format!("advanced {seconds}s"), &reports)
                }
            }
            Step::Tick => timer_line("tick", &rt.tick()),
        };
        println!("{line}");
    }

    if args.stats {
        eprintln!(
            "{:<40} {:>8} {:>16} {:>14} {:>12} {:>12} {:>6}",
            "method", "messages", "instructions", "max", "stable_read", "stable_write", "traps"
        );
        for ((_, method), s) in rt.stats() {
            eprintln!(
                "{:<40} {:>8} {:>16} {:>14} {:>12} {:>12} {:>6}",
                method,
                s.messages,
                s.instructions,
                s.max_instructions,
                s.stable_bytes_read,
                s.stable_bytes_written,
                s.traps
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candid::Encode;
    use clap::FromArgMatches;

    fn parse(argv: &[&str]) -> Vec<Step> {
        let cmd = SimArgs::augment_args(clap::Command::new("sim"));
        let matches = cmd.try_get_matches_from(argv).unwrap();
        let args = SimArgs::from_arg_matches(&matches).unwrap();
        ordered_steps(&args, &matches)
    }

    #[test]
    fn steps_keep_command_line_order() {
        let steps = parse(&[
            "sim",
            "--wasm",
            "x.wasm",
            "--query",
            "get",
            "--call",
            "inc",
            "--upgrade",
            "--advance-time",
            "5",
            "--call",
            "add (1 : nat64)",
            "--upgrade=(true)",
            "--tick",
        ]);
        assert_eq!(
            steps,
            vec![
                Step::Query("get".into()),
                Step::Call("inc".into()),
                Step::Upgrade("()".into()),
                Step::Advance(5.0),
                Step::Call("add (1 : nat64)".into()),
                Step::Upgrade("(true)".into()),
                Step::Tick,
            ]
        );
    }

    #[test]
    fn call_text_splits_into_method_and_candid() {
        let (m, bytes) = parse_call("add (5 : nat64)", None).unwrap();
        assert_eq!(m, "add");
        assert_eq!(bytes, Encode!(&5u64).unwrap());
        let (m, bytes) = parse_call("get", None).unwrap();
        assert_eq!(m, "get");
        assert_eq!(bytes, Encode!().unwrap());
        assert!(parse_call("add (5 : nat64", None).is_err());
        assert_eq!(reply_text(&Encode!(&42u64).unwrap(), None), "(42 : nat64)");
    }

    fn interface(did: &str) -> Interface {
        let (init, (env, service)) = instantiate_candid(CandidSource::Text(did)).unwrap();
        Interface { env, init, service }
    }

    #[test]
    fn the_interface_types_arguments_and_names_reply_fields() {
        #[derive(candid::CandidType, serde::Deserialize)]
        struct Request {
            prompt: String,
            max_tokens: u32,
            temperature: Option<f32>,
            seed: Option<u64>,
        }
        let did = "type Request = record { prompt : text; max_tokens : nat32; temperature : opt float32; \
                   seed : opt nat64 };\n\
                   service : (opt nat8) -> { start : (Request) -> (variant { Ok : nat64; Err : text }) }";
        let i = interface(did);
        // Untyped numbers and a missing opt field are fitted to the parameter types.
        let (_, bytes) = parse_call(
            "start (record { prompt = \"Hi\"; max_tokens = 4; temperature = opt 0.0 })",
            Some(&i),
        )
        .unwrap();
        let expected = Request {
            prompt: "Hi".into(),
            max_tokens: 4,
            temperature: Some(0.0),
            seed: None,
        };
        assert_eq!(bytes, Encode!(&expected).unwrap());
        // Without the interface the same text is an int and a float64: another type.
        assert_ne!(
            parse_call("start (record { prompt = \"Hi\"; max_tokens = 4 })", None)
                .unwrap()
                .1,
            bytes
        );

        let reply = Encode!(&Ok::<u64, String>(7)).unwrap();
        let rets = i.method("start").map(|(_, rets)| (&i.env, rets));
        assert_eq!(reply_text(&reply, rets), "(variant { Ok = 7 : nat64 })");
        assert!(
            reply_text(&reply, None).contains("17_724"),
            "hashed without the interface"
        );
        // Init arguments are typed too.
        assert_eq!(
            encode_args("(opt 3)", Some(i.init_types())).unwrap(),
            Encode!(&Some(3u8)).unwrap()
        );
    }
}
