//! bmap files: the block map `bmaptool` uses to write only the parts of a sparse disk image
//! that hold data. Created from a sparse file, written in bmaptool's own XML layout (format
//! 2.0, byte for byte what `bmaptool create` 3.6 writes for the same map), and read back from
//! bmaptool's formats 1.0-1.4 and 2.0 with every checksum checked.
//!
//! The format, from bmap-tools' `BmapCreate.py` / `BmapCopy.py`:
//!
//! * `<bmap version="2.0">` holds `ImageSize` (bytes), `BlockSize`, `BlocksCount`
//!   (= ceil(ImageSize / BlockSize)), `MappedBlocksCount`, `ChecksumType` (sha256 by
//!   default), `BmapFileChecksum` and `BlockMap`, a list of `<Range chksum="hex"> a-b </Range>`
//!   (inclusive block numbers; `a` alone when the range is one block). Values are padded with
//!   a space on each side.
//! * A range checksum covers the range's bytes up to the end of the image (the last block may
//!   be short).
//! * `BmapFileChecksum` is the checksum of the whole file with its own value replaced by as
//!   many ASCII `0` as it has digits. A reader finds the value by searching for the first
//!   occurrence of the stored text, as `BmapCopy._verify_bmap_checksum` does.
//! * Format 1.3 used SHA-1 only: `BmapFileSHA1` and `sha1="..."` on ranges; 1.0-1.2 have no
//!   file checksum and optional `sha1` on ranges; 1.4 is 2.0 by mistake.

mod create;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::error::{FlashError, Result};
use crate::xml::{self, Node};

/// The block size bmaptool uses on every common file system, and ours by default.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// The checksum algorithm of a bmap file and its ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChecksumType {
    /// SHA-1: bmap formats 1.0-1.3 (2.0 allows it too, as any Python hashlib name).
    Sha1,
    /// SHA-256: what `bmaptool create` and [`Bmap::from_sparse_file`] use.
    Sha256,
    /// SHA-512: allowed by format 2.0 (`BmapCreate(..., chksum_type="sha512")`).
    Sha512,
}

