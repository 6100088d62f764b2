//! The JSON routes: health, the cluster and its members, publishing events and making calls.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use super::model::{Accepted, BackendDoc, ClusterDoc, Health, MemberDoc, ProxyDoc};
use super::{ApiError, ApiState, Authorized, ErrorBody};
use crate::call::CallError;
use crate::node::DEFAULT_CALL_TIMEOUT;
use crate::wire::{self, json::cbor_to_json, json::json_to_cbor};

/// The longest call timeout a request may ask for (as the CLI's `--timeout`).
pub const MAX_CALL_TIMEOUT_MS: u64 = 3_600_000;

/// Is the process serving? Always 200 while the API runs; no token needed.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "The node serves", body = Health)))]
pub async fn healthz(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        node: state.node.name().to_owned(),
    })
}

/// Is the node fit to take work? 503 once an actor exhausted its restart budget.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, description = "Ready", body = Health),
              (status = 503, description = "Degraded", body = Health)))]
pub async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    let degraded = state.node.is_degraded();
    let body = Health {
        status: if degraded { "degraded" } else { "ok" }.into(),
        node: state.node.name().to_owned(),
    };
    if degraded {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

/// The cluster as this node sees it: every configured node, down ones included.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterDoc),
              (status = 401, description = "No or wrong token", body = ErrorBody)))]
pub async fn cluster(_: Authorized, state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(ClusterDoc::from(&state.node.cluster_view()))
}

/// One configured node.
#[utoipa::path(get, path = "/api/v1/nodes/{name}", tag = "cluster",
    params(("name" = String, Path, description = "A node name of the configuration")),
    responses((status = 200, body = MemberDoc),
              (status = 401, description = "No or wrong token", body = ErrorBody),
              (status = 404, description = "No such node (`unknown_node`)", body = ErrorBody)))]
pub async fn node(
    _: Authorized,
    state: web::Data<ApiState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = state.node.cluster_view();
    let member = view
        .members
        .iter()
        .find(|m| m.name == *name)
        .ok_or_else(|| ApiError::UnknownNode(name.into_inner()))?;
    Ok(HttpResponse::Ok().json(MemberDoc::from(member)))
}

/// What this node's HTTP proxy counted per backend (empty, with `listen` null, when this node
/// serves no proxy).
#[utoipa::path(get, path = "/api/v1/proxy", tag = "proxy",
    responses((status = 200, body = ProxyDoc),
              (status = 401, description = "No or wrong token", body = ErrorBody)))]
pub async fn proxy(_: Authorized, state: web::Data<ApiState>) -> HttpResponse {
    let node = &state.node;
    let listen = node
        .config()
        .node(node.name())
        .and_then(|n| n.proxy)
        .map(|a| a.to_string());
    let backends = match listen {
        Some(_) => node
            .proxy_counters()
            .into_iter()
            .map(|(node, address, c)| BackendDoc {
                node,
                address,
                requests: c.requests,
                errors: c.errors,
                in_flight: c.in_flight,
            })
            .collect(),
        None => Vec::new(),
    };
    HttpResponse::Ok().json(ProxyDoc {
        node: node.name().to_owned(),
        listen,
        backends,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PublishQuery {
    /// Only this node receives the event (default: every node).
    to: Option<String>,
}

/// Publish the JSON body (sent on as CBOR) on `topic`, to every node or `?to=NODE`.
#[utoipa::path(post, path = "/api/v1/events/{topic}", tag = "events",
    params(("topic" = String, Path, description = "A topic: dot-separated tokens, no wildcards"),
           PublishQuery),
    request_body(content = super::model::AnyJson, description = "Any JSON value (empty: null)"),
    responses((status = 202, description = "Sent", body = Accepted),
              (status = 400, description = "`bad_topic`, `bad_request` (body not JSON), `bad_payload`", body = ErrorBody),
              (status = 401, description = "No or wrong token", body = ErrorBody),
              (status = 404, description = "`unknown_node`", body = ErrorBody),
              (status = 413, description = "`too_large`", body = ErrorBody),
              (status = 503, description = "`target_down`, `stopped`", body = ErrorBody)))]
pub async fn publish(
    _: Authorized,
    state: web::Data<ApiState>,
    topic: web::Path<String>,
    query: web::Query<PublishQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let payload = json_payload(body, state.max_body_bytes).await?;
    let to = query.into_inner().to;
    state.node.publish_raw(&topic, to.clone(), &payload).await?;
    Ok(HttpResponse::Accepted().json(Accepted {
        topic: topic.into_inner(),
        to,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallQuery {
    /// The node that serves it (default: the least loaded implementer).
    to: Option<String>,
    /// Give up after this many milliseconds: 1 to 3600000 (default 5000).
    #[param(minimum = 1, maximum = 3600000)]
    timeout_ms: Option<u64>,
}

/// Call `method` with the JSON body as request; answer with the response as JSON.
#[utoipa::path(post, path = "/api/v1/calls/{method}", tag = "calls",
    params(("method" = String, Path, description = "The method name"), CallQuery),
    request_body(content = super::model::AnyJson, description = "Any JSON value (empty: null)"),
    responses((status = 200, description = "The implementer's response", body = super::model::AnyJson),
              (status = 400, description = "`bad_payload`, `bad_request`", body = ErrorBody),
              (status = 401, description = "No or wrong token", body = ErrorBody),
              (status = 404, description = "`no_implementer`, `unknown_node`", body = ErrorBody),
              (status = 413, description = "`too_large`", body = ErrorBody),
              (status = 429, description = "`busy`", body = ErrorBody),
              (status = 502, description = "`remote_error`, `implementer_gone`", body = ErrorBody),
              (status = 503, description = "`target_down`, `stopped`", body = ErrorBody),
              (status = 504, description = "`timeout`", body = ErrorBody)))]
pub async fn call(
    _: Authorized,
    state: web::Data<ApiState>,
    method: web::Path<String>,
    query: web::Query<CallQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let timeout = match query.timeout_ms {
        None => DEFAULT_CALL_TIMEOUT,
        Some(ms @ 1..=MAX_CALL_TIMEOUT_MS) => Duration::from_millis(ms),
        Some(ms) => {
            return Err(ApiError::BadRequest(format!(
                "timeout_ms {ms} is out of range: 1 to {MAX_CALL_TIMEOUT_MS}"
            )))
        }
    };
    let payload = json_payload(body, state.max_body_bytes).await?;
    match state
        .node
        .call_encoded(&method, query.to, timeout, payload)
        .await
    {
        wire::Outcome::Ok(bytes) => {
            let value = cbor_to_json(&bytes).map_err(|e| {
                ApiError::Call(CallError::BadPayload(format!(
                    "the response of {method} has no JSON form: {e}"
                )))
            })?;
            Ok(HttpResponse::Ok().json(value))
        }
        wire::Outcome::Error(f) => Err(ApiError::Call(CallError::from_failure(f))),
    }
}

/// Anything else: 401 without the token (nothing is disclosed), 404 with it.
pub async fn not_found(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    Err(if state.authorized(&req) {
        ApiError::NotFound(req.path().to_owned())
    } else {
        ApiError::Unauthorized
    })
}

/// Read a JSON body of at most `max` bytes and encode it as one CBOR item (empty: null).
async fn json_payload(mut body: web::Payload, max: usize) -> Result<bytes::Bytes, ApiError> {
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > max {
            return Err(ApiError::TooLarge { max });
        }
        buf.extend_from_slice(&chunk);
    }
    let value = if buf.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&buf)
            .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?
    };
    json_to_cbor(&value).map_err(|e| ApiError::Call(CallError::BadPayload(e.to_string())))
}
