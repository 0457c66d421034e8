//! The factory image: a signed update bundle stored raw at the start of the `factory`
//! partition, followed by whatever the rest of the partition holds.
//!
//! A bundle is a plain ustar stream; it ends with the two zero blocks of the tar end marker.
//! [`bundle_len`] walks the tar headers (without trusting them: the bundle reader checks every
//! entry again) to find where that marker ends, so the reader sees exactly the bundle and not
//! the partition's tail. [`verify`] reads the whole bundle once: signature chain, board
//! ([`aperture_trust::policy::check_factory`]), and every payload's size and hash, before
//! anything is written. Key expiry is not checked ([`VERIFIED_WHEN_WRITTEN`], trust's time for
//! what was verified when it was written): the factory
//! image was verified when the appliance was flashed, and a reset must still work years later.

use aperture_storage::Partition;
use aperture_trust::bundle::BundleReader;
use aperture_trust::keys::PublicKey;
use aperture_trust::manifest::Manifest;
use aperture_trust::policy::check_factory;
use aperture_trust::signing::{VerifiedManifest, VERIFIED_WHEN_WRITTEN};

use crate::io::{part_err, PartReader};
use crate::ResetError;

const BLOCK: u64 = 512;
/// A bundle has the manifest, the signature and one entry per slot artifact: far fewer.
const MAX_ENTRIES: usize = 64;

/// Length in bytes of the tar stream at the start of `part`, through its end marker.
pub fn bundle_len(part: &dyn Partition) -> Result<u64, ResetError> {
    let mut header = [0u8; BLOCK as usize];
    let mut at = 0u64;
    for entry in 0..=MAX_ENTRIES {
        if at + 2 * BLOCK > part.size() {
            break;
        }
        part.read_exact_at(&mut header, at)
            .map_err(part_err("reading the factory image in", part))?;
        if header.iter().all(|b| *b == 0) {
            if entry == 0 {
                return Err(ResetError::FactoryEmpty {
                    reason: "it starts with zeros".into(),
                });
            }
            part.read_exact_at(&mut header, at + BLOCK)
                .map_err(part_err("reading the factory image in", part))?;
            if header.iter().all(|b| *b == 0) {
                return Ok(at + 2 * BLOCK);
            }
            return Err(ResetError::FactoryEmpty {
                reason: format!("a lone zero block at byte {at}"),
            });
        }
        if &header[257..262] != b"ustar" {
            return Err(ResetError::FactoryEmpty {
                reason: format!("no ustar header at byte {at}"),
            });
        }
        let size = octal(&header[124..136]).ok_or_else(|| ResetError::FactoryEmpty {
            reason: format!("entry size at byte {at} is not octal"),
        })?;
        at = at
            .checked_add(BLOCK + size.div_ceil(BLOCK) * BLOCK)
            .ok_or_else(|| ResetError::FactoryEmpty {
                reason: "entry sizes overflow".into(),
            })?;
    }
    Err(ResetError::FactoryEmpty {
        reason: "no tar end marker inside the partition".into(),
    })
}

fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// A reader of exactly the bundle in `part`.
pub fn reader(part: &dyn Partition) -> Result<PartReader<'_>, ResetError> {
    let len = bundle_len(part)?;
    Ok(PartReader::new(part, len))
}

/// Reads and checks the whole factory bundle: signature chain against `root` (without key
/// expiry: [`VERIFIED_WHEN_WRITTEN`]), board, every payload's size and hash. Returns the
/// verified manifest. Nothing is written.
pub fn verify(
    part: &dyn Partition,
    root: &PublicKey,
    board: &str,
) -> Result<VerifiedManifest, ResetError> {
    let mut bundle = BundleReader::new(reader(part)?, root, VERIFIED_WHEN_WRITTEN);
    let manifest = bundle.read_header()?;
    check_factory(&manifest, board)?;
    bundle.verify_payloads()?;
    Ok(manifest)
}

/// A level 2 keeps config and data, so it may install the factory image only at or above the
/// anti-rollback `floor`: data written by a newer image must never meet an image the floor
/// retired (a known vulnerability could read it). Level 3 destroys the data first and may.
pub fn check_floor(manifest: &Manifest, floor: u64) -> Result<(), ResetError> {
    if manifest.security_version < floor {
        return Err(ResetError::FactoryBelowFloor {
            version: manifest.version.clone(),
            security_version: manifest.security_version,
            floor,
        });
    }
    Ok(())
}

/// The factory image's manifest with its signature chain verified against `root` (without
/// expiry: [`VERIFIED_WHEN_WRITTEN`]); no payload is read.
pub fn manifest(part: &dyn Partition, root: &PublicKey) -> Result<Manifest, ResetError> {
    let mut bundle = BundleReader::new(reader(part)?, root, VERIFIED_WHEN_WRITTEN);
    Ok(bundle.read_header()?.into_manifest())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aperture_storage::MemPartition;

    fn entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        let mut v = h;
        v.extend_from_slice(data);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    #[test]
    fn length_stops_at_the_end_marker_whatever_follows() {
        let mut img = entry("manifest.json", b"{}");
        img.extend(entry("manifest.sig", &[7u8; 600]));
        img.extend(entry("rootfs.img.zst", &[0u8; 2048]));
        let len = img.len() as u64 + 1024;
        img.extend([0u8; 1024]);
        img.extend([0xffu8; 5000]);
        let part = MemPartition::new("factory", img.clone());
        assert_eq!(bundle_len(&part).unwrap(), len);
    }

    #[test]
    fn empty_or_garbage_partitions_are_refused() {
        let part = MemPartition::new("factory", vec![0u8; 8192]);
        assert!(matches!(
            bundle_len(&part),
            Err(ResetError::FactoryEmpty { .. })
        ));
        let part = MemPartition::new("factory", vec![0x41u8; 8192]);
        let err = bundle_len(&part).unwrap_err();
        assert!(err.to_string().contains("no ustar header"), "{err}");
        let mut img = entry("manifest.json", b"{}");
        img.resize(4096, 0x41);
        let part = MemPartition::new("factory", img);
        assert!(bundle_len(&part).is_err());
    }
}
