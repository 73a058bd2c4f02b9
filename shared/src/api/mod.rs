//! The HTTP API's request and response bodies, shared so the origin, the edge and every client
//! or test serialize exactly the same shapes.

mod problem;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{ExposeSecret, SecretString};
pub use problem::{Challenge, ChallengeSpec, ProblemKind, ProblemReply, REALM, Scheme};

/// Writes a secret member as plain text. `secrecy` leaves `SecretString` unserializable on
/// purpose; the API types that carry one over the wire opt in here, field by field.
fn expose<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

fn expose_option<S: Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => serializer.serialize_some(secret.expose_secret()),
        None => serializer.serialize_none(),
    }
}

/// The header that carries the API key on every `/auth/*` request.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Why a request carries no usable bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// There is no `Authorization` header.
    #[error("a bearer token is required")]
    Missing,
    /// The header is not `Bearer <token>`, or is not text.
    #[error("the Authorization header is not a bearer token")]
    Malformed,
}

/// The token of an `Authorization: Bearer <token>` header, given the header's raw value (RFC 6750
/// section 2.1; the scheme is case-insensitive per RFC 9110 section 11.1). The origin and the
/// edge both read it here, so they agree on every odd header.
pub fn bearer_token(header: Option<&[u8]>) -> Result<&str, BearerError> {
    let value = std::str::from_utf8(header.ok_or(BearerError::Missing)?)
        .map_err(|_| BearerError::Malformed)?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(BearerError::Malformed),
    }
}

/// The header carrying a request's id from the edge to the origin and back to the client.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The header in which the edge proves to the origin that a request came through it.
pub const EDGE_SECRET_HEADER: &str = "x-gatehouse-edge-secret";

/// The header in which the edge tells the origin the client's IP address. The origin believes
/// it only when [`EDGE_SECRET_HEADER`] carries the right secret.
pub const CLIENT_IP_HEADER: &str = "x-gatehouse-client-ip";

/// The unit a client is rate-limited by, the same at the edge and the origin: an IPv4 address, or
/// an IPv6 /64, the block one subscriber usually holds (counting single IPv6 addresses would let
/// a client rotate through 2^64 of them). IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_block(ip: std::net::IpAddr) -> String {
    client_blocks(ip).swap_remove(0).1
}

/// The sizes of address block a client is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSize {
    /// The client's own block: an IPv4 address or an IPv6 /64 (see [`client_block`]).
    Client,
    /// The IPv6 /56 around the client: what many providers give one subscriber (RIPE-690 4.2).
    Ipv6Slash56,
    /// The IPv6 /48 around the client: what one site may get, 65,536 /64s.
    Ipv6Slash48,
}

/// Every block a client at `ip` is counted in, its own first: for IPv6 also its /56 and /48, so
/// that a subscriber holding a whole /48 cannot multiply a per-client limit by 65,536 by moving
/// between /64s. Each size has its own, larger limit.
pub fn client_blocks(ip: std::net::IpAddr) -> Vec<(BlockSize, String)> {
    let v6 = match ip {
        std::net::IpAddr::V4(v4) => return vec![(BlockSize::Client, v4.to_string())],
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => return vec![(BlockSize::Client, v4.to_string())],
            None => v6,
        },
    };
    let s = v6.segments();
    vec![
        (
            BlockSize::Client,
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]),
        ),
        (
            BlockSize::Ipv6Slash56,
            format!("{:x}:{:x}:{:x}:{:x}::/56", s[0], s[1], s[2], s[3] & 0xff00),
        ),
        (
            BlockSize::Ipv6Slash48,
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]),
        ),
    ]
}

/// The response header in which the origin tells the edge which sessions a request ended:
/// `<sid>=<until>` entries (see [`RevokedSession`]) separated by commas. The edge acts on it and
/// removes it before the response reaches the client.
pub const ENDED_SESSIONS_HEADER: &str = "x-gatehouse-ended-sessions";

/// The media type of error bodies (RFC 9457 section 3).
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The `token_type` of every token response (RFC 6750).
pub const TOKEN_TYPE: &str = "Bearer";

/// `POST /auth/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    /// The address to sign in with; surrounding white space is ignored, case is not significant.
    #[cfg_attr(feature = "openapi", schema(format = "email"))]
    pub email: String,
    /// 8 characters to 72 bytes.
    #[cfg_attr(feature = "openapi", schema(value_type = String, min_length = 8))]
    #[serde(serialize_with = "expose")]
    pub password: SecretString,
    /// Optional first name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Optional last name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
}

