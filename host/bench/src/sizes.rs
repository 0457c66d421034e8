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

/// What a guest has read from its disk so far, from QEMU's `query-blockstats` over the QMP
/// socket `sock`: (read requests, bytes).
fn disk_reads(sock: &Path) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("connecting to QEMU's QMP socket {}", sock.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    // Each command's reply is the next line with "return" (events may come between).
    let mut call = |cmd: &str| -> Result<serde_json::Value> {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}")?;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("QEMU closed its QMP socket during {cmd}");
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("QMP sent a line that is not JSON: {line:?}"))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {cmd}: {e}");
            }
        }
    };
    call("qmp_capabilities")?;
    let stats = call("query-blockstats")?;
    let disk = stats
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["device"] == "disk0")
        .context("query-blockstats lists no disk0")?;
    let n = |k: &str| {
        disk["stats"][k]
            .as_u64()
            .with_context(|| format!("blockstats has no {k}"))
    };
    Ok((n("rd_operations")?, n("rd_bytes")?))
}

/// The agent's status line on the console.
const STATUS_LINE: &str = "aperture-agent: product=";

/// The guest kernel's timestamp (`[   27.179009] ...`) on the console line with the status
/// line in `console`.
fn guest_clock(console: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(STATUS_LINE))?;
    let (stamp, _) = line.trim_start().strip_prefix('[')?.split_once(']')?;
    stamp.trim().parse().ok()
}

/// One boot's measurements.
#[derive(Clone, Copy)]
struct BootRun {
    /// Seconds from QEMU's start to the agent's status line.
    secs: f64,
    /// The guest kernel's clock at that line (from its console), if it printed one.
    guest: Option<f64>,
    /// Read requests the guest had sent its disk by then.
    reads: u64,
    /// Bytes it had read.
    bytes: u64,
}

/// The VM board `bench sizes --boot` builds and boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootBoard {
    /// The default recipe, x86-64 (QEMU's TCG has no SHA-256 instructions for x86-64, so the
    /// guest's dm-verity hashes with emulated AVX).
    #[value(name = "qemu-x86_64")]
    QemuX86_64,
    /// The arm64 userland of the Jetson recipes on QEMU's virt machine (TCG emulates the ARMv8
    /// SHA-256 instructions a Jetson's dm-verity uses).
    #[value(name = "qemu-arm64")]
    QemuArm64,
}

impl BootBoard {
    /// The recipe (in `recipes/`), the guest's architecture and how long a boot may take.
    fn recipe_arch_timeout(self) -> (&'static str, aperture_image::recipe::Arch, Duration) {
        use aperture_image::recipe::Arch;
        match self {
            BootBoard::QemuX86_64 => (
                "qemu-x86_64.toml",
                Arch::Amd64,
                aperture_tests::BOOT_TIMEOUT,
            ),
            // arm64 under TCG is several times slower than x86-64.
            BootBoard::QemuArm64 => (
                "qemu-arm64.toml",
                Arch::Arm64,
                3 * aperture_tests::BOOT_TIMEOUT,
            ),
        }
    }
}

