//! `bench delta` (issue 19): how many bytes an update between two close builds costs. Two
//! builds of the default recipe, v1 and v2, where v2 adds one Debian package (curl) and one
//! overlay file and has another version; on their slot images (`rootfs.img`: erofs with its
//! dm-verity tree appended), side by side in one run:
//!
//! * **Aperture's delta bundle**: `aperture_image::bundle::make_delta_bundle`, as `cargo xtask
//!   bundle --from` makes it (rootfs, kernel and initrd deltas, the signed manifest), signed
//!   with `--keys` (default `keys/dev`) and read back by it with v1's files as the base: what
//!   an appliance downloads, and the row the goal is judged on;
//! * **Aperture's rootfs delta** alone: `aperture_trust::delta::encode_file` at zstd level
//!   19, decoded back with `decode_file` (given the dm-verity parameters of v2's manifest, as
//!   an appliance is) and compared byte for byte (sha256) with v2's image;
//! * **ideal**: the entries v2 adds or changes alone (see [`tree`]), as a GNU tar (extended
//!   attributes, ACLs, numeric owners, sorted) compressed with `zstd -19`: what any delta of
//!   the files must at least carry. The goal of the issue is Aperture within 1.1x of it;
//! * **zstd --patch-from**: `zstd -19 --long=30 --patch-from=v1 v2`, decoded back and checked;
//! * **casync**: `casync make` of v1 and then v2 into one store (64 KiB chunks on average,
//!   zstd): the chunks v2 adds plus its `.caibx` index, extracted back with v1 as seed and
//!   checked;
//! * **full bundle**: v2's `update.bundle`, what an appliance downloads without a delta.
//!
//! The builds go to `target/bench/delta/out/{v1,v2}` (disk image not compressed; everything
//! else as the default recipe) through the shared build cache, so a second run reuses both.
//! Not under `target/aperture-tests`: `cargo xtask test` removes every folder there but its
//! shared ones before and after each suite, and so removed this bench's builds mid-run. Adding a
//! package changes the Debian base's cache key (`[base] packages` and `[components] runtime`
//! both go into the one mmdebstrap run, `aperture_image::rootfs::base`), so v2 needs a base of
//! its own: its first build runs mmdebstrap again (2.5 minutes with the packages already
//! downloaded; more without); there is no package layer above the base that would cost less.
//! `--base-build DIR --new-build DIR` skip the builds and compare two existing build folders.
//! The results also go to `target/bench/delta/delta.json`.
//!
//! The ideal's file list comes from the mounted slot images, not from the build store's
//! commits (`aperture diff`), so that it holds exactly the files a slot carries and works on
//! build folders from anywhere. Needs root (loop mounts, builds) and zstd, tar and casync.

mod tree;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use aperture_image::outputs::names;
use aperture_sys::Cmd;
use aperture_trust::digest::sha256_file;
use aperture_trust::digest::Sha256Hex;
use aperture_trust::manifest::Manifest;
use aperture_trust::verity::VerityInfo;
use serde_json::{json, Value};

use crate::sizes::{size, timed, Mounted};
use crate::table::{print_table, Row};

const MIB: f64 = (1u64 << 20) as f64;
/// v2's version (v1 keeps the default recipe's).
const NEW_VERSION: &str = "1.0.1";
/// The Debian package v2 adds.
const NEW_PACKAGE: &str = "curl";
/// The overlay file v2 adds, relative to the image root.
const OVERLAY_FILE: &str = "etc/aperture/bench-delta.txt";
const OVERLAY_TEXT: &str =
    "# Written by `cargo xtask bench delta` (issue 19): the one overlay file\n\
                            # its second build adds to the default recipe.\n\
                            bench = delta\n\
                            version = 1.0.1\n";
/// The zstd level of Aperture's delta, zstd's patch and the ideal tar.
const LEVEL: i32 = 19;
/// casync's average chunk size.
const CASYNC_CHUNK: u32 = 64 * 1024;
/// Added and changed paths printed (all of them go into the JSON).
const LISTED: usize = 40;
/// The goal: Aperture's delta at most this many times the ideal.
const GOAL: f64 = 1.1;

