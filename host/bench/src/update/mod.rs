//! `bench update`: installing the same rootfs image with `aperture-update` and with `rauc
//! install` (Debian's RAUC 1.8), side by side in one run, `runs` times each, with a table of
//! median seconds, MB/s of rootfs image and each tool's time over Aperture's. Two rows of
//! inputs, each installed by both tools:
//!
//! * **generated**: a raw rootfs image of exactly 1 GiB or just under: deterministic data (in
//!   every 8 KiB, 4 KiB of xorshift noise then 4 KiB of zeros, so it compresses about 2:1)
//!   with its dm-verity hash tree appended, plus a small kernel and initrd;
//! * **slot image**: a real slot image from a build (`--slot-image PATH`; by default the
//!   default recipe's build folder's `rootfs.img` when that build output exists, and the run
//!   says when it does not): an erofs rootfs with its dm-verity tree appended, which
//!   compresses as a real one does, with the `vmlinuz` and `initrd.img` beside it. Its verity
//!   parameters are read from its superblock ([`aperture_trust::verity::read_appended`]).
//!
//! For each row both tools get the same inputs, made fresh under `target/bench/update`:
//! an Aperture bundle (zstd level 3, ed25519 manifest signed by a release key in a keyring
//! certified by a freshly generated root key) and a RAUC bundle (`format=plain`, a squashfs
//! compressed with zstd level 3, CMS-signed by a certificate of a freshly made openssl CA).
//!
//! Aperture runs the release-built `aperture-update` binary (as shipped in images) with
//! `--root` (a file-backed appliance: build facts, root key, `/proc/cmdline`, and an ESP folder
//! with systemd-boot entries) and `--disk-image` (a sparse GPT disk image whose `rootfs_b`
//! partition is the inactive slot). The timed `install` verifies the signature, streams the
//! payload into the slot (decompression and the sha256 of the encoded bytes on one thread, the
//! sha256 of the decoded bytes on a second, 4 MiB direct writes on a third) while a fourth
//! reads each written chunk back with direct reads into the full dm-verity check (its data
//! blocks hashed on two more threads; it covers every byte of both rows' images), fsyncs, and
//! arms the slot. A read-back that does not pass during the stream is done again after the
//! fsync, whose verdict stands; the log says which happened.
//!
//! RAUC runs as it does on a device: `rauc service` (on a private D-Bus system bus, so that the
//! host's own bus is left alone; `--override-boot-slot` says slot A is booted), started once
//! per row and outside the timing, with a `system.conf` of file-backed raw slots and
//! `bootloader=noop`. The timed `rauc install` verifies the CMS signature over the whole
//! bundle, loop-mounts the squashfs, copies each image into its slot and fsyncs. It does not
//! read the slot back. The bundle is `plain` because `verity` and `crypt` bundles need
//! device-mapper, which this kind of host kernel lacks.
//!
//! Fair by construction: each run writes into fresh sparse slot files, both bundles are read
//! once beforehand so both tools start from a warm page cache, dirty pages are synced before
//! each timed install, the runs of the two tools alternate, and after each run (outside the
//! timing) the slot is hashed and compared with the image. Needs root (RAUC loop-mounts its
//! bundle) and the packages rauc, squashfs-tools, openssl and dbus-daemon.

mod rauc;

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aperture_appliance::{BuildFacts, Files};
use aperture_gpt::{write_gpt, Guid, Layout, PartitionSpec};
use aperture_slots::Slot;
use aperture_trust::bundle::{compress_payload, write_bundle, PayloadSource};
use aperture_trust::digest::{sha256_file, HashingReader};
use aperture_trust::keys::{KeyringEntry, SignedKeyring, SigningKeyPair};
use aperture_trust::manifest::{
    Artifact, ArtifactName, BootInfo, BuildInfo, Manifest, Role, Sha256Hex,
};
use aperture_trust::signing::sign_manifest;
use aperture_trust::verity::{append_hash_tree, hash_tree_size, read_appended, VerityInfo};

