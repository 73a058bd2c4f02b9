//! Rules for user input, applied by the origin and available to the edge for early rejection.
//! Each rule returns a human-readable reason the API puts in its 422 answer.

/// Shortest password accepted (NIST SP 800-63B section 5.1.1.1; OWASP Authentication Cheat Sheet).
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Longest password accepted, in bytes. bcrypt reads at most 72 bytes and silently ignores the
/// rest, so a longer password is refused rather than truncated (OWASP Password Storage Cheat Sheet,
/// "bcrypt": input limit).
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Longest email address, in bytes (RFC 5321 section 4.5.3.1.3 limits a path to 256 octets,
/// including the angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;

/// Longest local part (RFC 5321 section 4.5.3.1.1).
const MAX_LOCAL_PART_BYTES: usize = 64;

/// Longest first or last name, in characters. Generous for any real name, small enough to keep
/// rows and responses bounded.
pub const MAX_NAME_CHARS: usize = 100;

/// The canonical form of an email address: surrounding white space removed. Addresses are
/// compared case-insensitively; the stored form keeps the case the user typed.
pub fn normalize_email(email: &str) -> &str {
    email.trim()
}

/// Checks an already-normalized email address. Deliberately plain: one `@`, a non-empty local
/// part, a dotted domain, no white space or control characters. Whether the mailbox exists is
/// not something syntax can tell.
pub fn check_email(email: &str) -> Result<(), &'static str> {
    if email.is_empty() {
        return Err("must not be empty");
    }
    if email.len() > MAX_EMAIL_BYTES {
        return Err("must be at most 254 bytes");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("must be an email address");
    };
    let domain_ok = !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if local.is_empty() || local.len() > MAX_LOCAL_PART_BYTES || !domain_ok {
        return Err("must be an email address");
    }
    Ok(())
}

/// Checks a new password's length. Composition rules are deliberately absent (NIST SP 800-63B
/// section 5.1.1.2).
pub fn check_password(password: &str) -> Result<(), &'static str> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err("must be at least 8 characters");
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err("must be at most 72 bytes (bcrypt's limit); it is not truncated");
    }
    Ok(())
}

/// Checks a first or last name.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err("must be at most 100 characters");
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn ordinary_addresses_are_accepted() {
        for email in [
            "ada@example.com",
            "Ada.Lovelace+tag@sub.example.co.uk",
            "x@y.z",
        ] {
            assert_eq!(check_email(email), Ok(()), "{email}");
        }
    }

    #[test]
    fn malformed_addresses_are_refused() {
        let long = format!("{}@example.com", "a".repeat(250));
        for email in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a da@example.com",
            "ada@example..com",
            "ada@.example.com",
            "ada@example.com.",
            "ada@exa\u{0}mple.com",
            &long,
        ] {
            assert!(check_email(email).is_err(), "{email:?}");
        }
    }

    #[test]
    fn normalization_trims_but_keeps_case() {
        assert_eq!(normalize_email("  Ada@Example.com \n"), "Ada@Example.com");
    }

    #[test]
    fn password_length_is_bounded_both_ways() {
        assert!(check_password("1234567").is_err());
        assert_eq!(check_password("12345678"), Ok(()));
        assert_eq!(check_password(&"a".repeat(72)), Ok(()));
        assert!(check_password(&"a".repeat(73)).is_err());
    }

    #[test]
    fn password_limit_counts_bytes_not_characters() {
        // 24 characters of 3 bytes each: 72 bytes, accepted; one more is 75 bytes.
        assert_eq!(check_password(&"€".repeat(24)), Ok(()));
        assert!(check_password(&"€".repeat(25)).is_err());
    }

    #[test]
    fn names_are_bounded() {
        assert_eq!(check_name("Ada"), Ok(()));
        assert_eq!(check_name(""), Ok(()));
        assert!(check_name(&"a".repeat(101)).is_err());
        assert!(check_name("Ada\u{7}").is_err());
    }
}
