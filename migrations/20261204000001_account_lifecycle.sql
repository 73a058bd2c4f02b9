-- Account lifecycle (issue 10): verified addresses, emailed links, and the outbox that mails
-- them. Every timestamp is written by the origin from its clock, so expiry is testable.

alter table users
    -- When the address was proven: a verification link followed, or a password reset through it.
    add column email_verified_at timestamptz,
    -- When the account was deactivated; its personal data is erased ACCOUNT_ERASE_AFTER_SECS later.
    -- Accounts deactivated before this column existed have none and are never erased by age.
    add column deactivated_at timestamptz,
    -- Accounts registered from now on are erased if never verified (pre-hijacking: a squatted
    -- address is freed); accounts that exist before this change are kept whatever their state.
    add column erase_if_unverified boolean not null default false;

-- One row per emailed link. Only the token's SHA-256 is kept; a row proves one purpose for one
-- account and one address, once.
create table link_tokens (
    token_hash bytea not null,
    user_id uuid not null,
    purpose text not null,
    -- The address the link proves: the account's address, the new one of an email change, or the
    -- old one an undo restores.
    email text not null,
    -- The session that asked for an email change, which its confirmation keeps.
    session_id uuid,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    used_at timestamptz,
    constraint link_tokens_pkey primary key (token_hash),
    constraint link_tokens_user_id_fkey foreign key (user_id) references users (id) on delete cascade,
    constraint link_tokens_token_hash_length check (octet_length(token_hash) = 32),
    constraint link_tokens_purpose_known check (purpose in (
        'verify_email', 'reset_password', 'change_email', 'undo_email_change'
    ))
);

create index link_tokens_user_id_idx on link_tokens (user_id, purpose);
create index link_tokens_expires_at_idx on link_tokens (expires_at);

-- A transactional outbox: each mail is a row written in the transaction of the change that causes
-- it, and the courier sends it afterwards, so no request waits on SMTP and an SMTP outage loses
-- nothing. A row's body is wiped once it is sent or discarded.
create table outbox (
    id bigint generated always as identity,
    -- The random id of the mail's Message-ID: the same on every attempt, unique across databases.
    message_id uuid not null default gen_random_uuid(),
    -- The account the mail is about; a request by address (a password reset, a resent
    -- verification) names only the address until the courier resolves it.
    user_id uuid,
    recipient text not null,
    template text not null,
    -- The values the template fills in (names, addresses); never a token.
    params jsonb not null default '{}',
    -- A link token, XChaCha20-Poly1305-encrypted under a key derived from SERVER_SECRET.
    sealed_token bytea,
    created_at timestamptz not null,
    next_attempt_at timestamptz not null,
    attempts integer not null default 0,
    -- While set and in the future, one courier holds the row.
    claimed_until timestamptz,
    sent_at timestamptz,
    -- Set when there is nothing to send: a reset asked for an address without an account, a cap.
    discarded_at timestamptz,
    -- The last delivery failure's class, never a mail body or an address.
    last_error text,
    constraint outbox_pkey primary key (id),
    constraint outbox_user_id_fkey foreign key (user_id) references users (id) on delete cascade,
    constraint outbox_template_known check (template in (
        'verify_email', 'reset_password', 'password_changed', 'register_attempt',
        'email_change_confirm', 'email_change_taken', 'email_change_notice'
    )),
    constraint outbox_done_once check (sent_at is null or discarded_at is null)
);

-- The courier's queue: what is still to send, by when it is due.
create index outbox_pending_idx on outbox (next_attempt_at)
    where sent_at is null and discarded_at is null;
-- The per-recipient cap counts recent mails to an address.
create index outbox_recipient_idx on outbox (lower(recipient), created_at);
-- The janitor purges finished rows.
create index outbox_finished_idx on outbox (created_at)
    where sent_at is not null or discarded_at is not null;

-- A password reset, an email change and its undo end sessions of the account.
alter table sessions
    drop constraint sessions_end_reason_known,
    add constraint sessions_end_reason_known check (end_reason in (
        'logout', 'logout_all', 'logout_others', 'password_changed', 'refresh_token_reused',
        'deactivated', 'expired', 'ended_by_user', 'password_reset', 'email_changed',
        'email_change_undone'
    ));
