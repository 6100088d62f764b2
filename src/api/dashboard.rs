//! The live dashboard: one page of plain JS and CSS (`assets/dashboard/`), embedded in the
//! binary (the machines that run a node may have no internet: no CDN, no build step). The
//! page loads without the token and then asks for it (a form, or `/?token=…` once, kept in
//! the browser's session storage); everything it shows comes from the token-protected API:
//! `GET /api/v1/cluster`, then the events of `GET /api/v1/stream`.

use actix_web::http::header::{self, CacheControl, CacheDirective};
use actix_web::HttpResponse;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard/dashboard.css");

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        // The page talks to this origin only.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

/// `GET /`: the page.
pub async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard.js`
pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

/// `GET /dashboard.css`
pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}
