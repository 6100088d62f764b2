//! [`ApiError`]: every way a request to the HTTP API fails, mapped to one status code and a
//! JSON body `{"code", "message"}`. Clients see their own mistakes in full; internals are
//! logged and answered with a generic message.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::call::CallError;
use crate::node::PublishError;

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable and machine-readable: `unauthorized`, `bad_request`, `not_found`, `too_large`,
    /// `unknown_node`, or a call error code (`no_implementer`, `timeout`, …).
    pub code: String,
    /// For people: what went wrong.
    pub message: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required (Authorization: Bearer TOKEN)")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("no such resource: {0}")]
    NotFound(String),
    #[error("no node is named {0:?} in the configuration")]
    UnknownNode(String),
    #[error("the request body exceeds {max} bytes")]
    TooLarge { max: usize },
    /// A call failed; its code and status follow [`ApiError::status_of_call`].
    #[error("{0}")]
    Call(#[from] CallError),
    #[error("{0}")]
    Publish(#[from] PublishError),
    /// Something on our side; logged, not shown.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The `code` of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::UnknownNode(_) => "unknown_node",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Call(e) => e.code(),
            ApiError::Publish(e) => match e {
                PublishError::Encode(_) => "bad_payload",
                PublishError::TooLarge { .. } => "too_large",
                PublishError::Full(_) | PublishError::BusFull => "busy",
                PublishError::TargetDown(_) => "target_down",
                PublishError::UnknownNode(_) | PublishError::UnknownIncarnation(_) => {
                    "unknown_node"
                }
                PublishError::Stopped => "stopped",
                PublishError::BadTopic { .. } => "bad_topic",
            },
            ApiError::Internal(_) => "internal",
        }
    }

    /// One status per call error code (the table in README "Observe").
    pub fn status_of_call(code: &str) -> StatusCode {
        match code {
            "no_implementer" | "unknown_node" => StatusCode::NOT_FOUND,
            "timeout" => StatusCode::GATEWAY_TIMEOUT,
            "target_down" | "stopped" => StatusCode::SERVICE_UNAVAILABLE,
            "remote_error" | "implementer_gone" => StatusCode::BAD_GATEWAY,
            "bad_payload" | "bad_topic" => StatusCode::BAD_REQUEST,
            "busy" => StatusCode::TOO_MANY_REQUESTS,
            "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code().to_owned(),
            message: self.to_string(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::UnknownNode(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Call(_) | ApiError::Publish(_) => ApiError::status_of_call(self.code()),
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            tracing::error!("HTTP API: {detail}");
        }
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_call_error_code_has_its_own_documented_status() {
        let cases = [
            (CallError::NoImplementer("m".into()), 404),
            (CallError::Timeout(Duration::from_millis(5)), 504),
            (CallError::TargetDown("w".into()), 503),
            (CallError::UnknownNode("w".into()), 404),
            (CallError::Remote("boom".into()), 502),
            (CallError::BadPayload("x".into()), 400),
            (CallError::Busy("x".into()), 429),
            (CallError::TooLarge("x".into()), 413),
            (CallError::Stopped, 503),
            (CallError::ImplementerGone("x".into()), 502),
        ];
        for (e, status) in cases {
            let code = e.code();
            let api = ApiError::Call(e);
            assert_eq!(api.status_code().as_u16(), status, "{code}");
            assert_eq!(api.body().code, code);
        }
    }

    #[test]
    fn unauthorized_asks_for_a_bearer_token() {
        let r = ApiError::Unauthorized.error_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers().get("WWW-Authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
    }
}
