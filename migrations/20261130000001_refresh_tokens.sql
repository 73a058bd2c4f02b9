-- Refresh tokens and session lifetimes (issue 4). Every timestamp here is written by the origin
-- from its clock, so expiry can be tested with a clock the test moves.

alter table sessions
    add column last_used_at timestamptz,
    add column end_reason text,
    add constraint sessions_end_reason_known check (end_reason in (
        'logout', 'logout_all', 'logout_others', 'password_changed', 'refresh_token_reused',
        'deactivated', 'expired', 'ended_by_user'
    )),
    add constraint sessions_end_reason_with_revoked_at check ((revoked_at is null) = (end_reason is null));

update sessions set last_used_at = created_at;
update sessions s set end_reason = case when u.is_active then 'logout' else 'deactivated' end
from users u where u.id = s.user_id and s.revoked_at is not null;
alter table sessions alter column last_used_at set not null;

-- The edge's revocation feed reads the sessions ended in the last few minutes.
create index sessions_revoked_at_idx on sessions (revoked_at) where revoked_at is not null;

-- One row per refresh token a session has had, kept while the session lives so that a spent
-- token shown again is recognised as reuse (RFC 9700 section 4.14.2). Rows go with their session's
-- end: a token of an ended session is simply unknown.
create table refresh_tokens (
    id bigint generated always as identity,
    session_id uuid not null,
    -- SHA-256 of the token's 32 random bytes; the token itself is never stored.
    token_hash bytea not null,
    parent_id bigint,
    created_at timestamptz not null,
    -- Set when the token is exchanged for its successor.
    spent_at timestamptz,
    -- The successor, one-time-padded with a key only this token's holder can derive (see
    -- gatehouse_shared::refresh). It lets a racing second request with this token receive the same
    -- successor without the successor being stored in a usable form.
    successor_sealed bytea,
    constraint refresh_tokens_pkey primary key (id),
    constraint refresh_tokens_token_hash_key unique (token_hash),
    constraint refresh_tokens_session_id_fkey foreign key (session_id)
        references sessions (id) on delete cascade,
    constraint refresh_tokens_parent_id_fkey foreign key (parent_id)
        references refresh_tokens (id) on delete cascade,
    constraint refresh_tokens_token_hash_length check (octet_length(token_hash) = 32),
    constraint refresh_tokens_successor_sealed_length check (octet_length(successor_sealed) = 32),
    constraint refresh_tokens_sealed_when_spent check (successor_sealed is null or spent_at is not null)
);

create index refresh_tokens_session_id_idx on refresh_tokens (session_id);
create index refresh_tokens_parent_id_idx on refresh_tokens (parent_id);
