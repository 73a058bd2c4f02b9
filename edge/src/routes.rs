//! The edge's route table: every route of the API, with what the edge checks before forwarding it.
//!
//! Matching is exact, segment by segment, and `{name}` in a template stands for one non-empty
//! segment: `/auth/password` and `/auth/password/forgot` are two routes with their own rules, not
//! one prefix. A path not in the table is answered 404 here and a method the path does not serve
//! 405 with `Allow` (RFC 9110 section 15.5.6), neither costing the origin a request. The table
//! follows the origin's routers; a route added there is added here in the same change, and the
//! origin is deployed before the edge.

use crate::error::AppError;

/// What a request must carry before the edge forwards it (or answers it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Nothing: health, readiness, the key set, the API description.
    Open,
    /// A valid `X-API-Key`.
    ApiKey,
    /// A valid `X-API-Key` and the access token of a live session.
    User,
}

/// One route: a method on a path template.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub gate: Gate,
    /// Covered by the per-address credential throttle: the routes that run bcrypt, which a flood
    /// targets. Refresh is not among them: a whole office behind one address refreshes routinely,
    /// and the origin limits refreshes per session (`REFRESH_LIMIT_PER_SESSION`).
    pub throttled: bool,
    /// Answered here from the token alone, without an origin round trip.
    pub answered_here: bool,
}

impl Route {
    const fn new(method: &'static str, path: &'static str, gate: Gate) -> Self {
        Route {
            method,
            path,
            gate,
            throttled: false,
            answered_here: false,
        }
    }

    const fn throttled(mut self) -> Self {
        self.throttled = true;
        self
    }

    const fn answered_here(mut self) -> Self {
        self.answered_here = true;
        self
    }
}

/// Every route of the API. The origin's `/edge/*` routes are not here: they serve the edge itself,
/// and the edge secret it adds to what it forwards must never open them to a client.
pub const ROUTES: &[Route] = &[
    Route::new("POST", "/auth/register", Gate::ApiKey).throttled(),
    Route::new("POST", "/auth/login", Gate::ApiKey).throttled(),
    Route::new("GET", "/auth/verify", Gate::User).answered_here(),
    Route::new("GET", "/auth/api-key", Gate::ApiKey),
    Route::new("GET", "/auth/profile", Gate::User),
    Route::new("PATCH", "/auth/profile", Gate::User),
    // Deactivation re-authenticates with the password, so it runs bcrypt.
    Route::new("DELETE", "/auth/profile", Gate::User).throttled(),
    Route::new("POST", "/auth/refresh", Gate::ApiKey),
    Route::new("POST", "/auth/logout", Gate::User),
    Route::new("PUT", "/auth/password", Gate::User).throttled(),
    // Emailed links and the requests that mail them carry no access token: their holder may have
    // none (a forgotten password) or a stale one. Each sends mail or runs bcrypt, so each is
    // throttled.
    Route::new("POST", "/auth/password/forgot", Gate::ApiKey).throttled(),
    Route::new("POST", "/auth/password/reset", Gate::ApiKey).throttled(),
    Route::new("POST", "/auth/email/verify", Gate::ApiKey).throttled(),
    Route::new("POST", "/auth/email/verify/resend", Gate::ApiKey).throttled(),
    Route::new("PUT", "/auth/email", Gate::User).throttled(),
    Route::new("POST", "/auth/email/confirm", Gate::ApiKey).throttled(),
    Route::new("POST", "/auth/email/undo", Gate::ApiKey).throttled(),
    // Second factors. Enrolling, removing and replacing recovery codes re-authenticate with the
    // password; a login's second step and a step-up take codes a guesser would try: throttled.
    Route::new("GET", "/auth/mfa", Gate::User),
    Route::new("POST", "/auth/mfa/totp", Gate::User).throttled(),
    Route::new("DELETE", "/auth/mfa/totp", Gate::User).throttled(),
    Route::new("POST", "/auth/mfa/totp/confirm", Gate::User).throttled(),
    Route::new("POST", "/auth/mfa/recovery-codes", Gate::User).throttled(),
    Route::new("POST", "/auth/mfa/verify", Gate::ApiKey).throttled(),
    Route::new("POST", "/auth/mfa/step-up", Gate::User).throttled(),
    Route::new("POST", "/auth/mfa/passkey/start", Gate::ApiKey).throttled(),
    Route::new("POST", "/auth/mfa/passkey/finish", Gate::ApiKey).throttled(),
    // Passkeys: registering re-authenticates with the password; the sign-in ceremonies carry no
    // token and each stores state at the origin, so they are throttled too.
    Route::new("POST", "/auth/passkeys/register/start", Gate::User).throttled(),
    Route::new("POST", "/auth/passkeys/register/finish", Gate::User),
    Route::new("GET", "/auth/passkeys", Gate::User),
    Route::new("DELETE", "/auth/passkeys/{id}", Gate::User).throttled(),
    Route::new("POST", "/auth/passkeys/login/start", Gate::ApiKey).throttled(),
    Route::new("POST", "/auth/passkeys/login/finish", Gate::ApiKey).throttled(),
    Route::new("GET", "/auth/sessions", Gate::User),
    Route::new("DELETE", "/auth/sessions/{id}", Gate::User),
    Route::new("GET", "/.well-known/jwks.json", Gate::Open),
    Route::new("GET", "/openapi.json", Gate::Open),
    Route::new("GET", "/health", Gate::Open),
    Route::new("GET", "/ready", Gate::Open),
];