impl ChecksumType {
    /// The name used in `<ChecksumType>` (Python hashlib's name).
    pub fn name(self) -> &'static str {
        match self {
            ChecksumType::Sha1 => "sha1",
            ChecksumType::Sha256 => "sha256",
            ChecksumType::Sha512 => "sha512",
        }
    }

    /// Length of a checksum in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            ChecksumType::Sha1 => 40,
            ChecksumType::Sha256 => 64,
            ChecksumType::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<ChecksumType> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Some(ChecksumType::Sha1),
            "sha256" => Some(ChecksumType::Sha256),
            "sha512" => Some(ChecksumType::Sha512),
            _ => None,
        }
    }

    pub(crate) fn hasher(self) -> Hasher {
        match self {
            ChecksumType::Sha1 => Hasher::Sha1(Sha1::new()),
            ChecksumType::Sha256 => Hasher::Sha256(Sha256::new()),
            ChecksumType::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    fn hex_of(self, bytes: &[u8]) -> String {
        let mut hasher = self.hasher();
        hasher.update(bytes);
        hasher.finish_hex()
    }
}

/// A running hash of one of the [`ChecksumType`]s.
pub(crate) enum Hasher {
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub(crate) fn finish_hex(self) -> String {
        match self {
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// A run of mapped blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmapRange {
    /// First block, inclusive.
    pub first: u64,
    /// Last block, inclusive.
    pub last: u64,
    /// Lower-case hex checksum of the range's bytes ([`Bmap::checksum_type`]), if the file
    /// has one for it.
    pub checksum: Option<String>,
}

impl BmapRange {
    /// Number of blocks in the range.
    pub fn blocks(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// A block map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bmap {
    /// Image size in bytes.
    pub image_size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// ceil(image_size / block_size).
    pub blocks_count: u64,
    /// Sum of the blocks of all ranges.
    pub mapped_blocks_count: u64,
    /// The checksum type of the file and its ranges; `None` only for format 1.0-1.2 files
    /// without any checksum.
    pub checksum_type: Option<ChecksumType>,
    /// Mapped ranges, ascending, not overlapping, not touching.
    pub ranges: Vec<BmapRange>,
}

/// A range whose checksum does not match the image, from [`Bmap::verify_ranges`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeMismatch {
    /// First block of the range.
    pub first: u64,
    /// Last block of the range.
    pub last: u64,
    /// Checksum the bmap gives.
    pub expected: String,
    /// Checksum of the image's bytes.
    pub actual: String,
}

impl Bmap {
    /// Maps a sparse image file: the blocks that hold data, found with `SEEK_DATA` /
    /// `SEEK_HOLE`, less every block that is all zero bytes (so an image whose zeros were
    /// written out still maps only its data: a flasher need not write zeros to a target it
    /// has discarded or whose partitions are formatted anyway). Adjacent mapped blocks form
    /// one range; each range gets a SHA-256. The same file contents give the same map, however
    /// the file system allocated them.
    ///
    /// `block_size` must be a power of two of at least 512; use [`DEFAULT_BLOCK_SIZE`].
    pub fn from_sparse_file(path: impl AsRef<Path>, block_size: u32) -> Result<Bmap> {
        create::from_sparse_file(path.as_ref(), block_size)
    }

    /// Bytes of image the ranges cover (the last block may be short).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| self.byte_span(r).1).sum()
    }

    /// The byte offset and length of `range` in the image, clamped to the image size.
    pub fn byte_span(&self, range: &BmapRange) -> (u64, u64) {
        let bs = u64::from(self.block_size);
        let start = (range.first * bs).min(self.image_size);
        let end = ((range.last + 1) * bs).min(self.image_size);
        (start, end - start)
    }

    /// The bmap file text, in exactly the layout (comments, padding, order) of
    /// `bmaptool create` 3.6, format 2.0, with `BmapFileChecksum` filled in.
    pub fn to_xml(&self) -> String {
        let cs = self.checksum_type.unwrap_or(ChecksumType::Sha256);
        let image_human = human_size(self.image_size);
        let mut xml = format!(
            r#"{XML_HEAD}<bmap version="2.0">
    <!-- Image size in bytes: {image_human} -->
    <ImageSize> {} </ImageSize>

    <!-- Size of a block in bytes -->
    <BlockSize> {} </BlockSize>

    <!-- Count of blocks in the image file -->
    <BlocksCount> {} </BlocksCount>

    <!-- Count of mapped blocks: "#,
            self.image_size, self.block_size, self.blocks_count
        );
        // bmaptool writes blanks for the mapped count first and overwrites them at the end;
        // the overwrite may run past the blanks, which `overwrite` reproduces.
        let count_comment_at = xml.len();
        xml.push_str(&" ".repeat(image_human.len()));
        xml.push_str(" or ");
        xml.push_str(&" ".repeat("100.0%".len()));
        xml.push_str("   -->\n    <MappedBlocksCount> ");
        let count_at = xml.len();
        xml.push_str(&" ".repeat(self.blocks_count.to_string().len()));
        xml.push_str(&format!(
            r#" </MappedBlocksCount>

    <!-- Type of checksum used in this file -->
    <ChecksumType> {} </ChecksumType>

    <!-- The checksum of this bmap file. When it is calculated, the value of
         the checksum has be zero (all ASCII "0" symbols).  -->
    <BmapFileChecksum> "#,
            cs.name()
        ));
        let checksum_at = xml.len();
        xml.push_str(&"0".repeat(cs.hex_len()));
        xml.push_str(
            r#" </BmapFileChecksum>

    <!-- The block map which consists of elements which may either be a
         range of blocks or a single block. The 'chksum' attribute
         (if present) is the checksum of this blocks range. -->
    <BlockMap>
"#,
        );
        for range in &self.ranges {
            let attr = match (&range.checksum, self.checksum_type) {
                (Some(sum), Some(_)) => format!(" chksum=\"{sum}\""),
                _ => String::new(),
            };
            let blocks = if range.first == range.last {
                range.first.to_string()
            } else {
                format!("{}-{}", range.first, range.last)
            };
            xml.push_str(&format!("        <Range{attr}> {blocks} </Range>\n"));
        }
        xml.push_str("    </BlockMap>\n</bmap>\n");

        let mapped_size = self.mapped_blocks_count * u64::from(self.block_size);
        let percent = if self.blocks_count == 0 {
            0.0
        } else {
            (self.mapped_blocks_count as f64 * 100.0) / self.blocks_count as f64
        };
        let count_comment = format!("{} or {percent:.1}%", human_size(mapped_size));
        overwrite(&mut xml, count_comment_at, &count_comment);
        overwrite(&mut xml, count_at, &self.mapped_blocks_count.to_string());
        let sum = cs.hex_of(xml.as_bytes());
        overwrite(&mut xml, checksum_at, &sum);
        xml
    }

    /// Reads a bmap file of format 1.x or 2.x, checking its structure, the consistency of its
    /// counts, and its own checksum when it has one (`BmapFileChecksum`, `BmapFileSHA1`).
    /// Range checksums are kept for [`Bmap::verify_ranges`] and the writer.
    pub fn parse(text: &str) -> Result<Bmap> {
        let doc = xml::parse(text).map_err(|e| FlashError::BmapXml {
            line: e.line,
            reason: e.reason,
        })?;
        let root = doc.root_element();
        if !root.has_tag_name("bmap") {
            return Err(FlashError::invalid(format!(
                "the root element is <{}>, not <bmap>",
                root.tag_name().name()
            )));
        }
        let version = root
            .attribute("version")
            .ok_or_else(|| FlashError::invalid("<bmap> has no version attribute"))?;
        let bad_version = || FlashError::BmapVersion {
            version: version.to_string(),
        };
        let (major, minor) = version.split_once('.').ok_or_else(bad_version)?;
        let major: u32 = major.trim().parse().map_err(|_| bad_version())?;
        let minor: u32 = minor.trim().parse().map_err(|_| bad_version())?;
        if !(1..=2).contains(&major) {
            return Err(bad_version());
        }

        let number = |name: &str| -> Result<u64> {
            let element = xml::child(root, name)
                .ok_or_else(|| FlashError::invalid(format!("<{name}> is missing")))?;
            let text = xml::text(element);
            text.trim().parse().map_err(|_| {
                FlashError::invalid(format!(
                    "<{name}> on line {} is {:?}, not a number",
                    xml::line(element),
                    text.trim()
                ))
            })
        };
        let image_size = number("ImageSize")?;
        let block_size = u32::try_from(number("BlockSize")?)
            .ok()
            .filter(|&bs| bs > 0)
            .ok_or_else(|| FlashError::invalid("<BlockSize> is 0 or too large"))?;
        let blocks_count = number("BlocksCount")?;
        let mapped_blocks_count = number("MappedBlocksCount")?;
        if blocks_count != image_size.div_ceil(u64::from(block_size)) {
            return Err(FlashError::invalid(format!(
                "<BlocksCount> {blocks_count} does not match <ImageSize> {image_size} in blocks \
                 of {block_size} bytes"
            )));
        }
        // The last block's end must be a byte offset: with an image size within a block of
        // 2^64, `byte_span` of the last range would overflow (found by fuzz target `bmap`).
        if blocks_count.checked_mul(u64::from(block_size)).is_none() {
            return Err(FlashError::invalid(format!(
                "<ImageSize> {image_size} in blocks of {block_size} bytes ends past the largest \
                 byte offset (2^64 - 1)"
            )));
        }

        // Formats 2.x and the mistaken 1.4 name their checksum; 1.x before that use SHA-1.
        let (cs_type, range_attr, file_element) = if major >= 2 || minor >= 4 {
            let element = xml::child(root, "ChecksumType")
                .ok_or_else(|| FlashError::invalid("<ChecksumType> is missing"))?;
            let text = xml::text(element);
            let name = text.trim();
            let cs = ChecksumType::from_name(name).ok_or_else(|| FlashError::BmapChecksumType {
                name: name.to_string(),
            })?;
            (cs, "chksum", "BmapFileChecksum")
        } else {
            (ChecksumType::Sha1, "sha1", "BmapFileSHA1")
        };

        let block_map = xml::child(root, "BlockMap")
            .ok_or_else(|| FlashError::invalid("<BlockMap> is missing"))?;
        let mut ranges: Vec<BmapRange> = Vec::new();
        for element in block_map.children().filter(|c| c.has_tag_name("Range")) {
            let range = parse_range(element, range_attr, cs_type, blocks_count)?;
            if let Some(previous) = ranges.last() {
                if range.first <= previous.last {
                    return Err(FlashError::invalid(format!(
                        "<Range> on line {} (blocks {}-{}) is not after the previous range \
                         (ending at {})",
                        xml::line(element),
                        range.first,
                        range.last,
                        previous.last
                    )));
                }
            }
            ranges.push(range);
        }
        let sum: u64 = ranges.iter().map(BmapRange::blocks).sum();
        if sum != mapped_blocks_count {
            return Err(FlashError::invalid(format!(
                "<MappedBlocksCount> is {mapped_blocks_count} but the ranges hold {sum} blocks"
            )));
        }

        let file_checksum = xml::child(root, file_element);
        if let Some(element) = file_checksum {
            verify_file_checksum(text, xml::text(element).trim(), cs_type)?;
        }
        let has_checksums = file_checksum.is_some() || ranges.iter().any(|r| r.checksum.is_some());
        let checksum_type = if major >= 2 || minor >= 4 || has_checksums {
            Some(cs_type)
        } else {
            None
        };
        Ok(Bmap {
            image_size,
            block_size,
            blocks_count,
            mapped_blocks_count,
            checksum_type,
            ranges,
        })
    }

    /// Hashes every range that has a checksum in `image` and returns those that do not match
    /// (empty when all do). Ranges without a checksum are not checked. A short image makes
    /// the ranges past its end mismatch, as it would in `bmaptool copy`.
    pub fn verify_ranges<R: Read + Seek + ?Sized>(
        &self,
        image: &mut R,
    ) -> Result<Vec<RangeMismatch>> {
        let Some(cs) = self.checksum_type else {
            return Ok(Vec::new());
        };
        let mut mismatches = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        for range in &self.ranges {
            let Some(expected) = &range.checksum else {
                continue;
            };
            let (offset, len) = self.byte_span(range);
            image
                .seek(SeekFrom::Start(offset))
                .map_err(|e| FlashError::io(format!("seeking the image to byte {offset}"), e))?;
            let mut hasher = cs.hasher();
            let mut limited = Read::take(&mut *image, len);
            loop {
                let n = limited.read(&mut buf).map_err(|e| {
                    FlashError::io(
                        format!("reading blocks {}-{} of the image", range.first, range.last),
                        e,
                    )
                })?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let actual = hasher.finish_hex();
            if !actual.eq_ignore_ascii_case(expected) {
                mismatches.push(RangeMismatch {
                    first: range.first,
                    last: range.last,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(mismatches)
    }
}

fn parse_range(
    element: Node<'_, '_>,
    attr: &str,
    cs: ChecksumType,
    blocks_count: u64,
) -> Result<BmapRange> {
    let text = xml::text(element);
    let text = text.trim();
    let bad = |why: &str| {
        FlashError::invalid(format!(
            "<Range> on line {} ({text:?}) {why}",
            xml::line(element)
        ))
    };
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad("is not N or N-M"));
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let n = number(text)?;
            (n, n)
        }
    };
    if first > last {
        return Err(bad("ends before it starts"));
    }
    if last >= blocks_count {
        return Err(bad(&format!(
            "is past the last block ({})",
            blocks_count.saturating_sub(1)
        )));
    }
    let checksum = match element.attribute(attr) {
        Some(sum) if is_hex(sum, cs) => Some(sum.to_ascii_lowercase()),
        Some(_) => {
            return Err(bad(&format!(
                "has a {attr} that is not a {} in hex",
                cs.name()
            )))
        }
        None => None,
    };
    Ok(BmapRange {
        first,
        last,
        checksum,
    })
}

fn is_hex(text: &str, cs: ChecksumType) -> bool {
    text.len() == cs.hex_len() && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// bmaptool's check: replace the first occurrence of the stored value with zeros, hash.
fn verify_file_checksum(text: &str, stored: &str, cs: ChecksumType) -> Result<()> {
    if !is_hex(stored, cs) {
        return Err(FlashError::invalid(format!(
            "the file checksum {stored:?} is not a {} in hex",
            cs.name()
        )));
    }
    let mut zeroed = text.to_string();
    if let Some(at) = text.find(stored) {
        overwrite(&mut zeroed, at, &"0".repeat(stored.len()));
    }
    let actual = cs.hex_of(zeroed.as_bytes());
    if actual.eq_ignore_ascii_case(stored) {
        Ok(())
    } else {
        Err(FlashError::BmapFileChecksum {
            expected: stored.to_string(),
            actual,
        })
    }
}

/// Writes `text` over `xml` from byte `at` on, like a write after a seek in a file: what was
/// there is replaced, the string grows only if the text runs past its end. ASCII only.
fn overwrite(xml: &mut String, at: usize, text: &str) {
    let end = (at + text.len()).min(xml.len());
    xml.replace_range(at..end, text);
}

/// bmap-tools' `BmapHelpers.human_size`, quirks included (it skips PiB).
fn human_size(size: u64) -> String {
    if size == 1 {
        return "1 byte".to_string();
    }
    if size < 512 {
        return format!("{size} bytes");
    }
    let mut value = size as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        value /= 1024.0;
        if value < 1024.0 {
            return format!("{value:.1} {unit}");
        }
    }
    format!("{value:.1} EiB")
}

/// bmaptool's fixed file header: the XML declaration and the explanatory comment.
const XML_HEAD: &str = r#"<?xml version="1.0" ?>
<!-- This file contains the block map for an image file, which is basically
     a list of useful (mapped) block numbers in the image file. In other words,
     it lists only those blocks which contain data (boot sector, partition
     table, file-system metadata, files, directories, extents, etc). These
     blocks have to be copied to the target device. The other blocks do not
     contain any useful data and do not have to be copied to the target
     device.

     The block map an optimization which allows to copy or flash the image to
     the image quicker than copying of flashing the entire image. This is
     because with bmap less data is copied: <MappedBlocksCount> blocks instead
     of <BlocksCount> blocks.

     Besides the machine-readable data, this file contains useful commentaries
     which contain human-readable information like image size, percentage of
     mapped data, etc.

     The 'version' attribute is the block map file format version in the
     'major.minor' format. The version major number is increased whenever an
     incompatible block map format change is made. The minor number changes
     in case of minor backward-compatible changes. -->

"#;

#[cfg(test)]
mod tests;
