//! The HTTP surface: the routes, the middleware every request passes through, the one error
//! type, and the extractors that give handlers their per-request context.

pub mod error;
pub mod extract;
mod health;
mod index;
mod staleness;
mod time_limit;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::session;
use crate::state::AppState;
use error::AppError;
use time_limit::TimeLimitLayer;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The pages use one same-origin stylesheet, no scripts, no inline styles and no frames.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The whole application; tests and `serve` both start here.
pub fn app(state: AppState) -> Router {
    let saver = session::Saver::new(state.sessions.clone(), &state.config.session);
    // One stack, given to the router once: each `Router::layer` call would wrap every route
    // in a boxed service of its own, cloned with all the boxes inside it per request.
    // Outermost first: the id is set first, so the trace span and the response
    // carry it; the time limit is inside the headers and the metrics, so its answer has the
    // one and counts in the other.
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        // Security headers on every response, whoever sits in front of the app.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(TimeLimitLayer(state.config.request_timeout))
        .layer(axum::middleware::from_fn_with_state(saver, session::save));
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
        .layer(middleware)
        .with_state(state)
}

/// Every request's span: the layer runs after routing, so it knows the route.
fn request_span(req: &Request) -> Span {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("-", MatchedPath::as_str);
    tracing::info_span!("request", method = %req.method(), route = %route, request_id = %id)
}

/// Prometheus text format. nginx keeps this path off the public port.
async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
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