/// What `bench delta` compares.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// An existing build folder to use as v1 (needs `new_build`); none: build it.
    pub base_build: Option<PathBuf>,
    /// An existing build folder to use as v2 (needs `base_build`); none: build it.
    pub new_build: Option<PathBuf>,
    /// The keys folder that signs Aperture's delta bundle; none: the workspace's `keys/dev`.
    pub keys: Option<PathBuf>,
}

/// The files of one build folder the bench reads.
struct Build {
    /// The folder.
    dir: PathBuf,
    /// The slot image.
    rootfs: PathBuf,
    /// The update bundle.
    bundle: PathBuf,
}

impl Build {
    fn at(dir: &Path) -> Result<Build> {
        let b = Build {
            dir: dir.to_path_buf(),
            rootfs: dir.join(names::ROOTFS),
            bundle: dir.join(names::BUNDLE),
        };
        for f in [&b.rootfs, &b.bundle, &dir.join(names::MANIFEST)] {
            if !f.is_file() {
                bail!(
                    "{} is not a build folder: {} does not exist",
                    dir.display(),
                    f.display()
                );
            }
        }
        Ok(b)
    }
}

/// One row of the table.
struct Method {
    name: &'static str,
    bytes: u64,
    encode: Option<Duration>,
    decode: Option<Duration>,
}

