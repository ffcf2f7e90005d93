//! The canister's own HTTP face (`http_request`, a query): what a browser
//! or curl reaches through an HTTP gateway at `<canister-id>.raw.<domain>`.
//! `GET /health`, `GET /v1/models` (OpenAI's model list) and
//! `GET /v1/jobs/<id>` (a job as `poll` shows it; gateway requests come
//! from the anonymous principal, so only jobs started anonymously, whose
//! ids are capabilities, are visible). Responses are JSON and uncertified
//! (served on the `raw` domain).

use icllm_api::{ApiError, ApiResult, Health, HttpRequest, HttpResponse, JobId, JobView, ModelInfo};
use serde::Serialize;

/// What the routes read, so routing stays a pure function.
pub trait Source {
    fn health(&self) -> Health;
    fn model_info(&self) -> ModelInfo;
    fn job(&self, id: JobId) -> ApiResult<JobView>;
}

fn json(status_code: u16, value: &impl Serialize) -> HttpResponse {
    HttpResponse {
        status_code,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "no-store".into()),
        ],
        body: serde_json::to_vec(value).unwrap_or_default(),
        upgrade: None,
    }
}

/// An error in OpenAI's shape: `{"error": {"message", "type"}}`.
pub fn error(status_code: u16, kind: &str, message: &str) -> HttpResponse {
    json(
        status_code,
        &serde_json::json!({ "error": { "message": message, "type": kind } }),
    )
}

fn api_error(e: ApiError) -> HttpResponse {
    match e {
        ApiError::NotFound(m) => error(404, "not_found", &m),
        ApiError::NotAuthorized(m) => error(403, "not_authorized", &m),
        other => error(400, "invalid_request", &format!("{other:?}")),
    }
}

/// The response to `req`.
pub fn respond(req: &HttpRequest, source: &dyn Source) -> HttpResponse {
    let path = req.url.split(['?', '#']).next().unwrap_or("");
    if req.method != "GET" && req.method != "HEAD" {
        return error(
            405,
            "method_not_allowed",
            "only GET is served over HTTP; call the canister's candid methods to change state",
        );
    }
    match path.trim_end_matches('/') {
        "/health" => json(200, &source.health()),
        "/v1/models" => {
            let info = source.model_info();
            let data: Vec<serde_json::Value> = if info.state.starts_with("ready") {
                vec![serde_json::json!({
                    "id": info.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "icllm",
                })]
            } else {
                vec![]
            };
            json(200, &serde_json::json!({ "object": "list", "data": data }))
        }
        p => match p.strip_prefix("/v1/jobs/").map(str::parse::<JobId>) {
            Some(Ok(id)) => match source.job(id) {
                Ok(view) => json(200, &view),
                Err(e) => api_error(e),
            },
            Some(Err(_)) => error(400, "invalid_request", "a job id is a decimal number"),
            None => error(
                404,
                "not_found",
                &format!("no route {path}: try /health, /v1/models or /v1/jobs/<id>"),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Source for Fake {
        fn health(&self) -> Health {
            Health {
                model_state: "ready".into(),
                active_jobs: 1,
                total_jobs: 2,
                scheduler_armed: true,
                heap_bytes: 3,
                stable_bytes: 4,
                cycle_balance: 5,
                liquid_cycle_balance: 6,
                message_instruction_limit: 7,
            }
        }
        fn model_info(&self) -> ModelInfo {
            ModelInfo {
                name: "stories260K".into(),
                architecture: "llama".into(),
                ..ModelInfo::none("ready".into())
            }
        }
        fn job(&self, id: JobId) -> ApiResult<JobView> {
            Err(ApiError::NotFound(format!("no job {id} for this caller")))
        }
    }

    fn get(url: &str) -> HttpResponse {
        let req = HttpRequest {
            method: "GET".into(),
            url: url.into(),
            headers: vec![],
            body: vec![],
            certificate_version: None,
        };
        respond(&req, &Fake)
    }

    fn body(r: &HttpResponse) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn routes_answer_json_and_unknown_ones_404() {
        let r = get("/health?x=1");
        assert_eq!(r.status_code, 200);
        assert_eq!(body(&r)["model_state"], "ready");
        assert_eq!(body(&get("/v1/models"))["data"][0]["id"], "stories260K");
        let r = get("/v1/jobs/12");
        assert_eq!(r.status_code, 404);
        assert_eq!(body(&r)["error"]["message"], "no job 12 for this caller");
        assert_eq!(get("/v1/jobs/x").status_code, 400);
        assert_eq!(get("/nope").status_code, 404);
    }

    #[test]
    fn only_reads_are_served() {
        let req = HttpRequest {
            method: "POST".into(),
            url: "/health".into(),
            headers: vec![],
            body: b"{}".to_vec(),
            certificate_version: None,
        };
        assert_eq!(respond(&req, &Fake).status_code, 405);
    }
}
