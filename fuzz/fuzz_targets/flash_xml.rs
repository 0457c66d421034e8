//! NVIDIA's flash layout XML (ours and a BSP's): never panics, and what parses can be compared
//! with every board's partition table.
#![no_main]

use aperture_image::jetson::board::JetsonBoard;
use aperture_image::jetson::flash_xml;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(devices) = flash_xml::parse("fuzz input", text) else {
        return;
    };
    for board in JetsonBoard::all() {
        flash_xml::compare_with_table(board, &devices);
    }
    for device in &devices {
        assert!(device.gpt_partitions().count() <= device.partitions.len());
    }
});
