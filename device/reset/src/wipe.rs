//! Secure wipe of one encrypted partition, in the order ARCHITECTURE.md "Reset rules" asks:
//!
//! 1. [`erase_keyslots`]: `cryptsetup erase` destroys every keyslot (cryptsetup overwrites the
//!    keyslot areas). From here on the data is unreadable: this is the crypto-erase.
//! 2. [`zero_header`]: zeros over the whole LUKS metadata area (both binary headers, both JSON
//!    areas, the keyslots area), its size read from the header before the wipe began.
//! 3. [`scrub`]: discard the partition and read a sample back; if discard is unsupported or
//!    the sample is not all zeros, overwrite the whole partition with zeros. Before the
//!    discard a probe pattern is written into some of the sampled blocks, so that a device
//!    which accepts discards but keeps the data is caught even where the partition was
//!    mostly unwritten (and so read as zeros anyway).
//!
//! and [`check`], what `--verify` reports afterwards: LUKS magic anywhere a header may start,
//! and the fraction of zero bytes over a full read of the partition.

use std::fmt;

use aperture_storage::luks::{self, MagicFound};
use aperture_storage::{Crypt, Partition, StorageError};
use serde::Serialize;

use crate::io::{count_zeros, part_err, zero_range, CHUNK};
use crate::seams::{Discard, DiscardError};
use crate::ResetError;

/// Blocks read back after a discard, spread evenly over the partition (plus its first and
/// last 64 KiB).
pub const SAMPLE_BLOCKS: u64 = 64;
/// Bytes per sampled block.
pub const SAMPLE_BLOCK: usize = 4096;

