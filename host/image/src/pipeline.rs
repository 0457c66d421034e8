//! The build pipeline: named steps from a recipe to a rootfs commit (and, for full builds, on
//! to slot images and signed outputs). Each step prints its name and time; a step whose inputs
//! did not change is reused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::progress::{Reporter, StepRecord};
use crate::recipe::Recipe;
use crate::rootfs::{base, generate, layer::Layer, overlay, programs, runtime, units};
use crate::store::{self, Store, TreeView};

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The workspace (for device programs and our base files).
    pub workspace: PathBuf,
    /// Recipe file.
    pub recipe: PathBuf,
    /// Output folder; default `<workspace>/out/<product>-<board>-<version>`.
    pub out: Option<PathBuf>,
    /// The build cache: the ostree build store (`repo/`) and the caches of Debian base trees,
    /// packages and scratch files (`cache/`), shared by every output folder; default
    /// [`default_cache`].
    pub cache: Option<PathBuf>,
    /// Stop after the rootfs commit.
    pub rootfs_only: bool,
    /// A release build: development keys are refused.
    pub release: bool,
    /// Let a release build use development keys anyway.
    pub insecure_dev_keys: bool,
    /// Skip the final security audit (`--insecure-skip-audit`): for testing the audit itself
    /// on images that violate the policy; never for images that ship.
    pub insecure_skip_audit: bool,
    /// Jetson Linux (L4T) BSP folder or tarball (`--bsp`): kernel, device tree and boot
    /// firmware of the Jetson boards, and the rootfs's `nvbootctrl` (from its
    /// `nvidia-l4t-tools` deb, [`crate::jetson::tools`]). Without it a Jetson build stops after
    /// the slot image and says what to download.
    pub bsp: Option<PathBuf>,
}

/// Where a build's pieces live.
#[derive(Debug, Clone, Serialize)]
pub struct Paths {
    /// Output folder.
    pub out: PathBuf,
    /// Build store (shared by every build that uses the same build cache).
    pub repo: PathBuf,
    /// Caches (Debian base trees, packages, scratch files).
    pub cache: PathBuf,
}

/// The build cache used when none is given: `$APERTURE_CACHE`, else `$XDG_CACHE_HOME/aperture`,
/// else `~/.cache/aperture`. One per user, shared by every output folder and by the test
/// suites, so a new output folder does not start from a cold Debian base.
pub fn default_cache() -> Result<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("APERTURE_CACHE") {
        return absolute(&p);
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return absolute(&p.join("aperture"));
    }
    let home = env("HOME").context(
        "no build cache folder: set APERTURE_CACHE (or HOME, for ~/.cache/aperture), or pass --cache",
    )?;
    Ok(home.join(".cache").join("aperture"))
}

/// The result of a rootfs build.
#[derive(Debug, Clone, Serialize)]
pub struct RootfsBuild {
    /// The ostree ref.
    pub ostree_ref: String,
    /// The commit checksum.
    pub commit: String,
    /// The base commit it sits on.
    pub base_commit: String,
    /// Source date used.
    pub source_date_epoch: u64,
    /// sha256 of the resolved recipe.
    pub recipe_sha256: String,
}

/// Everything a build did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// Product, board, version.
    pub name: String,
    /// Folders.
    pub paths: Paths,
    /// The rootfs commit.
    pub rootfs: RootfsBuild,
    /// The signed outputs (absent for a rootfs-only build).
    pub outputs: Option<crate::outputs::OutputsReport>,
    /// The zstd level of the bundle's payloads (`cargo xtask bundle` compresses again at it).
    pub bundle_level: i32,
    /// Step timings.
    pub steps: Vec<StepRecord>,
}

impl BuildOptions {
    /// Resolve output, store and cache folders for a recipe.
    pub fn paths(&self, recipe: &Recipe) -> Result<Paths> {
        let out = match &self.out {
            Some(o) => o.clone(),
            None => self.workspace.join("out").join(recipe.build_name()),
        };
        let out = absolute(&out)?;
        let root = match &self.cache {
            Some(c) => absolute(c)?,
            None => default_cache()?,
        };
        Ok(Paths {
            repo: root.join("repo"),
            cache: root.join("cache"),
            out,
        })
    }
}

