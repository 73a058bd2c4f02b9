-- Signing keys kept in PostgreSQL (SIGNING_KEYS=database), so every origin instance signs with
-- the same current key and `gatehouse-origin key rotate` brings in the next one without restarts.
create table signing_keys (
    kid text primary key,
    -- The Ed25519 public key (32 bytes), published in the JWKS.
    public_key bytea not null check (octet_length(public_key) = 32),
    -- The PKCS#8 private key sealed with XChaCha20-Poly1305 under a key derived from
    -- SERVER_SECRET (nonce first), bound to the kid as associated data.
    sealed_private_key bytea not null,
    created_at timestamptz not null,
    -- Published from creation; signing from here on, once no later key's time has come.
    activates_at timestamptz not null
);

create index signing_keys_by_activation on signing_keys (activates_at);
