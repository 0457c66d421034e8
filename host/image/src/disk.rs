//! The disk image: a GPT with the board's partitions (deterministic disk and partition GUIDs,
//! sizes from the recipe), the ESP and the slot image written into place, and everything else
//! left as holes so the file stays sparse.
//!
//! What is written is what the bmap maps, and so what `flash` writes to a target that may hold
//! an earlier owner's data. A slot image is hashed block by block by dm-verity and a bundle by
//! its sha256, so their zero blocks are written like any other ([`Zeros::Write`]): skipping one
//! would let old data show through it. A file system image whose holes are free space keeps
//! them ([`Zeros::FollowSource`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use aperture_gpt::{Guid, Layout, PartitionSpec, Placed};

use aperture_appliance::{Role, Slot};

use crate::recipe::Recipe;

/// The GPT layout of a qemu board, labels from the appliance contract
/// (`aperture_appliance::Board::partition` and its slot layout): `esp`, `aperture_state`,
/// `rootfs_a`, `rootfs_b`, optional `factory`, `config`, `data`.
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
    let b = recipe.board;
    let slots = b.slot_layout();
    let mut parts = vec![
        part(b.partition(Role::Esp), Guid::EFI_SYSTEM, p.esp.bytes()),
        part(
            b.partition(Role::State),
            Guid::LINUX_FILESYSTEM,
            aperture_appliance::store::PARTITION_BYTES,
        ),
        part(&slots.rootfs(Slot::A), root_type, p.rootfs.bytes()),
        part(&slots.rootfs(Slot::B), root_type, p.rootfs.bytes()),
    ];
    if let Some(f) = p.factory {
        parts.push(part(
            b.partition(Role::Factory),
            Guid::LINUX_FILESYSTEM,
            f.bytes(),
        ));
    }
    parts.push(part(
        b.partition(Role::Config),
        Guid::LINUX_LUKS,
        p.config.bytes(),
    ));
    parts.push(part(
        b.partition(Role::Data),
        Guid::LINUX_LUKS,
        p.data.bytes(),
    ));
    Layout::new(Guid::derive(&format!("aperture-disk:{h}"), "disk"), parts)
}

/// Which bytes of a source [`write_at`] writes into the disk image (and so into its bmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeros {
    /// Every byte, zero blocks included: content every block of which is read or hashed (a
    /// verity-protected slot image, a bundle, a boot image or device tree).
    Write,
    /// The source file's allocated ranges only (every byte of them): a file system image made
    /// on a sparse file, whose holes are free space.
    FollowSource,
}

/// Copy `src` into `disk` at `offset`, as `zeros` says; returns the source's length.
pub fn write_at(disk: &File, offset: u64, src: &Path, zeros: Zeros) -> Result<u64> {
    let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading {}", src.display()))?
        .len();
    let ranges = match zeros {
        Zeros::Write => vec![(0, len)],
        Zeros::FollowSource => {
            allocated_ranges(&f, len).with_context(|| format!("mapping {}", src.display()))?
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in ranges {
        f.seek(SeekFrom::Start(start))?;
        let mut pos = start;
        while pos < end {
            let want = usize::try_from((end - pos).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = read_full(&mut f, &mut buf[..want])?;
            if n == 0 {
                break;
            }
            disk.write_all_at(&buf[..n], offset + pos)?;
            pos += n as u64;
        }
    }
    Ok(len)
}

/// The data ranges of `f` (`SEEK_DATA`/`SEEK_HOLE`), in order.
fn allocated_ranges(f: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom as S};
    let mut out = Vec::new();
    let mut pos = 0u64;
    let at = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    while pos < len {
        let start = match seek(f, S::Data(at(pos))) {
            Ok(s) => s,
            // ENXIO: no data after `pos`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = seek(f, S::Hole(at(start)))?.min(len);
        out.push((start, end));
        pos = end;
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The allocated ranges of the disk file, relative to `offset`.
    fn mapped(disk: &Path) -> Vec<(u64, u64)> {
        let f = File::open(disk).unwrap();
        let len = f.metadata().unwrap().len();
        allocated_ranges(&f, len).unwrap()
    }

    #[test]
    fn zero_blocks_of_hashed_content_are_written_and_holes_of_file_systems_kept() {
        let d = tempfile::tempdir().unwrap();
        // A "slot image": data, one all-zero 64 KiB stretch, data.
        let slot = d.path().join("slot.img");
        let mut bytes = vec![0xA5u8; 64 << 10];
        bytes.extend(vec![0u8; 64 << 10]);
        bytes.extend(vec![0x5Au8; 64 << 10]);
        std::fs::write(&slot, &bytes).unwrap();
        // A "file system image" on a sparse file: written zeros at the start (a FAT), a hole,
        // then a file's data.
        let fs_img = d.path().join("esp.img");
        let mut f = File::create(&fs_img).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all(&vec![0u8; 64 << 10]).unwrap();
        f.write_all_at(&[1u8; 4096], 3 << 20).unwrap();
        drop(f);

        let disk_path = d.path().join("disk.img");
        let disk = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&disk_path)
            .unwrap();
        disk.set_len(64 << 20).unwrap();
        let n = write_at(&disk, 8 << 20, &slot, Zeros::Write).unwrap();
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(
            write_at(&disk, 32 << 20, &fs_img, Zeros::FollowSource).unwrap(),
            4 << 20
        );
        disk.sync_all().unwrap();

        let ranges = mapped(&disk_path);
        let covers = |a: u64, b: u64| ranges.iter().any(|(s, e)| *s <= a && b <= *e);
        assert!(
            covers(8 << 20, (8 << 20) + (192 << 10)),
            "the slot image's zero stretch must be written: {ranges:?}"
        );
        assert!(
            covers(32 << 20, (32 << 20) + (64 << 10)),
            "written zeros kept: {ranges:?}"
        );
        assert!(covers(35 << 20, (35 << 20) + 4096), "{ranges:?}");
        assert!(
            !ranges
                .iter()
                .any(|(s, e)| *s < (34 << 20) && *e > (33 << 20)),
            "the file system's hole stays a hole: {ranges:?}"
        );
        let mut back = vec![0u8; bytes.len()];
        disk.read_exact_at(&mut back, 8 << 20).unwrap();
        assert_eq!(back, bytes);
    }
}
