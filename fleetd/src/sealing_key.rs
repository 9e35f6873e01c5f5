//! The one key that seals secrets fleetd must store in the database: people's TOTP secrets
//! (api::people::totp) and tenants' OIDC client secrets (api::oidc). 32 random bytes in
//! `<data_dir>/sealing.key`, mode 0600, created at first start; each use derives its own key
//! from it (HKDF-SHA256 with a label of its own), so a sealed value of one kind never opens as
//! another. It is kept outside the database on purpose: a dump of the database alone reveals no
//! TOTP secret and no client secret. Losing the file makes every enrolled TOTP unusable
//! (`fleetctl user reset-mfa` re-enrols a user) and every client secret must be set again; back
//! it up with the PKI.

use std::path::Path;

use zeroize::Zeroizing;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "sealing.key";

/// The key's bytes in `data_dir`, created there if absent ([`crate::key_file::load_or_create`]).
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    crate::key_file::load_or_create(
        &data_dir.join(FILE_NAME),
        "the key that seals stored secrets",
        api::people::SealKey::new_key_bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_created_once_then_read_back_and_a_bad_file_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let first = api::people::SealKey::from_bytes(&load_or_create(&dir).unwrap());
        let secret = api::people::totp::TotpSecret::new_random().unwrap();
        let (tenant, user) = (store::TenantId::new_random(), store::UserId::new_random());
        let sealed = first.seal(&secret, tenant, user).unwrap();
        let again = api::people::SealKey::from_bytes(&load_or_create(&dir).unwrap());
        assert!(again.open(&sealed, tenant, user).is_ok());
        let path = dir.join(FILE_NAME);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let refused = load_or_create(&dir).unwrap_err();
        assert!(format!("{refused:#}").contains("chmod 600"), "{refused:#}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let refused = load_or_create(&dir).unwrap_err();
        assert!(
            format!("{refused:#}").contains("exactly 32 bytes"),
            "{refused:#}"
        );
    }
}
