//! Assembling a unified kernel image (UKI): systemd-stub plus data sections (`.osrel`,
//! `.cmdline`, `.initrd`, `.linux`, ...), written as bytes, without objcopy.
//!
//! objcopy cannot write an AArch64 PE on an x86-64 host and stamps the current time into the
//! COFF header (docs/research/issue-18/REPORT.md, Q1). Here the same stub and sections give the
//! same bytes on every host: TimeDateStamp 0, CheckSum recomputed, nothing else taken from the
//! environment.
//!
//! Layout, the rule of `build-uki.sh` (and ukify's): the first new section goes at the stub's
//! SizeOfImage rounded up to 4 KiB, each next one at the end of the previous rounded up to
//! 4 KiB; raw data follows the stub's last section at FileAlignment. The stub's COFF symbol
//! table (systemd 252's has 362 symbols, debugging aid only) and anything else after its last
//! section are dropped and PointerToSymbolTable/NumberOfSymbols zeroed: the PE/COFF spec
//! (section 3.3) says images should carry no COFF symbol table, and with nothing after the
//! sections sbsign has no "gaps between PE/COFF sections" to warn about.

use crate::pcr::PCR11_SECTIONS;
use crate::pe::{self, le32, put32, Headers, Machine, MAX_SECTIONS, SECTION_HEADER_SIZE};
use crate::UefiError;

/// The VMA alignment of the sections [`assemble_uki`] adds (the page size; as build-uki.sh
/// and ukify place them). A stub whose SectionAlignment is larger uses that instead.
pub const UKI_SECTION_ALIGNMENT: u32 = 4096;

/// IMAGE_SCN_CNT_INITIALIZED_DATA (PE/COFF spec section 4.1).
pub const IMAGE_SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
/// IMAGE_SCN_MEM_READ (PE/COFF spec section 4.1).
pub const IMAGE_SCN_MEM_READ: u32 = 0x4000_0000;
/// The characteristics of every added section: initialized, read-only data, what objcopy
/// `--add-section` gives (0x40000040, as `objdump -h` shows for build-uki.sh's output).
pub const UKI_SECTION_CHARACTERISTICS: u32 = IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ;

/// Size of an IMAGE_DEBUG_DIRECTORY entry (PE/COFF spec section 6.1.1).
const DEBUG_ENTRY_SIZE: usize = 28;

