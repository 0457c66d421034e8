//! Reading LUKS headers straight from a partition: is there one (either copy), is each copy
//! intact, what its UUID, label and tokens are, and how many bytes at the start of the
//! partition hold metadata and keyslots (reset zeroes exactly that area after `cryptsetup
//! erase`).
//!
//! LUKS2 on-disk format (cryptsetup `docs/on-disk-format-luks2.pdf`, section 2): two copies of
//! a 4096-byte binary header each followed by a JSON area, `hdr_size` bytes per copy; the
//! primary at offset 0 with magic `LUKS\xba\xbe`, the secondary at `hdr_size` with magic
//! `SKUL\xba\xbe` (one of the fixed offsets in [`SECONDARY_OFFSETS`]); then the keyslots area,
//! then the data segment. All integers big-endian; JSON numbers of 64-bit values are strings.
//! Each copy carries a checksum (`csum_alg`, normally sha256) over its `hdr_size` bytes with
//! the checksum field zeroed, and a sequence number `seqid` that every update increments.
//! LUKS1 (`docs/on-disk-format.pdf`): one 592-byte header, key material up to `payload_offset`
//! sectors.
//!
//! A volume whose primary copy is zeroed or torn is still a LUKS2 volume ([`is_luks`] looks at
//! both copies): `cryptsetup repair` restores the primary from the secondary, and nothing may
//! ever format it (issue 12.3).

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::disk::Partition;
use crate::StorageError;

/// Magic of a primary LUKS header (LUKS1 and LUKS2).
pub const LUKS_MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Magic of a LUKS2 secondary header.
pub const LUKS2_SECONDARY_MAGIC: [u8; 6] = *b"SKUL\xba\xbe";
/// Where a LUKS2 secondary header may start (the primary's `hdr_size`), from the spec:
/// 16 KiB to 4 MiB in powers of two.
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
/// Offset and length of the checksum field in a LUKS2 binary header.
const CSUM: std::ops::Range<usize> = 448..512;

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

/// Whether the partition holds a LUKS header in either copy (the primary magic at 0, or a
/// LUKS2 secondary at one of [`SECONDARY_OFFSETS`]). A partition for which this is true is
/// never formatted.
pub fn is_luks(part: &dyn Partition) -> Result<bool, StorageError> {
    Ok(find_magic(part)?.any())
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

fn io_err(part: &dyn Partition, err: std::io::Error) -> StorageError {
    StorageError::Io {
        op: "reading the LUKS header of",
        path: part.describe().into(),
        err,
    }
}

/// One intact LUKS2 header copy.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderCopy {
    /// Where it starts.
    pub offset: u64,
    /// Its update counter.
    pub seqid: u64,
    /// The volume's UUID.
    pub uuid: String,
    /// Its label, if set.
    pub label: Option<String>,
    /// Extent of the metadata.
    pub header: LuksHeader,
    /// Keyslot ids (`"0"`).
    pub keyslots: Vec<String>,
    /// Tokens by id, as JSON objects.
    pub tokens: BTreeMap<String, serde_json::Value>,
}

/// The state of one header copy.
#[derive(Debug, Clone, PartialEq)]
pub enum CopyState {
    /// No magic where the copy belongs.
    Missing,
    /// Magic, but the copy does not check out (torn, overwritten).
    Damaged(String),
    /// Intact.
    Valid(Box<HeaderCopy>),
}

impl CopyState {
    /// The copy if it is intact.
    pub fn valid(&self) -> Option<&HeaderCopy> {
        match self {
            CopyState::Valid(c) => Some(c),
            _ => None,
        }
    }
}

/// Both header copies of a LUKS2 partition, each checked (magic, version, size, checksum,
/// JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// The copy at offset 0.
    pub primary: CopyState,
    /// The copy at the primary's `hdr_size` (or, with the primary gone, wherever the secondary
    /// magic is).
    pub secondary: CopyState,
}

impl Probe {
    /// Whether any LUKS magic is on the partition (so that it must never be formatted).
    pub fn any_magic(&self) -> bool {
        !matches!(
            (&self.primary, &self.secondary),
            (CopyState::Missing, CopyState::Missing)
        )
    }

    /// The intact copy with the highest `seqid` (what cryptsetup itself would use).
    pub fn current(&self) -> Option<&HeaderCopy> {
        match (self.primary.valid(), self.secondary.valid()) {
            (Some(p), Some(s)) => Some(if s.seqid > p.seqid { s } else { p }),
            (p, s) => p.or(s),
        }
    }

    /// Whether one copy is intact and the other is not, or they disagree: `cryptsetup repair`
    /// makes them one again.
    pub fn needs_repair(&self) -> bool {
        match (self.primary.valid(), self.secondary.valid()) {
            (Some(p), Some(s)) => p.seqid != s.seqid,
            (None, None) => false,
            _ => true,
        }
    }

