//! The one error type of the web layer: a status code, a readable page (or JSON), and a log
//! line with the full story. Clients never see internal error text.

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use rwsplit_router::DbError;

use crate::request_log::LogError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The client's fault; the message is shown to it as is.
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    /// The whole request ran past `REQUEST_TIMEOUT_MS`.
    #[error("the request ran past its {} ms limit", .0.as_millis())]
    TimedOut(std::time::Duration),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("template: {0}")]
    Render(#[from] askama::Error),
    /// The app was put together wrong (a layer missing): never the client's doing.
    #[error("{0}")]
    Bug(&'static str),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::TimedOut(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ if self.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Db(_) | Self::Log(_) | Self::Render(_) | Self::Bug(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn is_unavailable(&self) -> bool {
        match self {
            Self::Db(e) => e.is_unavailable(),
            Self::Log(e) => e.is_unavailable(),
            _ => false,
        }
    }

    /// What the client is told: its own mistake in full, ours only in outline.
    fn public_message(&self) -> String {
        match self {
            Self::BadRequest(msg) | Self::TooManyRequests(msg) => msg.clone(),
            Self::NotFound => "There is nothing at this address.".into(),
            Self::TimedOut(_) => {
                "This request took too long and was stopped. Please retry in a few seconds.".into()
            }
            _ if self.is_unavailable() => {
                "The database is unavailable right now. Please retry in a few seconds.".into()
            }
            Self::Db(_) | Self::Log(_) | Self::Render(_) | Self::Bug(_) => {
                "Something went wrong on our side. It has been logged.".into()
            }
        }
    }

    fn log(&self) {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request rejected");
        }
    }

    fn finish(&self, mut response: Response) -> Response {
        *response.status_mut() = self.status();
        if matches!(
            self.status(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        response
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    title: String,
    message: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            message: self.public_message(),
        };
        let response = match page.render() {
            Ok(html) => axum::response::Html(html).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "error page failed to render");
                self.public_message().into_response()
            }
        };
        self.finish(response)
    }
}

/// The same errors for `.json` routes.
#[derive(Debug)]
pub struct JsonError(pub AppError);

impl<E: Into<AppError>> From<E> for JsonError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

#[derive(Serialize)]
struct ErrorBody {
    status: u16,
    error: String,
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        self.0.log();
        let body = ErrorBody {
            status: self.0.status().as_u16(),
            error: self.0.public_message(),
        };
        self.0.finish(Json(body).into_response())
    }
}