/// Whether `path` (as the runtime hands it over: dot segments resolved, percent-encoding kept) is
/// one the edge can vouch for: no empty segment (`//`) and no encoded `/` or `\`. Either could be
/// normalised by a proxy behind the edge into a path the edge never checked (`//edge/revocations`,
/// `/auth%2Flogin`), so such paths are refused rather than forwarded.
pub fn is_canonical(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !(path.contains("//") || path.contains('\\') || lower.contains("%2f") || lower.contains("%5c"))
}

/// The route serving `method` on `path`. `HEAD` is served wherever `GET` is, and forwarded: only
/// a `GET` is answered here. `method` is the raw method: the runtime's method type reads any
/// method it does not know as GET, and `FOO /auth/verify` must not be answered as a verify.
pub fn classify(method: &str, path: &str) -> Result<&'static Route, AppError> {
    let mut on_path = ROUTES
        .iter()
        .filter(|route| matches(route.path, path))
        .peekable();
    on_path.peek().ok_or(AppError::NotFound)?;
    let wanted = if method == "HEAD" { "GET" } else { method };
    on_path
        .find(|route| route.method == wanted)
        .ok_or_else(|| AppError::MethodNotAllowed {
            allow: allowed_methods(path),
        })
}

/// The methods `path` serves, for `Allow` and for a preflight's `Access-Control-Allow-Methods`:
/// those of the table, `HEAD` with `GET`, and `OPTIONS`. Every method of the table for a path the
/// table does not have.
pub fn allowed_methods(path: &str) -> String {
    let mut listed = ROUTES.iter().filter(|route| matches(route.path, path));
    let known = listed.next().is_some();
    let mut methods: Vec<&str> = Vec::new();
    for route in ROUTES
        .iter()
        .filter(|route| !known || matches(route.path, path))
    {
        if !methods.contains(&route.method) {
            methods.push(route.method);
        }
        if route.method == "GET" && !methods.contains(&"HEAD") {
            methods.push("HEAD");
        }
    }
    methods.push("OPTIONS");
    methods.join(", ")
}

