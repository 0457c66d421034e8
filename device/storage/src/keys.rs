//! Volume keys and how they are sealed.
//!
//! A [`Key`] is 64 random bytes, the passphrase of the volume's only LUKS2 keyslot, made once
//! per volume on first boot. A [`KeySource`] turns it into a [`SealedKey`] and back; where the
//! sealed key is kept is not its business (two copies: a LUKS2 token in the volume's own header
//! and the `storage` record of the device state, see [`crate::records`]).
//!
//! * [`Tpm2`]: tpm2-tools, a sealed data object under the owner hierarchy's primary key. The
//!   blobs are useless without this TPM (the primary key is derived from its owner seed), so a
//!   stolen disk reveals nothing.
//!   [`Tpm2::seal_secret`] seals other secrets of up to [`MAX_SEALED`] bytes the same way (the
//!   fleet device key's wrapping key, `aperture_client::devkey`): one TPM wrapper for both.
//! * [`UnsafePlainKey`]: the key itself, unsealed. This protects nothing against disk theft;
//!   it is used only when the image says the board has no TPM (`BuildFacts::tpm` false), and
//!   `aperture-storage` says so in the log at every boot.
//! * [`FakeTpm`]: a test double that seals with a secret of its own, so that blobs from another
//!   "TPM", or damaged blobs, fail to unseal as tpm2_load would.
//!
//! On a board that boots signed UKIs under Secure Boot, [`Tpm2`] seals volume keys to the boot
//! chain instead ([`crate::boot`]): Secure Boot's PCR 7 and a policy signed per UKI, so no
//! re-sealing on updates. Other secrets ([`Tpm2::seal_secret`]) are not bound.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use aperture_sys::Cmd;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::boot::{BootBinding, BootChain};
use crate::StorageError;

/// Bytes in a volume key.
pub const KEY_LEN: usize = 64;

/// A volume key. Its bytes are zeroed when it is dropped (best effort: copies made by the
/// kernel or by cryptsetup are out of reach) and never printed.
pub struct Key(Box<[u8; KEY_LEN]>);

impl Key {
    /// A fresh key from the system random number generator.
    pub fn random() -> Result<Key, StorageError> {
        let mut bytes = Box::new([0u8; KEY_LEN]);
        random_bytes(&mut bytes[..])?;
        Ok(Key(bytes))
    }

    /// A key from bytes read back for `volume`; they must be exactly [`KEY_LEN`] long.
    pub fn from_bytes(volume: &str, bytes: &[u8]) -> Result<Key, StorageError> {
        if bytes.len() != KEY_LEN {
            return Err(StorageError::KeySize {
                volume: volume.into(),
                len: bytes.len(),
                expected: KEY_LEN,
            });
        }
        let mut key = Box::new([0u8; KEY_LEN]);
        key.copy_from_slice(bytes);
        Ok(Key(key))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..]
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

/// Fill `buf` from the system random number generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), StorageError> {
    getrandom::getrandom(buf).map_err(|e| StorageError::Random {
        reason: e.to_string(),
    })
}

/// What protects a volume's key. Chosen at the first boot, recorded (token type and device
/// state) and never changed afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeySourceKind {
    /// Sealed by the TPM 2.0.
    Tpm2,
    /// Stored unsealed: no protection against disk theft (boards without a TPM only).
    UnsafePlain,
}

impl KeySourceKind {
    /// The LUKS2 token type of a key sealed this way.
    pub fn token_type(self) -> &'static str {
        match self {
            KeySourceKind::Tpm2 => "aperture-tpm2",
            KeySourceKind::UnsafePlain => "aperture-unsafe-plain",
        }
    }
}

impl fmt::Display for KeySourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySourceKind::Tpm2 => "tpm2",
            KeySourceKind::UnsafePlain => "unsafe-plain (NOT protected against disk theft)",
        })
    }
}

