//! PostgreSQL stopped and started again under a load of registrations, on a cluster of the
//! test's own (the shared test cluster must stay up for every other test).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use gatehouse_origin::db::{Database, PoolSettings};
use gatehouse_tests::pg::Postgres;
use gatehouse_tests::{Options, TestApp, register_body};
use sqlx::postgres::PgConnectOptions;

/// Clients registering one account after another for the whole test.
const CLIENTS: usize = 4;

/// A request that takes this long has hung: far above a healthy registration at test cost, far
/// below the pool's acquire timeout, which is what a request waiting on a dead database would
/// otherwise wait out.
const HANG: Duration = Duration::from_secs(10);

/// Waits until the clients have made `count` more registrations with outcome `status`.
async fn wait_for(outcomes: &std::sync::Mutex<Vec<Outcome>>, status: StatusCode, count: usize) {
    let with_status = || {
        let outcomes = outcomes.lock().unwrap();
        outcomes.iter().filter(|o| o.status == status).count()
    };
    let start = with_status();
    let deadline = Instant::now() + HANG * 3;
    loop {
        let seen = with_status();
        if seen >= start + count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {count} more {status}",
            seen - start
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone)]
struct Outcome {
    email: String,
    status: StatusCode,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_survive_a_postgres_restart_and_every_201_is_kept() {
    let data = std::env::temp_dir().join(format!("gatehouse-pg-fault-{}", std::process::id()));
    let cluster_dir = data.clone();
    let postgres = tokio::task::spawn_blocking(move || Postgres::start(&data, true))
        .await
        .unwrap()
        .expect("a private PostgreSQL cluster starts (PostgreSQL binaries are required)");
    postgres.create_database("gatehouse").unwrap();
    let options: PgConnectOptions = postgres.url("gatehouse").parse().unwrap();
    let pool = sqlx::PgPool::connect_with(options.clone()).await.unwrap();
    gatehouse_origin::MIGRATOR.run(&pool).await.unwrap();
    let settings = PoolSettings {
        max_connections: 8,
        // Long, so that a request waiting out the pool instead of failing fast would show.
        acquire_timeout: Duration::from_secs(60),
        test_before_acquire: true,
    };
    let app = Arc::new(
        TestApp::on(
            Database::connect_with(options, &settings),
            pool.clone(),
            Options::default(),
        )
        .await,
    );
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::<Outcome>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (app, outcomes, running) = (app.clone(), outcomes.clone(), running.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    let email = format!("load-{client}-{n}@example.com");
                    n += 1;
                    let started = Instant::now();
                    let response = app.post("/auth/register", register_body(&email)).await;
                    outcomes.lock().unwrap().push(Outcome {
                        email,
                        status: response.status,
                        took: started.elapsed(),
                    });
                    if response.status == StatusCode::SERVICE_UNAVAILABLE {
                        // What Retry-After asks of a client, shortened for the test.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();

    wait_for(&outcomes, StatusCode::CREATED, 10).await;
    let postgres = tokio::task::spawn_blocking(move || {
        postgres.stop();
        postgres
    })
    .await
    .unwrap();
    app.wait_until_ready_is(StatusCode::SERVICE_UNAVAILABLE)
        .await;
    wait_for(&outcomes, StatusCode::SERVICE_UNAVAILABLE, 10).await;
    let health = app.call(Method::GET, "/health", None, None).await;
    let postgres = tokio::task::spawn_blocking(move || {
        postgres.start_server().expect("PostgreSQL starts again");
        postgres
    })
    .await
    .unwrap();
    app.wait_until_ready_is(StatusCode::OK).await;
    wait_for(&outcomes, StatusCode::CREATED, 10).await;
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    assert_eq!(health.status, StatusCode::OK, "the process itself stays up");
    let outcomes = outcomes.lock().unwrap().clone();
    for outcome in &outcomes {
        assert!(
            matches!(
                outcome.status,
                StatusCode::CREATED | StatusCode::SERVICE_UNAVAILABLE
            ),
            "{outcome:?}: an outage is a 503, never another error"
        );
        assert!(outcome.took < HANG, "{outcome:?}: answered, not hung");
    }
    let stored: Vec<String> = sqlx::query_scalar("select email from users")
        .fetch_all(&pool)
        .await
        .unwrap();
    let acknowledged: Vec<&String> = outcomes
        .iter()
        .filter(|o| o.status == StatusCode::CREATED)
        .map(|o| &o.email)
        .collect();
    assert!(acknowledged.len() >= 20);
    for email in acknowledged {
        assert!(
            stored.contains(email),
            "{email} got a 201 but is not stored"
        );
    }
    drop(postgres);
    let _ = std::fs::remove_dir_all(cluster_dir);
}
