//! `rwsplit [serve]` runs the web app; `rwsplit migrate` applies migrations and exits;
//! `rwsplit healthcheck` asks a running instance's `/healthz` (for container health checks);
//! `rwsplit console | write | read | lag | probe` are the terminal tools (see `console`).

use std::process::ExitCode;

use rwsplit::config::Config;
use rwsplit::{server, telemetry};

// A request allocates and frees many small, short-lived objects (headers, session JSON, rows,
// the page); the profile put glibc's malloc and free among the largest costs (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: rwsplit [serve | migrate | healthcheck]\n\
    Configuration comes from the environment; see README.md or .env.example.\n\
    Terminal tools:";

#[tokio::main]
async fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("-h" | "--help" | "help")) {
        println!("{USAGE}\n{}", rwsplit::console::USAGE);
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
        Some("console" | "write" | "read" | "lag" | "probe") => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            match rwsplit::console::run(config, &args).await {
                Err(e) if e.is::<rwsplit::console::UsageError>() => {
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
