//! TPM 2.0 policy digests and object names computed offline (SHA-256 only), so the image
//! builder can compute and sign each UKI's approved policy without a TPM (the Rust port of
//! docs/research/issue-18/policy-digest.py; design in REPORT.md Q3).
//!
//! Every formula is the "policyDigest update" of a command in TPM 2.0 Library Part 3
//! (section 23, Enhanced Authorization), with structures marshalled big-endian as Part 2
//! defines them; the tests compare each one with a swtpm trial session driven by tpm2-tools 5.4.

use sha2::{Digest, Sha256};

use crate::UefiError;

/// TPM_ALG_RSA (Part 2, 6.3).
pub const TPM_ALG_RSA: u16 = 0x0001;
/// TPM_ALG_SHA256 (Part 2, 6.3): the only hash this module computes.
pub const TPM_ALG_SHA256: u16 = 0x000B;
/// TPM_ALG_NULL (Part 2, 6.3).
pub const TPM_ALG_NULL: u16 = 0x0010;

/// TPM_CC_PolicyNV (Part 2, 6.5.2).
pub const CC_POLICY_NV: u32 = 0x0000_0149;
/// TPM_CC_PolicyAuthorize (Part 2, 6.5.2).
pub const CC_POLICY_AUTHORIZE: u32 = 0x0000_016A;
/// TPM_CC_PolicyPCR (Part 2, 6.5.2).
pub const CC_POLICY_PCR: u32 = 0x0000_017F;

/// TPM_EO_EQ: operandA == operandB (Part 2, 6.8; operandA is the NV data).
pub const TPM_EO_EQ: u16 = 0x0000;
/// TPM_EO_NEQ: operandA != operandB.
pub const TPM_EO_NEQ: u16 = 0x0001;
/// TPM_EO_SIGNED_GT: A > B, signed.
pub const TPM_EO_SIGNED_GT: u16 = 0x0002;
/// TPM_EO_UNSIGNED_GT: A > B, unsigned.
pub const TPM_EO_UNSIGNED_GT: u16 = 0x0003;
/// TPM_EO_SIGNED_LT: A < B, signed.
pub const TPM_EO_SIGNED_LT: u16 = 0x0004;
/// TPM_EO_UNSIGNED_LT: A < B, unsigned.
pub const TPM_EO_UNSIGNED_LT: u16 = 0x0005;
/// TPM_EO_SIGNED_GE: A >= B, signed.
pub const TPM_EO_SIGNED_GE: u16 = 0x0006;
/// TPM_EO_UNSIGNED_GE: A >= B, unsigned.
pub const TPM_EO_UNSIGNED_GE: u16 = 0x0007;
/// TPM_EO_SIGNED_LE: A <= B, signed.
pub const TPM_EO_SIGNED_LE: u16 = 0x0008;
/// TPM_EO_UNSIGNED_LE: A <= B, unsigned: "floor counter <= this image's security version"
/// (`tpm2 policynv ... ule`).
pub const TPM_EO_UNSIGNED_LE: u16 = 0x0009;
/// TPM_EO_BITSET: all bits of B set in A.
pub const TPM_EO_BITSET: u16 = 0x000A;
/// TPM_EO_BITCLEAR: all bits of B clear in A.
pub const TPM_EO_BITCLEAR: u16 = 0x000B;

/// TPMA_NV_OWNERWRITE (Part 2, 13.4).
pub const TPMA_NV_OWNERWRITE: u32 = 1 << 1;
/// TPMA_NV_AUTHWRITE.
pub const TPMA_NV_AUTHWRITE: u32 = 1 << 2;
/// TPM_NT_COUNTER in the TPM_NT field (bits 7:4) of TPMA_NV (`nt=counter`).
pub const TPMA_NV_TPM_NT_COUNTER: u32 = 0x1 << 4;
/// TPMA_NV_OWNERREAD.
pub const TPMA_NV_OWNERREAD: u32 = 1 << 17;
/// TPMA_NV_AUTHREAD.
pub const TPMA_NV_AUTHREAD: u32 = 1 << 18;
/// TPMA_NV_NO_DA.
pub const TPMA_NV_NO_DA: u32 = 1 << 25;
/// TPMA_NV_WRITTEN: set by the TPM at the first write. It is part of the index's name, so
/// a policy naming an index names it written (a counter after its first `nvincrement`).
pub const TPMA_NV_WRITTEN: u32 = 1 << 29;