    /// One line for logs and errors.
    pub fn describe(&self) -> String {
        let one = |c: &CopyState| match c {
            CopyState::Missing => "missing".to_string(),
            CopyState::Damaged(why) => format!("damaged ({why})"),
            CopyState::Valid(h) => format!("intact (seqid {}, UUID {})", h.seqid, h.uuid),
        };
        format!(
            "primary header {}, secondary header {}",
            one(&self.primary),
            one(&self.secondary)
        )
    }
}

/// Check both header copies of `part`.
pub fn probe(part: &dyn Partition) -> Result<Probe, StorageError> {
    let primary = if read_magic(part, 0)? == Some(LUKS_MAGIC) {
        check_copy(part, 0)?
    } else {
        CopyState::Missing
    };
    let secondary_at = match primary.valid() {
        Some(p) if p.header.version == 2 => Some(p.header.hdr_size),
        Some(_) => None,
        None => find_magic(part)?.secondary,
    };
    let secondary = match secondary_at {
        Some(at) if read_magic(part, at)? == Some(LUKS2_SECONDARY_MAGIC) => check_copy(part, at)?,
        _ => CopyState::Missing,
    };
    Ok(Probe { primary, secondary })
}

fn check_copy(part: &dyn Partition, offset: u64) -> Result<CopyState, StorageError> {
    let mut bin = [0u8; LUKS2_BINARY_HEADER as usize];
    if offset + LUKS2_BINARY_HEADER > part.size() {
        return Ok(CopyState::Damaged(
            "it passes the end of the partition".into(),
        ));
    }
    part.read_exact_at(&mut bin, offset)
        .map_err(|e| io_err(part, e))?;
    let version = u16::from_be_bytes([bin[6], bin[7]]);
    if version == 1 && offset == 0 {
        return Ok(match parse_at(part, 0) {
            Ok(header) => CopyState::Valid(Box::new(HeaderCopy {
                offset,
                seqid: 0,
                uuid: cstr(&bin[168..208]),
                label: None,
                header,
                keyslots: Vec::new(),
                tokens: BTreeMap::new(),
            })),
            Err(e) => CopyState::Damaged(e.to_string()),
        });
    }
    if version != 2 {
        return Ok(CopyState::Damaged(format!("version {version}")));
    }
    let hdr_size = u64::from_be_bytes(bin[8..16].try_into().unwrap_or_default());
    if !(LUKS2_BINARY_HEADER * 2..=MAX_HDR_SIZE).contains(&hdr_size)
        || !hdr_size.is_power_of_two()
        || offset + hdr_size > part.size()
    {
        return Ok(CopyState::Damaged(format!("hdr_size {hdr_size}")));
    }
    let hdr_offset = u64::from_be_bytes(bin[256..264].try_into().unwrap_or_default());
    if hdr_offset != offset {
        return Ok(CopyState::Damaged(format!(
            "it says it is at byte {hdr_offset}, not {offset}"
        )));
    }
    let mut whole = vec![0u8; hdr_size as usize];
    part.read_exact_at(&mut whole, offset)
        .map_err(|e| io_err(part, e))?;
    if !checksum_ok(&whole) {
        return Ok(CopyState::Damaged("checksum mismatch".into()));
    }
    let json = &whole[LUKS2_BINARY_HEADER as usize..];
    let end = json.iter().position(|b| *b == 0).unwrap_or(json.len());
    let meta: Luks2Json = match serde_json::from_slice(&json[..end]) {
        Ok(m) => m,
        Err(e) => return Ok(CopyState::Damaged(format!("JSON: {e}"))),
    };
    let label = cstr(&bin[24..72]);
    Ok(CopyState::Valid(Box::new(HeaderCopy {
        offset,
        seqid: u64::from_be_bytes(bin[16..24].try_into().unwrap_or_default()),
        uuid: cstr(&bin[168..208]),
        label: (!label.is_empty()).then_some(label),
        keyslots: meta.keyslots.keys().cloned().collect(),
        tokens: meta.tokens.clone(),
        header: meta.into_header(hdr_size),
    })))
}

/// A NUL-terminated string field.
fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Whether a whole header copy (`hdr_size` bytes) carries its own checksum. Only sha256 is
/// checked (what cryptsetup writes); another algorithm is taken on trust.
pub fn checksum_ok(copy: &[u8]) -> bool {
    if copy.len() < LUKS2_BINARY_HEADER as usize {
        return false;
    }
    if cstr(&copy[72..104]) != "sha256" {
        return true;
    }
    let mut zeroed = copy.to_vec();
    zeroed[CSUM].fill(0);
    Sha256::digest(&zeroed)[..] == copy[CSUM.start..CSUM.start + 32]
}

/// Write the sha256 checksum into a whole header copy (test doubles).
pub fn write_checksum(copy: &mut [u8]) {
    copy[72..104].fill(0);
    copy[72..78].copy_from_slice(b"sha256");
    copy[CSUM].fill(0);
    let digest = Sha256::digest(&*copy);
    copy[CSUM.start..CSUM.start + 32].copy_from_slice(&digest);
}

