//! Unit tests of the PE reader on the synthetic stub: what it reads, the checksum against a
//! word-by-word reference, and malformed files (every truncation, every header byte
//! flipped) giving errors that name the structure, never panics.

use super::*;
use crate::testpe::{self, synthetic_stub, COFF, OPT, TABLE};

/// pe-fix-timestamp.py's loop, word by word with the carry folded each step, the field
/// zeroed first: the reference the fast sum must equal.
fn reference_checksum(pe: &[u8], field: usize) -> u32 {
    let mut b = pe.to_vec();
    b[field..field + 4].fill(0);
    let mut s: u32 = 0;
    for w in b.chunks(2) {
        let word = u32::from(w[0]) | (u32::from(w.get(1).copied().unwrap_or(0)) << 8);
        s += word;
        s = (s & 0xffff) + (s >> 16);
    }
    (s & 0xffff) + b.len() as u32
}

#[test]
fn reads_the_section_table() {
    let stub = synthetic_stub();
    let s = sections(&stub).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].name, ".text");
    assert_eq!(s[0].virtual_address, 0x1000);
    assert_eq!(s[0].virtual_size, 0x10);
    assert_eq!(s[0].pointer_to_raw_data, 0x400);
    assert_eq!(s[0].size_of_raw_data, 0x200);
    assert_eq!(s[0].characteristics, 0x6000_0020);
    assert_eq!(s[1].name, ".data");
    assert_eq!(machine(&stub).unwrap(), Machine::X86_64);
}

#[test]
fn section_data_is_the_loaded_part_of_the_raw_data() {
    let mut stub = synthetic_stub();
    // VirtualSize 0x234 < SizeOfRawData 0x400: the padding is left out.
    assert_eq!(
        section_data(&stub, ".data").unwrap(),
        Some(&stub.clone()[0x600..0x834])
    );
    assert_eq!(section_data(&stub, ".nothere").unwrap(), None);
    // A name is matched whole, not by prefix.
    assert_eq!(section_data(&stub, ".tex").unwrap(), None);
    // VirtualSize 0x300 > SizeOfRawData 0x200: only the 0x200 bytes in the file.
    put32(&mut stub, TABLE + 8, 0x300);
    assert_eq!(section_data(&stub, ".text").unwrap().unwrap().len(), 0x200);
}

#[test]
fn checksum_matches_the_word_by_word_reference() {
    let stub = synthetic_stub();
    let field = OPT + 64;
    assert_eq!(checksum(&stub).unwrap(), reference_checksum(&stub, field));
    assert_eq!(stored_checksum(&stub).unwrap(), checksum(&stub).unwrap());
    // Odd lengths, a field at an odd offset, words that carry.
    for len in [0x401, 0x402, 0x407, 0x9ff] {
        let mut b: Vec<u8> = (0..len).map(|i| (i * 7 + 0xf9) as u8).collect();
        b[0x100] = 0xff;
        for field in [0x40, 0x41, 0x3fb] {
            assert_eq!(
                checksum_at(&b, field).unwrap(),
                reference_checksum(&b, field),
                "len {len:#x} field {field:#x}"
            );
        }
    }
}

#[test]
fn set_timestamp_writes_the_time_and_a_fresh_checksum() {
    let mut stub = synthetic_stub();
    set_timestamp(&mut stub, 1_700_000_000).unwrap();
    assert_eq!(timestamp(&stub).unwrap(), 1_700_000_000);
    assert_eq!(le32(&stub, COFF + 4), 1_700_000_000);
    assert_eq!(stored_checksum(&stub).unwrap(), checksum(&stub).unwrap());
    assert_ne!(stub, synthetic_stub());
    set_timestamp(&mut stub, 0).unwrap();
    assert_eq!(stub, synthetic_stub());
}

#[test]
fn certificate_table_is_read_at_a_file_offset() {
    let mut stub = synthetic_stub();
    assert_eq!(certificate_table(&stub).unwrap(), None);
    assert!(!is_signed(&stub).unwrap());
    let dir = OPT + 112 + 8 * 4;
    put32(&mut stub, dir, testpe::SYMBOLS as u32);
    put32(&mut stub, dir + 4, 0x28);
    assert_eq!(
        certificate_table(&stub).unwrap(),
        Some(&stub.clone()[testpe::SYMBOLS..])
    );
    assert!(is_signed(&stub).unwrap());
    put32(&mut stub, dir + 4, 0x29);
    let err = certificate_table(&stub).unwrap_err();
    assert!(matches!(err, UefiError::CertificateTableOutOfBounds { .. }));
    assert!(err.to_string().contains("certificate table"), "{err}");
    put32(&mut stub, dir, 0);
    assert!(is_signed(&stub).is_err());
    // Fewer than 5 data directories: there is no security directory at all.
    put32(&mut stub, OPT + 108, 4);
    assert_eq!(certificate_table(&stub).unwrap(), None);
}

