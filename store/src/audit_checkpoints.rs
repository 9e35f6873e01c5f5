//! Signed checkpoints of the audit chain (migration 0014).
//!
//! The chain of [`crate::audit`] is plain SHA-256 kept in the database it protects: whoever can
//! write the database can change an event, recompute every later hash and the head, and the chain
//! still verifies. A checkpoint closes that: fleetd signs, with an Ed25519 key kept outside the
//! database, the tenant's chain up to a sequence number together with the hash of every event
//! since the previous checkpoint. A verifier that pins the public key then detects a rewritten
//! event (named by its seq), a truncated tail or a rewound head (`behind_checkpoint`), and a
//! forged checkpoint (its signature does not verify). fleetd also writes every checkpoint as a
//! file to a directory outside the database ([`push_to_dir`]); the rows here are a copy.
//!
//! # Signed bytes (version 1)
//!
//! | field              | encoding                                                          |
//! |--------------------|-------------------------------------------------------------------|
//! | domain tag         | 31 bytes: the 30 ASCII bytes `fleetplane.audit.checkpoint.v1`, then `0x00` |
//! | `tenant_id`        | the UUID's 16 bytes                                               |
//! | `first_seq`        | `i64`, 8 bytes big-endian                                         |
//! | `seq`              | `i64`, 8 bytes big-endian: the last event covered                 |
//! | `created_at`       | microseconds since the Unix epoch, `i64`, 8 bytes big-endian      |
//! | `last_hash`        | 32 bytes: the hash of event `seq`                                 |
//! | events digest      | 32 bytes: SHA-256 of the hashes of events `first_seq..=seq`, concatenated |
//!
//! The signature is Ed25519 (RFC 8032) over those 135 bytes. Since each event hash covers its
//! predecessor, `last_hash` alone commits to the whole chain up to `seq`; the listed hashes let a
//! verifier name the first changed event instead of only the checkpoint.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::audit::{self, AuditEvent, ChainBreak, GENESIS_HASH};
use crate::{AppDb, StoreError, TenantId, TenantTx};

const DOMAIN_TAG: &[u8; 31] = b"fleetplane.audit.checkpoint.v1\0";

/// The most events one checkpoint covers, so that a row stays small (32 bytes an event); a longer
/// stretch of new events gets several checkpoints in a row.
pub const MAX_EVENTS_PER_CHECKPOINT: i64 = 10_000;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): what `openssl` reads.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The secret checkpoint key. Its `Debug` shows the public fingerprint only.
pub struct CheckpointKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointKey")
            .field("fingerprint", &self.public_key().fingerprint())
            .finish_non_exhaustive()
    }
}

impl CheckpointKey {
    /// The key of a 32-byte Ed25519 seed (the key file's contents).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, StoreError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| StoreError::Invalid {
            field: "audit checkpoint key",
            reason: "not an Ed25519 seed".into(),
        })?;
        Ok(Self { pair })
    }

    /// A new random seed, for a key file created at first start.
    pub fn new_seed() -> zeroize::Zeroizing<[u8; 32]> {
        use rand_core::{OsRng, RngCore};
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut seed[..]);
        seed
    }

    /// The public half, which verifiers pin.
    pub fn public_key(&self) -> PublicKey {
        let bytes = self.pair.public_key().as_ref();
        PublicKey(bytes.try_into().expect("Ed25519 public keys are 32 bytes"))
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.pair
            .sign(message)
            .as_ref()
            .try_into()
            .expect("Ed25519 signatures are 64 bytes")
    }
}

