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

/// May `caller` see or control a job owned by `owner`? Only its owner and
/// controllers. A stranger gets the same answer as for a missing job, so job
/// ids reveal nothing.
pub fn may_access_job(caller: Principal, is_controller: bool, owner: Principal, id: u64) -> ApiResult<()> {
    if caller == owner || is_controller {
        Ok(())
    } else {
        Err(not_found(id))
    }
}

pub fn not_found(id: u64) -> ApiError {
    ApiError::NotFound(format!("no job {id} for this caller"))
}

#[cfg(test)]
mod tests {
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
        assert!(may_access_job(p(1), false, p(1), 7).is_ok());
        assert_eq!(may_access_job(p(2), false, p(1), 7), Err(not_found(7)));
        assert!(may_access_job(p(2), true, p(1), 7).is_ok());
        assert!(require_controller(p(2), false).is_err());
    }
}
