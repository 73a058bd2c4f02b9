//! Outgoing mail: what is sent ([`Template`], rendered from the templates in `origin/templates`),
//! the transactional outbox it waits in ([`outbox`]), and the courier that delivers it over SMTP
//! ([`courier`]). A request never waits on SMTP: it writes an outbox row in its own transaction
//! and wakes the courier; an SMTP outage delays mail, it does not lose it.

pub mod courier;
pub mod outbox;

use std::sync::Arc;
use std::time::Duration;

use gatehouse_shared::SecretString;
use lettre::message::Mailbox;
use serde_json::json;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tokio::sync::Notify;

use self::outbox::NewMail;
use crate::AppState;
use crate::error::Result;
use crate::links::{self, Purpose};
use crate::users::User;

/// Mail settings; from configuration.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `SMTP_URL`: `smtp://host:port` (plain, for a local relay), `smtp://host:587?tls=required`
    /// (STARTTLS) or `smtps://user:pass@host:465` (implicit TLS). May carry a password.
    pub smtp_url: SecretString,
    /// `MAIL_FROM`: the sender, `Name <address>` or an address.
    pub from: Mailbox,
    /// `MAIL_LINK_BASE_URL`: the client application's address; links open its `verify-email`,
    /// `reset-password`, `confirm-email` and `undo-email-change` pages, `#token=...` appended.
    pub link_base_url: String,
    /// `MAIL_LIMIT_PER_ADDRESS`: mails to one address per hour, all kinds together.
    pub limit_per_address: u32,
    /// `MAIL_LIMIT_PER_IP`: requests to the mail-sending routes per client per
    /// [`MAIL_IP_WINDOW`].
    pub limit_per_ip: u32,
    /// `MAIL_RETRY_MAX_SECS`: the longest wait between two delivery attempts of one mail.
    pub retry_max: Duration,
}

/// The window of the per-address cap.
pub const MAIL_ADDRESS_WINDOW: time::Duration = time::Duration::hours(1);

/// The window of the per-client limit on the mail-sending routes.
pub const MAIL_IP_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Mail as the running service holds it: the settings, and the bell that wakes the courier when
/// a request has queued something.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The settings.
    pub config: Arc<MailConfig>,
    /// Rung after a commit that queued mail.
    pub queued: Arc<Notify>,
}

impl Mail {
    /// Mail with `config`.
    pub fn new(config: MailConfig) -> Self {
        Mail {
            config: Arc::new(config),
            queued: Arc::new(Notify::new()),
        }
    }

    /// Queues a `purpose` link to `user`'s address in the caller's transaction (subject to the
    /// per-address cap); whether it was queued. Call [`Mail::queued_after_commit`] once committed.
    pub async fn queue_link(
        &self,
        state: &AppState,
        connection: &mut PgConnection,
        user: &User,
        purpose: Purpose,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let token = links::issue(connection, user.id, purpose, &user.email, None, now).await?;
        let template = match purpose {
            Purpose::VerifyEmail => Template::VerifyEmail,
            _ => Template::ResetPassword,
        };
        let letter = Letter::new(Recipient::User(user), template).with_link(&token);
        self.queue(state, connection, letter, now).await
    }

    /// Queues `letter` in the caller's transaction, subject to the per-address cap; whether it
    /// was queued. A letter to a bare address that needs a link is a request the courier resolves:
    /// the request does the same work whether or not an account has the address.
    pub async fn queue(
        &self,
        state: &AppState,
        connection: &mut PgConnection,
        letter: Letter<'_>,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let (user, recipient) = match letter.to {
            Recipient::User(user) => (Some(user), user.email.as_str()),
            Recipient::UserAt(user, address) => (Some(user), address),
            Recipient::Address(address) => (None, address),
        };
        // A name typed at registration goes only to an address proven to be its owner's: nobody
        // can put words of their choice into mail to someone else's address.
        let name = match letter.to {
            Recipient::User(user) if user.email_verified_at.is_some() => user.first_name.as_deref(),
            _ => None,
        };
        let mail = NewMail {
            user_id: user.map(|user| user.id),
            recipient,
            template: letter.template,
            params: json!({ "name": name, "new_email": letter.new_email }),
            token: letter.link,
        };
        let cipher = state.server_keys.outbox_cipher();
        let cap = letter
            .template
            .capped()
            .then_some(self.config.limit_per_address);
        outbox::enqueue(connection, &cipher, cap, mail, now).await
    }

    /// After the transaction that queued a mail committed (`queued`, as `queue` answered): counts
    /// it and wakes the courier.
    pub fn queued_after_commit(&self, state: &AppState, queued: bool) {
        if queued {
            state.metrics.mail("queued");
            self.queued.notify_one();
        }
    }

    /// `{base}/{page}#token={token}`: the token in the fragment, which browsers send to no
    /// server and leave out of `Referer`.
    pub fn link(&self, template: Template, token: &str) -> Option<String> {
        let page = template.link_page()?;
        Some(format!(
            "{}/{page}#token={token}",
            self.config.link_base_url
        ))
    }
}