/// `POST /auth/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    /// The address the account was registered with.
    #[cfg_attr(feature = "openapi", schema(format = "email"))]
    pub email: String,
    /// The account's password.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub password: SecretString,
    /// The `device_token` an earlier login to this account returned on this device, if any. It
    /// keeps the owner signing in here while others' failed guesses hold the account's limit.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(
        default,
        serialize_with = "expose_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_token: Option<SecretString>,
}

/// The answer to a successful register or login (RFC 6749 section 5.1 field names).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// The signed access token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub access_token: SecretString,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The session's refresh token (`gtr_...`): exchange it at `POST /auth/refresh` for a new
    /// pair. Each one works once; see the README for the rule on concurrent refreshes.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub refresh_token: SecretString,
    /// After a login: the device token (`gtd_...`) to send with this account's next logins from
    /// this device (`LoginRequest::device_token`). Store it like a refresh token.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(
        default,
        serialize_with = "expose_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_token: Option<SecretString>,
    /// True when the password was accepted by the old service's rule only (an imported account
    /// whose password is longer than the 72 bytes bcrypt uses): the client should ask for a new
    /// password (`PUT /auth/password`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub password_change_required: bool,
    /// The session the tokens belong to (the access token's `sid`).
    pub session_id: Uuid,
    /// The signed-in user.
    pub user: UserProfile,
}

/// `POST /auth/login`'s 200 when the account has a second factor: no tokens yet. Send the
/// `mfa_token` with a code to `POST /auth/mfa/verify` within `expires_in` seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MfaRequired {
    /// Always true: what tells this answer from a [`TokenResponse`].
    pub mfa_required: bool,
    /// The login's second step (`gtm_...`): single use, a few tries, short-lived.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub mfa_token: SecretString,
    /// Seconds the `mfa_token` stays usable.
    pub expires_in: u64,
    /// What completes the login: `totp`, `recovery_code`.
    pub methods: Vec<String>,
    /// As in [`TokenResponse::device_token`]: the password was right from this device.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    #[serde(
        default,
        serialize_with = "expose_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_token: Option<SecretString>,
}

/// `POST /auth/login`'s 200: the tokens, or the second step a second factor asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum LoginResponse {
    /// A second factor is required.
    MfaRequired(MfaRequired),
    /// Signed in.
    Tokens(Box<TokenResponse>),
}

/// `POST /auth/mfa/verify`: the login's `mfa_token` and a code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MfaVerifyRequest {
    /// The `mfa_token` of the login's answer.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub mfa_token: SecretString,
    /// A 6-digit TOTP code, or an unused recovery code.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub code: SecretString,
}

/// `POST /auth/mfa/totp/confirm` and `POST /auth/mfa/step-up`: a code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MfaCodeRequest {
    /// A 6-digit TOTP code (step-up also takes an unused recovery code).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub code: SecretString,
}

/// `POST /auth/mfa/totp` and `POST /auth/mfa/recovery-codes`: re-authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReauthenticateRequest {
    /// The password in use now.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub current_password: SecretString,
}

/// `DELETE /auth/mfa/totp`: the password and a code of the authenticator being removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RemoveTotpRequest {
    /// The password in use now.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub current_password: SecretString,
    /// A current code of the authenticator.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub code: SecretString,
}

/// `POST /auth/mfa/totp`: the secret to put in an authenticator app, not active until confirmed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TotpEnrollment {
    /// The secret in base32, for typing in.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub secret: SecretString,
    /// The `otpauth://totp/...` URI, for a QR code.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub otpauth_uri: SecretString,
    /// That URI as a QR code, an SVG document.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub qr_svg: SecretString,
}

/// `POST /auth/mfa/totp/confirm` and `POST /auth/mfa/recovery-codes`: a new set of recovery
/// codes, shown once. Each works once; a new set voids the old.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryCodes {
    /// The codes, `xxxx-xxxx-xxxx-xxxx`.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    #[serde(serialize_with = "expose_all")]
    pub recovery_codes: Vec<SecretString>,
}

fn expose_all<S: Serializer>(secrets: &[SecretString], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(secrets.iter().map(|secret| secret.expose_secret()))
}

