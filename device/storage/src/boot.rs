//! Disk keys sealed to the signed boot chain (issue 18; docs/research/issue-18/REPORT.md Q3).
//!
//! On a board that boots our signed UKIs under Secure Boot ([`aperture_appliance::Board::
//! secure_boot`]), a volume key is a TPM sealed object whose authPolicy is
//! `PolicyAuthorize(the build's TPM policy key, "aperture-disk-v1")` then `PolicyPCR(7 = the
//! value at the first boot)`, with no `userwithauth`, so no password opens it. To unseal,
//! the booted UKI's signed approved policy ([`SignedPolicy`], its `.apolicy` section) is
//! presented: `PolicyPCR(11)` (what the stub measured for this very UKI) and `PolicyNV(the
//! anti-rollback floor <= this image's security version)`, its signature checked by the TPM.
//!
//! So the key unseals only when Secure Boot is on with the same key databases (PCR 7), in a
//! UKI the build signed a policy for (PCR 11), at or above the floor (the NV counter the
//! updater raises at each commit). An update to a newly signed image unseals with nothing
//! re-sealed. After setup, [`Tpm2::barrier`] extends PCR 11, so nothing later in the same
//! boot (root on the running system) can unseal again.
//!
//! The TPM only says `TPM_RC_POLICY_FAIL`; when it refuses, [`Tpm2`] reads the state it can
//! see (Secure Boot variables, PCR 7 and 11, the floor counter, the policy signature) and says
//! which condition failed.

use std::path::{Path, PathBuf};

use aperture_appliance::{Files, SecureBoot, Slot};
use aperture_uefi::apolicy::{FLOOR_ATTRIBUTES_TOOLS, FLOOR_INDEX, POLICY_REF};
use aperture_uefi::policy::sealed_policy;
use aperture_uefi::SignedPolicy;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{Scratch, SealedKey, Secret, Tpm2};
use crate::StorageError;

/// What PCR 11 is extended with once storage is done, whatever the outcome.
pub const BARRIER: &[u8] = b"aperture-storage-done";

/// What a key sealed to the boot chain was sealed to (kept beside the blobs, in the token and
/// the device state; not secret: it explains a refusal, the TPM enforces it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootBinding {
    /// PCR 7 (sha256 bank) at sealing, hex.
    pub pcr7: String,
    /// The TPM Name of the policy key the policy authorizes, hex.
    pub policy_key_name: String,
}

/// Where this boot's chain is described: the build's policy key, the UKI that booted, the
/// firmware's variables.
#[derive(Debug, Clone)]
pub struct BootChain {
    /// The build's TPM policy key, public half (PEM).
    pub policy_key: PathBuf,
    /// The UKI this boot started: the booted slot's `uki.efi` on the ESP (none when the kernel
    /// command line names no slot).
    pub uki: Option<PathBuf>,
    /// efivarfs.
    pub efivars: PathBuf,
}

impl BootChain {
    /// This appliance's chain: the UKI of the slot named on the kernel command line (none if
    /// it names none, which [`BootChain::signed_policy`] then reports).
    pub fn of(files: &Files) -> BootChain {
        let slot = std::fs::read_to_string(files.cmdline())
            .ok()
            .and_then(|c| Slot::from_cmdline(&c));
        BootChain {
            policy_key: files.tpm_policy_key(),
            uki: slot.map(|s| files.uki(s)),
            efivars: files.efivars(),
        }
    }

    /// The firmware's Secure Boot state.
    pub fn secure_boot(&self) -> SecureBoot {
        SecureBoot::read(&self.efivars)
    }

    /// The booted UKI's signed policy.
    pub fn signed_policy(&self) -> Result<SignedPolicy, StorageError> {
        let uki = self.uki()?;
        let bytes = std::fs::read(uki).map_err(StorageError::io("reading", uki))?;
        match SignedPolicy::of_uki(&bytes) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(StorageError::BootChain {
                reason: format!(
                    "the booted UKI {} carries no signed disk-key policy (section {})",
                    uki.display(),
                    aperture_uefi::apolicy::SECTION
                ),
            }),
            Err(e) => Err(StorageError::BootChain {
                reason: format!("the booted UKI {}: {e}", uki.display()),
            }),
        }
    }

    fn uki(&self) -> Result<&Path, StorageError> {
        self.uki.as_deref().ok_or_else(|| {
            chain_error(format!(
                "the kernel command line names no slot (`{}=`), so storage cannot tell which \
                 UKI booted and which signed policy to present",
                aperture_appliance::slot::CMDLINE_KEY
            ))
        })
    }

    fn uki_name(&self) -> String {
        self.uki
            .as_deref()
            .map_or_else(|| "the booted UKI".into(), |p| p.display().to_string())
    }
}

