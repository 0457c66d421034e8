//! Reading LUKS headers straight from a partition: is there one (primary or secondary), and how
//! many bytes at the start of the partition hold metadata and keyslots. Reset zeroes exactly
//! that area after `cryptsetup erase`; `--verify` looks for the magic afterwards.
//!
//! LUKS2 on-disk format (cryptsetup `docs/on-disk-format-luks2.pdf`, section 2): two copies of
//! a 4096-byte binary header each followed by a JSON area, `hdr_size` bytes per copy; the
//! primary at offset 0 with magic `LUKS\xba\xbe`, the secondary at `hdr_size` with magic
//! `SKUL\xba\xbe` (one of the fixed offsets in [`SECONDARY_OFFSETS`]); then the keyslots area
//! (`config.keyslots_size`), then the data segment. All integers big-endian; JSON numbers of
//! 64-bit values are strings. LUKS1 (`docs/on-disk-format.pdf`): one 592-byte header, key
//! material up to `payload_offset` sectors.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::disk::Partition;
use crate::StorageError;

/// Magic of a primary LUKS header (LUKS1 and LUKS2).
pub const LUKS_MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Magic of a LUKS2 secondary header.
pub const LUKS2_SECONDARY_MAGIC: [u8; 6] = *b"SKUL\xba\xbe";
/// Where a LUKS2 secondary header may start (the primary's `hdr_size`), from the spec.
pub const SECONDARY_OFFSETS: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
/// Bytes zeroed when no header can be parsed any more (a wipe resumed after the header was
/// partly zeroed, or a damaged header): cryptsetup's default LUKS2 metadata plus keyslots
/// area, which is also the largest area it ever allocates by default.
pub const DEFAULT_METADATA_AREA: u64 = 16 << 20;
/// Size of a LUKS2 binary header.
pub const LUKS2_BINARY_HEADER: u64 = 4096;
/// Largest `hdr_size` the spec allows (4 MiB).
const MAX_HDR_SIZE: u64 = 0x400000;

/// What a LUKS header says about its own extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksHeader {
    /// 1 or 2.
    pub version: u16,
    /// LUKS2: size of one binary header plus its JSON area; LUKS1: 592.
    pub hdr_size: u64,
    /// LUKS2 `config.keyslots_size`.
    pub keyslots_size: Option<u64>,
    /// Every keyslot's area as (offset, size).
    pub keyslot_areas: Vec<(u64, u64)>,
    /// Offset of the first data segment (LUKS1: payload offset).
    pub data_offset: Option<u64>,
}

impl LuksHeader {
    /// Bytes from the start of the partition that hold LUKS metadata and key material: both
    /// binary headers and JSON areas, the keyslots area and every keyslot area, up to the
    /// data segment. Never less than the two header copies.
    pub fn metadata_end(&self) -> u64 {
        let mut end = match self.version {
            2 => 2 * self.hdr_size,
            _ => self.hdr_size,
        };
        if let Some(k) = self.keyslots_size {
            end = end.max((2 * self.hdr_size).saturating_add(k));
        }
        for (offset, size) in &self.keyslot_areas {
            end = end.max(offset.saturating_add(*size));
        }
        if let Some(d) = self.data_offset {
            end = end.max(d);
        }
        end
    }
}

/// Where LUKS magic was found on a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MagicFound {
    /// The primary magic at offset 0.
    pub primary: bool,
    /// The offset of a LUKS2 secondary header, if one is there.
    pub secondary: Option<u64>,
}

impl MagicFound {
    /// Whether any LUKS header survives.
    pub fn any(&self) -> bool {
        self.primary || self.secondary.is_some()
    }
}

/// Looks for the primary magic at 0 and a secondary header at every offset the spec allows
/// (within the partition).
pub fn find_magic(part: &dyn Partition) -> Result<MagicFound, StorageError> {
    let mut found = MagicFound {
        primary: read_magic(part, 0)? == Some(LUKS_MAGIC),
        secondary: None,
    };
    for offset in SECONDARY_OFFSETS {
        if read_magic(part, offset)? == Some(LUKS2_SECONDARY_MAGIC) {
            found.secondary = Some(offset);
            break;
        }
    }
    Ok(found)
}

/// Whether the partition starts with a LUKS header (primary magic).
pub fn is_luks(part: &dyn Partition) -> Result<bool, StorageError> {
    Ok(read_magic(part, 0)? == Some(LUKS_MAGIC))
}

fn read_magic(part: &dyn Partition, offset: u64) -> Result<Option<[u8; 6]>, StorageError> {
    if offset + 6 > part.size() {
        return Ok(None);
    }
    let mut magic = [0u8; 6];
    part.read_exact_at(&mut magic, offset)
        .map_err(|e| io_err(part, e))?;
    Ok(Some(magic))
}

fn io_err(part: &dyn Partition, e: std::io::Error) -> StorageError {
    StorageError::Io {
        op: "reading the LUKS header of",
        path: part.describe().into(),
        source: e,
    }
}

