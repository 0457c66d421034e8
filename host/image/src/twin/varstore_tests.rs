//! Tests of the variable store against Debian's real AAVMF flash images (package
//! qemu-efi-aarch64: `AAVMF_VARS.fd` is blank, `AAVMF_VARS.ms.fd` is formatted by the firmware
//! and holds Microsoft's Secure Boot keys, boot options and replaced records) and against
//! stores made here.

use super::*;

const NVIDIA: Guid = Guid::from_u128(0x781e084c_a330_417c_b678_38e696380cb9);
const GLOBAL: Guid = Guid::from_u128(0x8be4df61_93ca_11d2_aa0d_00e098032b8c);

/// A Debian AAVMF file, or `None` (SKIPPED, or a failure under `APERTURE_REQUIRE_TOOLS=1`).
fn aavmf(name: &str) -> Option<Vec<u8>> {
    let path = Path::new("/usr/share/AAVMF").join(name);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) => {
            let why = format!(
                "{}: {e} (Debian package qemu-efi-aarch64; `cargo xtask test` installs it)",
                path.display()
            );
            if std::env::var("APERTURE_REQUIRE_TOOLS").as_deref() == Ok("1") {
                panic!("APERTURE_REQUIRE_TOOLS=1: {why}");
            }
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// An empty formatted store of the smallest size AAVMF's layout allows.
fn small() -> VarStore {
    VarStore::format(vec![0u8; FV_LENGTH as usize]).unwrap()
}

#[test]
fn formatting_a_blank_image_writes_the_headers_the_firmware_writes() {
    let (Some(blank), Some(enrolled)) = (aavmf("AAVMF_VARS.fd"), aavmf("AAVMF_VARS.ms.fd")) else {
        return;
    };
    assert!(
        VarStore::is_blank(&blank),
        "Debian ships AAVMF_VARS.fd blank"
    );
    assert!(!VarStore::is_blank(&enrolled));
    let formatted = VarStore::format(blank.clone()).unwrap();
    // Firmware volume header, block map and variable store header: byte for byte what the
    // firmware itself wrote into the .ms image.
    let headers = FV_HEADER_LEN + STORE_HEADER_LEN;
    assert_eq!(
        formatted.as_bytes()[..headers],
        enrolled[..headers],
        "our format differs from the firmware's"
    );
    assert_eq!(formatted.as_bytes().len(), blank.len());
    assert!(formatted.records().is_empty());
    assert!(formatted.free_is_clean());
    assert_eq!(formatted.free_bytes(), BLOCK as usize - headers);
    // Beyond the volume the image is untouched (zeros, like the firmware leaves it).
    assert!(formatted.as_bytes()[FV_LENGTH as usize..]
        .iter()
        .all(|&b| b == 0));
    // A blank image does not parse as a store, and says why.
    let e = VarStore::parse(blank).unwrap_err().to_string();
    assert!(e.contains("blank"), "{e}");
}

#[test]
fn the_enrolled_image_parses_with_its_replaced_and_authenticated_records() {
    let Some(bytes) = aavmf("AAVMF_VARS.ms.fd") else {
        return;
    };
    let s = VarStore::parse(bytes.clone()).unwrap();
    assert_eq!(
        s.records()[0].offset,
        0x64,
        "first record after both headers"
    );
    assert_eq!(s.records()[0].var.name, "CustomMode");
    // BootOrder was written three times, then deleted: no copy is live.
    let copies: Vec<&Record> = s
        .records()
        .iter()
        .filter(|r| r.var.name == "BootOrder")
        .collect();
    assert_eq!(copies.len(), 3);
    assert!(copies.iter().all(|r| !r.is_candidate()));
    assert_eq!(copies[2].state, state::ADDED & state::DELETED);
    assert!(s.get("BootOrder", GLOBAL).is_none());
    assert_eq!(s.get("Boot0002", GLOBAL).unwrap().data.len(), 88);
    // Secure Boot's keys are time-based authenticated variables.
    let pk = s.get("PK", GLOBAL).unwrap();
    assert_eq!(pk.attributes & AUTHENTICATED_ATTRIBUTES, 0x20);
    assert!(s
        .get(
            "db",
            Guid::from_u128(0xd719b2cb_3d3a_4596_a3bc_dad00e67656f)
        )
        .is_some());
    let names: Vec<&str> = s.variables().iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "CustomMode").count(),
        1,
        "one live copy per name: {names:?}"
    );
    assert!(s.free_is_clean());
    // Records end on 4-byte boundaries; the padding is erased flash.
    for r in s.records() {
        assert_eq!(r.offset % 4, 0);
    }
    // Parsing changes nothing.
    assert_eq!(s.as_bytes(), &bytes[..]);
}

