//! Enabling and masking systemd units offline, the way `systemctl enable` would, but against
//! the layered image (base commit plus this build's layer) rather than a full checkout.
//!
//! Follows systemd.unit(5) "[Install] Section Options": `WantedBy=`/`RequiredBy=` become
//! `.wants/`/`.requires/` symlinks, `Alias=` a symlink beside the unit, `Also=` enables more
//! units; a template instance (`getty@tty1.service`) uses the template file `getty@.service`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::layer::Layer;

/// Folders searched for unit files, in systemd's order of precedence.
const UNIT_DIRS: [&str; 3] = [
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// The [Install] section of a unit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Install {
    /// `WantedBy=`.
    pub wanted_by: Vec<String>,
    /// `RequiredBy=`.
    pub required_by: Vec<String>,
    /// `Alias=`.
    pub alias: Vec<String>,
    /// `Also=`.
    pub also: Vec<String>,
    /// `DefaultInstance=`.
    pub default_instance: Option<String>,
}

/// Parse the [Install] section of a unit file.
pub fn parse_install(text: &str) -> Install {
    let mut inst = Install::default();
    let mut in_install = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let vals = v.split_whitespace().map(str::to_string);
        match k.trim() {
            "WantedBy" => inst.wanted_by.extend(vals),
            "RequiredBy" => inst.required_by.extend(vals),
            "Alias" => inst.alias.extend(vals),
            "Also" => inst.also.extend(vals),
            "DefaultInstance" => inst.default_instance = Some(v.trim().to_string()),
            _ => {}
        }
    }
    inst
}

/// The file that defines `unit` (the template for an instance) and its image path.
fn find_unit(layer: &Layer<'_>, unit: &str) -> Result<Option<(PathBuf, String)>> {
    let file = match unit.split_once('@') {
        Some((prefix, rest)) if !rest.starts_with('.') => {
            let ext = rest.rsplit_once('.').map(|(_, e)| e).unwrap_or("service");
            format!("{prefix}@.{ext}")
        }
        _ => unit.to_string(),
    };
    for d in UNIT_DIRS {
        let p = Path::new(d).join(&file);
        if let Some(data) = layer.read(&p)? {
            return Ok(Some((
                Path::new("/").join(layer.canonical(&p)?),
                String::from_utf8_lossy(&data).into_owned(),
            )));
        }
    }
    Ok(None)
}

/// Enable a unit (and whatever its `Also=` names).
pub fn enable(layer: &Layer<'_>, unit: &str) -> Result<()> {
    enable_inner(layer, unit, 0)
}

fn enable_inner(layer: &Layer<'_>, unit: &str, depth: u32) -> Result<()> {
    if depth > 8 {
        bail!("`Also=` chain too deep while enabling {unit}");
    }
    let Some((path, text)) = find_unit(layer, unit)? else {
        bail!("cannot enable `{unit}`: no unit file in /etc/systemd/system or /usr/lib/systemd/system; add it with an overlay or install the package that ships it");
    };
    let inst = parse_install(&text);
    if inst.wanted_by.is_empty()
        && inst.required_by.is_empty()
        && inst.alias.is_empty()
        && inst.also.is_empty()
    {
        bail!("cannot enable `{unit}`: its [Install] section is empty ({}), so systemd would not start it; add WantedBy= to it", path.display());
    }
    let target = path.to_string_lossy().into_owned();
    for (list, suffix) in [(&inst.wanted_by, "wants"), (&inst.required_by, "requires")] {
        for t in list {
            let link = PathBuf::from(format!("etc/systemd/system/{t}.{suffix}/{unit}"));
            if !layer.exists(&link)? {
                layer.symlink(&link, &target)?;
            }
        }
    }
    for a in &inst.alias {
        let link = PathBuf::from(format!("etc/systemd/system/{a}"));
        if !layer.exists(&link)? {
            layer.symlink(&link, &target)?;
        }
    }
    for also in &inst.also {
        enable_inner(layer, also, depth + 1)?;
    }
    Ok(())
}

/// Mask a unit: a `/dev/null` symlink in /etc/systemd/system.
pub fn mask(layer: &Layer<'_>, unit: &str) -> Result<()> {
    layer.symlink(
        &PathBuf::from(format!("etc/systemd/system/{unit}")),
        "/dev/null",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_install_sections() {
        let text = "[Unit]\nDescription=x\nWantedBy=not-here.target\n[Install]\nWantedBy=multi-user.target  sockets.target\n# WantedBy=commented.target\nAlias=dbus-org.example.service\nAlso=y.socket\n";
        let i = parse_install(text);
        assert_eq!(i.wanted_by, vec!["multi-user.target", "sockets.target"]);
        assert_eq!(i.alias, vec!["dbus-org.example.service"]);
        assert_eq!(i.also, vec!["y.socket"]);
        assert!(i.required_by.is_empty());
    }
}