/// Whom a mail goes to.
#[derive(Debug, Clone, Copy)]
pub enum Recipient<'a> {
    /// An account, at its address.
    User(&'a User),
    /// An account, at another address (the new one of an email change).
    UserAt(&'a User, &'a str),
    /// An address, whoever has it.
    Address(&'a str),
}

/// A mail to queue: to whom, what, and what it carries.
#[derive(Debug, Clone, Copy)]
pub struct Letter<'a> {
    /// Whom it goes to.
    pub to: Recipient<'a>,
    /// What it says.
    pub template: Template,
    /// The link token it carries, if any.
    pub link: Option<&'a gatehouse_shared::link::LinkToken>,
    /// The new address an email-change notice names.
    pub new_email: Option<&'a str>,
}

impl<'a> Letter<'a> {
    /// `template` to `to`, with no link.
    pub fn new(to: Recipient<'a>, template: Template) -> Self {
        Letter {
            to,
            template,
            link: None,
            new_email: None,
        }
    }

    /// The letter carrying `token` in its link.
    pub fn with_link(mut self, token: &'a gatehouse_shared::link::LinkToken) -> Self {
        self.link = Some(token);
        self
    }

    /// The letter naming `new_email`.
    pub fn naming(mut self, new_email: &'a str) -> Self {
        self.new_email = Some(new_email);
        self
    }
}

/// Every kind of mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// A link proving the address (after registration, or resent on request).
    VerifyEmail,
    /// A password-reset link.
    ResetPassword,
    /// A notice that the password changed.
    PasswordChanged,
    /// A notice that a reset changed the password and removed a second factor enrolled while
    /// the address was unverified.
    PasswordResetFactorsRemoved,
    /// A notice that a second factor (an authenticator app or a passkey) was added.
    SecondFactorAdded,
    /// A notice that a second factor was removed.
    SecondFactorRemoved,
    /// A notice that a new set of recovery codes replaced the old one.
    RecoveryCodesReplaced,
    /// A notice that the operator removed every second factor (`user mfa-reset`).
    SecondFactorsReset,
    /// A notice to an address that already has an account that someone tried to register it.
    RegisterAttempt,
    /// A link confirming an email change, to the new address.
    EmailChangeConfirm,
    /// A notice to a requested new address that already has an account.
    EmailChangeTaken,
    /// A notice of an email change to the old address, with a link that undoes it.
    EmailChangeNotice,
}

impl Template {
    /// Every template.
    pub const ALL: [Template; 12] = [
        Template::VerifyEmail,
        Template::ResetPassword,
        Template::PasswordChanged,
        Template::PasswordResetFactorsRemoved,
        Template::SecondFactorAdded,
        Template::SecondFactorRemoved,
        Template::RecoveryCodesReplaced,
        Template::SecondFactorsReset,
        Template::RegisterAttempt,
        Template::EmailChangeConfirm,
        Template::EmailChangeTaken,
        Template::EmailChangeNotice,
    ];

