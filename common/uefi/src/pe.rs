//! Reading PE32+ images (the PE/COFF specification, "PE Format" on learn.microsoft.com): the
//! section table, a section's bytes, the optional header's CheckSum, the COFF TimeDateStamp
//! and the Authenticode certificate table.
//!
//! Every input is untrusted (a stub from a rootfs tree, a UKI read back from an ESP), so each
//! read is bounds-checked and a malformed file gives a [`UefiError`] naming the structure, never
//! a panic. Only what UEFI loads on our boards is accepted: PE32+ for x86-64 or AArch64.

use crate::UefiError;

/// Offset of e_lfanew, the file offset of the PE signature, in the DOS header.
const E_LFANEW: usize = 0x3c;
/// The COFF file header's size (PE/COFF spec section 3.3).
pub(crate) const COFF_HEADER_SIZE: usize = 20;
/// A section header's size (PE/COFF spec section 4).
pub(crate) const SECTION_HEADER_SIZE: usize = 40;
/// PE32+ optional header magic (section 3.4); PE32 is 0x10b.
const PE32_PLUS_MAGIC: u16 = 0x20b;
/// The PE32+ optional header's fixed part, before the data directories (section 3.4.2).
const PE32_PLUS_FIXED: usize = 112;
/// The PE/COFF spec's loader limit ("the Windows loader limits the number of sections to
/// 96"); systemd-stub's pe.c refuses more too (MAX_SECTIONS).
pub const MAX_SECTIONS: usize = 96;

// COFF file header fields (section 3.3), offsets from its start.
pub(crate) const COFF_NUMBER_OF_SECTIONS: usize = 2;
pub(crate) const COFF_TIME_DATE_STAMP: usize = 4;
pub(crate) const COFF_POINTER_TO_SYMBOL_TABLE: usize = 8;
pub(crate) const COFF_NUMBER_OF_SYMBOLS: usize = 12;

// PE32+ optional header fields (sections 3.4.1-3.4.3), offsets from its start.
pub(crate) const OPT_SIZE_OF_INITIALIZED_DATA: usize = 8;
const OPT_SECTION_ALIGNMENT: usize = 32;
const OPT_FILE_ALIGNMENT: usize = 36;
pub(crate) const OPT_SIZE_OF_IMAGE: usize = 56;
const OPT_SIZE_OF_HEADERS: usize = 60;
const OPT_CHECKSUM: usize = 64;
const OPT_NUMBER_OF_RVA_AND_SIZES: usize = 108;

/// Data directory indexes (section 3.4.3).
const DIRECTORY_SECURITY: u32 = 4;
pub(crate) const DIRECTORY_DEBUG: u32 = 6;

/// The machine a PE image is built for (COFF header Machine, section 3.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Machine {
    /// IMAGE_FILE_MACHINE_AMD64, 0x8664.
    X86_64,
    /// IMAGE_FILE_MACHINE_ARM64, 0xaa64.
    Aarch64,
}

impl Machine {
    fn from_coff(value: u16) -> Result<Machine, UefiError> {
        match value {
            0x8664 => Ok(Machine::X86_64),
            0xaa64 => Ok(Machine::Aarch64),
            machine => Err(UefiError::UnsupportedMachine { machine }),
        }
    }
}

/// One entry of a PE section table (PE/COFF spec section 4), as read.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionInfo {
    /// The name, up to its first NUL (invalid UTF-8 shown as U+FFFD).
    pub name: String,
    /// RVA of the section once loaded.
    pub virtual_address: u32,
    /// Bytes in memory; the loader zero-fills what SizeOfRawData does not cover.
    pub virtual_size: u32,
    /// File offset of its raw data.
    pub pointer_to_raw_data: u32,
    /// Bytes of raw data in the file (a multiple of FileAlignment).
    pub size_of_raw_data: u32,
    /// IMAGE_SCN_* flags.
    pub characteristics: u32,
}

/// A section header with its name still as the 8 bytes of the table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawSection {
    pub name: [u8; 8],
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub size_of_raw_data: u32,
    pub pointer_to_raw_data: u32,
    pub characteristics: u32,
}

