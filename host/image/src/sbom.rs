//! The software bill of materials: SPDX 2.3 JSON listing every Debian package in the rootfs
//! (name, version, architecture, and its license where the package's DEP-5 copyright file
//! says) and our own device crates with the Rust crates they link.
//!
//! Read straight from the rootfs commit, so it describes exactly what ships. Deterministic:
//! the creation time is the source date and every list is sorted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use aperture_sys::Cmd;
use serde_json::{json, Value};

use crate::recipe::Recipe;
use crate::store::{Node, TreeView};

/// A Debian package as dpkg records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DebPackage {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub arch: String,
}

/// Installed packages from a dpkg status file.
pub fn parse_dpkg_status(text: &str) -> Vec<DebPackage> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut f: BTreeMap<&str, &str> = BTreeMap::new();
        for line in para.lines() {
            if line.starts_with(' ') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                f.insert(k, v.trim());
            }
        }
        let installed = f.get("Status").is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(n), Some(v)) = (installed, f.get("Package"), f.get("Version")) {
            out.push(DebPackage {
                name: n.to_string(),
                version: v.to_string(),
                arch: f.get("Architecture").unwrap_or(&"all").to_string(),
            });
        }
    }
    out.sort();
    out
}

/// License short names from a DEP-5 copyright file (`Format: https://www.debian.org/doc/
/// packaging-manuals/copyright-format/1.0/`); empty if the file is not machine-readable.
pub fn dep5_licenses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !text.starts_with("Format:") && !text.starts_with("Format-Specification:") {
        return out;
    }
    for para in text.split("\n\n") {
        let has_files = para.lines().any(|l| l.starts_with("Files:"));
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("License:") {
                // A License paragraph without Files: is the full text of a license named
                // elsewhere; only Files paragraphs (and the header) declare licenses.
                if has_files || out.is_empty() {
                    for part in v.split(" or ").flat_map(|p| p.split(" and ")) {
                        let p = part
                            .trim()
                            .trim_matches(|c| c == '(' || c == ')' || c == ',');
                        if !p.is_empty() {
                            out.insert(p.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

/// A Debian license short name as an SPDX expression term: the SPDX id where there is one,
/// else a `LicenseRef-`.
pub fn spdx_id(debian: &str) -> String {
    let known = [
        ("GPL-2", "GPL-2.0-only"),
        ("GPL-2+", "GPL-2.0-or-later"),
        ("GPL-3", "GPL-3.0-only"),
        ("GPL-3+", "GPL-3.0-or-later"),
        ("LGPL-2", "LGPL-2.0-only"),
        ("LGPL-2+", "LGPL-2.0-or-later"),
        ("LGPL-2.1", "LGPL-2.1-only"),
        ("LGPL-2.1+", "LGPL-2.1-or-later"),
        ("LGPL-3", "LGPL-3.0-only"),
        ("LGPL-3+", "LGPL-3.0-or-later"),
        ("Expat", "MIT"),
        ("MIT", "MIT"),
        ("BSD-2-clause", "BSD-2-Clause"),
        ("BSD-3-clause", "BSD-3-Clause"),
        ("BSD-4-clause", "BSD-4-Clause"),
        ("Apache-2.0", "Apache-2.0"),
        ("Zlib", "Zlib"),
        ("zlib", "Zlib"),
        ("ISC", "ISC"),
        ("MPL-2.0", "MPL-2.0"),
        ("CC0-1.0", "CC0-1.0"),
        ("Artistic", "Artistic-1.0-Perl"),
        ("PSF-2", "PSF-2.0"),
        ("OpenSSL", "OpenSSL"),
    ];
    if let Some((_, id)) = known.iter().find(|(d, _)| d.eq_ignore_ascii_case(debian)) {
        return id.to_string();
    }
    let clean: String = debian
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("LicenseRef-Debian-{clean}")
}

/// The Rust crates the device binary links for a target with these features (the recipe's
/// programs), from `cargo tree`.
fn rust_crates(
    workspace: &Path,
    features: &str,
    triple: &str,
) -> Result<BTreeSet<(String, String)>> {
    let text = Cmd::cargo()
        .current_dir(workspace)
        .env(
            "CARGO_TARGET_DIR",
            crate::rootfs::programs::target_dir(workspace),
        )
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--target",
            triple,
            "-p",
            crate::rootfs::programs::MULTICALL,
            "--no-default-features",
            "--features",
            features,
        ])
        .text()?;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some(name), Some(ver)) = (it.next(), it.next()) {
            out.insert((name.to_string(), ver.trim_start_matches('v').to_string()));
        }
    }
    Ok(out)
}

fn spdx_ref(kind: &str, name: &str, version: &str) -> String {
    let raw = format!("SPDXRef-{kind}-{name}-{version}");
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Write the SBOM of a rootfs commit.
pub fn generate(
    view: &TreeView<'_>,
    recipe: &Recipe,
    workspace: &Path,
    source_date: u64,
    dest: &Path,
) -> Result<usize> {
    let status =
        read(view, "var/lib/dpkg/status")?.context("the rootfs has no dpkg status file")?;
    let debs = parse_dpkg_status(&String::from_utf8_lossy(&status));
    let mut packages: Vec<Value> = Vec::new();
    let mut refs_used: BTreeSet<String> = BTreeSet::new();
    let mut described: Vec<String> = Vec::new();
    for d in &debs {
        let copyright = read(view, &format!("usr/share/doc/{}/copyright", d.name))?;
        let lic = copyright
            .map(|c| dep5_licenses(&String::from_utf8_lossy(&c)))
            .unwrap_or_default();
        let declared = if lic.is_empty() {
            "NOASSERTION".to_string()
        } else {
            let ids: BTreeSet<String> = lic.iter().map(|l| spdx_id(l)).collect();
            refs_used.extend(ids.iter().filter(|i| i.starts_with("LicenseRef-")).cloned());
            ids.into_iter().collect::<Vec<_>>().join(" AND ")
        };
        let id = spdx_ref("deb", &d.name, &d.version);
        described.push(id.clone());
        packages.push(json!({
            "SPDXID": id,
            "name": d.name,
            "versionInfo": d.version,
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared,
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:deb/debian/{}@{}?arch={}", d.name, d.version, d.arch),
            }],
        }));
    }
    let triple = recipe.base.architecture.rust_target();
    let mut crates = BTreeSet::new();
    if !recipe.components.device.is_empty() {
        let features = crate::rootfs::programs::features(recipe);
        crates = rust_crates(workspace, &features, triple).with_context(|| {
            format!(
                "listing the crates of {}",
                crate::rootfs::programs::MULTICALL
            )
        })?;
    }
    for (name, version) in &crates {
        let ours = name.starts_with("aperture-");
        let id = spdx_ref("crate", name, version);
        described.push(id.clone());
        packages.push(json!({
            "SPDXID": id,
            "name": name,
            "versionInfo": version,
            "supplier": if ours { "Organization: Aperture" } else { "NOASSERTION" },
            "downloadLocation": if ours { "NOASSERTION".to_string() } else { format!("https://crates.io/crates/{name}/{version}") },
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": if ours { "Apache-2.0" } else { "NOASSERTION" },
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:cargo/{name}@{version}"),
            }],
        }));
    }
    let relationships: Vec<Value> = described
        .iter()
        .map(|id| json!({ "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": id }))
        .collect();
    let extracted: Vec<Value> = refs_used
        .iter()
        .map(|r| json!({ "licenseId": r, "extractedText": format!("Debian license short name {}: see /usr/share/doc/<package>/copyright in the image", r.trim_start_matches("LicenseRef-Debian-")) }))
        .collect();
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": recipe.build_name(),
        "documentNamespace": format!("https://aperture.invalid/spdx/{}/{}/{}/{}", recipe.product, recipe.board.name(), recipe.version, &recipe.hash()[..16]),
        "creationInfo": { "created": iso8601(source_date), "creators": [format!("Tool: aperture-{}", env!("CARGO_PKG_VERSION"))] },
        "packages": packages,
        "relationships": relationships,
        "hasExtractedLicensingInfos": extracted,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    std::fs::write(dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    Ok(debs.len() + crates.len())
}

