//! `GET /api/v1/openapi.json`: the OpenAPI document, generated from the handlers' and
//! types' annotations (utoipa), so it describes what the code does.

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::model::{
    Accepted, BackendDoc, ClusterDoc, Health, MemberDoc, MemberState, MembershipChange, ProxyDoc,
    StreamEvent,
};
use super::{metrics, routes, stream, ApiState, Authorized, ErrorBody};

/// The document: every route of [`super::app`].
#[derive(OpenApi)]
#[openapi(
    info(title = "nodecloud HTTP API", description = "See and steer a nodecloud cluster: members, events, calls, a live stream and metrics."),
    paths(
        routes::healthz,
        routes::readyz,
        routes::cluster,
        routes::node,
        routes::proxy,
        routes::publish,
        routes::call,
        stream::stream,
        document,
        metrics::metrics,
    ),
    components(schemas(
        ClusterDoc, MemberDoc, MemberState, MembershipChange, StreamEvent, Accepted, Health,
        ErrorBody, ProxyDoc, BackendDoc
    )),
    modifiers(&BearerToken),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The `bearer` security scheme every protected route names.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3 document", body = Object),
              (status = 401, description = "No or wrong token", body = ErrorBody)))]
pub async fn document(_: Authorized, _: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