/// Run `bench delta`.
pub fn run(o: &Options) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "bench delta needs root (builds, loop mounts of the slot images): run `sudo cargo \
             xtask bench delta`"
        );
    }
    let dir = crate::workspace().join("target/bench/delta");
    let (old, new, builds) = match (&o.base_build, &o.new_build) {
        (Some(a), Some(b)) => (Build::at(a)?, Build::at(b)?, Value::Null),
        (None, None) => build_both(&dir)?,
        _ => bail!("--base-build and --new-build go together"),
    };
    fs::create_dir_all(&dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&dir)
        .context("a temporary folder")?;
    let t = tmp.path();

    // Read both images once before anything is timed, so every method starts from a warm
    // page cache.
    let (old_sha, old_len) =
        sha256_file(&old.rootfs).with_context(|| format!("hashing {}", old.rootfs.display()))?;
    let target =
        sha256_file(&new.rootfs).with_context(|| format!("hashing {}", new.rootfs.display()))?;

    eprintln!("bench delta: the ideal (the changed files as a zstd -{LEVEL} tar)");
    let (diff, ideal) = ideal(&old, &new, t)?;
    // What the delta carries, so that a change nobody meant (a program rebuilt from other
    // sources between the two builds) is seen at once.
    for (mark, paths) in [("added", &diff.added), ("changed", &diff.changed)] {
        for p in paths.iter().take(LISTED) {
            eprintln!("bench delta:   {mark} /{}", p.display());
        }
        if paths.len() > LISTED {
            eprintln!(
                "bench delta:   ... and {} more {mark}",
                paths.len() - LISTED
            );
        }
    }
    eprintln!("bench delta: Aperture's delta (zstd -{LEVEL})");
    let (ours, stats) = aperture(&old, &new, &target, t)?;
    eprintln!("bench delta: Aperture's delta bundle (cargo xtask bundle --from)");
    let keys_dir = o
        .keys
        .clone()
        .unwrap_or_else(|| crate::workspace().join("keys/dev"));
    let keys = aperture_image::keys::load(&keys_dir)?;
    let delta_bundle = t.join("delta.bundle");
    let (made, took) = timed(|| {
        aperture_image::bundle::make_delta_bundle(&new.dir, &old.dir, Some(&delta_bundle), &keys)
    })?;
    let bundle_row = Method {
        name: "Aperture delta bundle (all an appliance fetches)",
        bytes: made.size,
        encode: Some(took),
        decode: None,
    };
    eprintln!("bench delta: zstd -{LEVEL} --long=30 --patch-from");
    let zstd = zstd_patch(&old, &new, &target, t)?;
    eprintln!("bench delta: casync, {} KiB chunks", CASYNC_CHUNK / 1024);
    let (casync, chunks) = casync(&old, &new, &target, t)?;
    let bundle = Method {
        name: "full bundle (update.bundle)",
        bytes: size(&new.bundle)?,
        encode: None,
        decode: None,
    };
    drop(tmp);

    let methods = [bundle_row, ours, ideal, zstd, casync, bundle];
    let ideal_bytes = methods[2].bytes as f64;
    let bundle_bytes = methods[5].bytes as f64;
    let secs =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64()));
    let rows: Vec<Row> = methods
        .iter()
        .map(|m| Row {
            name: m.name.to_string(),
            cells: vec![
                format!("{:.2}", m.bytes as f64 / MIB),
                format!("{:.2}", m.bytes as f64 / ideal_bytes),
                format!("{:.3}", m.bytes as f64 / bundle_bytes),
                secs(m.encode),
                secs(m.decode),
            ],
        })
        .collect();
    print_table(
        &format!(
            "bench delta: {} -> {} (rootfs.img {:.1} -> {:.1} MiB); v2 adds {} and changes {} \
             entries ({} files, {:.2} MiB of content) and removes {}",
            old.dir.display(),
            new.dir.display(),
            old_len as f64 / MIB,
            target.1 as f64 / MIB,
            diff.added.len(),
            diff.changed.len(),
            diff.files,
            diff.file_bytes as f64 / MIB,
            diff.removed,
        ),
        &[
            "method",
            "MiB",
            "vs ideal",
            "vs bundle",
            "encode s",
            "decode s",
        ],
        &rows,
    );
    // The goal is judged on the whole delta bundle (manifest, signature, kernel and initrd
    // deltas included), what an appliance downloads.
    let ratio = methods[0].bytes as f64 / ideal_bytes;
    println!(
        "Aperture's rootfs delta: {:.1} MiB copied from v1, {:.2} MiB sent as differences, {:.2} MiB \
         literal, {:.2} MiB of verity tree rebuilt; its delta bundle is {ratio:.2}x the ideal: \
         the goal of issue 19 (at most {GOAL}x) is {}",
        stats.copied_bytes as f64 / MIB,
        stats.diff_bytes as f64 / MIB,
        stats.literal_bytes as f64 / MIB,
        stats.rebuilt_bytes as f64 / MIB,
        if ratio <= GOAL { "met" } else { "NOT met" }
    );
    eprintln!("bench delta: Aperture's delta: {stats:?}");

    let report = json!({
        "base": { "dir": old.dir, "rootfs_bytes": old_len, "rootfs_sha256": old_sha },
        "new": { "dir": new.dir, "rootfs_bytes": target.1, "rootfs_sha256": target.0 },
        "entries": {
            "added": diff.added.len(),
            "changed": diff.changed.len(),
            "removed": diff.removed,
            "files": diff.files,
            "file_bytes": diff.file_bytes,
            "added_paths": diff.added,
            "changed_paths": diff.changed,
        },
        "methods": methods.iter().map(|m| json!({
            "name": m.name,
            "bytes": m.bytes,
            "vs_ideal": m.bytes as f64 / ideal_bytes,
            "vs_bundle": m.bytes as f64 / bundle_bytes,
            "encode_seconds": m.encode.map(|d| d.as_secs_f64()),
            "decode_seconds": m.decode.map(|d| d.as_secs_f64()),
        })).collect::<Vec<_>>(),
        "aperture": {
            "level": LEVEL,
            "target_size": stats.target_size,
            "copied_bytes": stats.copied_bytes,
            "literal_bytes": stats.literal_bytes,
            "encoded_size": stats.encoded_size,
            "encoded_sha256": stats.encoded_sha256,
            "stats": format!("{stats:?}"),
        },
        "casync_chunks_added": chunks,
        "goal": { "max_vs_ideal": GOAL, "vs_ideal": ratio, "met": ratio <= GOAL },
        "builds": builds,
    });
    fs::create_dir_all(&dir)?;
    let out = dir.join("delta.json");
    fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench delta: results in {}", out.display());
    Ok(())
}

