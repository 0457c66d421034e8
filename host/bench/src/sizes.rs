//! `bench sizes` (issue 19): what the slot image's filesystem and the bundle's compression
//! cost, on the files of a real build's rootfs. For each filesystem a user would consider
//! (erofs with lz4, the old default; erofs with lz4hc; erofs uncompressed, the default;
//! squashfs with zstd) it makes the slot image from the same tree, with the build's own
//! mkfs.erofs arguments, compresses it into a bundle payload with the
//! build's own writer (`aperture_trust::bundle::compress_payload`) at the zstd levels worth
//! comparing, and reads every file back through the host kernel with cold caches. One table:
//! slot bytes, payload and full bundle bytes, the bundle against lz4 with zstd -3, the time to make
//! each, and the cold read of the whole tree.
//!
//! The tree comes from the build's `rootfs.img` itself (mounted read-only and copied with
//! owners, modes and extended attributes kept), so every row packs exactly the files an
//! appliance runs. Needs root (loop mounts, dropping the page cache).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aperture_image::recipe::RootfsCompression;
use aperture_sys::Cmd;

use crate::reset::median;
use crate::table::{print_table, Row};

const MIB: f64 = (1u64 << 20) as f64;

/// One filesystem to make from the tree.
struct Filesystem {
    /// The row's name.
    name: &'static str,
    /// Mount type.
    fstype: &'static str,
    /// The command that makes the image from the tree.
    make: fn(tree: &Path, image: &Path) -> Cmd,
    /// The bundle payload's zstd levels to measure for it (the build uses 3).
    levels: &'static [i32],
}

fn erofs(args: &[&str], tree: &Path, image: &Path) -> Cmd {
    Cmd::new("mkfs.erofs")
        .args(args)
        .arg("--quiet")
        .arg(image)
        .arg(tree)
}

const FILESYSTEMS: &[Filesystem] = &[
    Filesystem {
        name: "erofs lz4 (the old default)",
        fstype: "erofs",
        make: |t, i| erofs(&RootfsCompression::Lz4.mkfs_args(), t, i),
        levels: &[3, 19],
    },
    Filesystem {
        name: "erofs lz4hc",
        fstype: "erofs",
        make: |t, i| erofs(&RootfsCompression::Lz4hc.mkfs_args(), t, i),
        levels: &[3],
    },
    Filesystem {
        name: "erofs uncompressed (default)",
        fstype: "erofs",
        make: |t, i| erofs(&RootfsCompression::None.mkfs_args(), t, i),
        levels: &[3, 12, 19],
    },
    Filesystem {
        name: "squashfs zstd-19 128K",
        fstype: "squashfs",
        make: |t, i| {
            Cmd::new("mksquashfs").arg(t).arg(i).args([
                "-comp",
                "zstd",
                "-Xcompression-level",
                "19",
                "-b",
                "131072",
                "-noappend",
                "-no-progress",
                "-quiet",
            ])
        },
        levels: &[3],
    },
];

/// A read-only loop mount that is undone when dropped (`bench delta` mounts its two slot
/// images with it too).
pub(crate) struct Mounted(pub(crate) PathBuf);

impl Mounted {
    /// Mount `image` (a filesystem of type `fstype`) read-only at `at`, made if missing.
    pub(crate) fn new(image: &Path, fstype: &str, at: &Path) -> Result<Mounted> {
        fs::create_dir_all(at)?;
        Cmd::new("mount")
            .args(["-o", "loop,ro", "-t", fstype])
            .arg(image)
            .arg(at)
            .run()
            .with_context(|| {
                format!(
                    "mounting {} ({fstype}) at {}",
                    image.display(),
                    at.display()
                )
            })?;
        Ok(Mounted(at.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = Cmd::new("umount").arg(&self.0).run() {
            eprintln!("bench: unmounting {}: {e}", self.0.display());
        }
    }
}

fn drop_caches() -> Result<()> {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")
}

/// Read every regular file under `dir`; the bytes read.
fn read_all(dir: &Path, buf: &mut [u8]) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += read_all(&entry.path(), buf)?;
        } else if kind.is_file() {
            let mut f = fs::File::open(entry.path())
                .with_context(|| format!("opening {}", entry.path().display()))?;
            loop {
                let n = f.read(buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
    }
    Ok(total)
}

/// The length of the file `p`.
pub(crate) fn size(p: &Path) -> Result<u64> {
    Ok(fs::metadata(p)
        .with_context(|| format!("reading the size of {}", p.display()))?
        .len())
}

/// `f`'s value and how long it took.
pub(crate) fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed()))
}

