//! The encrypted file: key, framing, and the streaming writer and reader.
//!
//! ```text
//! preamble  (55 bytes, clear, bound into every record's AAD)
//!   magic "FLEETBAK" (8) | format version u16 BE (= 1) |
//!   key source u8 (1 = key file, 2 = passphrase) | salt (32 random bytes, per file) |
//!   argon2id memory KiB u32 BE | iterations u32 BE | parallelism u32 BE (zeros for a key file)
//! master key: the key file's 32 bytes, or argon2id(passphrase, salt, the parameters above)
//! key check (32 bytes, clear): HKDF-SHA256(salt, master key, "fleetplane backup v1 key check")
//! records, each:
//!   kind u8 (0 header, 1 data, 2 trailer) | length u32 BE of the ciphertext | ciphertext+tag
//!   ChaCha20-Poly1305, key HKDF-SHA256(salt, master key, "fleetplane backup v1 chacha20-poly1305"),
//!   nonce 4 zero bytes | record number u64 BE (0, 1, 2, ... in file order),
//!   AAD preamble | kind | record number u64 BE
//! ```
//!
//! Record 0 is the header (JSON), then data records (the dump, at most [`CHUNK`] bytes of plain
//! text each), then exactly one trailer (JSON: the dump's SHA-256 and length), which must be the
//! last thing in the file. The record number in the nonce and the AAD refuses reordered, dropped
//! or replayed records; the trailer's kind (authenticated) refuses a file cut at a record
//! boundary; the key check tells a wrong key apart from an altered file.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use super::BackupError;

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"FLEETBAK";
/// The version of this framing.
pub const FORMAT_VERSION: u16 = 1;
/// Plain text bytes per data record: memory stays at a few of these whatever the dump's size.
pub const CHUNK: usize = 64 * 1024;
const KEY_SOURCE_FILE: u8 = 1;
const KEY_SOURCE_PASSPHRASE: u8 = 2;
const PREAMBLE_LEN: usize = 8 + 2 + 1 + 32 + 12;
/// argon2id for a passphrase: 64 MiB, 3 passes, one lane (above OWASP's minimum for argon2id).
const ARGON2_DEFAULT: Argon2Params = Argon2Params {
    memory_kib: 64 * 1024,
    iterations: 3,
    parallelism: 1,
};
/// The most a file may ask of the reader: an altered preamble must not exhaust memory or time.
const ARGON2_MAX_MEMORY_KIB: u32 = 1024 * 1024;
const ARGON2_MAX_ITERATIONS: u32 = 64;
const ARGON2_MAX_PARALLELISM: u32 = 16;

/// argon2id's cost parameters, as recorded in the preamble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

/// A passphrase for backups. No `Debug`; wiped when dropped.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase; refuses one shorter than 12 characters.
    pub fn new(text: Zeroizing<String>) -> Result<Self, &'static str> {
        if text.chars().count() < 12 {
            return Err("a backup passphrase must have at least 12 characters");
        }
        Ok(Self(text))
    }

    fn master_key(&self, salt: &[u8; 32], params: Argon2Params) -> Result<BackupKey, BackupError> {
        if params.memory_kib > ARGON2_MAX_MEMORY_KIB
            || params.iterations > ARGON2_MAX_ITERATIONS
            || params.parallelism > ARGON2_MAX_PARALLELISM
        {
            return Err(BackupError::Invalid(
                "passphrase parameters (beyond this build's limits)",
            ));
        }
        let argon2_params = argon2::Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(32),
        )
        .map_err(|_| BackupError::Invalid("passphrase parameters"))?;
        let argon2 = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2_params,
        );
        let mut bytes = Zeroizing::new([0u8; 32]);
        argon2
            .hash_password_into(self.0.as_bytes(), salt, bytes.as_mut())
            .map_err(|_| BackupError::Invalid("passphrase parameters"))?;
        Ok(BackupKey(bytes))
    }
}

/// What opens a backup: a key file's key, or a passphrase.
pub enum BackupSecret {
    /// A key file's key.
    Key(BackupKey),
    /// A passphrase, stretched with argon2id.
    Passphrase(Passphrase),
}

impl BackupSecret {
    fn source(&self) -> u8 {
        match self {
            BackupSecret::Key(_) => KEY_SOURCE_FILE,
            BackupSecret::Passphrase(_) => KEY_SOURCE_PASSPHRASE,
        }
    }

