//! The outputs of a Jetson build, from a rootfs commit and its slot image: the BSP's kernel,
//! device tree, boot firmware and capsule (hashed into the manifest), one Android boot image
//! per slot, the ESP, `disk.img` in NVIDIA's rootfs-device layout (+ `.bmap`, `.zst`),
//! `flash_layout.xml` for NVIDIA's flashing tools, the SBOM, the signed manifest and the
//! update bundle (rootfs, kernel, initrd, device tree and, when the BSP has one, the capsule).
//!
//! The steps mirror `crate::outputs` for the qemu boards; the shared pieces (bmap, zstd,
//! signing, bundle writing) are small functions here until that module exposes its own.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aperture_gpt::Placed;
use aperture_slots::Slot;
use aperture_trust::bundle::{self};
use aperture_trust::manifest::{BootInfo, BuildInfo, Manifest, Role};

use super::board::JetsonBoard;
use super::bsp::Bsp;
use super::error::JetsonError;
use super::flash_xml::{self, LayoutFiles};
use super::nvidia::{Chain, Fill};
use super::{bootimg, names};
use crate::board::BoardSpec;
use crate::esp::{self, EspFile};
use crate::keys::BuildKeys;
use crate::outputs::{artifact, names as common, payload_path, read_commit_file, OutputsReport};
use crate::pipeline::{Paths, RootfsBuild};
use crate::progress::Reporter;
use crate::recipe::Recipe;
use crate::slot::{self, SlotImage, SlotParams};
use crate::store::{Store, TreeView};
use crate::{disk, sbom};

/// What the outputs stage of a Jetson build starts from.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// The recipe.
    pub recipe: &'a Recipe,
    /// Output, store and cache folders.
    pub paths: &'a Paths,
    /// The rootfs commit.
    pub rootfs: &'a RootfsBuild,
    /// Signing keys.
    pub keys: &'a BuildKeys,
    /// The workspace (for the SBOM's list of our crates).
    pub workspace: &'a Path,
    /// The Jetson Linux BSP (`--bsp`), if one was given.
    pub bsp: Option<&'a Path>,
}

/// Files that fill the rootfs device of `disk.img`.
#[derive(Debug, Clone)]
pub struct PartitionFiles {
    /// The slot image, written to both rootfs partitions.
    pub rootfs: PathBuf,
    /// Boot images of slots A and B.
    pub boot: [PathBuf; 2],
    /// The kernel device tree, written to both dtb partitions.
    pub dtb: PathBuf,
    /// The ESP image.
    pub esp: PathBuf,
}

/// The slot image step, exactly as `crate::outputs` runs it for every board (same derived
/// UUIDs, salt and compressor, so both share the cached image).
pub fn slot_image(
    recipe: &Recipe,
    paths: &Paths,
    rootfs: &RootfsBuild,
    rep: &Reporter,
) -> Result<SlotImage> {
    let h = &rootfs.recipe_sha256;
    let store = Store::open(&paths.repo)?;
    rep.step("slot image", |s| {
        let params = SlotParams {
            commit: rootfs.commit.clone(),
            fs_uuid: aperture_trust::verity::format_uuid(slot::derived_uuid(h, "erofs")),
            salt: slot::derived_salt(h, "verity"),
            verity_uuid: slot::derived_uuid(h, "verity"),
            source_date: rootfs.source_date_epoch,
            compressor: "lz4".into(),
        };
        let img = slot::build(
            &store,
            &params,
            &paths.cache,
            &paths.out.join(common::ROOTFS),
            s,
        )?;
        slot::check_fits(&img, recipe.partitions.rootfs.bytes(), "APP")?;
        Ok(img)
    })
}

