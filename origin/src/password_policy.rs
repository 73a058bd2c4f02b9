//! What a new password must be, at registration, reset and change: the length rules of
//! `gatehouse_shared::input` (8 characters, at most bcrypt's 72 bytes), and not common or
//! guessable. NIST SP 800-63B section 3.1.1.2 asks verifiers to refuse passwords found in lists
//! of common, expected or compromised values; zxcvbn (Wheeler, USENIX Security 2016) does that
//! with its frequency lists and pattern matching, and scores what is left from 0 to 4. It runs
//! here only, in the origin: its dictionaries stay out of `shared` and so out of the worker.

/// The score below which a password is refused unless configured otherwise
/// (`PASSWORD_MIN_SCORE`): 3 is "safely unguessable: moderate protection from offline
/// slow-hash scenarios" in zxcvbn's terms, which bcrypt at rest is.
pub const DEFAULT_MIN_SCORE: u8 = 3;

/// Checks `password` (already within the length rules) against `min_score`, treating the
/// account's own words (`user_inputs`: the address, its local part, the names) as the most
/// guessable of all. The refusal says why, in zxcvbn's words.
pub fn check(password: &str, user_inputs: &[&str], min_score: u8) -> Result<(), String> {
    let estimate = zxcvbn::zxcvbn(password, user_inputs);
    if u8::from(estimate.score()) >= min_score {
        return Ok(());
    }
    let feedback = estimate.feedback();
    let reason = feedback
        .and_then(|feedback| feedback.warning().map(|warning| warning.to_string()))
        .or_else(|| {
            feedback
                .and_then(|feedback| feedback.suggestions().first())
                .map(ToString::to_string)
        });
    Err(match reason {
        Some(reason) => format!("is too easy to guess: {reason}"),
        None => "is too easy to guess".to_owned(),
    })
}

/// The words of an account a password must not lean on: its address, the address's local part,
/// and its names.
pub fn user_inputs<'a>(email: &'a str, names: &[Option<&'a str>]) -> Vec<&'a str> {
    let local = email.split('@').next().unwrap_or(email);
    let mut inputs = vec![email, local];
    inputs.extend(names.iter().flatten().copied());
    inputs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_and_personal_passwords_are_refused_with_a_reason() {
        let inputs = user_inputs("ada.lovelace@example.com", &[Some("Ada"), None]);

        let common = check("password123", &inputs, DEFAULT_MIN_SCORE).unwrap_err();
        let personal = check("ada.lovelace1815", &inputs, DEFAULT_MIN_SCORE);
        let strong = check("correct horse battery staple", &inputs, DEFAULT_MIN_SCORE);

        assert!(common.starts_with("is too easy to guess"), "{common}");
        assert!(
            common.len() > "is too easy to guess".len(),
            "it says why: {common}"
        );
        assert!(
            personal.is_err(),
            "the account's own words count as guessable"
        );
        assert_eq!(strong, Ok(()));
        assert_eq!(
            check("password123", &inputs, 0),
            Ok(()),
            "score 0 accepts anything"
        );
    }
}