/// Step 1: destroy every keyslot. A partition without a LUKS header needs nothing. A failing
/// `cryptsetup erase` (a damaged header) is reported and tolerated, because step 2 zeroes
/// the keyslots area anyway; an I/O error (a power cut) is not.
pub fn erase_keyslots(crypt: &dyn Crypt, part: &dyn Partition) -> Result<(), ResetError> {
    match crypt.erase(part) {
        Ok(()) => Ok(()),
        Err(e @ StorageError::Command { .. }) => {
            tracing::warn!(
                "cryptsetup erase on {} failed ({e}); the keyslots area is zeroed next",
                part.describe()
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The bytes to zero in step 2: what the header says, or cryptsetup's default area if it
/// cannot be read.
pub fn header_area(part: &dyn Partition) -> Result<u64, ResetError> {
    let header = luks::read_header(part)?;
    Ok(luks::metadata_area(header.as_ref(), part.size()))
}

/// Step 2: zeros over `bytes` bytes from the start.
pub fn zero_header(part: &dyn Partition, bytes: u64) -> Result<(), ResetError> {
    zero_range(part, 0, bytes)
}

/// How a partition was scrubbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScrubMethod {
    /// Discarded, and the sample read back as zeros.
    Discard,
    /// Overwritten with zeros.
    Overwrite,
}

/// Bytes written into each probe block before a discard.
const PROBE: &[u8] = b"aperture-reset discard probe: this block must read back as zeros ";
/// Sampled blocks that get the probe pattern (spread over the partition, both ends included).
const PROBE_BLOCKS: usize = 8;

/// Step 3: discard, check a sample, overwrite if needed. Returns what was done.
pub fn scrub(part: &dyn Partition, discard: &dyn Discard) -> Result<ScrubMethod, ResetError> {
    let offsets = sample_offsets(part.size());
    if !offsets.is_empty() {
        let block: Vec<u8> = PROBE.iter().copied().cycle().take(SAMPLE_BLOCK).collect();
        let step = (offsets.len() / PROBE_BLOCKS).max(1);
        let mut probes: Vec<u64> = offsets.iter().step_by(step).copied().collect();
        probes.push(offsets[offsets.len() - 1]);
        for offset in probes {
            part.write_all_at(&block, offset)
                .map_err(part_err("writing a discard probe to", part))?;
        }
        part.sync().map_err(part_err("syncing", part))?;
    }
    match discard.discard(part) {
        Ok(()) => {
            if sample_is_zero(part)? {
                return Ok(ScrubMethod::Discard);
            }
            tracing::warn!(
                "{}: discarded blocks do not read back as zeros; overwriting instead",
                part.describe()
            );
        }
        Err(DiscardError::Unsupported(why)) => {
            tracing::info!("{}: {why}; overwriting with zeros", part.describe());
        }
        Err(DiscardError::Failed(why)) => {
            if why.contains("injected power cut") {
                return Err(ResetError::InjectedFault { point: why });
            }
            tracing::warn!("{}: discard failed ({why}); overwriting", part.describe());
        }
    }
    zero_range(part, 0, part.size())?;
    if !sample_is_zero(part)? {
        return Err(ResetError::malformed(
            part.describe(),
            "zeros written over it do not read back: the medium is failing",
        ));
    }
    Ok(ScrubMethod::Overwrite)
}

/// Offsets of the sampled blocks.
fn sample_offsets(size: u64) -> Vec<u64> {
    let block = SAMPLE_BLOCK as u64;
    let last = size.saturating_sub(block);
    let mut v: Vec<u64> = (0..SAMPLE_BLOCKS)
        .map(|i| (last / SAMPLE_BLOCKS * i) / block * block)
        .collect();
    for edge in 0..16 {
        v.push(edge * block);
        v.push(last.saturating_sub(edge * block));
    }
    v.sort_unstable();
    v.dedup();
    v.retain(|o| o + block <= size);
    v
}

/// Whether every sampled block reads as zeros.
pub fn sample_is_zero(part: &dyn Partition) -> Result<bool, ResetError> {
    let mut buf = vec![0u8; SAMPLE_BLOCK];
    for offset in sample_offsets(part.size()) {
        part.read_exact_at(&mut buf, offset)
            .map_err(part_err("reading back", part))?;
        if buf.iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What `--verify` found on one partition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeCheck {
    /// The GPT label.
    pub label: String,
    /// The partition as opened.
    pub partition: String,
    /// Where LUKS magic was found.
    pub luks_magic: MagicFound,
    /// Bytes read.
    pub bytes: u64,
    /// Bytes that were zero.
    pub zero_bytes: u64,
    /// `zero_bytes / bytes`.
    pub zero_fraction: f64,
}

/// Reads the whole partition back.
pub fn check(part: &dyn Partition) -> Result<VolumeCheck, ResetError> {
    let luks_magic = luks::find_magic(part)?;
    let mut buf = vec![0u8; CHUNK];
    let (mut at, mut zeros) = (0u64, 0u64);
    while at < part.size() {
        let n = (part.size() - at).min(CHUNK as u64) as usize;
        part.read_exact_at(&mut buf[..n], at)
            .map_err(part_err("reading", part))?;
        zeros += count_zeros(&buf[..n]);
        at += n as u64;
    }
    Ok(VolumeCheck {
        label: part.label().to_string(),
        partition: part.describe(),
        luks_magic,
        bytes: at,
        zero_bytes: zeros,
        zero_fraction: if at == 0 {
            1.0
        } else {
            zeros as f64 / at as f64
        },
    })
}

/// What `--verify` reports for all wiped partitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    /// One entry per partition.
    pub volumes: Vec<VolumeCheck>,
    /// No LUKS header survived anywhere.
    pub ok: bool,
}

impl VerifyReport {
    /// A report over `volumes`.
    pub fn new(volumes: Vec<VolumeCheck>) -> VerifyReport {
        let ok = volumes.iter().all(|v| !v.luks_magic.any());
        VerifyReport { volumes, ok }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for v in &self.volumes {
            let magic = match (v.luks_magic.primary, v.luks_magic.secondary) {
                (false, None) => "no LUKS header".to_string(),
                (true, None) => "LUKS HEADER PRESENT (primary at 0)".to_string(),
                (false, Some(o)) => format!("LUKS HEADER PRESENT (secondary at {o})"),
                (true, Some(o)) => format!("LUKS HEADER PRESENT (primary at 0, secondary at {o})"),
            };
            writeln!(
                f,
                "{} ({}): {magic}; {:.2}% zero bytes ({} of {} bytes)",
                v.label,
                v.partition,
                v.zero_fraction * 100.0,
                v.zero_bytes,
                v.bytes
            )?;
        }
        write!(
            f,
            "{}",
            if self.ok {
                "verify: ok, no LUKS header survived"
            } else {
                "verify: FAILED, a LUKS header survived"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::{FakeDiscard, FakeDiscardMode};
    use aperture_storage::{FakeCrypt, Key, MemPartition};

    fn formatted() -> (MemPartition, FakeCrypt) {
        let part = MemPartition::new("data", vec![0x33u8; 4 << 20]);
        let crypt = FakeCrypt::new("/dev/mapper".into());
        crypt
            .format(&part, &Key::random().unwrap(), "data")
            .unwrap();
        (part, crypt)
    }

    #[test]
    fn full_wipe_leaves_zeros_and_no_magic_for_every_discard_kind() {
        for (mode, method) in [
            (FakeDiscardMode::Zeroes, ScrubMethod::Discard),
            (FakeDiscardMode::Unsupported, ScrubMethod::Overwrite),
            (FakeDiscardMode::LeavesData, ScrubMethod::Overwrite),
        ] {
            let (part, crypt) = formatted();
            let before = check(&part).unwrap();
            assert!(before.luks_magic.primary && before.luks_magic.secondary.is_some());
            erase_keyslots(&crypt, &part).unwrap();
            let area = header_area(&part).unwrap();
            assert_eq!(area, FakeCrypt::DATA_OFFSET);
            zero_header(&part, area).unwrap();
            assert!(!luks::find_magic(&part).unwrap().any());
            assert_eq!(
                scrub(&part, &FakeDiscard::new(mode)).unwrap(),
                method,
                "{mode:?}"
            );
            let after = VerifyReport::new(vec![check(&part).unwrap()]);
            assert!(after.ok);
            assert_eq!(after.volumes[0].zero_fraction, 1.0);
            assert!(after.to_string().contains("100.00% zero bytes"), "{after}");
        }
    }

    #[test]
    fn report_fails_when_a_header_survives() {
        let (part, _) = formatted();
        let report = VerifyReport::new(vec![check(&part).unwrap()]);
        assert!(!report.ok);
        let text = report.to_string();
        assert!(
            text.contains("LUKS HEADER PRESENT (primary at 0, secondary at 16384)"),
            "{text}"
        );
        assert!(text.ends_with("a LUKS header survived"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["volumes"][0]["luks_magic"]["primary"], true);
    }

    #[test]
    fn sample_covers_both_ends_and_the_middle() {
        let offsets = sample_offsets(64 << 20);
        assert!(offsets.contains(&0));
        assert!(offsets.contains(&((64 << 20) - 4096)));
        assert!(offsets.len() > 64);
        assert!(sample_offsets(1024).is_empty());
    }
}
