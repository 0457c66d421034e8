//! Signed unified kernel images (UKIs) and signed boot loaders, for UEFI Secure Boot.
//!
//! A qemu board's slot boots one UKI: systemd's stub (from the image's own rootfs, package
//! systemd-boot-efi, so it changes only with the Debian snapshot) with the sections `.osrel`,
//! `.cmdline` (the verity root and the slot), `.initrd` and `.linux`, assembled in Rust
//! ([`aperture_uefi::assemble_uki`]: no objcopy, no timestamp) and signed with the recipe's
//! Secure Boot db key by `sbsign`. The command line names the slot's partition and the slot,
//! so each slot has its own UKI (`uki-a.efi`, `uki-b.efi`).
//!
//! Reproducible: `sbsign` puts the signing time into the PKCS#7 signature, so it runs under
//! `faketime` frozen at the build's source date (libfaketime with an absolute time stops the
//! clock), and the same inputs and keys give the same bytes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_sys::cmd::Cmd;

use aperture_uefi::SignedPolicy;

use crate::sbkeys::SecureBootKeys;

/// What goes into one UKI.
#[derive(Debug, Clone)]
pub struct UkiInputs<'a> {
    /// The systemd stub (`linuxx64.efi.stub`), as bytes.
    pub stub: &'a [u8],
    /// The kernel (an EFI-stub kernel image).
    pub kernel: &'a [u8],
    /// The initrd.
    pub initrd: &'a [u8],
    /// The image's `os-release`.
    pub osrel: &'a [u8],
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The image's security version, which the UKI's signed disk-key policy names: the TPM
    /// unseals the disk keys for this UKI only while the anti-rollback floor is at most this.
    pub security_version: u64,
}

/// A UKI made by [`build`]: where it is and what PCR 11 will hold after the stub measured it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuiltUki {
    /// The signed UKI.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// PCR 11 (sha256 bank) as systemd-stub 252 leaves it when it starts this UKI.
    pub pcr11: String,
}

/// Assemble the UKI of `inputs` and sign it with the db key of `keys` into `out`, with the
/// signing clock frozen at `source_date`.
pub fn build(
    inputs: &UkiInputs<'_>,
    keys: &SecureBootKeys,
    source_date: u64,
    out: &Path,
) -> Result<BuiltUki> {
    // The stub measures `.cmdline` as stored; a NUL would end it early for the kernel.
    if inputs.cmdline.contains('\0') || inputs.cmdline.contains('\n') {
        bail!(
            "a UKI's command line must be one line: {:?}",
            inputs.cmdline
        );
    }
    let assemble = |policy: Option<&[u8]>| {
        let mut sections = vec![
            (".osrel", inputs.osrel),
            (".cmdline", inputs.cmdline.as_bytes()),
        ];
        sections.extend(policy.map(|p| (aperture_uefi::apolicy::SECTION, p)));
        sections.extend([(".initrd", inputs.initrd), (".linux", inputs.kernel)]);
        aperture_uefi::assemble_uki(inputs.stub, &sections)
            .context("assembling the unified kernel image")
    };
    // PCR 11 first: the signed policy names it, and the stub does not measure the policy's
    // own section, so adding it leaves PCR 11 as it was (checked).
    let pcr11 = aperture_uefi::predict_pcr11(&assemble(None)?)?;
    let policy = sign_policy(pcr11, inputs.security_version, keys, out)?;
    let unsigned = assemble(Some(&policy.encode()))?;
    if aperture_uefi::predict_pcr11(&unsigned)? != pcr11 {
        bail!("the .apolicy section changed the UKI's PCR 11: the stub must not measure it");
    }
    let tmp = out.with_extension("unsigned");
    std::fs::write(&tmp, &unsigned).with_context(|| format!("writing {}", tmp.display()))?;
    let signed = sign(&tmp, out, keys, source_date);
    let _ = std::fs::remove_file(&tmp);
    signed?;
    Ok(BuiltUki {
        path: out.to_path_buf(),
        size: std::fs::metadata(out)?.len(),
        pcr11: hex::encode(pcr11),
    })
}

