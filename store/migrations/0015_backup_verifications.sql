-- Backup verifications (issue 17): each `fleetctl backup verify` restores a backup into a scratch
-- database, checks the row counts its header recorded and every tenant's audit chain there, and
-- keeps the outcome here, in the database it was made from; the compliance report reads the most
-- recent one (store::backup::last_verification). Operational, not tenant data: no tenant_id, so no
-- row-level security, and no grant to the application role: only the owner writes and reads it.
CREATE TABLE public.backup_verifications (
    verification_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    verified_at       timestamptz NOT NULL DEFAULT now(),
    -- The backup file's name as given to fleetctl.
    file_name         text NOT NULL CHECK (file_name <> ''),
    -- From the backup's authenticated header and trailer; NULL when the file could not be read
    -- (wrong key, truncated, altered).
    backup_created_at timestamptz,
    dump_sha256       text CHECK (dump_sha256 ~ '^[0-9a-f]{64}$'),
    verified          boolean NOT NULL,
    -- One line: what was checked, or what failed.
    detail            text NOT NULL,
    -- Per table the recorded and restored row counts, per tenant the chain's verdict.
    checks            jsonb NOT NULL
);
CREATE INDEX backup_verifications_recent ON public.backup_verifications (verified_at DESC);
