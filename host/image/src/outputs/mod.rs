//! From a rootfs commit to the signed outputs of a build: the slot image, the boot files, the
//! ESP, the device state partition, `disk.img` (+ `.bmap`, `.zst`), `sbom.spdx.json`,
//! `manifest.json`, `manifest.sig` and `update.bundle`. Output names are fixed: later tools rely
//! on them.
//!
//! [`build`] runs the steps every board shares (reuse check, slot image, and the tail from the
//! bmap to the bundle in [`finish`]) around the board family's own: [`qemu`] for the qemu boards
//! (kernel and initrd on the ESP, systemd-boot) and `crate::jetson::outputs` for Jetson (boot
//! images in NVIDIA's kernel partitions, the BSP's firmware, `flash_layout.xml`).

pub mod qemu;
mod reuse;
pub mod state;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_slots::{Slot, SlotBoot};
use aperture_trust::manifest::{Artifact, ArtifactName, BootInfo, BuildInfo, Manifest, Role};
use aperture_trust::signing;
use serde::Serialize;

use crate::board::BoardSpec;
use crate::keys::{self, BuildKeys};
use crate::pipeline::{Paths, RootfsBuild};
use crate::progress::Reporter;
use crate::recipe::Recipe;
use crate::sbom;
use crate::slot::{self, SlotImage, SlotParams};
use crate::store::{Node, Store, TreeView};

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
    /// The folder of the Secure Boot certificates (`PK.crt`, `KEK.crt`, `db.crt`) the boot
    /// files are signed for: what `verify` checks them against, and what `vm run` and a
    /// Jetson's firmware enroll.
    pub const SECURE_BOOT: &str = "secure-boot";
}

/// What the outputs stage produced.
#[derive(Debug, Clone, Serialize)]
pub struct OutputsReport {
    /// The slot image.
    pub slot: SlotImage,
    /// Every file of the output folder, in manifest order.
    pub artifacts: Vec<Artifact>,
    /// The Jetson Linux BSP the outputs were made from (Jetson boards).
    pub bsp: Option<BspUsed>,
}

/// The Jetson Linux BSP a build used, for the tools that need the same tree later (`flash
/// --to jetson:...` drives its flashing scripts).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BspUsed {
    /// The `Linux_for_Tegra/` tree (in the build cache when `--bsp` was a tarball).
    pub tree: std::path::PathBuf,
    /// What `--bsp` named.
    pub given: std::path::PathBuf,
    /// The tree's own release string, when it has one.
    pub release: Option<String>,
    /// The tarball's sha256, when `--bsp` was one (checked against the recipe's pin).
    pub sha256: Option<String>,
}

/// What every outputs step works from.
pub struct Ctx<'a> {
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
    /// Progress and the build log.
    pub rep: &'a Reporter,
}

impl Ctx<'_> {
    /// The output folder.
    pub fn out(&self) -> &Path {
        &self.paths.out
    }

    /// A scratch file of this build in the cache (`<cache>/tmp/<build>-<what>`).
    pub fn scratch(&self, what: &str) -> Result<PathBuf> {
        let dir = self.paths.cache.join("tmp");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir.join(format!("{}-{what}", self.recipe.build_name())))
    }

    /// The manifest of the slot artifacts, before the disk outputs join it.
    pub fn draft(&self, artifacts: &[Artifact]) -> Result<Manifest> {
        Ok(Manifest {
            format: 1,
            product: self.recipe.product.clone(),
            board: self.recipe.board.name().to_string(),
            version: self.recipe.version.clone(),
            security_version: self.recipe.security_version,
            build: BuildInfo {
                source_date_epoch: self.rootfs.source_date_epoch,
                recipe_sha256: self.rootfs.recipe_sha256.parse()?,
                ostree_commit: Some(self.rootfs.commit.clone()),
                ostree_ref: Some(self.rootfs.ostree_ref.clone()),
            },
            // The board's kernel arguments; each slot entry adds its verity root and slot name.
            boot: Some(BootInfo {
                cmdline: BoardSpec::of(self.recipe.board).base_cmdline(),
            }),
            artifacts: artifacts.to_vec(),
        })
    }
}

