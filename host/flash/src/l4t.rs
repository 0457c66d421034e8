//! NVIDIA's Jetson Linux (L4T) tree as the flasher drives it: which tree a build used, that it
//! still holds the boot firmware the build signed, the boot-device part of the build's
//! `flash_layout.xml`, and the command lines of NVIDIA's tools, each with its source.
//!
//! # The NVIDIA commands, and where they are documented
//!
//! All run from the `Linux_for_Tegra/` folder, as NVIDIA's instructions do.
//!
//! 1. **Prepare once** ([`Nvidia::prepare`]):
//!    `tools/kernel_flash/l4t_initrd_flash.sh --no-flash --massflash N
//!    -p "-c <boot-device layout> --no-systemimg" <board-config> <rootdev>`.
//!    `--no-flash` generates the flash package and the flashing initrds without touching a
//!    device (README_initrd_flash.txt, "Workflow 2"); `--massflash N` makes one initrd per
//!    device instance 0..N-1 (Workflow 7, "Initrd Massflash"); `-p` passes options to
//!    `flash.sh` (Developer Guide, "Flashing Support", l4t_initrd_flash.sh options): `-c`
//!    the partition layout (here the build's own QSPI device, so the package holds the boot
//!    firmware the build prepared and nothing for the eMMC, which we write), `--no-systemimg`
//!    no root file system image (README Workflow 4, "internal QSPI"). The board comes from
//!    `BOARDID`, `FAB`, `BOARDSKU`, `BOARDREV` ("offline mode", Workflow 2 and the README's
//!    appendix table): in online mode the tool reads a module's EEPROM, after which Workflow 2
//!    has the module put into recovery mode again, and with several attached it is ambiguous.
//! 2. **Boot one module into the flashing initrd** ([`Nvidia::boot_initrd`]):
//!    `tools/kernel_flash/l4t_initrd_flash_internal.sh --initrd --usb-instance <bus-port>
//!    --device-instance <i> --flash-only <the words of initrdflashparam.txt>`. This is the
//!    command `l4t_initrd_flash.sh` itself runs for every device of a massflash run (its
//!    per-device loop in R35.3.1 and R36), with `--initrd`, documented as "Stop after device
//!    boot into initrd". Running it per module, each with its own device instance, keeps one
//!    module's failure from stopping the others, keeps their working folders apart
//!    (`temp_initrdflash/bootloader<i>`) and tells their disks apart (the instance is the
//!    SCSI model of each exposed LUN, see [`crate::jetson`]).
//! 3. **Write the boot firmware from inside that initrd** ([`Nvidia::on_target`] with
//!    [`QSPI_COMMAND`]): `sshpass -p root ssh ... root@fe80::1%<link>
//!    "USER=root /qspi/l4t_flash_from_kernel.sh --no-reboot --qspi-only"`. This is NVIDIA's
//!    own QSPI step (`flash_qspi` in `l4t_initrd_flash_internal.sh`; the SSH options are those
//!    of `run_commmand_on_target` in `l4t_flash_from_kernel.sh`): QSPI is written only on the
//!    target (host mode skips it), so it happens in the same initrd session, after the eMMC,
//!    with no second trip through recovery mode.
//! 4. **Reboot** ([`REBOOT_COMMAND`]), as `l4t_initrd_flash_internal.sh` ends a flash.

use std::fs;
use std::path::{Path, PathBuf};

use aperture_sys::Cmd;
use aperture_trust::manifest::Manifest;

use crate::error::{FlashError, Result};
use crate::jetson::JetsonModule;

/// How an Aperture board is flashed with NVIDIA's tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoardConfig {
    /// The Aperture board (`jetson-orin-agx`), as the manifest names it.
    pub board: &'static str,
    /// NVIDIA's board configuration (`<name>.conf` in `Linux_for_Tegra/`).
    pub config: &'static str,
    /// The root device argument NVIDIA's scripts take (the internal eMMC).
    pub rootdev: &'static str,
    /// The module family that board is.
    pub module: JetsonModule,
}

