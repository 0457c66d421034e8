//! PCR 11 as systemd-stub 252 leaves it, predicted from a UKI's bytes (the Rust port of
//! docs/research/issue-18/pcr11-predict.py, whose value equalled the PCR 11 read in a
//! Secure Boot VM).
//!
//! What the stub does (`linuxx64.efi.stub(7)`, "TPM PCR Notes"; src/boot/efi/stub.c and pe.c
//! in systemd 252): it locates the sections `.linux .osrel .cmdline .initrd .splash .dtb
//! .pcrsig .pcrpkey` in the loaded image, and for each one found, in that order, except
//! `.pcrsig` (the signature of the expected value cannot be an input to it) and except those
//! with VirtualSize 0 ("not found" to the stub), it measures into PCR 11 first the section
//! name with its NUL, then the section's VirtualSize bytes in memory. Each measurement is a
//! TPM2_PCR_Extend of the data's SHA-256 (TCG2 HashLogExtendEvent):
//! `PCR := SHA-256(PCR || SHA-256(data))`, from 32 zero bytes at reset.
//!
//! Two details of 252's `locate_sections()` are reproduced because they decide which bytes
//! are measured: a table name matches when its first strlen(wanted) bytes equal the wanted
//! name (`.initrd2` counts as `.initrd`), and when several match the last one in the table
//! wins. [`crate::check_section_name`] keeps [`crate::assemble_uki`] from writing such names.

use sha2::{Digest, Sha256};

use crate::pe;
use crate::UefiError;

/// The sections systemd-stub 252 measures into PCR 11, in measuring order (`.pcrsig` is
/// never measured).
pub const PCR11_SECTIONS: [&str; 7] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];

/// One measurement the stub makes into PCR 11.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcr11Event {
    /// The section it belongs to (".linux").
    pub section: &'static str,
    /// Whether this is the name measurement (else the section's contents).
    pub is_name: bool,
    /// SHA-256 of the measured bytes: what TPM2_PCR_Extend receives.
    pub digest: [u8; 32],
}

