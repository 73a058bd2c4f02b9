//! Moving users over from the FastAPI service Gatehouse replaces: a database laid out exactly as
//! that service's SQLAlchemy models create it, hashes at cost 4 and 12, and the import run into
//! the test origin's database.

use axum::http::StatusCode;
use gatehouse_origin::import::{Report, import_users};
use gatehouse_shared::ExposeSecret;
use gatehouse_shared::api::{TokenResponse, UserProfile};
use gatehouse_tests::{Options, PASSWORD, TestApp};
use serde_json::json;
use sqlx::PgPool;

/// `platform_users` as SQLAlchemy's `create_all` lays out the service's `User` model on
/// PostgreSQL (`database.py`: Integer primary key, String(255) unique email, naive DateTime, JSON).
const PLATFORM_USERS: &str = "
    create table platform_users (
        id serial not null,
        email varchar(255) not null,
        password_hash varchar(255) not null,
        is_active boolean,
        created_at timestamp without time zone,
        updated_at timestamp without time zone,
        first_name varchar(100),
        last_name varchar(100),
        meta_data json,
        primary key (id),
        unique (email)
    )";

/// A password longer than bcrypt's 72 bytes, which the old service cut without a word.
const LONG_PASSWORD: &str =
    "a passphrase so long that bcrypt only ever saw the first seventy-two bytes of it, no more";

/// A fresh database beside the test's own holding the old service's table with `rows`, and its
/// URL.
async fn old_service(app: &TestApp, rows: &[(&str, String, Option<bool>)]) -> String {
    let name = format!("legacy_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("create database {name}"))
        .execute(&app.pool)
        .await
        .unwrap();
    let server = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server");
    let (root, _) = server.rsplit_once('/').unwrap();
    let url = format!("{root}/{name}");
    let source = PgPool::connect(&url).await.unwrap();
    sqlx::query(PLATFORM_USERS).execute(&source).await.unwrap();
    for (email, hash, active) in rows {
        sqlx::query(
            "insert into platform_users
               (email, password_hash, is_active, created_at, updated_at, first_name, last_name,
                meta_data)
             values ($1, $2, $3, '2025-03-01 12:00:00', '2025-03-02 12:00:00', 'Old', 'Timer',
                     '{\"plan\": \"pro\"}')",
        )
        .bind(email)
        .bind(hash)
        .bind(active)
        .execute(&source)
        .await
        .unwrap();
    }
    source.close().await;
    url
}

fn bcrypt_at(cost: u32, password: &str) -> String {
    bcrypt::hash(password, cost).unwrap()
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn imported_users_sign_in_with_their_old_passwords_and_are_rehashed(pool: PgPool) {
    // The configured cost differs from both imported ones, so each login must rehash.
    let app = TestApp::with(
        pool,
        Options {
            hash_cost: 5,
            ..Options::default()
        },
    )
    .await;
    app.register("here.already@example.com").await;
    let source = old_service(
        &app,
        &[
            ("ada@example.com", bcrypt_at(4, PASSWORD), Some(true)),
            (
                "grace@example.com",
                bcrypt_at(12, "grace hopper's compiler"),
                None,
            ),
            ("long@example.com", bcrypt_at(4, LONG_PASSWORD), Some(true)),
            ("Bob@example.com", bcrypt_at(4, PASSWORD), Some(true)),
            ("bob@example.com", bcrypt_at(4, PASSWORD), Some(true)),
            ("not-an-address", bcrypt_at(4, PASSWORD), Some(true)),
            (
                "sha@example.com",
                "pbkdf2:sha256:600000$salt$hash".into(),
                Some(true),
            ),
            ("gone@example.com", bcrypt_at(4, PASSWORD), Some(false)),
            (
                "HERE.already@example.com",
                bcrypt_at(4, "another one"),
                Some(true),
            ),
        ],
    )
    .await;

    let report = import_users(&app.pool, &source).await.unwrap();

    assert_eq!(
        report,
        Report {
            read: 9,
            imported: 4,
            already_here: 1,
            colliding: vec!["Bob@example.com".into(), "bob@example.com".into()],
            invalid_email: vec!["not-an-address".into()],
            unusable_hash: vec!["sha@example.com".into()],
        }
    );
    for (email, password) in [
        ("ada@example.com", PASSWORD),
        ("grace@example.com", "grace hopper's compiler"),
    ] {
        let login = app.login(email, password).await;
        assert_eq!(login.status, StatusCode::OK, "{email}");
        let hash: String = sqlx::query_scalar("select password_hash from users where email = $1")
            .bind(email)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert!(
            hash.starts_with("$2b$05$"),
            "{email} rehashed at the configured cost"
        );
    }
    let ada: TokenResponse = app.login("ada@example.com", PASSWORD).await.json();
    assert_eq!(ada.user.legacy_id, Some(1));
    assert_eq!(ada.user.first_name.as_deref(), Some("Old"));
    assert_eq!(
        ada.user.created_at,
        time::macros::datetime!(2025-03-01 12:00:00 UTC)
    );
    assert_eq!(app.claims(&ada.access_token).legacy_id, Some(1));
    let profile = app
        .get("/auth/profile", ada.access_token.expose_secret())
        .await;
    assert_eq!(profile.json::<UserProfile>().legacy_id, Some(1));
    assert!(!ada.password_change_required);
    let kept: (serde_json::Value, bool) = sqlx::query_as(
        "select legacy_metadata, erase_if_unverified from users where legacy_id = 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        kept,
        (json!({"plan": "pro"}), false),
        "kept, and never erased as unverified"
    );
    assert_eq!(
        app.login("gone@example.com", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED,
        "inactive stays inactive"
    );
    assert_eq!(
        app.login("here.already@example.com", "another one")
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "an account already here is never overwritten"
    );
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn a_password_the_old_service_cut_at_72_bytes_works_until_a_new_one_is_set(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let source = old_service(
        &app,
        &[("long@example.com", bcrypt_at(4, LONG_PASSWORD), Some(true))],
    )
    .await;
    import_users(&app.pool, &source).await.unwrap();

    let login = app.login("long@example.com", LONG_PASSWORD).await;

    assert_eq!(login.status, StatusCode::OK);
    let tokens: TokenResponse = login.json();
    assert!(tokens.password_change_required, "asked for a new password");
    let new_password = "a new passphrase that fits";
    let changed = app
        .change_password(
            tokens.access_token.expose_secret(),
            LONG_PASSWORD,
            new_password,
        )
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    let after = app.login("long@example.com", new_password).await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(!after.json::<TokenResponse>().password_change_required);
    let old = app.login("long@example.com", LONG_PASSWORD).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "gatehouse_origin::MIGRATOR")]
async fn importing_twice_changes_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let source = old_service(
        &app,
        &[
            ("ada@example.com", bcrypt_at(4, PASSWORD), Some(true)),
            ("grace@example.com", bcrypt_at(4, PASSWORD), Some(true)),
        ],
    )
    .await;
    let first = import_users(&app.pool, &source).await.unwrap();
    let rows = app.table_rows().await;

    let second = import_users(&app.pool, &source).await.unwrap();

    assert_eq!((first.imported, first.already_here), (2, 0));
    assert_eq!((second.imported, second.already_here), (0, 2));
    assert_eq!(app.table_rows().await, rows);
}
