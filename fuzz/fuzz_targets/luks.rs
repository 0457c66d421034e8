//! The LUKS2 (and LUKS1) header reader on the input as a partition, and our tokens in it.
//! The first input byte is a flag: when odd, both header copies get a correct sha256 checksum
//! first, so mutations reach the JSON. Never panics; any LUKS magic found means the volume is
//! never formatted; an intact copy's header extent is readable leniently too; a token of ours
//! round-trips through `token_json`.
#![no_main]

use aperture_storage::luks::{self, CopyState, HeaderCopy};
use aperture_storage::records::{find_token, token_json};
use aperture_storage::{MemPartition, Volume};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [flag, rest @ ..] = data else { return };
    let mut bytes = rest.to_vec();
    if flag & 1 == 1 {
        fix_checksum(&mut bytes, 0);
        if let Some(size) = hdr_size(&bytes) {
            fix_checksum(&mut bytes, size);
        }
    }
    let size = bytes.len() as u64;
    let part = MemPartition::new("fuzz", bytes);
    let Ok(probe) = luks::probe(&part) else {
        return;
    };
    let magic = luks::find_magic(&part).expect("memory reads");
    assert_eq!(
        magic.any(),
        probe.any_magic(),
        "format guard and probe disagree"
    );
    let header = luks::read_header(&part).expect("memory reads");
    assert!(luks::metadata_area(header.as_ref(), size) <= size);
    if let CopyState::Valid(copy) = &probe.primary {
        assert!(header.is_some(), "an intact primary copy reads leniently");
        assert!(copy.header.metadata_end() >= copy.header.hdr_size);
    }
    probe.describe();
    for copy in [probe.primary.valid(), probe.secondary.valid()]
        .into_iter()
        .flatten()
    {
        token_round_trip(copy);
    }
});

fn token_round_trip(copy: &HeaderCopy) {
    let Some(found) = find_token(copy) else {
        return;
    };
    let Ok(sealed) = found.sealed else { return };
    let token = token_json(Volume::Data, "0", &sealed);
    let mut again = copy.clone();
    again.tokens = [(
        "0".to_string(),
        serde_json::from_slice(&token).expect("JSON"),
    )]
    .into();
    let back = find_token(&again).expect("our own token is found");
    assert_eq!(back.sealed.expect("and reads"), sealed);
    assert_eq!(back.kind, found.kind);
}

fn hdr_size(bytes: &[u8]) -> Option<usize> {
    let size = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    luks::SECONDARY_OFFSETS
        .contains(&size)
        .then_some(size as usize)
}

fn fix_checksum(bytes: &mut [u8], at: usize) {
    let Some(size) = bytes.get(at..).and_then(hdr_size) else {
        return;
    };
    if let Some(copy) = bytes.get_mut(at..at + size) {
        luks::write_checksum(copy);
    }
}
