//! How strongly a session was authenticated, and the one rule for demanding more.
//!
//! Access tokens state how their session signed in: `amr` (authentication method references,
//! RFC 8176), `acr` (the level reached, here NIST SP 800-63B's `aal1` and `aal2`) and `auth_time`
//! (when the user last proved who they are; OpenID Connect Core 1.0 section 2). [`Method`] is the
//! one table from each way of signing in to those values; the origin stores a session's method and
//! renders the claims from it, so a refresh keeps them.
//!
//! An API behind Gatehouse asks for a level per request with RFC 9470's parameters on
//! `GET /auth/verify?acr_values=aal2&max_age=300`; [`Requirement`] parses them and
//! [`Requirement::check`] judges a token, at the edge and at the origin alike. A token that falls
//! short gets RFC 9470 section 3's 401 with
//! `WWW-Authenticate: Bearer error="insufficient_user_authentication"`, so the client knows to
//! step up rather than sign in again.

use crate::api::{Challenge, ProblemKind, ProblemReply};
use crate::token::AccessClaims;

/// An authenticator assurance level (NIST SP 800-63B section 4), ordered: `Aal1 < Aal2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// One factor: a password.
    Aal1,
    /// Two factors, or a user-verified passkey (something held plus something known or been).
    Aal2,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 2] = [Level::Aal1, Level::Aal2];

    /// The `acr` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Aal1 => "aal1",
            Level::Aal2 => "aal2",
        }
    }

    /// The level an `acr` value names, if it is one of ours.
    pub fn parse(acr: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|level| level.as_str() == acr)
    }

    /// The level a token's claims state. Tokens issued before levels existed, and any `acr` that
    /// is not ours, read as the lowest.
    pub fn of(claims: &AccessClaims) -> Level {
        claims
            .acr
            .as_deref()
            .and_then(Level::parse)
            .unwrap_or(Level::Aal1)
    }
}

/// A way a session was signed in; stored with the session (`sessions.auth_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// The password alone.
    Password,
    /// The password, then a TOTP code (RFC 6238).
    PasswordOtp,
    /// The password, then a one-time recovery code.
    PasswordRecoveryCode,
    /// A passkey whose authenticator verified the user (WebAuthn's UV flag). Software key: no
    /// attestation is asked for, so the hardware claim (`hwk`) is never made.
    Passkey,
    /// The password, then a user-verified passkey as the second factor.
    PasswordPasskey,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 5] = [
        Method::Password,
        Method::PasswordOtp,
        Method::PasswordRecoveryCode,
        Method::Passkey,
        Method::PasswordPasskey,
    ];

    /// The name stored with the session.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Password => "password",
            Method::PasswordOtp => "password_otp",
            Method::PasswordRecoveryCode => "password_recovery_code",
            Method::Passkey => "passkey",
            Method::PasswordPasskey => "password_passkey",
        }
    }

    /// The method a stored name names.
    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|method| method.as_str() == name)
    }

    /// The `amr` values (RFC 8176 section 2): `pwd` password, `otp` one-time password (a
    /// recovery code is one too), `swk` software-secured key, `user` user presence and
    /// verification, `mfa` more than one factor.
    pub const fn amr(self) -> &'static [&'static str] {
        match self {
            Method::Password => &["pwd"],
            Method::PasswordOtp | Method::PasswordRecoveryCode => &["pwd", "otp", "mfa"],
            Method::Passkey => &["swk", "user", "mfa"],
            Method::PasswordPasskey => &["pwd", "swk", "user", "mfa"],
        }
    }

    /// The level reached.
    pub const fn level(self) -> Level {
        match self {
            Method::Password => Level::Aal1,
            Method::PasswordOtp
            | Method::PasswordRecoveryCode
            | Method::Passkey
            | Method::PasswordPasskey => Level::Aal2,
        }
    }
}

/// The `error` of RFC 9470 section 3's challenge.
pub const INSUFFICIENT_USER_AUTHENTICATION: &str = "insufficient_user_authentication";

/// Why step-up parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    /// `acr_values` names no level Gatehouse issues, so no token could ever pass.
    #[error("acr_values names no known level (aal1, aal2)")]
    UnknownLevels,
    /// `max_age` is not a whole number of seconds.
    #[error("max_age is not a whole number of seconds")]
    BadMaxAge,
}

/// What a request demands of a token's authentication (RFC 9470 section 2): a level and how long
/// ago the user may last have proved who they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    /// The lowest level listed, if any was.
    level: Option<Level>,
    /// The levels listed that are ours, in the order given, for the challenge.
    listed: Vec<Level>,
    /// Seconds since `auth_time`, at most.
    max_age: Option<u64>,
}