/// Base64 (RFC 4648, with padding) for the byte fields of tokens and records.
mod b64 {
    use super::{Engine, B64};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// A sealed volume key as it is kept in a LUKS2 token and in the device state: the JSON object
/// `{"type":"aperture-tpm2","tpm2_public":"<base64>","tpm2_private":"<base64>","noda":true}` or
/// `{"type":"aperture-unsafe-plain","key":"<base64>"}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SealedKey {
    /// A TPM 2.0 sealed data object (`tpm2_create -u`, `-r`).
    #[serde(rename = "aperture-tpm2")]
    Tpm2 {
        /// The object's TPM2B_PUBLIC.
        #[serde(with = "b64")]
        tpm2_public: Vec<u8>,
        /// The object's TPM2B_PRIVATE (encrypted by the TPM's storage key).
        #[serde(with = "b64")]
        tpm2_private: Vec<u8>,
        /// Sealed under the primary key with `noda`, itself `noda` ([`Tpm2`]): usable while
        /// the TPM's dictionary-attack lockout is on. Absent (false) in keys sealed before.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        noda: bool,
        /// Sealed to the signed boot chain ([`crate::boot`]): what it was sealed to. Absent in
        /// keys sealed before, or on boards without Secure Boot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot: Option<BootBinding>,
    },
    /// The key itself.
    #[serde(rename = "aperture-unsafe-plain")]
    UnsafePlain {
        /// The key.
        #[serde(with = "b64")]
        key: Vec<u8>,
    },
}

impl SealedKey {
    /// Which source sealed it.
    pub fn kind(&self) -> KeySourceKind {
        match self {
            SealedKey::Tpm2 { .. } => KeySourceKind::Tpm2,
            SealedKey::UnsafePlain { .. } => KeySourceKind::UnsafePlain,
        }
    }
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealedKey::Tpm2 {
                tpm2_public,
                tpm2_private,
                ..
            } => write!(
                f,
                "SealedKey::Tpm2({} + {} bytes)",
                tpm2_public.len(),
                tpm2_private.len()
            ),
            SealedKey::UnsafePlain { .. } => f.write_str("SealedKey::UnsafePlain(<secret>)"),
        }
    }
}

impl Drop for SealedKey {
    fn drop(&mut self) {
        if let SealedKey::UnsafePlain { key } = self {
            key.fill(0);
        }
    }
}

/// Seals volume keys to the device.
pub trait KeySource {
    /// What kind of protection this is.
    fn kind(&self) -> KeySourceKind;
    /// Seal `key` of `volume`.
    fn seal(&self, volume: &str, key: &Key) -> Result<SealedKey, StorageError>;
    /// The key of `volume` from `sealed`.
    fn unseal(&self, volume: &str, sealed: &SealedKey) -> Result<Key, StorageError>;
    /// `sealed` again in a stronger way this boot allows (a key sealed before the boot chain
    /// was, now sealed to it), or `None` to keep it as it is.
    fn rebind(
        &self,
        _volume: &str,
        _key: &Key,
        _sealed: &SealedKey,
    ) -> Result<Option<SealedKey>, StorageError> {
        Ok(None)
    }
}

/// `what` (`the sealed key of data`) was sealed by another source than `want`.
fn wrong_kind(what: &str, want: KeySourceKind, sealed: &SealedKey) -> StorageError {
    StorageError::malformed(
        what,
        format!(
            "it is sealed by {}, not {want}: the key source recorded at first boot never changes",
            sealed.kind()
        ),
    )
}

/// THE INSECURE SOURCE: the key is "sealed" as itself. Anyone holding the disk can read it.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnsafePlainKey;

impl KeySource for UnsafePlainKey {
    fn kind(&self) -> KeySourceKind {
        KeySourceKind::UnsafePlain
    }

    fn seal(&self, _volume: &str, key: &Key) -> Result<SealedKey, StorageError> {
        Ok(SealedKey::UnsafePlain {
            key: key.as_bytes().to_vec(),
        })
    }

    fn unseal(&self, volume: &str, sealed: &SealedKey) -> Result<Key, StorageError> {
        match sealed {
            SealedKey::UnsafePlain { key } => Key::from_bytes(volume, key),
            other => Err(wrong_kind(
                &format!("the sealed key of {volume}"),
                self.kind(),
                other,
            )),
        }
    }
}

