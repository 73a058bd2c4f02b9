-- Accounts, sessions and API keys. Constraints are named so the origin maps violations by name.

create table users (
    id uuid not null,
    email text not null,
    password_hash text not null,
    first_name text,
    last_name text,
    is_active boolean not null default true,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint users_pkey primary key (id),
    constraint users_email_length check (char_length(email) between 3 and 254)
);

-- One account per address, compared without case. The index, not a check-then-insert, decides
-- races between concurrent registrations.
create unique index users_email_key on users (lower(email));

create table sessions (
    id uuid not null,
    user_id uuid not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    user_agent text,
    ip text,
    constraint sessions_pkey primary key (id),
    constraint sessions_user_id_fkey foreign key (user_id) references users (id) on delete cascade
);

create index sessions_user_id_idx on sessions (user_id);

create table api_keys (
    -- The public part of the key (gth_<id>_...).
    id text not null,
    name text not null,
    -- SHA-256 of the secret part; the key itself is never stored.
    secret_hash bytea not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    constraint api_keys_pkey primary key (id),
    constraint api_keys_secret_hash_length check (octet_length(secret_hash) = 32)
);