/// An Ed25519 public key that verifies checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Lowercase hex SHA-256 of the 32 raw bytes: names the key in every checkpoint.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.0))
    }

    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `openssl pkey -pubin` reads it.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// Reads [`Self::to_pem`]'s form, or the 64 hex characters of the raw key.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::Invalid {
            field: "audit checkpoint public key",
            reason: reason.into(),
        };
        let text = text.trim();
        if let Some(body) = text
            .strip_prefix("-----BEGIN PUBLIC KEY-----")
            .and_then(|rest| rest.strip_suffix("-----END PUBLIC KEY-----"))
        {
            let b64: String = body.split_whitespace().collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| invalid("the PEM body is not base64"))?;
            let raw = der
                .strip_prefix(&SPKI_PREFIX[..])
                .ok_or_else(|| invalid("not an Ed25519 public key"))?;
            return Ok(Self(
                raw.try_into()
                    .map_err(|_| invalid("not an Ed25519 public key"))?,
            ));
        }
        let raw = hex::decode(text)
            .map_err(|_| invalid("expected a PEM PUBLIC KEY or 64 hex characters"))?;
        Ok(Self(raw.try_into().map_err(|_| {
            invalid("expected a PEM PUBLIC KEY or 64 hex characters")
        })?))
    }
}

/// One signed checkpoint of a tenant's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The first event covered.
    pub first_seq: i64,
    /// The last event covered.
    pub seq: i64,
    /// The hash of event `seq`.
    pub last_hash: [u8; 32],
    /// The hashes of events `first_seq..=seq`, in order.
    pub event_hashes: Vec<[u8; 32]>,
    /// When it was signed, at microsecond resolution.
    pub created_at: OffsetDateTime,
    /// [`PublicKey::fingerprint`] of the signing key.
    pub key_fingerprint: String,
    /// Ed25519 over [`Self::signed_bytes`].
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// The bytes the signature covers; see the module documentation.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut digest = Sha256::new();
        for hash in &self.event_hashes {
            digest.update(hash);
        }
        let mut out = Vec::with_capacity(DOMAIN_TAG.len() + 16 + 24 + 64);
        out.extend_from_slice(DOMAIN_TAG);
        out.extend_from_slice(self.tenant_id.0.as_bytes());
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&audit::unix_micros(self.created_at).to_be_bytes());
        out.extend_from_slice(&self.last_hash);
        out.extend_from_slice(&digest.finalize());
        out
    }

    /// Whether `key` signed exactly this checkpoint and its parts agree (as many hashes as
    /// events, the last of them `last_hash`). Anything else is a forgery.
    pub fn is_authentic(&self, key: &PublicKey) -> bool {
        let consistent = self.first_seq >= 1
            && self.seq >= self.first_seq
            && i64::try_from(self.event_hashes.len()).ok() == Some(self.seq - self.first_seq + 1)
            && self.event_hashes.last() == Some(&self.last_hash);
        // The fingerprint is public; comparing it in constant time would protect nothing.
        consistent
            && self.key_fingerprint == key.fingerprint()
            && UnparsedPublicKey::new(&ED25519, key.0)
                .verify(&self.signed_bytes(), &self.signature)
                .is_ok()
    }

    /// The JSON document of a checkpoint, as pushed to files, listed by the API and ending a
    /// JSON Lines export.
    pub fn to_document(&self) -> CheckpointDocument {
        CheckpointDocument {
            version: 1,
            tenant_id: self.tenant_id.to_string(),
            first_seq: self.first_seq,
            seq: self.seq,
            created_at: audit::rfc3339_micros(self.created_at),
            created_at_micros: audit::unix_micros(self.created_at),
            last_hash: hex::encode(self.last_hash),
            event_hashes: self.event_hashes.iter().map(hex::encode).collect(),
            key_fingerprint: self.key_fingerprint.clone(),
            signature: hex::encode(self.signature),
        }
    }
}