#[test]
fn set_appends_a_record_and_retires_the_old_one_as_the_firmware_does() {
    let Some(bytes) = aavmf("AAVMF_VARS.ms.fd") else {
        return;
    };
    let mut s = VarStore::parse(bytes).unwrap();
    let before = s.records().len();
    let free_at = s.records().last().map(|r| r.offset + r.len).unwrap();
    assert!(s
        .set("BootChainFwNext", NVIDIA, 7, &1u32.to_le_bytes())
        .unwrap());
    let r = s.records().last().unwrap().clone();
    assert_eq!((r.offset, r.state), (free_at, state::ADDED));
    assert_eq!(r.var.name, "BootChainFwNext");
    // 60 header + 32 name ("BootChainFwNext" and NUL in UTF-16) + 4 data = 96.
    assert_eq!(r.len, 96);
    assert!(!s
        .set("BootChainFwNext", NVIDIA, 7, &1u32.to_le_bytes())
        .unwrap());
    assert_eq!(
        s.records().len(),
        before + 1,
        "the same value writes nothing"
    );

    assert!(s
        .set("BootChainFwNext", NVIDIA, 7, &0u32.to_le_bytes())
        .unwrap());
    assert_eq!(s.records().len(), before + 2);
    let old = s.records().iter().find(|x| x.offset == r.offset).unwrap();
    assert_eq!(
        old.state, 0x3c,
        "VAR_ADDED & IN_DELETED_TRANSITION & DELETED"
    );
    assert_eq!(
        s.get("BootChainFwNext", NVIDIA).unwrap().data,
        0u32.to_le_bytes()
    );
    // The file parses to the same view.
    let again = VarStore::parse(s.as_bytes().to_vec()).unwrap();
    assert_eq!(again.records(), s.records());
    assert!(again.free_is_clean());
    // An odd-sized record leaves erased padding before the next one.
    s.set("X", NVIDIA, 7, &[1]).unwrap();
    let x = s.records().last().unwrap().clone();
    assert_eq!(x.len, 68, "60 + 4 + 1, aligned");
    assert_eq!(s.as_bytes()[x.offset + 65..x.offset + 68], [0xff; 3]);
}

#[test]
fn a_copy_in_deleted_transition_counts_until_a_complete_copy_exists() {
    let mut s = small();
    s.set("RootfsStatusSlotB", NVIDIA, 7, &[0xff, 0, 0, 0])
        .unwrap();
    let off = s.records()[0].offset;
    // The firmware was cut after flagging the old copy and before writing the new one.
    let mut bytes = s.as_bytes().to_vec();
    bytes[off + 2] &= state::IN_DELETED_TRANSITION;
    let mut s = VarStore::parse(bytes.clone()).unwrap();
    assert_eq!(
        s.get("RootfsStatusSlotB", NVIDIA).unwrap().data,
        [0xff, 0, 0, 0]
    );
    // A header written without its data (state 0x7f) never counts.
    let mut half = bytes;
    let at = s.records()[0].offset + s.records()[0].len;
    let mut rec = vec![0xffu8; 64];
    rec[0..2].copy_from_slice(&START_ID.to_le_bytes());
    rec[2] = state::HEADER_VALID_ONLY;
    rec[4..8].copy_from_slice(&7u32.to_le_bytes());
    rec[36..40].copy_from_slice(&4u32.to_le_bytes());
    rec[40..44].copy_from_slice(&0u32.to_le_bytes());
    rec[44..60].copy_from_slice(&NVIDIA.to_gpt_bytes());
    rec[60..64].copy_from_slice(&[b'Y', 0, 0, 0]);
    half[at..at + 64].copy_from_slice(&rec);
    let h = VarStore::parse(half).unwrap();
    assert_eq!(h.records().len(), 2);
    assert!(h.get("Y", NVIDIA).is_none());
    assert!(!h.free_is_clean() || h.free_bytes() > 0);

    // Setting it again writes a complete copy and retires the one in transition.
    s.set("RootfsStatusSlotB", NVIDIA, 7, &[0, 0, 0, 0])
        .unwrap();
    assert_eq!(
        s.get("RootfsStatusSlotB", NVIDIA).unwrap().data,
        [0, 0, 0, 0]
    );
    // Deleting removes every candidate copy.
    assert!(s.delete("RootfsStatusSlotB", NVIDIA).unwrap());
    assert!(s.get("RootfsStatusSlotB", NVIDIA).is_none());
    assert!(!s.delete("RootfsStatusSlotB", NVIDIA).unwrap());
    assert!(s.records().iter().all(|r| !r.is_candidate()));
}