/// The boards `flash --to jetson:` writes. Xavier is absent: its boot firmware lives in the
/// eMMC boot partitions, which NVIDIA's QSPI step does not write.
pub const BOARD_CONFIGS: &[BoardConfig] = &[BoardConfig {
    board: "jetson-orin-agx",
    // Developer Guide, "Quick Start" and board table: the AGX Orin developer kit.
    config: "jetson-agx-orin-devkit",
    rootdev: "mmcblk0p1",
    module: JetsonModule::AgxOrin,
}];

/// The NVIDIA configuration of an Aperture board.
pub fn board_config(board: &str) -> Option<&'static BoardConfig> {
    BOARD_CONFIGS.iter().find(|b| b.board == board)
}

/// The environment variables of NVIDIA's offline mode, in the order its README lists them.
pub const OFFLINE_BOARD_VARS: [&str; 4] = ["BOARDID", "FAB", "BOARDSKU", "BOARDREV"];

/// What runs on the flashing initrd to write QSPI (NVIDIA's `flash_qspi`).
pub const QSPI_COMMAND: &str = "USER=root /qspi/l4t_flash_from_kernel.sh --no-reboot --qspi-only";

/// What ends the flashing initrd (as `l4t_initrd_flash_internal.sh` does after a flash).
pub const REBOOT_COMMAND: &str = "sync; nohup reboot &>/dev/null & exit";

/// The marker of the synthetic test tree (`host/image/fixtures/make-synthetic-bsp.sh`).
pub const SYNTHETIC_MARKER: &str = "SYNTHETIC-BSP.txt";

/// Where NVIDIA's initrd flashing tools live in the tree.
const KERNEL_FLASH: &str = "tools/kernel_flash";

/// A `Linux_for_Tegra/` tree with NVIDIA's initrd flashing tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4t {
    root: PathBuf,
    synthetic: bool,
}

impl L4t {
    /// The tree in `dir`: `Linux_for_Tegra/` itself or the folder holding it.
    pub fn open(dir: &Path) -> Result<L4t> {
        let root = if dir.join("Linux_for_Tegra").is_dir() {
            dir.join("Linux_for_Tegra")
        } else {
            dir.to_path_buf()
        };
        if !root
            .join(KERNEL_FLASH)
            .join("l4t_initrd_flash.sh")
            .is_file()
        {
            return Err(FlashError::Bsp(format!(
                "{} is not a Jetson Linux tree with NVIDIA's initrd flashing tools (no \
                 {KERNEL_FLASH}/l4t_initrd_flash.sh); pass --bsp with the unpacked \
                 Linux_for_Tegra folder the build used",
                dir.display()
            )));
        }
        let root = fs::canonicalize(&root)
            .map_err(|e| FlashError::io(format!("resolving {}", root.display()), e))?;
        let synthetic = root.join(SYNTHETIC_MARKER).is_file();
        Ok(L4t { root, synthetic })
    }

    /// The tree for the build in `image_dir`: `given` (a folder, or the BSP `.tbz2` whose
    /// unpacked copy the build keeps in its cache), else the tree the build recorded in
    /// `build-report.json`.
    pub fn resolve(given: Option<&Path>, image_dir: &Path) -> Result<L4t> {
        let report = read_build_report(image_dir);
        match given {
            Some(dir) if dir.is_dir() => L4t::open(dir),
            Some(file) if file.is_file() => {
                let (sha, _) = aperture_trust::digest::sha256_file(file).map_err(|e| {
                    FlashError::Bsp(format!("reading the BSP {}: {e}", file.display()))
                })?;
                let cache = report
                    .as_ref()
                    .and_then(|r| r.pointer("/paths/cache"))
                    .and_then(|c| c.as_str())
                    .map(PathBuf::from);
                let unpacked = cache.map(|c| c.join("bsp").join(sha.as_str()));
                match unpacked {
                    Some(dir) if dir.join(".complete").is_file() => L4t::open(&dir),
                    _ => Err(FlashError::Bsp(format!(
                        "{} (sha256 {}) has no unpacked copy in this build's cache; build with \
                         `--bsp {}` first, or unpack it (`sudo tar -xpf`, NVIDIA's tools need \
                         its owners and modes) and pass the folder",
                        file.display(),
                        &sha.as_str()[..16],
                        file.display()
                    ))),
                }
            }
            Some(missing) => Err(FlashError::Bsp(format!(
                "--bsp {}: no such file or folder",
                missing.display()
            ))),
            None => {
                let recorded = report.as_ref().and_then(recorded_bsp).ok_or_else(|| {
                    FlashError::Bsp(format!(
                        "{}/build-report.json does not name the Jetson Linux tree the build \
                         used; pass --bsp with it (the folder, or the .tbz2 the build took)",
                        image_dir.display()
                    ))
                })?;
                L4t::open(&recorded)
            }
        }
    }

