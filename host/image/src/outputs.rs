//! From a rootfs commit to the signed outputs of a build: the slot image, the slot's kernel and
//! initrd, the ESP, `disk.img` (+ `.bmap`, `.zst`), `sbom.spdx.json`, `manifest.json`,
//! `manifest.sig` and `update.bundle`. Output names are fixed: later tools rely on them.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_slots::{systemd_boot, Slot, SlotBoot};
use aperture_trust::bundle;
use aperture_trust::manifest::{
    Artifact, ArtifactName, BootInfo, BuildInfo, Manifest, Payload, Role,
};
use aperture_trust::signing;
use serde::Serialize;

use crate::board::BoardSpec;
use crate::esp::{self, EspFile};
use crate::keys::BuildKeys;
use crate::pipeline::{Paths, RootfsBuild};
use crate::progress::Reporter;
use crate::recipe::Recipe;
use crate::slot::{self, SlotImage, SlotParams};
use crate::store::{Node, Store, TreeView};
use crate::{disk, keys, sbom};

/// Fixed output names.
pub mod names {
    /// Slot rootfs image (erofs + verity).
    pub const ROOTFS: &str = "rootfs.img";
    /// Slot kernel.
    pub const KERNEL: &str = "vmlinuz";
    /// Slot initrd.
    pub const INITRD: &str = "initrd.img";
    /// Sparse disk image.
    pub const DISK: &str = "disk.img";
    /// bmap of the disk image.
    pub const BMAP: &str = "disk.img.bmap";
    /// Compressed disk image.
    pub const DISK_ZST: &str = "disk.img.zst";
    /// SBOM.
    pub const SBOM: &str = "sbom.spdx.json";
    /// Manifest.
    pub const MANIFEST: &str = "manifest.json";
    /// Detached signature.
    pub const SIGNATURE: &str = "manifest.sig";
    /// Update bundle.
    pub const BUNDLE: &str = "update.bundle";
    /// The root public key the image trusts (copied for `verify`).
    pub const ROOT_PUB: &str = "root.pub";
}

/// What the outputs stage produced.
#[derive(Debug, Clone, Serialize)]
pub struct OutputsReport {
    /// The slot image.
    pub slot: SlotImage,
    /// Every file of the output folder, in manifest order.
    pub artifacts: Vec<Artifact>,
}

/// Where a build keeps a slot artifact's compressed payload until the bundles are written.
pub(crate) fn payload_path(paths: &Paths, recipe: &Recipe, name: &str) -> PathBuf {
    paths
        .cache
        .join("tmp")
        .join(format!("{}-{name}.zst", recipe.build_name()))
}

/// Sign `m` with the build's release key, write `manifest.json`, `manifest.sig` and `root.pub`
/// into `out`, and return the manifest and signature bytes.
pub(crate) fn sign_outputs(
    out: &Path,
    m: &Manifest,
    build_keys: &BuildKeys,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let (json, sig) = signing::sign_manifest(m, &build_keys.release, &build_keys.keyring)?;
    std::fs::write(out.join(names::MANIFEST), &json)?;
    std::fs::write(out.join(names::SIGNATURE), &sig)?;
    std::fs::copy(
        build_keys.dir.join(keys::ROOT_PUBLIC),
        out.join(names::ROOT_PUB),
    )?;
    Ok((json, sig))
}

/// The update bundle of a signed manifest from the build's payloads, written under a
/// temporary name and renamed into `out`; the payloads are removed afterwards.
pub(crate) fn write_release_bundle(
    paths: &Paths,
    recipe: &Recipe,
    json: &[u8],
    sig: &[u8],
) -> Result<u64> {
    let out = &paths.out;
    let tmp = out.join(format!("{}.tmp", names::BUNDLE));
    crate::bundle::write_bundle_file(&tmp, json, sig, |name| payload_path(paths, recipe, name))?;
    std::fs::rename(&tmp, out.join(names::BUNDLE))?;
    for a in Manifest::from_json_unverified(json)?.payload_artifacts() {
        let _ = std::fs::remove_file(payload_path(paths, recipe, a.name.as_str()));
    }
    Ok(std::fs::metadata(out.join(names::BUNDLE))?.len())
}

pub(crate) fn artifact(dir: &Path, name: &str, role: Role) -> Result<Artifact> {
    let path = dir.join(name);
    let (sha256, size) = aperture_trust::digest::sha256_file(&path)
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok(Artifact {
        name: ArtifactName::new(name)?,
        role,
        size,
        sha256,
        verity: None,
        payload: None,
    })
}

