-- Failed-login counters shared by every origin instance (issue 5). One row per counter: an
-- account, an account from one client address, or one client address. Keys are SHA-256 of the
-- counter's name, so attempted email addresses are not kept in clear.

create table login_attempts (
    key bytea not null,
    window_start timestamptz not null,
    attempts integer not null,
    constraint login_attempts_pkey primary key (key),
    constraint login_attempts_key_length check (octet_length(key) = 32),
    constraint login_attempts_attempts_nonnegative check (attempts >= 0)
);

create index login_attempts_window_start_idx on login_attempts (window_start);
