//! The few ustar header operations bundles need: build one deterministic header, and parse one
//! strictly.
//!
//! Parsing is done here instead of with the tar crate because the tar crate quietly applies pax
//! and GNU long-name records and tolerates damaged archives, and a bundle reader must see and
//! refuse every such thing. POSIX.1-1988 ustar layout (offsets in bytes): name 0..100, mode,
//! uid, gid, size 124..136, mtime, chksum 148..156, typeflag 156, linkname, magic 257..263
//! ("ustar\0"), version 263..265 ("00"), uname, gname, devmajor, devminor, prefix 345..500.

use crate::TrustError;

/// Tar block size.
pub(crate) const BLOCK: usize = 512;

/// A parsed header block.
#[derive(Debug)]
pub(crate) enum Block {
    /// An all-zero block: the end-of-archive marker.
    End,
    /// A regular-file entry with a plain name.
    Entry {
        /// The plain entry name.
        name: String,
        /// Data size in bytes (untrusted).
        size: u64,
    },
}

/// Parses and checks a header block: checksum, ustar magic, a plain file name, regular file.
pub(crate) fn parse(block: &[u8; BLOCK]) -> Result<Block, TrustError> {
    parse_named(block, check_plain_name)
}

/// [`parse`], but the name may be a relative path of plain names joined by '/' (model
/// bundles keep a model's `golden/` folder); the caller still matches it against its manifest.
pub(crate) fn parse_relative(block: &[u8; BLOCK]) -> Result<Block, TrustError> {
    parse_named(block, check_relative_name)
}

fn parse_named(
    block: &[u8; BLOCK],
    check_name: fn(&[u8]) -> Result<(), TrustError>,
) -> Result<Block, TrustError> {
    if block.iter().all(|b| *b == 0) {
        return Ok(Block::End);
    }
    let stored = parse_octal(&block[148..156])
        .ok_or_else(|| bad_header("checksum field is not a number"))?;
    let computed: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if stored != computed {
        return Err(bad_header(
            "checksum does not match; the stream is corrupted or is not a tar archive",
        ));
    }
    if &block[257..263] != b"ustar\0" || &block[263..265] != b"00" {
        return Err(bad_header(
            "not a POSIX ustar header; bundles use ustar only",
        ));
    }
    let name = full_name(block);
    check_name(&name)?;
    let name = String::from_utf8(name).map_err(|e| TrustError::UnsafeEntryPath {
        entry: String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })?;
    let typeflag = block[156];
    if !matches!(typeflag, b'0' | b'\0') {
        return Err(TrustError::EntryTypeNotAllowed {
            entry: name,
            kind: kind_name(typeflag),
        });
    }
    let size =
        parse_size(&block[124..136]).ok_or_else(|| bad_header("size field is not a number"))?;
    Ok(Block::Entry { name, size })
}

/// A deterministic header for a regular file (tar crate for the field encodings).
pub(crate) fn build(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK], TrustError> {
    check_plain_name(name.as_bytes())?;
    build_named(name, size, mtime)
}

/// [`build`] for a relative path of plain names joined by '/' (see [`parse_relative`]).
pub(crate) fn build_relative(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK], TrustError> {
    check_relative_name(name.as_bytes())?;
    build_named(name, size, mtime)
}

fn build_named(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK], TrustError> {
    if name.len() > 100 {
        return Err(TrustError::malformed(
            format!("bundle entry {name:?}"),
            "name longer than the 100 bytes of a ustar name field; shorten the artifact name",
        ));
    }
    let mut h = tar::Header::new_ustar();
    h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_device_major(0)
        .and_then(|()| h.set_device_minor(0))
        .map_err(|e| TrustError::malformed("bundle entry header", e))?;
    h.set_cksum();
    Ok(*h.as_bytes())
}

/// Bytes of zero padding after `size` bytes of data.
pub(crate) fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// `prefix/name`, or `name` when the prefix is empty.
fn full_name(block: &[u8; BLOCK]) -> Vec<u8> {
    let name = until_nul(&block[0..100]);
    let prefix = until_nul(&block[345..500]);
    if prefix.is_empty() {
        name.to_vec()
    } else {
        [prefix, b"/", name].concat()
    }
}

