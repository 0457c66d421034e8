//! Unit tests of UKI assembly on the synthetic stub: the placement rule, the header
//! updates, the stub's bytes kept, determinism (a pinned hash), and each refusal.

use sha2::{Digest, Sha256};

use super::*;
use crate::pe::{le16, sections};
use crate::testpe::{self, synthetic_stub, COFF, OPT, TABLE};

const OSREL: &[u8] = b"ID=aperture\n";
const CMDLINE: &[u8] = b"root=PARTLABEL=rootfs_a quiet";

fn initrd() -> Vec<u8> {
    (0..5000u32).map(|i| (i * 31 % 256) as u8).collect()
}

fn kernel() -> Vec<u8> {
    (0..12345u32).map(|i| (i * 17 % 253) as u8).collect()
}

fn build() -> Vec<u8> {
    let (initrd, kernel) = (initrd(), kernel());
    assemble_uki(
        &synthetic_stub(),
        &[
            (".osrel", OSREL),
            (".cmdline", CMDLINE),
            (".initrd", &initrd),
            (".linux", &kernel),
        ],
    )
    .unwrap()
}

#[test]
fn sections_go_at_4k_after_size_of_image_and_file_alignment_after_the_stub() {
    let uki = build();
    let s = sections(&uki).unwrap();
    let got: Vec<_> = s
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.virtual_address,
                s.virtual_size,
                s.pointer_to_raw_data,
                s.size_of_raw_data,
            )
        })
        .collect();
    // SizeOfImage 0x2400 -> 0x3000; each next VMA: previous end rounded up to 4 KiB.
    assert_eq!(
        got,
        [
            (".text", 0x1000, 0x10, 0x400, 0x200),
            (".data", 0x2000, 0x234, 0x600, 0x400),
            (".osrel", 0x3000, 12, 0xa00, 0x200),
            (".cmdline", 0x4000, 29, 0xc00, 0x200),
            (".initrd", 0x5000, 5000, 0xe00, 0x1400),
            (".linux", 0x7000, 12345, 0x2200, 0x3200),
        ]
    );
    for s in &s[2..] {
        assert_eq!(s.characteristics, 0x4000_0040);
    }
    assert_eq!(uki.len(), 0x5400);
    assert_eq!(
        crate::section_data(&uki, ".linux").unwrap(),
        Some(&kernel()[..])
    );
    assert_eq!(
        crate::section_data(&uki, ".initrd").unwrap(),
        Some(&initrd()[..])
    );
    // Padding after each section's data is zero.
    assert!(uki[0xa00 + 12..0xc00].iter().all(|&b| b == 0));
    assert!(uki[0x2200 + 12345..].iter().all(|&b| b == 0));
}

#[test]
fn headers_are_updated_and_everything_else_is_the_stubs() {
    let stub = synthetic_stub();
    let uki = build();
    assert_eq!(le16(&uki, COFF + 2), 6);
    assert_eq!(le32(&uki, COFF + 4), 0, "TimeDateStamp");
    assert_eq!(le32(&uki, COFF + 8), 0, "PointerToSymbolTable");
    assert_eq!(le32(&uki, COFF + 12), 0, "NumberOfSymbols");
    // .linux ends at 0x7000 + 12345 = 0xa039, rounded to SectionAlignment 0x200.
    assert_eq!(le32(&uki, OPT + 56), 0xa200, "SizeOfImage");
    // 0x400 + the new raw sizes 0x200 + 0x200 + 0x1400 + 0x3200 (objcopy adds the same).
    assert_eq!(le32(&uki, OPT + 8), 0x400 + 0x4a00, "SizeOfInitializedData");
    assert_eq!(
        le32(&uki, OPT + 64),
        crate::checksum(&uki).unwrap(),
        "CheckSum"
    );
    // The stub's sections, byte for byte; its symbol table is gone.
    assert_eq!(uki[0x400..0xa00], stub[0x400..0xa00]);
    assert!(!uki.windows(8).any(|w| w == [0x5a; 8]));
    // Headers: only the fields above and the new section headers differ.
    let changed: Vec<usize> = (0..0x400).filter(|&i| uki[i] != stub[i]).collect();
    let allowed = |i: usize| {
        (COFF + 2..COFF + 4).contains(&i)
            || (COFF + 8..COFF + 16).contains(&i)
            || (OPT + 8..OPT + 12).contains(&i)
            || (OPT + 56..OPT + 60).contains(&i)
            || (OPT + 64..OPT + 68).contains(&i)
            || (TABLE + 80..TABLE + 80 + 4 * 40).contains(&i)
    };
    assert!(changed.iter().all(|&i| allowed(i)), "{changed:x?}");
}