/// Keys sealed by a TPM 2.0 through tpm2-tools: a sealed data object under the primary storage
/// key that `tpm2_createprimary -C o` derives again at every boot from the owner seed. Context
/// and blob files exist only in a private scratch folder on `/run` (a tmpfs).
///
/// Both the primary key and the sealed object carry `noda`: they have no secret to guess (an
/// empty authorization), so the TPM's dictionary-attack protection guards nothing there, and
/// it would lock the keys away: a TPM counts every power loss without an orderly shutdown as a
/// failed try, so a few cuts put it in lockout (`TPM_RC_LOCKOUT`, 0x921) for up to hours, and
/// the appliance could not open its data (found by the VM tier's fourth power cut, swtpm's
/// default being three tries). Keys sealed before `noda` are still unsealed with the old
/// templates.
#[derive(Debug, Clone)]
pub struct Tpm2 {
    run_dir: PathBuf,
    tcti: Option<String>,
    boot: Option<BootChain>,
}

impl Tpm2 {
    /// Scratch files in a private folder under `run_dir` (`/run`).
    pub fn new(run_dir: PathBuf) -> Tpm2 {
        Tpm2 {
            run_dir,
            tcti: None,
            boot: None,
        }
    }

    /// Seal volume keys to the boot chain `chain` ([`crate::boot`]).
    pub fn with_boot_chain(mut self, chain: BootChain) -> Tpm2 {
        self.boot = Some(chain);
        self
    }

    /// The boot chain volume keys are sealed to, if any.
    pub fn boot_chain(&self) -> Option<&BootChain> {
        self.boot.as_ref()
    }

    /// Talk to the TPM through `tcti` (`swtpm:port=2321` in tests) instead of the default
    /// resource manager `/dev/tpmrm0`.
    pub fn with_tcti(mut self, tcti: impl Into<String>) -> Tpm2 {
        self.tcti = Some(tcti.into());
        self
    }

    pub(crate) fn tool(&self, program: &str) -> Cmd {
        let cmd = Cmd::new(program);
        match &self.tcti {
            Some(t) => cmd.env("TPM2TOOLS_TCTI", t),
            None => cmd,
        }
    }

    /// Flush transient objects. The kernel resource manager does this by itself; a raw TPM
    /// (swtpm over a socket) runs out of object slots without it.
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        self.tool("tpm2_flushcontext").arg("-t").run()?;
        Ok(())
    }

    /// A private scratch folder for context files, removed when dropped.
    pub(crate) fn scratch(&self) -> Result<Scratch, StorageError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self.run_dir.join(format!(
            "aperture-storage-tpm2.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        aperture_sys::fs::create_dir_all(&dir, 0o700)?;
        Ok(Scratch(dir))
    }

    /// Create the primary key into `scratch/primary.ctx`: tpm2-tools' default storage key
    /// template, with `noda` unless `legacy`.
    pub(crate) fn primary(&self, scratch: &Scratch, noda: bool) -> Result<PathBuf, StorageError> {
        let ctx = scratch.0.join("primary.ctx");
        let mut cmd = self
            .tool("tpm2_createprimary")
            .args(["-Q", "-C", "o", "-c"])
            .arg(&ctx);
        if noda {
            cmd = cmd.args([
                "-a",
                "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
            ]);
        }
        cmd.run()?;
        self.flush()?;
        Ok(ctx)
    }
}

impl Tpm2 {
    /// Seal `secret` (at most [`MAX_SEALED`] bytes, what a TPM sealed data object holds) as
    /// volume keys are sealed: a sealed data object under the owner hierarchy's primary key,
    /// both `noda`. Other secrets than volume keys (the fleet identity's wrapping key,
    /// `aperture-client`'s `TpmSealedKey`) are sealed with this too.
    pub fn seal_secret(&self, secret: &[u8]) -> Result<SealedKey, StorageError> {
        if secret.is_empty() || secret.len() > MAX_SEALED {
            return Err(StorageError::malformed(
                "a secret to seal",
                format!(
                    "it is {} bytes; a TPM sealed data object holds 1 to {MAX_SEALED}",
                    secret.len()
                ),
            ));
        }
        let scratch = self.scratch()?;
        let primary = self.primary(&scratch, true)?;
        let (tpm2_public, tpm2_private) = self.create_sealed(&scratch, &primary, None, secret)?;
        Ok(SealedKey::Tpm2 {
            tpm2_public,
            tpm2_private,
            noda: true,
            boot: None,
        })
    }

