//! The courier: a task in every origin instance that claims due outbox rows, renders them and
//! sends them over SMTP with `lettre`, retrying with exponential back-off. It wakes when a request
//! queues mail and otherwise polls, so rows written by other instances, or due for a retry, go out
//! too. On shutdown it stops between two mails and gives back the rows it still holds.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::outbox::{self, Claimed};
use super::{Mail, Template};
use crate::error::Result;
use crate::links::{self, Purpose};
use crate::server_secret::TokenCipher;
use crate::{AppState, users};

/// Rows claimed at once: a few, so that the lease below stays short.
const BATCH: i64 = 4;

/// The longest one SMTP delivery may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a claim holds its rows: longer than delivering the whole batch at the timeout, plus a
/// minute for the database, so no second courier takes a row that is still to be sent; short
/// enough that a crashed courier's rows go out again within minutes.
const LEASE: time::Duration = time::Duration::seconds(BATCH * SEND_TIMEOUT.as_secs() as i64 + 60);

/// How often an idle courier looks for rows that another instance queued.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// A running courier.
pub struct CourierHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl CourierHandle {
    /// Stops after the mail being sent, gives back the rows still claimed, and waits for that.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the courier for `state`, or nothing when mail is disabled. Fails when `SMTP_URL` is
/// not an SMTP URL lettre understands.
pub fn spawn(state: &AppState) -> anyhow::Result<Option<CourierHandle>> {
    let Some(mail) = state.mail.clone() else {
        return Ok(None);
    };
    use gatehouse_shared::ExposeSecret as _;
    let transport =
        AsyncSmtpTransport::<Tokio1Executor>::from_url(mail.config.smtp_url.expose_secret())
            .map_err(|_| anyhow::anyhow!("SMTP_URL is not a valid smtp:// or smtps:// URL"))?
            .timeout(Some(SEND_TIMEOUT))
            .build();
    let (stop, stopped) = watch::channel(false);
    let courier = Courier {
        cipher: state.server_keys.outbox_cipher(),
        domain: mail.config.from.email.domain().to_owned(),
        state: state.clone(),
        mail,
        transport,
    };
    Ok(Some(CourierHandle {
        stop,
        task: tokio::spawn(courier.run(stopped)),
    }))
}

struct Courier {
    state: AppState,
    mail: Mail,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    cipher: TokenCipher,
    /// The domain of `Message-ID`s: the sender's.
    domain: String,
}

impl Courier {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let worked = match self.round(&stop).await {
                Ok(worked) => worked,
                Err(error) => {
                    tracing::warn!(%error, "the courier could not read the outbox");
                    false
                }
            };
            let next_due = self.report_backlog().await;
            if worked {
                continue;
            }
            // Until the next row falls due, at most IDLE_POLL (rows other instances queue).
            let wait = next_due
                .map(|due| Duration::try_from(due - self.state.clock.now()).unwrap_or_default())
                .map_or(IDLE_POLL, |wait| wait.min(IDLE_POLL));
            tokio::select! {
                () = self.mail.queued.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Claims and delivers one batch; whether there was anything to deliver.
    async fn round(&self, stop: &watch::Receiver<bool>) -> Result<bool> {
        let now = self.state.clock.now();
        let claimed = {
            let mut connection = self.state.db.acquire().await?;
            outbox::claim(&mut connection, BATCH, now, now + LEASE).await?
        };
        if claimed.is_empty() {
            return Ok(false);
        }
        let mut held: Vec<i64> = claimed.iter().map(|row| row.id).collect();
        for row in claimed {
            if *stop.borrow() {
                break;
            }
            let id = row.id;
            let mut stopping = stop.clone();
            // A shutdown does not wait out a slow SMTP server: the mail in flight is given back
            // with the rest, and may go out twice (delivery is at least once).
            tokio::select! {
                delivered = self.deliver(row) => {
                    if let Err(error) = delivered {
                        // The row stays claimed until its lease ends, then goes out again.
                        tracing::warn!(outbox_id = id, %error, "mail not recorded; retried after the lease");
                    }
                    held.retain(|held| *held != id);
                }
                _ = stopping.wait_for(|stop| *stop) => break,
            }
        }
        if !held.is_empty() {
            let mut connection = self.state.db.acquire().await?;
            outbox::release(&mut connection, &held).await?;
            tracing::info!(
                released = held.len(),
                "the courier gave back the mail it held"
            );
        }
        Ok(true)
    }

    /// Sends one row and records the outcome.
    async fn deliver(&self, row: Claimed) -> Result<()> {
        let now = self.state.clock.now();
        let Some(template) = Template::from_name(&row.template) else {
            return self.discard(&row, "unknown template", now).await;
        };
        if now - row.created_at > template.give_up_after() {
            return self.discard(&row, "gave up", now).await;
        }
        let prepared = match self.prepare(&row, template, now).await? {
            Ok(prepared) => prepared,
            Err(reason) => return self.discard(&row, reason, now).await,
        };
        let message = match self.message(&row, template, &prepared) {
            Some(message) => message,
            None => return self.discard(&row, "invalid recipient", now).await,
        };
        let sent = tokio::time::timeout(SEND_TIMEOUT, self.transport.send(message)).await;
        let mut connection = self.state.db.acquire().await?;
        match sent {
            Ok(Ok(_)) => {
                outbox::finish(&mut connection, row.id, None, self.state.clock.now()).await?;
                self.state.metrics.mail("sent");
                tracing::info!(
                    outbox_id = row.id,
                    template = template.as_str(),
                    "mail sent"
                );
            }
            // A refusal is retried like an outage, though at the longest interval: lettre cannot
            // tell a refused recipient from a refused login or sender (all 5xx), and one wrong
            // SMTP password must not discard the whole queue. Only the reply code is logged; the
            // server's text often names the recipient.
            failed => {
                let (reason, code, refused) = match &failed {
                    Ok(Err(error)) => (
                        "SMTP failed or refused",
                        error.status().map(|code| code.to_string()),
                        error.is_permanent(),
                    ),
                    _ => ("timed out", None, false),
                };
                let wait = match refused {
                    true => time::Duration::try_from(self.mail.config.retry_max).unwrap_or(LEASE),
                    false => self.backoff(row.attempts),
                };
                self.state.metrics.mail("failed");
                let attempts = row.attempts;
                tracing::warn!(
                    outbox_id = row.id,
                    attempts,
                    reason,
                    code = code.as_deref(),
                    "mail delayed"
                );
                outbox::retry_later(&mut connection, row.id, reason, now + wait).await?;
            }
        }
        Ok(())
    }

    /// The recipient's name and the link token of `row`: read from the row, or, for a reset
    /// requested by address, resolved now. `Err` names why there is nothing to send.
    async fn prepare(
        &self,
        row: &Claimed,
        template: Template,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<Prepared, &'static str>> {
        let name = row
            .params
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut prepared = Prepared { name, link: None };
        let mut user_id = row.user_id;
        let sealed = match (&row.sealed_token, template, row.user_id) {
            (Some(sealed), _, _) => sealed.clone(),
            (None, Template::ResetPassword | Template::VerifyEmail, None) => {
                match self.resolve(row, template, now).await? {
                    Some(resolved) => {
                        prepared.name = resolved.first_name;
                        user_id = Some(resolved.user_id);
                        resolved.sealed
                    }
                    None => return Ok(Err("no account to send it to")),
                }
            }
            _ => return Ok(Ok(prepared)),
        };
        let context = outbox::token_context(&row.template, &row.recipient, user_id);
        let Some(token) = self.cipher.open(&sealed, &context) else {
            // SERVER_SECRET changed since the row was written: the link cannot be recovered.
            return Ok(Err("token unreadable"));
        };
        prepared.link = self.mail.link(template, token.expose());
        Ok(Ok(prepared))
    }

    /// A link requested by address (`POST /auth/password/forgot`, `/auth/email/verify/resend`):
    /// when an account it applies to has that address, a link for it, sealed into the row; `None`
    /// when there is none. Resolving here rather than in the request keeps the request's work the
    /// same whether or not the account exists.
    async fn resolve(
        &self,
        row: &Claimed,
        template: Template,
        now: OffsetDateTime,
    ) -> Result<Option<Resolved>> {
        let purpose = match template {
            Template::VerifyEmail => Purpose::VerifyEmail,
            _ => Purpose::ResetPassword,
        };
        let mut tx = self.state.db.begin().await?;
        let Some(user) = users::find_by_email(&mut tx, &row.recipient)
            .await?
            .filter(|user| user.is_active)
            .filter(|user| purpose != Purpose::VerifyEmail || user.email_verified_at.is_none())
        else {
            return Ok(None);
        };
        let token = links::issue(&mut tx, user.id, purpose, &user.email, None, now).await?;
        let context = outbox::token_context(&row.template, &row.recipient, Some(user.id));
        let sealed = self.cipher.seal(&token, &context);
        outbox::attach_token(&mut tx, row.id, user.id, &sealed).await?;
        tx.commit().await?;
        Ok(Some(Resolved {
            user_id: user.id,
            // A name typed at registration goes only to an address proven to be its owner's, so
            // nobody can put words of their choice into mail to someone else's address.
            first_name: user.first_name.filter(|_| user.email_verified_at.is_some()),
            sealed,
        }))
    }

    fn message(&self, row: &Claimed, template: Template, prepared: &Prepared) -> Option<Message> {
        let greeting = prepared
            .name
            .as_deref()
            .map(|name| format!(", {name}"))
            .unwrap_or_default();
        let link = prepared.link.clone().unwrap_or_default();
        let new_email = row
            .params
            .get("new_email")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let rendered = template.render(&[
            ("name", &greeting),
            ("link", &link),
            ("new_email", new_email),
        ]);
        let to: Mailbox = row.recipient.parse().ok()?;
        Message::builder()
            .from(self.mail.config.from.clone())
            .to(to)
            .subject(rendered.subject)
            // The row's own random id, so a repeat after a crash carries the same Message-ID
            // (RFC 5322 section 3.6.4) and receivers can drop it, while no two databases (a
            // staging copy, a restore) ever reuse one for different mail.
            .message_id(Some(format!("<{}@{}>", row.message_id, self.domain)))
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .ok()
    }

    async fn discard(
        &self,
        row: &Claimed,
        reason: &'static str,
        now: OffsetDateTime,
    ) -> Result<()> {
        let mut connection = self.state.db.acquire().await?;
        outbox::finish(&mut connection, row.id, Some(reason), now).await?;
        self.state.metrics.mail("discarded");
        tracing::info!(outbox_id = row.id, reason, "mail discarded");
        Ok(())
    }

    /// 1 s after the first failure, doubling up to `MAIL_RETRY_MAX_SECS`.
    fn backoff(&self, attempts: i32) -> time::Duration {
        let exponent = attempts.clamp(1, 20) as u32 - 1;
        let delay = Duration::from_secs(1u64 << exponent).min(self.mail.config.retry_max);
        time::Duration::try_from(delay).unwrap_or(LEASE)
    }

    /// Publishes the backlog to the metrics; when the next row falls due, if one waits.
    async fn report_backlog(&self) -> Option<OffsetDateTime> {
        let backlog = async {
            let mut connection = self.state.db.acquire().await?;
            outbox::backlog(&mut connection).await
        };
        let backlog = backlog.await.ok()?;
        let now = self.state.clock.now();
        let age = backlog
            .oldest
            .map_or(0, |oldest| (now - oldest).whole_seconds());
        self.state.metrics.mail_backlog(backlog.waiting, age);
        backlog.next_due
    }
}

/// What a mail needs besides its template.
struct Prepared {
    name: Option<String>,
    link: Option<String>,
}

/// A reset request resolved to an account.
struct Resolved {
    user_id: uuid::Uuid,
    first_name: Option<String>,
    sealed: Vec<u8>,
}
