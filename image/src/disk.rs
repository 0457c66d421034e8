//! The disk image: a GPT with the board's partitions (deterministic disk and partition GUIDs,
//! sizes from the recipe), the ESP and the slot image written into place, and everything else
//! left as holes so the file stays sparse.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use aperture_gpt::{Guid, Layout, PartitionSpec, Placed};

use crate::recipe::Recipe;

/// Partition names of the qemu boards, which `PARTLABEL=` on kernel command lines, fstab and
/// the device programs rely on.
pub mod names {
    /// EFI system partition.
    pub const ESP: &str = "esp";
    /// Slot A rootfs.
    pub const ROOTFS_A: &str = "rootfs_a";
    /// Slot B rootfs.
    pub const ROOTFS_B: &str = "rootfs_b";
    /// Factory (golden) image.
    pub const FACTORY: &str = "factory";
    /// Encrypted config.
    pub const CONFIG: &str = "config";
    /// Encrypted data, grown on first boot.
    pub const DATA: &str = "data";
}

/// The GPT layout of a qemu board.
pub fn qemu_layout(recipe: &Recipe, root_type: Guid) -> Layout {
    let h = recipe.hash();
    let uid = |what: &str| Guid::derive(&format!("aperture-partition:{h}"), what);
    let part = |name: &str, type_guid: Guid, size: u64| PartitionSpec {
        name: name.to_string(),
        type_guid,
        unique_guid: uid(name),
        size_bytes: size,
        attributes: 0,
    };
    let p = &recipe.partitions;
    let mut parts = vec![
        part(names::ESP, Guid::EFI_SYSTEM, p.esp.bytes()),
        part(names::ROOTFS_A, root_type, p.rootfs.bytes()),
        part(names::ROOTFS_B, root_type, p.rootfs.bytes()),
    ];
    if let Some(f) = p.factory {
        parts.push(part(names::FACTORY, Guid::LINUX_FILESYSTEM, f.bytes()));
    }
    parts.push(part(names::CONFIG, Guid::LINUX_LUKS, p.config.bytes()));
    parts.push(part(names::DATA, Guid::LINUX_LUKS, p.data.bytes()));
    Layout::new(Guid::derive(&format!("aperture-disk:{h}"), "disk"), parts)
}

/// Copy `src` into `disk` at `offset`, skipping all-zero blocks so the image stays sparse.
pub fn write_at(disk: &File, offset: u64, src: &Path) -> Result<u64> {
    let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        for (i, chunk) in buf[..n].chunks(4096).enumerate() {
            if chunk.iter().any(|b| *b != 0) {
                disk.write_all_at(chunk, offset + pos + (i * 4096) as u64)?;
            }
        }
        pos += n as u64;
    }
    Ok(pos)
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Create a sparse disk image of `size` bytes with `layout`'s GPT; returns where each partition
/// landed.
pub fn create(path: &Path, size: u64, layout: &Layout) -> Result<(File, Vec<Placed>)> {
    let _ = std::fs::remove_file(path);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)?;
    let placed = aperture_gpt::write_gpt(&mut f, size, layout)
        .with_context(|| format!("writing the partition table of {}", path.display()))?;
    Ok((f, placed))
}

/// The placed partition called `name`.
pub fn find<'a>(placed: &'a [Placed], name: &str) -> Result<&'a Placed> {
    placed
        .iter()
        .find(|p| p.spec.name == name)
        .with_context(|| format!("the layout has no `{name}` partition"))
}
