//! Tasks that must run once among instances (src/cluster/leader.rs), against a real
//! Postgres: two instances' lock holders on one database, each wanting the same task. Exactly
//! one runs it; when the holder's session dies (terminated by Postgres, as when its process
//! is killed), the other takes the task over within seconds and the old holder stops it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hungryserv::cluster::leader::Leadership;

/// Counts while it runs.
async fn ticker(ticks: Arc<AtomicUsize>) {
    loop {
        ticks.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An instance: its lock holder and the task it wants, counting into `ticks`.
fn instance(pool: sqlx::PgPool, ticks: Arc<AtomicUsize>) -> Vec<tokio::task::JoinHandle<()>> {
    let leadership = Leadership::shared(pool);
    vec![
        tokio::spawn(leadership.clone().run()),
        tokio::spawn(leadership.run_held("pruner".into(), move || ticker(ticks.clone()))),
    ]
}

/// Ticks of both instances after `wait`.
async fn after(wait: Duration, ticks: &[Arc<AtomicUsize>; 2]) -> [usize; 2] {
    tokio::time::sleep(wait).await;
    [
        ticks[0].load(Ordering::Relaxed),
        ticks[1].load(Ordering::Relaxed),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_runs_a_task_and_another_takes_it_over_when_it_dies() {
    let url = support::fresh_database().await;
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let ticks = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let mut handles = Vec::new();
    for counter in &ticks {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        handles.extend(instance(pool, counter.clone()));
    }

    // Both have tried the lock by now (every second, and at once when claimed).
    let first = after(Duration::from_millis(2500), &ticks).await;
    let second = after(Duration::from_millis(500), &ticks).await;
    let running: Vec<usize> = (0..2).filter(|i| second[*i] > first[*i]).collect();
    assert_eq!(
        running.len(),
        1,
        "exactly one runs the task: {first:?} {second:?}"
    );
    let holder = running[0];
    let other = 1 - holder;
    assert_eq!(second[other], 0, "the other never ran it");

    // The holder's lock session dies: Postgres releases its locks.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(killed, 1, "one session held the lock");
    let killed_at = Instant::now();
    let before = ticks[other].load(Ordering::Relaxed);
    while ticks[other].load(Ordering::Relaxed) == before {
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "the other instance did not take the task over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = killed_at.elapsed();

    // The old holder noticed (its check failed) and stopped; it does not get the lock back.
    let settled = after(Duration::from_millis(2500), &ticks).await;
    let later = after(Duration::from_millis(1000), &ticks).await;
    assert_eq!(
        later[holder], settled[holder],
        "the old holder still runs the task"
    );
    assert!(later[other] > settled[other], "the new holder runs it");
    println!("takeover after the holder's session died: {takeover:?}");
    for handle in handles {
        handle.abort();
    }
}