/// How a token fell short of a [`Requirement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insufficient {
    requirement: Requirement,
    level_short: bool,
    too_old: bool,
}

impl Requirement {
    /// No demand beyond a valid token.
    pub fn none() -> Self {
        Requirement::default()
    }

    /// At least `level`, authenticated within `max_age_secs` if given.
    pub fn at_least(level: Level, max_age_secs: Option<u64>) -> Self {
        Requirement {
            level: Some(level),
            listed: vec![level],
            max_age: max_age_secs,
        }
    }

    /// The requirement of the `acr_values` and `max_age` query parameters (RFC 9470 section 2),
    /// as decoded by the caller's query parser. `acr_values` is space-separated; values that are
    /// not ours are ignored as long as one is ours.
    pub fn parse(
        acr_values: Option<&str>,
        max_age: Option<&str>,
    ) -> Result<Self, RequirementError> {
        let listed: Vec<Level> = acr_values
            .map(|values| values.split(' ').filter_map(Level::parse).collect())
            .unwrap_or_default();
        let asked_for_levels = acr_values.is_some_and(|values| !values.trim().is_empty());
        if asked_for_levels && listed.is_empty() {
            return Err(RequirementError::UnknownLevels);
        }
        let max_age = max_age
            .map(|age| {
                // Digits only: `u64::from_str` would also take a leading `+`.
                if age.is_empty() || !age.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(RequirementError::BadMaxAge);
                }
                age.parse().map_err(|_| RequirementError::BadMaxAge)
            })
            .transpose()?;
        Ok(Requirement {
            level: listed.iter().copied().min(),
            listed,
            max_age,
        })
    }

    /// Whether the requirement asks for nothing beyond a valid token.
    pub fn is_none(&self) -> bool {
        self.level.is_none() && self.max_age.is_none()
    }

    /// Judges a validated token at `now` (Unix seconds). A token passes when its level is at
    /// least the lowest level listed and, with `max_age`, its `auth_time` is at most that many
    /// seconds ago; a token without `auth_time` never meets a `max_age`.
    pub fn check(&self, claims: &AccessClaims, now: i64) -> Result<(), Insufficient> {
        let level_short = self.level.is_some_and(|level| Level::of(claims) < level);
        let too_old = self.max_age.is_some_and(|max_age| {
            claims
                .auth_time
                .is_none_or(|auth_time| now.saturating_sub(auth_time) > max_age as i64)
        });
        if level_short || too_old {
            return Err(Insufficient {
                requirement: self.clone(),
                level_short,
                too_old,
            });
        }
        Ok(())
    }
}

impl Insufficient {
    /// Whether the token's level was too low.
    pub fn level_short(&self) -> bool {
        self.level_short
    }

    /// Whether the token's authentication was too long ago.
    pub fn too_old(&self) -> bool {
        self.too_old
    }

