-- Accounts brought over from the FastAPI service Gatehouse replaces (`gatehouse-origin
-- import-users`): the old integer id, which the platform's other services store, and its
-- free-form metadata, kept as they were.
alter table users
    add column legacy_id bigint,
    add column legacy_metadata jsonb,
    -- The hash came from the old service, which cut passwords at 72 bytes without a word: a
    -- longer password is checked on its first 72 bytes until the user sets one here.
    add column legacy_password boolean not null default false,
    add constraint users_legacy_id_key unique (legacy_id);
