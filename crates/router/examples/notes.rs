//! Writes a note on the primary and reads it back through the read route, once with each
//! API, then says where each read ran. Against the native stack (`scripts/stack up`):
//!
//! ```sh
//! cargo run -p rwsplit-router --example notes
//! ```
//!
//! `DATABASE_URL` and `DATABASE_REPLICA_URLS` (comma-separated) point it elsewhere; the
//! primary's role must be allowed to create the example's table.

use std::sync::Arc;

use rwsplit_router::{Config, Consistency, Db, ReadContext};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let primary = var(
        "DATABASE_URL",
        "postgres://rwsplit_owner:rwsplit_owner@127.0.0.1:54332/rwsplit",
    );
    let replicas = var(
        "DATABASE_REPLICA_URLS",
        "postgres://rwsplit_owner:rwsplit_owner@127.0.0.1:54333/rwsplit",
    );
    let mut config = Config::new(primary.parse()?);
    for url in replicas.split(',').filter(|u| !u.trim().is_empty()) {
        config = config.replica(url.trim().parse()?);
    }
    let db = Arc::new(Db::new(config));
    db.check_replicas().await;
    let _monitor = db.spawn_monitor();

    // A web app keeps this in the session between requests.
    let mut ctx = ReadContext::new(Consistency::Causal, None);

    // The plain API: a routed connection, then `finish` with the result.
    let mut primary = db.writer(&mut ctx).await?;
    let created = sqlx::query(
        "CREATE TABLE IF NOT EXISTS router_example_notes \
         (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL)",
    )
    .execute(&mut *primary)
    .await;
    primary.finish(created).await?;

    let mut primary = db.writer(&mut ctx).await?;
    let id = sqlx::query_scalar::<_, i64>(
        "INSERT INTO router_example_notes (body) VALUES ('hello') RETURNING id",
    )
    .fetch_one(&mut *primary)
    .await;
    let id = primary.finish(id).await?;

    let mut replica = db.reader(&mut ctx).await?;
    let found = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM router_example_notes WHERE id = $1)",
    )
    .bind(id)
    .fetch_one(&mut *replica)
    .await;
    let read = replica.finish(found).await?;
    println!(
        "note {id}: found {} on {} ({})",
        read.value, read.node, read.reason
    );
    if !read.value {
        return Err("causal mode read missed its own write".into());
    }

    // The closure API: a replica that fails mid-read is marked down and the next one answers.
    let read = db
        .read(&mut ctx, |c| {
            Box::pin(
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM router_example_notes")
                    .fetch_one(c),
            )
        })
        .await?;
    println!(
        "{} notes on {} ({}); session token {:?}",
        read.value, read.node, read.reason, ctx.token
    );
    db.close().await;
    Ok(())
}
