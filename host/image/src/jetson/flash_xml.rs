//! The partition-layout file for NVIDIA's flashing tools (`flash_layout.xml`): NVIDIA's
//! `partition_layout` format with the board's boot-chain device and rootfs device, every
//! partition named, typed and sized as in NVIDIA's own file, and `<filename>` naming the
//! files of our output folder (or of the BSP's firmware, copied there).
//!
//! Also a reader for the same format (on [`aperture_flash::xml`]: roxmltree, no DTDs), used to
//! check our file and to compare a BSP's own layout with our table.

use std::fmt::Write as _;

use aperture_flash::xml;

use super::board::{Device, JetsonBoard};
use super::error::JetsonError;
use super::nvidia::{Fill, NvPart};
use crate::recipe::Recipe;

/// Names of the files in the output folder that fill the rootfs device.
#[derive(Debug, Clone)]
pub struct LayoutFiles {
    /// The slot image (`APP`, `APP_b`).
    pub rootfs: String,
    /// Boot images of slots A and B.
    pub boot: [String; 2],
    /// The kernel device tree.
    pub dtb: String,
    /// The ESP image.
    pub esp: String,
    /// The initial device state.
    pub state: String,
    /// The factory image, when the recipe sizes its partition.
    pub factory: Option<String>,
}

/// The output-folder name of a BSP file: its base name.
pub fn output_name(bsp_path: &str) -> &str {
    bsp_path.rsplit('/').next().unwrap_or(bsp_path)
}

/// Render the layout file for `board` and `recipe`.
pub fn render(board: &JetsonBoard, recipe: &Recipe, files: &LayoutFiles) -> String {
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\"?>\n");
    let _ = writeln!(
        x,
        "<!-- Written by Aperture for {} {} on {}: {}.\n     Names, order and types follow NVIDIA's {} (Jetson Linux {}); sizes of APP, APP_b,\n     esp, esp_alt and UDA come from the recipe; `aperture_state` and `config` are Aperture's\n     and come last.\n     <filename> names files in this folder. Firmware files are the BSP's unsigned images:\n     NVIDIA's tools sign and pack them while flashing, and make the partitions that name no\n     file here (BCTs, BPMP device tree, VER) themselves. -->",
        // `--` may not appear inside an XML comment, and a product name may hold it.
        esc(&recipe.product).replace("--", "- -"),
        recipe.version,
        recipe.board.name(),
        board.module,
        board.nvidia_layout,
        board.l4t_release
    );
    x.push_str("<partition_layout version=\"01.00.0000\">\n");
    device(
        &mut x,
        &board.boot_device,
        board.boot_device_sectors,
        |_, p| part_boot(p),
    );
    let h = recipe.hash();
    let parts = board.rootfs_parts(recipe);
    let sectors = recipe.partitions.disk.bytes() / 512;
    open_device(&mut x, &board.rootfs_device, sectors);
    x.push_str(&pseudo(
        "master_boot_record",
        "protective_master_boot_record",
        "512",
    ));
    x.push_str(&pseudo("primary_gpt", "primary_gpt", "19968"));
    for (i, p) in parts.iter().enumerate() {
        let file = match p.fill {
            Fill::Rootfs => Some(files.rootfs.clone()),
            Fill::BootImage => {
                Some(files.boot[usize::from(p.chain == super::nvidia::Chain::B)].clone())
            }
            Fill::KernelDtb => Some(files.dtb.clone()),
            Fill::Esp => Some(files.esp.clone()),
            Fill::State => Some(files.state.clone()),
            Fill::Factory => files.factory.clone(),
            Fill::Firmware(f) => Some(output_name(f).to_string()),
            Fill::Empty => None,
        };
        let guid = aperture_gpt::Guid::derive(&format!("aperture-partition:{h}"), p.name);
        let type_guid = match p.name {
            "esp" => Some(aperture_gpt::Guid::EFI_SYSTEM),
            "config" => Some(aperture_gpt::Guid::LINUX_LUKS),
            _ => None,
        };
        let _ = writeln!(
            x,
            "        <partition name=\"{}\" id=\"{}\" type=\"{}\">",
            esc(p.name),
            i + 1,
            esc(p.nv_type)
        );
        common(&mut x, JetsonBoard::size_of(p, recipe));
        // Every partition on a 1 MiB boundary, as in disk.img, so both place them alike.
        let _ = writeln!(x, "            <align_boundary> 1048576 </align_boundary>");
        let _ = writeln!(
            x,
            "            <unique_guid> {} </unique_guid>",
            guid.to_string().to_uppercase()
        );
        if let Some(t) = type_guid {
            let _ = writeln!(
                x,
                "            <partition_type_guid> {} </partition_type_guid>",
                t.to_string().to_uppercase()
            );
        }
        if let Some(f) = file {
            let _ = writeln!(x, "            <filename> {} </filename>", esc(&f));
        }
        x.push_str("        </partition>\n");
    }
    x.push_str(&pseudo(
        "secondary_gpt",
        "secondary_gpt",
        "0xFFFFFFFFFFFFFFFF",
    ));
    x.push_str("    </device>\n</partition_layout>\n");
    x
}

