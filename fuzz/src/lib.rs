//! What Aperture's fuzz targets share: the snakeoil keys signed inputs are checked against,
//! the framing that splits one fuzz input into several files, a scratch folder for parsers
//! that read paths, and an allocator that turns an allocation sized by untrusted bytes into a
//! crash.
//!
//! The targets live in `fuzz_targets/`, one per parser, each a few lines that call the owning
//! crate's public entry point and assert what a parser must keep: it never panics, what it
//! accepts its own writer re-serializes into something it accepts again as equal, and its size
//! limits hold. `examples/make_seeds.rs` regenerates the seed corpus in `seeds/` with our own
//! writers. `cargo xtask fuzz` builds and runs them all.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The keys signed fuzz inputs are checked against. Test keys only: their secrets are
/// constants, so anything they sign is worthless outside the fuzz targets and the seeds.
pub mod snakeoil {
    use aperture_trust::keys::{KeyringEntry, SignedKeyring, SigningKeyPair};

    /// The time every signed input is judged at (2027-01-15); the release key expires later.
    pub const NOW: u64 = 1_800_000_000;
    /// When the snakeoil release key expires.
    pub const NOT_AFTER: u64 = NOW + 10 * 365 * 86_400;

    /// The root key the appliance would bake in.
    pub fn root() -> SigningKeyPair {
        SigningKeyPair::from_secret_bytes(&[0x5a; 32])
    }

    /// The release key the root certifies.
    pub fn release() -> SigningKeyPair {
        SigningKeyPair::from_secret_bytes(&[0xa5; 32])
    }

    /// The root-signed keyring listing [`release`].
    pub fn keyring() -> SignedKeyring {
        let entry = KeyringEntry::new(release().public(), "release-snakeoil", NOT_AFTER);
        // A fixed, valid keyring: failing here is a bug in the trust crate, not in an input.
        SignedKeyring::create(&root(), vec![entry]).expect("the snakeoil keyring signs")
    }
}

/// Splits one fuzz input into `N` files: each is a little-endian `u16` length and that many
/// bytes; a length past the end takes what is left. Files after the end of the input are
/// `None` (absent), so a mutation can drop a file as well as change it.
pub fn parts<const N: usize>(mut data: &[u8]) -> [Option<&[u8]>; N] {
    let mut out = [None; N];
    for slot in &mut out {
        let [a, b, rest @ ..] = data else { break };
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        *slot = Some(&rest[..len]);
        data = &rest[len..];
    }
    out
}

/// The inverse of [`parts`], for seeds: absent files end the input, so only trailing ones may
/// be `None`. Panics on a file over 64 KiB (a seed, not an input).
pub fn encode_parts(files: &[Option<&[u8]>]) -> Vec<u8> {
    let mut out = Vec::new();
    for file in files.iter().map_while(|f| *f) {
        let len = u16::try_from(file.len()).expect("a seed file is at most 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(file);
    }
    out
}

/// A folder of this process's own, made once, for parsers that take a path. libFuzzer runs
/// one input at a time per process, so a target may reuse the files in it.
pub fn scratch_dir(name: &str) -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("aperture-fuzz-{name}-{}", std::process::id()));
        // Left over from a crashed run with the same pid: start clean.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the temporary folder is writable");
        dir
    })
}

/// The largest single allocation any parser may make while reading a fuzz input. The largest
/// legitimate ones are a LUKS2 header copy (4 MiB), the state store's medium (4 MiB) and a zstd
/// window (16 MiB); an allocation sized by an untrusted length field goes far past this.
pub const MAX_ALLOCATION: usize = 64 << 20;

/// The system allocator, refusing (with an abort that libFuzzer reports as a crash, input
/// saved) any single allocation over [`MAX_ALLOCATION`]. Works with `--sanitizer none`, where
/// libFuzzer's own `-malloc_limit_mb` has no malloc hooks to work with.
pub struct LimitedAllocator;

// SAFETY: every method forwards to `System` unchanged after a size check; `System` upholds
// the `GlobalAlloc` contract.
unsafe impl GlobalAlloc for LimitedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check_size(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check_size(size: usize) {
    if size > MAX_ALLOCATION {
        // No allocation from here on: write a fixed message and abort.
        use std::io::Write;
        let _ = std::io::stderr()
            .write_all(b"aperture-fuzz: an allocation exceeded MAX_ALLOCATION (64 MiB)\n");
        std::process::abort();
    }
}

#[global_allocator]
static ALLOCATOR: LimitedAllocator = LimitedAllocator;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_tolerate_short_input() {
        let files: [Option<&[u8]>; 3] = [Some(b"ab"), Some(b""), Some(b"xyz")];
        assert_eq!(parts::<3>(&encode_parts(&files)), files);
        assert_eq!(parts::<4>(&encode_parts(&files))[3], None);
        assert_eq!(parts::<2>(&[5, 0, b'a']), [Some(&b"a"[..]), None]);
        assert_eq!(parts::<1>(&[]), [None]);
    }
}
