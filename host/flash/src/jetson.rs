//! Finding Jetsons on USB, from sysfs alone: modules waiting in recovery mode (USB vendor
//! 0955 with a recovery product id), and the disks a Jetson exposes once NVIDIA's flashing
//! initrd runs (block devices whose USB ancestor has vendor 0955), named by USB serial so a
//! target can be `serial:SERIAL` instead of a `/dev/sdX` that changes with every plug; and
//! the network links (RNDIS) the same initrd brings up, through which NVIDIA's tools reach it.
//!
//! What the initrd exposes is NVIDIA's: `tools/kernel_flash/initrd_flash/nv_enable_remote.sh`
//! (Jetson Linux R35.3.1, as mirrored in `Seeed-Studio/Linux_for_Tegra`) makes a USB gadget
//! 0955:7035 "Linux for Tegra" whose serial is the module's device-tree serial number, with
//! one mass-storage LUN per storage device, each with an 8-character SCSI vendor naming it
//! (`mmc0` the eMMC user area, `mmc0b0`/`mmc0b1` its boot partitions, `ext0` an external
//! disk) and a 16-character model holding the *device instance* the host gave that initrd,
//! plus an RNDIS link. NVIDIA's own host script finds a module's disks by that vendor and
//! instance (`l4t_initrd_flash_internal.sh`, `wait_for_booting`); so does
//! [`Discovery::flashing_disk`].
//!
//! The sysfs root is a parameter: tests read a recorded tree (`fixtures/sysfs/`), whose
//! symlinks are laid out as in the real `/sys` (`bus/usb/devices/*` and `class/block/*`
//! point into `devices/`).

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{FlashError, Result};

/// NVIDIA's USB vendor id.
pub const NVIDIA_VENDOR: u16 = 0x0955;

/// The USB product id of NVIDIA's flashing initrd gadget (`nv_enable_remote.sh`).
pub const FLASHING_INITRD_PRODUCT: u16 = 0x7035;

/// The SCSI vendor of the LUN that exposes a module's eMMC user area, where the rootfs
/// device's GPT lives (`mmc0` in `nv_enable_remote.sh`).
pub const EMMC_LUN_VENDOR: &str = "mmc0";

/// A Jetson module family, from its recovery-mode USB product id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum JetsonModule {
    /// Jetson AGX Xavier (0955:7019).
    AgxXavier,
    /// Jetson Xavier NX (0955:7e19).
    XavierNx,
    /// Jetson AGX Orin (0955:7023, 7223).
    AgxOrin,
    /// Jetson Orin NX (0955:7323, 7423).
    OrinNx,
    /// Jetson Orin Nano (0955:7523, 7623).
    OrinNano,
}

impl JetsonModule {
    /// The module a recovery-mode product id belongs to.
    pub fn from_recovery_product(product: u16) -> Option<JetsonModule> {
        Some(match product {
            0x7019 => JetsonModule::AgxXavier,
            0x7e19 => JetsonModule::XavierNx,
            0x7023 | 0x7223 => JetsonModule::AgxOrin,
            0x7323 | 0x7423 => JetsonModule::OrinNx,
            0x7523 | 0x7623 => JetsonModule::OrinNano,
            _ => return None,
        })
    }

    /// The module's name.
    pub fn name(self) -> &'static str {
        match self {
            JetsonModule::AgxXavier => "Jetson AGX Xavier",
            JetsonModule::XavierNx => "Jetson Xavier NX",
            JetsonModule::AgxOrin => "Jetson AGX Orin",
            JetsonModule::OrinNx => "Jetson Orin NX",
            JetsonModule::OrinNano => "Jetson Orin Nano",
        }
    }
}

/// A USB device as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsbDevice {
    /// The bus port path: `1-2.3`.
    pub port: String,
    /// `idVendor`.
    pub vendor_id: u16,
    /// `idProduct`.
    pub product_id: u16,
    /// `serial`, when the device has one.
    pub serial: Option<String>,
    /// `product` string.
    pub product: Option<String>,
    /// `manufacturer` string.
    pub manufacturer: Option<String>,
}

/// A Jetson in recovery mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecoveryJetson {
    /// The module family.
    pub module: JetsonModule,
    /// Its USB device.
    pub usb: UsbDevice,
}

/// A disk exposed over USB by a Jetson's flashing initrd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExposedDisk {
    /// Kernel name: `sdb`.
    pub name: String,
    /// Device node: `/dev/sdb`.
    pub dev_path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// SCSI logical unit, when the Jetson exposes several (eMMC and NVMe, say).
    pub lun: Option<u32>,
    /// The LUN's SCSI vendor, trimmed: which storage it is (`mmc0`, `mmc0b0`, `ext0`).
    pub vendor: Option<String>,
    /// The LUN's SCSI model, trimmed: NVIDIA's initrd puts the device instance there.
    pub model: Option<String>,
    /// The Jetson's USB device.
    pub usb: UsbDevice,
}

