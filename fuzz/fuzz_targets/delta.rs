//! Delta payloads' operations (the bytes inside the zstd stream), played against a 64 KiB
//! base: never a panic, never a byte past the header's target size, never a read outside the
//! base, and an `Ok` end only after exactly the target size.
#![no_main]

use std::io::Read;

use aperture_trust::delta::{BaseSource, DeltaReader};

const BASE_LEN: usize = 64 * 1024;
/// Output kept per input: a run of COPY ops could make gigabytes from a few bytes.
const MAX_OUT: u64 = 8 << 20;

struct Base;

impl BaseSource for Base {
    fn describe(&self) -> String {
        "the fuzz base".into()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset as usize + buf.len();
        assert!(end <= BASE_LEN, "read {}..{end} outside the base", offset);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((offset as usize + i) % 251) as u8;
        }
        Ok(())
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let declared = data
        .get(20..28)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let mut reader = DeltaReader::new(data, Box::new(Base), BASE_LEN as u64, None);
    let mut buf = vec![0u8; 7000];
    let mut produced = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => {
                assert_eq!(Some(produced), declared, "an end before the target size");
                return;
            }
            Ok(n) => {
                produced += n as u64;
                assert!(Some(produced) <= declared, "bytes past the target size");
                if produced > MAX_OUT {
                    return;
                }
            }
            Err(_) => return,
        }
    }
});