/// A checkpoint as JSON text. `created_at_micros` is what the signature covers; `created_at` is
/// the same instant for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDocument {
    /// Always 1 (the signed bytes' version).
    pub version: u32,
    /// The tenant (hyphenated UUID).
    pub tenant_id: String,
    /// The first event covered.
    pub first_seq: i64,
    /// The last event covered.
    pub seq: i64,
    /// RFC 3339, UTC, six fractional digits.
    pub created_at: String,
    /// Microseconds since the Unix epoch.
    pub created_at_micros: i64,
    /// Lowercase hex.
    pub last_hash: String,
    /// Lowercase hex, one per event `first_seq..=seq`.
    pub event_hashes: Vec<String>,
    /// Lowercase hex SHA-256 of the raw public key.
    pub key_fingerprint: String,
    /// Lowercase hex, 64 bytes.
    pub signature: String,
}

impl TryFrom<CheckpointDocument> for Checkpoint {
    type Error = StoreError;

    /// Parses the fields only; whether the checkpoint is authentic is [`Checkpoint::is_authentic`].
    fn try_from(doc: CheckpointDocument) -> Result<Self, StoreError> {
        fn bytes<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N], StoreError> {
            hex::decode(text)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| StoreError::Invalid {
                    field,
                    reason: format!("expected {} hex characters", 2 * N),
                })
        }
        if doc.version != 1 {
            return Err(StoreError::Invalid {
                field: "checkpoint version",
                reason: format!("version {} is not known (1 is)", doc.version),
            });
        }
        Ok(Checkpoint {
            tenant_id: doc.tenant_id.parse().map_err(|_| StoreError::Invalid {
                field: "checkpoint tenant_id",
                reason: "not a UUID".into(),
            })?,
            first_seq: doc.first_seq,
            seq: doc.seq,
            last_hash: bytes("checkpoint last_hash", &doc.last_hash)?,
            event_hashes: doc
                .event_hashes
                .iter()
                .map(|h| bytes("checkpoint event_hashes", h))
                .collect::<Result<_, _>>()?,
            created_at: OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(doc.created_at_micros) * 1_000,
            )
            .map_err(|_| StoreError::Invalid {
                field: "checkpoint created_at_micros",
                reason: "out of range".into(),
            })?,
            key_fingerprint: doc.key_fingerprint,
            signature: bytes("checkpoint signature", &doc.signature)?,
        })
    }
}

