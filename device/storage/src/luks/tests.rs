//! Header detection on crafted bytes: both copies, every secondary offset the spec allows,
//! torn and zeroed copies, and the JSON cryptsetup writes.

use super::*;
use crate::disk::MemPartition;

fn header(hdr_size: u64, data_offset: u64) -> FakeHeader {
    FakeHeader {
        hdr_size,
        data_offset,
        keyslot_len: 4096,
        seqid: 3,
        uuid: "6f1c2d3e-4b5a-4697-8877-665544332211".into(),
        label: "data".into(),
        tokens: BTreeMap::new(),
    }
}

fn image(h: &FakeHeader, size: u64) -> Vec<u8> {
    let mut img = vec![0u8; size as usize];
    let n = h.hdr_size as usize;
    img[..n].copy_from_slice(&h.copy(false));
    img[n..2 * n].copy_from_slice(&h.copy(true));
    img
}

#[test]
fn fake_header_parses_back() {
    let img = fake_luks2_image(16384, 1 << 20, &[7u8; 4096]);
    let part = MemPartition::new("data", img);
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
    let p = probe(&part).unwrap();
    assert!(p.primary.valid().is_some() && p.secondary.valid().is_some());
    assert!(!p.needs_repair());
    assert_eq!(p.current().unwrap().keyslots, ["0"]);
}

#[test]
fn a_zeroed_primary_is_still_luks_and_the_secondary_is_current() {
    // Issue 12.3: the first 4 KiB zeroed used to read as "no LUKS here", so first boot
    // formatted the volume.
    let mut img = fake_luks2_image(16384, 1 << 20, &[7u8; 16]);
    img[..4096].fill(0);
    let part = MemPartition::new("data", img);
    assert!(is_luks(&part).unwrap(), "the secondary header counts");
    let found = find_magic(&part).unwrap();
    assert!(found.any() && !found.primary);
    assert_eq!(read_header(&part).unwrap().unwrap().metadata_end(), 1 << 20);
    let p = probe(&part).unwrap();
    assert_eq!(p.primary, CopyState::Missing);
    assert_eq!(p.current().unwrap().offset, 16384);
    assert!(p.needs_repair() && p.any_magic());
}

#[test]
fn the_secondary_is_found_at_every_offset_the_spec_allows() {
    for hdr_size in SECONDARY_OFFSETS {
        let h = header(hdr_size, 2 * hdr_size + 8192);
        let mut img = image(&h, 2 * hdr_size + 8192);
        img[..4096].fill(0);
        let part = MemPartition::new("data", img);
        assert!(is_luks(&part).unwrap(), "hdr_size {hdr_size}");
        let p = probe(&part).unwrap();
        let current = p.current().unwrap();
        assert_eq!(current.offset, hdr_size);
        assert_eq!(current.uuid, h.uuid);
        assert_eq!(current.label.as_deref(), Some("data"));
        assert_eq!(current.seqid, 3);
    }
}

#[test]
fn secondary_magic_elsewhere_is_not_luks() {
    let mut img = vec![0u8; 1 << 20];
    img[0x3000..0x3006].copy_from_slice(&LUKS2_SECONDARY_MAGIC);
    img[0x4001..0x4007].copy_from_slice(&LUKS2_SECONDARY_MAGIC);
    let part = MemPartition::new("data", img);
    assert!(!is_luks(&part).unwrap());
    assert!(!probe(&part).unwrap().any_magic());
}

#[test]
fn a_torn_copy_is_damaged_and_the_other_is_used() {
    let h = header(16384, 1 << 20);
    let mut img = image(&h, 1 << 20);
    // Magic intact, JSON half overwritten: only the checksum tells.
    img[5000..5100].fill(b'x');
    let part = MemPartition::new("data", img.clone());
    let p = probe(&part).unwrap();
    assert!(matches!(p.primary, CopyState::Damaged(ref why) if why.contains("checksum")));
    assert_eq!(p.current().unwrap().offset, 16384);
    assert!(p.needs_repair());
    assert!(
        p.describe().contains("primary header damaged"),
        "{}",
        p.describe()
    );
    // Both torn: magic, but no intact copy.
    img[16384 + 5000..16384 + 5100].fill(b'x');
    let part = MemPartition::new("data", img);
    let p = probe(&part).unwrap();
    assert!(p.any_magic() && p.current().is_none() && !p.needs_repair());
}

#[test]
fn copies_with_different_seqids_need_repair_and_the_newer_wins() {
    let mut h = header(16384, 1 << 20);
    let mut img = image(&h, 1 << 20);
    h.seqid = 4;
    h.tokens.insert(
        "0".into(),
        serde_json::json!({"type": "aperture-tpm2", "keyslots": ["0"]}),
    );
    img[16384..32768].copy_from_slice(&h.copy(true));
    let part = MemPartition::new("data", img);
    let p = probe(&part).unwrap();
    assert!(p.needs_repair());
    let current = p.current().unwrap();
    assert_eq!((current.seqid, current.offset), (4, 16384));
    assert_eq!(current.tokens["0"]["type"], "aperture-tpm2");
}

#[test]
fn no_header_means_default_area() {
    let part = MemPartition::new("data", vec![0u8; 64 << 10]);
    assert!(!find_magic(&part).unwrap().any());
    assert_eq!(read_header(&part).unwrap(), None);
    assert_eq!(probe(&part).unwrap().current(), None);
    assert_eq!(metadata_area(None, 64 << 10), 64 << 10);
    assert_eq!(metadata_area(None, 1 << 30), DEFAULT_METADATA_AREA);
}

#[test]
fn recorded_cryptsetup_header_parses() {
    // The JSON of `cryptsetup luksFormat --type luks2` 2.6.1 on a 32 MiB file (abridged
    // to the fields read here, as luksDump --dump-json-metadata printed them).
    let json = br#"{"keyslots":{"0":{"type":"luks2","key_size":64,"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64}}},"tokens":{"0":{"type":"aperture-tpm2","keyslots":["0"]}},"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic"}},"digests":{},"config":{"json_size":"12288","keyslots_size":"16744448"}}"#;
    let meta: Luks2Json = serde_json::from_slice(json).unwrap();
    assert_eq!(meta.tokens["0"]["type"], "aperture-tpm2");
    let h = meta.into_header(16384);
    assert_eq!(h.metadata_end(), 16 << 20);
}