    /// The `Linux_for_Tegra/` folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this is the synthetic test tree, whose "NVIDIA tools" are fakes.
    pub fn is_synthetic(&self) -> bool {
        self.synthetic
    }

    /// A file of the tree.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// What the prepare step left for the per-device commands (`initrdflashparam.txt`): the
    /// words `l4t_initrd_flash.sh` appends to each, board configuration and rootdev last.
    pub fn flash_params(&self) -> Result<Vec<String>> {
        let path = self.path(&format!("{KERNEL_FLASH}/initrdflashparam.txt"));
        let text = fs::read_to_string(&path).map_err(|e| {
            FlashError::io(
                format!(
                    "reading {} (written by `l4t_initrd_flash.sh --no-flash`)",
                    path.display()
                ),
                e,
            )
        })?;
        let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
        if words.len() < 2 {
            return Err(FlashError::parse(
                path.display().to_string(),
                format!("{text:?} does not end with a board configuration and a rootdev"),
            ));
        }
        Ok(words)
    }
}

/// `build-report.json` of a build folder, if it has a readable one.
fn read_build_report(image_dir: &Path) -> Option<serde_json::Value> {
    let text = fs::read(image_dir.join("build-report.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The tree the build recorded (`outputs.bsp.tree` of `build-report.json`, written by host/image
/// `jetson::outputs`).
fn recorded_bsp(report: &serde_json::Value) -> Option<PathBuf> {
    let tree = report.get("outputs")?.get("bsp")?.get("tree")?.as_str()?;
    Some(PathBuf::from(tree)).filter(|p| p.is_absolute() && p.is_dir())
}

/// The boot-device part of a build's `flash_layout.xml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootLayout {
    /// A layout file holding that device alone, its bytes as the build wrote them.
    pub xml: String,
    /// The firmware files its partitions name, in order, each once.
    pub files: Vec<String>,
}

/// The QSPI (`spi`) device of a layout file, as a layout of its own. A layout without one is
/// refused: its board keeps its boot firmware elsewhere (Xavier: the eMMC boot partitions).
pub fn boot_layout(what: &str, text: &str) -> Result<BootLayout> {
    let bad = |reason: String| FlashError::parse(what.to_string(), reason);
    let doc = crate::xml::parse(text).map_err(|e| bad(e.to_string()))?;
    let root = doc.root_element();
    if !root.has_tag_name("partition_layout") {
        return Err(bad(format!(
            "the root element is <{}>, not <partition_layout>",
            root.tag_name().name()
        )));
    }
    let spi = root
        .children()
        .find(|d| d.has_tag_name("device") && d.attribute("type") == Some("spi"))
        .ok_or_else(|| {
            bad("it has no QSPI (`spi`) device: this board's boot firmware is not on QSPI, and \
                 `flash --to jetson:` writes QSPI only (flash it with NVIDIA's l4t_initrd_flash.sh)"
                .into())
        })?;
    let mut files: Vec<String> = Vec::new();
    for p in spi.children().filter(|c| c.has_tag_name("partition")) {
        if let Some(f) = crate::xml::child(p, "filename") {
            let name = crate::xml::text(f).trim().to_string();
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(bad(format!(
                    "line {}: {name:?} is not a plain file name",
                    crate::xml::line(f)
                )));
            }
            if !files.contains(&name) {
                files.push(name);
            }
        }
    }
    if files.is_empty() {
        return Err(bad("its QSPI device names no firmware file".into()));
    }
    let version = root.attribute("version").unwrap_or("01.00.0000");
    let xml = format!(
        "<?xml version=\"1.0\"?>\n<!-- The QSPI device of {what}, written by aperture flash for \
         NVIDIA's tools. -->\n<partition_layout version=\"{}\">\n    {}\n</partition_layout>\n",
        version.replace('"', ""),
        &text[spi.range()]
    );
    Ok(BootLayout { xml, files })
}

/// Checks that the tree holds, for every file in `files`, exactly the bytes the signed
/// `manifest` lists under that name (the build copied them from its BSP); the build folder's
/// copies are checked by the caller. Returns one problem per file, each saying what to do.
pub fn check_firmware(l4t: &L4t, manifest: &Manifest, files: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for name in files {
        let Some(signed) = manifest.artifacts.iter().find(|a| a.name.as_str() == name) else {
            problems.push(format!(
                "flash_layout.xml names {name}, which the signed manifest does not list; rebuild"
            ));
            continue;
        };
        let path = l4t.path(&format!("bootloader/{name}"));
        match aperture_trust::digest::sha256_file(&path) {
            Ok((sha, size)) if sha == signed.sha256 && size == signed.size => {}
            Ok(_) => problems.push(format!(
                "{} is not the {name} this build signed: the BSP at {} is not the tree the \
                 build used (or was changed since); pass --bsp with that tree",
                path.display(),
                l4t.root().display()
            )),
            Err(e) => problems.push(format!(
                "{}: {e}; pass --bsp with the tree the build used",
                path.display()
            )),
        }
    }
    problems
}

/// NVIDIA's tools for one board, in one tree.
#[derive(Clone, Debug)]
pub struct Nvidia<'a> {
    /// The tree.
    pub l4t: &'a L4t,
    /// NVIDIA's board configuration name.
    pub config: &'a str,
    /// The rootdev argument.
    pub rootdev: &'a str,
    /// `BOARDID`, `FAB`, `BOARDSKU`, `BOARDREV` for offline mode, when given.
    pub board_env: &'a [(String, String)],
}

