-- Clients (IPv4 address or IPv6 /64) that have signed in to an account, so the account-wide
-- brute-force limit cannot lock its owner out from where they usually sign in (issue 5). Keys
-- are SHA-256 of the account and client, as for login_attempts.

create table login_trusted_clients (
    key bytea not null,
    last_success timestamptz not null,
    constraint login_trusted_clients_pkey primary key (key),
    constraint login_trusted_clients_key_length check (octet_length(key) = 32)
);

create index login_trusted_clients_last_success_idx on login_trusted_clients (last_success);