/// Signs the events of the transaction's tenant after its last checkpoint (at most
/// [`MAX_EVENTS_PER_CHECKPOINT`] of them) and stores the checkpoint; `None` when there is
/// nothing new. The chain's head row stays locked until the transaction ends, so appends wait
/// and two writers never sign overlapping ranges. The new events are checked first (each
/// re-hashes and links to the previous checkpoint's hash): a chain that is already broken is
/// refused, never signed.
pub async fn write(
    tx: &mut TenantTx,
    key: &CheckpointKey,
) -> Result<Option<Checkpoint>, StoreError> {
    let tenant = tx.tenant();
    sqlx::query("SELECT 1 FROM audit_chain_heads WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(StoreError::NotFound("audit chain head"))?;
    let (after, mut prev_hash) = match latest(tx).await? {
        Some(last) => (last.seq, last.last_hash),
        None => (0, GENESIS_HASH),
    };
    let events = audit::list_after(tx, after, MAX_EVENTS_PER_CHECKPOINT).await?;
    let Some(last) = events.last() else {
        return Ok(None);
    };
    for (expected_seq, event) in (after + 1..).zip(&events) {
        if let Some(reason) = audit::check_link(event, expected_seq, &prev_hash) {
            tracing::error!(%tenant, seq = expected_seq, reason = reason.as_str(), "audit chain broken; no checkpoint signed");
            return Err(StoreError::Conflict(
                "the audit chain is broken after the last checkpoint; it was not signed",
            ));
        }
        prev_hash = event.hash;
    }
    let mut checkpoint = Checkpoint {
        tenant_id: tenant,
        first_seq: after + 1,
        seq: last.seq,
        last_hash: last.hash,
        event_hashes: events.iter().map(|e| e.hash).collect(),
        created_at: audit::now_micros(),
        key_fingerprint: key.public_key().fingerprint(),
        signature: [0; 64],
    };
    checkpoint.signature = key.sign(&checkpoint.signed_bytes());
    sqlx::query(
        "INSERT INTO audit_checkpoints
             (tenant_id, seq, first_seq, last_hash, event_hashes, created_at, key_fingerprint,
              signature)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(tenant)
    .bind(checkpoint.seq)
    .bind(checkpoint.first_seq)
    .bind(&checkpoint.last_hash[..])
    .bind(checkpoint.event_hashes.concat())
    .bind(checkpoint.created_at)
    .bind(&checkpoint.key_fingerprint)
    .bind(&checkpoint.signature[..])
    .execute(tx.conn())
    .await?;
    Ok(Some(checkpoint))
}

type CheckpointRow = (i64, i64, Vec<u8>, Vec<u8>, OffsetDateTime, String, Vec<u8>);

fn from_row(tenant_id: TenantId, row: CheckpointRow) -> Result<Checkpoint, StoreError> {
    let (seq, first_seq, last_hash, event_hashes, created_at, key_fingerprint, signature) = row;
    let invalid = |reason: &str| StoreError::Invalid {
        field: "audit_checkpoints row",
        reason: reason.into(),
    };
    if event_hashes.len() % 32 != 0 {
        return Err(invalid("event_hashes is not a whole number of hashes"));
    }
    Ok(Checkpoint {
        tenant_id,
        first_seq,
        seq,
        last_hash: last_hash
            .try_into()
            .map_err(|_| invalid("last_hash is not 32 bytes"))?,
        event_hashes: event_hashes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("chunks of 32"))
            .collect(),
        created_at,
        key_fingerprint,
        signature: signature
            .try_into()
            .map_err(|_| invalid("signature is not 64 bytes"))?,
    })
}

const SELECT_COLUMNS: &str = "SELECT seq, first_seq, last_hash, event_hashes, created_at, \
                              key_fingerprint, signature FROM audit_checkpoints";

/// The transaction's tenant checkpoints with `seq > after_seq`, by seq, at most `limit`.
pub async fn list(
    tx: &mut TenantTx,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Checkpoint>, StoreError> {
    let tenant = tx.tenant();
    let rows: Vec<CheckpointRow> = sqlx::query_as(&format!(
        "{SELECT_COLUMNS} WHERE seq > $1 ORDER BY seq LIMIT $2"
    ))
    .bind(after_seq)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter().map(|row| from_row(tenant, row)).collect()
}

/// The transaction's tenant newest checkpoint.
pub async fn latest(tx: &mut TenantTx) -> Result<Option<Checkpoint>, StoreError> {
    latest_through(tx, i64::MAX).await
}

/// The transaction's tenant newest checkpoint with `seq <= through_seq`: the one that covers an
/// export ending at `through_seq`.
pub async fn latest_through(
    tx: &mut TenantTx,
    through_seq: i64,
) -> Result<Option<Checkpoint>, StoreError> {
    let tenant = tx.tenant();
    let row: Option<CheckpointRow> = sqlx::query_as(&format!(
        "{SELECT_COLUMNS} WHERE seq <= $1 ORDER BY seq DESC LIMIT 1"
    ))
    .bind(through_seq)
    .fetch_optional(tx.conn())
    .await?;
    row.map(|row| from_row(tenant, row)).transpose()
}

/// The signed checkpoint the transaction's tenant chain is anchored at after a prune
/// ([`crate::audit::anchor`]): `None` when nothing was pruned, or when no stored checkpoint
/// matches the anchor (then a verifier reports `anchor_unsigned`).
pub async fn anchor_checkpoint(tx: &mut TenantTx) -> Result<Option<Checkpoint>, StoreError> {
    let anchor = crate::audit::anchor(tx).await?;
    if anchor.seq == 0 {
        return Ok(None);
    }
    Ok(latest_through(tx, anchor.seq)
        .await?
        .filter(|c| c.seq == anchor.seq && c.last_hash == anchor.hash))
}

/// The tenants with events after their last checkpoint, at most `max` of them (across tenants,
/// through the narrow definer function of migration 0014).
pub async fn tenants_due(app: &AppDb, max: i32) -> Result<Vec<TenantId>, StoreError> {
    crate::device_directory::definer_tenant_ids(app, "SELECT fleet_audit_checkpoints_due($1)", max)
        .await
}

/// The file of a checkpoint in a push directory: `<dir>/<tenant>/<seq>.json`.
pub fn file_path(dir: &Path, checkpoint: &Checkpoint) -> PathBuf {
    dir.join(checkpoint.tenant_id.to_string())
        .join(format!("{}.json", checkpoint.seq))
}

/// Writes a checkpoint to `<dir>/<tenant>/<seq>.json`: to a temporary file first, synced, then
/// linked to its name, which fails rather than replace an existing file. An existing file with
/// the same contents is success (a retry); with other contents it is an error: nothing here
/// ever overwrites a checkpoint.
pub fn push_to_dir(dir: &Path, checkpoint: &Checkpoint) -> std::io::Result<PathBuf> {
    let path = file_path(dir, checkpoint);
    let tenant_dir = path.parent().expect("the path has a tenant directory");
    std::fs::create_dir_all(tenant_dir)?;
    let mut text =
        serde_json::to_string_pretty(&checkpoint.to_document()).map_err(std::io::Error::other)?;
    text.push('\n');
    let mut temp = tempfile::Builder::new()
        .prefix(".checkpoint-")
        .tempfile_in(tenant_dir)?;
    temp.write_all(text.as_bytes())?;
    temp.as_file().sync_all()?;
    match std::fs::hard_link(temp.path(), &path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read(&path)? != text.as_bytes() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists with other contents", path.display()),
                ));
            }
        }
        Err(e) => return Err(e),
    }
    // The directory entry is durable too.
    std::fs::File::open(tenant_dir)?.sync_all()?;
    Ok(path)
}