/// Whether `path` is an instance of `template`. Most templates have no parameter and are compared
/// whole; the rest segment by segment. (Every request is matched against the table, a preflight
/// twice: splitting every template was 3.5 % of a profile of preflights.)
fn matches(template: &str, path: &str) -> bool {
    if !template.contains('{') {
        return template == path;
    }
    let mut expected = template.split('/');
    let mut actual = path.split('/');
    loop {
        match (expected.next(), actual.next()) {
            (None, None) => return true,
            (Some(expected), Some(actual)) => {
                let parameter = expected.starts_with('{') && expected.ends_with('}');
                if !(parameter && !actual.is_empty() || expected == actual) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(error: AppError) -> String {
        match error {
            AppError::MethodNotAllowed { allow } => allow,
            other => panic!("expected 405, got {other:?}"),
        }
    }

    #[test]
    fn every_route_is_found_by_its_own_method_and_path() {
        for route in ROUTES {
            let path = route
                .path
                .replace("{id}", "0190a0c4-1b2c-7d3e-8f40-5a6b7c8d9e0f");
            assert_eq!(classify(route.method, &path).unwrap(), route);
        }
    }

    #[test]
    fn a_route_is_listed_once() {
        for (i, route) in ROUTES.iter().enumerate() {
            assert!(
                ROUTES[i + 1..]
                    .iter()
                    .all(|other| (other.method, other.path) != (route.method, route.path)),
                "{} {} is listed twice",
                route.method,
                route.path
            );
        }
    }

    #[test]
    fn paths_match_exactly_not_by_prefix() {
        assert!(matches!(
            classify("POST", "/auth/password/forgot/now"),
            Err(AppError::NotFound)
        ));
        assert!(matches!(
            classify("GET", "/auth/profile/"),
            Err(AppError::NotFound)
        ));
        assert!(matches!(
            classify("GET", "/auth/verifyx"),
            Err(AppError::NotFound)
        ));
        assert!(matches!(
            classify("DELETE", "/auth/sessions/"),
            Err(AppError::NotFound)
        ));
        assert!(matches!(
            classify("DELETE", "/auth/sessions/a/b"),
            Err(AppError::NotFound)
        ));
        assert_eq!(
            classify("DELETE", "/auth/sessions/anything").unwrap().path,
            "/auth/sessions/{id}"
        );
    }

    #[test]
    fn the_edge_routes_of_the_origin_are_not_served() {
        assert!(matches!(
            classify("GET", "/edge/revocations"),
            Err(AppError::NotFound)
        ));
        assert!(matches!(classify("GET", "/edge"), Err(AppError::NotFound)));
    }

    #[test]
    fn head_is_served_as_get_but_never_answered_here() {
        let route = classify("HEAD", "/auth/verify").unwrap();
        assert_eq!(route.method, "GET");
        assert_eq!(route.gate, Gate::User);
        assert!(matches!(
            classify("HEAD", "/auth/login"),
            Err(AppError::MethodNotAllowed { .. })
        ));
    }

    #[test]
    fn a_method_the_path_does_not_serve_is_405_with_the_ones_it_does() {
        assert_eq!(
            allow(classify("PUT", "/auth/profile").unwrap_err()),
            "GET, HEAD, PATCH, DELETE, OPTIONS"
        );
        assert_eq!(
            allow(classify("PROPFIND", "/auth/verify").unwrap_err()),
            "GET, HEAD, OPTIONS"
        );
        // The runtime's own method type would read these as GET; the raw method is compared.
        assert_eq!(
            allow(classify("get", "/auth/verify").unwrap_err()),
            "GET, HEAD, OPTIONS"
        );
        assert_eq!(allowed_methods("/auth/login"), "POST, OPTIONS");
    }

    #[test]
    fn a_path_not_in_the_table_allows_every_method_of_the_table() {
        assert_eq!(
            allowed_methods("/unknown"),
            "POST, GET, HEAD, PATCH, DELETE, PUT, OPTIONS"
        );
    }

    #[test]
    fn what_each_route_requires() {
        let gate = |method, path| classify(method, path).unwrap().gate;
        assert_eq!(gate("POST", "/auth/login"), Gate::ApiKey);
        assert_eq!(gate("POST", "/auth/refresh"), Gate::ApiKey);
        assert_eq!(gate("PUT", "/auth/password"), Gate::User);
        assert_eq!(gate("POST", "/auth/logout"), Gate::User);
        assert_eq!(gate("DELETE", "/auth/sessions/x"), Gate::User);
        assert_eq!(gate("GET", "/.well-known/jwks.json"), Gate::Open);
        assert_eq!(gate("GET", "/ready"), Gate::Open);

        let throttled: Vec<_> = ROUTES
            .iter()
            .filter(|route| route.throttled)
            .map(|route| (route.method, route.path))
            .collect();
        assert_eq!(
            throttled,
            [
                ("POST", "/auth/register"),
                ("POST", "/auth/login"),
                ("DELETE", "/auth/profile"),
                ("PUT", "/auth/password"),
                ("POST", "/auth/password/forgot"),
                ("POST", "/auth/password/reset"),
                ("POST", "/auth/email/verify"),
                ("POST", "/auth/email/verify/resend"),
                ("PUT", "/auth/email"),
                ("POST", "/auth/email/confirm"),
                ("POST", "/auth/email/undo"),
                ("POST", "/auth/mfa/totp"),
                ("DELETE", "/auth/mfa/totp"),
                ("POST", "/auth/mfa/totp/confirm"),
                ("POST", "/auth/mfa/recovery-codes"),
                ("POST", "/auth/mfa/verify"),
                ("POST", "/auth/mfa/step-up"),
                ("POST", "/auth/mfa/passkey/start"),
                ("POST", "/auth/mfa/passkey/finish"),
                ("POST", "/auth/passkeys/register/start"),
                ("DELETE", "/auth/passkeys/{id}"),
                ("POST", "/auth/passkeys/login/start"),
                ("POST", "/auth/passkeys/login/finish"),
            ]
        );
        // Every route under /auth needs the key; nothing outside it does.
        for route in ROUTES {
            assert_eq!(
                route.gate != Gate::Open,
                route.path.starts_with("/auth/"),
                "{}",
                route.path
            );
        }
    }
}