/// `SHA-256(pcr || digest)`: TPM2_PCR_Extend of a SHA-256 bank (TPM 2.0 Part 1, "Extend of a
/// PCR").
pub fn extend(pcr: [u8; 32], digest: [u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// [`extend`] with the SHA-256 of `data`: what a measurement of `data` does (systemd-pcrphase's
/// phase words, the storage barrier word).
pub fn extend_data(pcr: [u8; 32], data: &[u8]) -> [u8; 32] {
    extend(pcr, Sha256::digest(data).into())
}

/// The digests systemd-stub 252 extends into PCR 11 for this UKI, in order (what
/// `pcr11-predict.py --events` prints); replay them with `tpm2 pcrextend` to stand in for the
/// stub in a software TPM.
pub fn pcr11_events(uki: &[u8]) -> Result<Vec<Pcr11Event>, UefiError> {
    let headers = pe::parse(uki)?;
    let mut events = Vec::new();
    for wanted in PCR11_SECTIONS {
        // 252's rule: prefix comparison over the 8-byte name, the last match wins.
        let Some(section) = headers
            .sections
            .iter()
            .rev()
            .find(|s| s.name.starts_with(wanted.as_bytes()))
        else {
            continue;
        };
        if section.virtual_size == 0 {
            continue;
        }
        let mut name = Vec::with_capacity(wanted.len() + 1);
        name.extend_from_slice(wanted.as_bytes());
        name.push(0);
        events.push(Pcr11Event {
            section: wanted,
            is_name: true,
            digest: Sha256::digest(&name).into(),
        });
        events.push(Pcr11Event {
            section: wanted,
            is_name: false,
            digest: loaded_digest(uki, section),
        });
    }
    Ok(events)
}

/// PCR 11 (SHA-256 bank) after systemd-stub 252 has measured this UKI, before anything else
/// (systemd-pcrphase, our storage barrier) extends it. The value a policy on PCR 11 names.
pub fn predict_pcr11(uki: &[u8]) -> Result<[u8; 32], UefiError> {
    Ok(pcr11_events(uki)?
        .iter()
        .fold([0u8; 32], |pcr, e| extend(pcr, e.digest)))
}

/// SHA-256 of the section's VirtualSize bytes as loaded: its raw data, then the zeros the
/// loader fills in when VirtualSize exceeds SizeOfRawData. (pcr11-predict.py read the file
/// past SizeOfRawData instead; the two agree on every section we write, whose VirtualSize is
/// never larger.)
fn loaded_digest(uki: &[u8], section: &pe::RawSection) -> [u8; 32] {
    let raw = section.loaded_bytes(uki);
    let mut h = Sha256::new();
    h.update(raw);
    let mut zeros = section.virtual_size as usize - raw.len();
    let block = [0u8; 4096];
    while zeros > 0 {
        let n = zeros.min(block.len());
        h.update(&block[..n]);
        zeros -= n;
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble_uki;
    use crate::testpe::synthetic_stub;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    /// The chain written out by hand, from the definition, for a UKI with .osrel, .cmdline
    /// and .linux (no .initrd): the order is the stub's, not the file's.
    #[test]
    fn prediction_is_the_hand_computed_chain_in_stub_order() {
        let uki = assemble_uki(
            &synthetic_stub(),
            &[
                (".osrel", b"ID=aperture\n"),
                (".cmdline", b"quiet"),
                (".linux", b"MZ fake kernel"),
            ],
        )
        .unwrap();
        let mut pcr = [0u8; 32];
        for (name, data) in [
            (&b".linux\0"[..], &b"MZ fake kernel"[..]),
            (b".osrel\0", b"ID=aperture\n"),
            (b".cmdline\0", b"quiet"),
        ] {
            let mut h = Sha256::new();
            h.update(pcr);
            h.update(sha(name));
            pcr = h.finalize().into();
            let mut h = Sha256::new();
            h.update(pcr);
            h.update(sha(data));
            pcr = h.finalize().into();
        }
        assert_eq!(predict_pcr11(&uki).unwrap(), pcr);
        let events = pcr11_events(&uki).unwrap();
        assert_eq!(events.len(), 6);
        assert_eq!(events[0].section, ".linux");
        assert!(events[0].is_name);
        assert_eq!(events[1].digest, sha(b"MZ fake kernel"));
    }

    #[test]
    fn a_uki_without_measured_sections_leaves_zero() {
        let uki = assemble_uki(&synthetic_stub(), &[(".other", b"x")]).unwrap();
        assert_eq!(predict_pcr11(&uki).unwrap(), [0u8; 32]);
    }

    #[test]
    fn virtual_size_beyond_raw_data_is_zero_filled_and_zero_size_is_absent() {
        let mut uki = assemble_uki(&synthetic_stub(), &[(".cmdline", b"abc")]).unwrap();
        let table = crate::pe::parse(&uki).unwrap().section_table_end() - 40;
        // VirtualSize 3 -> 0x300 (raw data is 0x200 bytes: "abc" and padding).
        crate::pe::put32(&mut uki, table + 8, 0x300);
        let events = pcr11_events(&uki).unwrap();
        let mut expected = b"abc".to_vec();
        expected.resize(0x300, 0);
        assert_eq!(events[1].digest, sha(&expected));
        crate::pe::put32(&mut uki, table + 8, 0);
        assert!(pcr11_events(&uki).unwrap().is_empty());
    }

    #[test]
    fn the_stub_matches_names_by_prefix_and_the_last_match_wins() {
        let refused = assemble_uki(
            &synthetic_stub(),
            &[(".initrd", b"first"), (".initrdX", b"second")],
        );
        assert!(matches!(refused, Err(UefiError::BadSectionName { .. })));
        // Write the name by hand, as another tool could.
        let mut uki = assemble_uki(
            &synthetic_stub(),
            &[(".initrd", b"first"), (".other", b"second")],
        )
        .unwrap();
        let table = crate::pe::parse(&uki).unwrap().section_table_end() - 40;
        uki[table..table + 8].copy_from_slice(b".initrdX");
        let events = pcr11_events(&uki).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].digest, sha(b"second"));
    }

    #[test]
    fn extend_data_is_extend_of_the_digest() {
        let word = b"aperture-storage-done";
        assert_eq!(extend_data([7; 32], word), extend([7; 32], sha(word)));
    }
}