/// The header of the partition, from the primary copy or, if that is gone, the secondary;
/// `Ok(None)` if neither is there or neither parses.
pub fn read_header(part: &dyn Partition) -> Result<Option<LuksHeader>, StorageError> {
    let magic = find_magic(part)?;
    if magic.primary {
        if let Ok(h) = parse_at(part, 0) {
            return Ok(Some(h));
        }
    }
    if let Some(offset) = magic.secondary {
        if let Ok(h) = parse_at(part, offset) {
            return Ok(Some(h));
        }
    }
    Ok(None)
}

/// The LUKS2 label (binary header bytes 24..72) of the primary header, or of the secondary
/// if the primary is gone; `None` without a LUKS2 header or with an empty label.
pub fn read_label(part: &dyn Partition) -> Result<Option<String>, StorageError> {
    let magic = find_magic(part)?;
    let at = match (magic.primary, magic.secondary) {
        (true, _) => 0,
        (false, Some(offset)) => offset,
        (false, None) => return Ok(None),
    };
    let mut bin = [0u8; 72];
    part.read_exact_at(&mut bin, at)
        .map_err(|e| io_err(part, e))?;
    if u16::from_be_bytes([bin[6], bin[7]]) != 2 {
        return Ok(None);
    }
    let field = &bin[24..72];
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let label = String::from_utf8_lossy(&field[..end]).into_owned();
    Ok((!label.is_empty()).then_some(label))
}

fn parse_at(part: &dyn Partition, offset: u64) -> Result<LuksHeader, StorageError> {
    let what = || format!("LUKS header of {} at byte {offset}", part.describe());
    let mut bin = [0u8; 512];
    if offset + 512 > part.size() {
        return Err(StorageError::malformed(
            what(),
            "it passes the end of the partition",
        ));
    }
    part.read_exact_at(&mut bin, offset)
        .map_err(|e| io_err(part, e))?;
    let version = u16::from_be_bytes([bin[6], bin[7]]);
    match version {
        1 => {
            // LUKS1: payload offset in 512-byte sectors at byte 104.
            let sectors = u32::from_be_bytes([bin[104], bin[105], bin[106], bin[107]]);
            Ok(LuksHeader {
                version,
                hdr_size: 592,
                keyslots_size: None,
                keyslot_areas: Vec::new(),
                data_offset: Some(u64::from(sectors) * 512),
            })
        }
        2 => {
            let hdr_size = u64::from_be_bytes(bin[8..16].try_into().unwrap_or_default());
            if !(LUKS2_BINARY_HEADER * 2..=MAX_HDR_SIZE).contains(&hdr_size)
                || !hdr_size.is_power_of_two()
            {
                return Err(StorageError::malformed(
                    what(),
                    format!("hdr_size {hdr_size} is not a power of two in 8 KiB..4 MiB"),
                ));
            }
            let json_len = hdr_size - LUKS2_BINARY_HEADER;
            if offset + hdr_size > part.size() {
                return Err(StorageError::malformed(
                    what(),
                    "its JSON area passes the end",
                ));
            }
            let mut json = vec![0u8; json_len as usize];
            part.read_exact_at(&mut json, offset + LUKS2_BINARY_HEADER)
                .map_err(|e| io_err(part, e))?;
            let end = json.iter().position(|b| *b == 0).unwrap_or(json.len());
            let meta: Luks2Json = serde_json::from_slice(&json[..end])
                .map_err(|e| StorageError::malformed(what(), e))?;
            Ok(meta.into_header(hdr_size))
        }
        v => Err(StorageError::malformed(
            what(),
            format!("version {v} is not 1 or 2"),
        )),
    }
}

/// The parts of the LUKS2 JSON metadata that give sizes. Numbers are decimal strings.
#[derive(Debug, Deserialize)]
struct Luks2Json {
    #[serde(default)]
    keyslots: BTreeMap<String, Luks2Keyslot>,
    #[serde(default)]
    segments: BTreeMap<String, Luks2Segment>,
    config: Luks2Config,
}

#[derive(Debug, Deserialize)]
struct Luks2Keyslot {
    area: Option<Luks2Area>,
}

#[derive(Debug, Deserialize)]
struct Luks2Area {
    offset: String,
    size: String,
}

#[derive(Debug, Deserialize)]
struct Luks2Segment {
    offset: String,
}

#[derive(Debug, Deserialize)]
struct Luks2Config {
    keyslots_size: Option<String>,
}

impl Luks2Json {
    fn into_header(self, hdr_size: u64) -> LuksHeader {
        let num = |s: &str| s.parse::<u64>().ok();
        LuksHeader {
            version: 2,
            hdr_size,
            keyslots_size: self.config.keyslots_size.as_deref().and_then(num),
            keyslot_areas: self
                .keyslots
                .values()
                .filter_map(|k| k.area.as_ref())
                .filter_map(|a| Some((num(&a.offset)?, num(&a.size)?)))
                .collect(),
            data_offset: self.segments.values().filter_map(|s| num(&s.offset)).min(),
        }
    }
}