    /// The master key for a file with this salt and these parameters.
    fn master_key(&self, salt: &[u8; 32], params: Argon2Params) -> Result<BackupKey, BackupError> {
        match self {
            BackupSecret::Key(key) => Ok(BackupKey(key.0.clone())),
            BackupSecret::Passphrase(passphrase) => passphrase.master_key(salt, params),
        }
    }
}
const TAG_LEN: usize = 16;
/// The header and trailer are small JSON; a larger length is an altered file, not a reason to
/// allocate.
const MAX_RECORD: usize = CHUNK + TAG_LEN;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Header = 0,
    Data = 1,
    Trailer = 2,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Header),
            1 => Some(Self::Data),
            2 => Some(Self::Trailer),
            _ => None,
        }
    }
}

/// The master key of a key file: 32 random bytes. No `Debug`; wiped when dropped.
pub struct BackupKey(Zeroizing<[u8; 32]>);

/// The first line of a key file.
const KEY_FILE_LINE: &str = "fleetplane-backup-key-v1";

impl BackupKey {
    /// A new random key.
    pub fn generate() -> Result<Self, BackupError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| BackupError::Random)?;
        Ok(Self(bytes))
    }

    /// The key file's text: a format line, then the key in hex.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{KEY_FILE_LINE}\n{}\n",
            hex::encode(self.0.as_ref())
        ))
    }

    /// Parses a key file's text.
    pub fn from_file_text(text: &str) -> Result<Self, &'static str> {
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_LINE) {
            return Err("not a fleetplane backup key file (its first line must be fleetplane-backup-key-v1)");
        }
        let hex_key = Zeroizing::new(lines.next().unwrap_or("").trim().to_owned());
        if lines.any(|l| !l.trim().is_empty()) {
            return Err("unexpected lines after the key");
        }
        Self::from_hex(&hex_key)
    }

    /// The key from its 64 hex digits (the second line of a key file).
    pub fn from_hex(hex_key: &str) -> Result<Self, &'static str> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_key.as_bytes(), bytes.as_mut())
            .map_err(|_| "the key must be 64 hex digits")?;
        Ok(Self(bytes))
    }

    /// Reads a key file, refusing one that group or others may read or write.
    pub fn load(path: &std::path::Path) -> Result<Self, BackupError> {
        let text = read_secret_file(path)?;
        Self::from_file_text(&text).map_err(|reason| BackupError::KeyFile {
            path: path.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// Writes a new random key to `path` (mode 0600), which must not exist.
    pub fn write_new(path: &std::path::Path) -> Result<(), BackupError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = Self::generate()?;
        let key_file = |e: std::io::Error| BackupError::KeyFile {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(key_file)?;
        let written = file
            .write_all(key.to_file_text().as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(key_file(e));
        }
        Ok(())
    }

    fn derive(&self, salt: &[u8; 32], label: &'static [u8]) -> Zeroizing<[u8; 32]> {
        struct Len32;
        impl hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(self.0.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[label], Len32)
            .and_then(|okm| okm.fill(out.as_mut()))
            .expect("32 bytes is a valid HKDF-SHA256 length");
        out
    }
}

/// The text of a file holding a secret (a key, a passphrase): at most 4 KiB, and refused when
/// group or others may read or write it.
pub fn read_secret_file(path: &std::path::Path) -> Result<Zeroizing<String>, BackupError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let key_file = |reason: String| BackupError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| key_file(e.to_string()))?;
    let mode = file
        .metadata()
        .map_err(|e| key_file(e.to_string()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(key_file(format!(
            "has mode {mode:o}; it holds a secret: chmod 600"
        )));
    }
    let mut text = Zeroizing::new(String::new());
    file.by_ref()
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| key_file(e.to_string()))?;
    Ok(text)
}

/// The per-file key material.
struct FileKeys {
    aead: LessSafeKey,
    check: Zeroizing<[u8; 32]>,
}

