//! What several hungryserv instances on one database say to each other (see `crate::cluster`):
//! notifications on one `LISTEN/NOTIFY` channel, and session-level advisory locks that make
//! one instance the holder of a task that must run once.

use sqlx::{PgConnection, PgPool};

use super::StoreError;

/// The one channel every instance listens on.
pub const CHANNEL: &str = "hungryserv";

/// The first key of every task lock (`pg_try_advisory_lock(int, int)`): 0x68756e67, "hung".
/// The writer's lock is the one-`bigint` form of the same number; Postgres keeps the two
/// forms apart, so they never collide.
const LOCK_CLASS: i32 = 1_752_526_439;

/// Sends `payloads` on [`CHANNEL`], in order, in one statement (so one transaction: they are
/// delivered together, after it commits).
pub async fn notify(pool: &PgPool, payloads: &[String]) -> Result<(), StoreError> {
    sqlx::query!(
        r#"SELECT 1 AS "one!" FROM (SELECT pg_notify($1, p) FROM UNNEST($2::text[]) WITH ORDINALITY AS u(p, n) ORDER BY n) AS sent LIMIT 1"#,
        CHANNEL,
        payloads
    )
    .fetch_optional(pool)
    .await?;
    Ok(())
}

/// Makes Postgres notice a dead peer of this session within about ten seconds (a host that
/// vanished sends no FIN): its advisory locks are released then, and another instance takes
/// them over.
pub async fn keepalives(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query!(
        r#"SELECT set_config('tcp_keepalives_idle', '5', false) AS idle,
                  set_config('tcp_keepalives_interval', '2', false) AS interval,
                  set_config('tcp_keepalives_count', '3', false) AS count"#
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// Takes the session-level lock of task `key` if nobody holds it.
pub async fn try_lock(conn: &mut PgConnection, key: i32) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock($1, $2) AS "taken!""#,
        LOCK_CLASS,
        key
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Releases the lock of task `key` held by this session.
pub async fn unlock(conn: &mut PgConnection, key: i32) -> Result<(), StoreError> {
    sqlx::query_scalar!(
        r#"SELECT pg_advisory_unlock($1, $2) AS "released!""#,
        LOCK_CLASS,
        key
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// A round trip on the lock session: an error means its locks may be gone.
pub async fn ping(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query!("SELECT 1 AS one")
        .fetch_one(&mut *conn)
        .await?;
    Ok(())
}
