-- Every change that can make a cached "yes" wrong is announced on the channel
-- `gatehouse_changes`, from the transaction that makes it: PostgreSQL delivers the notification
-- to every listening origin instance when, and only if, that transaction commits. The origins keep
-- API-key verdicts and live sessions in memory and drop what a notification names (see
-- origin/src/memory.rs). Triggers, not application code, so that no path is forgotten: ending a
-- session anywhere, an operator's SQL, a cascade from erasing an account.
--
-- Payloads: 'session <uuid>' (ended or gone), 'user <uuid>' (deactivated),
-- 'api_key <id> active|revoked', 'signing_key <kid>' (revoked), 'reset' (a table truncated: forget
-- everything). The origins also send 'probe <nonce>' to check that they hear the channel.
--
-- Triggers do not fire under session_replication_role = replica (pg_restore --disable-triggers,
-- logical replication): after loading data that way, restart the origins, which forget all.

create function gatehouse_notify_session() returns trigger language plpgsql as $$
begin
    perform pg_notify('gatehouse_changes', 'session ' || old.id);
    return null;
end
$$;

-- A session ended (logout, password change, reuse detected, deactivation, ...).
create trigger sessions_ended_notify
    after update of revoked_at on sessions
    for each row when (old.revoked_at is null and new.revoked_at is not null)
    execute function gatehouse_notify_session();

-- A session deleted while not ended (an account erased, an operator's delete). Ended sessions
-- were announced when they ended.
create trigger sessions_deleted_notify
    after delete on sessions
    for each row when (old.revoked_at is null)
    execute function gatehouse_notify_session();

create function gatehouse_notify_user() returns trigger language plpgsql as $$
begin
    perform pg_notify('gatehouse_changes', 'user ' || old.id);
    return null;
end
$$;

-- An account deactivated; the application also ends its sessions, an operator's SQL may not.
create trigger users_deactivated_notify
    after update of is_active on users
    for each row when (old.is_active and not new.is_active)
    execute function gatehouse_notify_user();

create function gatehouse_notify_api_key() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' or (tg_op = 'UPDATE' and old.id <> new.id) then
        perform pg_notify('gatehouse_changes', 'api_key ' || old.id || ' revoked');
    end if;
    if tg_op = 'DELETE' then
        null;
    elsif new.revoked_at is null then
        perform pg_notify('gatehouse_changes', 'api_key ' || new.id || ' active');
    else
        perform pg_notify('gatehouse_changes', 'api_key ' || new.id || ' revoked');
    end if;
    return null;
end
$$;

-- Created (an unknown id may have been remembered as unknown), revoked or deleted.
create trigger api_keys_notify
    after insert or update or delete on api_keys
    for each row execute function gatehouse_notify_api_key();

create function gatehouse_notify_signing_key() returns trigger language plpgsql as $$
begin
    perform pg_notify('gatehouse_changes', 'signing_key ' || new.kid);
    return null;
end
$$;

-- A signing key revoked in an emergency: sessions remembered as live were checked against the
-- revoked keys of that moment.
create trigger revoked_signing_keys_notify
    after insert on revoked_signing_keys
    for each row execute function gatehouse_notify_signing_key();

create function gatehouse_notify_reset() returns trigger language plpgsql as $$
begin
    perform pg_notify('gatehouse_changes', 'reset');
    return null;
end
$$;

-- TRUNCATE fires no row triggers.
create trigger sessions_truncated_notify after truncate on sessions
    for each statement execute function gatehouse_notify_reset();
create trigger users_truncated_notify after truncate on users
    for each statement execute function gatehouse_notify_reset();
create trigger api_keys_truncated_notify after truncate on api_keys
    for each statement execute function gatehouse_notify_reset();
