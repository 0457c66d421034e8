//! Inputs the fuzz targets (`cargo xtask fuzz`, `fuzz/fuzz_targets/`) found breaking a parser of
//! this crate, each kept as a fixture in `fixtures/fuzz/` named after what it exercises, with
//! the invariant it broke.

use std::io::Cursor;

use aperture_gpt::{read_gpt, write_gpt, GptError, Guid, HeaderCopy, Layout, PartitionSpec};

/// Target `gpt`: a 47-sector disk whose (intact) primary table was made for a bigger disk:
/// its usable area ran to the last sector, where the backup header belongs, and its last
/// partition covered it. The table was accepted. A usable area that takes the MBR or a header
/// is now refused, and the backup copy (not there) cannot stand in either.
#[test]
fn a_table_whose_usable_area_takes_the_last_sector_is_refused() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/fuzz/usable-area-takes-the-last-sector.img"
    );
    let disk = std::fs::read(path).unwrap();
    assert_eq!(disk.len(), 47 * 512);
    let err = read_gpt(&mut Cursor::new(&disk), disk.len() as u64).unwrap_err();
    assert!(matches!(err, GptError::NoValidGpt { .. }), "{err}");
    assert!(
        err.to_string().contains("takes the MBR or a GPT header"),
        "{err}"
    );
}

/// The same, made the way it happens: an 80-sector image cut to 47 sectors. Cut to 48, its
/// usable area ends just before the last sector and it still reads.
#[test]
fn an_image_cut_short_by_its_backup_table_is_refused() {
    let layout = |alignment| {
        let mut l = Layout::new(
            Guid::derive("fuzz", "disk"),
            vec![PartitionSpec::new(
                "data",
                Guid::LINUX_FILESYSTEM,
                Guid::derive("fuzz", "data"),
                0,
            )],
        );
        l.alignment = alignment;
        l
    };
    let mut image = Cursor::new(vec![0u8; 80 * 512]);
    write_gpt(&mut image, 80 * 512, &layout(512)).unwrap();
    let image = image.into_inner();
    let err = read_gpt(&mut Cursor::new(&image[..47 * 512]), 47 * 512).unwrap_err();
    assert!(
        err.to_string().contains("takes the MBR or a GPT header"),
        "{err}"
    );
    let gpt = read_gpt(&mut Cursor::new(&image[..48 * 512]), 48 * 512).unwrap();
    assert_eq!(gpt.last_usable_lba, 46);
    assert_eq!(gpt.header, HeaderCopy::Primary);
}
