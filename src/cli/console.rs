//! `rwsplit console`: a terminal menu to write to the primary, read from any node, watch
//! replication and run the staleness probe, without writing SQL. The same actions run as
//! plain subcommands for scripts: `rwsplit write`, `read`, `lag`, `probe`.

use std::fmt::Write as _;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines, Stdin};

use rwsplit_router::{Consistency, Db, DbError, PRIMARY, ReadContext};

use crate::config::Config;
use crate::params::whole_number;
use crate::request_log::{self, NewEntry};
use crate::staleness::parse_modes;
use crate::staleness::probe::{self, MAX_PROBES};
use crate::staleness::senders::wal_senders;

const MAX_ROWS: i64 = 100;

pub const USAGE: &str = "\
rwsplit console                      an interactive menu
rwsplit write MESSAGE                write a message to the primary
rwsplit read [--node NODE] [--limit N]   the latest messages from primary or replicaN (N <= 100)
rwsplit lag                          every replica's state and lag
rwsplit probe [--mode MODE] [--n N]  the staleness probe (MODE eventual|sticky|causal|all, N <= 200)";

/// A wrong command line: the message says what is expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

/// The actions, each returning the text to print.
#[derive(Debug)]
struct Console {
    db: Db,
    instance: String,
    default_mode: Consistency,
}

/// Runs a console subcommand (`args` after the program name); a wrong command line is a
/// [`UsageError`].
pub async fn run(
    config: Config,
    args: &[String],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let console = Console {
        db: Db::new(config.db.router),
        instance: config.instance,
        default_mode: config.consistency,
    };
    let (command, rest) = args.split_first().ok_or_else(|| UsageError(USAGE.into()))?;
    let text = match command.as_str() {
        "console" => return console.menu().await,
        "write" => console.write(&rest.join(" ")).await,
        "read" => {
            let flags = Flags::parse(rest, &["--node", "--limit"])?;
            console.read(flags.node(), flags.limit()?).await
        }
        "lag" => {
            Flags::parse(rest, &[])?;
            console.lag().await
        }
        "probe" => {
            let flags = Flags::parse(rest, &["--mode", "--n"])?;
            console
                .probe(flags.modes(console.default_mode)?, flags.n()?)
                .await
        }
        other => return Err(UsageError(format!("unknown command {other:?}\n{USAGE}")).into()),
    };
    print!("{}", text?);
    console.db.close().await;
    Ok(())
}

impl Console {
    async fn write(&self, message: &str) -> Result<String, DbError> {
        let message = message.trim();
        if message.is_empty() {
            return Ok("nothing to write: the message is empty\n".into());
        }
        let entry = NewEntry {
            method: "CLI".into(),
            path: message.to_owned(),
            client_addr: "console".into(),
            user_agent: "rwsplit console".into(),
            instance: self.instance.clone(),
            session_tag: None,
            request_id: uuid::Uuid::now_v7().to_string(),
        }
        .truncated();
        let mut ctx = ReadContext::new(Consistency::Causal, None);
        let mut primary = self.db.writer(&mut ctx).await?;
        let row = request_log::insert(&mut primary, &entry).await;
        let row = primary.finish(row).await?;
        let lsn = ctx
            .last_write
            .and_then(|w| w.lsn)
            .map(|l| l.to_string())
            .unwrap_or_default();
        Ok(format!(
            "wrote #{} on the primary (commit LSN {lsn})\n",
            row.id
        ))
    }

    async fn read(&self, node: &str, limit: i64) -> Result<String, DbError> {
        let rows = self
            .db
            .read_from(node, move |c| Box::pin(request_log::latest(c, limit)))
            .await?;
        let mut out = format!("the latest {} rows, read from {node}:\n", rows.len());
        for row in rows {
            let _ = writeln!(
                out,
                "  #{:<8} {}  {:<4} {}  ({})",
                row.id,
                row.at.time(),
                row.method,
                row.path,
                row.instance
            );
        }
        Ok(out)
    }

