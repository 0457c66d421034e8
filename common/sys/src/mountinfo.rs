//! `/proc/self/mountinfo` (proc(5)): the one parser of the mount table.

use std::path::PathBuf;

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// `major:minor` of the mounted device.
    pub majmin: String,
    /// The root of the mount within its file system.
    pub root: PathBuf,
    /// Where it is mounted (octal escapes decoded).
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub mount_options: String,
    /// File system type.
    pub fstype: String,
    /// The mount source (`/dev/mapper/aperture-data`, `overlay`).
    pub source: String,
    /// Super-block options.
    pub super_options: String,
}

impl MountInfo {
    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.mount_options.split(',').any(|o| o == "ro")
    }
}

/// A line that is not what the kernel writes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("mountinfo line {line} is malformed: {text:?}")]
pub struct MountInfoError {
    /// 1-based line number.
    pub line: usize,
    /// The line.
    pub text: String,
}

/// Parse the mount table: fields up to the optional ones, `-`, then type, source, options.
pub fn parse(text: &str) -> Result<Vec<MountInfo>, MountInfoError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || MountInfoError {
            line: n + 1,
            text: line.to_string(),
        };
        let (head, tail) = line.split_once(" - ").ok_or_else(bad)?;
        let head: Vec<&str> = head.split(' ').collect();
        let tail: Vec<&str> = tail.split(' ').collect();
        if head.len() < 6 || tail.len() < 2 {
            return Err(bad());
        }
        out.push(MountInfo {
            majmin: head[2].to_string(),
            root: PathBuf::from(unescape(head[3])),
            mount_point: PathBuf::from(unescape(head[4])),
            mount_options: head[5].to_string(),
            fstype: unescape(tail[0]),
            source: unescape(tail[1]),
            super_options: tail.get(2).map(|s| s.to_string()).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Decode the `\040`-style octal escapes the kernel uses for space, tab, newline, backslash.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_optional_fields_escapes_and_names_bad_lines() {
        let text = "22 1 254:0 / / ro,relatime shared:1 - erofs /dev/mapper/aperture-root ro\n\
                    30 22 0:25 / /my\\040dir rw,nosuid master:3 unbindable - tmpfs tmpfs rw,size=10k\n";
        let m = parse(text).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].read_only());
        assert_eq!(m[0].source, "/dev/mapper/aperture-root");
        assert_eq!(m[0].majmin, "254:0");
        assert_eq!(m[1].mount_point, PathBuf::from("/my dir"));
        assert_eq!(m[1].fstype, "tmpfs");
        assert!(!m[1].read_only());
        let e = parse("ok\n22 1 254:0 / /\n").unwrap_err();
        assert_eq!(e.line, 1);
    }
}
