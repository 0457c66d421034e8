//! Storage's records: the `storage` area record (key source, per-volume state and sealed key)
//! and a sealed key as a LUKS2 token. Input: two files (`aperture_fuzz::parts`), the record
//! and a token. What parses round-trips through serde_json to an equal value; a token of ours
//! round-trips through `token_json`; the reset marker check never panics.
#![no_main]

use std::collections::BTreeMap;

use aperture_fuzz::parts;
use aperture_storage::luks::{HeaderCopy, LuksHeader};
use aperture_storage::records::{find_token, token_json};
use aperture_storage::volume::wipe_pending_in;
use aperture_storage::{StorageRecord, Volume};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [record, token] = parts::<2>(data).map(|p| p.unwrap_or_default());
    wipe_pending_in(record);
    if let Ok(parsed) = serde_json::from_slice::<StorageRecord>(record) {
        let bytes = serde_json::to_vec(&parsed).expect("a record serializes");
        let back: StorageRecord = serde_json::from_slice(&bytes).expect("and parses again");
        assert_eq!(back, parsed);
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(token) else {
        return;
    };
    let copy = |token: serde_json::Value| HeaderCopy {
        offset: 0,
        seqid: 1,
        uuid: String::new(),
        label: None,
        header: LuksHeader {
            version: 2,
            hdr_size: 16384,
            keyslots_size: None,
            keyslot_areas: Vec::new(),
            data_offset: None,
        },
        keyslots: vec!["0".into()],
        tokens: BTreeMap::from([("0".to_string(), token)]),
    };
    let Some(found) = find_token(&copy(value)) else {
        return;
    };
    let Ok(sealed) = found.sealed else { return };
    let again = serde_json::from_slice(&token_json(Volume::Config, "0", &sealed)).expect("JSON");
    let back = find_token(&copy(again)).expect("our own token is found");
    assert_eq!(back.sealed.expect("and reads"), sealed);
});