/// Boot times of the default recipe built with each erofs compression the recipe can choose:
/// the build's own disk image under QEMU (TCG, swtpm), twice, each time until the agent's
/// status line. The first boot also formats and seals the encrypted partitions (the same work
/// in every row); the second is a plain boot. Returns one row per compression.
fn boot_times(runs: u32) -> Result<Vec<Row>> {
    use aperture_image::recipe::Arch;
    use aperture_tests::scenario::Scenario;

    let dir = aperture_tests::test_root().join("bench-sizes");
    let mut rows = Vec::new();
    let mut baseline = None;
    for (name, compression) in [
        ("erofs lz4 (the old default)", RootfsCompression::Lz4),
        ("erofs lz4hc", RootfsCompression::Lz4hc),
        ("erofs uncompressed (default)", RootfsCompression::None),
    ] {
        let value = serde_json::to_value(compression)?;
        let value = value.as_str().context("a compression names itself")?;
        let recipe = aperture_tests::derived_recipe(
            &dir.join("recipes"),
            &format!("{value}.toml"),
            "qemu-x86_64.toml",
            &format!("[outputs]\ncompressed_disk = false\nrootfs_compression = \"{value}\"\n"),
        )?;
        eprintln!("bench sizes: building the default recipe with rootfs_compression = {value}");
        let (report, _) = aperture_tests::build(&recipe, &dir.join("out").join(value), false)?;
        let mut first = Vec::new();
        let mut second = Vec::new();
        for run in 0..runs {
            let mut sc = Scenario::new(
                &format!("bench-sizes-{value}-{run}"),
                &report.paths.out.join("disk.img"),
                Arch::Amd64,
            )?;
            for times in [&mut first, &mut second] {
                let t = Instant::now();
                let mut vm = sc.boot("bench", None)?;
                vm.wait_for("aperture-agent: product=", aperture_tests::BOOT_TIMEOUT)
                    .with_context(|| format!("booting the {name} image"))?;
                times.push(t.elapsed().as_secs_f64());
                // Let the first boot's writes reach the disk before the power goes.
                std::thread::sleep(Duration::from_secs(5));
                vm.kill();
            }
        }
        let (first, second) = (median(first), median(second));
        let base = *baseline.get_or_insert(second);
        rows.push(Row {
            name: name.into(),
            cells: vec![
                format!("{first:.1}"),
                format!("{second:.1}"),
                format!("{:.2}", second / base),
            ],
        });
    }
    Ok(rows)
}

