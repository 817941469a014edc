//! Structured logs: `RUST_LOG` filters, `LOG_FORMAT=json` for machines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Standard error: standard output belongs to the terminal tools' answers. Colours only
    // for a person at a terminal: in a file or a container's log they are escape codes to
    // strip, and painting every field of every request's span costs CPU (BENCHMARKS.md).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless, so its error is ignored on purpose.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
