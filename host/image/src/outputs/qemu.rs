//! The outputs of the qemu boards (qemu-x86_64, qemu-arm64): one signed unified kernel image
//! per slot (kernel and initrd from the rootfs, [`crate::uki`]), an ESP with signed systemd-boot,
//! one loader entry and one UKI per slot,
//! the factory image, the device state partition, and `disk.img` in our GPT layout
//! (`crate::disk::qemu_layout`). The tail from the bmap on is shared ([`super::finish`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_appliance::files::rel;
use aperture_appliance::Role as Part;
use aperture_slots::{systemd_boot, Slot};
use aperture_trust::manifest::Role;
use aperture_trust::signing;

use super::{names, read_commit_file, slot_boot, slot_payloads, Ctx, OutputsReport};
use crate::board::BoardSpec;
use crate::esp::{self, EspFile};
use crate::slot::{self, SlotImage};
use crate::store::{Store, TreeView};
use crate::{bundle, disk};

/// Make the qemu board's outputs in the output folder from the slot image.
pub fn build(ctx: &Ctx<'_>, slot_img: SlotImage) -> Result<OutputsReport> {
    let (recipe, out, rep) = (ctx.recipe, ctx.out(), ctx.rep);
    let spec = BoardSpec::of(recipe.board);
    let store = Store::open(&ctx.paths.repo)?;
    let view = TreeView::new(&store, &ctx.rootfs.commit)?;

    // One signed UKI per slot: kernel, initrd and the slot's command line (its verity root,
    // partition and slot name), signed with the db key.
    rep.step("boot images", |s| {
        let kernel = ctx.scratch("vmlinuz")?;
        let initrd = ctx.scratch("initrd.img")?;
        let stub = ctx.scratch("stub.efi")?;
        let osrel = ctx.scratch("os-release")?;
        read_commit_file(&view, "vmlinuz", &kernel)?;
        read_commit_file(&view, "initrd.img", &initrd)?;
        read_commit_file(&view, &spec.uki_stub(), &stub)?;
        read_commit_file(&view, "usr/lib/os-release", &osrel)?;
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let (kernel_b, initrd_b, stub_b, osrel_b) =
            (read(&kernel)?, read(&initrd)?, read(&stub)?, read(&osrel)?);
        let base = spec.base_cmdline();
        let layout = recipe.board.slot_layout();
        let mut notes = Vec::new();
        for slot in Slot::ALL {
            let cmdline = aperture_slots::cmdline::verity_cmdline(
                &base,
                layout,
                slot,
                slot_img.verity.root_hash.as_str(),
                slot_img.verity.hash_offset,
            );
            let built = crate::uki::build(
                &crate::uki::UkiInputs {
                    stub: &stub_b,
                    kernel: &kernel_b,
                    initrd: &initrd_b,
                    osrel: &osrel_b,
                    cmdline: &cmdline,
                    security_version: recipe.security_version,
                },
                &ctx.keys.secure_boot,
                ctx.rootfs.source_date_epoch,
                &out.join(slot.uki_artifact()),
            )?;
            notes.push(format!(
                "{} {:.1} MiB (PCR 11 {}…)",
                slot.uki_artifact(),
                built.size as f64 / (1 << 20) as f64,
                &built.pcr11[..12]
            ));
        }
        for f in [&kernel, &initrd, &stub, &osrel] {
            let _ = std::fs::remove_file(f);
        }
        s.note(format!(
            "{}, signed with the Secure Boot db key",
            notes.join(", ")
        ));
        Ok(())
    })?;

    // Slot artifacts first: their payloads go into the bundle.
    let files = [
        (names::ROOTFS.to_string(), Role::Rootfs),
        (Slot::A.uki_artifact(), Role::Uki),
        (Slot::B.uki_artifact(), Role::Uki),
    ];
    let artifacts = slot_payloads(ctx, &slot_img, &files)?;
    let draft = ctx.draft(&artifacts)?;
    // The slot artifacts' manifest, signed: what the factory image and both slots' records in
    // the state partition hold. (The release's manifest cannot be: it covers disk.img.)
    let (slot_json, slot_sig) =
        signing::sign_manifest(&draft, &ctx.keys.release, &ctx.keys.keyring)?;

    let esp_img = ctx.scratch("esp.img")?;
    rep.step("esp", |s| {
        let stage = ctx.scratch("esp-stage")?;
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage)?;
        let a = slot_boot(&draft, Slot::A)?;
        let b = slot_boot(&draft, Slot::B)?;
        systemd_boot::write_initial_esp(&stage, &a, &b)?;
        let mut files = Vec::new();
        collect_files(&stage, &stage, &mut files)?;
        // systemd-boot, signed with the db key too: the firmware starts nothing unsigned.
        let sdboot_plain = ctx.scratch("systemd-boot.unsigned.efi")?;
        let sdboot = ctx.scratch("systemd-boot.efi")?;
        read_commit_file(&view, &spec.systemd_boot_efi(), &sdboot_plain)?;
        crate::uki::sign(
            &sdboot_plain,
            &sdboot,
            &ctx.keys.secure_boot,
            ctx.rootfs.source_date_epoch,
        )?;
        let _ = std::fs::remove_file(&sdboot_plain);
        files.push(EspFile::file(spec.fallback_efi(), &sdboot));
        files.push(EspFile::file(
            format!("EFI/systemd/systemd-boot{}.efi", spec.efi_arch),
            &sdboot,
        ));
        for slot in Slot::ALL {
            files.push(EspFile::file(
                format!("{}/{}/{}", rel::ESP_SLOTS, slot.letter(), rel::UKI_FILE),
                out.join(slot.uki_artifact()),
            ));
        }
        let volume = u32::from_be_bytes(
            slot::derived_uuid(&ctx.rootfs.recipe_sha256, "esp")[..4]
                .try_into()
                .unwrap_or([0; 4]),
        );
        esp::make(
            &esp_img,
            recipe.partitions.esp.bytes(),
            volume,
            &files,
            ctx.rootfs.source_date_epoch,
            &stage.with_extension("scratch"),
        )?;
        let _ = std::fs::remove_dir_all(&stage);
        s.note(format!(
            "{} files: systemd-boot (signed), each slot's signed UKI, A preferred",
            files.len()
        ));
        Ok(())
    })?;

    // The factory (golden) image for reset level 2, when the recipe sizes its partition: an
    // update bundle of the slot artifacts alone.
    let factory_bundle = ctx.scratch("factory.bundle")?;
    let _ = std::fs::remove_file(&factory_bundle);
    if let Some(size) = recipe.partitions.factory {
        rep.step("factory image", |s| {
            bundle::write_bundle_file(&factory_bundle, &slot_json, &slot_sig, |name| {
                super::payload_path(ctx.paths, recipe, name)
            })?;
            let len = std::fs::metadata(&factory_bundle)?.len();
            if len > size.bytes() {
                bail!(
                    "the factory image is {} MiB but the recipe's factory partition holds {} MiB: raise [partitions] factory",
                    len >> 20,
                    size.bytes() >> 20
                );
            }
            s.note(format!(
                "{} MiB: the slot artifacts of {} {}, signed",
                len >> 20,
                draft.product,
                draft.version
            ));
            Ok(())
        })?;
    }

    let state_img = ctx.scratch("state.img")?;
    rep.step("device state", |s| {
        super::state::write_initial(&state_img, &slot_json, &slot_sig)?;
        s.note("both slots' records, nothing else: a fresh appliance");
        Ok(())
    })?;

    rep.step("disk", |s| {
        let layout = disk::qemu_layout(
            recipe,
            if spec.arch() == crate::recipe::Arch::Amd64 {
                aperture_gpt::Guid::LINUX_ROOT_X86_64
            } else {
                aperture_gpt::Guid::LINUX_ROOT_ARM64
            },
        );
        let path = out.join(names::DISK);
        let (f, placed) = disk::create(&path, recipe.partitions.disk.bytes(), &layout)?;
        let board = recipe.board;
        let at = |label: &str| -> Result<u64> { Ok(disk::find(&placed, label)?.offset()) };
        disk::write_at(
            &f,
            at(board.partition(Part::Esp))?,
            &esp_img,
            disk::Zeros::FollowSource,
        )?;
        disk::write_at(
            &f,
            at(board.partition(Part::State))?,
            &state_img,
            disk::Zeros::Write,
        )?;
        for slot in Slot::ALL {
            disk::write_at(
                &f,
                at(&board.slot_layout().rootfs(slot))?,
                &slot_img.path,
                disk::Zeros::Write,
            )?;
        }
        if recipe.partitions.factory.is_some() {
            disk::write_at(
                &f,
                at(board.partition(Part::Factory))?,
                &factory_bundle,
                disk::Zeros::Write,
            )?;
        }
        f.sync_all()?;
        s.note(format!(
            "{} partitions, both slots hold {}",
            placed.len(),
            names::ROOTFS
        ));
        Ok(())
    })?;
    for f in [&esp_img, &factory_bundle, &state_img] {
        let _ = std::fs::remove_file(f);
    }

    let artifacts = super::finish(ctx, &draft, &[])?;
    Ok(OutputsReport {
        slot: slot_img,
        artifacts,
        bsp: None,
    })
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<EspFile>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_files(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(EspFile::file(rel.to_string_lossy().into_owned(), &p));
        }
    }
    Ok(())
}
