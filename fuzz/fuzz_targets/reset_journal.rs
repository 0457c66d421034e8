//! The reset area's record (journal of a level 2/3 reset and the consumed button press), read
//! by `ResetRecord::load` from the device state store. What loads, saves and loads back equal
//! (with `wipe_pending` recomputed), and storage reads the same `wipe_pending` from it.
#![no_main]

use std::cell::RefCell;

use aperture_appliance::store::{mem::MemMedium, Medium, StateStore, PARTITION_BYTES};
use aperture_appliance::Area;
use aperture_reset::io::Store;
use aperture_reset::ResetRecord;
use aperture_storage::volume::wipe_pending_in;

thread_local! {
    static STORE: RefCell<Store> = RefCell::new({
        let medium: Box<dyn Medium> = Box::new(MemMedium::zeroed(PARTITION_BYTES));
        StateStore::new(medium, "fuzz").expect("a zeroed store opens")
    });
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() > Area::Reset.max_payload() {
        return;
    }
    STORE.with_borrow_mut(|store| {
        store
            .write(Area::Reset, data)
            .expect("the memory medium takes the record");
        let Ok(mut record) = ResetRecord::load(store) else {
            return;
        };
        if !data.is_empty() {
            assert_eq!(
                wipe_pending_in(data),
                record.wipe_pending,
                "reset and storage disagree"
            );
        }
        if let Some(journal) = &record.journal {
            let (steps, current) = (journal.steps(), journal.current());
            assert_eq!(current, steps.get(journal.next).copied());
            journal.wipe_pending();
        }
        record.save(store).expect("a loaded record saves");
        let back = ResetRecord::load(store).expect("a saved record loads");
        assert_eq!(back, record);
        let raw = store.read(Area::Reset).expect("memory");
        assert_eq!(raw.is_some_and(|r| wipe_pending_in(&r)), back.wipe_pending);
    });
});