fn until_nul(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

/// A plain file name: not empty, not "." or "..", no '/' or '\\' (so never absolute).
fn check_plain_name(name: &[u8]) -> Result<(), TrustError> {
    let plain = !name.is_empty()
        && name != b"."
        && name != b".."
        && !name.iter().any(|b| matches!(b, b'/' | b'\\'));
    if plain {
        Ok(())
    } else {
        Err(TrustError::UnsafeEntryPath {
            entry: String::from_utf8_lossy(name).into_owned(),
        })
    }
}

/// Plain names joined by single '/': not absolute, no empty, "." or ".." component.
fn check_relative_name(name: &[u8]) -> Result<(), TrustError> {
    if name.is_empty() {
        return check_plain_name(name);
    }
    for part in name.split(|b| *b == b'/') {
        check_plain_name(part).map_err(|_| TrustError::UnsafeEntryPath {
            entry: String::from_utf8_lossy(name).into_owned(),
        })?;
    }
    Ok(())
}

fn kind_name(typeflag: u8) -> String {
    match typeflag {
        b'1' => "hard link".into(),
        b'2' => "symlink".into(),
        b'3' => "character device".into(),
        b'4' => "block device".into(),
        b'5' => "directory".into(),
        b'6' => "fifo".into(),
        b'7' => "contiguous file".into(),
        b'x' | b'g' => "pax extended header".into(),
        b'L' | b'K' => "GNU long name record".into(),
        other => format!("entry of type {:?}", char::from(other)),
    }
}

/// Octal number, optionally surrounded by spaces and NULs (as tar writers pad).
fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = until_nul(field);
    let digits = text
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| **b != b' ');
    let mut value: u64 = 0;
    let mut any = false;
    for d in digits {
        if !(b'0'..=b'7').contains(d) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// The size field: octal, or GNU base-256 (first byte 0x80) for sizes of 8 GiB and more.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] == 0x80 {
        let (high, low) = field[1..].split_at(field.len() - 1 - 8);
        if high.iter().any(|b| *b != 0) {
            return None;
        }
        return Some(u64::from_be_bytes(low.try_into().ok()?));
    }
    parse_octal(field)
}

fn bad_header(reason: &str) -> TrustError {
    TrustError::malformed("bundle entry header", reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_then_parse() {
        let h = build("rootfs.img.zst", 12345, 1_700_000_000).unwrap();
        match parse(&h).unwrap() {
            Block::Entry { name, size } => {
                assert_eq!((name.as_str(), size), ("rootfs.img.zst", 12345))
            }
            Block::End => panic!("not an entry"),
        }
        assert!(matches!(parse(&[0u8; BLOCK]).unwrap(), Block::End));
    }

    #[test]
    fn build_is_deterministic_and_standard() {
        let h = build("a", 1, 7).unwrap();
        assert_eq!(h, build("a", 1, 7).unwrap());
        let th = tar::Header::from_byte_slice(&h);
        assert_eq!(th.mode().unwrap(), 0o644);
        assert_eq!(th.uid().unwrap(), 0);
        assert_eq!(th.mtime().unwrap(), 7);
        assert_eq!(th.username().unwrap(), Some(""));
        assert_eq!(th.entry_type(), tar::EntryType::Regular);
    }

    #[test]
    fn large_sizes_use_base_256() {
        let size = 20 * 1024 * 1024 * 1024u64;
        let h = build("big.zst", size, 0).unwrap();
        assert_eq!(h[124], 0x80);
        match parse(&h).unwrap() {
            Block::Entry { size: s, .. } => assert_eq!(s, size),
            Block::End => panic!(),
        }
    }

    #[test]
    fn corrupted_checksum_is_malformed() {
        let mut h = build("a", 1, 0).unwrap();
        h[0] = b'b';
        assert!(matches!(parse(&h), Err(TrustError::Malformed { .. })));
    }

    #[test]
    fn build_refuses_unsafe_and_long_names() {
        assert!(build("../x", 0, 0).is_err());
        assert!(build(&"x".repeat(101), 0, 0).is_err());
        build(&"x".repeat(100), 0, 0).unwrap();
    }

    #[test]
    fn relative_names_are_plain_names_joined_by_slashes() {
        let h = build_relative("golden/reference.json", 3, 0).unwrap();
        match parse_relative(&h).unwrap() {
            Block::Entry { name, .. } => assert_eq!(name, "golden/reference.json"),
            Block::End => panic!(),
        }
        assert!(matches!(parse(&h), Err(TrustError::UnsafeEntryPath { .. })));
        for bad in ["/etc/passwd", "../x", "a/../b", "a//b", "a/", "./a", "a\\b"] {
            assert!(build_relative(bad, 0, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn octal_parsing() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"  644 \0"), Some(0o644));
        assert_eq!(parse_octal(b"\0\0\0"), None);
        assert_eq!(parse_octal(b"0009"), None);
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
    }
}