    /// A sealed data object holding `secret` under `primary`, `noda`: with the authPolicy in
    /// the file `policy` and no `userwithauth` (the policy is the only way to the secret), or
    /// else tpm2-tools' attributes for a sealed data object (an empty password). Its public
    /// and private blobs.
    pub(crate) fn create_sealed(
        &self,
        scratch: &Scratch,
        primary: &std::path::Path,
        policy: Option<&std::path::Path>,
        secret: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), StorageError> {
        let (public, private) = (scratch.0.join("key.pub"), scratch.0.join("key.priv"));
        let mut cmd = self.tool("tpm2_create").args(["-Q", "-C"]).arg(primary);
        cmd = match policy {
            Some(p) => cmd
                .arg("-L")
                .arg(p)
                .args(["-a", "fixedtpm|fixedparent|noda"]),
            None => cmd.args(["-a", "fixedtpm|fixedparent|userwithauth|noda"]),
        };
        cmd.args(["-i", "-", "-u"])
            .arg(&public)
            .arg("-r")
            .arg(&private)
            .stdin_secret(secret)
            .run()?;
        self.flush()?;
        let read = |p: &PathBuf| std::fs::read(p).map_err(StorageError::io("reading", p));
        Ok((read(&public)?, read(&private)?))
    }

    /// The secret sealed in `sealed` by this TPM ([`Tpm2::seal_secret`]); `what` names it in
    /// errors. A blob sealed by another TPM, or damaged, fails at `tpm2_load`.
    pub fn unseal_secret(&self, what: &str, sealed: &SealedKey) -> Result<Secret, StorageError> {
        let SealedKey::Tpm2 {
            tpm2_public,
            tpm2_private,
            noda,
            boot,
        } = sealed
        else {
            return Err(wrong_kind(what, KeySourceKind::Tpm2, sealed));
        };
        if boot.is_some() {
            return self.unseal_bound(self.boot.as_ref(), sealed);
        }
        let scratch = self.scratch()?;
        let (public, private) = (scratch.0.join("key.pub"), scratch.0.join("key.priv"));
        std::fs::write(&public, tpm2_public).map_err(StorageError::io("writing", &public))?;
        std::fs::write(&private, tpm2_private).map_err(StorageError::io("writing", &private))?;
        let primary = self.primary(&scratch, *noda)?;
        let object = scratch.0.join("key.ctx");
        self.tool("tpm2_load")
            .args(["-Q", "-C"])
            .arg(&primary)
            .arg("-u")
            .arg(&public)
            .arg("-r")
            .arg(&private)
            .arg("-c")
            .arg(&object)
            .run()?;
        self.flush()?;
        let out = self.tool("tpm2_unseal").arg("-c").arg(&object).run()?;
        let secret = Secret(out.stdout);
        self.flush()?;
        Ok(secret)
    }
}

impl KeySource for Tpm2 {
    fn kind(&self) -> KeySourceKind {
        KeySourceKind::Tpm2
    }

    fn seal(&self, _volume: &str, key: &Key) -> Result<SealedKey, StorageError> {
        match &self.boot {
            Some(chain) => self.seal_bound(chain, key.as_bytes()),
            None => self.seal_secret(key.as_bytes()),
        }
    }

    fn rebind(
        &self,
        volume: &str,
        key: &Key,
        sealed: &SealedKey,
    ) -> Result<Option<SealedKey>, StorageError> {
        let (Some(chain), SealedKey::Tpm2 { boot: None, .. }) = (&self.boot, sealed) else {
            return Ok(None);
        };
        let state = chain.secure_boot();
        if state != aperture_appliance::SecureBoot::On {
            tracing::warn!(
                "{volume}: its key is sealed to the TPM alone, not yet to the signed boot                  chain, and Secure Boot is {}: it stays so until a boot with Secure Boot on",
                state.word()
            );
            return Ok(None);
        }
        self.seal_bound(chain, key.as_bytes()).map(Some)
    }

