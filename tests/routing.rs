//! The read/write router against real nodes: where each route lands, proven by asking the
//! connection itself, and that the read route refuses writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rwsplit_router::{Consistency, Db, DbError, ReadContext, Routed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn in_recovery(c: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(c)
        .await
}

#[tokio::test]
async fn writes_reach_the_primary_and_reads_reach_a_replica() {
    let stack = common::Stack::get();
    let db = stack.checked_db(stack.replicas).await;
    let mut ctx = ReadContext::new(Consistency::Eventual, None);

    let on_standby = db
        .write(&mut ctx, |c| Box::pin(in_recovery(c)))
        .await
        .unwrap();
    assert!(!on_standby, "the write route ran on a standby");

    for _ in 0..stack.replicas * 2 {
        let read = db
            .read(&mut ctx, |c| Box::pin(in_recovery(c)))
            .await
            .unwrap();
        assert!(
            read.value,
            "the read route ran on a primary (labelled {})",
            read.node
        );
        assert!(read.node.starts_with("replica"), "{}", read.node);
    }
}

/// A write, then a read, in one new session of `mode`.
async fn write_then_read(db: &Db, mode: Consistency) -> Routed<bool> {
    let mut ctx = ReadContext::new(mode, None);
    db.write(&mut ctx, |c| Box::pin(in_recovery(c)))
        .await
        .unwrap();
    db.read(&mut ctx, |c| Box::pin(in_recovery(c)))
        .await
        .unwrap()
}

async fn insert_through_read_route(replicas: u16) -> (String, DbError) {
    let stack = common::Stack::get();
    let db = stack.db(replicas);
    let mut ctx = ReadContext::new(Consistency::Eventual, None);
    let result = db
        .read(&mut ctx, |c| {
            Box::pin(
                sqlx::query(
                    "INSERT INTO request_log (method, path, client_addr, user_agent, instance) \
                     VALUES ('GET', '/sneaky', '127.0.0.1', 'test', 'test')",
                )
                .execute(c),
            )
        })
        .await;
    let err = result.expect_err("a write went through the read route");
    (err.to_string(), err)
}

#[tokio::test]
async fn a_write_down_the_read_route_fails_with_replicas() {
    let (text, err) = insert_through_read_route(common::Stack::get().replicas).await;
    assert!(matches!(err, DbError::Query { .. }), "{err:?}");
    assert!(text.contains("read-only transaction"), "{text}");
}

#[tokio::test]
async fn a_write_down_the_read_route_fails_without_replicas() {
    let (text, err) = insert_through_read_route(0).await;
    assert!(
        matches!(&err, DbError::Query { node, .. } if node == "primary"),
        "{err:?}"
    );
    assert!(text.contains("read-only transaction"), "{text}");
}

#[tokio::test]
async fn without_replicas_reads_say_they_used_the_primary() {
    let stack = common::Stack::get();
    let db = stack.db(0);
    let mut ctx = ReadContext::new(Consistency::Eventual, None);
    let read = db
        .read(&mut ctx, |c| Box::pin(in_recovery(c)))
        .await
        .unwrap();
    assert_eq!(read.node, "primary");
    assert!(!read.value);
    assert_eq!(read.reason.to_string(), "no replicas are configured");
}

/// `/readyz` counts reads that wanted a replica and got the primary; a sticky session reading
/// its own recent write from the primary is the mode working, not a fallback.
#[tokio::test]
async fn sticky_reads_are_not_counted_as_fallbacks_but_unsafe_routes_are() {
    let stack = common::Stack::get();
    let db = stack.db(stack.replicas);
    let read = write_then_read(&db, Consistency::Sticky).await;
    assert_eq!(read.node, "primary");
    assert_eq!(read.reason.kind(), "sticky_window");
    assert_eq!(db.fallback_reads(), 0);

    let mut unknown = ReadContext::unknown(Consistency::Causal);
    let read = db
        .read(&mut unknown, |c| Box::pin(in_recovery(c)))
        .await
        .unwrap();
    assert_eq!(read.reason.kind(), "session_unavailable");
    assert_eq!(db.fallback_reads(), 1);
}

#[tokio::test]
async fn the_app_role_cannot_change_the_schema_or_create_roles() {
    let stack = common::Stack::get();
    let app = sqlx::PgPool::connect(&stack.app_url("primary"))
        .await
        .unwrap();
    for ddl in [
        "CREATE TABLE intruder (id int)",
        "DROP TABLE request_log",
        "ALTER TABLE request_log ADD COLUMN x int",
        "CREATE ROLE intruder",
        "TRUNCATE request_log",
    ] {
        let err = sqlx::query(ddl)
            .execute(&app)
            .await
            .expect_err(ddl)
            .to_string();
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{ddl}: {err}"
        );
    }
}

