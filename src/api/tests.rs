//! The routes driven socket-free through [`app`], on a real node of one.

#![allow(clippy::unwrap_used)]

use actix_web::test::{call_service, init_service, read_body_json, TestRequest};

use super::*;
use crate::config::Secret;

const TOKEN: &str = "unit-test-token-0123456789";

async fn node() -> NodeHandle {
    let mut cluster = crate::testing::star(0);
    cluster.config.cluster.api_token = Some(Secret::new(TOKEN.as_bytes().to_vec()));
    cluster.start_node("master").await.unwrap()
}

#[actix_rt::test]
async fn unknown_routes_answer_401_without_the_token_and_404_with_it() {
    let node = node().await;
    let app = init_service(app(ApiState::new(node.clone()))).await;
    let r = call_service(&app, TestRequest::get().uri("/nowhere").to_request()).await;
    assert_eq!(r.status(), 401);
    let body: ErrorBody = read_body_json(r).await;
    assert_eq!(body.code, "unauthorized");
    let r = call_service(
        &app,
        TestRequest::get()
            .uri("/nowhere")
            .insert_header(("Authorization", format!("Bearer {TOKEN}")))
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 404);
    // A token with a different prefix scheme is not a bearer token.
    let r = call_service(
        &app,
        TestRequest::get()
            .uri("/api/v1/cluster")
            .insert_header(("Authorization", format!("Basic {TOKEN}")))
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 401);
    node.shutdown().await;
}

#[actix_rt::test]
async fn the_openapi_document_names_every_route_and_the_bearer_scheme() {
    let node = node().await;
    let app = init_service(app(ApiState::new(node.clone()))).await;
    let r = call_service(
        &app,
        TestRequest::get()
            .uri("/api/v1/openapi.json")
            .insert_header(("Authorization", format!("Bearer {TOKEN}")))
            .to_request(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = read_body_json(r).await;
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/cluster",
        "/api/v1/nodes/{name}",
        "/api/v1/events/{topic}",
        "/api/v1/calls/{method}",
        "/api/v1/stream",
        "/api/v1/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    node.shutdown().await;
}