fn read(view: &TreeView<'_>, path: &str) -> Result<Option<Vec<u8>>> {
    match view.lookup(Path::new(path), true)? {
        Some(f) => match f.node {
            Node::File(ck) => Ok(Some(view.store().read_file(&ck, 8 << 20)?)),
            Node::Dir { .. } => Ok(None),
        },
        None => Ok(None),
    }
}

/// `YYYY-MM-DDThh:mm:ssZ` of a Unix time (civil-from-days, H. Hinnant's algorithm).
pub fn iso8601(t: u64) -> String {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let s = "Package: a\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\nDescription: x\n more\n\n\
                 Package: b\nStatus: deinstall ok config-files\nVersion: 2\n\nPackage: c\nStatus: install ok installed\nVersion: 3:1.2-1\nArchitecture: all\n";
        let p = parse_dpkg_status(s);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[1],
            DebPackage {
                name: "c".into(),
                version: "3:1.2-1".into(),
                arch: "all".into()
            }
        );
    }

    #[test]
    fn dep5_licenses_and_spdx_ids() {
        let t = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
                 Files: *\nCopyright: x\nLicense: GPL-2+\n\nFiles: lib/*\nLicense: LGPL-2.1+ or BSD-3-clause\n\n\
                 License: GPL-2+\n This program is free software\n";
        let l = dep5_licenses(t);
        assert_eq!(
            l.into_iter().collect::<Vec<_>>(),
            vec!["BSD-3-clause", "GPL-2+", "LGPL-2.1+"]
        );
        assert_eq!(spdx_id("GPL-2+"), "GPL-2.0-or-later");
        assert_eq!(spdx_id("Expat"), "MIT");
        assert_eq!(spdx_id("public domain"), "LicenseRef-Debian-public-domain");
        assert!(dep5_licenses("This is not machine readable.\nLicense: GPL").is_empty());
    }

    #[test]
    fn iso8601_matches_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }
}
