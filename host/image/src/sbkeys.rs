//! UEFI Secure Boot keys and the TPM policy key, in the `secure-boot/` folder of a keys folder.
//!
//! * `PK`, `KEK`, `db`: RSA-2048 self-signed X.509 certificates (SHA-256) with their secret
//!   keys. An appliance's firmware is enrolled with these three and nothing else, so it starts
//!   only what `db` signed: our unified kernel images and our copy of systemd-boot. UEFI
//!   requires RSA-2048 for these (UEFI 2.10, 32.5.1 and 32.6.1), so they cannot be ed25519 as
//!   the image keys are.
//! * `tpm-policy`: an RSA-2048 key that signs each image's approved TPM policy (issue 18's
//!   PolicyAuthorize design; TPM2_VerifySignature takes RSA or ECDSA keys, not ed25519).
//!
//! They are made with `openssl` (a build-host tool like mkfs); key generation need not be
//! reproducible, every signature made with them is (see [`crate::uki`]). Development folders
//! get them on first use with the same loud warning as the image keys, and the folder's
//! development marker covers them, so a `--release` build refuses them too.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_sys::cmd::Cmd;

/// The subfolder of a keys folder that holds these keys.
pub const DIR: &str = "secure-boot";

/// The Secure Boot key names, in enrollment order (PK signs KEK, KEK signs db).
pub const NAMES: [&str; 3] = ["PK", "KEK", "db"];

/// The TPM policy key's file stem.
pub const POLICY: &str = "tpm-policy";

/// The file name of the TPM policy key's public half, in the keys folder and in a build's
/// `secure-boot/` folder.
pub const POLICY_PUBLIC_FILE: &str = "tpm-policy.pub.pem";

/// Paths of one keys folder's Secure Boot and policy keys.
#[derive(Debug, Clone)]
pub struct SecureBootKeys {
    /// The `secure-boot/` folder.
    pub dir: PathBuf,
}

impl SecureBootKeys {
    /// The keys of the keys folder `keys_dir` (they may not exist yet).
    pub fn of(keys_dir: &Path) -> SecureBootKeys {
        SecureBootKeys {
            dir: keys_dir.join(DIR),
        }
    }

    /// The certificate `<name>.crt` (PEM) of `PK`, `KEK` or `db`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }

    /// The secret key `<name>.key` (PEM) of `PK`, `KEK` or `db`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// The db certificate: what verifies a signed UKI or boot loader.
    pub fn db_cert(&self) -> PathBuf {
        self.cert("db")
    }

    /// The db secret key: what signs UKIs and the boot loader.
    pub fn db_key(&self) -> PathBuf {
        self.key("db")
    }

    /// The TPM policy key's secret half (PEM).
    pub fn policy_key(&self) -> PathBuf {
        self.dir.join(format!("{POLICY}.key"))
    }

    /// The TPM policy key's public half (PEM), which images carry.
    pub fn policy_public(&self) -> PathBuf {
        self.dir.join(POLICY_PUBLIC_FILE)
    }

    /// Every file the folder must hold.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = NAMES
            .iter()
            .flat_map(|n| [self.cert(n), self.key(n)])
            .collect();
        v.push(self.policy_key());
        v.push(self.policy_public());
        v
    }

    /// The files that are missing, if any.
    pub fn missing(&self) -> Vec<PathBuf> {
        self.files().into_iter().filter(|p| !p.exists()).collect()
    }
}

/// Make the Secure Boot keys and the TPM policy key in `keys_dir/secure-boot/`, valid for
/// `valid_days`. Existing files are replaced only with `force`.
pub fn generate(keys_dir: &Path, valid_days: u64, force: bool, development: bool) -> Result<()> {
    let k = SecureBootKeys::of(keys_dir);
    for p in k.files() {
        if p.exists() && !force {
            bail!(
                "{} already exists: keys are never overwritten silently (pass --force to replace them)",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(&k.dir).with_context(|| format!("creating {}", k.dir.display()))?;
    let what = if development {
        " (DEVELOPMENT: do not ship)"
    } else {
        ""
    };
    for name in NAMES {
        let subject = format!("/CN=Aperture Secure Boot {name}{what}");
        run(Cmd::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes"])
            .arg("-days")
            .arg(valid_days.max(1).to_string())
            .arg("-subj")
            .arg(&subject)
            .arg("-keyout")
            .arg(k.key(name))
            .arg("-out")
            .arg(k.cert(name)))?;
        private(&k.key(name))?;
    }
    run(Cmd::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .arg("-out")
        .arg(k.policy_key()))?;
    private(&k.policy_key())?;
    run(Cmd::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(k.policy_key())
        .arg("-out")
        .arg(k.policy_public()))?;
    Ok(())
}

/// Check that `keys_dir` holds every Secure Boot and policy key, naming the fix if not.
pub fn check(keys_dir: &Path) -> Result<SecureBootKeys> {
    let k = SecureBootKeys::of(keys_dir);
    let missing = k.missing();
    if !missing.is_empty() {
        bail!(
            "the keys folder {} has no Secure Boot keys ({} missing, e.g. {}): make them with \
             `cargo xtask keys generate --secure-boot-only --out {}`",
            keys_dir.display(),
            missing.len(),
            missing[0].display(),
            keys_dir.display()
        );
    }
    Ok(k)
}

fn run(cmd: Cmd) -> Result<()> {
    cmd.run()
        .context("making Secure Boot keys (package openssl)")?;
    Ok(())
}

fn private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_complete_private_and_never_overwritten() {
        let test = "sbkeys::generated_keys_are_complete_private_and_never_overwritten";
        if aperture_sys::tool::for_test("openssl", "openssl", test).is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("--secure-boot-only"), "{err}");
        generate(dir.path(), 10, false, true).unwrap();
        let k = check(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for name in NAMES {
            let mode = std::fs::metadata(k.key(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{name}.key is readable by others");
            let text = Cmd::new("openssl")
                .args(["x509", "-noout", "-subject", "-in"])
                .arg(k.cert(name))
                .text()
                .unwrap();
            assert!(
                text.contains(name) && text.contains("DEVELOPMENT"),
                "{text}"
            );
        }
        let err = generate(dir.path(), 10, false, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--force"), "{err}");
        generate(dir.path(), 10, true, false).unwrap();
    }
}
