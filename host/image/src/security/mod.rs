//! The security baseline every image gets, generated from the recipe inside the build's layer:
//! the firewall ([`firewall`]), the one network ([`network`]), logins, consoles, SSH and
//! update timers ([`hardening`]), and setuid bits ([`setuid`]). Static hardening (sysctl,
//! module blacklist, resolver and logind settings, the firewall's host-name resolver) lives in
//! `overlays/hardening`.
//!
//! The recipe's policy, with the flows the image adds itself, is written into the image as
//! `/etc/aperture/security.json` ([`Policy`]), so the offline audit ([`crate::audit`]) can
//! judge an image against the policy it was built for, and the appliance can report it.
//!
//! Base files are made safe silently (Debian ships setuid `su`, root with a login shell);
//! an overlay that asks for something unsafe is refused at build time with the fix, or, where
//! the build cannot tell intent, left for the audit to name.

pub mod firewall;
pub mod hardening;
pub mod network;
pub mod setuid;

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::board::BoardSpec;
use crate::recipe::{Addressing, Proto, Recipe, Rule, DHCP_RULE, SSH_RULE};
use crate::rootfs::layer::Layer;

/// Where the policy goes in the image.
pub const POLICY: &str = "etc/aperture/security.json";

/// Version of the policy file's format.
pub const POLICY_FORMAT: u32 = 1;

/// A refusal of the security baseline: the recipe or an overlay asks for something unsafe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// An overlay or program brings a setuid or setgid file the recipe does not allow.
    #[error("/{path} is setuid or setgid (mode {mode:04o}) in this build's layer (from an overlay or a program) and the recipe's setuid_allowlist does not list it; clear the bit in the overlay (chmod u-s,g-s), or if the appliance really needs it add \"/{path}\" to setuid_allowlist")]
    SetuidNotAllowed {
        /// Image path, without the leading slash.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// An overlay provides a file the image generates from the recipe.
    #[error("an overlay provides /{path}, which the image generates from the recipe ({what}); remove it from the overlay and {fix}")]
    GeneratedByImage {
        /// Image path, without the leading slash.
        path: String,
        /// What the file is.
        what: &'static str,
        /// How to get the intended result.
        fix: &'static str,
    },
    /// A debug recipe masks the console login it asks for.
    #[error("this debug recipe masks {unit}, the serial console login `debug = true` provides; remove it from services.mask")]
    ConsoleMasked {
        /// The getty unit.
        unit: String,
    },
}

/// One allowed flow of the effective policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Name (counter `in_<name>`/`out_<name>`, rule comment).
    pub name: String,
    /// Protocol.
    pub proto: Proto,
    /// Destination port (outbound) or local port (inbound).
    pub port: u16,
    /// Outbound destinations (addresses, subnets, host names); empty means any.
    #[serde(default)]
    pub to: Vec<String>,
    /// Added by the image itself (DHCP renewals, a debug image's SSH), not written in the recipe.
    #[serde(default)]
    pub implicit: bool,
}

impl Flow {
    fn from_rule(r: &Rule) -> Flow {
        Flow {
            name: r.name.clone(),
            proto: r.proto,
            port: r.port,
            to: r.to.clone(),
            implicit: false,
        }
    }
}

/// The effective security policy of an image: what the recipe asks for plus what the image
/// adds itself. Written to [`POLICY`] and read back by the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// [`POLICY_FORMAT`].
    pub format: u32,
    /// Debug image: a root login on the serial console, debug tools tolerated.
    pub debug: bool,
    /// The board's serial console (its getty is the only one, and only when debugging).
    pub console: String,
    /// An SSH server with key logins (debug images only).
    pub ssh: bool,
    /// Files allowed to be setuid or setgid.
    pub setuid_allowlist: Vec<String>,
    /// Allowed inbound flows.
    pub inbound: Vec<Flow>,
    /// Allowed outbound flows.
    pub outbound: Vec<Flow>,
}

