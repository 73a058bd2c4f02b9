//! The OpenAPI 3.1 description of the HTTP API, generated from the handlers' annotations and the
//! shared request and response types, served at `/openapi.json`.
//!
//! Responses every operation of a kind can give are added here rather than repeated on each
//! handler: under `/auth`, 401 (API key or token) and 503 (database or hashing queue); with a
//! JSON body, 400, 413, 415 and 422; with query parameters, 422. All error bodies are RFC 9457
//! problem details. Length limits counted in bytes (passwords, emails) are checked by the server
//! and not stated as `maxLength`, which JSON Schema counts in characters.

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;
use gatehouse_shared::api::{FieldError, LogoutScope, PROBLEM_CONTENT_TYPE, Problem};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::AppState;

/// The description's fixed parts; the paths come from the routers themselves (each route is
/// registered with `utoipa_axum::routes!`, so a route cannot be served undocumented), and
/// [`router`] adds the responses common to every operation once they are all merged.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gatehouse",
        description = "Registration, login, sessions with rotating refresh tokens, and token verification. Errors are RFC 9457 problem details with a stable `code`."
    ),
    components(schemas(Problem, FieldError, LogoutScope))
)]
pub struct ApiDoc;

struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "edge_secret",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(
                gatehouse_shared::api::EDGE_SECRET_HEADER,
            ))),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                add_common(path, operation);
            }
        }
    }
}

fn add_common(path: &str, operation: &mut Operation) {
    let mut add = |status: &str, description: &str| {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(description).into());
    };
    if path.starts_with("/auth/") {
        add(
            "401",
            "The X-API-Key, or the bearer token where one is needed, is missing or invalid",
        );
        add(
            "503",
            "PostgreSQL is unreachable, the pool is exhausted, or the hashing queue is full; see Retry-After",
        );
    }
    if operation.request_body.is_some() {
        add("400", "The body is not JSON");
        add("413", "The body is over the size limit");
        add("415", "The body is not declared as application/json");
        add("422", "Fields are missing, mistyped or break a rule");
    }
    let query = utoipa::openapi::path::ParameterIn::Query;
    if operation
        .parameters
        .iter()
        .flatten()
        .any(|parameter| parameter.parameter_in == query)
    {
        add("422", "A query parameter is invalid");
    }
}

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_CONTENT_TYPE,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// `GET /openapi.json`, serving `api` (the document collected from the routers) with the common
/// responses and security schemes added. It is serialised once, here, not per request.
pub fn router(mut api: utoipa::openapi::OpenApi) -> Router<AppState> {
    CommonResponses.modify(&mut api);
    let document = Bytes::from(serde_json::to_vec(&api).expect("the OpenAPI document serialises"));
    Router::new().route(
        "/openapi.json",
        get(move || {
            let document = document.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], document) }
        }),
    )
}