/// The approved disk-key policy of a UKI whose PCR 11 is `pcr11`, signed with the TPM policy
/// key of `keys` (`openssl dgst -sha256 -sign`: RSASSA-PKCS1-v1_5, deterministic). `near` names
/// a scratch file's place.
pub fn sign_policy(
    pcr11: [u8; 32],
    security_version: u64,
    keys: &SecureBootKeys,
    near: &Path,
) -> Result<SignedPolicy> {
    let mut policy = SignedPolicy::unsigned(pcr11, security_version);
    let msg = near.with_extension("apolicy-msg");
    std::fs::write(&msg, policy.message()).with_context(|| format!("writing {}", msg.display()))?;
    let out = Cmd::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(keys.policy_key())
        .arg(&msg)
        .run();
    let _ = std::fs::remove_file(&msg);
    policy.signature = out
        .with_context(|| {
            format!(
                "signing the UKI's disk-key policy with {}",
                keys.policy_key().display()
            )
        })?
        .stdout;
    Ok(policy)
}

/// Check a UKI's signed disk-key policy (`.apolicy`): present, its approved digest that of the
/// UKI's own PCR 11 and `security_version`, its signature made by the policy key whose public
/// half is `policy_public` (`openssl dgst -verify`).
pub fn verify_policy(
    uki: &Path,
    policy_public: &Path,
    security_version: u64,
) -> Result<SignedPolicy> {
    let bytes = std::fs::read(uki).with_context(|| format!("reading {}", uki.display()))?;
    let policy = SignedPolicy::of_uki(&bytes)
        .with_context(|| format!("{}", uki.display()))?
        .with_context(|| {
            format!(
                "{} has no signed disk-key policy (section {}): rebuild it with this Aperture",
                uki.display(),
                aperture_uefi::apolicy::SECTION
            )
        })?;
    let pcr11 = aperture_uefi::predict_pcr11(&bytes)?;
    if policy.pcr11 != pcr11 {
        bail!(
            "{}: its disk-key policy approves PCR 11 {}, but the UKI leaves {}: the policy \
             was made for another UKI",
            uki.display(),
            hex::encode(policy.pcr11),
            hex::encode(pcr11)
        );
    }
    if policy.security_version != security_version {
        bail!(
            "{}: its disk-key policy is for security version {}, the manifest says {}",
            uki.display(),
            policy.security_version,
            security_version
        );
    }
    let dir = tempfile::tempdir()?;
    let (msg, sig) = (dir.path().join("msg"), dir.path().join("sig"));
    std::fs::write(&msg, policy.message())?;
    std::fs::write(&sig, &policy.signature)?;
    Cmd::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(policy_public)
        .arg("-signature")
        .arg(&sig)
        .arg(&msg)
        .run()
        .with_context(|| {
            format!(
                "{}: its disk-key policy is not signed by the TPM policy key {}",
                uki.display(),
                policy_public.display()
            )
        })?;
    Ok(policy)
}

/// Sign the EFI program `input` with the db key of `keys` into `output` (`sbsign` under
/// `faketime` at `source_date`), and check the result with `sbverify`.
pub fn sign(input: &Path, output: &Path, keys: &SecureBootKeys, source_date: u64) -> Result<()> {
    // `-f`: the stamp goes to libfaketime as it is, which freezes the clock at an absolute
    // time; without it the `faketime` wrapper turns it into a start time and the clock runs,
    // so a signature made more than a second after sbsign started (a loaded machine) would
    // carry another signing time.
    Cmd::new("faketime")
        .env("TZ", "UTC")
        .arg("-f")
        .arg(faketime_stamp(source_date))
        .arg("sbsign")
        .arg("--key")
        .arg(keys.db_key())
        .arg("--cert")
        .arg(keys.db_cert())
        .arg("--output")
        .arg(output)
        .arg(input)
        .run()
        .with_context(|| {
            format!(
                "signing {} for Secure Boot (packages sbsigntool and faketime)",
                input.display()
            )
        })?;
    verify(output, &keys.db_cert())
}

/// Check that the EFI program at `path` carries a signature that verifies against the db
/// certificate `db_cert` (`sbverify`).
pub fn verify(path: &Path, db_cert: &Path) -> Result<()> {
    Cmd::new("sbverify")
        .arg("--cert")
        .arg(db_cert)
        .arg(path)
        .run()
        .with_context(|| {
            format!(
                "{} is not signed by the Secure Boot db certificate {}",
                path.display(),
                db_cert.display()
            )
        })?;
    Ok(())
}