    fn unseal(&self, volume: &str, sealed: &SealedKey) -> Result<Key, StorageError> {
        let secret = self.unseal_secret(&format!("the sealed key of {volume}"), sealed)?;
        Key::from_bytes(volume, secret.as_bytes())
    }
}

/// Bytes a TPM 2.0 sealed data object holds at most (`MAX_SYM_DATA`, TPM 2.0 Part 2, 10.4.4).
pub const MAX_SEALED: usize = 128;

/// A secret read back from the TPM ([`Tpm2::unseal_secret`]): zeroed when dropped (best
/// effort, as for [`Key`]) and never printed.
pub struct Secret(Vec<u8>);

impl Secret {
    pub(crate) fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<secret>)")
    }
}

/// A scratch folder removed on drop.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Test double of a TPM: seals with a random seed of its own (the "owner seed"), so that only
/// the same instance unseals, and a damaged or foreign blob is refused as `tpm2_load` refuses
/// it. Blob layout: public = 16-byte nonce + 16-byte tag (SHA-256 of seed, nonce and key);
/// private = key XOR a SHA-256 keystream of seed and nonce.
#[derive(Debug, Clone)]
pub struct FakeTpm {
    seed: [u8; 32],
    bound: bool,
}

impl FakeTpm {
    /// A TPM with a fresh seed.
    pub fn new() -> Result<FakeTpm, StorageError> {
        let mut seed = [0u8; 32];
        random_bytes(&mut seed)?;
        Ok(FakeTpm { seed, bound: false })
    }

    /// This TPM as on a board whose keys are sealed to the boot chain: keys it seals carry a
    /// (fake) [`BootBinding`], and keys sealed without one are sealed again ([`KeySource::
    /// rebind`]), as [`Tpm2`] with a [`BootChain`] and Secure Boot on does.
    pub fn bound_to_boot_chain(mut self) -> FakeTpm {
        self.bound = true;
        self
    }

    fn stream(&self, nonce: &[u8], len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut block = 0u32;
        while out.len() < len {
            let mut h = Sha256::new();
            h.update(self.seed);
            h.update(nonce);
            h.update(block.to_le_bytes());
            out.extend_from_slice(&h.finalize());
            block += 1;
        }
        out.truncate(len);
        out
    }

    fn tag(&self, nonce: &[u8], key: &[u8]) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(nonce);
        h.update(key);
        h.finalize()[..16].to_vec()
    }
}

impl KeySource for FakeTpm {
    fn kind(&self) -> KeySourceKind {
        KeySourceKind::Tpm2
    }

    fn seal(&self, _volume: &str, key: &Key) -> Result<SealedKey, StorageError> {
        let mut nonce = [0u8; 16];
        random_bytes(&mut nonce)?;
        let stream = self.stream(&nonce, KEY_LEN);
        let private = key.as_bytes().iter().zip(&stream).map(|(a, b)| a ^ b);
        let mut public = nonce.to_vec();
        public.extend(self.tag(&nonce, key.as_bytes()));
        Ok(SealedKey::Tpm2 {
            tpm2_public: public,
            tpm2_private: private.collect(),
            noda: true,
            boot: self.bound.then(|| BootBinding {
                pcr7: "fake".into(),
                policy_key_name: "fake".into(),
            }),
        })
    }

    fn rebind(
        &self,
        volume: &str,
        key: &Key,
        sealed: &SealedKey,
    ) -> Result<Option<SealedKey>, StorageError> {
        match sealed {
            SealedKey::Tpm2 { boot: None, .. } if self.bound => self.seal(volume, key).map(Some),
            _ => Ok(None),
        }
    }

