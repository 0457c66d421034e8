//! A small synthetic PE32+ "stub" for tests, built field by field from the PE/COFF spec so
//! that tier 1 runs without systemd-boot-efi installed (this crate's unit tests, and with the
//! `testing` feature other crates' tests of code that handles UKIs). It is shaped like systemd
//! 252's x86-64 stub where that matters: SectionAlignment and FileAlignment 0x200,
//! SizeOfHeaders 0x400 with room for more section headers, a SizeOfImage that is not a
//! multiple of 4 KiB, and a COFF symbol table after the last section.

use crate::pe::put32;

/// File offset of the PE signature (e_lfanew).
pub const PE: usize = 0x80;
/// File offset of the COFF file header.
pub const COFF: usize = PE + 4;
/// File offset of the optional header.
pub const OPT: usize = COFF + 20;
/// SizeOfOptionalHeader: the PE32+ fields and 16 data directories.
pub const OPT_SIZE: usize = 112 + 16 * 8;
/// File offset of the section table.
pub const TABLE: usize = OPT + OPT_SIZE;
/// File offset of the symbol table (after the last section).
pub const SYMBOLS: usize = 0xa00;
/// SizeOfImage: the end of .data (0x2234) rounded to SectionAlignment 0x200.
pub const SIZE_OF_IMAGE: u32 = 0x2400;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes one section header.
pub fn section_header(
    b: &mut [u8],
    index: usize,
    name: &[u8],
    va: u32,
    vsize: u32,
    raw: (u32, u32),
    characteristics: u32,
) {
    let at = TABLE + 40 * index;
    b[at..at + 8].fill(0);
    b[at..at + name.len()].copy_from_slice(name);
    put32(b, at + 8, vsize);
    put32(b, at + 12, va);
    put32(b, at + 16, raw.1);
    put32(b, at + 20, raw.0);
    put32(b, at + 36, characteristics);
}

/// The stub: `.text` (0x10 bytes at RVA 0x1000) and `.data` (0x234 bytes at RVA 0x2000),
/// 2 COFF symbols and a string table after them, CheckSum filled in.
pub fn synthetic_stub() -> Vec<u8> {
    let mut b = vec![0u8; SYMBOLS + 2 * 18 + 4];
    b[..2].copy_from_slice(b"MZ");
    put32(&mut b, 0x3c, PE as u32);
    b[PE..PE + 4].copy_from_slice(b"PE\0\0");
    put16(&mut b, COFF, 0x8664);
    put16(&mut b, COFF + 2, 2);
    put32(&mut b, COFF + 8, SYMBOLS as u32);
    put32(&mut b, COFF + 12, 2);
    put16(&mut b, COFF + 16, OPT_SIZE as u16);
    put16(&mut b, COFF + 18, 0x206);
    put16(&mut b, OPT, 0x20b);
    put32(&mut b, OPT + 4, 0x200); // SizeOfCode
    put32(&mut b, OPT + 8, 0x400); // SizeOfInitializedData
    put32(&mut b, OPT + 16, 0x1000); // AddressOfEntryPoint
    put32(&mut b, OPT + 20, 0x1000); // BaseOfCode
    put32(&mut b, OPT + 32, 0x200); // SectionAlignment
    put32(&mut b, OPT + 36, 0x200); // FileAlignment
    put32(&mut b, OPT + 56, SIZE_OF_IMAGE);
    put32(&mut b, OPT + 60, 0x400); // SizeOfHeaders
    put16(&mut b, OPT + 68, 10); // Subsystem: EFI application
    put32(&mut b, OPT + 108, 16); // NumberOfRvaAndSizes
    section_header(
        &mut b,
        0,
        b".text",
        0x1000,
        0x10,
        (0x400, 0x200),
        0x6000_0020,
    );
    section_header(
        &mut b,
        1,
        b".data",
        0x2000,
        0x234,
        (0x600, 0x400),
        0xc000_0040,
    );
    for (i, byte) in b[0x400..0x410].iter_mut().enumerate() {
        *byte = 0xc3 ^ i as u8;
    }
    for (i, byte) in b[0x600..0x834].iter_mut().enumerate() {
        *byte = (i % 251) as u8 + 1;
    }
    // Symbols and the string table: bytes that assembly must drop.
    for byte in &mut b[SYMBOLS..] {
        *byte = 0x5a;
    }
    let sum = crate::pe::checksum(&b).unwrap();
    put32(&mut b, OPT + 64, sum);
    b
}

/// `pe` with a certificate table appended, as sbsign appends one: 8-byte aligned, a
/// WIN_CERTIFICATE of revision 0x0200 and type PKCS#7 (0x0002), named by the security data
/// directory. Its "signature" is `junk`, which verifies against nothing: for tests of code
/// that must tell a signed image from an unsigned one without running sbverify.
pub fn fake_signed(pe: &[u8], junk: &[u8]) -> Vec<u8> {
    let mut b = pe.to_vec();
    b.resize(b.len().next_multiple_of(8), 0);
    let at = b.len();
    let len = 8 + junk.len();
    b.extend_from_slice(&(len as u32).to_le_bytes());
    b.extend_from_slice(&0x0200u16.to_le_bytes());
    b.extend_from_slice(&0x0002u16.to_le_bytes());
    b.extend_from_slice(junk);
    b.resize(b.len().next_multiple_of(8), 0);
    let pe_at = u32::from_le_bytes(b[0x3c..0x40].try_into().unwrap_or_default()) as usize;
    // The security directory (index 4) of a PE32+ optional header: 112 bytes of fields,
    // then 8 bytes per directory.
    let dir = pe_at + 24 + 112 + 4 * 8;
    let table = (b.len() - at) as u32;
    put32(&mut b, dir, at as u32);
    put32(&mut b, dir + 4, table);
    if let Ok(sum) = crate::pe::checksum(&b) {
        put32(&mut b, pe_at + 24 + 64, sum);
    }
    b
}

/// A UKI for tests of code that installs or checks them: `kernel` and `initrd` in the
/// synthetic stub with `cmdline`, [`fake_signed`] (a certificate table that verifies against
/// nothing).
pub fn test_uki(cmdline: &str, kernel: &[u8], initrd: &[u8]) -> Vec<u8> {
    let unsigned = crate::assemble_uki(
        &synthetic_stub(),
        &[
            (".osrel", b"ID=aperture-test\n"),
            (".cmdline", cmdline.as_bytes()),
            (".initrd", initrd),
            (".linux", kernel),
        ],
    )
    .unwrap_or_default();
    fake_signed(&unsigned, b"snakeoil-signature")
}