impl Policy {
    /// The effective policy of a recipe.
    pub fn from_recipe(recipe: &Recipe) -> Policy {
        let mut outbound: Vec<Flow> = recipe
            .network
            .outbound
            .iter()
            .map(Flow::from_rule)
            .collect();
        if recipe.network.addressing == Addressing::Dhcp {
            outbound.push(Flow {
                name: DHCP_RULE.into(),
                proto: Proto::Udp,
                port: 67,
                to: vec![],
                implicit: true,
            });
        }
        let mut inbound: Vec<Flow> = recipe.network.inbound.iter().map(Flow::from_rule).collect();
        if recipe.ssh.is_some() {
            inbound.push(Flow {
                name: SSH_RULE.into(),
                proto: Proto::Tcp,
                port: 22,
                to: vec![],
                implicit: true,
            });
        }
        Policy {
            format: POLICY_FORMAT,
            debug: recipe.debug,
            console: BoardSpec::of(recipe.board).console.to_string(),
            ssh: recipe.ssh.is_some(),
            setuid_allowlist: recipe.setuid_allowlist.clone(),
            inbound,
            outbound,
        }
    }

    /// The policy as the image stores it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// What the baseline did, for the build log.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Inbound and outbound flows.
    pub flows: (usize, usize),
    /// Base files whose setuid or setgid bit was cleared.
    pub setuid_cleared: Vec<String>,
    /// Allowlisted setuid files kept.
    pub setuid_kept: Vec<String>,
}

impl Summary {
    /// One line for the build log.
    pub fn note(&self) -> String {
        format!(
            "firewall: {} inbound and {} outbound flows; setuid/setgid cleared on {} base files{}",
            self.flows.0,
            self.flows.1,
            self.setuid_cleared.len(),
            if self.setuid_kept.is_empty() {
                String::new()
            } else {
                format!(", kept on {}", self.setuid_kept.join(" "))
            }
        )
    }
}

/// Whether this build's layer (overlays, programs, generated files so far) holds `rel`.
pub fn in_layer(layer: &Layer<'_>, rel: &Path) -> Result<bool> {
    let p = layer.canonical(rel)?;
    Ok(layer.dir().join(p).symlink_metadata().is_ok())
}

/// Apply the baseline to a build's layer. Runs after overlays, units and generated files, so
/// its files win and its setuid scan sees everything the layer adds.
pub fn apply(layer: &Layer<'_>, recipe: &Recipe) -> Result<Summary> {
    let policy = Policy::from_recipe(recipe);
    let net = network::files(&recipe.network);
    const FLOWS: &str = "describe the flows in [[network.inbound]] and [[network.outbound]]";
    let mut generated: Vec<(String, &'static str, &'static str)> = vec![
        (firewall::CONF.into(), "the firewall", FLOWS),
        (firewall::HOSTS.into(), "the firewall's host names", FLOWS),
        (
            POLICY.into(),
            "the security policy",
            "set the policy in the recipe",
        ),
    ];
    for f in &net {
        generated.push((
            f.path.clone(),
            "the one network",
            "set [network] mode, address, gateway, dns and interfaces",
        ));
    }
    for (path, what, fix) in generated {
        if in_layer(layer, Path::new(&path))? {
            return Err(SecurityError::GeneratedByImage { path, what, fix }.into());
        }
    }
    for f in &net {
        layer.write(Path::new(&f.path), f.text.as_bytes(), 0o644)?;
    }
    layer.write(
        Path::new(firewall::CONF),
        firewall::ruleset(&policy).as_bytes(),
        0o644,
    )?;
    layer.write(
        Path::new(firewall::HOSTS),
        firewall::host_list(&policy).as_bytes(),
        0o644,
    )?;
    layer.write(Path::new(POLICY), &policy.to_json(), 0o644)?;
    hardening::apply(layer, recipe, &policy)?;
    let (setuid_cleared, setuid_kept) = setuid::enforce(layer, &policy.setuid_allowlist)?;
    Ok(Summary {
        flows: (policy.inbound.len(), policy.outbound.len()),
        setuid_cleared,
        setuid_kept,
    })
}
