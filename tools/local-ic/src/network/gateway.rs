//! An HTTP gateway for the `raw` domain: a request for
//! `<canister-id>.raw.localhost` (or any host whose first label is a
//! canister id, or with `?canisterId=<id>`) becomes the canister's
//! `http_request` query, called as the anonymous principal, and its
//! `HttpResponse` the HTTP response. As on the IC's `raw` domain, responses
//! are passed on without checking their certification; a response with
//! `upgrade = opt true` is asked again through `http_request_update`.

use super::{Outcome, Shared};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use candid::{CandidType, Decode, Deserialize, Encode, Principal};
use std::sync::Arc;

#[derive(CandidType, Deserialize)]
struct HttpRequest {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    certificate_version: Option<u16>,
}

#[derive(CandidType, Deserialize)]
struct HttpResponse {
    status_code: u16,
    headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    upgrade: Option<bool>,
}

/// The canister a request is for: the host's first label, else the
/// `canisterId` query parameter.
fn canister_of(headers: &HeaderMap, uri: &Uri) -> Option<Principal> {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("");
    let first = host.split(['.', ':']).next().unwrap_or("");
    Principal::from_text(first).ok().or_else(|| {
        uri.query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("canisterId="))
            .and_then(|id| Principal::from_text(id).ok())
    })
}

fn plain(status: StatusCode, message: String) -> Response {
    (status, [("content-type", "text/plain")], message).into_response()
}

pub(super) async fn serve(shared: Arc<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let Some(canister) = canister_of(&headers, &uri) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "no canister: use http://<canister-id>.raw.localhost:<port>/path or ?canisterId=<canister-id>".into(),
        );
    };
    let request = HttpRequest {
        method: method.to_string(),
        url: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: body.to_vec(),
        certificate_version: None,
    };
    let arg = Encode!(&request).expect("an HttpRequest encodes");
    let first = call(&shared, canister, "http_request", arg.clone(), false).await;
    let response = match first {
        Ok(r) if r.upgrade == Some(true) => call(&shared, canister, "http_request_update", arg, true).await,
        other => other,
    };
    match response {
        Ok(r) => {
            let mut out = (
                StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::BAD_GATEWAY),
                r.body,
            )
                .into_response();
            for (k, v) in r.headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    out.headers_mut().insert(k, v);
                }
            }
            out
        }
        Err(message) => plain(StatusCode::BAD_GATEWAY, message),
    }
}

async fn call(
    shared: &Shared,
    canister: Principal,
    method: &'static str,
    arg: Vec<u8>,
    update: bool,
) -> Result<HttpResponse, String> {
    let outcome = shared
        .exec(move |state| state.gateway_call(canister, method, arg, update))
        .await;
    match outcome {
        Outcome::Replied(bytes) => Decode!(&bytes, HttpResponse)
            .map_err(|e| format!("{canister}'s {method} reply is not an HttpResponse: {e}")),
        Outcome::Rejected {
            message, error_code, ..
        } => Err(format!("{canister} {method}: {error_code}: {message}")),
    }
}
