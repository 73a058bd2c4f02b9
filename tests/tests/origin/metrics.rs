//! `/metrics`: Prometheus text with requests per route and status, login outcomes, token checks,
//! the hashing queue and the pool.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gatehouse_shared::ExposeSecret;
use gatehouse_tests::{PASSWORD, TestApp};
use sqlx::PgPool;
use tower::ServiceExt as _;

async fn scrape(app: &TestApp) -> String {
    let response = gatehouse_origin::metrics::router(app.state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of the sample whose name and labels start with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn metrics_count_requests_logins_and_token_checks(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let token = app.register("ada@example.com").await.access_token;
    app.login("ada@example.com", PASSWORD).await;
    app.login("ada@example.com", "wrong guess").await;
    app.login("ghost@example.com", "wrong guess").await;
    app.get("/auth/verify", token.expose_secret()).await;
    app.get("/auth/verify", "not.a.token").await;
    app.delete(
        "/auth/sessions/0190a0b0-0000-7000-8000-000000000000",
        token.expose_secret(),
    )
    .await;
    app.get("/no/such/route", token.expose_secret()).await;
    app.call(
        Method::PUT,
        "/auth/verify",
        Some(token.expose_secret()),
        None,
    )
    .await;

    let text = scrape(&app).await;

    assert_eq!(
        sample(&text, r#"gatehouse_logins_total{outcome="success"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_logins_total{outcome="invalid_credentials"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_http_requests_total{method="POST",route="/auth/login",status="401"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_http_requests_total{method="DELETE",route="/auth/sessions/{id}",status="404"}"#
        ),
        1.0,
        "labelled by route template, not by path"
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_http_request_duration_seconds_count{method="GET",route="/auth/verify",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_token_verifications_total{outcome="valid"}"#
        ),
        2.0,
        "the verify and the session delete"
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_token_verifications_total{outcome="malformed"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        1.0,
        "a route that does not exist is counted, under one label"
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_http_requests_total{method="PUT",route="unmatched",status="405"}"#
        ),
        1.0
    );
    assert_eq!(sample(&text, "gatehouse_bcrypt_cost "), 4.0);
    assert_eq!(sample(&text, "gatehouse_hash_queue_depth "), 0.0);
    assert_eq!(
        sample(&text, "gatehouse_hash_queue_wait_seconds_count "),
        4.0,
        "one hash and three verifications"
    );
    assert_eq!(sample(&text, "gatehouse_db_up "), 1.0);
    assert!(sample(&text, r#"gatehouse_db_connections{state="idle"}"#) >= 0.0);
    assert!(sample(&text, r#"gatehouse_db_connections{state="in_use"}"#) >= 0.0);
    assert_eq!(
        sample(&text, "gatehouse_db_connections_max "),
        f64::from(app.state.db.pool().options().get_max_connections()),
        "the limit the alert on pool exhaustion divides by"
    );
    assert!(sample(&text, "gatehouse_process_peak_resident_memory_bytes ") > 1e6);
    assert!(!text.contains("ada@example.com"), "no user data in labels");
}

/// Every series the alerting rules and the Grafana dashboard in `ops/` query is one the origin
/// exports: renaming a metric without them fails here rather than leaving a silent alert or an
/// empty panel.
#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn alerts_and_dashboard_query_only_exported_series(pool: PgPool) {
    let app = TestApp::new(pool).await;
    // Families with labels appear once they have a sample: a register (which queues a mail), a
    // login and a token check give every one of them one.
    let token = app.register("ada@example.com").await.access_token;
    app.login("ada@example.com", PASSWORD).await;
    app.get("/auth/verify", token.expose_secret()).await;
    let text = scrape(&app).await;
    let mut exported = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(family) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = family.split_once(' ').expect("# TYPE name kind");
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        exported.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
    }
    let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");
    for file in ["prometheus/alerts.yml", "grafana/gatehouse.json"] {
        let source = std::fs::read_to_string(ops.join(file)).unwrap();
        let queried: Vec<&str> = source
            .match_indices("gatehouse_")
            .map(|(at, _)| {
                let rest = &source[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        assert!(queried.len() > 5, "{file} names the origin's series");
        for series in queried {
            assert!(
                exported.contains(series),
                "{file} queries {series}, which the origin does not export; it exports {exported:?}"
            );
        }
    }
}