/// What signs checkpoints and where they are pushed: fleetd's periodic task and the API's
/// on-demand route share one.
#[derive(Debug)]
pub struct Checkpointer {
    key: CheckpointKey,
    dir: PathBuf,
}

/// What one [`Checkpointer::run`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointRun {
    /// Checkpoints written (and pushed, or counted as `push_failed`).
    pub written: usize,
    /// Tenants that could not be checkpointed (logged).
    pub failed: usize,
}

impl Checkpointer {
    /// Signs with `key`, pushes to `dir`.
    pub fn new(key: CheckpointKey, dir: PathBuf) -> Self {
        Self { key, dir }
    }

    /// The public half of the signing key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The push directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the transaction's tenant checkpoint on request of `actor`, and the audit event
    /// that records it (after the events it covers), in the caller's transaction; `None` when
    /// there is nothing new. The caller commits, then [`Self::push`]es.
    pub async fn write_on_request(
        &self,
        tx: &mut TenantTx,
        actor: &audit::Actor,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let written = write(tx, &self.key).await;
        let written = counted(tx, written);
        if let Ok(Some(checkpoint)) = &written {
            let details = serde_json::json!({
                "first_seq": checkpoint.first_seq,
                "seq": checkpoint.seq,
                "key_fingerprint": checkpoint.key_fingerprint,
            });
            let target = audit::Target::Tenant(tx.tenant());
            audit::append(tx, actor, audit::Action::AuditCheckpoint, &target, &details).await?;
        }
        written
    }

