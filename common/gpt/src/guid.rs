//! `Guid`: a 128-bit GUID, its text form, its mixed-endian GPT disk form, and derivation of
//! reproducible GUIDs from names.
//!
//! UEFI 2.10 section 5.3.3 / appendix A: on disk the first three fields (`time_low`,
//! `time_mid`, `time_hi_and_version`) are little-endian and the last eight bytes are stored as
//! they read. [`Guid`] keeps the bytes in text order (RFC 4122 / RFC 9562 network order) so
//! that `Display`, `FromStr` and `const` construction are plain, and converts at the disk edge
//! with [`Guid::to_gpt_bytes`] / [`Guid::from_gpt_bytes`].

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::GptError;

/// A GUID, held in text (big-endian, RFC 4122) byte order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid([u8; 16]);

impl Guid {
    /// The nil GUID (all zero). As a partition type it marks an unused entry.
    pub const NIL: Guid = Guid([0; 16]);

    /// EFI system partition.
    pub const EFI_SYSTEM: Guid = Guid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
    /// Linux filesystem data.
    pub const LINUX_FILESYSTEM: Guid = Guid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);
    /// Linux root (x86-64), from the Discoverable Partitions Specification.
    pub const LINUX_ROOT_X86_64: Guid = Guid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709);
    /// Linux root (arm64 / AArch64), from the Discoverable Partitions Specification.
    pub const LINUX_ROOT_ARM64: Guid = Guid::from_u128(0xB921B045_1DF0_41C3_AF44_4C6F280D3FAE);
    /// Linux LUKS.
    pub const LINUX_LUKS: Guid = Guid::from_u128(0xCA7D7CCB_63ED_4C53_861C_1742536059CC);
    /// Microsoft basic data (also what NVIDIA's Jetson layouts use for most partitions).
    pub const MICROSOFT_BASIC_DATA: Guid = Guid::from_u128(0xEBD0A0A2_B9E5_4433_87C0_68B6B72699C7);

    /// A GUID from its 128-bit value as written in text, e.g.
    /// `Guid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B)`.
    pub const fn from_u128(value: u128) -> Guid {
        Guid(value.to_be_bytes())
    }

    /// A GUID from 16 bytes in text (RFC 4122) order.
    pub const fn from_bytes(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }

    /// The 16 bytes in text (RFC 4122) order.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether this is the nil GUID.
    pub fn is_nil(&self) -> bool {
        *self == Guid::NIL
    }

    /// The 16 bytes as GPT stores them: first three fields little-endian, the rest as is.
    pub fn to_gpt_bytes(&self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }

    /// A GUID from the 16 bytes GPT stores (the inverse of [`Guid::to_gpt_bytes`]).
    pub fn from_gpt_bytes(disk: [u8; 16]) -> Guid {
        // The byte swap is its own inverse.
        Guid(Guid(disk).to_gpt_bytes())
    }

    /// A reproducible GUID for `name` within `namespace` (for example a recipe hash and a
    /// partition label): the first 16 bytes of sha256(`namespace` || 0x00 || `name`), with the
    /// RFC 4122 version nibble set to 4 and the variant bits to `10`, so tools that check the
    /// form accept it. The same inputs give the same GUID on every build, which is what makes
    /// disk images byte-for-byte reproducible.
    pub fn derive(namespace: &str, name: &str) -> Guid {
        let mut hasher = Sha256::new();
        hasher.update(namespace.as_bytes());
        hasher.update([0u8]);
        hasher.update(name.as_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        Guid(bytes)
    }
}

impl fmt::Display for Guid {
    /// Lower-case `8-4-4-4-12` hex, the form `blkid`, systemd and udev use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = GptError;

    /// Parses `8-4-4-4-12` hex in either case, optionally in braces (`{...}`, as Windows and
    /// some firmware tools print GUIDs).
    fn from_str(text: &str) -> Result<Guid, GptError> {
        let bad = || GptError::InvalidGuid {
            text: text.to_string(),
        };
        let inner = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        let raw = inner.as_bytes();
        if raw.len() != 36 {
            return Err(bad());
        }
        let mut bytes = [0u8; 16];
        let mut out = 0;
        let mut i = 0;
        while i < raw.len() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if raw[i] != b'-' {
                    return Err(bad());
                }
                i += 1;
                continue;
            }
            let hi = hex_value(raw[i]).ok_or_else(bad)?;
            let lo = hex_value(*raw.get(i + 1).ok_or_else(bad)?).ok_or_else(bad)?;
            bytes[out] = (hi << 4) | lo;
            out += 1;
            i += 2;
        }
        Ok(Guid(bytes))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_case() {
        let g: Guid = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".parse().unwrap();
        assert_eq!(g, Guid::EFI_SYSTEM);
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(
            "{c12a7328-f81f-11d2-ba4b-00a0c93ec93b}"
                .parse::<Guid>()
                .unwrap(),
            g
        );
    }

    #[test]
    fn rejects_malformed_text() {
        for text in [
            "",
            "c12a7328f81f11d2ba4b00a0c93ec93b",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93bb",
            "c12a7328_f81f-11d2-ba4b-00a0c93ec93b",
            "g12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec9\u{e9}",
        ] {
            let err = text.parse::<Guid>().unwrap_err();
            assert!(matches!(err, GptError::InvalidGuid { .. }), "{text}: {err}");
        }
    }

    #[test]
    fn gpt_bytes_are_mixed_endian() {
        // The ESP type GUID as it appears in every GPT entry (UEFI spec, appendix A example).
        let disk = [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B,
        ];
        assert_eq!(Guid::EFI_SYSTEM.to_gpt_bytes(), disk);
        assert_eq!(Guid::from_gpt_bytes(disk), Guid::EFI_SYSTEM);
    }

    #[test]
    fn derive_is_stable_and_well_formed() {
        let a = Guid::derive("recipe:qemu-x86_64", "rootfs_a");
        assert_eq!(a, Guid::derive("recipe:qemu-x86_64", "rootfs_a"));
        assert_ne!(a, Guid::derive("recipe:qemu-x86_64", "rootfs_b"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(Guid::derive("ab", "c"), Guid::derive("a", "bc"));
        let text = a.to_string();
        assert_eq!(&text[14..15], "4", "version nibble in {text}");
        assert!(
            matches!(&text[19..20], "8" | "9" | "a" | "b"),
            "variant in {text}"
        );
        // Pinned, so a change to the derivation (which would change every image) is noticed.
        // sha256("aperture\0esp") = ce4a80ed c83e cd59 c1b7 732a026dcfb8...
        assert_eq!(
            Guid::derive("aperture", "esp").to_string(),
            "ce4a80ed-c83e-4d59-81b7-732a026dcfb8"
        );
    }
}
