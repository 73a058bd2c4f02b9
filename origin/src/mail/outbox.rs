//! The `outbox` table: mails written in the transaction of the change that causes them, claimed
//! by one courier at a time, and wiped once sent.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED` and held by a lease (`claimed_until`), so
//! several origin instances never send one row twice in normal operation, and a row whose
//! courier died is claimed again once its lease runs out (delivery is at least once; the
//! `Message-ID` derived from the row id makes a repeat recognisable).

use gatehouse_shared::link::LinkToken;
use serde_json::Value;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{MAIL_ADDRESS_WINDOW, Template};
use crate::error::Result;
use crate::server_secret::TokenCipher;

/// A mail to queue.
pub struct NewMail<'a> {
    /// The account it is about, when known.
    pub user_id: Option<Uuid>,
    /// Where it goes.
    pub recipient: &'a str,
    /// What it says.
    pub template: Template,
    /// Values the template fills in, besides the link.
    pub params: Value,
    /// The link token it carries, if any; stored encrypted.
    pub token: Option<&'a LinkToken>,
}

/// What binds a sealed token to its row: the row's template, recipient and account.
pub fn token_context(template: &str, recipient: &str, user_id: Option<Uuid>) -> Vec<u8> {
    let user = user_id.map(|id| id.to_string()).unwrap_or_default();
    [template, recipient, &user].join("\0").into_bytes()
}

/// Queues `mail` unless `recipient` has had `cap` mails in the last hour (so nobody can mail-bomb
/// an address from many clients; `None`: no cap); whether it was queued. Either way the same
/// statements run, so a capped request looks and takes like any other.
pub async fn enqueue(
    connection: &mut PgConnection,
    cipher: &TokenCipher,
    cap: Option<u32>,
    mail: NewMail<'_>,
    now: OffsetDateTime,
) -> Result<bool> {
    let template = mail.template.as_str();
    let sealed = mail.token.map(|token| {
        cipher.seal(
            token,
            &token_context(template, mail.recipient, mail.user_id),
        )
    });
    let queued = sqlx::query_scalar!(
        r#"insert into outbox (user_id, recipient, template, params, sealed_token, created_at,
                               next_attempt_at)
           select $1, $2, $3, $4, $5, $6, $6
           where (select count(*) from outbox
                  where lower(recipient) = lower($2) and created_at > $7) < $8
           returning id as "id!""#,
        mail.user_id,
        mail.recipient,
        template,
        mail.params,
        sealed,
        now,
        now - MAIL_ADDRESS_WINDOW,
        cap.map_or(i64::MAX, i64::from),
    )
    .fetch_optional(connection)
    .await?;
    Ok(queued.is_some())
}

/// A claimed row.
#[derive(Debug)]
pub struct Claimed {
    /// The row id, from which the `Message-ID` is derived.
    pub id: i64,
    /// The account, once known.
    pub user_id: Option<Uuid>,
    /// Where it goes.
    pub recipient: String,
    /// The template's name.
    pub template: String,
    /// The template's values.
    pub params: Value,
    /// The encrypted link token, if any.
    pub sealed_token: Option<Vec<u8>>,
    /// Delivery attempts so far, this one included.
    pub attempts: i32,
    /// When it was queued.
    pub created_at: OffsetDateTime,
    /// The random id of its `Message-ID`.
    pub message_id: Uuid,
}

/// Claims up to `limit` due rows until `lease_until`: only rows of templates this release knows,
/// so that during a rolling deploy an older instance leaves a newer release's mail for an instance
/// that can write it, rather than discarding it.
pub async fn claim(
    connection: &mut PgConnection,
    limit: i64,
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
) -> Result<Vec<Claimed>> {
    let known = Template::ALL.map(Template::as_str);
    Ok(sqlx::query_as!(
        Claimed,
        "update outbox set claimed_until = $3, attempts = attempts + 1
         where id in (
           select id from outbox
           where sent_at is null and discarded_at is null and next_attempt_at <= $1
             and (claimed_until is null or claimed_until <= $1)
             and template = any($4)
           order by next_attempt_at, id
           limit $2
           for update skip locked)
         returning id, user_id, recipient, template, params, sealed_token, attempts, created_at,
                   message_id",
        now,
        limit,
        lease_until,
        &known[..] as &[&str],
    )
    .fetch_all(connection)
    .await?)
}

/// Done with a row: sent (`reason` `None`), or discarded for `reason` (nothing to send, or given
/// up). Either way its body and token are wiped; the row stays a day for the metrics and the cap.
pub async fn finish(
    connection: &mut PgConnection,
    id: i64,
    reason: Option<&str>,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query!(
        "update outbox set
           sent_at = case when $3::text is null then $2::timestamptz end,
           discarded_at = case when $3::text is null then null else $2::timestamptz end,
           params = '{}', sealed_token = null, claimed_until = null, last_error = $3
         where id = $1",
        id,
        now,
        reason,
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// A failed attempt: released, to be tried again at `retry_at`.
pub async fn retry_later(
    connection: &mut PgConnection,
    id: i64,
    reason: &str,
    retry_at: OffsetDateTime,
) -> Result<()> {
    sqlx::query!(
        "update outbox set claimed_until = null, next_attempt_at = $2, last_error = $3
         where id = $1",
        id,
        retry_at,
        reason,
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// Gives back claimed rows not yet sent (at shutdown), attempt uncounted, for any courier to take.
pub async fn release(connection: &mut PgConnection, ids: &[i64]) -> Result<()> {
    sqlx::query!(
        "update outbox set claimed_until = null, attempts = greatest(attempts - 1, 0)
         where id = any($1) and sent_at is null and discarded_at is null",
        ids,
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// A password-reset request resolved: the account it names and the sealed link token.
pub async fn attach_token(
    connection: &mut PgConnection,
    id: i64,
    user_id: Uuid,
    sealed: &[u8],
) -> Result<()> {
    sqlx::query!(
        "update outbox set user_id = $2, sealed_token = $3 where id = $1",
        id,
        user_id,
        sealed,
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// The queue as the courier sees it between rounds.
pub struct Backlog {
    /// Rows not yet sent or discarded.
    pub waiting: i64,
    /// When the oldest of them was written.
    pub oldest: Option<OffsetDateTime>,
    /// When the next of them falls due (its retry time, or its lease's end while claimed).
    pub next_due: Option<OffsetDateTime>,
}

/// The queue's backlog, in one read of the rows still to send.
pub async fn backlog(connection: &mut PgConnection) -> Result<Backlog> {
    Ok(sqlx::query_as!(
        Backlog,
        r#"select count(*) as "waiting!", min(created_at) as oldest,
             min(greatest(next_attempt_at, coalesce(claimed_until, next_attempt_at))) as next_due
           from outbox where sent_at is null and discarded_at is null"#,
    )
    .fetch_one(connection)
    .await?)
}

/// Deletes rows finished more than a day ago (they no longer count toward the cap), and rows
/// older than 8 days that no instance claimed.
pub async fn purge(connection: &mut PgConnection, now: OffsetDateTime) -> Result<u64> {
    // An unsent row older than every template's `give_up_after` is one no instance knows how to
    // write (a newer release's, after that release was rolled back): [`claim`] never takes it.
    Ok(sqlx::query!(
        "delete from outbox where ((sent_at is not null or discarded_at is not null)
                                   and created_at < $1)
                               or created_at < $2",
        now - time::Duration::days(1),
        now - time::Duration::days(8),
    )
    .execute(connection)
    .await?
    .rows_affected())
}