/// `stub` (an unsigned PE32+ systemd-stub) with `sections` appended in the order given, as
/// a new unsigned image ready for sbsign.
///
/// Each name must be at most 8 bytes of printable ASCII (PE executables have no long section
/// names), new to the stub and to the list, and must not start with a section name
/// systemd-stub looks for (see [`check_section_name`]); no section may be empty. The stub
/// must be unsigned and have room after its section table for the new headers, below both
/// SizeOfHeaders and its first section's raw data, zeroed (AArch64 `nop` words in the AArch64
/// stub); the 252 stubs have room for 7 (x86-64) and 94 (AArch64).
///
/// Header updates: NumberOfSections; SizeOfImage (end of the last section, rounded to
/// SectionAlignment); SizeOfInitializedData plus the new sections' raw sizes (the spec's
/// "sum of all such sections"; loaders ignore it); TimeDateStamp 0; no COFF symbol table;
/// CheckSum recomputed. Everything else, including every byte of the stub's sections, is
/// copied unchanged.
pub fn assemble_uki(stub: &[u8], sections: &[(&str, &[u8])]) -> Result<Vec<u8>, UefiError> {
    let h = pe::parse(stub)?;
    if let Some(table) = pe::certificate_table(stub)? {
        return Err(UefiError::StubSigned {
            size: table.len() as u32,
        });
    }
    check_alignments(&h)?;
    check_names(&h, sections)?;
    let count = h.sections.len() + sections.len();
    if count > MAX_SECTIONS {
        return Err(UefiError::TooManySections {
            count,
            max: MAX_SECTIONS,
        });
    }
    let data_end = stub_data_end(stub, &h)?;
    check_header_room(stub, &h, sections.len())?;
    check_within_image(&h)?;
    check_debug_data(stub, &h, data_end)?;

    // Place the new sections.
    let file_align = u64::from(h.file_alignment);
    let va_align = u64::from(h.section_alignment.max(UKI_SECTION_ALIGNMENT));
    let mut raw = align_up(data_end, file_align);
    let mut va = align_up(u64::from(h.size_of_image), va_align);
    let mut image_end = u64::from(h.size_of_image);
    let mut added_raw = 0u64;
    let mut placed = Vec::with_capacity(sections.len());
    for (name, data) in sections {
        let len = data.len() as u64;
        let raw_size = align_up(len, file_align);
        let fits = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| UefiError::TooLarge {
                what: format!("{what} of section {name:?}"),
            })
        };
        placed.push(pe::RawSection {
            name: padded_name(name),
            virtual_size: fits(len, "VirtualSize")?,
            virtual_address: fits(va, "VirtualAddress")?,
            size_of_raw_data: fits(raw_size, "SizeOfRawData")?,
            pointer_to_raw_data: fits(raw, "PointerToRawData")?,
            characteristics: UKI_SECTION_CHARACTERISTICS,
        });
        fits(raw + raw_size, "end of the file after the raw data")?;
        image_end = va + len;
        fits(image_end, "end of the image (RVA) after")?;
        raw += raw_size;
        added_raw += raw_size;
        va = align_up(image_end, va_align);
    }
    let size_of_image = u32::try_from(align_up(image_end, u64::from(h.section_alignment)))
        .map_err(|_| UefiError::TooLarge {
            what: "SizeOfImage".into(),
        })?;
    let initialized = u64::from(le32(stub, h.opt + pe::OPT_SIZE_OF_INITIALIZED_DATA)) + added_raw;
    let initialized = u32::try_from(initialized).map_err(|_| UefiError::TooLarge {
        what: "SizeOfInitializedData".into(),
    })?;

    // Write: the stub up to the end of its last section, then each section's data padded to
    // FileAlignment with zeros.
    let mut out = Vec::with_capacity(raw as usize);
    out.extend_from_slice(&stub[..data_end as usize]);
    for (s, (_, data)) in placed.iter().zip(sections) {
        out.resize(s.pointer_to_raw_data as usize, 0);
        out.extend_from_slice(data);
    }
    out.resize(raw as usize, 0);

    let table_end = h.section_table_end();
    for (i, s) in placed.iter().enumerate() {
        write_section_header(&mut out, table_end + SECTION_HEADER_SIZE * i, s);
    }
    let coff = h.coff;
    out[coff + pe::COFF_NUMBER_OF_SECTIONS..][..2].copy_from_slice(&(count as u16).to_le_bytes());
    put32(&mut out, coff + pe::COFF_TIME_DATE_STAMP, 0);
    put32(&mut out, coff + pe::COFF_POINTER_TO_SYMBOL_TABLE, 0);
    put32(&mut out, coff + pe::COFF_NUMBER_OF_SYMBOLS, 0);
    put32(&mut out, h.opt + pe::OPT_SIZE_OF_IMAGE, size_of_image);
    put32(
        &mut out,
        h.opt + pe::OPT_SIZE_OF_INITIALIZED_DATA,
        initialized,
    );
    let sum = pe::checksum_at(&out, h.checksum_offset())?;
    put32(&mut out, h.checksum_offset(), sum);
    Ok(out)
}

