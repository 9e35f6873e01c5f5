//! The PKI directory: file modes, refusing to overwrite, loading back, and keys.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crate::common::{assert_signed_by, fresh_pki, key_for, pki_dir, sign_for_random_device};
use certs::{
    IssuingCa, KeyError, Pki, PkiError, PkiLayout, PkiOrigin, PkiParams, PrivateKey, Validity,
    KEY_FILE_MODE,
};
use rcgen::PKCS_ECDSA_P384_SHA384;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Writes `contents` to a new file with `mode` (for tests that plant files).
fn plant(path: &Path, contents: &str, mode: u32) {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap();
    file.write_all(contents.as_bytes()).unwrap();
}

#[test]
fn generate_writes_keys_0600_certs_0644_and_the_directory_0700() {
    let (tmp, _pki) = fresh_pki();
    let layout = PkiLayout::in_dir(&pki_dir(&tmp));
    assert_eq!(KEY_FILE_MODE, 0o600);
    assert_eq!(mode(&layout.root_key), 0o600);
    assert_eq!(mode(&layout.issuing_key), 0o600);
    assert_eq!(mode(&layout.root_cert), 0o644);
    assert_eq!(mode(&layout.issuing_cert), 0o644);
    assert_eq!(mode(&pki_dir(&tmp)), 0o700);
}

#[test]
fn generate_uses_the_documented_file_names() {
    let layout = PkiLayout::in_dir(Path::new("/etc/fleet"));
    assert_eq!(layout.root_cert, Path::new("/etc/fleet/root-ca.pem"));
    assert_eq!(layout.root_key, Path::new("/etc/fleet/root-ca.key"));
    assert_eq!(layout.issuing_cert, Path::new("/etc/fleet/issuing-ca.pem"));
    assert_eq!(layout.issuing_key, Path::new("/etc/fleet/issuing-ca.key"));
}

#[test]
fn generate_refuses_to_overwrite_a_pki() {
    let (tmp, pki) = fresh_pki();
    let dir = pki_dir(&tmp);
    let err = Pki::generate(&dir, &PkiParams::default()).unwrap_err();
    assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
    let reloaded = Pki::load(&dir).unwrap();
    assert_eq!(reloaded.root().der(), pki.root().der());
}

#[test]
fn generate_refuses_if_any_single_file_exists_and_leaves_it_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pki_dir(&tmp);
    fs::create_dir(&dir).unwrap();
    let layout = PkiLayout::in_dir(&dir);
    plant(&layout.issuing_key, "precious", 0o600);

    let err = Pki::generate(&dir, &PkiParams::default()).unwrap_err();

    match err {
        PkiError::AlreadyExists { path } => assert_eq!(path, layout.issuing_key),
        other => panic!("unexpected {other}"),
    }
    assert_eq!(fs::read_to_string(&layout.issuing_key).unwrap(), "precious");
    assert!(!layout.root_key.exists() && !layout.root_cert.exists());
}

#[test]
fn load_after_generate_yields_the_same_certificates() {
    let (tmp, pki) = fresh_pki();
    let loaded = Pki::load(&pki_dir(&tmp)).unwrap();
    assert_eq!(loaded.root().der(), pki.root().der());
    assert_eq!(loaded.issuing_ca().der(), pki.issuing_ca().der());
    assert_eq!(loaded.issuing_ca().root_der(), pki.root().der());
    assert_eq!(
        loaded.issuing_ca().not_after(),
        pki.issuing_ca().not_after()
    );
}

#[test]
fn a_loaded_issuing_ca_signs_certificates_that_chain_to_the_original_root() {
    let (tmp, pki) = fresh_pki();
    let loaded = IssuingCa::load(&pki_dir(&tmp)).unwrap();
    let cert = sign_for_random_device(
        &loaded,
        Validity::from_now(Duration::from_secs(3600)).unwrap(),
    );
    assert_signed_by(cert.der(), pki.issuing_ca().der());
    // The authority key id of the new leaf is the subject key id of the issuing CA.
    let leaf = crate::common::parse(cert.der());
    let ca = crate::common::parse(pki.issuing_ca().der());
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.clone()
            }
            _ => None,
        })
        .unwrap();
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki.0, ski.0);
}

#[test]
fn a_rebuilt_root_signs_issuing_cas_that_chain_to_it() {
    let (tmp, pki) = fresh_pki();
    let loaded = Pki::load(&pki_dir(&tmp)).unwrap();
    let rotated = loaded
        .root()
        .issue_issuing_ca(&PkiParams::default())
        .unwrap();
    assert_signed_by(rotated.der(), pki.root().der());
    assert_ne!(rotated.der(), pki.issuing_ca().der());
}