fn chain_error(reason: impl Into<String>) -> StorageError {
    StorageError::BootChain {
        reason: reason.into(),
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(16)]
}

/// The policy key loaded into the TPM: its context file and Name.
struct PolicyKey {
    ctx: PathBuf,
    name: Vec<u8>,
}

impl Tpm2 {
    fn write_scratch(scratch: &Scratch, name: &str, bytes: &[u8]) -> Result<PathBuf, StorageError> {
        let path = scratch.path().join(name);
        std::fs::write(&path, bytes).map_err(StorageError::io("writing", &path))?;
        Ok(path)
    }

    fn load_policy_key(
        &self,
        scratch: &Scratch,
        chain: &BootChain,
    ) -> Result<PolicyKey, StorageError> {
        let (ctx, name) = (
            scratch.path().join("pk.ctx"),
            scratch.path().join("pk.name"),
        );
        self.tool("tpm2_loadexternal")
            .args(["-Q", "-C", "o", "-G", "rsa", "-u"])
            .arg(&chain.policy_key)
            .arg("-c")
            .arg(&ctx)
            .arg("-n")
            .arg(&name)
            .run()?;
        self.flush()?;
        let name = std::fs::read(&name).map_err(StorageError::io("reading", &name))?;
        Ok(PolicyKey { ctx, name })
    }

    /// PCR `index` of the sha256 bank.
    pub fn pcr(&self, index: u32) -> Result<[u8; 32], StorageError> {
        let scratch = self.scratch()?;
        let out = scratch.path().join("pcr");
        self.tool("tpm2_pcrread")
            .args(["-Q", &format!("sha256:{index}"), "-o"])
            .arg(&out)
            .run()?;
        let bytes = std::fs::read(&out).map_err(StorageError::io("reading", &out))?;
        bytes.try_into().map_err(|b: Vec<u8>| {
            chain_error(format!(
                "tpm2_pcrread printed {} bytes for PCR {index}, not 32",
                b.len()
            ))
        })
    }

    /// The anti-rollback floor counter, if it was ever written.
    pub fn floor(&self) -> Option<u64> {
        let out = self
            .tool("tpm2_nvread")
            .args(["-C", "o", "-s", "8", &format!("{FLOOR_INDEX:#x}")])
            .run()
            .ok()?;
        Some(u64::from_be_bytes(out.stdout.try_into().ok()?))
    }

    /// The floor counter, defined and written first if it never was (with the updater's
    /// attributes: they are part of its Name, which every approved policy names). A new
    /// counter starts above every counter the TPM ever deleted.
    fn ensure_floor(&self) -> Result<u64, StorageError> {
        if let Some(v) = self.floor() {
            return Ok(v);
        }
        let index = format!("{FLOOR_INDEX:#x}");
        // Defined but never written is possible (a cut between the two): then this fails.
        let _ = self
            .tool("tpm2_nvdefine")
            .arg(&index)
            .args(["-C", "o", "-s", "8", "-a", FLOOR_ATTRIBUTES_TOOLS])
            .run();
        self.tool("tpm2_nvincrement")
            .args(["-C", "o"])
            .arg(&index)
            .run()?;
        self.floor().ok_or_else(|| {
            chain_error(format!(
                "the floor counter {index} cannot be read after its first increment"
            ))
        })
    }

    /// Extend PCR 11 with [`BARRIER`]: no policy approved for a UKI matches for the rest of
    /// this boot.
    pub fn barrier(&self) -> Result<(), StorageError> {
        let digest = hex::encode(Sha256::digest(BARRIER));
        self.tool("tpm2_pcrextend")
            .arg(format!("11:sha256={digest}"))
            .run()?;
        Ok(())
    }