fn file_keys(key: &BackupKey, salt: &[u8; 32]) -> FileKeys {
    let aead_key = key.derive(salt, b"fleetplane backup v1 chacha20-poly1305");
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, aead_key.as_ref())
        .expect("32 bytes is a ChaCha20-Poly1305 key");
    FileKeys {
        aead: LessSafeKey::new(unbound),
        check: key.derive(salt, b"fleetplane backup v1 key check"),
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn aad(preamble: &[u8; PREAMBLE_LEN], kind: RecordKind, counter: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(PREAMBLE_LEN + 9);
    aad.extend_from_slice(preamble);
    aad.push(kind as u8);
    aad.extend_from_slice(&counter.to_be_bytes());
    aad
}

/// Writes a backup file's records to `out`.
pub struct Writer<W> {
    out: W,
    preamble: [u8; PREAMBLE_LEN],
    keys: FileKeys,
    counter: u64,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes the preamble and key check, with a fresh random salt.
    pub async fn start(mut out: W, secret: &BackupSecret) -> Result<Self, BackupError> {
        let mut salt = [0u8; 32];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| BackupError::Random)?;
        let params = match secret {
            BackupSecret::Key(_) => Argon2Params {
                memory_kib: 0,
                iterations: 0,
                parallelism: 0,
            },
            BackupSecret::Passphrase(_) => ARGON2_DEFAULT,
        };
        let mut preamble = [0u8; PREAMBLE_LEN];
        preamble[..8].copy_from_slice(MAGIC);
        preamble[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        preamble[10] = secret.source();
        preamble[11..43].copy_from_slice(&salt);
        preamble[43..47].copy_from_slice(&params.memory_kib.to_be_bytes());
        preamble[47..51].copy_from_slice(&params.iterations.to_be_bytes());
        preamble[51..55].copy_from_slice(&params.parallelism.to_be_bytes());
        let keys = file_keys(&secret.master_key(&salt, params)?, &salt);
        out.write_all(&preamble).await.map_err(write_error)?;
        out.write_all(keys.check.as_ref())
            .await
            .map_err(write_error)?;
        Ok(Self {
            out,
            preamble,
            keys,
            counter: 0,
        })
    }

    /// Encrypts and writes one record.
    pub async fn record(&mut self, kind: RecordKind, plain: &[u8]) -> Result<(), BackupError> {
        debug_assert!(plain.len() <= CHUNK);
        let mut buffer = Vec::with_capacity(plain.len() + TAG_LEN);
        buffer.extend_from_slice(plain);
        let aad = aad(&self.preamble, kind, self.counter);
        self.keys
            .aead
            .seal_in_place_append_tag(nonce(self.counter), Aad::from(aad), &mut buffer)
            .map_err(|_| BackupError::Random)?;
        self.counter += 1;
        let mut head = [0u8; 5];
        head[0] = kind as u8;
        head[1..].copy_from_slice(&(buffer.len() as u32).to_be_bytes());
        self.out.write_all(&head).await.map_err(write_error)?;
        self.out.write_all(&buffer).await.map_err(write_error)
    }

    /// Flushes and returns the output.
    pub async fn finish(mut self) -> Result<W, BackupError> {
        self.out.flush().await.map_err(write_error)?;
        Ok(self.out)
    }
}

fn write_error(e: std::io::Error) -> BackupError {
    BackupError::Io {
        context: "writing the backup".into(),
        source: e,
    }
}

/// Reads and authenticates a backup file's records, one at a time.
pub struct Reader<R> {
    input: R,
    preamble: [u8; PREAMBLE_LEN],
    keys: FileKeys,
    counter: u64,
    ended: bool,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads the preamble and checks the key against the file's key check.
    pub async fn start(mut input: R, secret: &BackupSecret) -> Result<Self, BackupError> {
        let mut preamble = [0u8; PREAMBLE_LEN];
        read_exact_or(&mut input, &mut preamble[..8], BackupError::NotABackup).await?;
        if &preamble[..8] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        read_exact_or(&mut input, &mut preamble[8..], BackupError::Truncated).await?;
        let version = u16::from_be_bytes([preamble[8], preamble[9]]);
        let source = preamble[10];
        if version != FORMAT_VERSION || ![KEY_SOURCE_FILE, KEY_SOURCE_PASSPHRASE].contains(&source)
        {
            return Err(BackupError::UnsupportedFormat {
                version,
                key_source: source,
            });
        }
        if source != secret.source() {
            return Err(BackupError::OtherKeySource {
                made_with: if source == KEY_SOURCE_FILE {
                    "a key file"
                } else {
                    "a passphrase"
                },
            });
        }
        let salt: [u8; 32] = preamble[11..43].try_into().expect("32 bytes");
        let word =
            |at: usize| u32::from_be_bytes(preamble[at..at + 4].try_into().expect("4 bytes"));
        let params = Argon2Params {
            memory_kib: word(43),
            iterations: word(47),
            parallelism: word(51),
        };
        let keys = file_keys(&secret.master_key(&salt, params)?, &salt);
        let mut check = [0u8; 32];
        read_exact_or(&mut input, &mut check, BackupError::Truncated).await?;
        if !bool::from(check.ct_eq(keys.check.as_ref())) {
            return Err(BackupError::WrongKey);
        }
        Ok(Self {
            input,
            preamble,
            keys,
            counter: 0,
            ended: false,
        })
    }

    /// The next record, authenticated: `None` after the trailer, which must end the file. A file
    /// that ends before its trailer is [`BackupError::Truncated`]; a record that fails
    /// authentication, or bytes after the trailer, [`BackupError::Altered`].
    pub async fn next(&mut self) -> Result<Option<(RecordKind, Vec<u8>)>, BackupError> {
        if self.ended {
            let mut probe = [0u8; 1];
            return match self.input.read(&mut probe).await.map_err(read_error)? {
                0 => Ok(None),
                _ => Err(BackupError::Altered {
                    record: self.counter,
                }),
            };
        }
        let mut head = [0u8; 5];
        read_exact_or(&mut self.input, &mut head, BackupError::Truncated).await?;
        let altered = BackupError::Altered {
            record: self.counter,
        };
        let kind = RecordKind::from_byte(head[0]).ok_or(altered)?;
        let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        if !(TAG_LEN..=MAX_RECORD).contains(&len) {
            return Err(BackupError::Altered {
                record: self.counter,
            });
        }
        let mut buffer = vec![0u8; len];
        read_exact_or(&mut self.input, &mut buffer, BackupError::Truncated).await?;
        let aad = aad(&self.preamble, kind, self.counter);
        let plain_len = self
            .keys
            .aead
            .open_in_place(nonce(self.counter), Aad::from(aad), &mut buffer)
            .map_err(|_| BackupError::Altered {
                record: self.counter,
            })?
            .len();
        buffer.truncate(plain_len);
        let expected_first = self.counter == 0;
        if expected_first != (kind == RecordKind::Header) {
            return Err(BackupError::Altered {
                record: self.counter,
            });
        }
        self.counter += 1;
        self.ended = kind == RecordKind::Trailer;
        Ok(Some((kind, buffer)))
    }
}

async fn read_exact_or<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut [u8],
    short: BackupError,
) -> Result<(), BackupError> {
    match input.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(short),
        Err(e) => Err(read_error(e)),
    }
}

