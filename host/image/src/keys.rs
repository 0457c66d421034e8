//! Signing keys on the build host: a root key (its public half is baked into every image), a
//! release key that signs manifests, and the keyring in which the root certifies the release key
//! with an expiry; and in `secure-boot/` the UEFI Secure Boot keys and the TPM policy key
//! ([`crate::sbkeys`]). Development keys are made on first use, loudly, and marked so that a
//! release build refuses them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_trust::keys::{KeyringEntry, PublicKey, SignedKeyring, SigningKeyPair};

use crate::progress::Reporter;

/// File names inside a keys folder.
pub const ROOT_SECRET: &str = "root.key";
/// The root public key (baked into images as /etc/aperture/root.pub).
pub const ROOT_PUBLIC: &str = "root.pub";
/// The release signing key.
pub const RELEASE_SECRET: &str = "release.key";
/// The root-signed keyring.
pub const KEYRING: &str = "keyring.json";
/// Present in folders of development keys.
pub const DEVELOPMENT_MARKER: &str = "DEVELOPMENT-KEYS-DO-NOT-SHIP";

/// Keys a build signs with.
pub struct BuildKeys {
    /// The folder.
    pub dir: PathBuf,
    /// Root public key.
    pub root: PublicKey,
    /// Release key.
    pub release: SigningKeyPair,
    /// Keyring certifying the release key.
    pub keyring: SignedKeyring,
    /// Whether these are development keys.
    pub development: bool,
    /// The Secure Boot keys (PK, KEK, db) and the TPM policy key.
    pub secure_boot: crate::sbkeys::SecureBootKeys,
}

/// Make a root key, a release key valid for `valid_days`, the keyring, and the Secure Boot and
/// TPM policy keys, in `dir`.
pub fn generate(dir: &Path, valid_days: u64, force: bool, development: bool) -> Result<()> {
    if !force {
        let sb = crate::sbkeys::SecureBootKeys::of(dir).files();
        let image = [ROOT_SECRET, ROOT_PUBLIC, RELEASE_SECRET, KEYRING].map(|f| dir.join(f));
        if let Some(p) = image.iter().chain(sb.iter()).find(|p| p.exists()) {
            bail!("{} already exists: keys are never overwritten silently (pass --force to replace them)", p.display());
        }
    }
    generate_image_keys(dir, valid_days, force, development)?;
    crate::sbkeys::generate(dir, valid_days.max(3650), force, development)?;
    mark(dir, development)
}

fn mark(dir: &Path, development: bool) -> Result<()> {
    let marker = dir.join(DEVELOPMENT_MARKER);
    if development {
        std::fs::write(&marker, "These keys were generated automatically for development builds.\nNever sign a release with them.\n")?;
    } else if marker.exists() {
        std::fs::remove_file(marker)?;
    }
    Ok(())
}

fn generate_image_keys(dir: &Path, valid_days: u64, force: bool, development: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in [ROOT_SECRET, ROOT_PUBLIC, RELEASE_SECRET, KEYRING] {
        let p = dir.join(f);
        if p.exists() && !force {
            bail!("{} already exists: keys are never overwritten silently (pass --force to replace them)", p.display());
        }
        if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    let root = SigningKeyPair::generate()?;
    let release = SigningKeyPair::generate()?;
    let not_after = aperture_trust::now_unix() + valid_days * 86_400;
    let name = if development {
        "development-release"
    } else {
        "release"
    };
    let keyring = SignedKeyring::create(
        &root,
        vec![KeyringEntry::new(release.public(), name, not_after)],
    )?;
    root.save(&dir.join(ROOT_SECRET))?;
    root.public().save(&dir.join(ROOT_PUBLIC))?;
    release.save(&dir.join(RELEASE_SECRET))?;
    let mut json = serde_json::to_vec_pretty(&keyring)?;
    json.push(b'\n');
    std::fs::write(dir.join(KEYRING), json)?;
    Ok(())
}

/// Load a keys folder.
pub fn load(dir: &Path) -> Result<BuildKeys> {
    let read_err = || {
        format!(
            "keys folder {} is incomplete: make keys with `cargo xtask keys generate --out {}`",
            dir.display(),
            dir.display()
        )
    };
    let root = PublicKey::load(&dir.join(ROOT_PUBLIC)).with_context(read_err)?;
    let release = SigningKeyPair::load(&dir.join(RELEASE_SECRET)).with_context(read_err)?;
    let text = std::fs::read(dir.join(KEYRING)).with_context(read_err)?;
    let keyring: SignedKeyring = serde_json::from_slice(&text)
        .with_context(|| format!("parsing {}", dir.join(KEYRING).display()))?;
    keyring.verify(&root).with_context(|| {
        format!(
            "the keyring in {} is not signed by its root key",
            dir.display()
        )
    })?;
    Ok(BuildKeys {
        dir: dir.to_path_buf(),
        root,
        release,
        keyring,
        development: dir.join(DEVELOPMENT_MARKER).exists(),
        secure_boot: crate::sbkeys::SecureBootKeys::of(dir),
    })
}

/// Image keys for signing (a build, a bundle, a model bundle, a release): the recipe's folder,
/// made on first use when the recipe says they are development keys; refused for a release
/// unless the insecure override is given. An image build also needs the folder's Secure Boot
/// keys: [`secure_boot_for_build`].
pub fn for_build(
    dir: &Path,
    development: bool,
    release: bool,
    insecure_dev_keys: bool,
    rep: &Reporter,
) -> Result<BuildKeys> {
    let mut fresh = false;
    if !dir.join(RELEASE_SECRET).exists() {
        if !development {
            bail!(
                "no signing keys in {}: make them with `cargo xtask keys generate --out {}` (or mark the recipe's keys as development keys)",
                dir.display(),
                dir.display()
            );
        }
        generate(dir, 365, false, true)?;
        rep.warn_loud(&[
            "DEVELOPMENT KEYS GENERATED",
            &format!("New signing keys were created in {}.", dir.display()),
            "Images signed with them are for development only: a --release build refuses them.",
        ]);
        fresh = true;
    }
    let keys = load(dir)?;
    if keys.development {
        if release && !insecure_dev_keys {
            bail!(
                "refusing to sign a release with the development keys in {}: use release keys (`cargo xtask keys generate`), or pass --insecure-dev-keys for a build that will never ship",
                dir.display()
            );
        }
        if !fresh {
            rep.warn_loud(&[&format!(
                "Signing with DEVELOPMENT keys from {}: do not ship this image.",
                dir.display()
            )]);
        }
    }
    Ok(keys)
}

/// The Secure Boot keys of `keys` for an image build. Folders made before images were signed
/// for Secure Boot lack them: a development folder gets them now, as loudly as its first keys
/// (its development marker covers them, so a release build refuses them with the rest); a
/// release folder is refused with the command that adds them.
pub fn secure_boot_for_build(keys: &BuildKeys, rep: &Reporter) -> Result<()> {
    if keys.development && !keys.secure_boot.missing().is_empty() {
        crate::sbkeys::generate(&keys.dir, 3650, false, true)?;
        rep.warn_loud(&[
            "DEVELOPMENT SECURE BOOT KEYS GENERATED",
            &format!(
                "New Secure Boot (PK, KEK, db) and TPM policy keys were created in {}.",
                keys.secure_boot.dir.display()
            ),
            "Firmware enrolled with them boots development images only: a --release build refuses them.",
        ]);
    }
    crate::sbkeys::check(&keys.dir)?;
    Ok(())
}