use crate::table::{print_table, Row};
use rauc::RaucSide;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Size of each slot: the rootfs partitions in the disk image and RAUC's slot files.
const SLOT_SIZE: u64 = GIB;
const KERNEL_SIZE: usize = 100_000;
const INITRD_SIZE: usize = 250_000;
const ZSTD_LEVEL: i32 = 3;
const PRODUCT: &str = "aperture-bench";
const BOARD: &str = "qemu-x86_64";
const RAUC_COMPATIBLE: &str = "aperture-bench";
const DEBIAN_PACKAGES: &str = "rauc squashfs-tools openssl dbus-daemon";

/// The images both tools install.
struct Inputs {
    /// The row's name in the table.
    label: String,
    /// What the rootfs image is, for the notes under the table.
    about: String,
    rootfs: PathBuf,
    rootfs_size: u64,
    rootfs_sha256: Sha256Hex,
    verity: VerityInfo,
    /// RAUC's boot files (RAUC boots no UKI): the kernel and initrd inside the UKIs.
    kernel: PathBuf,
    initrd: PathBuf,
    /// Aperture's boot files: the UKI of each slot (A, B), with the command line that boots
    /// that slot with the row's verity root (the updater checks it).
    ukis: [PathBuf; 2],
    /// The kernel arguments before the slot's own (the manifest's `boot.cmdline`).
    base_cmdline: String,
    /// Size of each of RAUC's kernel and initrd slot files: the larger file, in whole MiB.
    boot_slot_size: u64,
}

/// UKIs for `verity` beside `kernel` and `initrd` in `dir`: the synthetic stub with the
/// command line of each slot, and a stand-in signature (the bench's appliance has no db
/// certificate to check it against, as an image built before Secure Boot signing had none).
fn generated_ukis(
    dir: &Path,
    kernel: &Path,
    initrd: &Path,
    verity: &VerityInfo,
    base_cmdline: &str,
) -> Result<[PathBuf; 2]> {
    let (k, i) = (fs::read(kernel)?, fs::read(initrd)?);
    let mut out = Vec::new();
    for slot in Slot::ALL {
        let cmdline = aperture_slots::cmdline::verity_cmdline(
            base_cmdline,
            aperture_slots::SlotLayout::Esp,
            slot,
            verity.root_hash.as_str(),
            verity.hash_offset,
        );
        let path = dir.join(slot.uki_artifact());
        fs::write(&path, aperture_uefi::testpe::test_uki(&cmdline, &k, &i))?;
        out.push(path);
    }
    let b = out.pop().context("two UKIs")?;
    let a = out.pop().context("two UKIs")?;
    Ok([a, b])
}

/// Both tools' times on one row of inputs.
struct Measured {
    label: String,
    about: String,
    rootfs_size: u64,
    bundle_mib: [f64; 2],
    times: [Vec<Duration>; 2],
}

