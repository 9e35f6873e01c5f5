-- Enrollment token secrets are stored as SHA-256 ($sha256$<64 hex>) from now on: the secret is
-- 256 bits of randomness, so a slow hash protects nothing and costs 25 ms of CPU per attempt.
-- Tokens created before keep their argon2id hash (verified off the executor, holding no
-- connection); the application role still cannot rewrite any hash.
ALTER TABLE enrollment_tokens DROP CONSTRAINT enrollment_tokens_secret_hash_check;
ALTER TABLE enrollment_tokens ADD CONSTRAINT enrollment_tokens_secret_hash_check
    CHECK (secret_hash LIKE '$argon2id$%' OR secret_hash ~ '^\$sha256\$[0-9a-f]{64}$');
