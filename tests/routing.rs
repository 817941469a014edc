//! The read/write router against real nodes: where each route lands, proven by asking the
//! connection itself, and that the read route refuses writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rwsplit_router::{Consistency, DbError, ReadContext};

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
    let mut ctx = ReadContext::new(Consistency::Sticky, None);
    db.write(&mut ctx, |c| Box::pin(in_recovery(c)))
        .await
        .unwrap();
    let read = db
        .read(&mut ctx, |c| Box::pin(in_recovery(c)))
        .await
        .unwrap();
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
