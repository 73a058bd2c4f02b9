//! The origin against a real PostgreSQL: one fresh database per test (`#[sqlx::test]`), requests
//! through the router, and a few over a real socket. Needs `DATABASE_URL` (`cargo xtask test`
//! provides it); without it every test fails.

mod api_key;
mod faults;
mod http;
mod import;
mod login;
mod mail;
mod memory;
mod metrics;
mod mfa;
mod openapi;
mod passkeys;
mod password;
mod profile;
mod refresh;
mod register;
mod resilience;
mod revocations;
mod sessions;
mod shedding;
mod signing_keys;
mod throttle;
mod verify;
