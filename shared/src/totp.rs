//! Time-based one-time passwords (RFC 6238): HMAC-SHA1, 6 digits, 30-second steps, the
//! parameters every authenticator app supports (RFC 6238 section 4; Google Authenticator ignores
//! any other). The clock is an argument, as everywhere in this crate, so tests drive codes with
//! the origin's injectable clock, and services built on Gatehouse can compute codes in theirs.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// Seconds per step (RFC 6238 section 5.2 recommends 30).
pub const STEP_SECS: i64 = 30;

/// Digits per code.
pub const DIGITS: usize = 6;

/// Secret length: 160 bits, the HMAC-SHA1 output size RFC 4226 section 4 (R6) recommends.
pub const SECRET_BYTES: usize = 20;

/// A shared TOTP secret. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_BYTES]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("totp::Secret(***)")
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

impl Secret {
    /// A secret of these bytes.
    pub fn from_bytes(bytes: [u8; SECRET_BYTES]) -> Self {
        Secret(bytes)
    }

    /// A new random secret.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut bytes = [0; SECRET_BYTES];
        rng.fill_bytes(&mut bytes);
        Secret(bytes)
    }

    /// The raw bytes, for sealing at rest.
    pub fn as_bytes(&self) -> &[u8; SECRET_BYTES] {
        &self.0
    }

    /// Unpadded base32 (RFC 4648 section 6), the form authenticator apps take.
    pub fn to_base32(&self) -> String {
        let mut out = String::with_capacity(SECRET_BYTES * 8 / 5);
        // 160 bits is exactly 32 five-bit groups: no padding, no partial group.
        for chunk in self.0.chunks(5) {
            let bits = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            for shift in (0..8).rev() {
                out.push(BASE32[((bits >> (shift * 5)) & 31) as usize] as char);
            }
        }
        out
    }

    /// Reads the base32 form back (case, spaces and padding ignored, as apps display it).
    pub fn from_base32(text: &str) -> Option<Self> {
        let mut bytes = Vec::with_capacity(SECRET_BYTES);
        let (mut acc, mut bits) = (0u32, 0);
        for c in text.bytes().filter(|c| !matches!(c, b' ' | b'=')) {
            let value = BASE32.iter().position(|&a| a == c.to_ascii_uppercase())?;
            acc = (acc << 5) | value as u32;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        bytes.try_into().ok().map(Secret)
    }

    /// The `otpauth://` URI authenticator apps read from a QR code (Google Authenticator's "Key
    /// Uri Format"): `issuer` names the service, `account` the user.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let issuer = percent_encode(issuer);
        format!(
            "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}\
             &algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            account = percent_encode(account),
            secret = self.to_base32(),
        )
    }

    /// The code for time step `step` (RFC 4226 section 5.3's dynamic truncation).
    pub fn code_at_step(&self, step: i64) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(&step.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest[19] & 0x0f);
        let binary = u32::from_be_bytes([
            digest[offset] & 0x7f,
            digest[offset + 1],
            digest[offset + 2],
            digest[offset + 3],
        ]);
        format!(
            "{:0width$}",
            binary % 10u32.pow(DIGITS as u32),
            width = DIGITS
        )
    }

    /// The code at `unix_time`.
    pub fn code_at(&self, unix_time: i64) -> String {
        self.code_at_step(step_of(unix_time))
    }

    /// The step among `now`'s and its neighbours' (one step of clock skew either way, RFC 6238
    /// section 5.2) whose code `code` is, compared in constant time. The caller refuses a step
    /// at or before the last one accepted, so a code works once (section 5.2: "MUST NOT" accept
    /// the second attempt of the same OTP).
    pub fn matching_step(&self, code: &str, unix_time: i64) -> Option<i64> {
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = step_of(unix_time);
        // Every candidate is computed and compared, so timing does not say which one matched.
        let mut found = None;
        for step in [now - 1, now, now + 1] {
            if bool::from(self.code_at_step(step).as_bytes().ct_eq(code.as_bytes())) {
                found = Some(step);
            }
        }
        found
    }
}

/// The time step `unix_time` falls in.
pub fn step_of(unix_time: i64) -> i64 {
    unix_time.div_euclid(STEP_SECS)
}

/// Percent-encodes all but RFC 3986's unreserved characters and `@`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// RFC 6238 appendix B's SHA-1 seed: "12345678901234567890".
    fn rfc_secret() -> Secret {
        Secret::from_bytes(*b"12345678901234567890")
    }

    #[test]
    fn codes_match_rfc_6238_appendix_b() {
        // The appendix lists 8-digit codes; ours are their last 6 digits (the same truncation
        // modulo 10^6).
        for (time, eight) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(rfc_secret().code_at(time), &eight[2..], "at {time}");
        }
    }

    #[test]
    fn base32_round_trips_and_matches_rfc_4648() {
        // RFC 4648 section 10: BASE32("12345") = "GEZDGNBV".
        let secret = rfc_secret();

        assert_eq!(&secret.to_base32()[..8], "GEZDGNBV");
        assert_eq!(secret.to_base32().len(), 32);
        assert_eq!(
            Secret::from_base32(&secret.to_base32()),
            Some(secret.clone())
        );
        let spaced = secret.to_base32().to_lowercase().replace("gezd", "gezd ");
        assert_eq!(Secret::from_base32(&spaced), Some(secret));
        assert_eq!(Secret::from_base32("GEZDGNBV"), None, "too short");
        assert_eq!(Secret::from_base32("1EZDGNBV"), None, "not base32");
    }

    #[test]
    fn a_code_matches_its_step_and_one_either_side_only() {
        let secret = rfc_secret();
        let now = 1_800_000_000;
        let step = step_of(now);

        for offset in [-1, 0, 1] {
            let code = secret.code_at_step(step + offset);
            assert_eq!(secret.matching_step(&code, now), Some(step + offset));
        }
        for offset in [-2, 2] {
            let code = secret.code_at_step(step + offset);
            assert_eq!(secret.matching_step(&code, now), None, "offset {offset}");
        }
    }

    #[test]
    fn malformed_codes_never_match() {
        let secret = rfc_secret();
        let now = 1_800_000_000;
        let code = secret.code_at(now);

        for bad in ["", "12345", "1234567", "12345a", &format!(" {code}")] {
            assert_eq!(secret.matching_step(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn the_uri_names_issuer_and_account_encoded() {
        let uri = rfc_secret().otpauth_uri("Acme Auth", "ada+1@example.test");

        assert!(uri.starts_with("otpauth://totp/Acme%20Auth:ada%2B1@example.test?secret=GEZDGNBV"));
        assert!(uri.ends_with("&issuer=Acme%20Auth&algorithm=SHA1&digits=6&period=30"));
    }

    #[test]
    fn debug_hides_the_secret() {
        assert_eq!(format!("{:?}", rfc_secret()), "totp::Secret(***)");
    }
}