/// Make the Jetson outputs in `inputs.paths.out` from the slot image. Without a BSP this stops
/// with [`JetsonError::MissingBsp`], which says what to download and where to point `--bsp`.
pub fn build_outputs(
    inputs: &Inputs<'_>,
    slot_img: SlotImage,
    rep: &Reporter,
) -> Result<OutputsReport> {
    let Inputs {
        recipe,
        paths,
        rootfs,
        keys: build_keys,
        workspace,
        bsp,
    } = *inputs;
    let board = JetsonBoard::of(recipe.board)?;
    let out = &paths.out;
    let Some(bsp_dir) = bsp else {
        return Err(JetsonError::MissingBsp {
            board: recipe.board,
            out: out.clone(),
        }
        .into());
    };
    let spec = BoardSpec::of(recipe.board);
    let sd = rootfs.source_date_epoch;
    let tmp = paths.cache.join("tmp");
    std::fs::create_dir_all(&tmp)?;

    let bsp = rep.step("bsp", |s| {
        let b = Bsp::open(bsp_dir, board)?;
        let mut note = format!(
            "{} ({}), {} firmware files{}",
            b.root.display(),
            b.release.as_deref().unwrap_or("release unknown"),
            b.firmware().len(),
            if b.capsule.is_some() {
                ", boot-firmware capsule"
            } else {
                ""
            }
        );
        if let Some(layout) = b.nvidia_layout() {
            let text = std::fs::read_to_string(&layout)?;
            let diffs = flash_xml::compare_with_table(
                board,
                &flash_xml::parse(&layout.display().to_string(), &text)?,
            );
            if diffs.is_empty() {
                note.push_str(&format!("; its {} matches our table", board.nvidia_layout));
            } else {
                rep.warn_loud(&[
                    &format!(
                        "the BSP's {} differs from the layout this build writes:",
                        board.nvidia_layout
                    ),
                    &diffs.join("; "),
                    &format!(
                        "this build follows Jetson Linux {}; check the BSP release",
                        board.l4t_release
                    ),
                ]);
            }
        }
        s.note(note);
        Ok(b)
    })?;
    if bsp.synthetic {
        rep.warn_loud(&[
            &format!(
                "SYNTHETIC BSP: {} was made by image/fixtures/make-synthetic-bsp.sh.",
                bsp.root.display()
            ),
            "Its kernel, device tree and firmware are generated placeholders, not NVIDIA software:",
            "the outputs test the build and the layout, and will not boot a Jetson.",
        ]);
    }

    let store = Store::open(&paths.repo)?;
    let view = TreeView::new(&store, &rootfs.commit)?;
    let dtb_name = flash_xml::output_name(board.kernel_dtb).to_string();
    let capsule_name = bsp.capsule.as_ref().map(|_| names::CAPSULE.to_string());
    rep.step("boot files", |s| {
        slot::copy_file(&bsp.kernel(), &out.join(names::KERNEL))?;
        slot::copy_file(&bsp.dtb(), &out.join(&dtb_name))?;
        if let Some(c) = &bsp.capsule {
            slot::copy_file(c, &out.join(names::CAPSULE))?;
        }
        for (rel, path) in bsp.firmware() {
            slot::copy_file(&path, &out.join(flash_xml::output_name(rel)))?;
        }
        // The initrd opens the verity root; the rootfs's own is the one that knows how.
        read_commit_file(&view, "initrd.img", &out.join(names::INITRD))?;
        s.note(format!(
            "kernel, {dtb_name}, {} firmware files from the BSP; initrd from the rootfs",
            bsp.firmware().len()
        ));
        Ok(())
    })?;

    let mut artifacts = rep.step("payloads", |s| {
        let mut v = Vec::new();
        let mut slot_files = vec![
            (common::ROOTFS.to_string(), Role::Rootfs),
            (names::KERNEL.to_string(), Role::Kernel),
            (names::INITRD.to_string(), Role::Initrd),
            (dtb_name.clone(), Role::Dtb),
        ];
        if let Some(c) = &capsule_name {
            slot_files.push((c.clone(), Role::Capsule));
        }
        for (name, role) in &slot_files {
            let mut a = artifact(out, name, *role)?;
            if *role == Role::Rootfs {
                a.verity = Some(slot_img.verity.clone());
            }
            a.payload = Some(bundle::compress_payload(
                &out.join(name),
                &payload_path(paths, recipe, name),
                3,
            )?);
            v.push(a);
        }
        for (rel, _) in bsp.firmware() {
            v.push(artifact(out, flash_xml::output_name(rel), Role::Firmware)?);
        }
        s.note(format!(
            "{} compressed for the bundle",
            slot_files
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(v)
    })?;

    let draft = Manifest {
        format: 1,
        product: recipe.product.clone(),
        board: recipe.board.name().to_string(),
        version: recipe.version.clone(),
        security_version: recipe.security_version,
        build: BuildInfo {
            source_date_epoch: sd,
            recipe_sha256: rootfs.recipe_sha256.parse()?,
            ostree_commit: Some(rootfs.commit.clone()),
            ostree_ref: Some(rootfs.ostree_ref.clone()),
        },
        boot: Some(BootInfo {
            cmdline: spec.base_cmdline(),
        }),
        artifacts: artifacts.clone(),
    };

    let boot_imgs = [out.join(names::BOOT_A), out.join(names::BOOT_B)];
    rep.step("boot images", |s| {
        for (slot, dest) in Slot::ALL.into_iter().zip(&boot_imgs) {
            let entry = crate::outputs::slot_boot(&draft, slot)?;
            bootimg::write(
                dest,
                &out.join(names::KERNEL),
                &out.join(names::INITRD),
                &entry.options,
            )
            .with_context(|| {
                format!(
                    "making the boot image of slot {}",
                    slot.letter().to_uppercase()
                )
            })?;
        }
        s.note(format!(
            "{} for {}, {} for {}",
            names::BOOT_A,
            board.kernel_partition(Slot::A),
            names::BOOT_B,
            board.kernel_partition(Slot::B)
        ));
        Ok(())
    })?;

    let esp_img = out.join(names::ESP);
    rep.step("esp", |s| {
        let record = aperture_trust::record::SlotRecord::from_manifest(&draft)?.to_json();
        let mut files = vec![EspFile::file(spec.fallback_efi(), bsp.l4t_launcher())];
        for slot in Slot::ALL {
            files.push(EspFile::bytes(
                format!("aperture/{}/slot.json", slot.letter()),
                record.clone(),
            ));
        }
        let volume = u32::from_be_bytes(
            slot::derived_uuid(&rootfs.recipe_sha256, "esp")[..4]
                .try_into()
                .unwrap_or([0; 4]),
        );
        esp::make(
            &esp_img,
            recipe.partitions.esp.bytes(),
            volume,
            &files,
            sd,
            &tmp.join(format!("{}-esp-scratch", recipe.build_name())),
        )?;
        s.note("L4TLauncher as EFI/BOOT/BOOTAA64.EFI, slot records for A and B");
        Ok(())
    })?;

    rep.step("disk", |s| {
        let files = PartitionFiles {
            rootfs: slot_img.path.clone(),
            boot: boot_imgs.clone(),
            dtb: out.join(&dtb_name),
            esp: esp_img.clone(),
        };
        let placed = write_disk(board, recipe, &files, &out.join(common::DISK))?;
        s.note(format!(
            "{} partitions in NVIDIA's {} order; {} and {} hold {}",
            placed.len(),
            board.soc,
            board.rootfs_partition(Slot::A),
            board.rootfs_partition(Slot::B),
            common::ROOTFS
        ));
        Ok(())
    })?;

    rep.step("flash layout", |s| {
        let files = LayoutFiles {
            rootfs: common::ROOTFS.into(),
            boot: [names::BOOT_A.into(), names::BOOT_B.into()],
            dtb: dtb_name.clone(),
            esp: names::ESP.into(),
        };
        let xml = flash_xml::render(board, recipe, &files);
        std::fs::write(out.join(names::FLASH_LAYOUT), &xml)?;
        s.note(format!(
            "{} for NVIDIA's flashing tools ({})",
            names::FLASH_LAYOUT,
            board.l4t_release
        ));
        Ok(())
    })?;

    rep.step("bmap", |s| {
        let bmap = aperture_flash::bmap::Bmap::from_sparse_file(out.join(common::DISK), 4096)?;
        std::fs::write(out.join(common::BMAP), bmap.to_xml())?;
        s.note(format!(
            "{} MiB mapped of {} MiB",
            (bmap.mapped_blocks_count * u64::from(bmap.block_size)) >> 20,
            bmap.image_size >> 20
        ));
        Ok(())
    })?;
    rep.step("compress", |s| {
        compress(&out.join(common::DISK), &out.join(common::DISK_ZST))?;
        s.note(format!(
            "{} MiB",
            std::fs::metadata(out.join(common::DISK_ZST))?.len() >> 20
        ));
        Ok(())
    })?;
    rep.step("sbom", |s| {
        let n = sbom::generate(&view, recipe, workspace, sd, &out.join(common::SBOM))?;
        s.note(format!("{n} packages"));
        Ok(())
    })?;

    let (json, sig) = rep.step("manifest", |s| {
        for (name, role) in [
            (names::BOOT_A, Role::Other),
            (names::BOOT_B, Role::Other),
            (names::ESP, Role::Other),
            (names::FLASH_LAYOUT, Role::Other),
            (common::DISK, Role::Disk),
            (common::BMAP, Role::Bmap),
            (common::DISK_ZST, Role::DiskZst),
            (common::SBOM, Role::Sbom),
        ] {
            artifacts.push(artifact(out, name, role)?);
        }
        let m = Manifest {
            artifacts: artifacts.clone(),
            ..draft.clone()
        };
        let (json, sig) = crate::outputs::sign_outputs(out, &m, build_keys)?;
        s.note(format!(
            "{} artifacts, signed by release key {}",
            m.artifacts.len(),
            build_keys.release.key_id()
        ));
        Ok((json, sig))
    })?;

    rep.step("bundle", |s| {
        crate::outputs::write_release_bundle(paths, recipe, &json, &sig)?;
        s.note(format!(
            "{} MiB",
            std::fs::metadata(out.join(common::BUNDLE))?.len() >> 20
        ));
        Ok(())
    })?;

    Ok(OutputsReport {
        slot: slot_img,
        artifacts,
    })
}

/// Write `disk.img`: the board's rootfs-device GPT for `recipe`, the slot image in both rootfs
/// partitions, each slot's boot image and the device tree in its kernel partitions, the ESP;
/// everything else left as holes. Returns where each partition landed.
pub fn write_disk(
    board: &JetsonBoard,
    recipe: &Recipe,
    files: &PartitionFiles,
    dest: &Path,
) -> Result<Vec<Placed>> {
    let layout = board.layout(recipe);
    let (f, placed) =
        disk::create(dest, recipe.partitions.disk.bytes(), &layout).with_context(|| {
            format!(
                "the {} layout needs {} MiB of disk (partitions.disk is {} MiB)",
                recipe.board.name(),
                board.required_disk_bytes(recipe) >> 20,
                recipe.partitions.disk.bytes() >> 20
            )
        })?;
    for part in board.rootfs_parts() {
        let src = match (part.fill, part.chain) {
            (Fill::Rootfs, _) => &files.rootfs,
            (Fill::BootImage, Chain::B) => &files.boot[1],
            (Fill::BootImage, _) => &files.boot[0],
            (Fill::KernelDtb, _) => &files.dtb,
            (Fill::Esp, _) => &files.esp,
            (Fill::Firmware(_) | Fill::Empty, _) => continue,
        };
        let p = disk::find(&placed, part.name)?;
        let size = std::fs::metadata(src)
            .with_context(|| format!("reading {}", src.display()))?
            .len();
        if size > p.size() {
            return Err(JetsonError::TooBig {
                what: src.display().to_string(),
                size,
                partition: part.name,
                capacity: p.size(),
                hint: match part.fill {
                    Fill::Rootfs => "raise partitions.rootfs in the recipe",
                    Fill::Esp => "raise partitions.esp in the recipe",
                    _ => "NVIDIA fixes this partition's size; use a smaller kernel or initrd",
                },
            }
            .into());
        }
        let zeros = match part.fill {
            Fill::Esp => disk::Zeros::FollowSource,
            _ => disk::Zeros::Write,
        };
        disk::write_at(&f, p.offset(), src, zeros)?;
    }
    f.sync_all()?;
    Ok(placed)
}

fn compress(src: &Path, dest: &Path) -> Result<()> {
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let tmp = dest.with_extension("zst.tmp");
    let mut enc = zstd::stream::Encoder::new(BufWriter::new(File::create(&tmp)?), 3)?;
    // A fixed worker count keeps the output identical on machines with more cores.
    enc.multithread(2)?;
    std::io::copy(&mut BufReader::with_capacity(1 << 20, input), &mut enc)?;
    enc.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}