/// Run `bench update` with `runs` runs per tool on the generated image and on `slot_image`
/// (by default the default build's `rootfs.img`, if it was built).
pub fn run(runs: u32, slot_image: Option<PathBuf>) -> Result<()> {
    if !is_root() {
        bail!(
            "`bench update` needs root: RAUC loop-mounts its bundle and its service owns a bus \
             name; run `sudo cargo xtask bench update`"
        );
    }
    let missing: Vec<&str> = ["rauc", "mksquashfs", "openssl", "dbus-daemon"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found: install them with `apt-get install {DEBIAN_PACKAGES}` (`cargo xtask \
             bench update` run as root installs them itself)",
            missing.join(", ")
        );
    }
    let ws = crate::workspace();
    let slot_image = match slot_image {
        Some(p) if p.is_file() => Some(p),
        Some(p) => bail!(
            "--slot-image {}: no such file; pass a build's rootfs.img (for example \
             out/<product>-<board>-<version>/rootfs.img after `cargo xtask build`)",
            p.display()
        ),
        None => {
            let default = crate::default_build()?.join("rootfs.img");
            if default.is_file() {
                Some(default)
            } else {
                eprintln!(
                    "bench update: no build output at {}: only the generated image is \
                     measured; run `cargo xtask build` or pass --slot-image PATH for the row \
                     with a real slot image",
                    default.display()
                );
                None
            }
        }
    };
    let work = ws.join("target/bench/update");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    // Everything the run makes lives in `work`, removed on the way out, error or not.
    let _cleanup = RemoveOnDrop(work.clone());

    eprintln!("bench update: building aperture-update with the release profile (as in images)");
    let updater = build_updater(&ws)?;

    let runs = runs.max(1);
    let mut measured = Vec::new();
    let mut cases: Vec<Option<&Path>> = vec![None];
    cases.extend(slot_image.as_deref().map(Some));
    for (i, case) in cases.into_iter().enumerate() {
        let dir = work.join(format!("row{i}"));
        let inputs = match case {
            None => {
                eprintln!(
                    "bench update: making the 1 GiB generated rootfs image, kernel and initrd"
                );
                make_inputs(&dir.join("input"))?
            }
            Some(image) => {
                eprintln!("bench update: reading the slot image {}", image.display());
                slot_inputs(&dir.join("input"), image)?
            }
        };
        measured.push(measure(&dir, &inputs, &updater, runs)?);
        // Each row's gigabytes go before the next row's are made.
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }

    let mut rows = Vec::new();
    for m in &measured {
        let aperture_median = median(&m.times[0]);
        let mb = m.rootfs_size as f64 / 1e6;
        for (name, t, readback) in [
            (
                "aperture-update install",
                &m.times[0],
                "yes: full dm-verity",
            ),
            ("rauc install (RAUC 1.8, plain)", &m.times[1], "no"),
        ] {
            let med = median(t);
            rows.push(Row {
                name: format!("{}: {name}", m.label),
                cells: vec![
                    format!("{:.2}", med.as_secs_f64()),
                    format!("{:.0}", mb / med.as_secs_f64()),
                    format!("{:.2}", med.as_secs_f64() / aperture_median.as_secs_f64()),
                    readback.into(),
                ],
            });
        }
    }
    print_table(
        &format!(
            "Installing a rootfs image into the inactive file-backed slot, median of {runs} runs; \
             MB/s of rootfs image; ratio = tool time / aperture time on the same image (above \
             1: aperture is faster)"
        ),
        &["image: tool", "seconds", "MB/s", "ratio", "read-back"],
        &rows,
    );
    println!();
    for m in &measured {
        println!(
            "{}: {} ({} bytes with its dm-verity tree). Aperture bundle {:.1} MiB, RAUC bundle \
             {:.1} MiB.",
            m.label, m.about, m.rootfs_size, m.bundle_mib[0], m.bundle_mib[1]
        );
    }
    println!(
        "Both tools install the same images, kernel and initrd, from a warm page cache into \
         fresh sparse slot files, fsynced by both."
    );
    println!(
        "aperture-update ({}): release build, one process per install, `--root` file-backed \
         appliance and `--disk-image` GPT disk; verifies the ed25519 manifest and key chain, \
         streams the zstd payload into rootfs_b (decoding, hashing and 4 MiB direct writes on \
         three threads) while reading each written chunk back with direct reads into the full \
         dm-verity check (hashed on two threads), fsyncs, writes and re-reads the boot files \
         and arms systemd-boot entries on the ESP folder.",
        updater.display()
    );
    println!(
        "rauc install: client call to a `rauc service` already running (started once per \
         image, outside the timing) on a private D-Bus system bus, bootloader=noop, raw \
         file-backed slots; verifies the CMS signature over the whole bundle, loop-mounts the \
         squashfs (zstd {ZSTD_LEVEL}), copies each image to its slot and fsyncs; no read-back. \
         Bundle format plain: verity bundles need device-mapper, which this host kernel lacks."
    );
    for m in &measured {
        println!(
            "Per run, {}: {}.",
            m.label,
            m.times
                .iter()
                .zip(["aperture", "rauc"])
                .map(|(t, n)| format!(
                    "{n} {}",
                    t.iter()
                        .map(|d| format!("{:.2}s", d.as_secs_f64()))
                        .collect::<Vec<_>>()
                        .join(" ")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    println!(
        "Inputs and slots were removed afterwards ({}).",
        work.display()
    );
    Ok(())
}

/// Both tools, `runs` times each (alternating), on one row of inputs made under `dir`.
fn measure(dir: &Path, inputs: &Inputs, updater: &Path, runs: u32) -> Result<Measured> {
    eprintln!(
        "bench update: [{}] making the Aperture bundle (zstd {ZSTD_LEVEL}, ed25519)",
        inputs.label
    );
    let aperture = ApertureSide::new(&dir.join("aperture"), inputs)?;
    eprintln!(
        "bench update: [{}] making the RAUC bundle (plain, squashfs zstd {ZSTD_LEVEL}, CMS)",
        inputs.label
    );
    let rauc = RaucSide::new(&dir.join("rauc"), inputs)?;

    eprintln!(
        "bench update: [{}] warming the page cache with both bundles",
        inputs.label
    );
    for p in [&aperture.bundle, &rauc.bundle] {
        io::copy(&mut File::open(p)?, &mut io::sink())?;
    }
    eprintln!(
        "bench update: [{}] starting a private D-Bus system bus and `rauc service`",
        inputs.label
    );
    let service = rauc.start_service()?;

    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for run in 1..=runs {
        eprintln!(
            "bench update: [{}] run {run}/{runs}: aperture-update install",
            inputs.label
        );
        aperture.fresh_device(inputs)?;
        sync()?;
        let (t, phases) = aperture.install(updater)?;
        eprintln!("bench update:   aperture-update {phases}");
        check_slot(aperture.slot_b_sha256(inputs.rootfs_size)?, inputs)
            .context("aperture-update wrote a wrong slot")?;
        times[0].push(t);

        eprintln!(
            "bench update: [{}] run {run}/{runs}: rauc install",
            inputs.label
        );
        rauc.fresh_slots()?;
        sync()?;
        let t = rauc.install(&service)?;
        let got = hash_first(File::open(&rauc.slot_b)?.take(inputs.rootfs_size))?;
        check_slot(got, inputs).context("rauc install wrote a wrong slot")?;
        times[1].push(t);
    }
    drop(service);
    let size_mib = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.len() as f64 / MIB as f64)
            .unwrap_or(0.0)
    };
    Ok(Measured {
        label: inputs.label.clone(),
        about: inputs.about.clone(),
        rootfs_size: inputs.rootfs_size,
        bundle_mib: [size_mib(&aperture.bundle), size_mib(&rauc.bundle)],
        times,
    })
}

/// Build `aperture-update` with the release profile (what images ship) and return its path.
fn build_updater(ws: &Path) -> Result<PathBuf> {
    crate::release_binary(ws, &["--package", "aperture-updater"], "aperture-update")
}

/// Deterministic noise (xorshift64), as the updater's tests make it.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let mut s = self.0;
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            self.0 = s;
            let bytes = s.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

/// The largest data size (whole 4 KiB blocks) whose image with the verity tree fits `total`.
fn data_size_for(total: u64) -> u64 {
    let mut data = total / 4096 * 4096;
    while data + hash_tree_size(data) > total {
        data -= 4096;
    }
    data
}

fn make_inputs(dir: &Path) -> Result<Inputs> {
    fs::create_dir_all(dir)?;
    let rootfs = dir.join("rootfs.img");
    let data_size = data_size_for(SLOT_SIZE);
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&rootfs)?;
    {
        let mut w = BufWriter::with_capacity(8 * MIB as usize, &mut f);
        let mut block = vec![0u8; 8192];
        let mut written = 0;
        while written < data_size {
            noise.fill(&mut block[..4096]);
            w.write_all(&block)?;
            written += block.len() as u64;
        }
        w.flush()?;
    }
    // A data size that is not a multiple of 8 KiB ends halfway through a block.
    f.set_len(data_size)?;
    let verity = append_hash_tree(&mut f, data_size, b"aperture-bench-salt", [7u8; 16])?;
    f.sync_all()?;
    drop(f);
    let (rootfs_sha256, rootfs_size) = sha256_file(&rootfs)?;

    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    for (path, len) in [(&kernel, KERNEL_SIZE), (&initrd, INITRD_SIZE)] {
        let mut buf = vec![0u8; len];
        noise.fill(&mut buf);
        fs::write(path, &buf)?;
    }
    let base_cmdline = "console=ttyS0".to_string();
    let ukis = generated_ukis(dir, &kernel, &initrd, &verity, &base_cmdline)?;
    Ok(Inputs {
        label: "generated 1 GiB".into(),
        about: format!(
            "generated: {} bytes of data, 4 KiB of noise and 4 KiB of zeros in every 8 KiB, \
             with a {} KB kernel and a {} KB initrd",
            verity.data_size(),
            KERNEL_SIZE / 1000,
            INITRD_SIZE / 1000
        ),
        rootfs,
        rootfs_size,
        rootfs_sha256,
        verity,
        kernel,
        initrd,
        ukis,
        base_cmdline,
        boot_slot_size: MIB,
    })
}

