//! External tools in tests: [`for_test`] finds one on `PATH`, or says why the test skips.
//!
//! `cargo xtask test` installs every tool the tiers use before it runs them, and sets
//! `APERTURE_REQUIRE_TOOLS=1`: then a missing tool is a failure, never a quiet skip. Elsewhere
//! (a plain `cargo test` on a workstation) the test prints `SKIPPED: <why>` and returns.

use std::path::PathBuf;

/// The path of `program` on `PATH`, if it is there.
pub fn find(program: &str) -> Option<PathBuf> {
    // Administration tools live in sbin, which a normal user's PATH may lack.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether missing tools must fail tests (`APERTURE_REQUIRE_TOOLS=1`).
pub fn required() -> bool {
    std::env::var("APERTURE_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// For a test that needs `program` (from Debian package `package`): its path; or, when it is
/// missing, a panic under `APERTURE_REQUIRE_TOOLS=1` and otherwise `None` after printing
/// `SKIPPED: <test> ...`.
pub fn for_test(program: &str, package: &str, test: &str) -> Option<PathBuf> {
    if let Some(p) = find(program) {
        return Some(p);
    }
    let why = format!(
        "{test}: `{program}` (Debian package {package}) is not installed; `cargo xtask test` \
         installs it as root"
    );
    if required() {
        panic!("APERTURE_REQUIRE_TOOLS=1 and a tool is missing: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_is_on_path_and_not_what_is_not() {
        assert!(find("sh").is_some());
        assert!(find("aperture-no-such-tool").is_none());
        if !required() {
            assert!(for_test("aperture-no-such-tool", "none", "this test").is_none());
        }
    }
}
