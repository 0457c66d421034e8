//! The outputs of a Jetson build, from a rootfs commit and its slot image: the BSP's kernel,
//! device tree, boot firmware and capsule (hashed into the manifest), one Android boot image
//! per slot, the ESP, `disk.img` in NVIDIA's rootfs-device layout (+ `.bmap`, `.zst`),
//! `flash_layout.xml` for NVIDIA's flashing tools, the SBOM, the signed manifest and the
//! update bundle (rootfs, kernel, initrd, device tree and, when the BSP has one, the capsule).
//!
//! The slot image before and the tail from the bmap on are the steps every board shares
//! (`crate::outputs`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aperture_gpt::Placed;
use aperture_slots::Slot;
use aperture_trust::manifest::{Manifest, Role};
use aperture_trust::signing;

use super::board::JetsonBoard;
use super::bsp::Bsp;
use super::error::JetsonError;
use super::flash_xml::{self, LayoutFiles};
use super::nvidia::{Chain, Fill};
use super::{bootimg, names};
use crate::board::BoardSpec;
use crate::disk;
use crate::esp::{self, EspFile};
use crate::outputs::{
    artifact, finish, names as common, read_commit_file, slot_payloads, Ctx, OutputsReport,
};
use crate::recipe::Recipe;
use crate::slot::{self, SlotImage};
use crate::store::{Store, TreeView};

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
    /// The device state partition image.
    pub state: PathBuf,
    /// The factory image (when the recipe sizes its partition).
    pub factory: Option<PathBuf>,
}

/// Make the Jetson outputs in the output folder from the slot image. Without a BSP this stops
/// with [`JetsonError::MissingBsp`], which says what to download and where to point `--bsp`.
pub fn build_outputs(ctx: &Ctx<'_>, slot_img: SlotImage) -> Result<OutputsReport> {
    let (recipe, paths, rootfs, bsp, rep) = (ctx.recipe, ctx.paths, ctx.rootfs, ctx.bsp, ctx.rep);
    let board = JetsonBoard::of(recipe.board)?;
    let out = &paths.out;
    let Some(bsp_given) = bsp else {
        return Err(JetsonError::MissingBsp {
            board: recipe.board,
            pin: recipe.bsp.clone(),
            out: out.clone(),
        }
        .into());
    };
    let (bsp_dir, bsp_sha256) = rep.step("bsp unpack", |s| {
        let (dir, note, sha256) = super::bsp::unpack(bsp_given, recipe.bsp.as_ref(), &paths.cache)?;
        s.note(note);
        Ok((dir, sha256))
    })?;
    let bsp_dir = &bsp_dir;
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

    let mut slot_files = vec![
        (common::ROOTFS.to_string(), Role::Rootfs),
        (names::KERNEL.to_string(), Role::Kernel),
        (names::INITRD.to_string(), Role::Initrd),
        (dtb_name.clone(), Role::Dtb),
    ];
    if let Some(c) = &capsule_name {
        slot_files.push((c.clone(), Role::Capsule));
    }
    let mut artifacts = slot_payloads(ctx, &slot_img, &slot_files)?;
    for (rel, _) in bsp.firmware() {
        artifacts.push(artifact(out, flash_xml::output_name(rel), Role::Firmware)?);
    }
    let draft = ctx.draft(&artifacts)?;
    // The slot artifacts' manifest, signed: what both slots' records in the state partition
    // hold. (The release's manifest cannot be: it covers disk.img.)
    let slot_only = Manifest {
        artifacts: artifacts
            .iter()
            .filter(|a| a.role.is_slot_content())
            .cloned()
            .collect(),
        ..draft.clone()
    };
    let (slot_json, slot_sig) =
        signing::sign_manifest(&slot_only, &ctx.keys.release, &ctx.keys.keyring)?;

    let boot_imgs = [out.join(names::BOOT_A), out.join(names::BOOT_B)];
    rep.step("boot images", |s| {
        for (slot, dest) in Slot::ALL.into_iter().zip(&boot_imgs) {
            let entry = crate::outputs::slot_boot(&draft, slot)?;
            bootimg::write(
                dest,
                &out.join(names::KERNEL),
                &out.join(names::INITRD),
                entry.options.as_deref().unwrap_or_default(),
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
        let files = vec![EspFile::file(spec.fallback_efi(), bsp.l4t_launcher())];
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
        s.note("L4TLauncher as EFI/BOOT/BOOTAA64.EFI");
        Ok(())
    })?;

    let state_img = out.join(names::STATE);
    rep.step("device state", |s| {
        crate::outputs::state::write_initial(&state_img, &slot_json, &slot_sig)?;
        s.note("both slots' records, nothing else: a fresh appliance");
        Ok(())
    })?;

    // The factory image for reset level 2, when the recipe sizes its partition: an update
    // bundle of the slot artifacts alone, as on the qemu boards (NVIDIA's tools flash it from
    // this file; `disk.img` holds it too).
    let factory_img = recipe.partitions.factory.map(|_| out.join(names::FACTORY));
    if let (Some(size), Some(path)) = (recipe.partitions.factory, &factory_img) {
        rep.step("factory image", |s| {
            crate::bundle::write_bundle_file(path, &slot_json, &slot_sig, |name| {
                crate::outputs::payload_path(paths, recipe, name)
            })?;
            let len = std::fs::metadata(path)?.len();
            if len > size.bytes() {
                anyhow::bail!(
                    "the factory image is {} MiB but the recipe's factory partition holds {} MiB: raise [partitions] factory",
                    len >> 20,
                    size.bytes() >> 20
                );
            }
            s.note(format!("{} MiB: the slot artifacts, signed", len >> 20));
            Ok(())
        })?;
    }

    rep.step("disk", |s| {
        let files = PartitionFiles {
            rootfs: slot_img.path.clone(),
            boot: boot_imgs.clone(),
            dtb: out.join(&dtb_name),
            esp: esp_img.clone(),
            state: state_img.clone(),
            factory: factory_img.clone(),
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
            state: names::STATE.into(),
            factory: factory_img.as_ref().map(|_| names::FACTORY.to_string()),
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

    let mut extra = vec![
        (names::BOOT_A, Role::Other),
        (names::BOOT_B, Role::Other),
        (names::ESP, Role::Other),
        (names::STATE, Role::Other),
        (names::FLASH_LAYOUT, Role::Other),
    ];
    if factory_img.is_some() {
        extra.push((names::FACTORY, Role::Other));
    }
    let artifacts = finish(ctx, &draft, &extra)?;
    Ok(OutputsReport {
        slot: slot_img,
        artifacts,
        bsp: Some(crate::outputs::BspUsed {
            tree: bsp.root.clone(),
            given: bsp_given.to_path_buf(),
            release: bsp.release.clone(),
            sha256: bsp_sha256,
        }),
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
    for part in board.rootfs_parts(recipe) {
        let src = match (part.fill, part.chain) {
            (Fill::Rootfs, _) => &files.rootfs,
            (Fill::BootImage, Chain::B) => &files.boot[1],
            (Fill::BootImage, _) => &files.boot[0],
            (Fill::KernelDtb, _) => &files.dtb,
            (Fill::Esp, _) => &files.esp,
            (Fill::State, _) => &files.state,
            (Fill::Factory, _) => match &files.factory {
                Some(f) => f,
                None => continue,
            },
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
                    Fill::Factory => "raise partitions.factory in the recipe",
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