/// `GET /auth/mfa`: the account's second factors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MfaStatus {
    /// When the TOTP authenticator was confirmed, if one is active.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub totp_enrolled_at: Option<OffsetDateTime>,
    /// Unused recovery codes left.
    pub recovery_codes_remaining: u32,
    /// Registered passkeys.
    #[serde(default)]
    pub passkeys: u32,
    /// What a login's second step accepts now; empty when the account has no second factor.
    pub methods: Vec<String>,
}

/// `POST /auth/mfa/step-up`: a new access token for the same session at the higher level. The
/// refresh token is unchanged; refreshing keeps the level.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccessTokenResponse {
    /// The signed access token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub access_token: SecretString,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The session (the token's `sid`).
    pub session_id: Uuid,
}

/// The start of a passkey ceremony: the options to hand to `navigator.credentials.create()` or
/// `.get()` (WebAuthn's JSON forms, `{"publicKey": {...}}`), and the id to finish it with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CeremonyStart {
    /// Send it back with the authenticator's answer, within 5 minutes, once.
    pub ceremony_id: Uuid,
    /// `PublicKeyCredentialCreationOptions` or `PublicKeyCredentialRequestOptions`, under
    /// `publicKey`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub options: serde_json::Value,
}

/// `POST /auth/passkeys/register/finish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PasskeyRegistration {
    /// The id `register/start` returned.
    pub ceremony_id: Uuid,
    /// The `PublicKeyCredential` `navigator.credentials.create()` resolved to, as JSON
    /// (`toJSON()`: `id`, `rawId`, `type`, `response.attestationObject`,
    /// `response.clientDataJSON`).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub credential: serde_json::Value,
    /// A name to tell it apart, e.g. "laptop"; 1 to 64 characters, "passkey" if left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /auth/passkeys/login/finish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PasskeyAssertion {
    /// The id `login/start` returned.
    pub ceremony_id: Uuid,
    /// The `PublicKeyCredential` `navigator.credentials.get()` resolved to, as JSON
    /// (`response.authenticatorData`, `clientDataJSON`, `signature`, `userHandle`).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub credential: serde_json::Value,
}

/// `POST /auth/mfa/passkey/start`: the login's second step, by passkey.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MfaPasskeyStart {
    /// The `mfa_token` of the login's answer.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub mfa_token: SecretString,
}

/// `POST /auth/mfa/passkey/finish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MfaPasskeyFinish {
    /// The `mfa_token` of the login's answer.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub mfa_token: SecretString,
    /// The id `mfa/passkey/start` returned.
    pub ceremony_id: Uuid,
    /// The `PublicKeyCredential` `navigator.credentials.get()` resolved to, as JSON.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub credential: serde_json::Value,
}

/// One registered passkey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PasskeyInfo {
    /// Its id, for `DELETE /auth/passkeys/{id}`.
    pub id: Uuid,
    /// The name its owner gave it.
    pub name: String,
    /// When it was registered, RFC 3339 in UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it last signed in.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

/// `POST /auth/passkeys/register/finish`'s 201.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PasskeyRegistered {
    /// The passkey.
    pub passkey: PasskeyInfo,
    /// When this is the account's first second factor: its recovery codes, shown this once.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>))]
    #[serde(
        default,
        serialize_with = "expose_all_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub recovery_codes: Option<Vec<SecretString>>,
}

fn expose_all_option<S: Serializer>(
    secrets: &Option<Vec<SecretString>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secrets {
        Some(secrets) => expose_all(secrets, serializer),
        None => serializer.serialize_none(),
    }
}

/// `GET /auth/passkeys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PasskeyList {
    /// The user's passkeys, oldest first.
    pub passkeys: Vec<PasskeyInfo>,
}

/// `GET /auth/profile`, and the `user` of a token response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserProfile {
    /// The user's id, also the access token's `sub`.
    pub id: Uuid,
    /// The address as registered.
    pub email: String,
    /// First name, if given.
    pub first_name: Option<String>,
    /// Last name, if given.
    pub last_name: Option<String>,
    /// False once the account is deactivated.
    pub is_active: bool,
    /// Whether the address is verified: a link mailed to it was followed, or a password reset
    /// went through it.
    #[serde(default)]
    pub email_verified: bool,
    /// When the account was created, RFC 3339 in UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The account's id in the service it was imported from, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_id: Option<i64>,
}

/// `PATCH /auth/profile`: a member left out is unchanged, `null` clears it, a string sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileRequest {
    /// New first name.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub first_name: Option<Option<String>>,
    /// New last name.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_name: Option<Option<String>>,
}

