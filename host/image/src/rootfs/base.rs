//! The Debian base: mmdebstrap into a directory (no loop mounts), committed once to the build
//! store under a key made of everything that shapes it, and reused while that key is unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use aperture_sys::Cmd;
use sha2::{Digest, Sha256};

use crate::progress::Step;
use crate::recipe::Recipe;
use crate::store::Store;

/// Fixed source date of every base tree. The base must not change when only our layer's source
/// date does (every git commit moves that); this date is older than any build's, so it still
/// clamps, and a base is reusable across builds.
pub const BASE_SOURCE_DATE: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z

/// Version of the way we assemble a base; bump it to invalidate every cached base.
const BASE_FORMAT: u32 = 2;

/// Documentation, manuals and translations are not shipped on an appliance (copyright files
/// are: the SBOM reads licenses from them). These become dpkg path filters inside mmdebstrap.
const DPKG_FILTERS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/lintian/*",
];

/// Files of ours that go into the base before packages configure (initramfs integration), from
/// `image/base/` in the workspace. They are part of the base key.
fn base_files(workspace: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let root = workspace.join("host/image/base");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(&root)
                    .expect("walked from root")
                    .to_path_buf();
                out.push((p, rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

fn mmdebstrap_version() -> Result<String> {
    Ok(Cmd::new("mmdebstrap")
        .arg("--version")
        .text()?
        .trim()
        .to_string())
}

/// The cache key of a recipe's base: suite, mirror, architecture, package list, tool version,
/// our base files and the format version.
pub fn base_key(recipe: &Recipe, workspace: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let files = base_files(workspace)?;
    let mut file_hashes = BTreeMap::new();
    for (abs, rel) in &files {
        let data = std::fs::read(abs)?;
        file_hashes.insert(
            rel.to_string_lossy().into_owned(),
            hex::encode(Sha256::digest(&data)),
        );
    }
    let doc = serde_json::json!({
        "format": BASE_FORMAT,
        "suite": recipe.base.suite,
        "mirror": recipe.base.mirror,
        "architecture": recipe.base.architecture.debian(),
        "packages": recipe.all_packages(),
        "mmdebstrap": mmdebstrap_version()?,
        "dpkg_filters": DPKG_FILTERS,
        "files": file_hashes,
        "source_date": BASE_SOURCE_DATE,
    });
    h.update(doc.to_string().as_bytes());
    Ok(hex::encode(h.finalize()))
}

/// The ref a base lives under.
pub fn base_ref(recipe: &Recipe, key: &str) -> String {
    format!(
        "aperture-base/{}/{}",
        recipe.base.architecture.debian(),
        &key[..16]
    )
}

/// Make sure the recipe's base is in the store; returns its commit.
pub fn ensure(
    store: &Store,
    recipe: &Recipe,
    workspace: &Path,
    cache: &Path,
    step: &Step<'_>,
) -> Result<String> {
    let key = base_key(recipe, workspace)?;
    let refname = base_ref(recipe, &key);
    if let Some(commit) = store.resolve(&refname)? {
        step.reused();
        step.note(format!("{refname} ({})", &commit[..12]));
        return Ok(commit);
    }
    let tmp = cache.join("tmp").join(format!("base-{}", &key[..16]));
    if tmp.exists() {
        // Left over from an interrupted build: never trust a partial tree. An interrupted
        // mmdebstrap can leave /proc, /sys and /dev mounts inside it: unmount those first, so
        // the removal never descends into them.
        unmount_below(&tmp)?;
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    std::fs::create_dir_all(tmp.parent().expect("has parent"))?;
    let debs = cache.join("debs").join(recipe.base.architecture.debian());
    std::fs::create_dir_all(&debs)?;

    let result = (|| {
        mmdebstrap(recipe, workspace, &tmp, &debs, step)?;
        clean(&tmp)?;
        let mut meta = BTreeMap::new();
        meta.insert("aperture.base-key".to_string(), key.clone());
        meta.insert(
            "aperture.packages".to_string(),
            recipe.all_packages().join(" "),
        );
        let subject = format!(
            "Debian {} {} base",
            recipe.base.suite,
            recipe.base.architecture.debian()
        );
        step.line("committing the base tree to the build store");
        store.commit_tree(&tmp, &refname, &subject, &meta, BASE_SOURCE_DATE)
    })();
    if unmount_below(&tmp).is_ok() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let commit = result?;
    step.note(format!("{refname} ({})", &commit[..12]));
    Ok(commit)
}

fn mmdebstrap(
    recipe: &Recipe,
    workspace: &Path,
    target: &Path,
    debs: &Path,
    step: &Step<'_>,
) -> Result<()> {
    let mut c = Cmd::new("mmdebstrap")
        .env("SOURCE_DATE_EPOCH", BASE_SOURCE_DATE.to_string())
        .env("LC_ALL", "C.UTF-8")
        .arg("--mode=root")
        .arg("--variant=minbase")
        .arg("--format=directory")
        .arg(format!(
            "--architectures={}",
            recipe.base.architecture.debian()
        ))
        .arg(format!("--include={}", recipe.all_packages().join(",")));
    c = c.args(DPKG_FILTERS.iter().map(|f| format!("--dpkgopt={f}")));
    // Keep downloaded packages between builds (mmdebstrap's documented cache recipe).
    c = c
        .arg("--skip=download/empty")
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in '{}' /var/cache/apt/archives/",
            debs.display()
        ));
    // Our initramfs integration goes in before packages configure, so the kernel's own
    // initramfs trigger already includes it.
    for (abs, rel) in base_files(workspace)? {
        let dest = Path::new("/").join(&rel);
        let dir = dest.parent().expect("file has a parent");
        c = c
            .arg(format!("--setup-hook=mkdir -p \"$1\"{}", dir.display()))
            .arg(format!(
                "--setup-hook=upload '{}' '{}'",
                abs.display(),
                dest.display()
            ));
        if rel.starts_with("etc/initramfs-tools/hooks")
            || rel.starts_with("etc/initramfs-tools/scripts")
        {
            c = c.arg(format!("--setup-hook=chmod 0755 \"$1\"{}", dest.display()));
        }
    }
    c = c.arg(format!(
        "--customize-hook=sync-out /var/cache/apt/archives '{}'",
        debs.display()
    ));
    c = c.arg("--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb");
    // If the kernel's initramfs was generated before veritysetup was unpacked, generate it again.
    c = c.arg(
        "--customize-hook=for i in \"$1\"/boot/initrd.img-*; do [ -e \"$i\" ] || continue; \
         if ! chroot \"$1\" lsinitramfs \"${i#$1}\" | grep -q 'sbin/veritysetup$'; then \
         chroot \"$1\" update-initramfs -u -k all; fi; done",
    );
    c = c
        .arg(&recipe.base.suite)
        .arg(target)
        .arg(&recipe.base.mirror);
    step.line(&format!(
        "mmdebstrap {} {} ({} packages)",
        recipe.base.suite,
        recipe.base.architecture.debian(),
        recipe.all_packages().len()
    ));
    c.stream(|l| step.line(l))
        .context("building the Debian base with mmdebstrap")
}

/// Remove what must not be in a commit: device nodes (the running system has devtmpfs), and
/// the contents of runtime-only folders.
/// Mount points strictly below `dir`, deepest first, from a mountinfo table.
fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount (lazily) everything mounted below `dir`.
fn unmount_below(dir: &Path) -> Result<()> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(());
    };
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for m in mounts_below(&info, &dir) {
        let st = Command::new("umount")
            .arg("--lazy")
            .arg(&m)
            .status()
            .with_context(|| format!("running umount for {}", m.display()))?;
        if !st.success() {
            anyhow::bail!(
                "{} is still mounted inside the stale build tree {}; unmount it (umount -l) and \
                 build again",
                m.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

fn clean(root: &Path) -> Result<()> {
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var/tmp",
        "var/cache/apt/archives/partial",
    ] {
        let p = root.join(d);
        if !p.is_dir() {
            continue;
        }
        for e in std::fs::read_dir(&p)? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    for f in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
        "var/cache/ldconfig/aux-cache",
    ] {
        let _ = std::fs::remove_file(root.join(f));
    }
    // apt hands its `partial` folders to the `_apt` user only when it downloaded something
    // in the run, so with a warm package cache they stay root's: the same packages gave two
    // different bases. The appliance never runs apt (its root is read-only); one owner for all.
    for d in [
        "var/cache/apt/archives/partial",
        "var/lib/apt/lists/partial",
    ] {
        let p = root.join(d);
        if p.is_dir() {
            std::os::unix::fs::chown(&p, Some(0), Some(0))
                .with_context(|| format!("chown {}", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_below_a_stale_tree_come_deepest_first() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
30 22 0:5 / /work/t/base-1/proc ro - proc proc ro
31 22 0:6 / /work/t/base-1/dev/pts rw - devpts none rw
32 22 0:7 / /work/t/base-1/dev rw - tmpfs none rw
33 22 0:8 / /work/t/base-10/proc rw - proc proc rw
34 22 0:9 / /work/t/base-1/with\\040space rw - tmpfs none rw
";
        let got = mounts_below(info, Path::new("/work/t/base-1"));
        assert_eq!(
            got,
            [
                PathBuf::from("/work/t/base-1/dev/pts"),
                PathBuf::from("/work/t/base-1/proc"),
                PathBuf::from("/work/t/base-1/dev"),
                PathBuf::from("/work/t/base-1/with space"),
            ]
        );
    }
}