/// The header of the partition, from the primary copy or, if that is gone, the secondary;
/// `Ok(None)` if neither is there or neither parses. Lenient on purpose (no checksum): reset
/// uses it to size the area it zeroes, where a torn header still tells the truth.
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

/// The LUKS2 label of the current intact header copy; `None` without one or with an empty
/// label.
pub fn read_label(part: &dyn Partition) -> Result<Option<String>, StorageError> {
    Ok(probe(part)?.current().and_then(|c| c.label.clone()))
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

/// The parts of the LUKS2 JSON metadata read here. Numbers are decimal strings.
#[derive(Debug, Deserialize)]
struct Luks2Json {
    #[serde(default)]
    keyslots: BTreeMap<String, Luks2Keyslot>,
    #[serde(default)]
    segments: BTreeMap<String, Luks2Segment>,
    #[serde(default)]
    tokens: BTreeMap<String, serde_json::Value>,
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

/// What a test double writes as one LUKS2 header copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeHeader {
    /// Bytes of one copy.
    pub hdr_size: u64,
    /// Where the data segment starts.
    pub data_offset: u64,
    /// Bytes of the one keyslot area (at `2 * hdr_size`); 0 for a header without a keyslot
    /// (what `luksFormat` has written before it adds the keyslot).
    pub keyslot_len: u64,
    /// Update counter.
    pub seqid: u64,
    /// UUID.
    pub uuid: String,
    /// Label.
    pub label: String,
    /// Tokens by id.
    pub tokens: BTreeMap<String, serde_json::Value>,
}

impl FakeHeader {
    /// One copy (`secondary` picks the magic and offset), checksum included.
    pub fn copy(&self, secondary: bool) -> Vec<u8> {
        let keyslots_size = self.data_offset - 2 * self.hdr_size;
        let keyslots = if self.keyslot_len == 0 {
            serde_json::json!({})
        } else {
            serde_json::json!({"0": {"type": "luks2", "key_size": 64, "area": {"type": "raw",
                "offset": (2 * self.hdr_size).to_string(), "size": self.keyslot_len.to_string(),
                "encryption": "aes-xts-plain64", "key_size": 64}}})
        };
        let json = serde_json::json!({
            "keyslots": keyslots,
            "tokens": self.tokens,
            "segments": {"0": {"type": "crypt", "offset": self.data_offset.to_string(),
                "size": "dynamic", "iv_tweak": "0", "encryption": "aes-xts-plain64",
                "sector_size": 4096}},
            "digests": {},
            "config": {"json_size": (self.hdr_size - LUKS2_BINARY_HEADER).to_string(),
                "keyslots_size": keyslots_size.to_string()},
        })
        .to_string();
        let mut copy = vec![0u8; self.hdr_size as usize];
        let (magic, at) = if secondary {
            (LUKS2_SECONDARY_MAGIC, self.hdr_size)
        } else {
            (LUKS_MAGIC, 0)
        };
        copy[..6].copy_from_slice(&magic);
        copy[6..8].copy_from_slice(&2u16.to_be_bytes());
        copy[8..16].copy_from_slice(&self.hdr_size.to_be_bytes());
        copy[16..24].copy_from_slice(&self.seqid.to_be_bytes());
        let label = self.label.as_bytes();
        let n = label.len().min(47);
        copy[24..24 + n].copy_from_slice(&label[..n]);
        let uuid = self.uuid.as_bytes();
        let n = uuid.len().min(39);
        copy[168..168 + n].copy_from_slice(&uuid[..n]);
        copy[256..264].copy_from_slice(&at.to_be_bytes());
        let j = LUKS2_BINARY_HEADER as usize;
        let n = json.len().min(copy.len() - j - 1);
        copy[j..j + n].copy_from_slice(&json.as_bytes()[..n]);
        write_checksum(&mut copy);
        copy
    }
}

/// Writes a plausible LUKS2 header pair and keyslot for tests: both copies (valid checksums),
/// one keyslot area holding `keyslot`, the data segment at `data_offset`. Returns the bytes
/// from offset 0 through `data_offset`.
pub fn fake_luks2_image(hdr_size: u64, data_offset: u64, keyslot: &[u8]) -> Vec<u8> {
    let header = FakeHeader {
        hdr_size,
        data_offset,
        keyslot_len: keyslot.len() as u64,
        seqid: 1,
        uuid: "00000000-0000-4000-8000-a9e27ce00001".into(),
        label: String::new(),
        tokens: BTreeMap::new(),
    };
    let mut image = vec![0u8; data_offset as usize];
    let h = hdr_size as usize;
    image[..h].copy_from_slice(&header.copy(false));
    image[h..2 * h].copy_from_slice(&header.copy(true));
    image[2 * h..2 * h + keyslot.len()].copy_from_slice(keyslot);
    image
}

#[cfg(test)]
mod tests;
