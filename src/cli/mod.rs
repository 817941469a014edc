//! The commands: `rwsplit [serve]` runs the web app; `rwsplit migrate` applies migrations and
//! exits; `rwsplit healthcheck` asks a running instance's `/healthz` (for container health
//! checks); `rwsplit console | write | read | lag | probe` are the terminal tools.

mod console;
mod healthcheck;

use std::process::ExitCode;

use crate::config::Config;
use crate::{server, telemetry};

const USAGE: &str = "usage: rwsplit [serve | migrate | healthcheck]\n\
    Configuration comes from the environment; see docs/configuration.md or .env.example.\n\
    Terminal tools:";

/// Runs the command named by `args` (the arguments after the program's name).
pub async fn run(args: Vec<String>) -> ExitCode {
    let command = args.first().map(String::as_str);
    if matches!(command, Some("-h" | "--help" | "help")) {
        println!("{USAGE}\n{}", console::USAGE);
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rwsplit: {e}");
            return ExitCode::from(2);
        }
    };
    if command == Some("healthcheck") {
        return match healthcheck::check(config.bind) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rwsplit: unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init(config.log_format);
    let result = match command {
        None | Some("serve") => server::serve(config).await,
        Some("migrate") => server::migrate(&config).await,
        Some("console" | "write" | "read" | "lag" | "probe") => {
            match console::run(config, &args).await {
                Err(e) if e.is::<console::UsageError>() => {
                    eprintln!("rwsplit: {e}");
                    return ExitCode::from(2);
                }
                other => other,
            }
        }
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
