//! The device state store (two CRC'd copies per area) on a medium built from the input: a flag
//! byte, then 14 files (`aperture_fuzz::parts`), one per area copy, laid at that copy's offset
//! of a zeroed partition, then a 15th, a record to write. An odd flag makes each copy's length
//! and CRC fields match its file first (the header layout is in the store's module doc), so
//! mutations reach the sequence numbers and payloads. Every area reads (never more than it
//! holds); a write reads back as written, leaves every other area as it was, and survives
//! reopening.
#![no_main]

use aperture_appliance::store::{mem::MemMedium, StateStore, HEADER_BYTES, PARTITION_BYTES};
use aperture_appliance::Area;
use aperture_fuzz::parts;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [flag, data @ ..] = data else { return };
    let files = parts::<15>(data);
    let mut image = vec![0u8; PARTITION_BYTES as usize];
    for (i, file) in files[..14].iter().enumerate() {
        let (area, copy) = (Area::ALL[i / 2], i % 2);
        let at = area.offset(copy) as usize;
        let bytes = file.unwrap_or_default();
        let n = bytes.len().min(area.copy_bytes() as usize);
        let copy = &mut image[at..at + n];
        copy.copy_from_slice(&bytes[..n]);
        if flag & 1 == 1 && n >= HEADER_BYTES {
            let len = (n - HEADER_BYTES) as u32;
            copy[24..28].copy_from_slice(&len.to_le_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(&copy[..28]);
            crc.update(&copy[HEADER_BYTES..]);
            copy[28..32].copy_from_slice(&crc.finalize().to_le_bytes());
        }
    }
    let medium = MemMedium::from_bytes(image);
    let mut store = StateStore::new(medium.clone(), "fuzz").expect("a full-size medium opens");
    let before = Area::ALL.map(|a| store.read(a).expect("memory reads"));
    for (area, record) in Area::ALL.iter().zip(&before) {
        assert!(record.as_ref().map_or(0, Vec::len) <= area.max_payload());
    }
    let target = Area::ALL[data.len() % Area::ALL.len()];
    let payload = files[14].unwrap_or(b"{}");
    let payload = &payload[..payload.len().min(target.max_payload())];
    store
        .write(target, payload)
        .expect("memory takes a record that fits");
    let expected = |a: Area, old: &Option<Vec<u8>>| match a == target {
        true => (!payload.is_empty()).then(|| payload.to_vec()),
        false => old.clone(),
    };
    let reopened =
        StateStore::new(MemMedium::from_bytes(medium.snapshot()), "again").expect("opens");
    for (area, old) in Area::ALL.into_iter().zip(&before) {
        assert_eq!(
            store.read(area).expect("memory"),
            expected(area, old),
            "{}",
            area.name()
        );
        assert_eq!(reopened.read(area).expect("memory"), expected(area, old));
    }
});