fn open_device(x: &mut String, d: &Device, sectors: u64) {
    let _ = writeln!(
        x,
        "    <device type=\"{}\" instance=\"{}\" sector_size=\"512\" num_sectors=\"{sectors}\">",
        d.kind, d.instance
    );
}

fn device(x: &mut String, d: &Device, sectors: u64, part: impl Fn(usize, &NvPart) -> String) {
    open_device(x, d, sectors);
    for (i, p) in d.parts.iter().enumerate() {
        x.push_str(&part(i, p));
    }
    x.push_str(&pseudo(
        "secondary_gpt",
        "secondary_gpt",
        "0xFFFFFFFFFFFFFFFF",
    ));
    x.push_str("    </device>\n");
}

fn part_boot(p: &NvPart) -> String {
    let mut x = String::new();
    let _ = writeln!(
        x,
        "        <partition name=\"{}\" type=\"{}\">",
        esc(p.name),
        esc(p.nv_type)
    );
    let size = match p.size {
        super::nvidia::PartSize::Bytes(b) => b,
        _ => 0,
    };
    common(&mut x, size);
    if let Some(s) = p.start {
        let _ = writeln!(x, "            <start_location> {s:#X} </start_location>");
    }
    if let Some(a) = p.align {
        let _ = writeln!(x, "            <align_boundary> {a} </align_boundary>");
    }
    if let Fill::Firmware(f) = p.fill {
        let _ = writeln!(
            x,
            "            <filename> {} </filename>",
            esc(output_name(f))
        );
    }
    x.push_str("        </partition>\n");
    x
}

fn common(x: &mut String, size: u64) {
    let _ = write!(
        x,
        "            <allocation_policy> sequential </allocation_policy>\n            <filesystem_type> basic </filesystem_type>\n            <size> {size} </size>\n            <file_system_attribute> 0 </file_system_attribute>\n            <allocation_attribute> 0x8 </allocation_attribute>\n            <percent_reserved> 0 </percent_reserved>\n"
    );
}

fn pseudo(name: &str, kind: &str, size: &str) -> String {
    let mut x = format!("        <partition name=\"{name}\" type=\"{kind}\">\n");
    x.push_str(&format!(
        "            <allocation_policy> sequential </allocation_policy>\n            <filesystem_type> basic </filesystem_type>\n            <size> {size} </size>\n            <file_system_attribute> 0 </file_system_attribute>\n            <allocation_attribute> 8 </allocation_attribute>\n            <percent_reserved> 0 </percent_reserved>\n"
    ));
    x.push_str("        </partition>\n");
    x
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One device of a layout file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutDevice {
    /// `type=`.
    pub kind: String,
    /// `num_sectors=`, when given.
    pub sectors: Option<u64>,
    /// Partitions in file order, the GPT's own bookkeeping ones included.
    pub partitions: Vec<LayoutPartition>,
}

/// One partition of a layout file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutPartition {
    /// Name, with NVIDIA's placeholders for the recovery partitions resolved the way
    /// `flash.sh` does (`RECNAME` is `recovery`, `RECDTB-NAME` is `recovery-dtb`).
    pub name: String,
    /// `id=`, when given.
    pub id: Option<u32>,
    /// `type=`.
    pub kind: String,
    /// `<size>` as written.
    pub size: String,
    /// `<filename>`, when given.
    pub filename: Option<String>,
}