/// Tells a member given as `null` (`Some(None)`) from one left out (`None`, via `default`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// `POST /auth/refresh`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token of the last token response.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub refresh_token: SecretString,
}

/// `PUT /auth/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The password in use now (OWASP ASVS 5.0 6.2.3: changing it requires it).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub current_password: SecretString,
    /// The new password, under the same rules as at registration.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub new_password: SecretString,
}

/// `POST /auth/register` while verified addresses are required: no tokens until the address is
/// verified, and the same answer whether or not it was free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistrationPending {
    /// Always `verification_sent`.
    pub status: String,
}

/// `PUT /auth/email`: moves the account to another address once that address confirms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChangeEmailRequest {
    /// The address to move to.
    pub new_email: String,
    /// The password in use now (re-authentication).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub current_password: SecretString,
}

/// `DELETE /auth/profile`: re-authentication for deactivating the account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeactivateRequest {
    /// The password in use now: a stolen access token alone cannot close the account.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub current_password: SecretString,
}

/// `POST /auth/password/forgot` and `POST /auth/email/verify/resend`: an address to mail a link to,
/// if an account it applies to has it. The answer is 202 either way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EmailRequest {
    /// The address.
    pub email: String,
}

/// `POST /auth/email/verify`: the token of a verification link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LinkTokenRequest {
    /// The token from the link's fragment (`#token=gtl_...`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub token: SecretString,
}

/// `POST /auth/password/reset`: the token of a reset link and the new password.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    /// The token from the link's fragment (`#token=gtl_...`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub token: SecretString,
    /// The new password, under the same rules as at registration.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    #[serde(serialize_with = "expose")]
    pub new_password: SecretString,
}

/// Which sessions `POST /auth/logout` ends (`?scope=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogoutScope {
    /// The session of the presented token (the default).
    #[default]
    Current,
    /// Every session of the user.
    All,
    /// Every session of the user but the current one.
    Others,
}

/// One live session in `GET /auth/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    /// The session id, the `sid` of its access tokens.
    pub id: Uuid,
    /// When it began (register or login).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last used to sign in or refresh.
    #[serde(with = "time::serde::rfc3339")]
    pub last_used_at: OffsetDateTime,
    /// When it ends unless refreshed again: the earlier of the idle and the absolute limit.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The user agent that began it.
    pub user_agent: Option<String>,
    /// The address that began it.
    pub ip: Option<String>,
    /// Whether this is the session of the token that asked.
    pub current: bool,
}

/// `GET /auth/sessions`: the user's live sessions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionList {
    /// The sessions.
    pub sessions: Vec<SessionInfo>,
}

/// A session ended recently enough that access tokens issued for it may still be unexpired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokedSession {
    /// The session id (`sid`).
    pub sid: Uuid,
    /// Unix time after which no token of this session can pass validation any more, leeway
    /// included: the entry can be forgotten then.
    pub until: i64,
}

impl RevokedSession {
    /// `entries` as an [`ENDED_SESSIONS_HEADER`] value.
    pub fn to_header(entries: &[RevokedSession]) -> String {
        entries
            .iter()
            .map(|entry| format!("{}={}", entry.sid, entry.until))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The entries of an [`ENDED_SESSIONS_HEADER`] value; malformed entries are skipped.
    pub fn from_header(value: &str) -> Vec<RevokedSession> {
        value
            .split(',')
            .filter_map(|entry| {
                let (sid, until) = entry.trim().split_once('=')?;
                Some(RevokedSession {
                    sid: sid.parse().ok()?,
                    until: until.parse().ok()?,
                })
            })
            .collect()
    }
}

/// `GET /edge/revocations`: what the edge needs to refuse tokens of ended sessions. It lists only
/// sessions whose tokens could still be unexpired, so it stays small and every entry expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevocationList {
    /// The origin's time when the list was made (Unix seconds).
    pub generated_at: i64,
    /// The sessions.
    pub revoked: Vec<RevokedSession>,
    /// Signing keys revoked in an emergency (`gatehouse-origin key revoke`): tokens they signed
    /// are refused even by an edge still holding a key set with them. Absent from an origin that
    /// predates it, which reads as none.
    #[serde(default)]
    pub revoked_kids: Vec<String>,
}

