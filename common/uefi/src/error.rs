//! `UefiError`: the one typed error of this crate.
//!
//! The PE parser reads untrusted bytes (a stub from a rootfs tree, a UKI read back from an
//! ESP), so every message names the structure and the field that is wrong and where it is in
//! the file; the reader is a build engineer holding the file, or an appliance log.

/// Everything that can go wrong reading or writing a PE image, predicting a PCR or encoding a
/// TPM structure. New variants may be added, so match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UefiError {
    /// A structure runs past the end of the file.
    #[error("PE image is truncated: the {what} needs bytes {start:#x}..{end:#x}, but the file is {len:#x} bytes long")]
    Truncated {
        /// The structure: "DOS header", "COFF file header", "section table".
        what: &'static str,
        /// Its first byte.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// The file does not start with the DOS header's "MZ".
    #[error("not a PE image: the DOS header starts with {found:02x?}, not \"MZ\" (4d 5a)")]
    BadDosMagic {
        /// The first two bytes.
        found: [u8; 2],
    },
    /// No "PE\0\0" where the DOS header's e_lfanew points.
    #[error("not a PE image: e_lfanew points at {offset:#x}, which holds {found:02x?}, not the signature \"PE\\0\\0\"")]
    BadPeSignature {
        /// e_lfanew.
        offset: u64,
        /// The four bytes found there.
        found: [u8; 4],
    },
    /// The optional header is PE32 (or something else), not PE32+.
    #[error("PE optional header magic is {magic:#06x}; only PE32+ (0x020b) is supported, 0x010b is 32-bit PE32")]
    NotPe32Plus {
        /// The optional header's Magic.
        magic: u16,
    },
    /// A machine type other than the two our boards use.
    #[error("PE COFF header machine is {machine:#06x}; only x86-64 (0x8664) and AArch64 (0xaa64) are supported")]
    UnsupportedMachine {
        /// The COFF header's Machine.
        machine: u16,
    },
    /// SizeOfOptionalHeader is too small for the fields and data directories it declares.
    #[error("PE SizeOfOptionalHeader is {size}, but the PE32+ fields and {directories} data directories need {needed} bytes")]
    OptionalHeaderTooSmall {
        /// SizeOfOptionalHeader.
        size: u16,
        /// NumberOfRvaAndSizes.
        directories: u32,
        /// What they need.
        needed: u64,
    },
    /// NumberOfRvaAndSizes is over 16.
    #[error("PE NumberOfRvaAndSizes is {count}; the PE32+ optional header defines at most 16 data directories")]
    TooManyDataDirectories {
        /// NumberOfRvaAndSizes.
        count: u32,
    },
    /// More sections than the loaders accept.
    #[error("PE image has {count} sections; the PE/COFF spec's loader limit (and systemd-stub's) is {max}")]
    TooManySections {
        /// How many (for assembly: stub sections plus new ones).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A section's raw data lies outside the file.
    #[error("PE section {name:?}: its raw data {start:#x}..{end:#x} (PointerToRawData + SizeOfRawData) lies outside the {len:#x}-byte file")]
    SectionOutOfBounds {
        /// The section.
        name: String,
        /// PointerToRawData.
        start: u64,
        /// PointerToRawData + SizeOfRawData.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// FileAlignment or SectionAlignment is not a power of two (or SectionAlignment <
    /// FileAlignment).
    #[error("PE {field} is {value:#x}: {reason}")]
    BadAlignment {
        /// "FileAlignment" or "SectionAlignment".
        field: &'static str,
        /// Its value.
        value: u32,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The security data directory points outside the file.
    #[error("PE certificate table (security directory) at file offset {offset:#x}, {size} bytes, lies outside the {len:#x}-byte file")]
    CertificateTableOutOfBounds {
        /// Its "VirtualAddress", a file offset.
        offset: u64,
        /// Its Size.
        size: u64,
        /// The file's length.
        len: u64,
    },
    /// The stub given to [`crate::assemble_uki`] already carries a signature.
    #[error("UKI stub is already signed (certificate table of {size} bytes); adding sections would invalidate it: assemble from the unsigned stub, then sign the UKI")]
    StubSigned {
        /// The certificate table's size.
        size: u32,
    },
    /// The stub's headers cannot hold the new section headers.
    #[error("UKI stub has no room for {count} more section headers: the table would end at {needed_end:#x}, but the headers end at {available_end:#x} (SizeOfHeaders, or the first section's raw data)")]
    NoRoomForSectionHeaders {
        /// How many headers were to be added.
        count: usize,
        /// Where the enlarged section table would end.
        needed_end: u64,
        /// Where the room ends.
        available_end: u64,
    },
    /// The space after the stub's section table holds data that new headers would overwrite.
    #[error("UKI stub's header padding at {offset:#x} is neither zero nor AArch64 nop words; a new section header would overwrite what the linker put there")]
    HeaderRoomNotEmpty {
        /// The first non-zero byte.
        offset: u64,
    },
    /// A section name cannot be written into a PE executable's section table, or would be
    /// misread by systemd-stub.
    #[error("UKI section name {name:?} is invalid: {reason}")]
    BadSectionName {
        /// The name.
        name: String,
        /// The rule it breaks.
        reason: String,
    },
    /// A section name is already used, by the stub or earlier in the list.
    #[error(
        "UKI section {name:?} already exists (in the stub, or earlier in the list of new sections)"
    )]
    DuplicateSection {
        /// The name.
        name: String,
    },
    /// A section to add has no bytes.
    #[error("UKI section {name:?} is empty; systemd-stub ignores a section whose VirtualSize is 0, so it would silently be missing")]
    EmptySection {
        /// The name.
        name: String,
    },
    /// A stub section reaches past the stub's SizeOfImage, so new sections placed after
    /// SizeOfImage would overlap it.
    #[error("UKI stub section {name:?} ends at RVA {end:#x}, past the stub's SizeOfImage {size_of_image:#x}")]
    SectionBeyondImage {
        /// The section.
        name: String,
        /// VirtualAddress + VirtualSize.
        end: u64,
        /// The stub's SizeOfImage.
        size_of_image: u32,
    },
    /// The stub's debug directory points at file bytes that assembly drops.
    #[error("UKI stub's debug directory entry {index} points at file offset {offset:#x}, after the section data; assembly drops those bytes, so use a stub without them")]
    DebugDataAfterSections {
        /// The entry's index in the debug directory.
        index: usize,
        /// Its PointerToRawData.
        offset: u64,
    },
    /// The result would not fit the PE format's 32-bit sizes.
    #[error("UKI would be too large: {what} does not fit the PE format's 32-bit fields")]
    TooLarge {
        /// The field that overflows: "SizeOfImage after section \".linux\"".
        what: String,
    },
    /// A PCR index outside the 24 PCRs a 3-byte TPMS_PCR_SELECTION bitmap can name.
    #[error("PCR {pcr} is out of range: a TPMS_PCR_SELECTION with sizeofSelect 3 names PCRs 0-23")]
    PcrOutOfRange {
        /// The index.
        pcr: u32,
    },
    /// An RSA modulus whose length is not a whole key size.
    #[error("RSA modulus is {bits} bits (leading zero bytes removed); a TPM key needs 1024, 2048, 3072 or 4096 bits with the top bit set")]
    BadRsaModulus {
        /// Its length in bits.
        bits: u64,
    },
    /// A TPM2B buffer longer than its 16-bit size field.
    #[error("TPM {what} is {len} bytes; a TPM2B buffer holds at most 65535")]
    TpmBufferTooLarge {
        /// The field: "authPolicy".
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A UKI's `.apolicy` section that does not parse.
    #[error("the UKI's signed disk-key policy (section .apolicy) is malformed: {reason}")]
    BadSignedPolicy {
        /// What is wrong.
        reason: String,
    },
}
