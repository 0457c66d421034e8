//! OTA update bundles: write them on the build host, read them on the appliance, streaming.
//!
//! A bundle is an uncompressed POSIX ustar archive with exactly these entries, in this order:
//!
//! 1. `manifest.json` (at most 1 MiB)
//! 2. `manifest.sig` (at most 64 KiB)
//! 3. `<artifact name>.zst` for every artifact with a `payload`, in manifest order: the zstd
//!    encoding of the artifact, exactly `payload.size` bytes hashing to `payload.sha256`,
//!    decoding to exactly `artifact.size` bytes hashing to `artifact.sha256`,
//!
//! then the two zero blocks that end a tar archive. Headers are deterministic: mode 0644, uid
//! and gid 0, empty user and group names, mtime `build.source_date_epoch`; no tar extensions
//! (pax, GNU long names) are written or accepted.
//!
//! The reader ([`BundleReader`]) needs only `Read`, so it can consume an HTTPS body directly.
//! It verifies the signature chain before it reads any payload byte, checks every entry's
//! name, type, position and size against the manifest, and hashes each payload (encoded and
//! decoded) while it streams; nothing is buffered or allocated by an untrusted size.
//!
//! The payload encoding is an enum in the manifest, so a later format can add delta payloads;
//! an appliance that does not know an encoding refuses the manifest before reading payloads.

mod reader;
pub(crate) mod ustar;
mod writer;

pub use reader::{BundleReader, HeaderBytes};
pub use writer::{compress_payload, write_bundle, PayloadSource};

/// Name of the first entry.
pub const MANIFEST_ENTRY: &str = "manifest.json";
/// Name of the second entry.
pub const SIGNATURE_ENTRY: &str = "manifest.sig";
/// Largest `manifest.json` accepted, bytes.
pub const MAX_MANIFEST_SIZE: u64 = 1024 * 1024;
/// Largest `manifest.sig` accepted, bytes.
pub const MAX_SIGNATURE_SIZE: u64 = 64 * 1024;
/// Largest zstd window a payload may need (log2): 16 MiB, enough for levels up to 19.
/// Bounds the decoder's memory whatever a frame header asks for.
pub const MAX_WINDOW_LOG: u32 = 24;