/// A proxy in front of `upstream` that counts the Sync messages its clients send: every round
/// trip of PostgreSQL's extended query protocol ends with one, and sqlx's ping is one alone.
async fn counting_syncs(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let syncs = Arc::new(AtomicUsize::new(0));
    let counted = syncs.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream).await.unwrap();
            let (mut from_client, to_client) = client.into_split();
            let (from_server, mut to_server) = server.into_split();
            tokio::spawn(copy(from_server, to_client));
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut frames = Frames::default();
                let mut buf = vec![0; 8192];
                while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                    counted.fetch_add(frames.syncs_in(&buf[..n]), Ordering::SeqCst);
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, syncs)
}

async fn copy(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
}

/// Splits a client's bytes into protocol messages: untyped until the startup message (an
/// SSL request may come first), then a type byte and a length each.
#[derive(Default)]
struct Frames {
    pending: Vec<u8>,
    started: bool,
}

impl Frames {
    const SSL_REQUEST: u32 = 80_877_103;

    fn syncs_in(&mut self, bytes: &[u8]) -> usize {
        self.pending.extend_from_slice(bytes);
        let mut syncs = 0;
        loop {
            let at = usize::from(self.started);
            let Some(len) = self.pending.get(at..at + 4) else {
                return syncs;
            };
            let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
            if self.pending.len() < at + len {
                return syncs;
            }
            if self.started {
                syncs += usize::from(self.pending[0] == b'S' && len == 4);
            } else {
                let code = u32::from_be_bytes(self.pending[4..8].try_into().unwrap());
                self.started = code != Self::SSL_REQUEST;
            }
            self.pending.drain(..at + len);
        }
    }
}

#[tokio::test]
async fn a_connection_used_again_at_once_costs_no_round_trip_of_its_own() {
    let stack = common::Stack::get();
    let primary = format!("127.0.0.1:{}", stack.base + 32).parse().unwrap();
    let (proxy, syncs) = counting_syncs(primary).await;
    let url = format!("postgres://rwsplit:rwsplit@{proxy}/rwsplit?sslmode=disable");
    let db = Db::new(rwsplit_router::Config::new(url.parse().unwrap()));
    let settled = || tokio::time::sleep(Duration::from_millis(200));

    // One write and one read, each on its own pool (the primary's and its read-only one):
    // connections opened, statements prepared.
    let write_and_read = || write_then_read(&db, Consistency::Eventual);
    write_and_read().await;
    settled().await;
    syncs.store(0, Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(write_and_read().await.node, "primary");
    }
    settled().await;
    assert_eq!(
        syncs.load(Ordering::SeqCst),
        20,
        "twenty queries took more round trips than twenty"
    );

    // Idle past a second, a connection is checked again before it is used.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    syncs.store(0, Ordering::SeqCst);
    write_and_read().await;
    settled().await;
    assert!(
        syncs.load(Ordering::SeqCst) > 2,
        "idle connections were used unchecked"
    );

    // Closing waits for every connection, the spare ones too.
    tokio::time::timeout(Duration::from_secs(5), db.close())
        .await
        .expect("the pools did not close");
}

#[tokio::test]
async fn a_connection_given_back_goes_to_a_caller_already_waiting_for_one() {
    let stack = common::Stack::get();
    let mut config = rwsplit_router::Config::new(stack.app_url("primary").parse().unwrap());
    config.pools.primary_size = 1;
    config.pools.acquire_timeout = Duration::from_secs(2);
    let db = Arc::new(Db::new(config));
    let write = |db: Arc<Db>, query: &'static str| async move {
        let mut ctx = ReadContext::new(Consistency::Eventual, None);
        db.write(&mut ctx, |c| Box::pin(sqlx::query(query).execute(c)))
            .await
    };
    // The pool's one connection, held a while, then given back; meanwhile a second caller
    // queues for it, and would wait out its acquire timeout if the slot kept it.
    let holder = tokio::spawn(write(db.clone(), "SELECT pg_sleep(0.3)"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    write(db.clone(), "SELECT 1")
        .await
        .expect("the connection given back did not reach the caller waiting for it");
    holder.await.unwrap().unwrap();
}
