//! The HTTP surface: the routes, the middleware every request passes through, the one error
//! type, and the extractors that give handlers their per-request context.

pub mod error;
pub mod extract;
mod health;
mod index;
mod staleness;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::session;
use crate::state::AppState;
use error::AppError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The pages use one same-origin stylesheet, no scripts, no inline styles and no frames.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Set on every response, whoever sits in front of the app, unless the handler set its own.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// The whole application; tests and `serve` both start here.
pub fn app(state: AppState) -> Router {
    let timeout = state.config.request_timeout;
    Router::new()
        .route("/", get(index::index))
        .route("/test", get(staleness::page))
        .route("/test.json", get(staleness::json))
        .route("/test/write.json", get(staleness::write_json))
        .route("/test/read.json", get(staleness::read_json))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/static/style.css", get(stylesheet))
        .route("/metrics", get(metrics))
        .fallback(|| async { AppError::NotFound })
        .layer(axum::middleware::from_fn_with_state(
            session::Saver::new(state.sessions.clone(), &state.config.session),
            session::save,
        ))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
        // Outermost last: the id is set first, so the trace span and the response carry it.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("-", MatchedPath::as_str);
            tracing::info_span!("request", method = %req.method(), route, request_id = id)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// One middleware for all four headers: each layer of a router wraps every route and boxes
/// its future per request, so one layer costs less than four.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    }
    response
}

/// Prometheus text format. nginx keeps this path off the public port.
async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        crate::metrics::render(&state.metrics, &state.db),
    )
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        include_str!("../../static/style.css"),
    )
}
