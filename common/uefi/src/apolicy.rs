//! A UKI's signed disk-key policy: the `.apolicy` section (REPORT.md Q3, issue 18).
//!
//! The disk keys are sealed to `PolicyAuthorize(policy key, POLICY_REF)` then `PolicyPCR(7)`
//! ([`crate::policy::sealed_policy`]): any policy the build's TPM policy key signed may stand
//! in for the first step. Each UKI carries one such signed policy, its *approved policy*
//! ([`crate::policy::approved_policy`]): PCR 11 equals what the stub leaves for this very UKI,
//! and the anti-rollback floor counter is at most this image's security version. So an update
//! to a newly signed image unseals with nothing re-sealed, and an image below the floor, or
//! another UKI, cannot.
//!
//! The section is not measured by systemd-stub 252 (it is none of [`crate::PCR11_SECTIONS`]),
//! so the policy can name the PCR 11 of the UKI that carries it; it is covered by the UKI's
//! Authenticode signature, and the TPM checks its own signature anyway, so where it is kept
//! need not be trusted. Its text form, one `key value` per line:
//!
//! ```text
//! aperture-apolicy 1
//! pcr11 <64 hex>
//! security_version <decimal>
//! approved <64 hex>
//! signature <hex: RSASSA-PKCS1-v1_5 SHA-256 over approved || POLICY_REF>
//! ```

use crate::policy::{
    approved_policy, nv_index_name, TPMA_NV_AUTHREAD, TPMA_NV_AUTHWRITE, TPMA_NV_NO_DA,
    TPMA_NV_OWNERREAD, TPMA_NV_OWNERWRITE, TPMA_NV_TPM_NT_COUNTER, TPMA_NV_WRITTEN,
};
use crate::UefiError;

/// The PE section that carries the signed policy.
pub const SECTION: &str = ".apolicy";

/// The policyRef of PolicyAuthorize: a signature made for another purpose with the same key
/// does not authorize disk keys.
pub const POLICY_REF: &[u8] = b"aperture-disk-v1";

/// The anti-rollback floor counter's NV index (the updater's `Counter::SecurityFloor`).
pub const FLOOR_INDEX: u32 = 0x0150_0A70;

/// Its attributes once written, as tpm2-tools defines it with
/// `nt=counter|ownerread|ownerwrite|authread|authwrite|no_da` and the first increment sets
/// `written`; they are part of its Name, so of every approved policy.
pub const FLOOR_ATTRIBUTES: u32 = TPMA_NV_TPM_NT_COUNTER
    | TPMA_NV_OWNERREAD
    | TPMA_NV_OWNERWRITE
    | TPMA_NV_AUTHREAD
    | TPMA_NV_AUTHWRITE
    | TPMA_NV_NO_DA
    | TPMA_NV_WRITTEN;

/// The attributes above as `tpm2_nvdefine -a` takes them (before the first increment).
pub const FLOOR_ATTRIBUTES_TOOLS: &str = "nt=counter|ownerread|ownerwrite|authread|authwrite|no_da";

const MAGIC: &str = "aperture-apolicy 1";

/// The Name of the written floor counter.
pub fn floor_name() -> Vec<u8> {
    // 8 bytes of data and an empty authPolicy always encode.
    nv_index_name(FLOOR_INDEX, FLOOR_ATTRIBUTES, &[], 8).unwrap_or_default()
}

/// One UKI's signed approved policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    /// PCR 11 the policy approves (what the stub leaves for the UKI).
    pub pcr11: [u8; 32],
    /// The image's security version: the floor counter must be at most this.
    pub security_version: u64,
    /// The approved policy digest ([`approved_policy`] of the two above).
    pub approved: [u8; 32],
    /// The policy key's signature over [`SignedPolicy::message`].
    pub signature: Vec<u8>,
}

impl SignedPolicy {
    /// The policy for `pcr11` and `security_version`, to be signed (`signature` empty).
    pub fn unsigned(pcr11: [u8; 32], security_version: u64) -> SignedPolicy {
        SignedPolicy {
            pcr11,
            security_version,
            approved: approved_policy(pcr11, &floor_name(), security_version),
            signature: Vec::new(),
        }
    }

    /// What the policy key signs: `approved || POLICY_REF` (what TPM2_VerifySignature checks
    /// before PolicyAuthorize accepts the approved policy).
    pub fn message(&self) -> Vec<u8> {
        let mut m = self.approved.to_vec();
        m.extend_from_slice(POLICY_REF);
        m
    }

    /// The floor counter operand of PolicyNV: the security version as 8 bytes big-endian.
    pub fn nv_operand(&self) -> [u8; 8] {
        self.security_version.to_be_bytes()
    }