    /// RFC 9470 section 3's answer: 401 with the levels asked for in `acr_values`, and `max_age`
    /// when the authentication's age is what failed.
    pub fn reply(&self) -> ProblemReply {
        let kind = ProblemKind::InsufficientUserAuthentication;
        let mut challenge = Challenge::new(crate::api::Scheme::Bearer)
            .with("error", INSUFFICIENT_USER_AUTHENTICATION);
        if !self.requirement.listed.is_empty() {
            let values: Vec<&str> = self.requirement.listed.iter().map(|l| l.as_str()).collect();
            challenge = challenge.with("acr_values", values.join(" "));
        }
        if let (true, Some(max_age)) = (self.too_old, self.requirement.max_age) {
            challenge = challenge.with("max_age", max_age.to_string());
        }
        let detail = match (self.level_short, self.too_old) {
            (true, false) => "this request needs a stronger sign-in; step up with a second factor",
            (false, true) => "this request needs a more recent sign-in; authenticate again",
            _ => "this request needs a stronger and more recent sign-in",
        };
        ProblemReply::from(kind)
            .with_challenge(challenge)
            .with_detail(detail)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use http::header::WWW_AUTHENTICATE;
    use uuid::Uuid;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn claims(method: Option<Method>, auth_time: Option<i64>) -> AccessClaims {
        AccessClaims {
            sub: Uuid::nil(),
            sid: Uuid::nil(),
            jti: Uuid::nil(),
            iat: NOW,
            nbf: NOW,
            exp: NOW + 900,
            iss: "iss".into(),
            aud: vec!["aud".into()],
            email: "ada@example.test".into(),
            email_verified: true,
            legacy_id: None,
            amr: method.map_or_else(Vec::new, |m| m.amr().iter().map(|&v| v.into()).collect()),
            acr: method.map(|m| m.level().as_str().into()),
            auth_time,
        }
    }

    fn require(acr_values: Option<&str>, max_age: Option<&str>) -> Requirement {
        Requirement::parse(acr_values, max_age).unwrap()
    }

    #[test]
    fn every_method_round_trips_and_states_mfa_exactly_when_it_reaches_aal2() {
        for method in Method::ALL {
            assert_eq!(Method::parse(method.as_str()), Some(method));
            assert_eq!(
                method.amr().contains(&"mfa"),
                method.level() == Level::Aal2,
                "{method:?}"
            );
            assert!(!method.amr().contains(&"hwk"), "no attestation, no hwk");
        }
    }

    #[test]
    fn levels_are_ordered() {
        assert!(Level::Aal1 < Level::Aal2);
        assert_eq!(Level::parse("aal2"), Some(Level::Aal2));
        assert_eq!(Level::parse("AAL2"), None);
    }

    #[test]
    fn tokens_without_a_level_read_as_aal1() {
        assert_eq!(Level::of(&claims(None, None)), Level::Aal1);
        let mut odd = claims(None, None);
        odd.acr = Some("urn:someone:gold".into());
        assert_eq!(Level::of(&odd), Level::Aal1);
    }

    #[test]
    fn no_parameters_demand_nothing() {
        let requirement = require(None, None);

        assert!(requirement.is_none());
        assert!(requirement.check(&claims(None, None), NOW).is_ok());
    }

    #[test]
    fn a_password_token_falls_short_of_aal2_and_a_totp_token_meets_it() {
        let requirement = require(Some("aal2"), None);

        let short = requirement
            .check(&claims(Some(Method::Password), Some(NOW)), NOW)
            .unwrap_err();

        assert!(short.level_short() && !short.too_old());
        assert!(
            requirement
                .check(&claims(Some(Method::PasswordOtp), Some(NOW)), NOW)
                .is_ok()
        );
        assert!(
            requirement
                .check(&claims(Some(Method::Passkey), None), NOW)
                .is_ok()
        );
    }

    #[test]
    fn the_lowest_level_listed_is_the_bar_and_unknown_values_are_ignored() {
        let requirement = require(Some("urn:x:gold aal2 aal1"), None);

        assert!(
            requirement
                .check(&claims(Some(Method::Password), None), NOW)
                .is_ok()
        );
    }

    #[test]
    fn only_unknown_levels_or_a_bad_max_age_are_refused() {
        assert_eq!(
            Requirement::parse(Some("gold silver"), None),
            Err(RequirementError::UnknownLevels)
        );
        for bad in ["", "-1", "+5", "1.5", "ten", "99999999999999999999999"] {
            assert_eq!(
                Requirement::parse(None, Some(bad)),
                Err(RequirementError::BadMaxAge),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn max_age_counts_from_auth_time_and_a_token_without_one_never_meets_it() {
        let requirement = require(None, Some("300"));

        assert!(
            requirement
                .check(&claims(Some(Method::Password), Some(NOW - 300)), NOW)
                .is_ok()
        );
        let old = requirement
            .check(&claims(Some(Method::Password), Some(NOW - 301)), NOW)
            .unwrap_err();
        assert!(old.too_old() && !old.level_short());
        assert!(requirement.check(&claims(None, None), NOW).is_err());
    }

    #[test]
    fn the_challenge_is_rfc_9470s_with_max_age_only_when_age_failed() {
        let requirement = require(Some("aal2"), Some("300"));
        let header = |claims: &AccessClaims| {
            let reply = requirement.check(claims, NOW).unwrap_err().reply();
            assert_eq!(reply.status(), 401);
            assert_eq!(reply.problem().code, INSUFFICIENT_USER_AUTHENTICATION);
            reply.headers()[WWW_AUTHENTICATE].clone()
        };

        assert_eq!(
            header(&claims(Some(Method::Password), Some(NOW))),
            r#"Bearer realm="gatehouse", error="insufficient_user_authentication", acr_values="aal2""#
        );
        assert_eq!(
            header(&claims(Some(Method::PasswordOtp), Some(NOW - 301))),
            r#"Bearer realm="gatehouse", error="insufficient_user_authentication", acr_values="aal2", max_age="300""#
        );
    }
}
