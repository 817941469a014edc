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

/// Runs the command named by `args` (the arguments after the program's name), on a Tokio
/// runtime shaped by `WORKER_THREADS`.
pub fn run(args: Vec<String>) -> ExitCode {
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
    let runtime = match runtime(config.worker_threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rwsplit: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_async(command, config, &args))
}

/// `WORKER_THREADS=1` runs everything on one thread: no wake-ups handed between threads,
/// which is what costs most where several instances share a few cores (BENCHMARKS.md).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build()
}

async fn run_async(command: Option<&str>, config: Config, args: &[String]) -> ExitCode {
    telemetry::init(config.log_format);
    let result = match command {
        None | Some("serve") => server::serve(config).await,
        Some("migrate") => server::migrate(&config).await,
        Some("console" | "write" | "read" | "lag" | "probe") => {
            match console::run(config, args).await {
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