    /// The section's bytes.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{MAGIC}\npcr11 {}\nsecurity_version {}\napproved {}\nsignature {}\n",
            hex::encode(self.pcr11),
            self.security_version,
            hex::encode(self.approved),
            hex::encode(&self.signature)
        )
        .into_bytes()
    }

    /// Parse a section's bytes, and check that `approved` is the digest of `pcr11` and
    /// `security_version` (the signature is the TPM's, or `openssl`'s, to check).
    pub fn parse(bytes: &[u8]) -> Result<SignedPolicy, UefiError> {
        let bad = |reason: String| UefiError::BadSignedPolicy { reason };
        // The section's VirtualSize is exact, but a raw read may carry the file alignment's
        // zero padding.
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text =
            std::str::from_utf8(&bytes[..end]).map_err(|_| bad("it is not UTF-8 text".into()))?;
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad(format!("it does not start with {MAGIC:?}")));
        }
        let (mut pcr11, mut sv, mut approved, mut signature) = (None, None, None, None);
        for line in lines.filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| bad(format!("line {line:?} is not `key value`")))?;
            let digest = |v: &str| -> Result<[u8; 32], UefiError> {
                let b = hex::decode(v).map_err(|e| bad(format!("{key}: {e}")))?;
                b.try_into()
                    .map_err(|_| bad(format!("{key} is not 32 bytes of hex")))
            };
            match key {
                "pcr11" => pcr11 = Some(digest(value)?),
                "approved" => approved = Some(digest(value)?),
                "security_version" => {
                    sv = Some(
                        value
                            .parse::<u64>()
                            .map_err(|e| bad(format!("security_version {value:?}: {e}")))?,
                    )
                }
                "signature" => {
                    signature =
                        Some(hex::decode(value).map_err(|e| bad(format!("signature: {e}")))?)
                }
                other => return Err(bad(format!("unknown key {other:?}"))),
            }
        }
        let missing = |k: &str| bad(format!("it has no {k} line"));
        let policy = SignedPolicy {
            pcr11: pcr11.ok_or_else(|| missing("pcr11"))?,
            security_version: sv.ok_or_else(|| missing("security_version"))?,
            approved: approved.ok_or_else(|| missing("approved"))?,
            signature: signature.ok_or_else(|| missing("signature"))?,
        };
        let want = SignedPolicy::unsigned(policy.pcr11, policy.security_version).approved;
        if policy.approved != want {
            return Err(bad(format!(
                "its approved digest {} is not the policy of its pcr11 and security_version \
                 ({})",
                hex::encode(policy.approved),
                hex::encode(want)
            )));
        }
        if policy.signature.is_empty() {
            return Err(bad("its signature is empty".into()));
        }
        Ok(policy)
    }

    /// The signed policy a UKI carries, if it has the section.
    pub fn of_uki(uki: &[u8]) -> Result<Option<SignedPolicy>, UefiError> {
        crate::pe::section_data(uki, SECTION)?
            .map(SignedPolicy::parse)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_name_is_the_one_the_tpm_reported() {
        assert_eq!(FLOOR_ATTRIBUTES, 0x2206_0016);
        assert_eq!(
            hex::encode(floor_name()),
            "000b90d526a02ef9f993e2c8ca86eb9938014e1b22d507d612c42936a7747c8befd0"
        );
    }

    #[test]
    fn the_section_round_trips_and_refuses_what_does_not_add_up() {
        let mut p = SignedPolicy::unsigned([7; 32], 3);
        p.signature = vec![1, 2, 3];
        let bytes = p.encode();
        assert_eq!(SignedPolicy::parse(&bytes).unwrap(), p);
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 100]);
        assert_eq!(SignedPolicy::parse(&padded).unwrap(), p);
        assert_eq!(p.message().len(), 32 + POLICY_REF.len());
        assert_eq!(p.nv_operand(), [0, 0, 0, 0, 0, 0, 0, 3]);

        // Another security version under the same digest: refused before any TPM sees it.
        let text = String::from_utf8(bytes.clone()).unwrap();
        let forged = text.replace("security_version 3", "security_version 9");
        let err = SignedPolicy::parse(forged.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not the policy of its pcr11"), "{err}");
        for (bad, want) in [
            (
                text.replace("aperture-apolicy 1", "aperture-apolicy 2"),
                "does not start",
            ),
            (
                text.replace("signature 010203", "signature "),
                "signature is empty",
            ),
            (text.replace("pcr11 ", "pcr12 "), "unknown key"),
            (
                text.replace(&format!("pcr11 {}\n", hex::encode([7; 32])), ""),
                "no pcr11",
            ),
            (text.replace("approved ", "approved 00"), "approved"),
        ] {
            let err = SignedPolicy::parse(bad.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
            assert!(err.contains(".apolicy"), "{err}");
        }
    }

    #[test]
    fn a_policy_approves_only_its_own_pcr11_and_version() {
        let a = SignedPolicy::unsigned([1; 32], 1);
        assert_ne!(a.approved, SignedPolicy::unsigned([2; 32], 1).approved);
        assert_ne!(a.approved, SignedPolicy::unsigned([1; 32], 2).approved);
        assert_eq!(a.approved, SignedPolicy::unsigned([1; 32], 1).approved);
    }
}