pub(crate) fn read_commit_file(view: &TreeView<'_>, path: &str, dest: &Path) -> Result<()> {
    match view.lookup(Path::new(path), true)? {
        Some(f) => match f.node {
            Node::File(ck) => {
                let data = view.store().read_file(&ck, 1 << 30)?;
                std::fs::write(dest, data).with_context(|| format!("writing {}", dest.display()))
            }
            Node::Dir { .. } => bail!("/{path} is a directory in the rootfs"),
        },
        None => bail!("the rootfs has no /{path}: add the package that provides it to the recipe"),
    }
}
/// A slot's boot entry for a manifest: the manifest's kernel arguments plus the verity root.
/// The updater builds the same entry from the same manifest on the appliance.
pub fn slot_boot(manifest: &Manifest, slot: Slot) -> Result<SlotBoot> {
    let rootfs = manifest
        .artifacts
        .iter()
        .find(|a| a.role == Role::Rootfs)
        .context("the manifest has no rootfs artifact")?;
    let verity = rootfs
        .verity
        .as_ref()
        .context("the rootfs artifact has no verity parameters")?;
    let base = manifest
        .boot
        .as_ref()
        .map(|b| b.cmdline.as_str())
        .unwrap_or("");
    let layout = manifest
        .board
        .parse::<aperture_appliance::Board>()?
        .slot_layout();
    Ok(aperture_slots::cmdline::slot_boot(
        &manifest.product,
        &manifest.version.to_string(),
        base,
        layout,
        slot,
        verity.root_hash.as_str(),
        verity.hash_offset,
    ))
}

