//! The twin's build: a Jetson recipe built with a "twin BSP", which is the synthetic test BSP
//! (`host/image/fixtures/synthetic-bsp`, NVIDIA's file names with placeholder contents) whose
//! `kernel/Image` is replaced by Debian's arm64 kernel taken from the build's own rootfs commit.
//! The initrd already comes from the rootfs, so the boot images the build writes into
//! `A_kernel`/`B_kernel` hold a kernel, initrd and command line that boot on QEMU's `virt`
//! machine, in exactly the layout a real BSP's would.
//!
//! So a twin build is two builds of one recipe into one output folder: the rootfs commit
//! first (`rootfs_only`, with the synthetic BSP), then, with the twin BSP made from that commit,
//! the full build, whose rootfs is the same commit. Both BSPs carry the same
//! `nvidia-l4t-tools` deb, whose `nvbootctrl` is the twin's stand-in script
//! (`crate::jetson::tools` installs it as it installs NVIDIA's on a real build).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::disk::is_arm64_image;
use crate::jetson::{Bsp, JetsonBoard};
use crate::pipeline::{self, BuildOptions, BuildReport, Paths};
use crate::progress::Reporter;
use crate::recipe::Recipe;
use crate::store::{Store, TreeView};

/// The file a twin BSP carries at its `Linux_for_Tegra/` root, saying what it is.
pub const TWIN_MARKER: &str = "TWIN-BSP.txt";

/// The synthetic BSP fixture of the workspace.
pub fn synthetic_bsp(workspace: &Path) -> PathBuf {
    workspace.join("host/image/fixtures/synthetic-bsp")
}

/// Debian's arm64 kernel from the rootfs `commit` (its `/vmlinuz`), as the uncompressed
/// `Image` (an EFI application) that a Jetson kernel partition holds.
fn debian_kernel(paths: &Paths, commit: &str) -> Result<Vec<u8>> {
    let store = Store::open(&paths.repo)?;
    let view = TreeView::new(&store, commit)?;
    let tmp = paths.cache.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let packed = tmp.join(format!("twin-vmlinuz-{}", &commit[..commit.len().min(16)]));
    crate::outputs::read_commit_file(&view, "vmlinuz", &packed).context(
        "the twin boots the rootfs's Debian kernel (recipes/arm64.toml installs \
         linux-image-cloud-arm64)",
    )?;
    let bytes = std::fs::read(&packed)?;
    // Debian's arm64 vmlinuz is a gzip of the Image.
    let kernel = if bytes.starts_with(&[0x1f, 0x8b]) {
        aperture_sys::Cmd::new("gzip")
            .arg("-dc")
            .arg("--")
            .arg(&packed)
            .run()
            .context("decompressing the rootfs's /vmlinuz")?
            .stdout
    } else {
        bytes
    };
    let _ = std::fs::remove_file(&packed);
    if !is_arm64_image(&kernel) {
        bail!("the rootfs's /vmlinuz is not an arm64 Linux Image (EFI stub); the twin needs one");
    }
    Ok(kernel)
}

/// The twin BSP for `board` from the rootfs `commit`, made once per kernel and fixture into
/// `<cache>/twin-bsp/<key>/` and reused. Returns the folder to pass as the BSP.
pub fn twin_bsp(
    workspace: &Path,
    paths: &Paths,
    board: &JetsonBoard,
    commit: &str,
) -> Result<PathBuf> {
    let kernel = debian_kernel(paths, commit)?;
    let fixture = synthetic_bsp(workspace);
    let fingerprint = Bsp::open(&fixture, JetsonBoard::of(board.board)?)?
        .fingerprint()
        .with_context(|| format!("reading the synthetic BSP {}", fixture.display()))?;
    let mut h = Sha256::new();
    h.update(&kernel);
    h.update(fingerprint.as_bytes());
    let key = hex::encode(&h.finalize()[..12]);
    let root = paths.cache.join("twin-bsp");
    let dest = root.join(&key);
    if dest.join(".complete").is_file() {
        return Ok(dest);
    }
    let tmp = root.join(format!("{key}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    aperture_sys::Cmd::new("cp")
        .arg("-a")
        .arg(fixture.join("Linux_for_Tegra"))
        .arg(&tmp)
        .run()
        .context("copying the synthetic BSP")?;
    let l4t = tmp.join("Linux_for_Tegra");
    std::fs::write(l4t.join(crate::jetson::nvidia::files::KERNEL), &kernel)?;
    std::fs::write(
        l4t.join(TWIN_MARKER),
        "TWIN BSP for the Jetson twin (host/image/src/twin): the synthetic BSP's placeholder\n\
         files, with kernel/Image replaced by Debian's arm64 kernel from the rootfs, so that\n\
         the boot images boot on QEMU's virt machine. Not NVIDIA software; never flash it.\n",
    )?;
    std::fs::write(tmp.join(".complete"), &key)?;
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// Build `opts.recipe` (a Jetson recipe) for the twin: its rootfs commit, the twin BSP from
/// it, then the full build with that BSP into the same output folder. `opts.bsp` is ignored.
pub fn build(opts: &BuildOptions, rep: &Reporter) -> Result<BuildReport> {
    let recipe = Recipe::load(&opts.recipe)?;
    let board = JetsonBoard::of(recipe.board)?;
    // The synthetic BSP already, for its nvidia-l4t-tools deb (the twin BSP's is the same
    // file): the full build's rootfs then comes out as this very commit.
    let first = BuildOptions {
        rootfs_only: true,
        bsp: Some(synthetic_bsp(&opts.workspace)),
        ..opts.clone()
    };
    let rootfs = pipeline::build(&first, rep)?;
    let bsp = rep.step("twin bsp", |s| {
        let dir = twin_bsp(&opts.workspace, &rootfs.paths, board, &rootfs.rootfs.commit)?;
        s.note(format!(
            "{}: the synthetic BSP with Debian's kernel from commit {}",
            dir.display(),
            &rootfs.rootfs.commit[..12.min(rootfs.rootfs.commit.len())]
        ));
        Ok(dir)
    })?;
    let full = BuildOptions {
        rootfs_only: false,
        bsp: Some(bsp),
        ..opts.clone()
    };
    pipeline::build(&full, rep)
}
