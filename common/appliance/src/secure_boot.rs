//! The firmware's Secure Boot state, read from efivarfs: the updater reports it, and storage
//! seals disk keys to the boot chain only while it is on (issue 18).

use serde::{Deserialize, Serialize};

/// The firmware's Secure Boot state, as UEFI 2.10 section 3.3 defines its global variables:
/// `SecureBoot` is 1 when the firmware checks every image it starts against db; `SetupMode`
/// is 1 while no platform key is enrolled (then anything may rewrite the keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecureBoot {
    /// Enforced: only images signed by the enrolled db start.
    On,
    /// Keys enrolled, checking turned off.
    Off,
    /// No platform key: setup mode, nothing checked.
    Setup,
    /// No UEFI variables to read (not booted through UEFI, or efivarfs not mounted).
    #[default]
    Unknown,
}

impl SecureBoot {
    /// Read the state from efivarfs at `efivars`.
    pub fn read(efivars: &std::path::Path) -> SecureBoot {
        // EFI_GLOBAL_VARIABLE; efivarfs prefixes the value with its 4-byte attributes.
        const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
        let var = |name: &str| {
            std::fs::read(efivars.join(format!("{name}-{GLOBAL}")))
                .ok()
                .and_then(|b| b.get(4).copied())
        };
        match (var("SecureBoot"), var("SetupMode")) {
            (Some(1), _) => SecureBoot::On,
            (_, Some(1)) => SecureBoot::Setup,
            (Some(0), _) => SecureBoot::Off,
            _ => SecureBoot::Unknown,
        }
    }

    /// `on`, `off`, `setup`, `unknown`.
    pub fn word(self) -> &'static str {
        match self {
            SecureBoot::On => "on",
            SecureBoot::Off => "off",
            SecureBoot::Setup => "setup",
            SecureBoot::Unknown => "unknown",
        }
    }
}