    /// Writes the checkpoint file; a failure is logged and counted (`push_failed`), since the
    /// checkpoint is stored already.
    pub fn push(&self, metrics: &crate::StoreMetrics, checkpoint: &Checkpoint) -> bool {
        match push_to_dir(&self.dir, checkpoint) {
            Ok(_) => true,
            Err(e) => {
                metrics.checkpoint("push_failed");
                tracing::error!(tenant = %checkpoint.tenant_id, seq = checkpoint.seq, dir = %self.dir.display(), error = %e, "audit checkpoint stored but not written to the checkpoint directory");
                false
            }
        }
    }

    /// Checkpoints every tenant with events after its last checkpoint, each in its own
    /// transaction, until each is covered (several checkpoints for a long stretch).
    pub async fn run(&self, app: &AppDb) -> Result<CheckpointRun, StoreError> {
        let mut run = CheckpointRun::default();
        for tenant in tenants_due(app, 100_000).await? {
            loop {
                match self.write_one(app, tenant).await {
                    Ok(Some(c)) => {
                        run.written += 1;
                        if c.seq - c.first_seq + 1 < MAX_EVENTS_PER_CHECKPOINT {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(%tenant, error = %e, "audit checkpoint not written");
                        run.failed += 1;
                        break;
                    }
                }
            }
        }
        Ok(run)
    }

    async fn write_one(
        &self,
        app: &AppDb,
        tenant: TenantId,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let mut tx = app.begin(tenant).await?;
        let written = write(&mut tx, &self.key).await;
        let written = counted(&tx, written)?;
        tx.commit().await?;
        if let Some(checkpoint) = &written {
            self.push(app.metrics(), checkpoint);
        }
        Ok(written)
    }
}

fn counted(
    tx: &TenantTx,
    written: Result<Option<Checkpoint>, StoreError>,
) -> Result<Option<Checkpoint>, StoreError> {
    match &written {
        Ok(Some(_)) => tx.metrics().checkpoint("written"),
        Ok(None) => {}
        Err(StoreError::Conflict(_)) => tx.metrics().checkpoint("refused"),
        Err(_) => tx.metrics().checkpoint("error"),
    }
    written
}

/// Every checkpoint file of `tenant` in a push directory, by seq. A file that does not parse is
/// an error naming it: a verifier must not skip what it cannot read.
pub fn read_dir(dir: &Path, tenant: TenantId) -> Result<Vec<Checkpoint>, StoreError> {
    let tenant_dir = dir.join(tenant.to_string());
    let io = |path: &Path, e: std::io::Error| StoreError::Invalid {
        field: "checkpoint directory",
        reason: format!("{}: {e}", path.display()),
    };
    let entries = match std::fs::read_dir(&tenant_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&tenant_dir, e)),
    };
    let mut checkpoints = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io(&tenant_dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let doc: CheckpointDocument =
            serde_json::from_str(&text).map_err(|e| StoreError::Invalid {
                field: "checkpoint file",
                reason: format!("{}: {e}", path.display()),
            })?;
        checkpoints.push(Checkpoint::try_from(doc)?);
    }
    checkpoints.sort_by_key(|c| c.seq);
    Ok(checkpoints)
}

/// Checks a tenant's events, in seq order, against its checkpoints and the pinned key. Built by
/// [`CheckpointVerifier::new`] (which rejects forged checkpoints), fed every event by
/// [`crate::audit`]'s verification, finished with the last seq seen.
pub struct CheckpointVerifier {
    /// Authentic checkpoints, by `first_seq`.
    checkpoints: Vec<Checkpoint>,
    /// The next checkpoint of `checkpoints` that no event has reached yet.
    next: usize,
    /// Those reached whose range is not yet passed.
    active: Vec<usize>,
    highest_seq: i64,
}