/// The build cache's lock (`flock` on `<cache>/build.lock`), held for a whole build and
/// released when dropped; a second build with the same cache says what it waits for.
fn lock_cache(cache: &Path, rep: &Reporter) -> Result<std::os::fd::OwnedFd> {
    use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let path = cache.join("build.lock");
    let fd = open(
        &path,
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    if flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
        rep.say(&format!(
            "waiting for another build that uses the cache {} (it holds {})",
            cache.display(),
            path.display()
        ));
        flock(&fd, FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(fd)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

/// `SOURCE_DATE_EPOCH` for a build: the recipe's, else the environment's, else the last git
/// commit's (reproducible-builds.org's definition).
pub fn source_date(recipe: &Recipe, workspace: &Path) -> Result<u64> {
    if let Some(s) = recipe.source_date_epoch {
        return Ok(s);
    }
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        return s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s} is not a number of seconds"));
    }
    let out = Command::new("git")
        .current_dir(workspace)
        .args(["log", "-1", "--format=%ct"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            s.trim().parse().with_context(|| format!("git printed `{}` for the last commit's date", s.trim()))
        }
        _ => bail!(
            "no source date: the recipe has no `source_date_epoch`, SOURCE_DATE_EPOCH is not set, and {} has no git history; set one of them",
            workspace.display()
        ),
    }
}

/// Build a recipe's rootfs commit.
pub fn build_rootfs(
    opts: &BuildOptions,
    recipe: &Recipe,
    paths: &Paths,
    keys: &crate::keys::BuildKeys,
    rep: &Reporter,
) -> Result<RootfsBuild> {
    let root_key = keys.dir.join(crate::keys::ROOT_PUBLIC);
    let root_key = root_key.as_path();
    let source_date = source_date(recipe, &opts.workspace)?;
    let recipe_sha256 = recipe.hash();
    let store = rep.step("store", |s| {
        let st = Store::open_or_create(&paths.repo)?;
        s.note(paths.repo.display().to_string());
        Ok(st)
    })?;
    // A Jetson image takes NVIDIA's nvbootctrl from the BSP's nvidia-l4t-tools deb; read and
    // checked here, before the long steps, so a BSP without it fails at once. The outputs
    // step resolves the same BSP again for the kernel and firmware (a tarball is unpacked
    // into the build cache once).
    let bsp_tools = match (&opts.bsp, recipe.board.is_jetson()) {
        (Some(given), true) => Some(rep.step("bsp tools", |s| {
            let (dir, note, _) =
                crate::jetson::bsp::unpack(given, recipe.bsp.as_ref(), &paths.cache)?;
            s.line(&note);
            let bsp =
                crate::jetson::Bsp::open(&dir, crate::jetson::JetsonBoard::of(recipe.board)?)?;
            let tool = crate::jetson::tools::read(&bsp)?;
            if tool.is_stand_in() {
                rep.warn_loud(&[
                    &format!(
                        "SYNTHETIC BSP: {} in {} is the Jetson twin's stand-in script,",
                        aperture_slots::tegra::retry::NVBOOTCTRL,
                        tool.deb.display()
                    ),
                    "not NVIDIA's program: this image resets no boot retry count on a Jetson.",
                    "It is for the twin and the tests only.",
                ]);
            }
            s.note(tool.note(&bsp));
            Ok((bsp, tool))
        })?),
        _ => None,
    };
    // The Debian base (mostly downloading and unpacking, one core) and the device programs
    // (compiling, every core) do not depend on each other: on a cold cache they overlap.
    let (base_commit, progs) = std::thread::scope(|scope| {
        let progs =
            scope.spawn(|| rep.step("programs", |s| programs::build(recipe, &opts.workspace, s)));
        let base = rep.step("base", |s| {
            base::ensure(&store, recipe, &opts.workspace, &paths.cache, s)
        });
        let progs = progs
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (base, progs)
    });
    let (base_commit, progs) = (base_commit?, progs?);

    let layer_dir = paths
        .cache
        .join("tmp")
        .join(format!("layer-{}", recipe.build_name()));
    let view = TreeView::new(&store, &base_commit)?;
    rep.step("layer", |s| {
        let layer = Layer::new(&layer_dir, &view)?;
        programs::install(&layer, recipe, progs.as_deref())?;
        let mut n = 0;
        for o in &recipe.overlays {
            n += overlay::apply(o, &layer)
                .with_context(|| format!("applying overlay {}", o.display()))?;
        }
        generate::all(&layer, recipe, source_date)?;
        let gpu = match &bsp_tools {
            Some((bsp, _)) => runtime::GpuRuntime::find(&bsp.root)?,
            None => None,
        };
        if let Some(note) = runtime::install(&layer, recipe, gpu.as_ref())? {
            s.line(&note);
        }
        // After the overlays, so that its checks see everything else the image holds.
        let tools = match &bsp_tools {
            Some((bsp, tool)) => {
                let files = crate::jetson::tools::install(bsp, tool, &layer)?;
                for f in &files {
                    s.line(&format!(
                        "/{} (mode {:o}) from {}:{}",
                        f.path,
                        f.mode,
                        f.deb.display(),
                        f.member
                    ));
                }
                format!(
                    "; from the BSP ({}): {}",
                    bsp.release.as_deref().unwrap_or("release unknown"),
                    crate::jetson::tools::installed_note(&files)
                )
            }
            None if recipe.board.is_jetson() => format!(
                "; no --bsp, so no {} (it comes from the BSP's nvidia-l4t-tools deb)",
                aperture_slots::tegra::retry::NVBOOTCTRL
            ),
            None => String::new(),
        };
        // The root of trust every update is checked against.
        layer.copy_file(Path::new("etc/aperture/root.pub"), root_key, 0o644, 0, 0)?;
        // The Secure Boot db certificate the boot files are signed for (the updater checks a
        // new slot's UKI against it) and the TPM policy key's public half.
        let sb = &keys.secure_boot;
        layer.copy_file(
            Path::new(aperture_appliance::files::rel::SECURE_BOOT_DB),
            &sb.db_cert(),
            0o644,
            0,
            0,
        )?;
        layer.copy_file(
            Path::new(aperture_appliance::files::rel::TPM_POLICY_KEY),
            &sb.policy_public(),
            0o644,
            0,
            0,
        )?;
        for u in &recipe.services.enable {
            units::enable(&layer, u)?;
        }
        for u in &recipe.services.mask {
            units::mask(&layer, u)?;
        }
        // The security baseline last: its files win over overlays, and its setuid scan sees
        // everything this layer adds.
        let security = crate::security::apply(&layer, recipe)?;
        s.note(format!(
            "{} programs, {} overlay entries from {} overlays, {} units enabled, {} masked; {}{tools}",
            progs.as_ref().map_or(0, |_| recipe.components.device.len()),
            n,
            recipe.overlays.len(),
            recipe.services.enable.len(),
            recipe.services.mask.len(),
            security.note()
        ));
        Ok(())
    })?;

    let ostree_ref = recipe.ostree_ref();
    let commit = rep.step("commit", |s| {
        let mut meta = BTreeMap::new();
        meta.insert(store::META_RECIPE.to_string(), recipe_sha256.clone());
        meta.insert(store::META_SOURCE_DATE.to_string(), source_date.to_string());
        meta.insert(store::META_BASE.to_string(), base_commit.clone());
        meta.insert("version".to_string(), recipe.version.to_string());
        let subject = format!(
            "{} {} for {}",
            recipe.product,
            recipe.version,
            recipe.board.name()
        );
        let c = store.commit_layer(
            &base_commit,
            &layer_dir,
            &ostree_ref,
            &subject,
            &meta,
            source_date,
        )?;
        s.note(format!("{ostree_ref} = {c}"));
        Ok(c)
    })?;
    let _ = std::fs::remove_dir_all(&layer_dir);
    Ok(RootfsBuild {
        ostree_ref,
        commit,
        base_commit,
        source_date_epoch: source_date,
        recipe_sha256,
    })
}

/// Run a whole build.
pub fn build(opts: &BuildOptions, rep: &Reporter) -> Result<BuildReport> {
    let recipe = rep.step("recipe", |s| {
        let r = Recipe::load(&opts.recipe)?;
        s.note(format!(
            "{} {} for {} ({})",
            r.product,
            r.version,
            r.board.name(),
            &r.hash()[..12]
        ));
        Ok(r)
    })?;
    let paths = opts.paths(&recipe)?;
    // Builds that share a cache take turns: their scratch folders are named by the build,
    // and two writers of one output folder would mix their files.
    let _lock = lock_cache(&paths.cache, rep)?;
    std::fs::create_dir_all(&paths.out)
        .with_context(|| format!("creating {}", paths.out.display()))?;
    rep.set_log(&paths.out.join("build.log"))?;
    // Keys first: a release build with development keys should fail before any work, and the
    // root public key is baked into the rootfs.
    let keys = rep.step("keys", |s| {
        let k = crate::keys::for_build(
            &recipe.keys.dir,
            recipe.keys.development,
            opts.release,
            opts.insecure_dev_keys,
            rep,
        )?;
        crate::keys::secure_boot_for_build(&k, rep)?;
        s.note(format!(
            "{} (release key {})",
            k.dir.display(),
            k.release.key_id()
        ));
        Ok(k)
    })?;
    let rootfs = build_rootfs(opts, &recipe, &paths, &keys, rep)?;
    let outputs = if opts.rootfs_only {
        None
    } else {
        Some(crate::outputs::build(&crate::outputs::Ctx {
            recipe: &recipe,
            paths: &paths,
            rootfs: &rootfs,
            keys: &keys,
            workspace: &opts.workspace,
            bsp: opts.bsp.as_deref(),
            rep,
        })?)
    };
    let mut report = BuildReport {
        name: recipe.build_name(),
        paths,
        rootfs,
        outputs,
        bundle_level: recipe.outputs.bundle_level,
        steps: rep.records(),
    };
    let write_report = |report: &BuildReport| -> Result<()> {
        let mut json = serde_json::to_vec_pretty(report)?;
        json.push(b'\n');
        std::fs::write(report.paths.out.join("build-report.json"), json)?;
        Ok(())
    };
    write_report(&report)?;
    // Last: the offline audit of what was just built (the same as `cargo xtask audit DIR`,
    // which reads build-report.json), failing the build on any violation of the policy.
    rep.step("audit", |s| {
        if opts.insecure_skip_audit {
            s.reporter().warn_loud(&[
                "--insecure-skip-audit: this image was NOT checked against its security policy.",
                "Do not ship it. `cargo xtask audit DIR` audits it later.",
            ]);
            s.note("SKIPPED by --insecure-skip-audit");
            return Ok(());
        }
        let policy = crate::security::Policy::from_recipe(&recipe);
        let audit = if opts.rootfs_only {
            crate::audit::audit_rootfs_build(&report.paths.out, Some(&policy))?
        } else {
            crate::audit::audit_build(&report.paths.out, Some(&policy))?
        };
        audit.write_json(&report.paths.out)?;
        for l in audit.to_text().lines() {
            s.line(l);
        }
        s.note(audit.summary());
        audit.into_result()
    })?;
    report.steps = rep.records();
    write_report(&report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_build_with_the_same_cache_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let log = dir.path().join("second.log");
        let first = lock_cache(&cache, &Reporter::new(None).unwrap()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let (cache, log) = (cache.clone(), log.clone());
            std::thread::spawn(move || {
                let rep = Reporter::new(Some(&log)).unwrap();
                let lock = lock_cache(&cache, &rep).unwrap();
                tx.send(()).unwrap();
                drop(lock);
            })
        };
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the second build went on while the first held the cache"
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second build goes on once the first is done");
        waiter.join().unwrap();
        let said = std::fs::read_to_string(&log).unwrap();
        assert!(said.contains("waiting for another build"), "{said}");
    }
}
