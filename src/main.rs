//! `rwsplit [serve]` runs the web app; `rwsplit migrate` applies migrations and exits;
//! `rwsplit healthcheck` asks a running instance's `/healthz` (for container health checks).

use std::process::ExitCode;

use rwsplit::config::Config;
use rwsplit::{server, telemetry};

const USAGE: &str = "usage: rwsplit [serve | migrate | healthcheck]\n\
    Configuration comes from the environment; see README.md or .env.example.";

#[tokio::main]
async fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("-h" | "--help" | "help")) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rwsplit: {e}");
            return ExitCode::from(2);
        }
    };
    if command.as_deref() == Some("healthcheck") {
        return match rwsplit::healthcheck::check(config.bind) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rwsplit: unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init(config.log_format);
    let result = match command.as_deref() {
        None | Some("serve") => server::serve(config).await,
        Some("migrate") => server::migrate(&config).await,
        Some(other) => {
            eprintln!("rwsplit: unknown command {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "rwsplit failed");
            ExitCode::FAILURE
        }
    }
}