/// The inputs of the real-image row: `image` (a build's rootfs.img, read where it is), its
/// verity parameters from its superblock, and the kernel and initrd beside it (generated
/// small ones if there are none).
fn slot_inputs(dir: &Path, image: &Path) -> Result<Inputs> {
    fs::create_dir_all(dir)?;
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let verity = read_appended(&mut f)
        .with_context(|| format!("reading the verity superblock of {}", image.display()))?;
    drop(f);
    let (rootfs_sha256, rootfs_size) = sha256_file(image)?;
    if rootfs_size > SLOT_SIZE {
        bail!(
            "{} is {rootfs_size} bytes, more than the bench's {SLOT_SIZE}-byte slots",
            image.display()
        );
    }
    let beside = image.parent().unwrap_or(Path::new("."));
    // The build's own signed UKIs and kernel arguments when they are there; RAUC gets the
    // kernel and initrd inside them.
    let built = Slot::ALL.map(|s| beside.join(s.uki_artifact()));
    let manifest = fs::read(beside.join("manifest.json"))
        .ok()
        .and_then(|b| Manifest::from_json_unverified(&b).ok());
    let mut boot = Vec::new();
    let (ukis, base_cmdline) = match manifest {
        Some(m) if built.iter().all(|p| p.is_file()) => {
            let uki = fs::read(&built[0])?;
            for (section, name) in [(".linux", "vmlinuz"), (".initrd", "initrd.img")] {
                let bytes = aperture_uefi::section_data(&uki, section)?
                    .with_context(|| format!("{} has no {section}", built[0].display()))?;
                let made = dir.join(name);
                fs::write(&made, bytes)?;
                boot.push(made);
            }
            (built, m.boot.map(|b| b.cmdline).unwrap_or_default())
        }
        _ => {
            let mut noise = Noise(0x5eed);
            for (name, len) in [("vmlinuz", KERNEL_SIZE), ("initrd.img", INITRD_SIZE)] {
                let made = dir.join(name);
                let mut buf = vec![0u8; len];
                noise.fill(&mut buf);
                fs::write(&made, &buf)?;
                boot.push(made);
            }
            let base = "console=ttyS0".to_string();
            (
                generated_ukis(dir, &boot[0], &boot[1], &verity, &base)?,
                base,
            )
        }
    };
    let largest = boot
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()))
        .collect::<io::Result<Vec<u64>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let initrd = boot.pop().context("two boot files")?;
    let kernel = boot.pop().context("two boot files")?;
    Ok(Inputs {
        label: "slot image".into(),
        about: format!(
            "{} (a build's slot image with its dm-verity tree, {} data blocks), with {} and {} \
             (RAUC: the kernel and initrd inside them)",
            image.display(),
            verity.data_blocks,
            ukis[0].display(),
            ukis[1].display()
        ),
        rootfs: image.to_path_buf(),
        rootfs_size,
        rootfs_sha256,
        verity,
        kernel,
        initrd,
        ukis,
        base_cmdline,
        boot_slot_size: largest.div_ceil(MIB).max(1) * MIB,
    })
}