impl ExposedDisk {
    /// The device instance NVIDIA's flashing initrd was booted with, from the SCSI model.
    pub fn instance(&self) -> Option<u32> {
        self.model.as_deref().and_then(|m| m.trim().parse().ok())
    }

    /// Whether this LUN is the eMMC user area.
    pub fn is_emmc(&self) -> bool {
        self.vendor.as_deref() == Some(EMMC_LUN_VENDOR)
    }
}

/// A network interface on an NVIDIA USB device: the link to a flashing initrd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsbLink {
    /// Interface name: `usb0`, `enx0a1b2c3d4e5f`.
    pub name: String,
    /// The Jetson's USB device.
    pub usb: UsbDevice,
}

/// Everything found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Discovery {
    /// Jetsons waiting in recovery mode, by port.
    pub recovery: Vec<RecoveryJetson>,
    /// Disks exposed by flashing initrds, by name.
    pub disks: Vec<ExposedDisk>,
    /// Network links of flashing initrds, by name.
    pub links: Vec<UsbLink>,
}

impl Discovery {
    /// The disk exposed by the Jetson with USB serial `serial`. Several disks (LUNs) under
    /// one serial are ambiguous and refused, naming them.
    pub fn disk_by_serial(&self, serial: &str) -> Result<&ExposedDisk> {
        let found: Vec<&ExposedDisk> = self
            .disks
            .iter()
            .filter(|d| d.usb.serial.as_deref() == Some(serial))
            .collect();
        let emmc: Vec<&ExposedDisk> = found.iter().copied().filter(|d| d.is_emmc()).collect();
        let found = if found.len() > 1 && emmc.len() == 1 {
            // NVIDIA's initrd exposes the eMMC boot partitions too; the image goes to the
            // user area.
            emmc
        } else {
            found
        };
        match found.as_slice() {
            [one] => Ok(one),
            [] => {
                let known: Vec<&str> = self
                    .disks
                    .iter()
                    .filter_map(|d| d.usb.serial.as_deref())
                    .collect();
                Err(FlashError::Discovery(format!(
                    "no disk exposed by a Jetson with USB serial {serial:?} (found: {}); is its \
                     flashing initrd running? `cargo xtask flash --list` shows what is attached",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )))
            }
            many => Err(FlashError::Discovery(format!(
                "the Jetson with USB serial {serial:?} exposes {} disks ({}); name the one to \
                 flash by its device path",
                many.len(),
                many.iter()
                    .map(|d| format!("{} lun {}", d.dev_path.display(), lun_text(d.lun)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The eMMC LUN of the flashing initrd booted as device instance `instance`: vendor
    /// `mmc0`, model `instance`, on a 0955:7035 gadget (as `wait_for_booting` in NVIDIA's
    /// `l4t_initrd_flash_internal.sh` finds it).
    pub fn flashing_disk(&self, instance: u32) -> Option<&ExposedDisk> {
        self.disks.iter().find(|d| {
            d.usb.product_id == FLASHING_INITRD_PRODUCT
                && d.is_emmc()
                && d.instance() == Some(instance)
        })
    }

    /// The network link on the USB device at `port`.
    pub fn link_on(&self, port: &str) -> Option<&UsbLink> {
        self.links.iter().find(|l| l.usb.port == port)
    }

    /// Device instances of flashing initrds already running (their disks are exposed).
    pub fn instances_in_use(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .disks
            .iter()
            .filter_map(ExposedDisk::instance)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The recovery-mode Jetson at USB port `port`.
    pub fn recovery_at(&self, port: &str) -> Option<&RecoveryJetson> {
        self.recovery.iter().find(|r| r.usb.port == port)
    }
}

fn lun_text(lun: Option<u32>) -> String {
    lun.map(|l| l.to_string()).unwrap_or_else(|| "?".into())
}

/// Scans the sysfs tree at `sysfs` (normally `/sys`). A machine without USB has an empty
/// result, not an error.
pub fn scan(sysfs: &Path) -> Result<Discovery> {
    let mut discovery = Discovery::default();
    for entry in list(&sysfs.join("bus/usb/devices"))? {
        let Some(usb) = read_usb(&entry)? else {
            continue; // an interface, not a device
        };
        if usb.vendor_id != NVIDIA_VENDOR {
            continue;
        }
        if let Some(module) = JetsonModule::from_recovery_product(usb.product_id) {
            discovery.recovery.push(RecoveryJetson { module, usb });
        }
    }
    let root = fs::canonicalize(sysfs)
        .map_err(|e| FlashError::io(format!("resolving {}", sysfs.display()), e))?;
    for entry in list(&sysfs.join("class/block"))? {
        if entry.join("partition").exists() {
            continue;
        }
        let Some(name) = entry.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let real = match fs::canonicalize(&entry) {
            Ok(real) => real,
            // A disk that went away while we looked (its Jetson rebooted).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(FlashError::io(format!("resolving {}", entry.display()), e)),
        };
        let Some(found) = usb_ancestor(&real, &root)? else {
            continue;
        };
        if found.usb.vendor_id != NVIDIA_VENDOR {
            continue;
        }
        let sectors: u64 = read_attr(&entry, "size")?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        discovery.disks.push(ExposedDisk {
            dev_path: PathBuf::from("/dev").join(&name),
            name,
            size: sectors * 512,
            lun: found.lun,
            vendor: found.vendor,
            model: found.model,
            usb: found.usb,
        });
    }
    for entry in list(&sysfs.join("class/net"))? {
        let Some(name) = entry.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let Ok(real) = fs::canonicalize(&entry) else {
            continue; // a link that vanished while we looked (the module rebooted)
        };
        if let Some(found) = usb_ancestor(&real, &root)? {
            if found.usb.vendor_id == NVIDIA_VENDOR {
                discovery.links.push(UsbLink {
                    name,
                    usb: found.usb,
                });
            }
        }
    }
    discovery
        .recovery
        .sort_by(|a, b| a.usb.port.cmp(&b.usb.port));
    discovery.disks.sort_by(|a, b| a.name.cmp(&b.name));
    discovery.links.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(discovery)
}

/// What lies between a block device and its USB device.
struct Ancestry {
    usb: UsbDevice,
    lun: Option<u32>,
    vendor: Option<String>,
    model: Option<String>,
}

/// The nearest ancestor of `device` (a canonical sysfs path) that is a USB device, and the
/// SCSI LUN on the way (`6:0:0:1` gives 1) with its `vendor` and `model`.
fn usb_ancestor(device: &Path, root: &Path) -> Result<Option<Ancestry>> {
    let (mut lun, mut vendor, mut model) = (None, None, None);
    for dir in device.ancestors().skip(1) {
        if !dir.starts_with(root) || dir == root {
            break;
        }
        if lun.is_none() {
            lun = dir.file_name().and_then(|n| scsi_lun(&n.to_string_lossy()));
            if lun.is_some() {
                vendor = read_attr(dir, "vendor")?;
                model = read_attr(dir, "model")?;
            }
        }
        if let Some(usb) = read_usb(dir)? {
            return Ok(Some(Ancestry {
                usb,
                lun,
                vendor,
                model,
            }));
        }
    }
    Ok(None)
}

/// The LUN of a SCSI device folder name `host:channel:target:lun`.
fn scsi_lun(name: &str) -> Option<u32> {
    let parts: Vec<&str> = name.split(':').collect();
    if parts.len() == 4 && parts.iter().all(|p| p.parse::<u32>().is_ok()) {
        parts[3].parse().ok()
    } else {
        None
    }
}

/// A USB device folder's attributes, or `None` if `dir` is not a USB device.
fn read_usb(dir: &Path) -> Result<Option<UsbDevice>> {
    let (Some(vendor), Some(product)) = (read_attr(dir, "idVendor")?, read_attr(dir, "idProduct")?)
    else {
        return Ok(None);
    };
    let hex = |name: &str, text: &str| {
        u16::from_str_radix(text, 16).map_err(|_| {
            FlashError::parse(
                dir.join(name).display().to_string(),
                format!("{text:?} is not a 4-digit hex id"),
            )
        })
    };
    Ok(Some(UsbDevice {
        port: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        vendor_id: hex("idVendor", &vendor)?,
        product_id: hex("idProduct", &product)?,
        serial: read_attr(dir, "serial")?,
        product: read_attr(dir, "product")?,
        manufacturer: read_attr(dir, "manufacturer")?,
    }))
}

/// A sysfs attribute, trimmed; `None` if the file does not exist.
fn read_attr(dir: &Path, name: &str) -> Result<Option<String>> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FlashError::io(format!("reading {}", path.display()), e)),
    }
}

/// The entries of a folder, sorted; a missing folder has none.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FlashError::io(format!("listing {}", dir.display()), e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| FlashError::io(format!("listing {}", dir.display()), e))?;
        paths.push(entry.path());
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_ids_name_every_module() {
        let names: Vec<&str> = [
            0x7019, 0x7e19, 0x7023, 0x7223, 0x7323, 0x7423, 0x7523, 0x7623,
        ]
        .iter()
        .map(|&id| JetsonModule::from_recovery_product(id).unwrap().name())
        .collect();
        assert_eq!(
            names,
            [
                "Jetson AGX Xavier",
                "Jetson Xavier NX",
                "Jetson AGX Orin",
                "Jetson AGX Orin",
                "Jetson Orin NX",
                "Jetson Orin NX",
                "Jetson Orin Nano",
                "Jetson Orin Nano"
            ]
        );
        assert_eq!(JetsonModule::from_recovery_product(0x7035), None);
    }

    #[test]
    fn scsi_luns() {
        assert_eq!(scsi_lun("6:0:0:1"), Some(1));
        assert_eq!(scsi_lun("target6:0:0"), None);
        assert_eq!(scsi_lun("1-2:1.0"), None);
    }

    #[test]
    fn a_machine_without_usb_has_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(scan(dir.path()).unwrap(), Discovery::default());
    }
}