    /// Seal `secret` to the boot chain (see the module documentation). Refused unless Secure
    /// Boot is on, and unless the booted UKI's policy would pass now (proved by unsealing it
    /// once before the key is used).
    pub(crate) fn seal_bound(
        &self,
        chain: &BootChain,
        secret: &[u8],
    ) -> Result<SealedKey, StorageError> {
        let state = chain.secure_boot();
        if state != SecureBoot::On {
            return Err(chain_error(format!(
                "refusing to seal a disk key: Secure Boot is {} ({}), and on this board the \
                 disk keys are sealed to the Secure Boot state and our signed boot chain. \
                 Enroll the image's Secure Boot keys (`cargo xtask vm run` does; for hardware \
                 see ARCHITECTURE.md) and boot again; nothing was written",
                state.word(),
                chain.efivars.display()
            )));
        }
        let policy = chain.signed_policy()?;
        let floor = self.ensure_floor()?;
        if floor > policy.security_version {
            return Err(chain_error(format!(
                "refusing to seal a disk key: this image's security version {} is below the \
                 TPM's anti-rollback floor counter ({floor}), so its policy could never unseal \
                 it; boot an image with security version {floor} or more",
                policy.security_version
            )));
        }
        let scratch = self.scratch()?;
        let primary = self.primary(&scratch, true)?;
        let pk = self.load_policy_key(&scratch, chain)?;
        let pcr7 = self.pcr(7)?;
        let auth = sealed_policy(&pk.name, POLICY_REF, pcr7);
        let auth_file = Tpm2::write_scratch(&scratch, "seal.policy", &auth)?;
        let (tpm2_public, tpm2_private) =
            self.create_sealed(&scratch, &primary, Some(&auth_file), secret)?;
        let sealed = SealedKey::Tpm2 {
            tpm2_public,
            tpm2_private,
            noda: true,
            boot: Some(BootBinding {
                pcr7: hex::encode(pcr7),
                policy_key_name: hex::encode(&pk.name),
            }),
        };
        drop(scratch);
        let back = self.unseal_bound(Some(chain), &sealed)?;
        if back.as_bytes() != secret {
            return Err(chain_error(
                "the key sealed to the boot chain unsealed to other bytes",
            ));
        }
        Ok(sealed)
    }

    /// Unseal a key sealed by [`Tpm2::seal_bound`], presenting the booted UKI's signed policy.
    pub(crate) fn unseal_bound(
        &self,
        chain: Option<&BootChain>,
        sealed: &SealedKey,
    ) -> Result<Secret, StorageError> {
        let SealedKey::Tpm2 {
            tpm2_public,
            tpm2_private,
            noda,
            boot: Some(binding),
        } = sealed
        else {
            return Err(chain_error("the key is not sealed to the boot chain"));
        };
        let Some(chain) = chain else {
            return Err(chain_error(
                "the key is sealed to the signed boot chain, but this image does not boot one \
                 (no TPM policy key, or a board without Secure Boot)",
            ));
        };
        let policy = chain.signed_policy()?;
        let scratch = self.scratch()?;
        let primary = self.primary(&scratch, *noda)?;
        let pk = self.load_policy_key(&scratch, chain)?;
        let attempt =
            self.policy_session(&scratch, &primary, &pk, &policy, tpm2_public, tpm2_private);
        match attempt {
            Ok(secret) => Ok(secret),
            Err(e) => {
                let reasons = self.diagnose(chain, binding, &pk, &policy);
                Err(chain_error(if reasons.is_empty() {
                    format!("the TPM refused the boot-chain policy: {e}")
                } else {
                    reasons.join("; ")
                }))
            }
        }
    }

    /// TPM2_VerifySignature of the policy, then the policy session and the unseal; the
    /// session is flushed whatever happens.
    fn policy_session(
        &self,
        scratch: &Scratch,
        primary: &Path,
        pk: &PolicyKey,
        policy: &SignedPolicy,
        public: &[u8],
        private: &[u8],
    ) -> Result<Secret, StorageError> {
        let w = |name: &str, bytes: &[u8]| Tpm2::write_scratch(scratch, name, bytes);
        let (approved, reference) = (
            w("approved.bin", &policy.approved)?,
            w("ref.bin", POLICY_REF)?,
        );
        let operand = w("sv.bin", &policy.nv_operand())?;
        let (pub_file, priv_file) = (w("key.pub", public)?, w("key.priv", private)?);
        let ticket = self.verify_signature(scratch, pk, policy)?;
        let object = scratch.path().join("key.ctx");
        self.tool("tpm2_load")
            .args(["-Q", "-C"])
            .arg(primary)
            .arg("-u")
            .arg(&pub_file)
            .arg("-r")
            .arg(&priv_file)
            .arg("-c")
            .arg(&object)
            .run()?;
        self.flush()?;
        let session = scratch.path().join("session.ctx");
        self.tool("tpm2_startauthsession")
            .args(["-Q", "--policy-session", "-S"])
            .arg(&session)
            .run()?;
        let run = || -> Result<Secret, StorageError> {
            self.tool("tpm2_policypcr")
                .args(["-Q", "-S"])
                .arg(&session)
                .args(["-l", "sha256:11"])
                .run()?;
            // Authorized by the index itself (`authread`, empty), not by the owner.
            self.tool("tpm2_policynv")
                .args(["-Q", "-S"])
                .arg(&session)
                .arg("-i")
                .arg(&operand)
                .arg(format!("{FLOOR_INDEX:#x}"))
                .arg("ule")
                .run()?;
            self.tool("tpm2_policyauthorize")
                .args(["-Q", "-S"])
                .arg(&session)
                .arg("-i")
                .arg(&approved)
                .arg("-q")
                .arg(&reference)
                .arg("-n")
                .arg(scratch.path().join("pk.name"))
                .arg("-t")
                .arg(&ticket)
                .run()?;
            self.tool("tpm2_policypcr")
                .args(["-Q", "-S"])
                .arg(&session)
                .args(["-l", "sha256:7"])
                .run()?;
            let out = self
                .tool("tpm2_unseal")
                .arg("-c")
                .arg(&object)
                .arg("-p")
                .arg(format!("session:{}", session.display()))
                .run()?;
            Ok(Secret::new(out.stdout))
        };
        let result = run();
        let _ = self.tool("tpm2_flushcontext").arg(&session).run();
        self.flush()?;
        result
    }