impl RawSection {
    /// The name without its NUL padding.
    pub fn name_bytes(&self) -> &[u8] {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(8);
        &self.name[..end]
    }

    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(self.name_bytes()).into_owned()
    }

    /// The file range of its raw data (checked against the file by [`parse`]); empty at 0
    /// when it has none, whatever PointerToRawData says.
    pub fn raw_range(&self) -> std::ops::Range<usize> {
        if self.size_of_raw_data == 0 {
            return 0..0;
        }
        let start = self.pointer_to_raw_data as usize;
        start..start + self.size_of_raw_data as usize
    }

    /// The raw bytes a loader copies: the first min(VirtualSize, SizeOfRawData).
    pub fn loaded_bytes<'a>(&self, pe: &'a [u8]) -> &'a [u8] {
        let range = self.raw_range();
        let n = range.len().min(self.virtual_size as usize);
        &pe[range.start..range.start + n]
    }
}

/// The headers of a PE32+ image, located and checked.
#[derive(Clone, Debug)]
pub(crate) struct Headers {
    /// File offset of the COFF file header (just after "PE\0\0").
    pub coff: usize,
    /// File offset of the optional header.
    pub opt: usize,
    pub machine: Machine,
    /// File offset of the section table.
    pub section_table: usize,
    /// NumberOfRvaAndSizes.
    pub directories: u32,
    pub file_alignment: u32,
    pub section_alignment: u32,
    pub size_of_image: u32,
    pub size_of_headers: u32,
    pub sections: Vec<RawSection>,
}

impl Headers {
    /// File offset of the optional header's CheckSum.
    pub fn checksum_offset(&self) -> usize {
        self.opt + OPT_CHECKSUM
    }

    /// Data directory `index` as (VirtualAddress, Size), or `None` past NumberOfRvaAndSizes.
    pub fn directory(&self, pe: &[u8], index: u32) -> Option<(u32, u32)> {
        if index >= self.directories {
            return None;
        }
        let at = self.opt + PE32_PLUS_FIXED + 8 * index as usize;
        // In bounds: parse checked SizeOfOptionalHeader against the directories.
        Some((le32(pe, at), le32(pe, at + 4)))
    }