    /// The name in the outbox and the templates' file name.
    pub fn as_str(self) -> &'static str {
        match self {
            Template::VerifyEmail => "verify_email",
            Template::ResetPassword => "reset_password",
            Template::PasswordChanged => "password_changed",
            Template::PasswordResetFactorsRemoved => "password_reset_factors_removed",
            Template::SecondFactorAdded => "second_factor_added",
            Template::SecondFactorRemoved => "second_factor_removed",
            Template::RecoveryCodesReplaced => "recovery_codes_replaced",
            Template::SecondFactorsReset => "second_factors_reset",
            Template::RegisterAttempt => "register_attempt",
            Template::EmailChangeConfirm => "email_change_confirm",
            Template::EmailChangeTaken => "email_change_taken",
            Template::EmailChangeNotice => "email_change_notice",
        }
    }

    /// Whether the per-address cap applies. Security notices to the account's own address (its
    /// password changed, its factors changed, its address is being changed) are never held back:
    /// a flood of requests for the address must not silence them.
    pub fn capped(self) -> bool {
        !matches!(
            self,
            Template::PasswordChanged
                | Template::PasswordResetFactorsRemoved
                | Template::SecondFactorAdded
                | Template::SecondFactorRemoved
                | Template::RecoveryCodesReplaced
                | Template::SecondFactorsReset
                | Template::EmailChangeNotice
        )
    }

    /// How long the courier keeps trying: a day, by when every link but an undo has expired; a
    /// week for the email-change notice, whose undo link lasts that long.
    pub fn give_up_after(self) -> time::Duration {
        match self {
            Template::EmailChangeNotice => time::Duration::days(7),
            _ => time::Duration::hours(24),
        }
    }

    /// The template named `name` in the outbox.
    pub fn from_name(name: &str) -> Option<Template> {
        Template::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The client application's page a link of this kind opens; `None` for a mail without one.
    fn link_page(self) -> Option<&'static str> {
        match self {
            Template::VerifyEmail => Some("verify-email"),
            Template::ResetPassword => Some("reset-password"),
            Template::EmailChangeConfirm => Some("confirm-email"),
            Template::EmailChangeNotice => Some("undo-email-change"),
            Template::PasswordChanged
            | Template::PasswordResetFactorsRemoved
            | Template::SecondFactorAdded
            | Template::SecondFactorRemoved
            | Template::RecoveryCodesReplaced
            | Template::SecondFactorsReset
            | Template::RegisterAttempt
            | Template::EmailChangeTaken => None,
        }
    }

    /// The plain-text template (its first line the subject) and the HTML body.
    fn sources(self) -> (&'static str, &'static str) {
        macro_rules! sources {
            ($name:literal) => {
                (
                    include_str!(concat!("../../templates/mail/", $name, ".txt")),
                    include_str!(concat!("../../templates/mail/", $name, ".html")),
                )
            };
        }
        match self {
            Template::VerifyEmail => sources!("verify_email"),
            Template::ResetPassword => sources!("reset_password"),
            Template::PasswordChanged => sources!("password_changed"),
            Template::PasswordResetFactorsRemoved => sources!("password_reset_factors_removed"),
            Template::SecondFactorAdded => sources!("second_factor_added"),
            Template::SecondFactorRemoved => sources!("second_factor_removed"),
            Template::RecoveryCodesReplaced => sources!("recovery_codes_replaced"),
            Template::SecondFactorsReset => sources!("second_factors_reset"),
            Template::RegisterAttempt => sources!("register_attempt"),
            Template::EmailChangeConfirm => sources!("email_change_confirm"),
            Template::EmailChangeTaken => sources!("email_change_taken"),
            Template::EmailChangeNotice => sources!("email_change_notice"),
        }
    }

    /// The mail with `values` filled in: as they are in the text, HTML-escaped in the HTML.
    pub fn render(self, values: &[(&str, &str)]) -> Rendered {
        let (text, html) = self.sources();
        let (subject, text) = text
            .split_once('\n')
            .and_then(|(first, rest)| Some((first.strip_prefix("Subject: ")?, rest)))
            .expect("every text template starts with its subject");
        let fill = |template: &str, escape: fn(&str) -> String| {
            values
                .iter()
                .fold(template.to_owned(), |out, (name, value)| {
                    out.replace(&format!("{{{{{name}}}}}"), &escape(value))
                })
        };
        Rendered {
            subject: subject.to_owned(),
            text: fill(text, str::to_owned),
            html: fill(html, escape_html),
        }
    }
}

/// A mail ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body.
    pub html: String,
}

/// `value` safe inside HTML text and quoted attributes (OWASP XSS Prevention Cheat Sheet, rule 1
/// and 2).
fn escape_html(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_has_a_subject_and_fills_every_placeholder() {
        for template in Template::ALL {
            let rendered = template.render(&[
                ("name", ", Ada"),
                ("link", "https://app.test/x"),
                ("new_email", "new@example.com"),
            ]);

            assert!(!rendered.subject.is_empty(), "{template:?}");
            let (source, _) = template.sources();
            for body in [&rendered.text, &rendered.html] {
                assert!(!body.contains("{{"), "{template:?}: {body}");
                assert_eq!(
                    body.contains("Hello, Ada"),
                    source.contains("{{name}}"),
                    "{template:?}"
                );
                assert_eq!(
                    body.contains("https://app.test/x"),
                    template.link_page().is_some(),
                    "{template:?}"
                );
            }
            assert_eq!(Template::from_name(template.as_str()), Some(template));
        }
    }

    #[test]
    fn names_are_escaped_in_html_and_kept_in_text() {
        let name = r#", <script>alert("x")</script>"#;

        let rendered =
            Template::VerifyEmail.render(&[("name", name), ("link", "https://a/?b=1&c=2")]);

        assert!(rendered.text.contains(name));
        assert!(!rendered.html.contains("<script>"));
        assert!(
            rendered
                .html
                .contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;")
        );
        assert!(rendered.html.contains(r#"href="https://a/?b=1&amp;c=2""#));
    }
}