/// Run `bench sizes` on `slot_image` (default: the default recipe's build's `rootfs.img`);
/// with `boot`, boot times too, each the median of `runs`.
pub fn run(slot_image: Option<PathBuf>, boot: bool, runs: u32) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("bench sizes needs root (loop mounts, dropping the page cache): run `sudo cargo xtask bench sizes`");
    }
    let ws = crate::workspace();
    let image = match slot_image {
        Some(p) => p,
        None => crate::default_build()?.join("rootfs.img"),
    };
    if !image.is_file() {
        bail!(
            "bench sizes reads the files of a build's slot image and {} does not exist: run \
             `cargo xtask build` first, or pass --slot-image PATH",
            image.display()
        );
    }
    let dir = image.parent().unwrap_or(Path::new("."));
    let root = ws.join("target/bench/sizes");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)?;
    let tree = root.join("tree");
    {
        let mounted = Mounted::new(&image, "erofs", &root.join("source"))?;
        eprintln!("bench sizes: copying the files of {}", image.display());
        Cmd::new("cp")
            .arg("-a")
            .arg(mounted.0.join("."))
            .arg(&tree)
            .run()
            .context("copying the slot image's files")?;
    }
    let tree_bytes = Cmd::new("du")
        .args(["-sb", "--apparent-size"])
        .arg(&tree)
        .text()?
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .context("reading du's total")?;

    // The rest of the bundle (each slot's UKI, compressed as the build does) is the same in
    // every row.
    let mut others = 0;
    for name in ["uki-a.efi", "uki-b.efi"] {
        let src = dir.join(name);
        if src.is_file() {
            let p = aperture_trust::bundle::compress_payload(&src, &root.join("other.zst"), 3)?;
            others += p.size;
        } else {
            eprintln!(
                "bench sizes: no {} beside the slot image: the bundle column leaves it out",
                src.display()
            );
        }
    }

    let mut buf = vec![0u8; 1 << 20];
    let mut results: Vec<(String, u64, u64, Duration, Duration, Duration)> = Vec::new();
    for f in FILESYSTEMS {
        let img = root.join("slot.img");
        let _ = fs::remove_file(&img);
        eprintln!("bench sizes: {}", f.name);
        let ((), made) = timed(|| {
            (f.make)(&tree, &img)
                .run()
                .with_context(|| format!("making the {} image", f.name))?;
            Ok(())
        })?;
        let slot = size(&img)?;
        let read = {
            let mounted = Mounted::new(&img, f.fstype, &root.join("mnt"))?;
            drop_caches()?;
            let (bytes, t) = timed(|| read_all(&mounted.0, &mut buf))?;
            if bytes == 0 {
                bail!("reading {}: no file data", f.name);
            }
            t
        };
        for &level in f.levels {
            let zst = root.join("slot.img.zst");
            let (payload, t) =
                timed(|| Ok(aperture_trust::bundle::compress_payload(&img, &zst, level)?))?;
            let _ = fs::remove_file(&zst);
            results.push((
                format!("{}, bundle zstd -{level}", f.name),
                slot,
                payload.size,
                made,
                t,
                read,
            ));
        }
        let _ = fs::remove_file(&img);
    }
    let _ = fs::remove_dir_all(&root);

    let baseline = results[0].2 + others;
    let rows: Vec<Row> = results
        .iter()
        .map(|(name, slot, payload, made, zst, read)| Row {
            name: name.clone(),
            cells: vec![
                format!("{:.1}", *slot as f64 / MIB),
                format!("{:.1}", *payload as f64 / MIB),
                format!("{:.1}", (payload + others) as f64 / MIB),
                format!("{:.2}", (payload + others) as f64 / baseline as f64),
                format!("{:.1}", made.as_secs_f64()),
                format!("{:.1}", zst.as_secs_f64()),
                format!("{:.1}", read.as_secs_f64()),
                format!("{:.0}", tree_bytes as f64 / MIB / read.as_secs_f64()),
            ],
        })
        .collect();
    print_table(
        &format!(
            "bench sizes: the slot image of {} ({:.0} MiB of files) as each filesystem, its \
             bundle payload at each zstd level (the full bundle adds {:.1} MiB of kernel and \
             initrd); cold reads of every file through this host's kernel",
            image.display(),
            tree_bytes as f64 / MIB,
            others as f64 / MIB
        ),
        &[
            "filesystem, bundle compression",
            "slot MiB",
            "rootfs payload MiB",
            "bundle MiB",
            "bundle vs lz4 -3",
            "make s",
            "compress s",
            "cold read s",
            "read MiB/s",
        ],
        &rows,
    );
    if boot {
        let rows = boot_times(runs.max(1))?;
        print_table(
            &format!(
                "bench sizes --boot: the default recipe with each rootfs_compression, booted under \
                 QEMU (TCG) to the agent's status line, seconds (median of {runs})"
            ),
            &[
                "slot filesystem",
                "first boot s",
                "next boot s",
                "next vs lz4",
            ],
            &rows,
        );
    }
    Ok(())
}
