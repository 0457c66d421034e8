//! Jetson discovery against the recorded sysfs tree `fixtures/sysfs/workstation` (made by
//! `fixtures/sysfs/make-sysfs-fixture.sh`): recovery-mode modules are named, the disks that
//! flashing initrds expose are found through their USB ancestor, and `serial:` resolves.

use std::path::{Path, PathBuf};

use aperture_flash::jetson::{scan, JetsonModule};
use aperture_flash::FlashError;

fn sysfs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sysfs/workstation")
}

#[test]
fn recovery_mode_jetsons_are_named() {
    let found = scan(&sysfs()).unwrap();
    let seen: Vec<(&str, JetsonModule, u16, Option<&str>)> = found
        .recovery
        .iter()
        .map(|r| {
            (
                r.usb.port.as_str(),
                r.module,
                r.usb.product_id,
                r.usb.serial.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("1-1", JetsonModule::AgxOrin, 0x7023, Some("1424321098765")),
            ("2-1.3", JetsonModule::OrinNano, 0x7523, None),
        ]
    );
    assert_eq!(found.recovery[0].module.name(), "Jetson AGX Orin");
    assert_eq!(found.recovery[0].usb.product.as_deref(), Some("APX"));
}

#[test]
fn disks_exposed_by_flashing_initrds_are_listed_by_serial() {
    let found = scan(&sysfs()).unwrap();
    let disks: Vec<(&str, Option<&str>, Option<u32>, u64)> = found
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.usb.serial.as_deref(), d.lun, d.size))
        .collect();
    // sda (a SanDisk stick), sde-sdh and nvme0n1 are not behind an NVIDIA USB device.
    assert_eq!(
        disks,
        [
            ("sdb", Some("1421622057371"), Some(0), 125_045_424 * 512),
            ("sdc", Some("1425022011223"), Some(0), 122_142_720 * 512),
            ("sdd", Some("1425022011223"), Some(1), 976_773_168 * 512),
        ]
    );
    assert_eq!(found.disks[0].dev_path, Path::new("/dev/sdb"));
    assert_eq!(found.disks[0].usb.port, "1-2");
    assert_eq!(
        found.disks[0].usb.product.as_deref(),
        Some("Linux for Tegra")
    );
}

#[test]
fn serial_resolves_to_one_disk_or_says_why_not() {
    let found = scan(&sysfs()).unwrap();
    assert_eq!(
        found.disk_by_serial("1421622057371").unwrap().dev_path,
        Path::new("/dev/sdb")
    );
    let err = found.disk_by_serial("1425022011223").unwrap_err();
    assert!(matches!(err, FlashError::Discovery(_)));
    let text = err.to_string();
    assert!(
        text.contains("exposes 2 disks (/dev/sdc lun 0, /dev/sdd lun 1)"),
        "{text}"
    );
    let text = found.disk_by_serial("nope").unwrap_err().to_string();
    assert!(
        text.contains("no disk exposed by a Jetson with USB serial \"nope\""),
        "{text}"
    );
    assert!(text.contains("1421622057371"), "{text}");
    // A recovery-mode Jetson has no disk yet.
    assert!(found.disk_by_serial("1424321098765").is_err());
}