impl LayoutDevice {
    /// The partitions that become GPT entries (not the MBR or GPT bookkeeping).
    pub fn gpt_partitions(&self) -> impl Iterator<Item = &LayoutPartition> {
        self.partitions.iter().filter(|p| {
            !matches!(
                p.kind.as_str(),
                "protective_master_boot_record" | "primary_gpt" | "secondary_gpt"
            )
        })
    }
}

/// Read a layout file (ours or NVIDIA's).
pub fn parse(what: &str, text: &str) -> Result<Vec<LayoutDevice>, JetsonError> {
    let err = |line: usize, reason: String| JetsonError::LayoutXml {
        what: what.to_string(),
        line,
        reason,
    };
    let doc = xml::parse(text).map_err(|e| err(e.line, e.reason))?;
    let root = doc.root_element();
    if !root.has_tag_name("partition_layout") {
        return Err(err(
            xml::line(root),
            format!(
                "the root element is <{}>, not <partition_layout>",
                root.tag_name().name()
            ),
        ));
    }
    let mut devices = Vec::new();
    for d in root.children().filter(|c| c.has_tag_name("device")) {
        let kind = d
            .attribute("type")
            .ok_or_else(|| err(xml::line(d), "a <device> has no type".into()))?
            .to_string();
        let sectors = d
            .attribute("num_sectors")
            .and_then(|s| s.trim().parse().ok());
        let mut partitions = Vec::new();
        for p in d.children().filter(|c| c.has_tag_name("partition")) {
            let name = p
                .attribute("name")
                .ok_or_else(|| err(xml::line(p), "a <partition> has no name".into()))?;
            let child = |n: &str| xml::child(p, n).map(|c| xml::text(c).trim().to_string());
            partitions.push(LayoutPartition {
                name: resolve_placeholder(name),
                id: p.attribute("id").and_then(|i| i.trim().parse().ok()),
                kind: p.attribute("type").unwrap_or("").to_string(),
                size: child("size").unwrap_or_default(),
                filename: child("filename").filter(|f| !f.is_empty()),
            });
        }
        devices.push(LayoutDevice {
            kind,
            sectors,
            partitions,
        });
    }
    Ok(devices)
}

fn resolve_placeholder(name: &str) -> String {
    match name {
        "RECNAME" => "recovery".into(),
        "RECDTB-NAME" => "recovery-dtb".into(),
        "RECNAME_alt" => "recovery_alt".into(),
        "RECDTB-NAME_alt" => "recovery-dtb_alt".into(),
        other => other.to_string(),
    }
}

/// How a BSP's own layout differs from our table, by partition name (rootfs device only).
pub fn compare_with_table(board: &JetsonBoard, nvidia: &[LayoutDevice]) -> Vec<String> {
    let ours: Vec<&str> = board.rootfs_device.parts.iter().map(|p| p.name).collect();
    let Some(dev) = nvidia.iter().find(|d| d.kind == board.rootfs_device.kind) else {
        return vec![format!("it has no {} device", board.rootfs_device.kind)];
    };
    let theirs: Vec<String> = dev.gpt_partitions().map(|p| p.name.clone()).collect();
    let mut notes = Vec::new();
    for n in &ours {
        if !theirs.iter().any(|t| t == n) {
            notes.push(format!("it has no `{n}`"));
        }
    }
    for t in &theirs {
        if !ours.contains(&t.as_str()) {
            notes.push(format!("it has `{t}`, which our table does not"));
        }
    }
    notes
}