/// Boot times of `board`'s recipe built with each erofs compression the recipe can choose:
/// the build's own disk image under QEMU (TCG, swtpm), twice, each time until the agent's
/// status line, and what the guest had read from its disk by then (QEMU's block statistics).
/// The first boot also formats and seals the encrypted partitions (the same work in every
/// row); the second is a plain boot. The images are built first and the runs interleaved
/// (run 1 of every row, then run 2, ...), so that a machine that slows down or speeds up
/// during the bench moves every row alike. Returns one row per compression.
fn boot_times(board: BootBoard, runs: u32) -> Result<Vec<Row>> {
    use aperture_tests::scenario::Scenario;

    let (base_recipe, arch, timeout) = board.recipe_arch_timeout();
    let dir = aperture_tests::test_root().join("bench-sizes");
    let mut images = Vec::new();
    for (name, compression) in [
        ("erofs lz4 (the old default)", RootfsCompression::Lz4),
        ("erofs lz4hc", RootfsCompression::Lz4hc),
        ("erofs uncompressed (default)", RootfsCompression::None),
    ] {
        let value = serde_json::to_value(compression)?;
        let value = value
            .as_str()
            .context("a compression names itself")?
            .to_owned();
        let recipe = aperture_tests::derived_recipe(
            &dir.join("recipes"),
            &format!("{value}-{base_recipe}"),
            base_recipe,
            &format!("[outputs]\ncompressed_disk = false\nrootfs_compression = \"{value}\"\n"),
        )?;
        eprintln!("bench sizes: building the default recipe with rootfs_compression = {value}");
        let out = dir.join("out").join(format!("{value}-{}", arch.debian()));
        let (report, _) = aperture_tests::build(&recipe, &out, false)?;
        images.push((name, value, report.paths.out.join("disk.img")));
    }
    // Per row: (first boots, next boots).
    let mut results: Vec<(Vec<BootRun>, Vec<BootRun>)> = vec![Default::default(); images.len()];
    for run in 0..runs {
        for ((name, value, disk), (first, second)) in images.iter().zip(&mut results) {
            let mut sc = Scenario::new(
                &format!("bench-sizes-{value}-{}-{run}", arch.debian()),
                disk,
                arch,
            )?;
            for (i, times) in [first, second].into_iter().enumerate() {
                let sock = std::env::temp_dir().join(format!(
                    "aperture-bench-qmp-{}-{i}.sock",
                    std::process::id()
                ));
                let _ = fs::remove_file(&sock);
                let qmp = format!("unix:{},server=on,wait=off", sock.display());
                let t = Instant::now();
                let mut vm = sc.boot_with("bench", None, |c| {
                    c.extra.extend(["-qmp".to_string(), qmp.clone()]);
                })?;
                let line = vm
                    .wait_for(STATUS_LINE, timeout)
                    .with_context(|| format!("booting the {name} image"))?;
                let secs = t.elapsed().as_secs_f64();
                let (reads, bytes) = disk_reads(&sock)?;
                let guest = guest_clock(&line);
                eprintln!(
                    "bench sizes: {value}, run {}, {} boot: {secs:.1} s (guest clock {}), \
                     {reads} reads, {:.1} MiB",
                    run + 1,
                    ["first", "next"][i],
                    guest.map_or("-".into(), |g| format!("{g:.1} s")),
                    bytes as f64 / MIB
                );
                times.push(BootRun {
                    secs,
                    guest,
                    reads,
                    bytes,
                });
                // Let the first boot's writes reach the disk before the power goes.
                std::thread::sleep(Duration::from_secs(5));
                vm.kill();
                let _ = fs::remove_file(&sock);
            }
        }
    }
    let med = |v: &[BootRun], f: fn(&BootRun) -> f64| median(v.iter().map(f).collect());
    let base = results
        .first()
        .map(|(first, second)| (med(first, |r| r.secs), med(second, |r| r.secs)));
    Ok(images
        .iter()
        .zip(&results)
        .map(|((name, _, _), (first, second))| {
            let (first_s, next) = (med(first, |r| r.secs), med(second, |r| r.secs));
            let (base_first, base_next) = base.unwrap_or((first_s, next));
            Row {
                name: (*name).into(),
                cells: vec![
                    format!("{first_s:.1}"),
                    format!("{:.2}", first_s / base_first),
                    format!("{next:.1}"),
                    format!("{:.2}", next / base_next),
                    match second.iter().map(|r| r.guest).collect::<Option<Vec<_>>>() {
                        Some(g) => format!("{:.1}", median(g)),
                        None => "-".into(),
                    },
                    format!("{:.0}", med(second, |r| r.reads as f64)),
                    format!("{:.1}", med(second, |r| r.bytes as f64) / MIB),
                ],
            }
        })
        .collect())
}

/// Run `bench sizes` on `slot_image` (default: the default recipe's build's `rootfs.img`);
/// with `boot`, boot times too, each the median of `runs`.
pub fn run(slot_image: Option<PathBuf>, boot: Option<BootBoard>, runs: u32) -> Result<()> {
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
    if let Some(board) = boot {
        let rows = boot_times(board, runs.max(1))?;
        print_table(
            &format!(
                "bench sizes --boot: the {} recipe with each rootfs_compression, booted under \
                 QEMU (TCG) to the agent's status line, seconds (median of {runs}, the runs \
                 interleaved), and what the next boot had read from its disk by then",
                board.recipe_arch_timeout().0.trim_end_matches(".toml")
            ),
            &[
                "slot filesystem",
                "first boot s",
                "first vs lz4",
                "next boot s",
                "next vs lz4",
                "next boot, guest clock s",
                "next boot's disk reads",
                "MiB read",
            ],
            &rows,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_clock_is_read_from_the_status_lines_kernel_timestamp() {
        let console = "[    9.59] systemd[1]: Started x\n\
                       [   26.134141] aperture-agent[398]: aperture-agent: product=p version=1\n";
        assert_eq!(guest_clock(console), Some(26.134141));
        // A console without timestamps (or without the line) gives none.
        assert_eq!(guest_clock("aperture-agent: product=p\n"), None);
        assert_eq!(guest_clock("[ 1.0] nothing\n"), None);
    }
}
