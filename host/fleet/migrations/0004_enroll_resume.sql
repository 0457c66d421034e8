-- An enrollment cut short (issue 16): the server consumed the token and answered, but the
-- appliance lost power before it stored its certificate. It comes back with the same token and
-- the same key (kept before it asked); the server recognises the key by this fingerprint (the
-- SHA-256 of the CSR's public key) and issues the same device a certificate again. Shared by
-- SQLite and PostgreSQL.
ALTER TABLE enrollment_tokens ADD COLUMN public_key_sha256 TEXT;