    /// File offset one past the section table.
    pub fn section_table_end(&self) -> usize {
        self.section_table + SECTION_HEADER_SIZE * self.sections.len()
    }
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// `what` must lie in `start..start + size`: the error when it does not.
fn need(pe: &[u8], what: &'static str, start: usize, size: usize) -> Result<(), UefiError> {
    let end = start as u64 + size as u64;
    if end > pe.len() as u64 {
        return Err(UefiError::Truncated {
            what,
            start: start as u64,
            end,
            len: pe.len() as u64,
        });
    }
    Ok(())
}

/// Locates and checks the DOS, COFF and optional headers and the section table.
pub(crate) fn parse(pe: &[u8]) -> Result<Headers, UefiError> {
    need(pe, "DOS header", 0, 0x40)?;
    if &pe[..2] != b"MZ" {
        return Err(UefiError::BadDosMagic {
            found: [pe[0], pe[1]],
        });
    }
    let sig = le32(pe, E_LFANEW) as usize;
    need(pe, "PE signature", sig, 4)?;
    if &pe[sig..sig + 4] != b"PE\0\0" {
        let mut found = [0u8; 4];
        found.copy_from_slice(&pe[sig..sig + 4]);
        return Err(UefiError::BadPeSignature {
            offset: sig as u64,
            found,
        });
    }
    let coff = sig + 4;
    need(pe, "COFF file header", coff, COFF_HEADER_SIZE)?;
    let machine = Machine::from_coff(le16(pe, coff))?;
    let count = le16(pe, coff + COFF_NUMBER_OF_SECTIONS) as usize;
    let opt_size = le16(pe, coff + 16);
    let opt = coff + COFF_HEADER_SIZE;
    need(pe, "optional header", opt, opt_size as usize)?;
    if opt_size < 2 {
        return Err(UefiError::OptionalHeaderTooSmall {
            size: opt_size,
            directories: 0,
            needed: PE32_PLUS_FIXED as u64,
        });
    }
    let magic = le16(pe, opt);
    if magic != PE32_PLUS_MAGIC {
        return Err(UefiError::NotPe32Plus { magic });
    }
    if (opt_size as usize) < PE32_PLUS_FIXED {
        return Err(UefiError::OptionalHeaderTooSmall {
            size: opt_size,
            directories: 0,
            needed: PE32_PLUS_FIXED as u64,
        });
    }
    let directories = le32(pe, opt + OPT_NUMBER_OF_RVA_AND_SIZES);
    if directories > 16 {
        return Err(UefiError::TooManyDataDirectories { count: directories });
    }
    let needed = (PE32_PLUS_FIXED + 8 * directories as usize) as u64;
    if u64::from(opt_size) < needed {
        return Err(UefiError::OptionalHeaderTooSmall {
            size: opt_size,
            directories,
            needed,
        });
    }
    if count > MAX_SECTIONS {
        return Err(UefiError::TooManySections {
            count,
            max: MAX_SECTIONS,
        });
    }
    let section_table = opt + opt_size as usize;
    need(
        pe,
        "section table",
        section_table,
        SECTION_HEADER_SIZE * count,
    )?;
    let mut sections = Vec::with_capacity(count);
    for i in 0..count {
        let at = section_table + SECTION_HEADER_SIZE * i;
        let mut name = [0u8; 8];
        name.copy_from_slice(&pe[at..at + 8]);
        let s = RawSection {
            name,
            virtual_size: le32(pe, at + 8),
            virtual_address: le32(pe, at + 12),
            size_of_raw_data: le32(pe, at + 16),
            pointer_to_raw_data: le32(pe, at + 20),
            characteristics: le32(pe, at + 36),
        };
        // Uninitialized-data sections have no raw data, whatever their pointer says.
        let end = u64::from(s.pointer_to_raw_data) + u64::from(s.size_of_raw_data);
        if s.size_of_raw_data > 0 && end > pe.len() as u64 {
            return Err(UefiError::SectionOutOfBounds {
                name: s.display_name(),
                start: s.pointer_to_raw_data.into(),
                end,
                len: pe.len() as u64,
            });
        }
        sections.push(s);
    }
    Ok(Headers {
        coff,
        opt,
        machine,
        section_table,
        directories,
        file_alignment: le32(pe, opt + OPT_FILE_ALIGNMENT),
        section_alignment: le32(pe, opt + OPT_SECTION_ALIGNMENT),
        size_of_image: le32(pe, opt + OPT_SIZE_OF_IMAGE),
        size_of_headers: le32(pe, opt + OPT_SIZE_OF_HEADERS),
        sections,
    })
}

/// The machine a PE32+ image is for.
pub fn machine(pe: &[u8]) -> Result<Machine, UefiError> {
    Ok(parse(pe)?.machine)
}

/// The section table of a PE32+ image, in table order. Every section's raw data is checked
/// to lie inside the file.
pub fn sections(pe: &[u8]) -> Result<Vec<SectionInfo>, UefiError> {
    Ok(parse(pe)?
        .sections
        .iter()
        .map(|s| SectionInfo {
            name: s.display_name(),
            virtual_address: s.virtual_address,
            virtual_size: s.virtual_size,
            pointer_to_raw_data: s.pointer_to_raw_data,
            size_of_raw_data: s.size_of_raw_data,
            characteristics: s.characteristics,
        })
        .collect())
}

/// The bytes of the first section named exactly `name`, or `None` when there is none.
///
/// These are the first min(VirtualSize, SizeOfRawData) bytes of its raw data: what the
/// loader copies from the file. systemd-stub measures VirtualSize bytes of the loaded image;
/// when VirtualSize is larger than SizeOfRawData the loader zero-fills the rest (PE/COFF spec
/// section 4, VirtualSize), so those zeros are not in the file and not returned here.
/// [`crate::predict_pcr11`] adds them back. When VirtualSize is smaller, the rest of the raw
/// data is FileAlignment padding and is left out.
pub fn section_data<'a>(pe: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, UefiError> {
    let headers = parse(pe)?;
    Ok(headers
        .sections
        .iter()
        .find(|s| s.name_bytes() == name.as_bytes())
        .map(|s| s.loaded_bytes(pe)))
}

/// The PE image checksum (the algorithm of imagehlp's CheckSumMappedFile, which the PE/COFF
/// spec's CheckSum field refers to): the file summed as little-endian 16-bit words with the
/// carry folded back in, the CheckSum field itself counted as zero, an odd last byte as a word
/// of its own; then the file length added.
pub fn checksum(pe: &[u8]) -> Result<u32, UefiError> {
    let headers = parse(pe)?;
    checksum_at(pe, headers.checksum_offset())
}

