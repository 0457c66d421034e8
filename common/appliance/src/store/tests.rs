use super::mem::{Cut, MemMedium};
use super::*;

fn store() -> (StateStore<MemMedium>, MemMedium) {
    let m = MemMedium::zeroed(PARTITION_BYTES);
    (StateStore::new(m.clone(), "mem").unwrap(), m)
}

#[test]
fn areas_are_disjoint_and_fit_the_partition() {
    let mut spans: Vec<(u64, u64)> = Area::ALL
        .iter()
        .flat_map(|a| [0, 1].map(|c| (a.offset(c), a.offset(c) + a.copy_bytes())))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "{w:?}");
    }
    assert!(used_bytes() <= PARTITION_BYTES);
    let ids: std::collections::HashSet<u32> = Area::ALL.iter().map(|a| a.id()).collect();
    assert_eq!(ids.len(), Area::ALL.len());
}

#[test]
fn fresh_is_empty_then_alternates_copies_and_clears() {
    let (mut s, _) = store();
    assert_eq!(s.read(Area::Update).unwrap(), None);
    assert_eq!(s.write(Area::Update, b"one").unwrap(), 1);
    assert_eq!(s.write(Area::Update, b"two").unwrap(), 2);
    assert_eq!(s.read(Area::Update).unwrap().unwrap(), b"two");
    assert_eq!(s.copy(Area::Update, 0).unwrap().unwrap().payload, b"one");
    assert_eq!(s.copy(Area::Update, 1).unwrap().unwrap().payload, b"two");
    // Other areas are untouched.
    assert_eq!(s.read(Area::Reset).unwrap(), None);
    s.clear(Area::Update).unwrap();
    assert_eq!(s.read(Area::Update).unwrap(), None);
    assert_eq!(s.write(Area::Update, b"three").unwrap(), 4);
}

#[test]
fn json_round_trips_and_oversized_records_are_refused() {
    let (mut s, _) = store();
    s.write_json(Area::SlotB, &serde_json::json!({"v": 1}))
        .unwrap();
    let v: serde_json::Value = s.read_json(Area::SlotB).unwrap().unwrap();
    assert_eq!(v["v"], 1);
    let big = vec![b'x'; Area::Reset.max_payload() + 1];
    let e = s.write(Area::Reset, &big).unwrap_err().to_string();
    assert!(e.contains("reset") && e.contains("does not fit"), "{e}");
    s.write(Area::Reset, b"not json").unwrap();
    let e = s.read_json::<serde_json::Value>(Area::Reset).unwrap_err();
    assert!(e.to_string().contains("reset record"), "{e}");
}

#[test]
fn a_small_partition_is_refused_with_the_fix() {
    let e = StateStore::new(MemMedium::zeroed(4096), "/dev/x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/dev/x") && e.contains("reflash"), "{e}");
}

/// A power cut at every operation of a write, losing, keeping or tearing what was not synced
/// at every byte of the copy: the record is always the old one or the new one.
#[test]
fn a_cut_anywhere_leaves_the_old_or_the_new_record() {
    let old = b"old record".to_vec();
    let new = vec![7u8; 300];
    let mut cases = 0;
    for prior_writes in 0..3 {
        for fail_at in 1..=3 {
            let mut cuts = vec![Cut::Lose, Cut::Keep];
            cuts.extend((0..HEADER_BYTES + new.len() + 1).step_by(7).map(Cut::Tear));
            for cut in cuts {
                let (mut s, m) = store();
                for _ in 0..prior_writes {
                    s.write(Area::Storage, b"earlier").unwrap();
                }
                s.write(Area::Storage, &old).unwrap();
                m.fail_from(fail_at);
                let result = s.write(Area::Storage, &new);
                m.power_cut(cut);
                let s = StateStore::new(m.clone(), "mem").unwrap();
                let got = s.read(Area::Storage).unwrap().unwrap();
                assert!(
                    got == old || got == new,
                    "prior {prior_writes} fail at {fail_at} {cut:?}: {got:?}"
                );
                if result.is_ok() {
                    assert_eq!(got, new, "a write that returned Ok must be durable");
                }
                cases += 1;
            }
        }
    }
    assert!(cases > 100);
}

#[test]
fn a_damaged_copy_is_ignored_and_the_next_write_replaces_it() {
    let (mut s, m) = store();
    s.write(Area::Update, b"first").unwrap();
    s.write(Area::Update, b"second").unwrap();
    // Flip a payload byte of the newest copy (1): the older copy is read.
    m.damage(Area::Update.offset(1) + HEADER_BYTES as u64, b"X");
    assert_eq!(s.read(Area::Update).unwrap().unwrap(), b"first");
    // The next write goes into the damaged copy, not over the good one.
    s.write(Area::Update, b"third").unwrap();
    assert_eq!(s.copy(Area::Update, 0).unwrap().unwrap().payload, b"first");
    assert_eq!(s.read(Area::Update).unwrap().unwrap(), b"third");
    // Both copies zeroed: no record, and writing works again.
    m.damage(Area::Update.offset(0), &[0; 64]);
    m.damage(Area::Update.offset(1), &[0; 64]);
    assert_eq!(s.read(Area::Update).unwrap(), None);
    s.write(Area::Update, b"again").unwrap();
    assert_eq!(s.read(Area::Update).unwrap().unwrap(), b"again");
}

/// Fuzz target `state_store`: a valid copy whose sequence number is `u64::MAX` made the next
/// write overflow (a panic in debug builds; in release the new copy got 0 and lost to the old
/// one, so the write was silently never read). Sequence numbers now wrap.
#[test]
fn a_copy_at_the_largest_sequence_number_is_followed_by_the_next_write() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/fuzz/update-copy-sequence-u64-max.bin"
    );
    let copy = std::fs::read(fixture).unwrap();
    let (mut s, m) = store();
    m.damage(Area::Update.offset(0), &copy);
    assert_eq!(s.newest(Area::Update).unwrap().unwrap().seq, u64::MAX);
    assert_eq!(
        s.read(Area::Update).unwrap().unwrap(),
        br#"{"floor":6,"committed":"a"}"#
    );
    assert_eq!(s.write(Area::Update, b"next").unwrap(), 0);
    assert_eq!(s.read(Area::Update).unwrap().unwrap(), b"next");
    assert_eq!(s.write(Area::Update, b"after").unwrap(), 1);
    assert_eq!(s.read(Area::Update).unwrap().unwrap(), b"after");
    assert_eq!(s.copy(Area::Update, 0).unwrap().unwrap().seq, 1);
}

#[test]
fn a_record_cannot_be_moved_to_another_area() {
    let (mut s, m) = store();
    s.write(Area::SlotA, b"slot a").unwrap();
    // Copy slot A's first copy over the reset area's: its area id does not match.
    let bytes = m.snapshot();
    let from = Area::SlotA.offset(0) as usize;
    m.damage(Area::Reset.offset(0), &bytes[from..from + 64]);
    assert_eq!(s.read(Area::Reset).unwrap(), None);
}

#[test]
fn works_on_a_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(PARTITION_BYTES).unwrap();
    drop(f);
    let mut s = StateStore::open(&p).unwrap();
    s.write(Area::Agent, b"x").unwrap();
    drop(s);
    assert_eq!(
        StateStore::open(&p)
            .unwrap()
            .read(Area::Agent)
            .unwrap()
            .unwrap(),
        b"x"
    );
}