impl CheckpointVerifier {
    /// Checks that every checkpoint is of `tenant` and signed by `key`; the first that is not is
    /// `Err((seq, reason))`, `checkpoint_signature_invalid` (forged) or `checkpoint_mismatch`
    /// (another tenant's).
    pub fn new(
        tenant: TenantId,
        mut checkpoints: Vec<Checkpoint>,
        key: &PublicKey,
    ) -> Result<Self, (i64, ChainBreak)> {
        checkpoints.sort_by_key(|c| (c.seq, c.first_seq));
        for checkpoint in &checkpoints {
            if !checkpoint.is_authentic(key) {
                return Err((checkpoint.seq, ChainBreak::CheckpointSignatureInvalid));
            }
            if checkpoint.tenant_id != tenant {
                return Err((checkpoint.seq, ChainBreak::CheckpointMismatch));
            }
        }
        let highest_seq = checkpoints.last().map_or(0, |c| c.seq);
        checkpoints.sort_by_key(|c| c.first_seq);
        Ok(Self {
            checkpoints,
            next: 0,
            active: Vec::new(),
            highest_seq,
        })
    }

    /// How many checkpoints are checked against.
    pub fn len(&self) -> usize {
        self.checkpoints.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.checkpoints.is_empty()
    }

    /// The next event (seqs ascending): `checkpoint_mismatch` when a checkpoint recorded
    /// another hash for its seq.
    pub fn check(&mut self, event: &AuditEvent) -> Option<ChainBreak> {
        while let Some(c) = self.checkpoints.get(self.next) {
            if c.first_seq > event.seq {
                break;
            }
            self.active.push(self.next);
            self.next += 1;
        }
        let checkpoints = &self.checkpoints;
        self.active.retain(|&i| checkpoints[i].seq >= event.seq);
        let mismatch = self.active.iter().any(|&i| {
            let c = &checkpoints[i];
            c.event_hashes[(event.seq - c.first_seq) as usize] != event.hash
        });
        mismatch.then_some(ChainBreak::CheckpointMismatch)
    }

    /// Whether a checkpoint ends at `seq` with `last_hash`: a chain pruned up to `seq` may start
    /// there.
    pub fn vouches_for(&self, seq: i64, last_hash: &[u8; 32]) -> bool {
        self.checkpoints
            .iter()
            .any(|c| c.seq == seq && c.last_hash == *last_hash)
    }

    /// After the last event, `last_seq`: `behind_checkpoint` at `last_seq + 1` when a checkpoint
    /// covers events that are no longer there (a truncated tail or a rewound head).
    pub fn finish(&self, last_seq: i64) -> Option<(i64, ChainBreak)> {
        (self.highest_seq > last_seq).then_some((last_seq + 1, ChainBreak::BehindCheckpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn key(seed: u8) -> CheckpointKey {
        CheckpointKey::from_seed(&[seed; 32]).unwrap()
    }

    pub(super) fn chain(tenant: TenantId, n: i64) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let mut e = AuditEvent {
                    tenant_id: tenant,
                    seq,
                    occurred_at: OffsetDateTime::from_unix_timestamp(1_700_000_000 + seq).unwrap(),
                    actor: "system".into(),
                    action: "test".into(),
                    target: format!("t:{seq}"),
                    details: "{}".into(),
                    prev_hash: prev,
                    hash: [0; 32],
                    canonical_version: 2,
                    erased_by: None,
                };
                e.hash = e.recompute_hash();
                prev = e.hash;
                e
            })
            .collect()
    }

    fn sign(key: &CheckpointKey, events: &[AuditEvent]) -> Checkpoint {
        let mut c = Checkpoint {
            tenant_id: events[0].tenant_id,
            first_seq: events[0].seq,
            seq: events.last().unwrap().seq,
            last_hash: events.last().unwrap().hash,
            event_hashes: events.iter().map(|e| e.hash).collect(),
            created_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            key_fingerprint: key.public_key().fingerprint(),
            signature: [0; 64],
        };
        c.signature = key.sign(&c.signed_bytes());
        c
    }