/// The checksum of `pe` with the four bytes at `field` counted as zero.
pub(crate) fn checksum_at(pe: &[u8], field: usize) -> Result<u32, UefiError> {
    let len = u32::try_from(pe.len()).map_err(|_| UefiError::TooLarge {
        what: format!(
            "a file of {} bytes (CheckSum adds a 32-bit length)",
            pe.len()
        ),
    })?;
    // Sum without folding (a u64 cannot overflow below 4 GiB of input), then fold once:
    // end-around-carry addition is associative, so the result equals folding at each step.
    let mut sum = word_sum(pe);
    // Take the field's words out again, as if its bytes were zero. A word straddles the
    // field only when the field is at an odd offset.
    let first = field & !1;
    let last = (field + 4).min(pe.len());
    for w in (first..last).step_by(2) {
        let lo = pe[w];
        let hi = pe.get(w + 1).copied().unwrap_or(0);
        let zero = |i: usize, b: u8| {
            if (field..field + 4).contains(&i) {
                0
            } else {
                b
            }
        };
        sum -= u64::from(u16::from_le_bytes([lo, hi]));
        sum += u64::from(u16::from_le_bytes([zero(w, lo), zero(w + 1, hi)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    Ok((sum as u32).wrapping_add(len))
}

/// The plain sum of `b` as little-endian 16-bit words (a last odd byte is the low byte of a
/// word of its own).
fn word_sum(b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(8);
    let mut sum = 0u64;
    for c in &mut chunks {
        let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        sum += (x & 0xffff) + ((x >> 16) & 0xffff) + ((x >> 32) & 0xffff) + (x >> 48);
    }
    let mut rest = chunks.remainder().chunks(2);
    for w in &mut rest {
        sum += u64::from(w[0]) | (u64::from(w.get(1).copied().unwrap_or(0)) << 8);
    }
    sum
}

/// Writes `t` into the COFF header's TimeDateStamp and recomputes the optional header's
/// CheckSum, in place (what `pe-fix-timestamp.py` did after objcopy).
///
/// On a signed image this breaks the signature (Authenticode hashes TimeDateStamp, though not
/// CheckSum): set the time before signing, never on a signed output (house rule 22).
pub fn set_timestamp(pe: &mut [u8], t: u32) -> Result<(), UefiError> {
    let headers = parse(pe)?;
    put32(pe, headers.coff + COFF_TIME_DATE_STAMP, t);
    let sum = checksum_at(pe, headers.checksum_offset())?;
    put32(pe, headers.checksum_offset(), sum);
    Ok(())
}

/// The COFF TimeDateStamp.
pub fn timestamp(pe: &[u8]) -> Result<u32, UefiError> {
    let headers = parse(pe)?;
    Ok(le32(pe, headers.coff + COFF_TIME_DATE_STAMP))
}

/// The CheckSum stored in the optional header.
pub fn stored_checksum(pe: &[u8]) -> Result<u32, UefiError> {
    let headers = parse(pe)?;
    Ok(le32(pe, headers.checksum_offset()))
}

/// The Authenticode certificate table: the bytes the security data directory
/// (IMAGE_DIRECTORY_ENTRY_SECURITY, index 4) points at, or `None` when the image is unsigned
/// (no such directory, or a zero size).
///
/// Unlike every other data directory, its "VirtualAddress" is a file offset: the table is
/// not loaded into memory (PE/COFF spec section 4.7, "The Attribute Certificate Table").
pub fn certificate_table(pe: &[u8]) -> Result<Option<&[u8]>, UefiError> {
    let headers = parse(pe)?;
    let Some((offset, size)) = headers.directory(pe, DIRECTORY_SECURITY) else {
        return Ok(None);
    };
    if size == 0 {
        return Ok(None);
    }
    let end = u64::from(offset) + u64::from(size);
    // Offset 0 would be the DOS header: a table there is corrupt, not a signature.
    if offset == 0 || end > pe.len() as u64 {
        return Err(UefiError::CertificateTableOutOfBounds {
            offset: offset.into(),
            size: size.into(),
            len: pe.len() as u64,
        });
    }
    Ok(Some(&pe[offset as usize..end as usize]))
}

/// Whether the image carries an Authenticode certificate table (it says nothing about whether
/// the signature is valid or whose it is: `sbverify --cert` checks that).
pub fn is_signed(pe: &[u8]) -> Result<bool, UefiError> {
    Ok(certificate_table(pe)?.is_some())
}

#[cfg(test)]
#[path = "pe_tests.rs"]
mod tests;