/// Same inputs, same bytes; and the bytes are pinned (house rule 18), so a change to the
/// layout rule shows up here first.
#[test]
fn assembly_is_deterministic_and_pinned() {
    let a = build();
    assert_eq!(a, build());
    assert_eq!(
        hex::encode(Sha256::digest(&a)),
        "ec48618f0c65e78a1df906f755b0cae6c841518ada7492463b3eac74921d131c"
    );
}

#[test]
fn a_uki_can_be_read_back_and_extended_again() {
    let uki = build();
    let more = assemble_uki(&uki, &[(".splash", b"BMP")]).unwrap();
    let s = sections(&more).unwrap();
    assert_eq!(s.last().unwrap().virtual_address, 0xb000);
    assert_eq!(
        crate::section_data(&more, ".splash").unwrap(),
        Some(&b"BMP"[..])
    );
}

fn refused(stub: &[u8], new: &[(&str, &[u8])]) -> UefiError {
    assemble_uki(stub, new).unwrap_err()
}

#[test]
fn bad_names_are_refused_with_the_reason() {
    let stub = synthetic_stub();
    for name in [
        "",
        ".toolongname",
        ".cmd line",
        ".é",
        "/4",
        ".linuxA",
        ".pcrsigX",
    ] {
        let e = refused(&stub, &[(name, b"x")]);
        assert!(
            matches!(e, UefiError::BadSectionName { .. }),
            "{name:?}: {e}"
        );
    }
    let e = refused(&stub, &[(".linuxA", b"x")]);
    assert!(e.to_string().contains("systemd-stub 252"), "{e}");
    assert_eq!(
        refused(&stub, &[(".data", b"x")]),
        UefiError::DuplicateSection {
            name: ".data".into()
        }
    );
    assert_eq!(
        refused(&stub, &[(".osrel", b"x"), (".osrel", b"y")]),
        UefiError::DuplicateSection {
            name: ".osrel".into()
        }
    );
    assert_eq!(
        refused(&stub, &[(".cmdline", b"")]),
        UefiError::EmptySection {
            name: ".cmdline".into()
        }
    );
    // Exactly 8 bytes is fine.
    assert!(assemble_uki(&stub, &[(".pcrpkey", b"k")]).is_ok());
}

#[test]
fn a_signed_stub_is_refused() {
    let mut stub = synthetic_stub();
    put32(&mut stub, OPT + 112 + 32, testpe::SYMBOLS as u32);
    put32(&mut stub, OPT + 112 + 32 + 4, 0x20);
    let e = refused(&stub, &[(".linux", b"k")]);
    assert_eq!(e, UefiError::StubSigned { size: 0x20 });
    assert!(e.to_string().contains("unsigned stub"), "{e}");
}