impl Nvidia<'_> {
    fn tool(&self, name: &str) -> Cmd {
        let mut cmd =
            Cmd::new(self.l4t.path(&format!("{KERNEL_FLASH}/{name}"))).current_dir(self.l4t.root());
        for (k, v) in self.board_env {
            cmd = cmd.env(k, v);
        }
        cmd
    }

    /// Step 1: the flash package (QSPI from `layout`) and `instances` flashing initrds.
    pub fn prepare(&self, instances: u32, layout: &Path) -> Cmd {
        self.tool("l4t_initrd_flash.sh")
            .args(["--no-flash", "--massflash"])
            .arg(instances.to_string())
            .arg("-p")
            .arg(format!("-c {} --no-systemimg", layout.display()))
            .args([self.config, self.rootdev])
    }

    /// Step 2: boot the module at USB `port` into flashing initrd `instance` and stop there.
    /// `params` are the words of `initrdflashparam.txt` ([`L4t::flash_params`]).
    pub fn boot_initrd(&self, port: &str, instance: u32, params: &[String]) -> Cmd {
        self.tool("l4t_initrd_flash_internal.sh")
            .args(["--initrd", "--usb-instance", port, "--device-instance"])
            .arg(instance.to_string())
            .arg("--flash-only")
            .args(params)
    }

    /// Steps 3 and 4: `command` on the flashing initrd reached over network link `link`, as
    /// NVIDIA's `run_commmand_on_target` runs it (the initrd's root password is NVIDIA's
    /// published default, not a secret).
    pub fn on_target(sshpass: &Path, link: &str, command: &str) -> Cmd {
        Cmd::new(sshpass)
            .args(["-p", "root", "ssh", "-q", "-oServerAliveInterval=15"])
            .args(["-oServerAliveCountMax=3", "-oStrictHostKeyChecking=no"])
            .args(["-oUserKnownHostsFile=/dev/null", "-6"])
            .arg(format!("root@fe80::1%{link}"))
            .arg(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: &str = "<?xml version=\"1.0\"?>\n<!-- c -->\n<partition_layout version=\"01.00.0000\">\n    \
        <device type=\"spi\" instance=\"0\" sector_size=\"512\" num_sectors=\"131072\">\n        \
        <partition name=\"A_mb1\" type=\"mb1_bootloader\"> <size> 262144 </size> <filename> mb1_t234_prod.bin </filename> </partition>\n        \
        <partition name=\"B_mb1\" type=\"mb1_bootloader\"> <size> 262144 </size> <filename> mb1_t234_prod.bin </filename> </partition>\n        \
        <partition name=\"A_MB1_BCT\" type=\"mb1_bct\"> <size> 65536 </size> </partition>\n        \
        <partition name=\"A_cpu-bootloader\" type=\"data\"> <size> 3670016 </size> <filename> uefi_jetson.bin </filename> </partition>\n    \
        </device>\n    <device type=\"sdmmc_user\" instance=\"3\">\n        \
        <partition name=\"APP\" type=\"data\"> <size> 1 </size> <filename> rootfs.img </filename> </partition>\n    \
        </device>\n</partition_layout>\n";

    #[test]
    fn the_boot_device_alone_with_its_files_once() {
        let b = boot_layout("flash_layout.xml", LAYOUT).unwrap();
        assert_eq!(b.files, ["mb1_t234_prod.bin", "uefi_jetson.bin"]);
        assert!(b.xml.contains("<device type=\"spi\""), "{}", b.xml);
        assert!(!b.xml.contains("sdmmc_user"), "{}", b.xml);
        assert!(!b.xml.contains("rootfs.img"), "{}", b.xml);
        // The result is itself a layout file with the same device.
        let again = boot_layout("again", &b.xml).unwrap();
        assert_eq!(again.files, b.files);
    }

    #[test]
    fn layouts_without_qspi_or_with_odd_names_are_refused() {
        let xavier = LAYOUT.replace("type=\"spi\"", "type=\"sdmmc_boot\"");
        let e = boot_layout("x.xml", &xavier).unwrap_err().to_string();
        assert!(e.contains("no QSPI (`spi`) device"), "{e}");
        let sneaky = LAYOUT.replace("uefi_jetson.bin", "../../etc/passwd");
        let e = boot_layout("x.xml", &sneaky).unwrap_err().to_string();
        assert!(e.contains("not a plain file name"), "{e}");
        let e = boot_layout("x.xml", "<a/>").unwrap_err().to_string();
        assert!(e.contains("not <partition_layout>"), "{e}");
    }

    #[test]
    fn command_lines_are_nvidias() {
        let l4t = L4t {
            root: PathBuf::from("/bsp/Linux_for_Tegra"),
            synthetic: false,
        };
        let env = vec![("BOARDID".to_string(), "3701".to_string())];
        let nv = Nvidia {
            l4t: &l4t,
            config: "jetson-agx-orin-devkit",
            rootdev: "mmcblk0p1",
            board_env: &env,
        };
        assert_eq!(
            nv.prepare(2, Path::new("/w/boot.xml")).display(),
            "/bsp/Linux_for_Tegra/tools/kernel_flash/l4t_initrd_flash.sh --no-flash --massflash 2 \
             -p '-c /w/boot.xml --no-systemimg' jetson-agx-orin-devkit mmcblk0p1"
        );
        let params = [
            "jetson-agx-orin-devkit".to_string(),
            "mmcblk0p1".to_string(),
        ];
        assert_eq!(
            nv.boot_initrd("1-2.3", 1, &params).display(),
            "/bsp/Linux_for_Tegra/tools/kernel_flash/l4t_initrd_flash_internal.sh --initrd \
             --usb-instance 1-2.3 --device-instance 1 --flash-only jetson-agx-orin-devkit mmcblk0p1"
        );
        assert!(Nvidia::on_target(Path::new("sshpass"), "usb0", QSPI_COMMAND)
            .display()
            .ends_with("-6 root@fe80::1%usb0 'USER=root /qspi/l4t_flash_from_kernel.sh --no-reboot --qspi-only'"));
        assert_eq!(
            board_config("jetson-orin-agx").unwrap().config,
            "jetson-agx-orin-devkit"
        );
        assert!(board_config("jetson-xavier-agx").is_none());
    }

    #[test]
    fn the_build_report_names_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let report = serde_json::json!({
            "paths": {"cache": "/nowhere"},
            "outputs": {"bsp": {"tree": dir.path(), "given": "/x.tbz2", "release": "R36.4.3", "sha256": null}}
        });
        assert_eq!(recorded_bsp(&report).as_deref(), Some(dir.path()));
        assert_eq!(recorded_bsp(&serde_json::json!({"steps": []})), None);
    }
}