#[test]
fn the_online_issuing_ca_loads_without_the_root_key() {
    let (tmp, pki) = fresh_pki();
    let dir = pki_dir(&tmp);
    fs::remove_file(PkiLayout::in_dir(&dir).root_key).unwrap();

    let ca = IssuingCa::load(&dir).unwrap();
    assert_eq!(ca.der(), pki.issuing_ca().der());
    assert!(matches!(Pki::load(&dir), Err(PkiError::Missing { .. })));
    let (ca, origin) = Pki::load_or_generate_dev(&dir).unwrap();
    assert_eq!(origin, PkiOrigin::Loaded);
    assert_eq!(ca.der(), pki.issuing_ca().der());
}

#[test]
fn load_or_generate_dev_generates_once_then_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pki_dir(&tmp);
    let (first, origin) = Pki::load_or_generate_dev(&dir).unwrap();
    assert_eq!(origin, PkiOrigin::Generated);
    let (second, origin) = Pki::load_or_generate_dev(&dir).unwrap();
    assert_eq!(origin, PkiOrigin::Loaded);
    assert_eq!(first.der(), second.der());
    assert_eq!(first.root_der(), second.root_der());
}

#[test]
fn load_or_generate_dev_refuses_an_incomplete_pki() {
    let (tmp, _pki) = fresh_pki();
    let dir = pki_dir(&tmp);
    let layout = PkiLayout::in_dir(&dir);
    fs::remove_file(&layout.issuing_key).unwrap();
    match Pki::load_or_generate_dev(&dir) {
        Err(PkiError::Incomplete { missing }) => assert_eq!(missing, layout.issuing_key),
        other => panic!("unexpected {other:?}"),
    }
    assert!(layout.root_key.exists(), "nothing was overwritten");
}