    async fn lag(&self) -> Result<String, DbError> {
        self.db.check_replicas().await;
        let mut out =
            String::from("replica     usable  replayed to    bytes behind  lag      problem\n");
        let replicas = self.db.replica_statuses();
        for s in &replicas {
            let _ = writeln!(
                out,
                "{:<11} {:<7} {:<14} {:<13} {:<8} {}",
                s.name,
                if s.usable { "yes" } else { "no" },
                s.replay_lsn
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.bytes_behind
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.lag_ms
                    .map(|l| format!("{l} ms"))
                    .unwrap_or_else(|| "-".into()),
                s.problem.as_deref().unwrap_or_default()
            );
        }
        if replicas.is_empty() {
            out.push_str("(no replicas are configured)\n");
        }
        match wal_senders(&self.db).await {
            Ok(senders) => {
                out.push_str(
                    "\nthe primary's view (pg_stat_replication; lag is empty when idle):\n",
                );
                for w in senders {
                    let ms =
                        |v: Option<f64>| v.map_or_else(|| "idle".into(), |v| format!("{v:.1} ms"));
                    let _ = writeln!(
                        out,
                        "  {:<11} {:<10} write {:<9} flush {:<9} replay {:<9} behind {} bytes",
                        w.application_name,
                        w.state.unwrap_or_default(),
                        ms(w.write_lag_ms),
                        ms(w.flush_lag_ms),
                        ms(w.replay_lag_ms),
                        w.bytes_behind.unwrap_or(0)
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "\nthe primary could not be asked: {e}");
            }
        }
        Ok(out)
    }

    async fn probe(&self, modes: Vec<Consistency>, n: u32) -> Result<String, DbError> {
        let mut out = String::from(
            "mode      probes  stale  time travel  on replicas  visible p50  p95       max       \
             waited  primary at once\n",
        );
        let mut ctx = ReadContext::new(self.default_mode, None);
        for mode in modes {
            ctx.mode = mode;
            let (run, next) = probe::run(&self.db, &self.instance, ctx, n).await?;
            ctx = next;
            let s = run.summary;
            let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"));
            let _ = writeln!(
                out,
                "{:<9} {:<7} {:<6} {:<12} {:<12} {:<12} {:<9} {:<9} {:<7} {}",
                s.mode.as_str(),
                s.probes,
                s.stale,
                format!("{}/{}", s.time_travel, s.reader_reads),
                format!("{:.0}%", s.replica_share * 100.0),
                ms(s.visible_p50_ms),
                ms(s.visible_p95_ms),
                ms(s.visible_max_ms),
                s.waited_reads,
                s.primary_without_wait
            );
        }
        Ok(out)
    }

    /// The interactive menu over standard input; ends on `q` or end of input.
    async fn menu(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut input = BufReader::new(tokio::io::stdin()).lines();
        let mut stdout = tokio::io::stdout();
        let replicas = self.db.replica_statuses();
        let nodes = std::iter::once(PRIMARY)
            .chain(replicas.iter().map(|r| r.name.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        loop {
            let menu = format!(
                "\nrwsplit console ({}; nodes: {nodes})\n  \
                 1) write a message to the primary\n  \
                 2) read the latest messages from a node\n  \
                 3) replication state and lag\n  \
                 4) run the staleness probe\n  \
                 q) quit\nchoice> ",
                self.instance
            );
            stdout.write_all(menu.as_bytes()).await?;
            stdout.flush().await?;
            let Some(choice) = input.next_line().await? else {
                break;
            };
            let result = match choice.trim() {
                "1" => match ask(&mut input, &mut stdout, "message> ").await? {
                    Some(message) => self.write(&message).await,
                    None => break,
                },
                "2" => match ask(
                    &mut input,
                    &mut stdout,
                    &format!("node ({nodes}) [primary]> "),
                )
                .await?
                {
                    Some(node) => {
                        let node = if node.trim().is_empty() {
                            PRIMARY
                        } else {
                            node.trim()
                        };
                        self.read(node, 10).await
                    }
                    None => break,
                },
                "3" => self.lag().await,
                "4" => {
                    let prompt = format!(
                        "mode (eventual, sticky, causal, all) [{}]> ",
                        self.default_mode
                    );
                    let Some(mode) = ask(&mut input, &mut stdout, &prompt).await? else {
                        break;
                    };
                    match parse_modes(&mode, self.default_mode) {
                        Ok(modes) => self.probe(modes, 20).await,
                        Err(e) => Ok(format!("{e}\n")),
                    }
                }
                "q" | "quit" | "exit" => break,
                "" => continue,
                other => Ok(format!("{other:?} is not on the menu\n")),
            };
            let text = result.unwrap_or_else(|e| format!("error: {e}\n"));
            stdout.write_all(text.as_bytes()).await?;
        }
        stdout.write_all(b"bye\n").await?;
        self.db.close().await;
        Ok(())
    }
}

async fn ask(
    input: &mut Lines<BufReader<Stdin>>,
    stdout: &mut tokio::io::Stdout,
    prompt: &str,
) -> std::io::Result<Option<String>> {
    stdout.write_all(prompt.as_bytes()).await?;
    stdout.flush().await?;
    input.next_line().await
}

/// `--flag value` pairs, each allowed at most once.
struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: &[String], allowed: &[&str]) -> Result<Self, UsageError> {
        let mut pairs = Vec::new();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            if !allowed.contains(&flag.as_str()) || pairs.iter().any(|(f, _)| f == flag) {
                return Err(UsageError(format!("unexpected argument {flag:?}\n{USAGE}")));
            }
            let value = args
                .next()
                .ok_or_else(|| UsageError(format!("{flag} needs a value")))?;
            pairs.push((flag.clone(), value.clone()));
        }
        Ok(Self(pairs))
    }

    fn get(&self, flag: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn node(&self) -> &str {
        self.get("--node").unwrap_or(PRIMARY)
    }

    fn limit(&self) -> Result<i64, UsageError> {
        whole_number(self.get("--limit"), "--limit", 1..=MAX_ROWS)
            .map(|n| n.unwrap_or(10))
            .map_err(UsageError)
    }

    fn n(&self) -> Result<u32, UsageError> {
        whole_number(self.get("--n"), "--n", 1..=MAX_PROBES)
            .map(|n| n.unwrap_or(10))
            .map_err(UsageError)
    }

    fn modes(&self, default: Consistency) -> Result<Vec<Consistency>, UsageError> {
        parse_modes(self.get("--mode").unwrap_or(""), default).map_err(UsageError)
    }
}
