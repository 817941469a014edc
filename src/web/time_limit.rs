//! The whole-request time limit (`REQUEST_TIMEOUT_MS`): a request still running at the limit
//! is dropped and answered 503 as any other error is, with the error page (JSON on `.json`
//! routes). tower-http's timeout answers with an empty body; an `axum::middleware::from_fn`
//! would clone the services inside it and box a future for every request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::error::{AppError, JsonError};

#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeLimitLayer(pub(crate) Duration);

impl<S> Layer<S> for TimeLimitLayer {
    type Service = TimeLimit<S>;

    fn layer(&self, inner: S) -> TimeLimit<S> {
        TimeLimit {
            inner,
            limit: self.0,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct TimeLimit<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<Request> for TimeLimit<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TimeLimited<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let json = req.uri().path().ends_with(".json");
        TimeLimited {
            response: self.inner.call(req),
            expiry: tokio::time::sleep(self.limit),
            limit: self.limit,
            json,
        }
    }
}

pin_project_lite::pin_project! {
    /// The request's response, or the error page once `expiry` fires first.
    pub(crate) struct TimeLimited<F> {
        #[pin]
        response: F,
        #[pin]
        expiry: Sleep,
        limit: Duration,
        json: bool,
    }
}

impl<F, E> Future for TimeLimited<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(response) = this.response.poll(cx) {
            return Poll::Ready(response);
        }
        ready!(this.expiry.poll(cx));
        let error = AppError::TimedOut(*this.limit);
        Poll::Ready(Ok(if *this.json {
            JsonError(error).into_response()
        } else {
            error.into_response()
        }))
    }
}