#[test]
fn load_refuses_a_key_readable_by_group_or_others() {
    let (tmp, _pki) = fresh_pki();
    let dir = pki_dir(&tmp);
    let key = PkiLayout::in_dir(&dir).issuing_key;
    for loose in [0o640, 0o604, 0o644] {
        fs::set_permissions(&key, fs::Permissions::from_mode(loose)).unwrap();
        match IssuingCa::load(&dir) {
            Err(PkiError::InsecureKeyPermissions { path, mode }) => {
                assert_eq!((path, mode), (key.clone(), loose));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(IssuingCa::load(&dir).is_ok(), "owner read-only is fine");
}

#[test]
fn load_refuses_a_key_that_belongs_to_another_certificate() {
    let (tmp, _pki) = fresh_pki();
    let layout = PkiLayout::in_dir(&pki_dir(&tmp));
    let root_key = fs::read_to_string(&layout.root_key).unwrap();
    fs::remove_file(&layout.issuing_key).unwrap();
    plant(&layout.issuing_key, &root_key, 0o600);
    match IssuingCa::load(&pki_dir(&tmp)) {
        Err(PkiError::KeyMismatch { path }) => assert_eq!(path, layout.issuing_key),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn load_refuses_an_issuing_ca_from_another_root() {
    let (tmp, _pki) = fresh_pki();
    let (other_tmp, _other) = fresh_pki();
    let layout = PkiLayout::in_dir(&pki_dir(&tmp));
    fs::copy(
        PkiLayout::in_dir(&pki_dir(&other_tmp)).root_cert,
        &layout.root_cert,
    )
    .unwrap();
    assert!(matches!(
        IssuingCa::load(&pki_dir(&tmp)),
        Err(PkiError::NotSignedBy { .. })
    ));
}

#[test]
fn load_refuses_a_certificate_file_that_is_not_a_certificate() {
    let (tmp, _pki) = fresh_pki();
    let layout = PkiLayout::in_dir(&pki_dir(&tmp));
    fs::write(&layout.issuing_cert, "not pem").unwrap();
    assert!(matches!(
        IssuingCa::load(&pki_dir(&tmp)),
        Err(PkiError::MalformedCertificate { .. })
    ));
}

#[test]
fn load_of_an_empty_directory_names_the_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    match Pki::load(tmp.path()) {
        Err(PkiError::Missing { path }) => assert_eq!(path, tmp.path().join("root-ca.pem")),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn private_key_debug_is_redacted() {
    let key = PrivateKey::generate().unwrap();
    assert_eq!(format!("{key:?}"), "PrivateKey(<redacted>)");
    assert_eq!(format!("{key:#?}"), "PrivateKey(<redacted>)");
}

#[test]
fn nothing_that_holds_a_key_prints_it() {
    let (tmp, pki) = fresh_pki();
    let layout = PkiLayout::in_dir(&pki_dir(&tmp));
    let server = pki
        .issuing_ca()
        .issue_server_cert(&certs::ServerCertParams::new(
            vec!["localhost".into()],
            vec![],
        ))
        .unwrap();
    let secrets = [
        pem_body(&fs::read_to_string(&layout.root_key).unwrap()),
        pem_body(&fs::read_to_string(&layout.issuing_key).unwrap()),
        pem_body(&server.key().to_pkcs8_pem()),
    ];

    let printed = format!("{pki:?} {pki:#?} {server:?} {server:#?}");

    for secret in secrets {
        // Any 16 consecutive base64 characters of a key would be a leak.
        for chunk in secret.as_bytes().chunks_exact(16) {
            assert!(!printed.contains(std::str::from_utf8(chunk).unwrap()));
        }
    }
    assert!(printed.contains("<redacted>"));
}

/// The base64 body of a PEM text, on one line.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn key_file_round_trips_at_mode_0600_and_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("device.key");
    let key = PrivateKey::generate().unwrap();
    key.write_new_file(&path).unwrap();
    assert_eq!(mode(&path), 0o600);

    let loaded = PrivateKey::load_file(&path).unwrap();
    assert_eq!(loaded.public_key_spki_der(), key.public_key_spki_der());
    assert_eq!(*loaded.to_pkcs8_pem(), *key.to_pkcs8_pem());
    assert_eq!(
        loaded.to_pkcs8_der().secret_pkcs8_der(),
        key.to_pkcs8_der().secret_pkcs8_der()
    );

    let other = PrivateKey::generate().unwrap();
    assert!(matches!(
        other.write_new_file(&path),
        Err(PkiError::AlreadyExists { .. })
    ));
    assert_eq!(
        PrivateKey::load_file(&path).unwrap().public_key_spki_der(),
        key.public_key_spki_der()
    );
}

#[test]
fn key_file_with_another_algorithm_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("p384.key");
    plant(
        &path,
        &key_for(&PKCS_ECDSA_P384_SHA384).serialize_pem(),
        0o600,
    );
    match PrivateKey::load_file(&path) {
        Err(PkiError::Key { source, .. }) => assert_eq!(source, KeyError::NotP256),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn key_file_with_garbage_is_refused_without_quoting_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("garbage.key");
    plant(
        &path,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        0o600,
    );
    let err = PrivateKey::load_file(&path).unwrap_err();
    assert!(matches!(
        err,
        PkiError::Key {
            source: KeyError::Malformed,
            ..
        }
    ));
    assert!(!format!("{err} {err:?}").contains("c2VjcmV0"));
}

#[test]
fn a_group_writable_pki_directory_is_refused_naming_it() {
    let (tmp, _pki) = fresh_pki();
    let dir = pki_dir(&tmp);
    for loose in [0o770, 0o702] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(loose)).unwrap();
        for result in [IssuingCa::load(&dir).err(), Pki::load(&dir).err()] {
            match result {
                Some(err @ PkiError::UntrustedPath { .. }) => {
                    let message = err.to_string();
                    assert!(message.starts_with(&dir.display().to_string()), "{message}");
                    assert!(message.contains(&format!("mode {loose:o}")), "{message}");
                    assert!(
                        message.contains("not writable by group or others"),
                        "{message}"
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
    assert!(IssuingCa::load(&dir).is_ok(), "readable by group is fine");

    let empty = tempfile::tempdir().unwrap();
    fs::set_permissions(empty.path(), fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        Pki::load_or_generate_dev(empty.path()),
        Err(PkiError::UntrustedPath { path, .. }) if path == empty.path()
    ));
    assert!(
        !PkiLayout::in_dir(empty.path()).root_key.exists(),
        "no key was written into it"
    );
}

#[test]
fn a_group_writable_pki_file_is_refused_naming_it() {
    let (tmp, _pki) = fresh_pki();
    let layout = PkiLayout::in_dir(&pki_dir(&tmp));
    fs::set_permissions(&layout.root_cert, fs::Permissions::from_mode(0o664)).unwrap();
    match IssuingCa::load(&pki_dir(&tmp)) {
        Err(PkiError::UntrustedPath { path, .. }) => assert_eq!(path, layout.root_cert),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_pki_file_owned_by_another_user_is_refused_naming_it() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: handing a file to another user needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .map_or(65534, |user| user.uid.as_raw());
    let (tmp, _pki) = fresh_pki();
    let dir = pki_dir(&tmp);
    let layout = PkiLayout::in_dir(&dir);
    for file in [&layout.issuing_cert, &layout.issuing_key, &layout.root_cert] {
        std::os::unix::fs::chown(file, Some(nobody), None).unwrap();
        match IssuingCa::load(&dir) {
            Err(err @ PkiError::UntrustedPath { .. }) => {
                let message = err.to_string();
                assert!(
                    message.starts_with(&file.display().to_string()),
                    "{message}"
                );
                assert!(
                    message.contains(&format!("owned by uid {nobody}")),
                    "{message}"
                );
                assert!(message.contains("required: owned by uid 0"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        std::os::unix::fs::chown(file, Some(0), None).unwrap();
    }
    std::os::unix::fs::chown(&dir, Some(nobody), None).unwrap();
    assert!(matches!(
        IssuingCa::load(&dir),
        Err(PkiError::UntrustedPath { path, .. }) if path == dir
    ));
}