/// Bytes to zero at the start of a partition to destroy its LUKS metadata: what the header
/// says ([`LuksHeader::metadata_end`]) or, when it can no longer be read,
/// [`DEFAULT_METADATA_AREA`]; never past the end of the partition.
pub fn metadata_area(header: Option<&LuksHeader>, partition_size: u64) -> u64 {
    header
        .map_or(DEFAULT_METADATA_AREA, LuksHeader::metadata_end)
        .min(partition_size)
}

/// Writes a plausible LUKS2 header pair and keyslot for tests: binary headers with both
/// magics, version 2 and `hdr_size`, a JSON area naming one keyslot area and the data
/// segment at `data_offset`. Returns the bytes written at offset 0 (through `data_offset`,
/// keyslot area filled with `keyslot`).
pub fn fake_luks2_image(hdr_size: u64, data_offset: u64, keyslot: &[u8]) -> Vec<u8> {
    let keyslots_size = data_offset - 2 * hdr_size;
    let json = format!(
        "{{\"keyslots\":{{\"0\":{{\"type\":\"luks2\",\"key_size\":64,\"area\":{{\"type\":\"raw\",\
         \"offset\":\"{}\",\"size\":\"{}\",\"encryption\":\"aes-xts-plain64\",\"key_size\":64}}}}}},\
         \"tokens\":{{}},\"segments\":{{\"0\":{{\"type\":\"crypt\",\"offset\":\"{data_offset}\",\
         \"size\":\"dynamic\",\"iv_tweak\":\"0\",\"encryption\":\"aes-xts-plain64\",\
         \"sector_size\":4096}}}},\"digests\":{{}},\"config\":{{\"json_size\":\"{}\",\
         \"keyslots_size\":\"{keyslots_size}\"}}}}",
        2 * hdr_size,
        keyslot.len(),
        hdr_size - LUKS2_BINARY_HEADER
    );
    let mut image = vec![0u8; data_offset as usize];
    for (copy, magic) in [(0u64, LUKS_MAGIC), (1, LUKS2_SECONDARY_MAGIC)] {
        let at = (copy * hdr_size) as usize;
        image[at..at + 6].copy_from_slice(&magic);
        image[at + 6..at + 8].copy_from_slice(&2u16.to_be_bytes());
        image[at + 8..at + 16].copy_from_slice(&hdr_size.to_be_bytes());
        image[at + 16..at + 24].copy_from_slice(&1u64.to_be_bytes());
        image[at + 72..at + 78].copy_from_slice(b"sha256");
        image[at + 168..at + 204].copy_from_slice(b"00000000-0000-4000-8000-a9e27ce00001");
        image[at + 256..at + 264].copy_from_slice(&(copy * hdr_size).to_be_bytes());
        let j = at + LUKS2_BINARY_HEADER as usize;
        image[j..j + json.len()].copy_from_slice(json.as_bytes());
    }
    let k = 2 * hdr_size as usize;
    image[k..k + keyslot.len()].copy_from_slice(keyslot);
    image
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::MemPartition;

    #[test]
    fn fake_header_parses_back() {
        let img = fake_luks2_image(16384, 1 << 20, &[7u8; 4096]);
        let part = MemPartition::new("data", img.clone());
        assert!(is_luks(&part).unwrap());
        let found = find_magic(&part).unwrap();
        assert_eq!(
            found,
            MagicFound {
                primary: true,
                secondary: Some(16384)
            }
        );
        let h = read_header(&part).unwrap().unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.hdr_size, 16384);
        assert_eq!(h.keyslots_size, Some((1 << 20) - 32768));
        assert_eq!(h.keyslot_areas, vec![(32768, 4096)]);
        assert_eq!(h.data_offset, Some(1 << 20));
        assert_eq!(h.metadata_end(), 1 << 20);
    }

    #[test]
    fn secondary_alone_is_found_and_read() {
        let mut img = fake_luks2_image(16384, 1 << 20, &[7u8; 16]);
        img[..4096].fill(0);
        let part = MemPartition::new("data", img);
        assert!(!is_luks(&part).unwrap());
        let found = find_magic(&part).unwrap();
        assert!(found.any() && !found.primary);
        assert_eq!(read_header(&part).unwrap().unwrap().metadata_end(), 1 << 20);
    }

    #[test]
    fn no_header_means_default_area() {
        let part = MemPartition::new("data", vec![0u8; 64 << 10]);
        assert!(!find_magic(&part).unwrap().any());
        assert_eq!(read_header(&part).unwrap(), None);
        assert_eq!(metadata_area(None, 64 << 10), 64 << 10);
        assert_eq!(metadata_area(None, 1 << 30), DEFAULT_METADATA_AREA);
    }

    #[test]
    fn recorded_cryptsetup_header_parses() {
        // The JSON of `cryptsetup luksFormat --type luks2` 2.6.1 on a 32 MiB file (abridged
        // to the fields read here, as luksDump --dump-json-metadata printed them).
        let json = br#"{"keyslots":{"0":{"type":"luks2","key_size":64,"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64}}},"tokens":{},"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic"}},"digests":{},"config":{"json_size":"12288","keyslots_size":"16744448"}}"#;
        let meta: Luks2Json = serde_json::from_slice(json).unwrap();
        let h = meta.into_header(16384);
        assert_eq!(h.metadata_end(), 16 << 20);
    }
}