#[test]
fn header_room_must_exist_and_be_empty() {
    let stub = synthetic_stub();
    // Room from 0x1d8 to 0x400: 13 headers.
    let names: Vec<String> = (0..14).map(|i| format!(".s{i}")).collect();
    let new: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    assert!(assemble_uki(&stub, &new[..13]).is_ok());
    let e = refused(&stub, &new);
    assert_eq!(
        e,
        UefiError::NoRoomForSectionHeaders {
            count: 14,
            needed_end: 0x1d8 + 14 * 40,
            available_end: 0x400
        }
    );
    assert!(e.to_string().contains("no room"), "{e}");

    let mut b = stub.clone();
    b[0x1e0] = 1;
    assert_eq!(
        refused(&b, &[(".linux", b"k")]),
        UefiError::HeaderRoomNotEmpty { offset: 0x1e0 }
    );

    // gnu-efi's AArch64 header (Debian 12's linuxaa64.efi.stub) fills its header area with
    // `nop` words after the table: room, in an AArch64 stub only, and only whole words.
    let nop = [0x1f, 0x20, 0x03, 0xd5];
    let mut arm = stub.clone();
    arm[COFF..COFF + 2].copy_from_slice(&0xaa64u16.to_le_bytes());
    for w in arm[0x1d8..0x400].chunks_mut(4) {
        w.copy_from_slice(&nop);
    }
    let uki = assemble_uki(&arm, &[(".osrel", b"ID=x"), (".linux", b"k")]).unwrap();
    let names: Vec<String> = sections(&uki)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(
        names.ends_with(&[".osrel".into(), ".linux".into()]),
        "{names:?}"
    );
    // The words past the new headers are the stub's nops still.
    assert_eq!(&uki[0x1d8 + 2 * 40..0x1d8 + 2 * 40 + 4], &nop);
    let mut x86 = arm.clone();
    x86[COFF..COFF + 2].copy_from_slice(&0x8664u16.to_le_bytes());
    assert_eq!(
        refused(&x86, &[(".linux", b"k")]),
        UefiError::HeaderRoomNotEmpty { offset: 0x1d8 }
    );
    let mut broken = arm.clone();
    broken[0x1e1] = 0;
    assert_eq!(
        refused(&broken, &[(".linux", b"k")]),
        UefiError::HeaderRoomNotEmpty { offset: 0x1d8 }
    );

    let names: Vec<String> = (0..95).map(|i| format!(".s{i}")).collect();
    let new: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    assert_eq!(
        refused(&stub, &new),
        UefiError::TooManySections { count: 97, max: 96 }
    );
}

#[test]
fn inconsistent_stubs_are_refused() {
    let stub = synthetic_stub();
    let mut b = stub.clone();
    put32(&mut b, TABLE + 40 + 8, 0x500); // .data to 0x2500, past SizeOfImage 0x2400
    assert!(matches!(
        refused(&b, &[(".linux", b"k")]),
        UefiError::SectionBeyondImage { end: 0x2500, .. }
    ));

    let mut b = stub.clone();
    put32(&mut b, OPT + 36, 0x300);
    assert!(matches!(
        refused(&b, &[(".linux", b"k")]),
        UefiError::BadAlignment {
            field: "FileAlignment",
            ..
        }
    ));

    let mut b = stub.clone();
    put32(&mut b, OPT + 60, 0x1_0000); // SizeOfHeaders past the end of the file
    assert!(matches!(
        refused(&b, &[(".linux", b"k")]),
        UefiError::Truncated { .. }
    ));

    let mut b = stub.clone();
    put32(&mut b, OPT + 56, 0xffff_fe00); // the first new VMA would be 4 GiB
    assert!(matches!(
        refused(&b, &[(".linux", b"k")]),
        UefiError::TooLarge { .. }
    ));
}

#[test]
fn debug_data_in_the_dropped_tail_is_refused() {
    let mut b = synthetic_stub();
    // A debug directory of one entry at RVA 0x2100 (file 0x700, inside .data).
    put32(&mut b, OPT + 112 + 8 * 6, 0x2100);
    put32(&mut b, OPT + 112 + 8 * 6 + 4, 28);
    put32(&mut b, 0x700 + 16, 0x10); // SizeOfData
    put32(&mut b, 0x700 + 24, 0x600); // PointerToRawData, inside .data: kept
    assert!(assemble_uki(&b, &[(".linux", b"k")]).is_ok());
    put32(&mut b, 0x700 + 24, testpe::SYMBOLS as u32); // in the dropped tail
    assert_eq!(
        refused(&b, &[(".linux", b"k")]),
        UefiError::DebugDataAfterSections {
            index: 0,
            offset: testpe::SYMBOLS as u64
        }
    );
}