/// Whether `name` can be added to a UKI: 1-8 bytes of printable ASCII, not a `/n` long-name
/// reference, and not starting with a section name systemd-stub looks for unless it is that
/// name.
///
/// The last rule is because systemd 252's `locate_sections()` (src/boot/efi/pe.c) compares
/// only the first strlen(wanted) bytes of each 8-byte name and lets the last match win: a
/// section `.initrd2` added after `.initrd` would be measured and booted as the initrd.
pub fn check_section_name(name: &str) -> Result<(), UefiError> {
    let bad = |reason: String| {
        Err(UefiError::BadSectionName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty".into());
    }
    if name.len() > 8 {
        return bad(format!(
            "it is {} bytes; a PE executable's section name holds 8 (PE/COFF spec section 4: \
             images have no string table for longer names)",
            name.len()
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("only printable ASCII without spaces is allowed".into());
    }
    if name.starts_with('/') {
        return bad("a leading '/' marks a string-table reference in COFF objects".into());
    }
    for wanted in PCR11_SECTIONS.iter().chain(&[".pcrsig"]) {
        if name != *wanted && name.starts_with(wanted) {
            return bad(format!(
                "it starts with {wanted:?}, and systemd-stub 252 compares only the first {} \
                 bytes, so it would take this section for {wanted:?}",
                wanted.len()
            ));
        }
    }
    Ok(())
}

fn check_names(h: &Headers, sections: &[(&str, &[u8])]) -> Result<(), UefiError> {
    let mut taken: Vec<&[u8]> = h.sections.iter().map(|s| s.name_bytes()).collect();
    for (name, data) in sections {
        check_section_name(name)?;
        if taken.contains(&name.as_bytes()) {
            return Err(UefiError::DuplicateSection {
                name: name.to_string(),
            });
        }
        if data.is_empty() {
            return Err(UefiError::EmptySection {
                name: name.to_string(),
            });
        }
        taken.push(name.as_bytes());
    }
    Ok(())
}

/// FileAlignment and SectionAlignment must be powers of two, FileAlignment at most 64 KiB
/// and SectionAlignment at least FileAlignment (PE/COFF spec section 3.4.2); placement
/// rounds to them.
fn check_alignments(h: &Headers) -> Result<(), UefiError> {
    for (field, value) in [
        ("FileAlignment", h.file_alignment),
        ("SectionAlignment", h.section_alignment),
    ] {
        if !value.is_power_of_two() {
            return Err(UefiError::BadAlignment {
                field,
                value,
                reason: "not a power of two",
            });
        }
    }
    // The spec's upper bound also keeps a hostile stub from making us write gigabytes of
    // padding.
    if h.file_alignment > 0x1_0000 {
        return Err(UefiError::BadAlignment {
            field: "FileAlignment",
            value: h.file_alignment,
            reason: "larger than 64 KiB, the PE/COFF spec's maximum",
        });
    }
    if h.section_alignment < h.file_alignment {
        return Err(UefiError::BadAlignment {
            field: "SectionAlignment",
            value: h.section_alignment,
            reason: "smaller than FileAlignment",
        });
    }
    Ok(())
}

/// One past the stub's last byte worth keeping: the end of its headers or of its last
/// section's raw data, whichever is later.
fn stub_data_end(stub: &[u8], h: &Headers) -> Result<u64, UefiError> {
    let headers_end = u64::from(h.size_of_headers);
    if headers_end > stub.len() as u64 {
        return Err(UefiError::Truncated {
            what: "headers (SizeOfHeaders)",
            start: 0,
            end: headers_end,
            len: stub.len() as u64,
        });
    }
    let sections_end = h.sections.iter().map(|s| s.raw_range().end as u64).max();
    Ok(headers_end.max(sections_end.unwrap_or(0)))
}

/// An AArch64 `nop` (0xd503201f), little-endian: what gnu-efi's hand-made PE header for
/// AArch64 (Debian 12's `linuxaa64.efi.stub`) fills the rest of its 0x1000-byte header area
/// with, after a table of two sections. Nothing runs from there: it is below the first
/// section's raw data, outside every section.
const AARCH64_NOP: [u8; 4] = [0x1f, 0x20, 0x03, 0xd5];

/// The new headers go right after the old ones; that space must exist below SizeOfHeaders and
/// the first raw data, and be zero or, in an AArch64 stub, whole `nop` words (else we would
/// overwrite something the linker put there).
fn check_header_room(stub: &[u8], h: &Headers, adding: usize) -> Result<(), UefiError> {
    let old_end = h.section_table_end();
    let needed_end = old_end + SECTION_HEADER_SIZE * adding;
    let first_raw = h
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data > 0)
        .map(|s| u64::from(s.pointer_to_raw_data))
        .min()
        .unwrap_or(u64::MAX);
    let available_end = u64::from(h.size_of_headers).min(first_raw);
    if needed_end as u64 > available_end {
        return Err(UefiError::NoRoomForSectionHeaders {
            count: adding,
            needed_end: needed_end as u64,
            available_end,
        });
    }
    // In bounds: available_end <= SizeOfHeaders <= the file's length (stub_data_end).
    let room = &stub[old_end..needed_end];
    let nop_filled = h.machine == Machine::Aarch64
        && old_end.is_multiple_of(4)
        && room.chunks(4).all(|w| w == AARCH64_NOP);
    if nop_filled {
        return Ok(());
    }
    if let Some(i) = room.iter().position(|&b| b != 0) {
        return Err(UefiError::HeaderRoomNotEmpty {
            offset: (old_end + i) as u64,
        });
    }
    Ok(())
}

/// New sections start at SizeOfImage, so no stub section may reach past it.
fn check_within_image(h: &Headers) -> Result<(), UefiError> {
    for s in &h.sections {
        let end = u64::from(s.virtual_address) + u64::from(s.virtual_size);
        if end > u64::from(h.size_of_image) {
            return Err(UefiError::SectionBeyondImage {
                name: s.display_name(),
                end,
                size_of_image: h.size_of_image,
            });
        }
    }
    Ok(())
}

/// Debug data may live outside every section, in the file bytes assembly drops (PE/COFF spec
/// section 6.1: PointerToRawData is a file offset). Refuse such a stub rather than leave a
/// dangling pointer. The 252 stubs have no debug directory.
fn check_debug_data(stub: &[u8], h: &Headers, data_end: u64) -> Result<(), UefiError> {
    let Some((rva, size)) = h.directory(stub, pe::DIRECTORY_DEBUG) else {
        return Ok(());
    };
    if size == 0 {
        return Ok(());
    }
    // The directory itself is in a section: map its RVA to a file offset through that one.
    let file_offset = h.sections.iter().find_map(|s| {
        let within = rva.checked_sub(s.virtual_address)?;
        (within < s.size_of_raw_data).then(|| s.raw_range().start + within as usize)
    });
    let Some(start) = file_offset else {
        return Err(UefiError::Truncated {
            what: "debug directory (its RVA is in no section's raw data)",
            start: rva.into(),
            end: u64::from(rva) + u64::from(size),
            len: stub.len() as u64,
        });
    };
    let entries = size as usize / DEBUG_ENTRY_SIZE;
    let end = start + entries * DEBUG_ENTRY_SIZE;
    if end > stub.len() {
        return Err(UefiError::Truncated {
            what: "debug directory",
            start: start as u64,
            end: end as u64,
            len: stub.len() as u64,
        });
    }
    for index in 0..entries {
        let at = start + DEBUG_ENTRY_SIZE * index;
        let size_of_data = le32(stub, at + 16);
        let pointer = u64::from(le32(stub, at + 24));
        if size_of_data > 0 && pointer + u64::from(size_of_data) > data_end {
            return Err(UefiError::DebugDataAfterSections {
                index,
                offset: pointer,
            });
        }
    }
    Ok(())
}

fn padded_name(name: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out
}

/// A section header (PE/COFF spec section 4); relocations and line numbers are zero in
/// images.
fn write_section_header(out: &mut [u8], at: usize, s: &pe::RawSection) {
    let header = &mut out[at..at + SECTION_HEADER_SIZE];
    header.fill(0);
    header[..8].copy_from_slice(&s.name);
    put32(header, 8, s.virtual_size);
    put32(header, 12, s.virtual_address);
    put32(header, 16, s.size_of_raw_data);
    put32(header, 20, s.pointer_to_raw_data);
    put32(header, 36, s.characteristics);
}

fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

#[cfg(test)]
#[path = "uki_tests.rs"]
mod tests;
