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
const BASE_FORMAT: u32 = 3;

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
        "initramfs_modules": recipe.base.initramfs_modules,
        "mmdebstrap": mmdebstrap_version()?,
        "dpkg_filters": DPKG_FILTERS,
        "files": file_hashes,
        "source_date": BASE_SOURCE_DATE,
    });
    let mut doc = doc;
    // Only when set, so that the bases of recipes without the list keep their keys.
    if !recipe.base.kernel_modules.is_empty() {
        doc["kernel_modules"] = serde_json::json!(recipe.base.kernel_modules);
    }
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
        // /usr merged by mmdebstrap's own hook before anything is unpacked, as debootstrap
        // does, rather than by the usrmerge package converting the tree afterwards: usrmerge
        // pulls perl into the image and its conversion runs for a while under emulation.
        .arg(format!("--hook-dir={MERGED_USR_HOOKS}"))
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
    for hook in initramfs_list_hooks(&recipe.base.initramfs_modules) {
        c = c.arg(format!("--setup-hook={hook}"));
    }
    // Regenerating commands run once, at the end, rather than by every package that asks.
    c = c.arg(format!("--essential-hook={}", defer_hook()));
    c = c.arg(format!(
        "--customize-hook=sync-out /var/cache/apt/archives '{}'",
        debs.display()
    ));
    c = c.arg("--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb");
    // Modules the recipe does not keep go before the initramfs is made from what is left.
    if let Some(hook) =
        prune_modules_hook(&recipe.base.kernel_modules, &recipe.base.initramfs_modules)
    {
        c = c.arg(format!("--customize-hook={hook}"));
    }
    c = c.arg(format!("--customize-hook={}", run_deferred_hook()));
    // The initramfs must open the verity root: fail the base, not the first boot.
    c = c.arg(
        "--customize-hook=for i in \"$1\"/boot/initrd.img-*; do [ -e \"$i\" ] || continue; \
         if ! chroot \"$1\" lsinitramfs \"${i#$1}\" | grep -q 'sbin/veritysetup$'; then \
         echo \"${i#$1} has no veritysetup: the aperture-verity initramfs hook did not run\" >&2; \
         exit 1; fi; done",
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

/// mmdebstrap's hook that merges /usr before the essential packages are unpacked.
const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// Commands that regenerate a whole output from what is installed, which packages run again
/// and again while they install (the kernel's postinst and the initramfs trigger each build the
/// initramfs, ca-certificates' postinst and its trigger each rebuild /etc/ssl/certs). Under
/// arm64 emulation one initramfs takes minutes. While packages install each is diverted to a
/// stub (`dpkg-divert`, as live-build does), and [`run_deferred_hook`] runs each once at the end.
const DEFERRED: &[&str] = &[
    "/usr/sbin/update-initramfs",
    "/usr/sbin/update-ca-certificates",
];

/// Suffix of a deferred command's real program while it is diverted.
const DEFERRED_SUFFIX: &str = ".aperture-deferred";

/// The essential hook (dpkg works, nothing but the essential set is installed): divert each
/// deferred command to a stub that says so.
fn defer_hook() -> String {
    DEFERRED
        .iter()
        .map(|f| {
            format!(
                "chroot \"$1\" dpkg-divert --quiet --local --rename --divert {f}{DEFERRED_SUFFIX} --add {f} && \
                 printf '#!/bin/sh\\necho \"{f} $*: deferred to the end of the base build\"\\n' > \"$1\"{f} && \
                 chmod 0755 \"$1\"{f}"
            )
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

/// The customize hook (every package installed): put each deferred command back and run it
/// once, `update-ca-certificates --fresh` and one initramfs per installed kernel.
fn run_deferred_hook() -> String {
    let restore = DEFERRED
        .iter()
        .map(|f| {
            format!(
                "rm -f \"$1\"{f} && chroot \"$1\" dpkg-divert --quiet --local --rename --remove {f}"
            )
        })
        .collect::<Vec<_>>()
        .join(" && ");
    format!(
        "{restore} && \
         if [ -x \"$1\"/usr/sbin/update-ca-certificates ]; then chroot \"$1\" update-ca-certificates --fresh; fi && \
         for k in \"$1\"/usr/lib/modules/*; do [ -d \"$k\" ] || continue; \
         chroot \"$1\" update-initramfs -c -k \"${{k##*/}}\" || exit 1; done"
    )
}

/// The customize hook for a recipe's `kernel_modules`: in each installed kernel's module tree,
/// remove every module that is neither kept (by folder or name, or listed in
/// `initramfs_modules`) nor needed by a kept one (modules.dep), then `depmod` in the image. A
/// name or folder that matches nothing fails the base (a typo would otherwise leave a driver
/// out unnoticed); a name built into the kernel (modules.builtin) counts as found. None when
/// the list is empty: every module stays.
fn prune_modules_hook(keep: &[String], initramfs: &[String]) -> Option<String> {
    if keep.is_empty() {
        return None;
    }
    Some(prune_modules_script(
        keep,
        initramfs,
        "chroot \"$1\" depmod -a \"${k##*/}\"",
    ))
}

/// [`prune_modules_hook`]'s script, with `depmod` the command that indexes a pruned tree (`$k`
/// is its folder, `$1` the image root). Entries are checked by the recipe (letters, digits,
/// `_`, `-`, `.`, `/`), so they need no quoting beyond the single quotes.
fn prune_modules_script(keep: &[String], initramfs: &[String], depmod: &str) -> String {
    let mut all: Vec<&str> = keep.iter().map(String::as_str).collect();
    for m in initramfs {
        if !all.contains(&m.as_str()) {
            all.push(m);
        }
    }
    format!(
        "set -e; for k in \"$1\"/usr/lib/modules/*; do [ -f \"$k/modules.dep\" ] || continue; \
         b=\"$k/modules.builtin\"; [ -f \"$b\" ] || b=/dev/null; t=$(mktemp); \
         if ! awk -v keep='{}' -v ver=\"${{k##*/}}\" -v builtin=\"$b\" '{PRUNE_AWK}' \"$b\" \"$k/modules.dep\" > \"$t\"; \
         then rm -f \"$t\"; exit 1; fi; \
         while IFS= read -r p; do rm -f \"$k/$p\"; done < \"$t\"; rm -f \"$t\"; \
         find \"$k/kernel\" -depth -type d -empty -delete; {depmod}; done",
        all.join(" ")
    )
}

/// The selection in awk (the host's, on the image's module index): reads modules.builtin, then
/// modules.dep; prints the paths to remove, and a summary on stderr. No single quotes: it is
/// passed inside them.
const PRUNE_AWK: &str = r#"
function modname(p,  m) { m = p; sub(/^.*\//, "", m); sub(/\.ko(\.[a-z]+)?$/, "", m); gsub(/-/, "_", m); return m }
function mark(m,  a, j, c) {
  if (m in kept) return
  kept[m] = 1
  c = split(deps[m], a, " ")
  for (j = 1; j <= c; j++) mark(a[j])
}
BEGIN {
  n = split(keep, K, " ")
  for (i = 1; i <= n; i++) {
    if (K[i] ~ /\/$/) folder[K[i]] = 0
    else { nm = K[i]; gsub(/-/, "_", nm); want[nm] = K[i] }
  }
}
FILENAME == builtin { inkernel[modname($0)] = 1; next }
{
  m = $1; sub(/:$/, "", m)
  all[++N] = m
  d = ""
  for (i = 2; i <= NF; i++) d = d " " $i
  deps[m] = d
}
END {
  for (i = 1; i <= N; i++) {
    m = all[i]; nm = modname(m)
    if (nm in want) { mark(m); found[nm] = 1 }
    for (f in folder) if (index(m, "kernel/" f) == 1) { mark(m); folder[f]++ }
  }
  bad = 0
  for (nm in want) if (!(nm in found) && !(nm in inkernel)) {
    printf "[base] kernel_modules: `%s` names no module of kernel %s, nor one built into it: correct the name or remove it\n", want[nm], ver > "/dev/stderr"; bad = 1
  }
  for (f in folder) if (folder[f] == 0) {
    printf "[base] kernel_modules: kernel %s has no module below kernel/%s: correct the folder or remove it\n", ver, f > "/dev/stderr"; bad = 1
  }
  if (bad) exit 1
  gone = 0
  for (i = 1; i <= N; i++) if (!(all[i] in kept)) { print all[i]; gone++ }
  printf "kernel %s: keeping %d of its %d modules ([base] kernel_modules)\n", ver, N - gone, N > "/dev/stderr"
}
"#;

/// Setup hooks for a recipe's `initramfs_modules`: `MODULES=list` and a hook that adds exactly
/// those modules (initramfs-tools' own list, `/etc/initramfs-tools/modules`, is a conffile of
/// its package, so it is left alone). None for an empty list: initramfs-tools' `MODULES=most`.
/// The names are checked by the recipe (letters, digits, `_`, `-`), so they need no quoting.
fn initramfs_list_hooks(modules: &[String]) -> Vec<String> {
    if modules.is_empty() {
        return Vec::new();
    }
    let conf = "/etc/initramfs-tools/conf.d/aperture-modules";
    let hook = "/etc/initramfs-tools/hooks/aperture-modules";
    vec![
        "mkdir -p \"$1\"/etc/initramfs-tools/conf.d \"$1\"/etc/initramfs-tools/hooks".to_string(),
        format!(
            "printf '# Aperture: the recipe lists the modules ([base] initramfs_modules)\\nMODULES=list\\n' > \"$1\"{conf}"
        ),
        format!(
            "printf '#!/bin/sh\\n# Aperture: the kernel modules the recipe lists ([base] initramfs_modules).\\n\
             case \"$1\" in prereqs) echo; exit 0 ;; esac\\n\
             . /usr/share/initramfs-tools/hook-functions\\nmanual_add_modules {}\\n' > \"$1\"{hook} && chmod 0755 \"$1\"{hook}",
            modules.join(" ")
        ),
    ]
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

    /// A module tree of a fake kernel `6.1.0-t` under `root`: paths (with their dependencies)
    /// in modules.dep, and virtio_blk built in.
    fn fake_kernel(root: &Path) -> PathBuf {
        let k = root.join("usr/lib/modules/6.1.0-t");
        let dep = "\
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/lib/reed_solomon.ko
kernel/drivers/md/dm-bufio.ko:
kernel/lib/reed_solomon.ko:
kernel/drivers/gpu/drm/amd/amdgpu.ko: kernel/drivers/gpu/drm/drm.ko
kernel/drivers/gpu/drm/drm.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/erofs/erofs.ko:
kernel/sound/core/snd.ko:
";
        for line in dep.lines() {
            let m = k.join(line.split(':').next().unwrap());
            std::fs::create_dir_all(m.parent().unwrap()).unwrap();
            std::fs::write(&m, b"\x7fELF").unwrap();
        }
        std::fs::write(k.join("modules.dep"), dep).unwrap();
        std::fs::write(
            k.join("modules.builtin"),
            "kernel/drivers/block/virtio_blk.ko\n",
        )
        .unwrap();
        k
    }

    fn run_prune(root: &Path, keep: &[&str], initramfs: &[&str]) -> std::process::Output {
        let keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        let initramfs: Vec<String> = initramfs.iter().map(|s| s.to_string()).collect();
        let script = prune_modules_script(&keep, &initramfs, "echo \"$1\" > \"$k/depmod-ran\"");
        Command::new("sh")
            .args(["-c", &script, "exec"])
            .arg(root)
            .output()
            .unwrap()
    }

    #[test]
    fn kernel_modules_keep_folders_names_initramfs_modules_and_their_dependencies() {
        let tmp = tempfile::tempdir().unwrap();
        let k = fake_kernel(tmp.path());
        // A `-` in a name matches the file's `_` (and the other way), as modprobe has it.
        let out = run_prune(
            tmp.path(),
            &["drivers/md/", "virtio-net"],
            &["erofs", "virtio_blk"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("keeping 7 of its 10 modules"), "{stderr}");
        for kept in [
            "drivers/md/dm-verity.ko",
            "drivers/md/dm-bufio.ko",
            "lib/reed_solomon.ko",
            "drivers/net/virtio_net.ko",
            "drivers/net/net_failover.ko",
            "net/core/failover.ko",
            "fs/erofs/erofs.ko",
        ] {
            assert!(k.join("kernel").join(kept).exists(), "{kept} was removed");
        }
        for gone in ["drivers/gpu", "sound"] {
            assert!(
                !k.join("kernel").join(gone).exists(),
                "{gone} is still there"
            );
        }
        assert_eq!(
            std::fs::read_to_string(k.join("depmod-ran"))
                .unwrap()
                .trim(),
            tmp.path().to_str().unwrap()
        );
    }

    #[test]
    fn a_kernel_modules_entry_that_matches_nothing_fails_and_removes_nothing() {
        for (keep, says) in [
            (
                ["drivers/md/", "virtio-nett"],
                "`virtio-nett` names no module of kernel 6.1.0-t",
            ),
            (
                ["drivers/md/", "drivers/nosuch/"],
                "kernel 6.1.0-t has no module below kernel/drivers/nosuch/",
            ),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let k = fake_kernel(tmp.path());
            let out = run_prune(tmp.path(), &keep, &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(stderr.contains(says), "{stderr}");
            assert!(k.join("kernel/sound/core/snd.ko").exists());
            assert!(!k.join("depmod-ran").exists());
        }
    }

    #[test]
    fn no_kernel_modules_list_keeps_every_module() {
        assert!(prune_modules_hook(&[], &["virtio_blk".to_string()]).is_none());
    }

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

    /// Run a hook as mmdebstrap does (`sh -c HOOK exec TARGET`), with a fake `chroot` first on
    /// PATH that records its arguments instead of running anything in TARGET.
    fn run_hook(hook: &str, target: &Path, bin: &Path) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(hook)
            .arg("exec")
            .arg(target)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap()
    }

    fn fake_chroot(dir: &Path) -> PathBuf {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = dir.join("chroot.log");
        // Records every call; for `dpkg-divert --rename --remove FILE` it also puts the real
        // program back, as dpkg-divert does.
        let script = format!(
            "#!/bin/sh\necho \"$@\" >> {}\n\
             root=$1; shift\n\
             if [ \"$1\" = dpkg-divert ] && [ \"$5\" = --remove ]; then\n\
             \x20 for f; do :; done\n\
             \x20 mv \"$root$f{DEFERRED_SUFFIX}\" \"$root$f\"\n\
             fi\n",
            log.display()
        );
        let p = bin.join("chroot");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        log
    }

    #[test]
    fn deferred_commands_become_stubs_then_run_once_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::create_dir_all(target.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(target.join("usr/lib/modules/6.1.0-50-cloud-arm64")).unwrap();
        let log = fake_chroot(dir.path());
        let bin = dir.path().join("bin");

        let out = run_hook(&defer_hook(), &target, &bin);
        assert!(out.status.success(), "{out:?}");
        for f in DEFERRED {
            let stub = target.join(f.trim_start_matches('/'));
            let text = std::fs::read_to_string(&stub).unwrap();
            assert!(text.starts_with("#!/bin/sh\n"), "{text}");
            assert!(
                text.contains("deferred to the end of the base build"),
                "{text}"
            );
            let said = Command::new("sh").arg(&stub).arg("-u").output().unwrap();
            assert!(said.status.success());
            assert!(String::from_utf8_lossy(&said.stdout).contains(&format!("{f} -u: deferred")));
        }
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(calls.contains(
            "dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.aperture-deferred --add /usr/sbin/update-initramfs"
        ), "{calls}");

        std::fs::write(&log, "").unwrap();
        // The packages' real programs, where dpkg put them while they were diverted.
        for f in DEFERRED {
            let real = target.join(format!("{}{DEFERRED_SUFFIX}", f.trim_start_matches('/')));
            std::fs::write(&real, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let out = run_hook(&run_deferred_hook(), &target, &bin);
        assert!(out.status.success(), "{out:?}");
        let calls = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = calls.lines().collect();
        let t = target.display();
        assert_eq!(
            lines,
            [
                format!("{t} dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs"),
                format!("{t} dpkg-divert --quiet --local --rename --remove /usr/sbin/update-ca-certificates"),
                format!("{t} update-ca-certificates --fresh"),
                format!("{t} update-initramfs -c -k 6.1.0-50-cloud-arm64"),
            ]
        );
        for f in DEFERRED {
            let text = std::fs::read_to_string(target.join(f.trim_start_matches('/'))).unwrap();
            assert!(
                !text.contains("deferred"),
                "{f} must be the real program again"
            );
        }
    }

    #[test]
    fn an_initramfs_module_list_becomes_modules_list_and_a_hook() {
        assert!(initramfs_list_hooks(&[]).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::create_dir_all(&target).unwrap();
        let bin = dir.path().join("bin");
        fake_chroot(dir.path());
        let modules = ["virtio_pci".to_string(), "virtio_blk".to_string()];
        for hook in initramfs_list_hooks(&modules) {
            let out = run_hook(&hook, &target, &bin);
            assert!(out.status.success(), "{hook}: {out:?}");
        }
        let conf =
            std::fs::read_to_string(target.join("etc/initramfs-tools/conf.d/aperture-modules"))
                .unwrap();
        assert!(conf.lines().any(|l| l == "MODULES=list"), "{conf}");
        let hook_file = target.join("etc/initramfs-tools/hooks/aperture-modules");
        let hook = std::fs::read_to_string(&hook_file).unwrap();
        assert!(hook.starts_with("#!/bin/sh\n"), "{hook}");
        assert!(
            hook.lines()
                .any(|l| l == "manual_add_modules virtio_pci virtio_blk"),
            "{hook}"
        );
        // initramfs-tools asks every hook for its prerequisites first.
        let out = Command::new("sh")
            .arg(&hook_file)
            .arg("prereqs")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
        let mode = std::fs::metadata(&hook_file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o111,
            0o111
        );
    }
}