/// Build v1 (the default recipe) and v2 (plus curl, the overlay file and a new version) under
/// `dir`; returns both and what each build did.
fn build_both(dir: &Path) -> Result<(Build, Build, Value)> {
    let overlay = dir.join("overlay");
    write_overlay(&overlay)?;
    let recipes = dir.join("recipes");
    let outputs = "[outputs]\ncompressed_disk = false\n";
    let v1 = aperture_tests::derived_recipe(&recipes, "v1.toml", "qemu-x86_64.toml", outputs)?;
    let v2 = aperture_tests::derived_recipe(
        &recipes,
        "v2.toml",
        "qemu-x86_64.toml",
        &format!(
            "version = \"{NEW_VERSION}\"\noverlays = [\"{}\"]\n\n[base]\npackages = \
             [\"{NEW_PACKAGE}\"]\n\n{outputs}",
            overlay.display()
        ),
    )?;
    let mut builds = Vec::new();
    let mut reports = Vec::new();
    for (name, recipe) in [("v1", v1), ("v2", v2)] {
        eprintln!("bench delta: building {name} ({})", recipe.display());
        let (report, took) = aperture_tests::build(&recipe, &dir.join("out").join(name), false)
            .with_context(|| format!("building {name} ({})", recipe.display()))?;
        let steps: Vec<String> = report
            .steps
            .iter()
            .filter(|s| !s.reused)
            .map(|s| format!("{} {:.0} s", s.name, s.seconds))
            .collect();
        eprintln!(
            "bench delta: {name} built in {:.0} s (steps run: {})",
            took.as_secs_f64(),
            if steps.is_empty() {
                "none, all reused".to_string()
            } else {
                steps.join(", ")
            }
        );
        builds.push(json!({
            "name": name,
            "recipe": recipe,
            "seconds": took.as_secs_f64(),
            "base_commit": report.rootfs.base_commit,
            "steps": report.steps,
        }));
        reports.push(report);
    }
    let new_base = reports[0].rootfs.base_commit != reports[1].rootfs.base_commit;
    eprintln!(
        "bench delta: v2 {} v1's Debian base",
        if new_base {
            "has a base of its own, not"
        } else {
            "shares"
        }
    );
    Ok((
        Build::at(&reports[0].paths.out)?,
        Build::at(&reports[1].paths.out)?,
        json!({ "v2_new_base": new_base, "runs": builds }),
    ))
}

/// The overlay folder holding v2's one extra file (root's, 0644, in 0755 folders, as the
/// image's own `/etc/aperture`).
fn write_overlay(overlay: &Path) -> Result<()> {
    let file = overlay.join(OVERLAY_FILE);
    let parent = file.parent().context("the overlay file is in a folder")?;
    fs::create_dir_all(parent).with_context(|| format!("making {}", parent.display()))?;
    for d in parent.ancestors().take_while(|d| d.starts_with(overlay)) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }
    fs::write(&file, OVERLAY_TEXT).with_context(|| format!("writing {}", file.display()))?;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Fail unless `decoded` is the target image (sha256 and length); then remove it.
fn check_decoded(what: &str, decoded: &Path, target: &(Sha256Hex, u64)) -> Result<()> {
    let got = sha256_file(decoded).with_context(|| format!("hashing {}", decoded.display()))?;
    ensure!(
        got == *target,
        "{what} decodes to {} ({} bytes), not v2's rootfs.img ({}, {} bytes)",
        got.0,
        got.1,
        target.0,
        target.1
    );
    fs::remove_file(decoded)?;
    Ok(())
}

/// `--patch-from=FILE` as one argument.
fn patch_from(base: &Path) -> OsString {
    let mut a = OsString::from("--patch-from=");
    a.push(base);
    a
}