/// `YYYY-MM-DD hh:mm:ss` (UTC) of unix time `t`: libfaketime freezes the clock at an absolute
/// time given so (with a leading `@` it would start a running clock there instead).
fn faketime_stamp(t: u64) -> String {
    // `YYYY-MM-DDThh:mm:ssZ`, the SBOM's form.
    crate::sbom::iso8601(t).replace('T', " ").replace('Z', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faketime_stamps_are_utc_calendar_dates() {
        assert_eq!(faketime_stamp(0), "1970-01-01 00:00:00");
        assert_eq!(faketime_stamp(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(faketime_stamp(1_796_561_520), "2026-12-06 12:52:00");
        assert_eq!(faketime_stamp(4_102_444_799), "2099-12-31 23:59:59");
    }

    /// A real stub, a fake kernel and initrd, real keys and tools: the signed UKI verifies
    /// against db and not against another certificate, its sections are what went in, and
    /// two builds give the same bytes.
    #[test]
    fn a_signed_uki_is_reproducible_and_verifies_only_against_its_db() {
        let test = "uki::a_signed_uki_is_reproducible_and_verifies_only_against_its_db";
        for (tool, package) in [
            ("sbsign", "sbsigntool"),
            ("sbverify", "sbsigntool"),
            ("faketime", "faketime"),
            ("openssl", "openssl"),
        ] {
            if aperture_sys::tool::for_test(tool, package, test).is_none() {
                return;
            }
        }
        let stub_path = Path::new("/").join(aperture_uefi::STUB_X86_64);
        if !stub_path.is_file() {
            let why = format!(
                "{test}: {} (Debian package systemd-boot-efi) is not installed",
                stub_path.display()
            );
            assert!(!aperture_sys::tool::required(), "{why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
        let stub = std::fs::read(&stub_path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        crate::sbkeys::generate(&keys_dir, 1, false, true).unwrap();
        let keys = SecureBootKeys::of(&keys_dir);
        let kernel = vec![0x4du8; 300_000];
        let initrd = b"initrd".repeat(1000);
        let inputs = UkiInputs {
            stub: &stub,
            kernel: &kernel,
            initrd: &initrd,
            osrel: b"ID=debian\n",
            cmdline: "console=ttyS0 aperture.slot=b",
            security_version: 4,
        };
        let one = dir.path().join("one.efi");
        let two = dir.path().join("two.efi");
        let built = build(&inputs, &keys, 1_796_561_520, &one).unwrap();
        build(&inputs, &keys, 1_796_561_520, &two).unwrap();
        let bytes = std::fs::read(&one).unwrap();
        assert_eq!(bytes, std::fs::read(&two).unwrap(), "two builds differ");
        assert_eq!(built.size, bytes.len() as u64);
        assert!(aperture_uefi::is_signed(&bytes).unwrap());
        assert_eq!(
            aperture_uefi::section_data(&bytes, ".cmdline").unwrap(),
            Some(&b"console=ttyS0 aperture.slot=b"[..])
        );
        assert_eq!(
            aperture_uefi::section_data(&bytes, ".linux").unwrap(),
            Some(&kernel[..])
        );
        // The signature covers the PCR 11 sections; the prediction is of the signed file too.
        assert_eq!(
            hex::encode(aperture_uefi::predict_pcr11(&bytes).unwrap()),
            built.pcr11
        );
        verify(&one, &keys.db_cert()).unwrap();
        // The signed disk-key policy names this UKI's PCR 11 and version, signed by the key.
        let policy = verify_policy(&one, &keys.policy_public(), 4).unwrap();
        assert_eq!(hex::encode(policy.pcr11), built.pcr11);
        assert!(format!(
            "{:#}",
            verify_policy(&one, &keys.policy_public(), 5).unwrap_err()
        )
        .contains("security version 4"));
        let other = dir.path().join("other-keys");
        crate::sbkeys::generate(&other, 1, false, true).unwrap();
        let err = verify_policy(&one, &SecureBootKeys::of(&other).policy_public(), 4).unwrap_err();
        assert!(
            format!("{err:#}").contains("not signed by the TPM policy key"),
            "{err:#}"
        );
        let err = verify(&one, &keys.cert("KEK")).unwrap_err();
        assert!(format!("{err:#}").contains("is not signed by"), "{err:#}");
        // A later source date signs differently (the time is in the signature) ...
        build(&inputs, &keys, 1_796_561_521, &two).unwrap();
        assert_ne!(bytes, std::fs::read(&two).unwrap());
        // ... and one flipped byte in a signed section breaks the signature.
        let mut bad = bytes.clone();
        let at = bad.len() / 2;
        bad[at] ^= 1;
        std::fs::write(&two, &bad).unwrap();
        assert!(verify(&two, &keys.db_cert()).is_err());
    }
}
