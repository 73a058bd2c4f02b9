//! The second step of a login and its codes: `mfa_token`s (`gtm_<64 hex>`, see [`crate::opaque`])
//! and recovery codes.
//!
//! A recovery code is 80 random bits (NIST SP 800-63B section 5.1.2.1 asks at least 64 for
//! look-up secrets; the bar is 80) written as 16 base32 characters in four groups,
//! `abcd-efgh-ijkm-nopq`, so it can be read out and typed. Case, dashes and spaces are ignored
//! when one is entered. The origin stores only an HMAC of the normalised form.

use crate::opaque::{OpaqueToken, token_kind};

token_kind!(
    /// The kind of the token that carries a login from its password to its second factor.
    Mfa,
    "gtm_",
    "MfaToken"
);

/// The token a login answers with when a second factor is required.
pub type MfaToken = OpaqueToken<Mfa>;

/// Random bytes in a recovery code: 80 bits.
pub const RECOVERY_CODE_BYTES: usize = 10;

/// Recovery codes handed out at once.
pub const RECOVERY_CODES_PER_SET: usize = 10;

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A recovery code. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl std::fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCode(***)")
    }
}

impl RecoveryCode {
    /// A new random code.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut bytes = [0u8; RECOVERY_CODE_BYTES];
        rng.fill_bytes(&mut bytes);
        // 80 bits are exactly 16 five-bit groups.
        let bits = bytes
            .iter()
            .fold(0u128, |acc, &b| (acc << 8) | u128::from(b));
        let text = (0..16)
            .rev()
            .map(|group| ALPHABET[((bits >> (group * 5)) & 31) as usize] as char)
            .collect();
        RecoveryCode(text)
    }

    /// A code as a user typed it: case, dashes and spaces ignored; `None` unless 16 base32
    /// characters remain.
    pub fn parse(typed: &str) -> Option<Self> {
        let text: String = typed
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let valid = text.len() == 16 && text.bytes().all(|b| ALPHABET.contains(&b));
        valid.then_some(RecoveryCode(text))
    }

    /// The normalised form, which is what is MACed and stored.
    pub fn normalized(&self) -> &str {
        &self.0
    }

    /// The form handed to the user: four dash-separated groups of four.
    pub fn display(&self) -> String {
        let groups: Vec<&str> = (0..4).map(|i| &self.0[i * 4..i * 4 + 4]).collect();
        groups.join("-")
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use rand_core::OsRng;

    use super::*;

    #[test]
    fn a_code_reads_back_however_it_is_typed() {
        let code = RecoveryCode::generate(&mut OsRng);
        let shown = code.display();

        assert_eq!(shown.len(), 19);
        assert_eq!(RecoveryCode::parse(&shown), Some(code.clone()));
        assert_eq!(
            RecoveryCode::parse(&shown.to_uppercase()),
            Some(code.clone())
        );
        assert_eq!(
            RecoveryCode::parse(&shown.replace('-', " ")),
            Some(code.clone())
        );
        assert_eq!(RecoveryCode::parse(code.normalized()), Some(code));
    }

    #[test]
    fn codes_differ_and_use_the_whole_alphabet_width() {
        let codes: std::collections::HashSet<String> = (0..200)
            .map(|_| RecoveryCode::generate(&mut OsRng).normalized().to_owned())
            .collect();

        assert_eq!(codes.len(), 200);
        assert!(codes.iter().all(|c| c.len() == 16));
    }

    #[test]
    fn other_shapes_are_not_codes() {
        for bad in [
            "",
            "123456",
            "abcd-efgh-ijkl",
            "abcd-efgh-ijkl-mno1",
            "abcd-efgh-ijkl-mnopq",
        ] {
            assert_eq!(RecoveryCode::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_the_code() {
        assert_eq!(
            format!("{:?}", RecoveryCode::generate(&mut OsRng)),
            "RecoveryCode(***)"
        );
    }
}
