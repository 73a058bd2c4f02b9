-- Refresh tokens are numbered per session and vouched for by an HMAC (gatehouse_shared::refresh),
-- so a session keeps its live generation instead of a row per token: a session refreshed 100,000
-- times takes the space of one refreshed once. refresh_tokens keeps only the rows of sessions begun
-- before this change (generation 0), which stop growing at their next refresh and go with their
-- sessions.
alter table sessions
    -- The live refresh token's generation; 0 while the session still uses a token of the old format.
    add column refresh_generation bigint not null default 0,
    -- When the live generation was handed out, i.e. when the one before it was spent: the reuse
    -- window counts from here.
    add column refresh_rotated_at timestamptz,
    -- REFRESH_LIMIT_PER_SESSION: rotations counted in the fixed window that began at this time.
    add column refresh_window_start timestamptz,
    add column refresh_window_count integer not null default 0,
    -- Answers under the reuse window in the same window, counted apart (ten times the limit).
    add column refresh_window_replays integer not null default 0,
    add constraint sessions_refresh_generation_check check (refresh_generation >= 0);

-- The janitor's seal wipe reads only rows that still hold a seal.
create index refresh_tokens_sealed_idx on refresh_tokens (spent_at) where successor_sealed is not null;

-- Counters and trusted devices are now named by an HMAC under a key derived from SERVER_SECRET,
-- and trust belongs to a device token rather than a client address. Rows named the old way
-- (unkeyed SHA-256) can never match again; trust keyed on an address must not survive.
delete from login_trusted_clients;
delete from login_attempts;

-- Signing keys revoked in an emergency (`gatehouse-origin key revoke KID`): out of the JWKS,
-- refused by the origin, and listed to every edge, which refuses their tokens even from a cached
-- key set. Kept for good: the list is tiny, and a key must never come back.
create table revoked_signing_keys (
    kid text not null,
    revoked_at timestamptz not null,
    constraint revoked_signing_keys_pkey primary key (kid)
);