/// Run the outputs stage for the recipe's board.
pub fn build(ctx: &Ctx<'_>) -> Result<OutputsReport> {
    // Every output follows from these inputs; when they match the last build's and every
    // output still hashes to what that build recorded, the outputs are reused.
    let bsp_contents = reuse::bsp_contents(ctx.bsp, ctx.recipe, &ctx.paths.cache)?;
    let fingerprint = reuse::fingerprint(ctx.rootfs, ctx.keys, ctx.bsp, bsp_contents.as_deref())?;
    let reused = ctx.rep.step("reuse check", |s| {
        let r = reuse::reusable(ctx.out(), &fingerprint)?;
        match &r {
            reuse::Reuse::Yes(_) => {
                s.reused();
                s.note("inputs unchanged and every output as recorded: reused");
            }
            reuse::Reuse::No(why) => s.note(format!("making them: {why}")),
        }
        Ok(r)
    })?;
    if let reuse::Reuse::Yes(report) = reused {
        return Ok(*report);
    }
    reuse::forget(ctx.out());
    let slot_img = slot_image(ctx)?;
    let report = if ctx.recipe.board.is_jetson() {
        crate::jetson::build_outputs(ctx, slot_img)?
    } else {
        qemu::build(ctx, slot_img)?
    };
    reuse::record(ctx.out(), &fingerprint, report.bsp.as_ref())?;
    Ok(report)
}

/// The slot image step, the same for every board (same derived UUIDs, salt and compressor).
pub fn slot_image(ctx: &Ctx<'_>) -> Result<SlotImage> {
    let h = &ctx.rootfs.recipe_sha256;
    let store = Store::open(&ctx.paths.repo)?;
    let rootfs_part = ctx.recipe.board.slot_layout().rootfs(Slot::A);
    ctx.rep.step("slot image", |s| {
        let params = SlotParams {
            commit: ctx.rootfs.commit.clone(),
            fs_uuid: aperture_trust::verity::format_uuid(slot::derived_uuid(h, "erofs")),
            salt: slot::derived_salt(h, "verity"),
            verity_uuid: slot::derived_uuid(h, "verity"),
            source_date: ctx.rootfs.source_date_epoch,
            compressor: ctx.recipe.outputs.rootfs_compression,
        };
        let img = slot::build(
            &store,
            &params,
            &ctx.paths.cache,
            &ctx.out().join(names::ROOTFS),
            s,
        )?;
        slot::check_fits(&img, ctx.recipe.partitions.rootfs.bytes(), &rootfs_part)?;
        Ok(img)
    })
}

/// The slot artifacts of `files` (name, role) in the output folder, each compressed into its
/// bundle payload; the rootfs one carries the slot image's verity parameters.
pub fn slot_payloads(
    ctx: &Ctx<'_>,
    slot_img: &SlotImage,
    files: &[(String, Role)],
) -> Result<Vec<Artifact>> {
    ctx.rep.step("payloads", |s| {
        let mut v = Vec::new();
        for (name, role) in files {
            let mut a = artifact(ctx.out(), name, *role)?;
            if *role == Role::Rootfs {
                a.verity = Some(slot_img.verity.clone());
            }
            let dest = payload_path(ctx.paths, ctx.recipe, name);
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir)?;
            }
            a.payload = Some(aperture_trust::bundle::compress_payload(
                &ctx.out().join(name),
                &dest,
                ctx.recipe.outputs.bundle_level,
            )?);
            v.push(a);
        }
        s.note(format!(
            "{} compressed for the bundle (zstd -{})",
            files
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            ctx.recipe.outputs.bundle_level
        ));
        Ok(v)
    })
}

