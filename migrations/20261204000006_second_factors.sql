-- Second factors: TOTP authenticators, recovery codes, the pending second step of a login, and
-- how each session was authenticated (rendered into its tokens' amr, acr and auth_time).

-- How the session signed in (gatehouse_shared::assurance::Method) and when the user last proved
-- who they are: the sign-in, or the last step-up. Sessions from before read as a password sign-in
-- at their creation.
alter table sessions
    add column auth_method text not null default 'password',
    add column authenticated_at timestamptz,
    add constraint sessions_auth_method_known
        check (auth_method in ('password', 'password_otp', 'password_recovery_code', 'passkey'));

-- Removing a second factor ends the account's other sessions.
alter table sessions
    drop constraint sessions_end_reason_known,
    add constraint sessions_end_reason_known check (end_reason in (
        'logout', 'logout_all', 'logout_others', 'password_changed', 'refresh_token_reused',
        'deactivated', 'expired', 'ended_by_user', 'password_reset', 'email_changed',
        'email_change_undone', 'factor_removed'
    ));

-- A reset that removes a factor set while the address was unverified says so in its notice.
alter table outbox
    drop constraint outbox_template_known,
    add constraint outbox_template_known check (template in (
        'verify_email', 'reset_password', 'password_changed', 'register_attempt',
        'email_change_confirm', 'email_change_taken', 'email_change_notice',
        'password_reset_factors_removed'
    ));

-- One TOTP authenticator per account. The secret is sealed (XChaCha20-Poly1305 under a key
-- derived from SERVER_SECRET, bound to the user id), never stored in the clear.
create table totp_factors (
    user_id uuid not null,
    secret_sealed bytea not null,
    created_at timestamptz not null,
    -- Null until a first code confirms the user's app holds the secret; an unconfirmed factor
    -- is not asked for at login.
    confirmed_at timestamptz,
    -- The last time step whose code was accepted: a code of that step or an earlier one is
    -- refused, so each code works once (RFC 6238 section 5.2).
    last_step bigint,
    -- Enrolled while the account's address was unverified: a password reset through the address
    -- removes it (it may be a squatter's, set before the owner took the address back).
    while_unverified boolean not null,
    constraint totp_factors_pkey primary key (user_id),
    constraint totp_factors_user_id_fkey foreign key (user_id) references users (id)
        on delete cascade
);

-- One-time recovery codes: HMAC-SHA256 under a key derived from SERVER_SECRET. Each code has
-- 80 random bits, so a keyed fast hash is enough, and a check costs no bcrypt.
create table recovery_codes (
    user_id uuid not null,
    code_mac bytea not null,
    created_at timestamptz not null,
    used_at timestamptz,
    constraint recovery_codes_pkey primary key (user_id, code_mac),
    constraint recovery_codes_user_id_fkey foreign key (user_id) references users (id)
        on delete cascade,
    constraint recovery_codes_mac_length check (octet_length(code_mac) = 32)
);

-- A login whose password was right and which waits for its second factor. The client holds the
-- mfa_token; only its SHA-256 is stored. Short-lived, single use, a few tries.
create table mfa_challenges (
    token_hash bytea not null,
    user_id uuid not null,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    failures integer not null default 0,
    used_at timestamptz,
    user_agent text,
    ip text,
    -- The password was accepted by the imported service's rule only: the finished login asks for
    -- a new one, as a one-step login would.
    password_change_required boolean not null default false,
    constraint mfa_challenges_pkey primary key (token_hash),
    constraint mfa_challenges_user_id_fkey foreign key (user_id) references users (id)
        on delete cascade,
    constraint mfa_challenges_token_hash_length check (octet_length(token_hash) = 32)
);

create index mfa_challenges_user_id_idx on mfa_challenges (user_id);
create index mfa_challenges_expires_at_idx on mfa_challenges (expires_at);