/// Run the outputs stage.
pub fn build(
    recipe: &Recipe,
    paths: &Paths,
    rootfs: &RootfsBuild,
    build_keys: &BuildKeys,
    workspace: &Path,
    rep: &Reporter,
) -> Result<OutputsReport> {
    let spec = BoardSpec::of(recipe.board);
    let out = &paths.out;
    let store = Store::open(&paths.repo)?;
    let view = TreeView::new(&store, &rootfs.commit)?;
    let h = &rootfs.recipe_sha256;
    let sd = rootfs.source_date_epoch;

    // Every output follows from these inputs; when they match the last build's and its files
    // are all there, the outputs are reused (`verify` re-hashes them if in doubt).
    let fingerprint = fingerprint(rootfs, build_keys)?;
    let reuse = rep.step("reuse check", |s| {
        let r = reusable(out, &fingerprint)?;
        if r.is_some() {
            s.reused();
            s.note("inputs unchanged: slot image, ESP, disk, bmap, zst, SBOM, manifest and bundle reused");
        } else {
            s.note("inputs changed or outputs missing: making them");
        }
        Ok(r)
    })?;
    if let Some(report) = reuse {
        return Ok(report);
    }
    let _ = std::fs::remove_file(out.join(FINGERPRINT));

    let slot_img = rep.step("slot image", |s| {
        let params = SlotParams {
            commit: rootfs.commit.clone(),
            fs_uuid: aperture_trust::verity::format_uuid(slot::derived_uuid(h, "erofs")),
            salt: slot::derived_salt(h, "verity"),
            verity_uuid: slot::derived_uuid(h, "verity"),
            source_date: sd,
            compressor: "lz4".into(),
        };
        let img = slot::build(&store, &params, &paths.cache, &out.join(names::ROOTFS), s)?;
        slot::check_fits(&img, recipe.partitions.rootfs.bytes(), "rootfs_a")?;
        Ok(img)
    })?;

    if !spec.kernel_from_rootfs {
        bail!(
            "{} takes its kernel, device trees and boot firmware from a Jetson Linux BSP, which this build does not have yet; the rootfs commit and {} are ready in {}",
            recipe.board.name(),
            names::ROOTFS,
            out.display()
        );
    }
    rep.step("kernel", |s| {
        read_commit_file(&view, "vmlinuz", &out.join(names::KERNEL))?;
        read_commit_file(&view, "initrd.img", &out.join(names::INITRD))?;
        s.note(format!(
            "{} and {} from the rootfs",
            names::KERNEL,
            names::INITRD
        ));
        Ok(())
    })?;

    // Slot artifacts first: their payloads go into the bundle, and the ESP's entries need the
    // verity root from the rootfs artifact.
    let mut artifacts = rep.step("payloads", |s| {
        let mut v = Vec::new();
        for (name, role) in [
            (names::ROOTFS, Role::Rootfs),
            (names::KERNEL, Role::Kernel),
            (names::INITRD, Role::Initrd),
        ] {
            let mut a = artifact(out, name, role)?;
            if role == Role::Rootfs {
                a.verity = Some(slot_img.verity.clone());
            }
            let payload_path = payload_path(paths, recipe, name);
            std::fs::create_dir_all(payload_path.parent().expect("has parent"))?;
            let p: Payload = bundle::compress_payload(&out.join(name), &payload_path, 3)?;
            a.payload = Some(p);
            v.push(a);
        }
        s.note("rootfs, kernel, initrd compressed for the bundle");
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
            recipe_sha256: h.parse()?,
            ostree_commit: Some(rootfs.commit.clone()),
            ostree_ref: Some(rootfs.ostree_ref.clone()),
        },
        // The board's kernel arguments; each slot entry adds its verity root and slot name.
        boot: Some(BootInfo {
            cmdline: spec.base_cmdline(),
        }),
        artifacts: artifacts.clone(),
    };

    let esp_img = paths
        .cache
        .join("tmp")
        .join(format!("{}-esp.img", recipe.build_name()));
    rep.step("esp", |s| {
        let stage = paths
            .cache
            .join("tmp")
            .join(format!("{}-esp-stage", recipe.build_name()));
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage)?;
        let a = slot_boot(&draft, Slot::A)?;
        let b = slot_boot(&draft, Slot::B)?;
        systemd_boot::write_initial_esp(&stage, &a, &b)?;
        let mut files = Vec::new();
        collect_files(&stage, &stage, &mut files)?;
        let sdboot = paths
            .cache
            .join("tmp")
            .join(format!("{}-systemd-boot.efi", recipe.build_name()));
        read_commit_file(&view, &spec.systemd_boot_efi(), &sdboot)?;
        files.push(EspFile::file(spec.fallback_efi(), &sdboot));
        files.push(EspFile::file(
            format!("EFI/systemd/systemd-boot{}.efi", spec.efi_arch),
            &sdboot,
        ));
        // What each slot holds, for re-verification by reset and for status.
        let record = aperture_trust::record::SlotRecord::from_manifest(&draft)?.to_json();
        for slot in ["a", "b"] {
            files.push(EspFile::bytes(
                format!("aperture/{slot}/slot.json"),
                record.clone(),
            ));
            files.push(EspFile::file(
                format!("aperture/{slot}/vmlinuz"),
                out.join(names::KERNEL),
            ));
            files.push(EspFile::file(
                format!("aperture/{slot}/initrd.img"),
                out.join(names::INITRD),
            ));
        }
        let volume = u32::from_be_bytes(
            slot::derived_uuid(h, "esp")[..4]
                .try_into()
                .expect("4 bytes"),
        );
        esp::make(
            &esp_img,
            recipe.partitions.esp.bytes(),
            volume,
            &files,
            sd,
            &stage.with_extension("scratch"),
        )?;
        let _ = std::fs::remove_dir_all(&stage);
        s.note(format!(
            "{} files, systemd-boot with slots A and B, A preferred",
            files.len()
        ));
        Ok(())
    })?;

    // The factory (golden) image for reset level 2, when the board's layout has the partition:
    // an update bundle of the slot artifacts alone, signed like the release's. It cannot be
    // the release's update.bundle: that one's manifest covers disk.img, which holds this.
    let factory_bundle = paths
        .cache
        .join("tmp")
        .join(format!("{}-factory.bundle", recipe.build_name()));
    let _ = std::fs::remove_file(&factory_bundle);
    if let Some(size) = recipe.partitions.factory {
        rep.step("factory image", |s| {
            let (json, sig) =
                signing::sign_manifest(&draft, &build_keys.release, &build_keys.keyring)?;
            crate::bundle::write_bundle_file(&factory_bundle, &json, &sig, |name| {
                payload_path(paths, recipe, name)
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
        disk::write_at(
            &f,
            disk::find(&placed, disk::names::ESP)?.offset(),
            &esp_img,
            disk::Zeros::FollowSource,
        )?;
        for p in [disk::names::ROOTFS_A, disk::names::ROOTFS_B] {
            disk::write_at(
                &f,
                disk::find(&placed, p)?.offset(),
                &slot_img.path,
                disk::Zeros::Write,
            )?;
        }
        if recipe.partitions.factory.is_some() {
            disk::write_at(
                &f,
                disk::find(&placed, disk::names::FACTORY)?.offset(),
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
    let _ = std::fs::remove_file(&esp_img);
    let _ = std::fs::remove_file(&factory_bundle);

    rep.step("bmap", |s| {
        let bmap = aperture_flash::bmap::Bmap::from_sparse_file(out.join(names::DISK), 4096)?;
        std::fs::write(out.join(names::BMAP), bmap.to_xml())?;
        s.note(format!(
            "{} MiB mapped of {} MiB",
            (bmap.mapped_blocks_count * bmap.block_size as u64) >> 20,
            bmap.image_size >> 20
        ));
        Ok(())
    })?;

    rep.step("compress", |s| {
        let src = File::open(out.join(names::DISK))?;
        let tmp = out.join(format!("{}.tmp", names::DISK_ZST));
        let dst = BufWriter::new(File::create(&tmp)?);
        let mut enc = zstd::stream::Encoder::new(dst, 3)?;
        // A fixed worker count keeps the output identical on machines with more cores.
        enc.multithread(2)?;
        std::io::copy(&mut BufReader::with_capacity(1 << 20, src), &mut enc)?;
        enc.finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        std::fs::rename(&tmp, out.join(names::DISK_ZST))?;
        s.note(format!(
            "{} MiB",
            std::fs::metadata(out.join(names::DISK_ZST))?.len() >> 20
        ));
        Ok(())
    })?;

    rep.step("sbom", |s| {
        let n = sbom::generate(&view, recipe, workspace, sd, &out.join(names::SBOM))?;
        s.note(format!("{n} packages"));
        Ok(())
    })?;

    let manifest = rep.step("manifest", |s| {
        for (name, role) in [
            (names::DISK, Role::Disk),
            (names::BMAP, Role::Bmap),
            (names::DISK_ZST, Role::DiskZst),
            (names::SBOM, Role::Sbom),
        ] {
            artifacts.push(artifact(out, name, role)?);
        }
        let m = Manifest {
            artifacts: artifacts.clone(),
            ..draft.clone()
        };
        let (json, sig) = sign_outputs(out, &m, build_keys)?;
        s.note(format!(
            "{} artifacts, signed by release key {}",
            m.artifacts.len(),
            build_keys.release.key_id()
        ));
        Ok((json, sig))
    })?;

    rep.step("bundle", |s| {
        let size = write_release_bundle(paths, recipe, &manifest.0, &manifest.1)?;
        s.note(format!("{} MiB", size >> 20));
        Ok(())
    })?;

    std::fs::write(out.join(FINGERPRINT), &fingerprint)?;
    Ok(OutputsReport {
        slot: slot_img,
        artifacts,
    })
}

/// Where the inputs' fingerprint of the last complete outputs stage is kept.
const FINGERPRINT: &str = ".outputs-fingerprint";

/// Bump when the outputs stage changes what it makes from the same inputs.
const OUTPUTS_FORMAT: u32 = 3;

fn fingerprint(rootfs: &RootfsBuild, keys: &BuildKeys) -> Result<String> {
    use sha2::Digest;
    let keyring = serde_json::to_vec(&keys.keyring)?;
    let doc = serde_json::json!({
        "format": OUTPUTS_FORMAT,
        "aperture": env!("CARGO_PKG_VERSION"),
        "commit": rootfs.commit,
        "recipe": rootfs.recipe_sha256,
        "source_date": rootfs.source_date_epoch,
        "root": keys.root.key_id().to_string(),
        "release": keys.release.key_id().to_string(),
        "keyring": hex::encode(sha2::Sha256::digest(&keyring)),
    });
    Ok(hex::encode(sha2::Sha256::digest(
        doc.to_string().as_bytes(),
    )))
}

fn reusable(out: &Path, fingerprint: &str) -> Result<Option<OutputsReport>> {
    let Ok(last) = std::fs::read_to_string(out.join(FINGERPRINT)) else {
        return Ok(None);
    };
    if last.trim() != fingerprint {
        return Ok(None);
    }
    let Ok(json) = std::fs::read(out.join(names::MANIFEST)) else {
        return Ok(None);
    };
    let m = Manifest::from_json_unverified(&json)?;
    for a in &m.artifacts {
        match std::fs::metadata(out.join(a.name.as_str())) {
            Ok(md) if md.len() == a.size => {}
            _ => return Ok(None),
        }
    }
    for f in [names::SIGNATURE, names::BUNDLE, names::ROOT_PUB] {
        if !out.join(f).exists() {
            return Ok(None);
        }
    }
    let rootfs = m
        .artifacts
        .iter()
        .find(|a| a.role == Role::Rootfs)
        .context("manifest without rootfs")?;
    let verity = rootfs.verity.clone().context("rootfs without verity")?;
    let slot = SlotImage {
        path: out.join(names::ROOTFS),
        data_size: verity.hash_offset,
        size: rootfs.size,
        sha256: rootfs.sha256.to_string(),
        verity,
    };
    Ok(Some(OutputsReport {
        slot,
        artifacts: m.artifacts.clone(),
    }))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<EspFile>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_files(root, &p, out)?;
        } else {
            let rel = p
                .strip_prefix(root)
                .expect("walked from root")
                .to_string_lossy()
                .into_owned();
            out.push(EspFile::file(rel, p));
        }
    }
    Ok(())
}