#[test]
fn authenticated_variables_are_never_written() {
    let Some(bytes) = aavmf("AAVMF_VARS.ms.fd") else {
        return;
    };
    let mut s = VarStore::parse(bytes.clone()).unwrap();
    let e = s.set("PK", GLOBAL, 0x27, &[1, 2]).unwrap_err();
    assert!(matches!(e, VarStoreError::Authenticated { .. }), "{e}");
    assert!(e.to_string().contains("PK"), "{e}");
    assert!(s.delete("PK", GLOBAL).is_err());
    assert!(s.set("New", NVIDIA, 0x27, &[1]).is_err());
    assert_eq!(
        s.as_bytes(),
        &bytes[..],
        "a refused change leaves the image as it was"
    );
}

#[test]
fn a_full_store_is_compacted_and_then_refuses_what_cannot_fit() {
    let mut s = small();
    s.set("Keep", NVIDIA, 7, b"kept").unwrap();
    let big = vec![0x5au8; 20 << 10];
    for i in 0..40u8 {
        let mut v = big.clone();
        v[0] = i;
        s.set("Big", NVIDIA, 7, &v).unwrap();
        assert_eq!(s.get("Big", NVIDIA).unwrap().data[0], i);
    }
    // 40 x 20 KiB does not fit in 256 KiB without compaction.
    assert!(s.records().len() < 14, "{} records", s.records().len());
    assert_eq!(s.get("Keep", NVIDIA).unwrap().data, b"kept");
    let again = VarStore::parse(s.as_bytes().to_vec()).unwrap();
    assert_eq!(again.variables().len(), 2);
    assert!(again.free_is_clean());

    let e = s
        .set("Huge", NVIDIA, 7, &vec![0u8; BLOCK as usize])
        .unwrap_err();
    assert!(matches!(e, VarStoreError::Full { .. }), "{e}");
}

#[test]
fn dirty_free_space_is_reclaimed_before_writing() {
    let mut s = small();
    s.set("A", NVIDIA, 7, &[1]).unwrap();
    s.set("A", NVIDIA, 7, &[2]).unwrap();
    let mut bytes = s.as_bytes().to_vec();
    let free_at = s.records().last().map(|r| r.offset + r.len).unwrap();
    bytes[free_at + 100] = 0;
    let mut s = VarStore::parse(bytes).unwrap();
    assert!(!s.free_is_clean());
    s.set("B", NVIDIA, 7, &[3]).unwrap();
    assert!(s.free_is_clean());
    assert_eq!(
        s.records().len(),
        2,
        "the retired copy of A went with the reclaim"
    );
    assert_eq!(s.get("A", NVIDIA).unwrap().data, [2]);
}

#[test]
fn damaged_images_are_refused_with_the_reason() {
    let mut s = small();
    s.set("A", NVIDIA, 7, &[1, 2, 3, 4]).unwrap();
    let good = s.as_bytes().to_vec();

    let mut b = good.clone();
    let off = s.records()[0].offset;
    b[off + 40..off + 44].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = VarStore::parse(b).unwrap_err();
    assert!(
        matches!(e, VarStoreError::Corrupt { offset, .. } if offset == off),
        "{e}"
    );

    let mut b = good.clone();
    b[50] ^= 1;
    assert!(VarStore::parse(b)
        .unwrap_err()
        .to_string()
        .contains("checksum"));

    let mut b = good.clone();
    b[FV_HEADER_LEN..FV_HEADER_LEN + 16].copy_from_slice(&PLAIN_STORE_GUID.to_gpt_bytes());
    assert!(matches!(
        VarStore::parse(b).unwrap_err(),
        VarStoreError::PlainStore
    ));

    let mut b = good;
    b[40] = b'X';
    let e = VarStore::parse(b).unwrap_err().to_string();
    assert!(e.contains("_FVH") && e.contains("AAVMF_VARS.fd"), "{e}");

    assert!(VarStore::format(vec![0; 4096]).is_err());
}

#[test]
fn open_formats_a_blank_file_and_save_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("vars.fd");
    std::fs::write(&p, vec![0u8; 4 * BLOCK as usize]).unwrap();
    let mut s = VarStore::open(&p).unwrap();
    s.set("RootfsRetryCountMax", NVIDIA, 7, &3u32.to_le_bytes())
        .unwrap();
    s.save(&p).unwrap();
    let back = VarStore::open(&p).unwrap();
    assert_eq!(
        back.get("RootfsRetryCountMax", NVIDIA).unwrap().data,
        3u32.to_le_bytes()
    );
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4 * BLOCK);
    let e = VarStore::open(&d.path().join("missing.fd"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.fd"), "{e}");
}