/// The file-backed appliance and the Aperture bundle.
struct ApertureSide {
    dir: PathBuf,
    bundle: PathBuf,
    root_key: aperture_trust::keys::PublicKey,
}

impl ApertureSide {
    fn new(dir: &Path, inputs: &Inputs) -> Result<ApertureSide> {
        fs::create_dir_all(dir)?;
        let now = aperture_trust::now_unix();
        let root = SigningKeyPair::generate()?;
        let release = SigningKeyPair::generate()?;
        let keyring = SignedKeyring::create(
            &root,
            vec![KeyringEntry::new(
                release.public(),
                "bench-release",
                now + 86_400,
            )],
        )?;

        let mut artifacts = Vec::new();
        let mut sources = Vec::new();
        let names = Slot::ALL.map(|s| s.uki_artifact());
        for (path, name, role) in [
            (&inputs.rootfs, "rootfs.img", Role::Rootfs),
            (&inputs.ukis[0], names[0].as_str(), Role::Uki),
            (&inputs.ukis[1], names[1].as_str(), Role::Uki),
        ] {
            let zst = dir.join(format!("{name}.zst"));
            let payload = compress_payload(path, &zst, ZSTD_LEVEL)?;
            let (sha256, size) = sha256_file(path)?;
            sources.push((ArtifactName::new(name)?, zst, payload.size));
            artifacts.push(Artifact {
                name: ArtifactName::new(name)?,
                role,
                size,
                sha256,
                verity: (role == Role::Rootfs).then(|| inputs.verity.clone()),
                payload: Some(payload),
            });
        }
        let manifest = Manifest {
            format: 1,
            product: PRODUCT.into(),
            board: BOARD.into(),
            version: "2.0.0".parse()?,
            security_version: 1,
            build: BuildInfo {
                source_date_epoch: 1_700_000_000,
                recipe_sha256: Sha256Hex::digest(b"bench update"),
                ostree_commit: None,
                ostree_ref: None,
            },
            boot: Some(BootInfo {
                cmdline: inputs.base_cmdline.clone(),
            }),
            artifacts,
        };
        let (manifest_json, sig_json) = sign_manifest(&manifest, &release, &keyring)?;
        let mut readers = Vec::new();
        for (name, zst, size) in sources {
            readers.push(PayloadSource {
                name,
                size,
                reader: Box::new(io::BufReader::new(File::open(&zst)?)),
            });
        }
        let bundle = dir.join("update.bundle");
        let mut w = write_bundle(
            BufWriter::new(File::create(&bundle)?),
            &manifest_json,
            &sig_json,
            readers,
        )?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        for name in ["rootfs.img".to_string()].into_iter().chain(names) {
            fs::remove_file(dir.join(format!("{name}.zst")))?;
        }
        Ok(ApertureSide {
            dir: dir.to_path_buf(),
            bundle,
            root_key: root.public(),
        })
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn disk(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    /// A freshly flashed appliance running version 1.0.0 from slot A: build facts, root key,
    /// kernel command line, an ESP folder with both slots' entries, and an empty sparse GPT
    /// disk with `rootfs_a` and `rootfs_b`.
    fn fresh_device(&self, inputs: &Inputs) -> Result<()> {
        let root = self.root();
        let _ = fs::remove_dir_all(&root);
        let _ = fs::remove_file(self.disk());
        let files = Files::at(&root);
        for p in [files.build_facts(), files.cmdline()] {
            fs::create_dir_all(p.parent().context("rooted paths have parents")?)?;
        }
        let facts = BuildFacts {
            product: PRODUCT.into(),
            version: "1.0.0".into(),
            security_version: 1,
            board: BOARD.parse()?,
            recipe_sha256: Sha256Hex::digest(b"bench update").to_string(),
            source_date_epoch: 1_700_000_000,
            required_services: Vec::new(),
            tpm: false,
            reset_button: None,
        };
        fs::write(files.build_facts(), facts.to_bytes())?;
        fs::write(files.cmdline(), "console=ttyS0 aperture.slot=a\n")?;
        self.root_key.save(&files.root_key())?;
        let boot = |slot| aperture_slots::cmdline::uki_boot(PRODUCT, "1.0.0", slot);
        aperture_slots::write_initial_esp(&files.esp(), &boot(Slot::A), &boot(Slot::B))?;
        // As flashed: each slot's folder on the ESP holds its UKI.
        for (i, slot) in Slot::ALL.into_iter().enumerate() {
            fs::create_dir_all(files.esp_slot_dir(slot))?;
            fs::copy(&inputs.ukis[i], files.uki(slot))?;
        }

        let state = aperture_appliance::store::PARTITION_BYTES;
        let size = 2 * SLOT_SIZE + state + 4 * MIB;
        let mut f = File::create(self.disk())?;
        f.set_len(size)?;
        let ns = "aperture-bench";
        let layout = Layout::new(
            Guid::derive(ns, "disk"),
            vec![
                PartitionSpec::new("esp", Guid::EFI_SYSTEM, Guid::derive(ns, "esp"), MIB),
                // The device state (blank: a fresh appliance).
                PartitionSpec::new(
                    "aperture_state",
                    Guid::LINUX_FILESYSTEM,
                    Guid::derive(ns, "state"),
                    state,
                ),
                PartitionSpec::new(
                    "rootfs_a",
                    Guid::LINUX_FILESYSTEM,
                    Guid::derive(ns, "a"),
                    SLOT_SIZE,
                ),
                PartitionSpec::new(
                    "rootfs_b",
                    Guid::LINUX_FILESYSTEM,
                    Guid::derive(ns, "b"),
                    SLOT_SIZE,
                ),
            ],
        );
        write_gpt(&mut f, size, &layout)?;
        f.sync_all()?;
        Ok(())
    }

    /// One timed `aperture-update install`, and the phase times it logged (stream, read-back).
    fn install(&self, updater: &Path) -> Result<(Duration, String)> {
        let mut cmd = Command::new(updater);
        cmd.arg("--root")
            .arg(self.root())
            .arg("--disk-image")
            .arg(self.disk())
            .arg("install")
            .arg(&self.bundle)
            .env("RUST_LOG", "info");
        let (took, log) = timed_with_log(cmd, "aperture-update install")?;
        let phases = log
            .lines()
            .filter(|l| l.contains("streamed ") || l.contains(" back: "))
            .map(|l| {
                l.trim_start_matches(|c: char| !c.is_ascii_lowercase())
                    .trim()
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok((took, phases))
    }

    /// sha256 of the first `len` bytes of `rootfs_b`.
    fn slot_b_sha256(&self, len: u64) -> Result<Sha256Hex> {
        let mut f = File::open(self.disk())?;
        let size = f.metadata()?.len();
        let gpt = aperture_gpt::read_gpt(&mut f, size)?;
        let part = gpt
            .find("rootfs_b")
            .context("the bench disk has no rootfs_b")?;
        io::Seek::seek(&mut f, io::SeekFrom::Start(part.offset()))?;
        hash_first(f.take(len.min(part.size())))
    }
}

/// sha256 of everything `r` yields.
fn hash_first(r: impl Read) -> Result<Sha256Hex> {
    let mut r = HashingReader::new(r);
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.digest())
}

/// The slot holds exactly the rootfs image (hashed outside the timing).
fn check_slot(got: Sha256Hex, inputs: &Inputs) -> Result<()> {
    if got != inputs.rootfs_sha256 {
        bail!(
            "the slot's first {} bytes hash to {got}, the image to {}",
            inputs.rootfs_size,
            inputs.rootfs_sha256
        );
    }
    Ok(())
}

/// Run `cmd` to completion, timing it; its output is kept for the error message only.
pub(super) fn timed(cmd: Command, what: &str) -> Result<Duration> {
    Ok(timed_with_log(cmd, what)?.0)
}

/// [`timed`], also returning what the command wrote to stderr.
fn timed_with_log(mut cmd: Command, what: &str) -> Result<(Duration, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 8),
            tail(&String::from_utf8_lossy(&out.stderr), 12)
        );
    }
    Ok((took, String::from_utf8_lossy(&out.stderr).into_owned()))
}

pub(super) fn run_quiet(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 12)
        );
    }
    Ok(())
}

pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(super) fn sparse(path: &Path, size: u64) -> Result<()> {
    File::create(path)?.set_len(size)?;
    Ok(())
}

/// Write back every dirty page, so no earlier step's writeback lands inside a timed install.
fn sync() -> Result<()> {
    let status = Command::new("sync").status().context("running sync")?;
    if !status.success() {
        bail!("sync failed ({status})");
    }
    Ok(())
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Removes a folder when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("bench update: could not remove {}: {e}", self.0.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_size_leaves_room_for_the_verity_tree() {
        let d = data_size_for(GIB);
        assert_eq!(d % 4096, 0);
        assert!(d + hash_tree_size(d) <= GIB);
        assert!(d + 4096 + hash_tree_size(d + 4096) > GIB);
    }
}