/// The dm-verity parameters `build`'s manifest records for its slot image, if any.
fn rootfs_verity(build: &Build) -> Result<Option<VerityInfo>> {
    let path = build.dir.join(names::MANIFEST);
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest = Manifest::from_json_unverified(&bytes)
        .with_context(|| format!("parsing {}", path.display()))?;
    let rootfs = manifest
        .artifacts
        .into_iter()
        .find(|a| a.name.as_str() == names::ROOTFS)
        .with_context(|| format!("{} lists no {}", path.display(), names::ROOTFS))?;
    Ok(rootfs.verity)
}

/// Aperture's delta, timed both ways and checked.
fn aperture(
    old: &Build,
    new: &Build,
    target: &(Sha256Hex, u64),
    t: &Path,
) -> Result<(Method, aperture_trust::delta::DeltaStats)> {
    let out = t.join("aperture.delta");
    let (stats, encode) = timed(|| {
        aperture_trust::delta::encode_file(&old.rootfs, &new.rootfs, &out, LEVEL)
            .context("encoding Aperture's delta")
    })?;
    let bytes = size(&out)?;
    let (sha, _) = sha256_file(&out)?;
    ensure!(
        stats.encoded_size == bytes && stats.encoded_sha256 == sha,
        "Aperture's delta reports {} bytes (sha256 {}) but wrote {bytes} (sha256 {sha})",
        stats.encoded_size,
        stats.encoded_sha256,
    );
    ensure!(
        stats.target_size == target.1,
        "Aperture's delta reports a target of {} bytes; v2's rootfs.img has {}",
        stats.target_size,
        target.1
    );
    // The delta may leave v2's dm-verity tree to be rebuilt from the parameters its manifest
    // records, as an appliance does.
    let verity = rootfs_verity(new)?;
    let decoded = t.join("aperture.img");
    let (n, decode) = timed(|| {
        aperture_trust::delta::decode_file(&old.rootfs, &out, &decoded, verity.as_ref())
            .context("decoding Aperture's delta")
    })?;
    ensure!(
        n == target.1,
        "Aperture's delta decoded {n} bytes; v2's rootfs.img has {}",
        target.1
    );
    check_decoded("Aperture's delta", &decoded, target)?;
    let m = Method {
        name: "Aperture rootfs.img delta alone",
        bytes,
        encode: Some(encode),
        decode: Some(decode),
    };
    Ok((m, stats))
}

/// The ideal: the entries v2 adds or changes, as a zstd -19 tar. Returns the comparison too.
fn ideal(old: &Build, new: &Build, t: &Path) -> Result<(tree::TreeDiff, Method)> {
    let old_mount = Mounted::new(&old.rootfs, "erofs", &t.join("v1"))?;
    let new_mount = Mounted::new(&new.rootfs, "erofs", &t.join("v2"))?;
    let diff = tree::diff(&old_mount.0, &new_mount.0)
        .context("comparing the files of the two slot images")?;
    let list = t.join("ideal.list");
    let mut names = Vec::new();
    for p in diff.paths() {
        names.extend_from_slice(p.as_os_str().as_bytes());
        names.push(0);
    }
    fs::write(&list, names)?;
    let tar = t.join("ideal.tar");
    let zst = t.join("ideal.tar.zst");
    let ((), encode) = timed(|| {
        Cmd::new("tar")
            .arg("--create")
            .arg("--file")
            .arg(&tar)
            .arg("--directory")
            .arg(&new_mount.0)
            // A reproducible pax archive: no atime, ctime or process id in its headers.
            .args([
                "--format=posix",
                "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                "--xattrs",
                "--xattrs-include=*",
                "--acls",
                "--numeric-owner",
                "--no-recursion",
                "--null",
                "--verbatim-files-from",
            ])
            .arg("--files-from")
            .arg(&list)
            .run()
            .context("archiving the changed files")?;
        Cmd::new("zstd")
            .args([format!("-{LEVEL}").as_str(), "-q", "-f"])
            .arg(&tar)
            .arg("-o")
            .arg(&zst)
            .run()
            .context("compressing the changed files' archive")?;
        Ok(())
    })?;
    drop((new_mount, old_mount));
    let m = Method {
        name: "ideal (changed files, tar | zstd -19)",
        bytes: size(&zst)?,
        encode: Some(encode),
        decode: None,
    };
    Ok((diff, m))
}