/// TPMA_OBJECT_USERWITHAUTH (Part 2, 8.3).
pub const TPMA_OBJECT_USERWITHAUTH: u32 = 1 << 6;
/// TPMA_OBJECT_DECRYPT.
pub const TPMA_OBJECT_DECRYPT: u32 = 1 << 17;
/// TPMA_OBJECT_SIGN_ENCRYPT.
pub const TPMA_OBJECT_SIGN_ENCRYPT: u32 = 1 << 18;
/// The objectAttributes tpm2-tools 5.4 `tpm2 loadexternal -G rsa -u key.pem` gives a public
/// key (no `-a`): userwithauth|decrypt|sign, 0x00060040, as `tpm2 readpublic` shows.
pub const LOADEXTERNAL_RSA_ATTRIBUTES: u32 =
    TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_DECRYPT | TPMA_OBJECT_SIGN_ENCRYPT;

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// A TPM2B: 16-bit big-endian size, then the bytes.
fn tpm2b(out: &mut Vec<u8>, what: &'static str, bytes: &[u8]) -> Result<(), UefiError> {
    let len = u16::try_from(bytes.len()).map_err(|_| UefiError::TpmBufferTooLarge {
        what,
        len: bytes.len(),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The pcrDigest argument of TPM2_PolicyPCR: SHA-256 of the selected PCRs' values
/// concatenated. The TPM concatenates them in ascending PCR number, so `values` must be in
/// that order (PCR 7 before PCR 11).
pub fn pcr_values_digest(values: &[[u8; 32]]) -> [u8; 32] {
    let parts: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
    sha256(&parts)
}

/// A TPML_PCR_SELECTION of the SHA-256 bank (Part 2, 10.6.2 and 10.9.7): count 1, hash
/// TPM_ALG_SHA256, sizeofSelect 3, then the bitmap (PCR n is bit n % 8 of byte n / 8), what
/// tpm2-tools marshals for `-l sha256:...`.
pub fn pcr_selection(pcrs: &[u32]) -> Result<Vec<u8>, UefiError> {
    let mut bitmap = [0u8; 3];
    for &pcr in pcrs {
        if pcr >= 24 {
            return Err(UefiError::PcrOutOfRange { pcr });
        }
        bitmap[pcr as usize / 8] |= 1 << (pcr % 8);
    }
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    out.push(3);
    out.extend_from_slice(&bitmap);
    Ok(out)
}

/// TPM2_PolicyPCR (Part 3, 23.7): `H(prev || TPM_CC_PolicyPCR || pcrs || pcrDigest)`, with
/// `pcrs` the TPML_PCR_SELECTION of [`pcr_selection`] and `pcr_values_digest` from
/// [`pcr_values_digest`]. PCRs are in the SHA-256 bank, 0-23.
pub fn policy_pcr(
    prev: [u8; 32],
    pcrs: &[u32],
    pcr_values_digest: [u8; 32],
) -> Result<[u8; 32], UefiError> {
    Ok(policy_pcr_encoded(
        prev,
        &pcr_selection(pcrs)?,
        pcr_values_digest,
    ))
}

/// [`policy_pcr`] with the selection already marshalled.
fn policy_pcr_encoded(prev: [u8; 32], selection: &[u8], pcr_values_digest: [u8; 32]) -> [u8; 32] {
    sha256(&[
        &prev,
        &CC_POLICY_PCR.to_be_bytes(),
        selection,
        &pcr_values_digest,
    ])
}

/// [`pcr_selection`] of PCR 7 alone.
const SELECT_PCR7: [u8; 10] = [0, 0, 0, 1, 0x00, 0x0B, 3, 0x80, 0x00, 0x00];
/// [`pcr_selection`] of PCR 11 alone.
const SELECT_PCR11: [u8; 10] = [0, 0, 0, 1, 0x00, 0x0B, 3, 0x00, 0x08, 0x00];

/// TPM2_PolicyNV (Part 3, 23.9): `H(prev || TPM_CC_PolicyNV || args || nvIndex->Name)` with
/// `args = H(operandB || offset || operation)`. The authorizing handle (`-C o` or the index
/// itself) is not part of it.
pub fn policy_nv(prev: [u8; 32], operand: &[u8], offset: u16, op: u16, nv_name: &[u8]) -> [u8; 32] {
    let args = sha256(&[operand, &offset.to_be_bytes(), &op.to_be_bytes()]);
    sha256(&[&prev, &CC_POLICY_NV.to_be_bytes(), &args, nv_name])
}

/// TPM2_PolicyAuthorize (Part 3, 23.16): the session digest is first **reset to zero** (the
/// approved policy it replaced is checked, not hashed), then updated in the two steps of
/// PolicyUpdate(): `d = H(0^32 || TPM_CC_PolicyAuthorize || keySign.name)`, then
/// `H(d || policyRef)`. Hence no previous digest argument: nothing before PolicyAuthorize
/// survives it (the swtpm test shows a PolicyPCR before it changes nothing).
pub fn policy_authorize(key_name: &[u8], policy_ref: &[u8]) -> [u8; 32] {
    let step = sha256(&[&[0u8; 32], &CC_POLICY_AUTHORIZE.to_be_bytes(), key_name]);
    sha256(&[&step, policy_ref])
}

/// The Name of an NV index (Part 1, "Names"; Part 2, 13.5 TPMS_NV_PUBLIC):
/// `TPM_ALG_SHA256 || SHA-256(nvIndex || nameAlg || attributes || authPolicy || dataSize)`,
/// its name algorithm SHA-256. Include [`TPMA_NV_WRITTEN`] in `attributes` once the index has
/// been written: the name changes with it.
pub fn nv_index_name(
    index: u32,
    attributes: u32,
    auth_policy: &[u8],
    data_size: u16,
) -> Result<Vec<u8>, UefiError> {
    let mut public = Vec::with_capacity(14 + auth_policy.len());
    public.extend_from_slice(&index.to_be_bytes());
    public.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    public.extend_from_slice(&attributes.to_be_bytes());
    tpm2b(&mut public, "NV authPolicy", auth_policy)?;
    public.extend_from_slice(&data_size.to_be_bytes());
    Ok(name_of(&public))
}

/// The Name of an RSA public key loaded with `tpm2 loadexternal -G rsa -u key.pem`
/// (tpm2-tools 5.4): `TPM_ALG_SHA256 || SHA-256(TPMT_PUBLIC)` (Part 2, 12.2.4), with
/// type TPM_ALG_RSA, nameAlg SHA-256, `object_attributes` (tpm2-tools gives
/// [`LOADEXTERNAL_RSA_ATTRIBUTES`]), an empty authPolicy, parameters {symmetric NULL,
/// scheme NULL, keyBits, `exponent`} and unique = the modulus.
///
/// `modulus` is big-endian; leading zero bytes (as in DER) are dropped. `exponent` is
/// written as given: tpm2-tools writes 65537 itself, not 0, the TPM's shorthand for it; the two
/// give different names (checked against `tpm2 readpublic` on swtpm).
pub fn rsa_public_key_name(
    modulus: &[u8],
    exponent: u32,
    object_attributes: u32,
) -> Result<Vec<u8>, UefiError> {
    let first = modulus
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(modulus.len());
    let modulus = &modulus[first..];
    let bits = match modulus.first() {
        Some(top) => 8 * modulus.len() as u64 - u64::from(top.leading_zeros()),
        None => 0,
    };
    if ![1024, 2048, 3072, 4096].contains(&bits) {
        return Err(UefiError::BadRsaModulus { bits });
    }
    let mut public = Vec::with_capacity(20 + modulus.len());
    public.extend_from_slice(&TPM_ALG_RSA.to_be_bytes());
    public.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    public.extend_from_slice(&object_attributes.to_be_bytes());
    tpm2b(&mut public, "key authPolicy", &[])?;
    // TPMS_RSA_PARMS: a NULL symmetric and a NULL scheme carry no further fields.
    public.extend_from_slice(&TPM_ALG_NULL.to_be_bytes());
    public.extend_from_slice(&TPM_ALG_NULL.to_be_bytes());
    public.extend_from_slice(&(bits as u16).to_be_bytes());
    public.extend_from_slice(&exponent.to_be_bytes());
    tpm2b(&mut public, "RSA modulus", modulus)?;
    Ok(name_of(&public))
}

fn name_of(public: &[u8]) -> Vec<u8> {
    let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&sha256(&[public]));
    name
}

/// A UKI's approved policy (REPORT.md Q3, what `policy-digest.py approved` prints):
/// PolicyPCR(11 = `pcr11`) then PolicyNV(the floor counter <= `security_version`), the
/// operand the version as 8 bytes big-endian at offset 0, compared [`TPM_EO_UNSIGNED_LE`].
/// The builder signs `approved || policyRef` with the policy key.
pub fn approved_policy(pcr11: [u8; 32], floor_nv_name: &[u8], security_version: u64) -> [u8; 32] {
    let pcr = policy_pcr_encoded([0; 32], &SELECT_PCR11, pcr_values_digest(&[pcr11]));
    policy_nv(
        pcr,
        &security_version.to_be_bytes(),
        0,
        TPM_EO_UNSIGNED_LE,
        floor_nv_name,
    )
}

/// The sealed disk key's authPolicy (REPORT.md Q3): PolicyAuthorize(policy key, `policy_ref`)
/// then PolicyPCR(7 = `pcr7`, the value read at the first boot).
pub fn sealed_policy(policy_key_name: &[u8], policy_ref: &[u8], pcr7: [u8; 32]) -> [u8; 32] {
    policy_pcr_encoded(
        policy_authorize(policy_key_name, policy_ref),
        &SELECT_PCR7,
        pcr_values_digest(&[pcr7]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::apolicy::FLOOR_ATTRIBUTES;

    #[test]
    fn floor_counter_attributes_are_the_reports_word() {
        assert_eq!(FLOOR_ATTRIBUTES, 0x2206_0016);
        assert_eq!(LOADEXTERNAL_RSA_ATTRIBUTES, 0x0006_0040);
    }

    /// evidence-policy-authorize-nv.log: "NV name: TPM 000b90d5…c8befd0 / offline …".
    #[test]
    fn nv_name_of_the_floor_counter_is_the_one_the_tpm_reported() {
        let name = nv_index_name(0x0150_0A70, FLOOR_ATTRIBUTES, &[], 8).unwrap();
        assert_eq!(
            hex::encode(name),
            "000b90d526a02ef9f993e2c8ca86eb9938014e1b22d507d612c42936a7747c8befd0"
        );
    }

    #[test]
    fn pcr_selection_encodes_the_bitmap() {
        assert_eq!(
            hex::encode(pcr_selection(&[11]).unwrap()),
            "00000001000b03000800"
        );
        assert_eq!(
            hex::encode(pcr_selection(&[0, 7, 23, 7]).unwrap()),
            "00000001000b03810080"
        );
        assert_eq!(pcr_selection(&[7]).unwrap(), SELECT_PCR7);
        assert_eq!(pcr_selection(&[11]).unwrap(), SELECT_PCR11);
        assert_eq!(
            policy_pcr([0; 32], &[24], [0; 32]),
            Err(UefiError::PcrOutOfRange { pcr: 24 })
        );
    }

    /// The formulas written out independently of the helpers above.
    #[test]
    fn digests_follow_the_part_3_formulas() {
        let h = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
        let pcr11 = [0x11u8; 32];
        let mut m = vec![0u8; 32];
        m.extend_from_slice(&hex::decode("0000017f00000001000b03000800").unwrap());
        m.extend_from_slice(&h(&pcr11));
        let after_pcr = h(&m);
        assert_eq!(
            policy_pcr([0; 32], &[11], pcr_values_digest(&[pcr11])),
            Ok(after_pcr)
        );

        let nv_name = nv_index_name(0x0150_0A70, FLOOR_ATTRIBUTES, &[], 8).unwrap();
        // operandB = sv 3 as 8 bytes, offset 0, operation TPM_EO_UNSIGNED_LE.
        let args = h(&hex::decode("000000000000000300000009").unwrap());
        let mut m = after_pcr.to_vec();
        m.extend_from_slice(&[0, 0, 1, 0x49]);
        m.extend_from_slice(&args);
        m.extend_from_slice(&nv_name);
        assert_eq!(approved_policy(pcr11, &nv_name, 3), h(&m));

        let key_name = [0xabu8; 34];
        let mut m = vec![0u8; 32];
        m.extend_from_slice(&[0, 0, 1, 0x6a]);
        m.extend_from_slice(&key_name);
        let mut m2 = h(&m).to_vec();
        m2.extend_from_slice(b"aperture-disk-v1");
        assert_eq!(policy_authorize(&key_name, b"aperture-disk-v1"), h(&m2));
    }

    #[test]
    fn rsa_modulus_must_be_a_whole_key_size() {
        let mut modulus = vec![0xc5u8; 256];
        let name = rsa_public_key_name(&modulus, 65537, LOADEXTERNAL_RSA_ATTRIBUTES).unwrap();
        assert_eq!(name.len(), 34);
        assert_eq!(&name[..2], &[0, 0x0b]);
        // A DER-style leading zero is dropped, so the name is the same.
        let mut der = vec![0u8];
        der.extend_from_slice(&modulus);
        assert_eq!(
            rsa_public_key_name(&der, 65537, LOADEXTERNAL_RSA_ATTRIBUTES).unwrap(),
            name
        );
        modulus[0] = 0x45;
        assert_eq!(
            rsa_public_key_name(&modulus, 65537, LOADEXTERNAL_RSA_ATTRIBUTES),
            Err(UefiError::BadRsaModulus { bits: 2047 })
        );
        assert_eq!(
            rsa_public_key_name(&[], 65537, LOADEXTERNAL_RSA_ATTRIBUTES),
            Err(UefiError::BadRsaModulus { bits: 0 })
        );
    }
}
