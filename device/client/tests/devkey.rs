//! The device key sealed with a TPM ([`TpmSealedKey`]) against a software TPM (swtpm on a TCP
//! socket, started by the test) through tpm2-tools, the same code storage seals disk keys
//! with: a round trip, nothing of the key in the file, a file from another TPM and a changed
//! ciphertext each refused with an error that names the file and says to re-provision. A
//! missing tool skips, or fails under `APERTURE_REQUIRE_TOOLS=1`.

use std::path::Path;

use aperture_client::devkey::{KeyError, KeyStore, TpmSealedKey};
use aperture_storage::Tpm2;
use aperture_sys::tool::Swtpm;

const TOOLS: [&str; 5] = [
    "tpm2_createprimary",
    "tpm2_create",
    "tpm2_load",
    "tpm2_unseal",
    "tpm2_flushcontext",
];

/// A real P-256 key, as enrollment makes it.
fn key_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem()
}

fn store(dir: &Path, tpm: &Swtpm) -> TpmSealedKey {
    TpmSealedKey::new(
        dir.join("config/aperture/fleet"),
        Tpm2::new(dir.to_path_buf()).with_tcti(tpm.tcti()),
    )
}

/// The PEM's base64 body, one line.
fn body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn a_sealed_key_round_trips_and_its_file_does_not_hold_it() {
    let Some(tpm) = Swtpm::for_test(&TOOLS, "the TPM-sealed device key") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = store(dir.path(), &tpm);
    assert!(!keys.holds_key());
    assert!(matches!(keys.load(), Err(KeyError::Missing { .. })));
    let pem = key_pem();
    keys.store(&pem).unwrap();
    assert!(keys.holds_key());
    assert_eq!(keys.load().unwrap(), pem);
    // A second store seals a new wrapping key: the file changes, the key reads back.
    let before = std::fs::read(keys.path()).unwrap();
    keys.store(&pem).unwrap();
    assert_ne!(std::fs::read(keys.path()).unwrap(), before);
    assert_eq!(keys.load().unwrap(), pem);

    // Nothing of the key in the file: not the PEM, not its DER (in hex, as the file writes
    // bytes), not any 16 bytes of either; no scratch file left behind.
    let kept = std::fs::read_to_string(keys.path()).unwrap();
    let der = base64_decode(&body(&pem));
    assert!(!kept.contains("PRIVATE KEY"));
    for window in body(&pem).as_bytes().windows(16) {
        assert!(!kept.contains(std::str::from_utf8(window).unwrap()));
    }
    for window in der.windows(16) {
        assert!(!kept.contains(&hex::encode(window)));
    }
    let value: serde_json::Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(value["aead"], "AES-256-GCM");
    assert_eq!(value["sealed"]["type"], "aperture-tpm2");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["config"], "scratch files left: {left:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(keys.path()).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_file_from_another_tpm_is_refused_naming_the_file_and_the_fix() {
    let Some(tpm) = Swtpm::for_test(&TOOLS, "the TPM-sealed device key") else {
        return;
    };
    let other = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), &tpm).store(&key_pem()).unwrap();
    let moved = store(dir.path(), &other);
    let err = moved.load().unwrap_err();
    assert!(matches!(err, KeyError::Unseal { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&moved.path().display().to_string())
            && text.contains("sealed by another TPM")
            && text.contains("re-provision the device"),
        "{text}"
    );
    // The cause is tpm2_load's refusal, kept as the source.
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("tpm2_load"), "{cause}");
}

#[test]
fn a_changed_ciphertext_or_sealed_blob_is_refused() {
    let Some(tpm) = Swtpm::for_test(&TOOLS, "the TPM-sealed device key") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = store(dir.path(), &tpm);
    let pem = key_pem();
    keys.store(&pem).unwrap();
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(keys.path()).unwrap()).unwrap();
    let write = |v: &serde_json::Value| {
        std::fs::write(keys.path(), serde_json::to_vec(v).unwrap()).unwrap();
    };

    // One bit of the ciphertext flipped: the tag fails.
    let mut changed = original.clone();
    let mut ct = hex::decode(changed["ciphertext"].as_str().unwrap()).unwrap();
    ct[10] ^= 1;
    changed["ciphertext"] = hex::encode(&ct).into();
    write(&changed);
    let err = keys.load().unwrap_err();
    assert!(matches!(err, KeyError::Decrypt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("key.tpm.json") && text.contains("re-provision the device"),
        "{text}"
    );

    // The nonce changed: the same.
    let mut changed = original.clone();
    changed["nonce"] = "00".repeat(12).into();
    write(&changed);
    assert!(matches!(keys.load(), Err(KeyError::Decrypt { .. })));

    // The sealed blob's private part changed: the TPM refuses it.
    let mut changed = original.clone();
    let private = changed["sealed"]["tpm2_private"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = base64_decode(&private);
    let n = bytes.len();
    bytes[n - 5] ^= 1;
    changed["sealed"]["tpm2_private"] = base64_encode(&bytes).into();
    write(&changed);
    assert!(matches!(keys.load(), Err(KeyError::Unseal { .. })));

    // Truncated: malformed, named.
    std::fs::write(keys.path(), b"{\"format\":1,").unwrap();
    let err = keys.load().unwrap_err();
    assert!(matches!(err, KeyError::Malformed { .. }), "{err:?}");

    // And the original still reads back.
    write(&original);
    assert_eq!(keys.load().unwrap(), pem);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