    fn unseal(&self, volume: &str, sealed: &SealedKey) -> Result<Key, StorageError> {
        let SealedKey::Tpm2 {
            tpm2_public,
            tpm2_private,
            ..
        } = sealed
        else {
            return Err(wrong_kind(
                &format!("the sealed key of {volume}"),
                self.kind(),
                sealed,
            ));
        };
        let refuse = || {
            StorageError::malformed(
                format!("the sealed key of {volume}"),
                "fake tpm2_load: the blob was not sealed by this TPM or is damaged",
            )
        };
        if tpm2_public.len() != 32 || tpm2_private.len() != KEY_LEN {
            return Err(refuse());
        }
        let (nonce, tag) = tpm2_public.split_at(16);
        let stream = self.stream(nonce, KEY_LEN);
        let mut plain: Vec<u8> = tpm2_private
            .iter()
            .zip(&stream)
            .map(|(a, b)| a ^ b)
            .collect();
        let ok = self.tag(nonce, &plain) == tag;
        let key = Key::from_bytes(volume, &plain);
        plain.fill(0);
        if !ok {
            return Err(refuse());
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_differ_and_are_not_printed() {
        let a = Key::random().unwrap();
        let b = Key::random().unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(a.as_bytes().len(), KEY_LEN);
        assert_eq!(format!("{a:?}"), "Key(<secret>)");
        let sealed = UnsafePlainKey.seal("data", &a).unwrap();
        assert_eq!(format!("{sealed:?}"), "SealedKey::UnsafePlain(<secret>)");
    }

    #[test]
    fn wrong_length_is_refused() {
        let err = Key::from_bytes("data", &[1; 10]).unwrap_err();
        assert!(err.to_string().contains("10 bytes, not 64"), "{err}");
    }

    #[test]
    fn sealed_keys_serialize_as_the_documented_json() {
        let key = Key::from_bytes("data", &[7u8; KEY_LEN]).unwrap();
        let plain = UnsafePlainKey.seal("data", &key).unwrap();
        let json = serde_json::to_value(&plain).unwrap();
        assert_eq!(json["type"], "aperture-unsafe-plain");
        assert_eq!(json["key"], B64.encode([7u8; KEY_LEN]));
        let tpm = SealedKey::Tpm2 {
            tpm2_public: vec![1, 2, 3],
            tpm2_private: vec![4, 5],
            noda: true,
            boot: None,
        };
        assert_eq!(
            serde_json::to_string(&tpm).unwrap(),
            r#"{"type":"aperture-tpm2","tpm2_public":"AQID","tpm2_private":"BAU=","noda":true}"#
        );
        let back: SealedKey = serde_json::from_value(serde_json::to_value(&tpm).unwrap()).unwrap();
        assert_eq!(back, tpm);
        // A key sealed before `noda` reads as sealed with the old templates.
        let old: SealedKey = serde_json::from_str(
            r#"{"type":"aperture-tpm2","tpm2_public":"AQID","tpm2_private":"BAU="}"#,
        )
        .unwrap();
        assert!(matches!(old, SealedKey::Tpm2 { noda: false, .. }));
        assert!(serde_json::from_str::<SealedKey>(
            r#"{"type":"aperture-tpm2","tpm2_public":"!!","tpm2_private":""}"#
        )
        .is_err());
    }

    #[test]
    fn fake_tpm_unseals_only_its_own_intact_blobs() {
        let tpm = FakeTpm::new().unwrap();
        let key = Key::random().unwrap();
        let sealed = tpm.seal("data", &key).unwrap();
        assert_eq!(
            tpm.unseal("data", &sealed).unwrap().as_bytes(),
            key.as_bytes()
        );
        let other = FakeTpm::new().unwrap();
        assert!(other.unseal("data", &sealed).is_err(), "another TPM");
        let SealedKey::Tpm2 {
            tpm2_public,
            tpm2_private,
            ..
        } = &sealed
        else {
            unreachable!()
        };
        let mut tpm2_private = tpm2_private.clone();
        tpm2_private[3] ^= 1;
        let damaged = SealedKey::Tpm2 {
            tpm2_public: tpm2_public.clone(),
            tpm2_private,
            noda: true,
            boot: None,
        };
        assert!(tpm.unseal("data", &damaged).is_err(), "a damaged blob");
        let plain = UnsafePlainKey.seal("data", &key).unwrap();
        let err = tpm.unseal("data", &plain).unwrap_err().to_string();
        assert!(err.contains("never changes"), "{err}");
        assert!(UnsafePlainKey.unseal("data", &sealed).is_err());
    }
}