    #[test]
    fn signed_bytes_are_pinned() {
        let k = key(1);
        let events = chain(TenantId(Uuid::from_u128(7)), 2);
        let c = sign(&k, &events);
        let bytes = c.signed_bytes();
        assert_eq!(bytes.len(), 135);
        assert_eq!(&bytes[..31], b"fleetplane.audit.checkpoint.v1\0");
        assert_eq!(&bytes[47..55], &1i64.to_be_bytes());
        assert_eq!(&bytes[55..63], &2i64.to_be_bytes());
        assert!(c.is_authentic(&k.public_key()));
    }

    #[test]
    fn any_change_or_another_key_makes_a_forgery() {
        let (k, other) = (key(1), key(2));
        let c = sign(&k, &chain(TenantId(Uuid::from_u128(7)), 3));
        assert!(!c.is_authentic(&other.public_key()));
        let mut changed = c.clone();
        changed.seq = 4;
        assert!(!changed.is_authentic(&k.public_key()));
        let mut changed = c.clone();
        changed.event_hashes[0][0] ^= 1;
        assert!(!changed.is_authentic(&k.public_key()));
        let mut changed = c.clone();
        changed.created_at += time::Duration::microseconds(1);
        assert!(!changed.is_authentic(&k.public_key()));
        // Re-signed by another key but claiming the first key's fingerprint.
        let mut changed = sign(&other, &chain(TenantId(Uuid::from_u128(7)), 3));
        changed.key_fingerprint = k.public_key().fingerprint();
        assert!(!changed.is_authentic(&k.public_key()));
    }

    #[test]
    fn documents_round_trip_and_the_public_key_reads_back_from_pem_and_hex() {
        let k = key(3);
        let c = sign(&k, &chain(TenantId(Uuid::from_u128(9)), 2));
        let back = Checkpoint::try_from(c.to_document()).unwrap();
        assert_eq!(back, c);
        let public = k.public_key();
        assert_eq!(PublicKey::parse(&public.to_pem()).unwrap(), public);
        assert_eq!(PublicKey::parse(&hex::encode(public.0)).unwrap(), public);
        assert!(
            PublicKey::parse("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err()
        );
        assert!(PublicKey::parse("abcd").is_err());
        let mut doc = c.to_document();
        doc.signature = "00".into();
        assert!(Checkpoint::try_from(doc).is_err());
        assert!(!format!("{k:?}").contains(&hex::encode([3u8; 32])));
    }

    #[test]
    fn the_verifier_names_mismatches_and_a_tail_behind_a_checkpoint() {
        let k = key(1);
        let tenant = TenantId(Uuid::from_u128(7));
        let events = chain(tenant, 6);
        let checkpoints = vec![sign(&k, &events[..3]), sign(&k, &events[3..5])];
        let mut v = CheckpointVerifier::new(tenant, checkpoints.clone(), &k.public_key()).unwrap();
        assert!(events.iter().all(|e| v.check(e).is_none()));
        assert_eq!(v.finish(6), None);
        assert_eq!(v.finish(4), Some((5, ChainBreak::BehindCheckpoint)));
        // A rewritten (and re-chained) event 4.
        let mut rewritten = chain(tenant, 6);
        rewritten[3].details = r#"{"x":1}"#.into();
        let mut v = CheckpointVerifier::new(tenant, checkpoints.clone(), &k.public_key()).unwrap();
        let first_bad = rewritten
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.hash = e.recompute_hash();
                e
            })
            .find(|e| v.check(e).is_some())
            .map(|e| e.seq);
        assert_eq!(first_bad, Some(4));
        let forged = CheckpointVerifier::new(tenant, checkpoints.clone(), &key(2).public_key());
        assert_eq!(
            forged.err(),
            Some((3, ChainBreak::CheckpointSignatureInvalid))
        );
        let other_tenant =
            CheckpointVerifier::new(TenantId(Uuid::from_u128(8)), checkpoints, &k.public_key());
        assert_eq!(
            other_tenant.err(),
            Some((3, ChainBreak::CheckpointMismatch))
        );
    }
}