fn err_of(b: &[u8]) -> UefiError {
    sections(b).unwrap_err()
}

#[test]
fn malformed_headers_are_named() {
    let stub = synthetic_stub();
    let e = err_of(&stub[..0x3f]);
    assert!(
        matches!(
            e,
            UefiError::Truncated {
                what: "DOS header",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("DOS header"));

    let mut b = stub.clone();
    b[0] = b'Z';
    assert!(matches!(
        err_of(&b),
        UefiError::BadDosMagic {
            found: [b'Z', b'Z']
        }
    ));

    let mut b = stub.clone();
    put32(&mut b, 0x3c, 0xffff_fff0);
    assert!(matches!(
        err_of(&b),
        UefiError::Truncated {
            what: "PE signature",
            ..
        }
    ));

    let mut b = stub.clone();
    b[testpe::PE + 1] = b'X';
    let e = err_of(&b);
    assert!(
        matches!(e, UefiError::BadPeSignature { offset: 0x80, .. }),
        "{e}"
    );

    let mut b = stub.clone();
    b[OPT] = 0x0b;
    b[OPT + 1] = 0x01;
    assert_eq!(err_of(&b), UefiError::NotPe32Plus { magic: 0x10b });

    let mut b = stub.clone();
    b[COFF..COFF + 2].copy_from_slice(&0x014cu16.to_le_bytes());
    assert_eq!(err_of(&b), UefiError::UnsupportedMachine { machine: 0x14c });

    let mut b = stub.clone();
    b[COFF + 16..COFF + 18].copy_from_slice(&100u16.to_le_bytes());
    assert!(matches!(
        err_of(&b),
        UefiError::OptionalHeaderTooSmall { size: 100, .. }
    ));

    let mut b = stub.clone();
    put32(&mut b, OPT + 108, 17);
    assert_eq!(err_of(&b), UefiError::TooManyDataDirectories { count: 17 });

    let mut b = stub.clone();
    b[COFF + 2..COFF + 4].copy_from_slice(&97u16.to_le_bytes());
    assert_eq!(
        err_of(&b),
        UefiError::TooManySections { count: 97, max: 96 }
    );

    // 90 sections: the table would end at 0x188 + 90 * 40, past the file's end.
    let mut b = stub.clone();
    b[COFF + 2..COFF + 4].copy_from_slice(&90u16.to_le_bytes());
    let e = err_of(&b);
    assert!(
        matches!(
            e,
            UefiError::Truncated {
                what: "section table",
                ..
            }
        ),
        "{e}"
    );

    let mut b = stub.clone();
    put32(&mut b, TABLE + 40 + 16, 0x800); // .data SizeOfRawData: 0x600 + 0x800 > file
    let e = err_of(&b);
    assert!(
        matches!(&e, UefiError::SectionOutOfBounds { name, .. } if name == ".data"),
        "{e}"
    );
    assert!(e.to_string().contains("\".data\""), "{e}");
}

/// Every function on every prefix of the stub: an error (up to the end of the last
/// section), never a panic.
#[test]
fn every_truncation_is_an_error() {
    let stub = synthetic_stub();
    for len in 0..stub.len() {
        let b = &stub[..len];
        let complete = len >= testpe::SYMBOLS;
        assert_eq!(sections(b).is_ok(), complete, "len {len:#x}");
        assert_eq!(section_data(b, ".data").is_ok(), complete);
        assert_eq!(checksum(b).is_ok(), complete);
        assert_eq!(certificate_table(b).is_ok(), complete);
        assert_eq!(crate::predict_pcr11(b).is_ok(), complete);
        let mut copy = b.to_vec();
        assert_eq!(set_timestamp(&mut copy, 1).is_ok(), complete);
        assert_eq!(
            crate::assemble_uki(b, &[(".linux", b"k")]).is_ok(),
            complete
        );
    }
}

/// Every header byte set to a few values: whatever the outcome, no panic.
#[test]
fn flipped_header_bytes_never_panic() {
    let stub = synthetic_stub();
    for at in 0..0x400 {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut b = stub.clone();
            b[at] = v;
            let _ = sections(&b);
            let _ = section_data(&b, ".text");
            let _ = checksum(&b);
            let _ = certificate_table(&b);
            let _ = crate::predict_pcr11(&b);
            let _ = crate::assemble_uki(&b, &[(".osrel", b"ID=x\n"), (".linux", b"MZ")]);
            let _ = set_timestamp(&mut b, 7);
        }
    }
}
