//! The `rwsplit` binary: see `rwsplit help`, or `cli` for the commands.

use std::process::ExitCode;

// A request allocates and frees many small, short-lived objects (headers, session JSON, rows,
// the page); the profile put glibc's malloc and free among the largest costs (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    rwsplit::cli::run(std::env::args().skip(1).collect())
}
