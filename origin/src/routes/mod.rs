//! HTTP routes, one module per concern, merged in [`crate::app`].

pub mod auth;
pub mod edge;
pub mod health;
pub mod jwks;
pub mod sessions;