/// `zstd --patch-from`, timed both ways and checked. A window of 2^30 bytes covers both images
/// (about 330 MiB each), which --patch-from needs; the decoder needs the same `--long`.
fn zstd_patch(old: &Build, new: &Build, target: &(Sha256Hex, u64), t: &Path) -> Result<Method> {
    let patch = t.join("zstd.patch");
    let ((), encode) = timed(|| {
        Cmd::new("zstd")
            .args([format!("-{LEVEL}").as_str(), "--long=30", "-q", "-f"])
            .arg(patch_from(&old.rootfs))
            .arg(&new.rootfs)
            .arg("-o")
            .arg(&patch)
            .run()
            .context("making zstd's patch")?;
        Ok(())
    })?;
    let decoded = t.join("zstd.img");
    let ((), decode) = timed(|| {
        Cmd::new("zstd")
            .args(["-d", "--long=30", "-q", "-f"])
            .arg(patch_from(&old.rootfs))
            .arg(&patch)
            .arg("-o")
            .arg(&decoded)
            .run()
            .context("applying zstd's patch")?;
        Ok(())
    })?;
    check_decoded("zstd's patch", &decoded, target)?;
    Ok(Method {
        name: "zstd -19 --long=30 --patch-from",
        bytes: size(&patch)?,
        encode: Some(encode),
        decode: Some(decode),
    })
}

/// The chunk files of a casync store, by path, with their sizes.
fn chunks(store: &Path) -> Result<BTreeMap<PathBuf, u64>> {
    let mut out = BTreeMap::new();
    if !store.is_dir() {
        return Ok(out);
    }
    for d in fs::read_dir(store).with_context(|| format!("listing {}", store.display()))? {
        let d = d?;
        if !d.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(d.path())? {
            let f = f?;
            if f.file_type()?.is_file() {
                out.insert(f.path(), f.metadata()?.len());
            }
        }
    }
    Ok(out)
}

/// casync: v1 and then v2 into one store; v2's delta is the chunks it added and its index.
/// Extracting v2 (v1 as the seed) is its decode. Returns the row and the chunks v2 added.
fn casync(
    old: &Build,
    new: &Build,
    target: &(Sha256Hex, u64),
    t: &Path,
) -> Result<(Method, usize)> {
    let store = t.join("casync.castr");
    let mut store_arg = OsString::from("--store=");
    store_arg.push(&store);
    let make = |index: &Path, image: &Path| {
        Cmd::new("casync")
            .arg("make")
            .arg(&store_arg)
            .arg(format!("--chunk-size={CASYNC_CHUNK}"))
            .arg("--compression=zstd")
            .arg(index)
            .arg(image)
            .run()
            .with_context(|| format!("casync make {}", image.display()))
    };
    let (v1, v2) = (t.join("v1.caibx"), t.join("v2.caibx"));
    make(&v1, &old.rootfs)?;
    let before = chunks(&store)?;
    let (_, encode) = timed(|| make(&v2, &new.rootfs))?;
    let after = chunks(&store)?;
    let added: Vec<u64> = after
        .iter()
        .filter(|(p, _)| !before.contains_key(*p))
        .map(|(_, s)| *s)
        .collect();
    let bytes = added.iter().sum::<u64>() + size(&v2)?;

    let decoded = t.join("casync.img");
    let mut seed = OsString::from("--seed=");
    seed.push(&old.rootfs);
    let (_, decode) = timed(|| {
        Cmd::new("casync")
            .arg("extract")
            .arg(&store_arg)
            .arg(&seed)
            .arg(&v2)
            .arg(&decoded)
            .run()
            .context("casync extract of v2 with v1 as the seed")
    })?;
    check_decoded("casync's index", &decoded, target)?;
    let m = Method {
        name: "casync (64 KiB chunks, zstd)",
        bytes,
        encode: Some(encode),
        decode: Some(decode),
    };
    Ok((m, added.len()))
}