/// The tail every board shares once `disk.img` is written: its bmap and zstd copy, the SBOM,
/// the signed manifest of `artifacts` plus `extra` outputs and the disk outputs, and the update
/// bundle. Returns every artifact in manifest order.
pub fn finish(ctx: &Ctx<'_>, draft: &Manifest, extra: &[(&str, Role)]) -> Result<Vec<Artifact>> {
    let out = ctx.out();
    let rep = ctx.rep;
    rep.step("bmap", |s| {
        let bmap = aperture_flash::bmap::Bmap::from_sparse_file(out.join(names::DISK), 4096)?;
        std::fs::write(out.join(names::BMAP), bmap.to_xml())?;
        s.note(format!(
            "{} MiB mapped of {} MiB",
            (bmap.mapped_blocks_count * u64::from(bmap.block_size)) >> 20,
            bmap.image_size >> 20
        ));
        Ok(())
    })?;
    let compressed = ctx.recipe.outputs.compressed_disk;
    rep.step("compress", |s| {
        if !compressed {
            // A copy left by an earlier build of this folder is not this build's output.
            match std::fs::remove_file(out.join(names::DISK_ZST)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| {
                        format!("removing the old {}", out.join(names::DISK_ZST).display())
                    })
                }
                _ => {}
            }
            s.note(format!(
                "no {}: the recipe's [outputs] compressed_disk is false",
                names::DISK_ZST
            ));
            return Ok(());
        }
        compress(&out.join(names::DISK), &out.join(names::DISK_ZST))?;
        s.note(format!(
            "{} MiB",
            std::fs::metadata(out.join(names::DISK_ZST))?.len() >> 20
        ));
        Ok(())
    })?;
    rep.step("sbom", |s| {
        let store = Store::open(&ctx.paths.repo)?;
        let view = TreeView::new(&store, &ctx.rootfs.commit)?;
        let n = sbom::generate(
            &view,
            ctx.recipe,
            ctx.workspace,
            ctx.rootfs.source_date_epoch,
            &out.join(names::SBOM),
        )?;
        s.note(format!("{n} packages"));
        Ok(())
    })?;
    let (artifacts, json, sig) = rep.step("manifest", |s| {
        let mut artifacts = draft.artifacts.clone();
        let disk = [
            (names::DISK, Role::Disk),
            (names::BMAP, Role::Bmap),
            (names::DISK_ZST, Role::DiskZst),
            (names::SBOM, Role::Sbom),
        ];
        for (name, role) in extra.iter().chain(disk.iter()) {
            if *role == Role::DiskZst && !compressed {
                continue;
            }
            artifacts.push(artifact(out, name, *role)?);
        }
        let m = Manifest {
            artifacts: artifacts.clone(),
            ..draft.clone()
        };
        let (json, sig) = sign_outputs(out, &m, ctx.keys)?;
        s.note(format!(
            "{} artifacts, signed by release key {}",
            m.artifacts.len(),
            ctx.keys.release.key_id()
        ));
        Ok((artifacts, json, sig))
    })?;
    rep.step("bundle", |s| {
        let size = write_release_bundle(ctx.paths, ctx.recipe, &json, &sig)?;
        s.note(format!("{} MiB", size >> 20));
        Ok(())
    })?;
    Ok(artifacts)
}

/// zstd level 3 of `src` into `dest` (through a temporary name).
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
    let certs = out.join(names::SECURE_BOOT);
    std::fs::create_dir_all(&certs)?;
    for name in crate::sbkeys::NAMES {
        let to = certs.join(format!("{name}.crt"));
        std::fs::copy(build_keys.secure_boot.cert(name), &to)
            .with_context(|| format!("copying the Secure Boot certificate to {}", to.display()))?;
    }
    // The public half of the key that signed each UKI's disk-key policy, for `verify`.
    let to = certs.join(crate::sbkeys::POLICY_PUBLIC_FILE);
    std::fs::copy(build_keys.secure_boot.policy_public(), &to)
        .with_context(|| format!("copying the TPM policy key to {}", to.display()))?;
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

/// An artifact entry for the file `name` in `dir`: size and sha256.
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

/// Copy the file at `path` of the rootfs commit to `dest`.
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

/// A slot's boot entry for a manifest: the manifest's kernel arguments plus the verity root
/// (on qemu boards, the slot's signed UKI, which carries them). The updater builds the same
/// entry from the same manifest on the appliance.
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
    if layout == aperture_slots::SlotLayout::Esp {
        // A signed UKI per slot carries the command line.
        return Ok(aperture_slots::cmdline::uki_boot(
            &manifest.product,
            &manifest.version.to_string(),
            slot,
        ));
    }
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
