//! Who may do what. Pure functions of (caller, policy, controllers) so the
//! rules are testable without a replica.

use candid::Principal;
use icllm_api::{AccessMode, AccessPolicy, ApiError, ApiResult};

/// Administration (upload, settings, admin views) is for controllers only.
pub fn require_controller(caller: Principal, is_controller: bool) -> ApiResult<()> {
    if is_controller {
        Ok(())
    } else {
        Err(ApiError::NotAuthorized(format!(
            "{caller} is not a controller of this canister"
        )))
    }
}

/// May `caller` start jobs under `policy`? Controllers always may.
pub fn may_start_jobs(caller: Principal, is_controller: bool, policy: &AccessPolicy) -> ApiResult<()> {
    if is_controller {
        return Ok(());
    }
    if caller == Principal::anonymous() && !policy.allow_anonymous {
        return Err(ApiError::NotAuthorized(
            "anonymous callers may not start jobs; sign in, or ask a controller to allow anonymous access".into(),
        ));
    }
    match &policy.mode {
        AccessMode::Open => Ok(()),
        AccessMode::Allowlist(list) if list.contains(&caller) => Ok(()),
        AccessMode::Allowlist(_) => Err(ApiError::NotAuthorized(format!(
            "{caller} is not on this canister's allowlist"
        ))),
    }
}

/// May the caller see or control job `id`? `owner` is the job's owner as far
/// as the caller can reach it: the caller itself, or the anonymous principal
/// for a job started anonymously, whose id is a random capability (all
/// anonymous callers are one principal, so knowing the id is what tells
/// them apart); None otherwise. Controllers reach every job that `exists`.
/// A stranger gets the same answer as for a missing job, so ids reveal nothing.
pub fn may_access_job(is_controller: bool, owner: Option<Principal>, exists: bool, id: u64) -> ApiResult<()> {
    if owner.is_some() || (is_controller && exists) {
        Ok(())
    } else {
        Err(not_found(id))
    }
}

/// Which ingress update calls `inspect_message` accepts, by method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressRule {
    /// Queries (never as updates), internal and unknown methods.
    Never,
    /// Administration: controllers only.
    Controller,
    /// Callers the access policy lets start jobs.
    StartJob,
    /// Whoever may access the job named by the argument.
    JobOwner,
}

pub fn ingress_rule(method: &str) -> IngressRule {
    match method {
        "upload_begin"
        | "upload_chunk"
        | "upload_finalize"
        | "set_policy"
        | "set_limits"
        | "set_message_instruction_limit" => IngressRule::Controller,
        "start_job" | "completions" | "chat_completions" => IngressRule::StartJob,
        "step" | "cancel" | "delete_job" => IngressRule::JobOwner,
        _ => IngressRule::Never,
    }
}

/// Starting a job is refused while the cycles above the freezing threshold
/// (`liquid`) are below `floor`: what is left pays for the running jobs.
pub fn cycles_allow_new_jobs(liquid: u128, floor: u128) -> ApiResult<()> {
    if liquid >= floor {
        return Ok(());
    }
    Err(ApiError::QuotaExceeded(format!(
        "the canister is low on cycles ({liquid} above its freezing threshold, below the {floor} kept for \
         running jobs): new jobs are refused until a controller tops it up"
    )))
}

pub fn not_found(id: u64) -> ApiError {
    ApiError::NotFound(format!("no job {id} for this caller"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn new_jobs_wait_for_cycles_above_the_floor() {
        assert!(cycles_allow_new_jobs(1_000, 1_000).is_ok());
        match cycles_allow_new_jobs(999, 1_000) {
            Err(ApiError::QuotaExceeded(m)) => {
                assert!(m.contains("low on cycles (999") && m.contains("tops it up"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    use super::*;

    fn p(n: u8) -> Principal {
        Principal::from_slice(&[n; 29])
    }

    #[test]
    fn anonymous_refused_unless_allowed() {
        let mut policy = AccessPolicy {
            mode: AccessMode::Open,
            allow_anonymous: false,
        };
        assert!(may_start_jobs(Principal::anonymous(), false, &policy).is_err());
        assert!(may_start_jobs(p(1), false, &policy).is_ok());
        policy.allow_anonymous = true;
        assert!(may_start_jobs(Principal::anonymous(), false, &policy).is_ok());
    }

    #[test]
    fn allowlist_admits_only_listed_and_controllers() {
        let policy = AccessPolicy {
            mode: AccessMode::Allowlist(vec![p(1)]),
            allow_anonymous: false,
        };
        assert!(may_start_jobs(p(1), false, &policy).is_ok());
        assert!(may_start_jobs(p(2), false, &policy).is_err());
        assert!(may_start_jobs(p(2), true, &policy).is_ok());
    }

    #[test]
    fn jobs_belong_to_their_owner() {
        assert!(may_access_job(false, Some(p(1)), true, 7).is_ok());
        assert_eq!(may_access_job(false, None, true, 7), Err(not_found(7)));
        assert!(may_access_job(true, None, true, 7).is_ok());
        assert_eq!(may_access_job(true, None, false, 7), Err(not_found(7)));
        assert!(require_controller(p(2), false).is_err());
    }

    #[test]
    fn queries_are_never_accepted_as_updates() {
        for q in [
            "poll",
            "list_jobs",
            "admin_list_jobs",
            "upload_status",
            "get_settings",
            "health",
            "model_info",
        ] {
            assert_eq!(ingress_rule(q), IngressRule::Never, "{q}");
        }
        assert_eq!(ingress_rule("<icllm internal> step"), IngressRule::Never);
        assert_eq!(ingress_rule("start_job"), IngressRule::StartJob);
        assert_eq!(ingress_rule("delete_job"), IngressRule::JobOwner);
    }
}