fn read_error(e: std::io::Error) -> BackupError {
    BackupError::Io {
        context: "reading the backup".into(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_secret() -> BackupSecret {
        BackupSecret::Key(BackupKey::generate().unwrap())
    }

    async fn sealed(key: &BackupSecret, data: &[&[u8]]) -> Vec<u8> {
        let mut writer = Writer::start(Vec::new(), key).await.unwrap();
        writer.record(RecordKind::Header, b"{}").await.unwrap();
        for chunk in data {
            writer.record(RecordKind::Data, chunk).await.unwrap();
        }
        writer.record(RecordKind::Trailer, b"{}").await.unwrap();
        writer.finish().await.unwrap()
    }

    async fn read_all(bytes: &[u8], key: &BackupSecret) -> Result<Vec<Vec<u8>>, BackupError> {
        let mut reader = Reader::start(bytes, key).await?;
        let mut out = Vec::new();
        while let Some((_, plain)) = reader.next().await? {
            out.push(plain);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn records_round_trip_and_every_damage_is_refused() {
        let key = key_secret();
        let file = sealed(&key, &[b"one", b"two"]).await;
        let records = read_all(&file, &key).await.unwrap();
        assert_eq!(
            records,
            vec![
                b"{}".to_vec(),
                b"one".to_vec(),
                b"two".to_vec(),
                b"{}".to_vec()
            ]
        );

        let other = key_secret();
        assert!(matches!(
            read_all(&file, &other).await,
            Err(BackupError::WrongKey)
        ));

        for cut in [10, PREAMBLE_LEN + 32 + 3, file.len() - 1, file.len() - 21] {
            let err = read_all(&file[..cut], &key).await.unwrap_err();
            assert!(matches!(err, BackupError::Truncated), "cut at {cut}: {err}");
        }
        // Cut exactly before the trailer record: every record read authenticates, none is final.
        let trailer_len = 5 + 2 + TAG_LEN;
        let err = read_all(&file[..file.len() - trailer_len], &key)
            .await
            .unwrap_err();
        assert!(matches!(err, BackupError::Truncated), "{err}");

        for at in [PREAMBLE_LEN + 32, PREAMBLE_LEN + 32 + 5, file.len() - 1] {
            let mut flipped = file.clone();
            flipped[at] ^= 0x01;
            let err = read_all(&flipped, &key).await.unwrap_err();
            assert!(
                matches!(err, BackupError::Altered { .. }),
                "flip at {at}: {err}"
            );
        }
        // A flipped salt changes the derived key: refused as the wrong key, before any record.
        let mut salted = file.clone();
        salted[20] ^= 0x01;
        assert!(matches!(
            read_all(&salted, &key).await,
            Err(BackupError::WrongKey)
        ));

        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            read_all(&longer, &key).await,
            Err(BackupError::Altered { .. })
        ));
        assert!(matches!(
            read_all(b"PGDMP....", &key).await,
            Err(BackupError::NotABackup)
        ));
        let mut future = file.clone();
        future[9] = 2;
        let err = read_all(&future, &key).await.unwrap_err();
        assert!(
            matches!(err, BackupError::UnsupportedFormat { version: 2, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn records_cannot_be_reordered_or_dropped() {
        let key = key_secret();
        let file = sealed(&key, &[b"aaaa", b"bbbb"]).await;
        let start = PREAMBLE_LEN + 32;
        let header = 5 + 2 + TAG_LEN;
        let data = 5 + 4 + TAG_LEN;
        let (first, second) = (start + header, start + header + data);
        let mut swapped = file[..first].to_vec();
        swapped.extend_from_slice(&file[second..second + data]);
        swapped.extend_from_slice(&file[first..second]);
        swapped.extend_from_slice(&file[second + data..]);
        assert!(matches!(
            read_all(&swapped, &key).await,
            Err(BackupError::Altered { record: 1 })
        ));
        let mut dropped = file[..first].to_vec();
        dropped.extend_from_slice(&file[second..]);
        assert!(matches!(
            read_all(&dropped, &key).await,
            Err(BackupError::Altered { record: 1 })
        ));
    }

    fn passphrase(text: &str) -> BackupSecret {
        BackupSecret::Passphrase(Passphrase::new(Zeroizing::new(text.to_owned())).unwrap())
    }

    #[tokio::test]
    async fn a_passphrase_opens_its_backup_through_argon2id_and_nothing_else_does() {
        let secret = passphrase("correct horse battery staple");
        let file = sealed(&secret, &[b"rows"]).await;
        assert_eq!(file[10], KEY_SOURCE_PASSPHRASE);
        assert_eq!(
            u32::from_be_bytes(file[43..47].try_into().unwrap()),
            ARGON2_DEFAULT.memory_kib,
            "the parameters are recorded"
        );
        let records = read_all(&file, &secret).await.unwrap();
        assert_eq!(records[1], b"rows");
        let wrong = passphrase("correct horse battery stable");
        assert!(matches!(
            read_all(&file, &wrong).await,
            Err(BackupError::WrongKey)
        ));
        let other = read_all(&file, &key_secret()).await.unwrap_err();
        assert!(
            other.to_string().contains("made with a passphrase"),
            "{other}"
        );
        // Parameters beyond the limits are refused before any work.
        let mut greedy = file.clone();
        greedy[43..47].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_all(&greedy, &secret).await,
            Err(BackupError::Invalid(_))
        ));
        assert!(Passphrase::new(Zeroizing::new("short".into())).is_err());
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_are_refused() {
        let key = BackupKey::generate().unwrap();
        let text = key.to_file_text();
        let again = BackupKey::from_file_text(&text).unwrap();
        assert_eq!(again.0.as_ref(), key.0.as_ref());
        assert!(BackupKey::from_file_text("00").is_err());
        assert!(BackupKey::from_file_text("fleetplane-backup-key-v1\nzz\n").is_err());
        assert!(BackupKey::from_file_text(&format!("{}extra\n", text.as_str())).is_err());
    }

    #[test]
    fn key_files_are_written_0600_never_overwritten_and_loose_ones_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.key");
        BackupKey::write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        BackupKey::load(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            BackupKey::write_new(&path),
            Err(BackupError::KeyFile { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before, "not overwritten");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = BackupKey::load(&path).err().unwrap();
        assert!(err.to_string().contains("mode 644"), "{err}");
        let missing = BackupKey::load(&dir.path().join("none")).err().unwrap();
        assert!(matches!(missing, BackupError::KeyFile { .. }), "{missing}");
    }
}
