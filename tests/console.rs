//! The terminal tools, driven through standard input and their command lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output, Stdio};

use std::io::Write;

fn rwsplit(stack: &common::Stack, args: &[&str], stdin: &str) -> Output {
    rwsplit_with(stack, args, stdin, &[])
}

fn rwsplit_with(
    stack: &common::Stack,
    args: &[&str],
    stdin: &str,
    vars: &[(&str, &str)],
) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwsplit"))
        .args(args)
        .envs(vars.iter().copied())
        .env("DATABASE_URL", stack.app_url("primary"))
        .env("DATABASE_REPLICA_URLS", stack.replica_urls(stack.replicas))
        .env("INSTANCE_NAME", "console-test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn the_menu_writes_reads_shows_lag_and_probes() {
    let stack = common::Stack::get();
    let message = format!("menu message {}", std::process::id());
    // The lag check between the write and the replica read gives the replica time to replay.
    let script = format!("1\n{message}\n3\n2\nreplica1\n4\nall\nnonsense\nq\n");
    let out = stdout(&rwsplit(&stack, &["console"], &script));
    assert!(out.contains("wrote #"), "{out}");
    assert!(out.contains("read from replica1"), "{out}");
    assert!(
        out.contains(&message),
        "the replica did not return the message: {out}"
    );
    assert!(out.contains("replica2"), "lag lists every replica: {out}");
    assert!(out.contains("pg_stat_replication"), "{out}");
    for mode in ["eventual", "sticky", "causal"] {
        assert!(
            out.lines().any(|l| l.starts_with(mode)),
            "no {mode} summary: {out}"
        );
    }
    assert!(out.contains("\"nonsense\" is not on the menu"), "{out}");
    assert!(out.trim_end().ends_with("bye"), "{out}");
}

#[test]
fn the_menu_ends_cleanly_at_end_of_input() {
    let stack = common::Stack::get();
    let out = stdout(&rwsplit(&stack, &["console"], "3\n"));
    assert!(out.trim_end().ends_with("bye"), "{out}");
}

#[test]
fn subcommands_serve_scripts() {
    let stack = common::Stack::get();
    let message = format!("scripted {}", std::process::id());
    assert!(stdout(&rwsplit(&stack, &["write", &message], "")).starts_with("wrote #"));
    let read = stdout(&rwsplit(
        &stack,
        &["read", "--node", "primary", "--limit", "5"],
        "",
    ));
    assert!(read.contains(&message), "{read}");
    let lag = stdout(&rwsplit(&stack, &["lag"], ""));
    assert!(lag.lines().any(|l| l.starts_with("replica1")), "{lag}");
    let probe = stdout(&rwsplit(
        &stack,
        &["probe", "--mode", "causal", "--n", "20"],
        "",
    ));
    let line = probe.lines().find(|l| l.starts_with("causal")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1..3], ["20", "0"], "20 probes, none stale: {probe}");
}

#[test]
fn the_tools_run_on_one_thread_or_on_several_and_refuse_none() {
    let stack = common::Stack::get();
    for threads in ["1", "4"] {
        let out = rwsplit_with(&stack, &["lag"], "", &[("WORKER_THREADS", threads)]);
        assert!(
            stdout(&out).lines().any(|l| l.starts_with("replica1")),
            "WORKER_THREADS={threads}"
        );
    }
    let out = rwsplit_with(&stack, &["lag"], "", &[("WORKER_THREADS", "0")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WORKER_THREADS"));
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let stack = common::Stack::get();
    for args in [
        &["probe", "--n", "0"][..],
        &["probe", "--mode", "bogus"],
        &["read", "--limit", "1000"],
        &["read", "--nope", "x"],
        &["lag", "extra"],
    ] {
        let output = rwsplit(&stack, args, "");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
    let unknown_node = rwsplit(&stack, &["read", "--node", "replica9"], "");
    assert!(!unknown_node.status.success());
    assert!(String::from_utf8_lossy(&unknown_node.stderr).contains("no database node called"));
}
