//! `keys generate`: a root key, a release key, and the keyring in which the root certifies it.
//! `keys revoke`: a new keyring without a release key (leaked, or retired), its sequence one
//! higher, signed by the root key; optionally with a new release key in its place.

use std::path::Path;

use anyhow::{Context, Result};
use aperture_image::keys;
use aperture_trust::keys::{KeyId, KeyringEntry, SignedKeyring, SigningKeyPair};

use crate::args::{KeysCommand, KeysGenerateArgs, KeysRevokeArgs};

/// Run `keys ...`.
pub fn run(c: &KeysCommand) -> Result<()> {
    match c {
        KeysCommand::Generate(a) => generate(a),
        KeysCommand::Revoke(a) => revoke(a),
    }
}

fn generate(a: &KeysGenerateArgs) -> Result<()> {
    if a.secure_boot_only {
        let development = a.out.join(keys::DEVELOPMENT_MARKER).exists();
        aperture_image::sbkeys::generate(&a.out, a.valid_days.max(3650), a.force, development)?;
        print_secure_boot(&a.out);
        return Ok(());
    }
    keys::generate(&a.out, a.valid_days, a.force, false)?;
    let k = keys::load(&a.out)?;
    eprintln!("made keys in {}:", a.out.display());
    eprintln!(
        "  {}  root public key {} (bake into images; keep {} offline)",
        keys::ROOT_PUBLIC,
        k.root.key_id(),
        keys::ROOT_SECRET
    );
    eprintln!(
        "  {}  release key {}, valid {} days",
        keys::RELEASE_SECRET,
        k.release.key_id(),
        a.valid_days
    );
    eprintln!(
        "  {}  the root's certificate of the release key",
        keys::KEYRING
    );
    print_secure_boot(&a.out);
    eprintln!(
        "point a recipe at them with:  [keys] dir = \"{}\"",
        a.out.display()
    );
    Ok(())
}

fn print_secure_boot(dir: &Path) {
    eprintln!(
        "  {}/{}/  Secure Boot PK, KEK and db (RSA-2048 certificates and keys: enroll the .crt \
         files in the appliance's firmware; db signs every boot file), and the TPM policy key \
         ({}.key; keep the .key files offline)",
        dir.display(),
        aperture_image::sbkeys::DIR,
        aperture_image::sbkeys::POLICY
    );
}

fn revoke(a: &KeysRevokeArgs) -> Result<()> {
    let next = revoke_in(&a.dir, &a.key_id, a.replace, a.valid_days)?;
    let ring = &next.keyring;
    eprintln!(
        "{}: keyring {} without release key {}, signed by the root key",
        a.dir.join(keys::KEYRING).display(),
        ring.sequence,
        a.key_id
    );
    for k in &ring.keys {
        eprintln!("  lists {} ({})", k.key_id, k.name);
    }
    eprintln!(
        "ship a bundle signed under it: once an appliance commits an image installed from such a \
         bundle, it refuses every bundle signed under an older keyring"
    );
    Ok(())
}

/// Revoke `key_id` in the keys folder `dir`; returns the new keyring, already written.
fn revoke_in(dir: &Path, key_id: &str, replace: bool, valid_days: u64) -> Result<SignedKeyring> {
    let key_id: KeyId = key_id.parse()?;
    let root_path = dir.join(keys::ROOT_SECRET);
    let root = SigningKeyPair::load(&root_path).with_context(|| {
        format!(
            "the root's secret key {} signs the new keyring; run keys revoke where it is kept",
            root_path.display()
        )
    })?;
    let ring_path = dir.join(keys::KEYRING);
    let text = std::fs::read(&ring_path)
        .with_context(|| format!("reading the keyring {}", ring_path.display()))?;
    let current: SignedKeyring = serde_json::from_slice(&text)
        .with_context(|| format!("parsing the keyring {}", ring_path.display()))?;
    let release_path = dir.join(keys::RELEASE_SECRET);
    let new_release = if replace {
        let key = SigningKeyPair::generate()?;
        let not_after = aperture_trust::now_unix() + valid_days * 86_400;
        let name = format!("release-{}", key.key_id());
        Some((KeyringEntry::new(key.public(), name, not_after), key))
    } else {
        None
    };
    let next = current
        .revoke(&root, &key_id, new_release.as_ref().map(|(e, _)| e.clone()))
        .with_context(|| format!("revoking {key_id} in {}", ring_path.display()))?;
    if let Some((_, key)) = &new_release {
        if release_path.exists() {
            let old = SigningKeyPair::load(&release_path)?;
            let kept = dir.join(format!("{}.{}.old", keys::RELEASE_SECRET, old.key_id()));
            std::fs::rename(&release_path, &kept)
                .with_context(|| format!("keeping {}", kept.display()))?;
        }
        key.save(&release_path)?;
    } else if let Ok(release) = SigningKeyPair::load(&release_path) {
        if release.key_id() == key_id {
            eprintln!(
                "warning: {} is the revoked key: builds cannot sign with this folder until it \
                 holds a listed release key (keys revoke --replace makes one)",
                release_path.display()
            );
        }
    }
    let mut json = serde_json::to_vec_pretty(&next)?;
    json.push(b'\n');
    let tmp = ring_path.with_extension("json.tmp");
    std::fs::write(&tmp, &json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &ring_path)
        .with_context(|| format!("replacing {}", ring_path.display()))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_writes_a_newer_keyring_without_the_key_and_can_replace_it() {
        let dir = std::env::temp_dir().join(format!("aperture-keys-revoke-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        keys::generate(&dir, 30, false, false).unwrap();
        let before = keys::load(&dir).unwrap();
        let old = before.release.key_id();
        let next = revoke_in(&dir, old.as_str(), true, 30).unwrap();
        assert_eq!(next.keyring.sequence, before.keyring.keyring.sequence + 1);
        assert!(next.keyring.find(&old).is_none());
        let after = keys::load(&dir).unwrap();
        assert_ne!(after.release.key_id(), old);
        assert!(after
            .keyring
            .keyring
            .find(&after.release.key_id())
            .is_some());
        assert!(dir
            .join(format!("{}.{old}.old", keys::RELEASE_SECRET))
            .exists());
        // The last key cannot go without a replacement; an unknown key is refused.
        let e = revoke_in(&dir, after.release.key_id().as_str(), false, 30).unwrap_err();
        assert!(format!("{e:#}").contains("leaves no release key"), "{e:#}");
        let e = revoke_in(&dir, old.as_str(), false, 30).unwrap_err();
        assert!(format!("{e:#}").contains(old.as_str()), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