    /// Why the policy failed, from what can be read: each condition that does not hold.
    fn diagnose(
        &self,
        chain: &BootChain,
        binding: &BootBinding,
        pk: &PolicyKey,
        policy: &SignedPolicy,
    ) -> Vec<String> {
        let mut why = Vec::new();
        let state = chain.secure_boot();
        if state != SecureBoot::On {
            why.push(format!(
                "Secure Boot is {} (the key was sealed with it on, and PCR 7 records it)",
                state.word()
            ));
        }
        match self.pcr(7) {
            Ok(pcr7) if hex::encode(pcr7) != binding.pcr7 => why.push(format!(
                "PCR 7 is {}…, the key was sealed at {}…: Secure Boot was turned off or its \
                 key databases (PK, KEK, db, dbx) changed since the first boot",
                short(&hex::encode(pcr7)),
                short(&binding.pcr7)
            )),
            Ok(_) => {}
            Err(e) => why.push(format!("PCR 7 cannot be read: {e}")),
        }
        if hex::encode(&pk.name) != binding.policy_key_name {
            why.push(format!(
                "this image's TPM policy key ({}) is not the key the disk key was sealed to",
                chain.policy_key.display()
            ));
        }
        match self.pcr(11) {
            Ok(pcr11) if pcr11 != policy.pcr11 => why.push(format!(
                "PCR 11 is {}…, but the signed policy of {} approves {}…: storage already \
                 unsealed in this boot (the barrier is extended), or that UKI is not the one \
                 that booted",
                short(&hex::encode(pcr11)),
                chain.uki_name(),
                short(&hex::encode(policy.pcr11))
            )),
            Ok(_) => {}
            Err(e) => why.push(format!("PCR 11 cannot be read: {e}")),
        }
        match self.floor() {
            Some(floor) if floor > policy.security_version => why.push(format!(
                "this image (security version {}) is below the anti-rollback floor ({floor})",
                policy.security_version
            )),
            Some(_) => {}
            None => why.push(format!(
                "the anti-rollback floor counter {FLOOR_INDEX:#x} is not in the TPM (was the \
                 TPM cleared?)"
            )),
        }
        if why.is_empty() {
            // Last: is the signature itself ours?
            why.extend(self.check_signature(chain, policy).err().map(|e| {
                format!(
                    "the signed policy of {} is not signed by this image's TPM policy key: {e}",
                    chain.uki_name()
                )
            }));
        }
        why
    }

    fn check_signature(
        &self,
        chain: &BootChain,
        policy: &SignedPolicy,
    ) -> Result<(), StorageError> {
        let scratch = self.scratch()?;
        let pk = self.load_policy_key(&scratch, chain)?;
        self.verify_signature(&scratch, &pk, policy).map(drop)
    }

    /// TPM2_VerifySignature of `policy` with the loaded policy key: the ticket's file, which
    /// PolicyAuthorize takes as proof.
    fn verify_signature(
        &self,
        scratch: &Scratch,
        pk: &PolicyKey,
        policy: &SignedPolicy,
    ) -> Result<PathBuf, StorageError> {
        let msg = Tpm2::write_scratch(scratch, "msg.bin", &policy.message())?;
        let sig = Tpm2::write_scratch(scratch, "sig.bin", &policy.signature)?;
        let ticket = scratch.path().join("ticket.tkt");
        self.tool("tpm2_verifysignature")
            .args(["-Q", "-c"])
            .arg(&pk.ctx)
            .args(["-g", "sha256", "-f", "rsassa", "-m"])
            .arg(&msg)
            .arg("-s")
            .arg(&sig)
            .arg("-t")
            .arg(&ticket)
            .run()?;
        self.flush()?;
        Ok(ticket)
    }
}
