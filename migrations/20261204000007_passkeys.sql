-- Passkeys (WebAuthn): registered credentials, and the server-side state of ceremonies in
-- progress, so any origin instance can finish what another started.

alter table sessions
    drop constraint sessions_auth_method_known,
    add constraint sessions_auth_method_known check (auth_method in (
        'password', 'password_otp', 'password_recovery_code', 'passkey', 'password_passkey'
    ));

create table passkeys (
    id uuid not null,
    user_id uuid not null,
    -- The credential id the authenticator chose: unique across all accounts (WebAuthn Level 3
    -- section 7.1 step 26: a credential registered to another user is refused).
    credential_id bytea not null,
    -- webauthn-rs's `Passkey` (public key, algorithm, signature counter, flags) as JSON.
    credential jsonb not null,
    name text not null,
    created_at timestamptz not null,
    last_used_at timestamptz,
    -- Registered while the account's address was unverified: a password reset through the
    -- address removes it, as it does such a TOTP authenticator.
    while_unverified boolean not null,
    constraint passkeys_pkey primary key (id),
    constraint passkeys_user_id_fkey foreign key (user_id) references users (id) on delete cascade,
    constraint passkeys_credential_id_key unique (credential_id),
    constraint passkeys_name_length check (char_length(name) between 1 and 64)
);

create index passkeys_user_id_idx on passkeys (user_id);

-- A registration or authentication ceremony waiting for the authenticator's answer: single use,
-- short-lived. `user_id` is null for a username-less sign-in, which learns the user from the
-- credential.
create table webauthn_ceremonies (
    id uuid not null,
    purpose text not null,
    user_id uuid,
    state jsonb not null,
    expires_at timestamptz not null,
    constraint webauthn_ceremonies_pkey primary key (id),
    constraint webauthn_ceremonies_user_id_fkey foreign key (user_id) references users (id)
        on delete cascade,
    constraint webauthn_ceremonies_purpose_known check (purpose in (
        'register', 'sign_in', 'second_factor'
    ))
);

create index webauthn_ceremonies_expires_at_idx on webauthn_ceremonies (expires_at);