/// `GET /auth/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyResponse {
    /// Always true; an invalid token gets a 401 problem instead.
    pub valid: bool,
    /// Whom the token speaks for.
    pub user: VerifiedUser,
    /// When the token expires, RFC 3339 in UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// How its session signed in.
    pub authentication: VerifiedAuthentication,
}

/// The identity inside a verified token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifiedUser {
    /// The user's id.
    pub id: Uuid,
    /// The user's email address when the token was issued.
    pub email: String,
    /// Whether that address was verified then.
    #[serde(default)]
    pub email_verified: bool,
}

/// How a verified token's session signed in (see [`crate::assurance`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifiedAuthentication {
    /// RFC 8176 method references, e.g. `["pwd"]` or `["pwd","otp","mfa"]`; empty for tokens
    /// issued before levels existed.
    pub amr: Vec<String>,
    /// `aal1` or `aal2`.
    pub acr: String,
    /// When the user last proved who they are, RFC 3339 in UTC; absent for older tokens.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub auth_time: Option<OffsetDateTime>,
}

impl VerifyResponse {
    /// The answer for a token whose `claims` passed validation; `None` when its expiry is not a
    /// representable time (validation has compared it as a number, so it is far from now).
    pub fn from_claims(claims: crate::token::AccessClaims) -> Option<Self> {
        let authentication = VerifiedAuthentication {
            acr: crate::assurance::Level::of(&claims).as_str().to_owned(),
            auth_time: match claims.auth_time {
                Some(at) => Some(OffsetDateTime::from_unix_timestamp(at).ok()?),
                None => None,
            },
            amr: claims.amr,
        };
        Some(VerifyResponse {
            valid: true,
            authentication,
            expires_at: OffsetDateTime::from_unix_timestamp(claims.exp).ok()?,
            user: VerifiedUser {
                id: claims.sub,
                email: claims.email,
                email_verified: claims.email_verified,
            },
        })
    }
}

/// `GET /health` and `GET /ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthResponse {
    /// `ok`, or `unavailable` when a dependency does not answer.
    pub status: String,
    /// `/ready` only: whether the origin hears PostgreSQL's change notifications (`subscribed`),
    /// so that it answers token checks from memory, or reads the database for every check
    /// meanwhile (`unsubscribed`), or was told not to (`off`, `LISTEN_DATABASE_URL=off`). Either
    /// way its answers are current; only their cost differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<String>,
}

/// Every error body: RFC 9457 problem details plus a stable `code` for programs to match on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:gatehouse:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind of problem, the same for every occurrence.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time, for people.
    pub detail: String,
    /// What went wrong, for programs; stable across releases.
    pub code: String,
    /// Which fields were refused and why, on validation problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    /// A problem of kind `code` with the given status, title and detail.
    pub fn new(status: u16, code: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_: format!("urn:gatehouse:problem:{code}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            code: code.to_owned(),
            errors: Vec::new(),
        }
    }
}

/// One refused field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// The field's name as it appears in the request.
    pub field: String,
    /// Why it was refused.
    pub message: String,
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn bearer_tokens_are_read_with_any_scheme_case_and_odd_headers_are_malformed() {
        fn token(header: &str) -> Result<&str, BearerError> {
            bearer_token(Some(header.as_bytes()))
        }

        assert_eq!(token("Bearer abc"), Ok("abc"));
        assert_eq!(token("bEaReR  abc "), Ok("abc"));
        assert_eq!(bearer_token(None), Err(BearerError::Missing));
        for header in [
            "Bearer",
            "Bearer ",
            "Bearer   ",
            "Basic abc",
            "token",
            "Bearerabc",
        ] {
            assert_eq!(token(header), Err(BearerError::Malformed), "{header:?}");
        }
        assert_eq!(
            bearer_token(Some(b"Bearer \xff\xfe")),
            Err(BearerError::Malformed)
        );
    }

    #[test]
    fn patch_tells_null_from_absent() {
        let absent: UpdateProfileRequest = serde_json::from_str(r#"{"last_name":"L"}"#).unwrap();
        let null: UpdateProfileRequest = serde_json::from_str(r#"{"first_name":null}"#).unwrap();

        assert_eq!(absent.first_name, None);
        assert_eq!(absent.last_name, Some(Some("L".into())));
        assert_eq!(null.first_name, Some(None));
    }

    #[test]
    fn patch_refuses_unknown_members() {
        assert!(serde_json::from_str::<UpdateProfileRequest>(r#"{"email":"x@y.z"}"#).is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let register = RegisterRequest {
            email: "a@b.c".into(),
            password: "hunter2hunter2".into(),
            first_name: None,
            last_name: None,
        };
        let login = LoginRequest {
            email: "a@b.c".into(),
            password: "hunter2hunter2".into(),
            device_token: None,
        };

        let change = ChangePasswordRequest {
            current_password: "hunter2hunter2".into(),
            new_password: "hunter3hunter3".into(),
        };
        let refresh = RefreshRequest {
            refresh_token: "gtr_hunter2".into(),
        };
        let change_email = ChangeEmailRequest {
            new_email: "b@c.d".into(),
            current_password: "hunter2hunter2".into(),
        };
        let deactivate = DeactivateRequest {
            current_password: "hunter2hunter2".into(),
        };
        let link = LinkTokenRequest {
            token: "gtl_hunter2".into(),
        };
        let reset = ResetPasswordRequest {
            token: "gtl_hunter2".into(),
            new_password: "hunter3hunter3".into(),
        };

        for debug in [
            format!("{register:?}"),
            format!("{login:?}"),
            format!("{change:?}"),
            format!("{refresh:?}"),
            format!("{link:?}"),
            format!("{deactivate:?}"),
            format!("{change_email:?}"),
            format!("{reset:?}"),
        ] {
            assert!(!debug.contains("hunter"), "{debug}");
            assert!(debug.contains("REDACTED"), "{debug}");
        }
    }

    #[test]
    fn secrets_still_cross_the_wire_as_plain_strings() {
        let login = LoginRequest {
            email: "a@b.c".into(),
            password: "hunter2hunter2".into(),
            device_token: None,
        };

        let json = serde_json::to_value(&login).unwrap();
        let back: LoginRequest = serde_json::from_value(json.clone()).unwrap();

        assert_eq!(json["password"], "hunter2hunter2");
        assert_eq!(back.password.expose_secret(), "hunter2hunter2");
    }

    #[test]
    fn problem_serializes_type_and_omits_empty_errors() {
        let problem = Problem::new(401, "invalid_token", "Invalid token", "token has expired");

        let json = serde_json::to_value(&problem).unwrap();

        assert_eq!(json["type"], "urn:gatehouse:problem:invalid_token");
        assert_eq!(json["status"], 401);
        assert!(json.get("errors").is_none());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let block = |ip: &str| client_block(ip.parse().unwrap());

        assert_eq!(
            block("2001:db8:1:2:aaaa::1"),
            block("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(block("2001:db8:1:2::1"), block("2001:db8:1:3::1"));
        assert_eq!(block("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(block("203.0.113.7"), "203.0.113.7");
    }

    #[test]
    fn ipv6_clients_are_also_counted_by_their_56_and_48() {
        let blocks = |ip: &str| client_blocks(ip.parse().unwrap());

        assert_eq!(
            blocks("2001:db8:1:2ab::1"),
            vec![
                (BlockSize::Client, "2001:db8:1:2ab::/64".to_owned()),
                (BlockSize::Ipv6Slash56, "2001:db8:1:200::/56".to_owned()),
                (BlockSize::Ipv6Slash48, "2001:db8:1::/48".to_owned()),
            ]
        );
        assert_eq!(
            blocks("2001:db8:1:2ff::1")[1],
            blocks("2001:db8:1:200::1")[1]
        );
        assert_ne!(
            blocks("2001:db8:1:300::1")[1],
            blocks("2001:db8:1:200::1")[1]
        );
        assert_eq!(blocks("2001:db8:1:ffff::1")[2], blocks("2001:db8:1::1")[2]);
        assert_eq!(
            blocks("203.0.113.7"),
            vec![(BlockSize::Client, "203.0.113.7".to_owned())]
        );
    }

    #[test]
    fn ended_sessions_header_round_trips_and_skips_garbage() {
        let entries = vec![
            RevokedSession {
                sid: Uuid::from_u128(1),
                until: 1_800_000_000,
            },
            RevokedSession {
                sid: Uuid::from_u128(2),
                until: 1_800_000_005,
            },
        ];

        let header = RevokedSession::to_header(&entries);
        let garbled = format!("{header},not-a-uuid=5,{}=soon", Uuid::from_u128(3));

        assert_eq!(RevokedSession::from_header(&header), entries);
        assert_eq!(RevokedSession::from_header(&garbled), entries);
        assert!(RevokedSession::from_header("").is_empty());
    }
}
