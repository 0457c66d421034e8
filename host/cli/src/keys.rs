//! `keys generate`: a root key, a release key, and the keyring in which the root certifies it.

use crate::args::{KeysCommand, KeysGenerateArgs};
use anyhow::Result;
use aperture_image::keys;

/// Run `keys ...`.
pub fn run(c: &KeysCommand) -> Result<()> {
    match c {
        KeysCommand::Generate(a) => generate(a),
    }
}

fn generate(a: &KeysGenerateArgs) -> Result<()> {
    keys::generate(&a.out, a.valid_days, a.force, false)?;
    let k = keys::load(&a.out)?;
    eprintln!("made keys in {}:", a.out.display());
    eprintln!(
        "  {}  root public key {} (bake into images; keep {} offline)",
        keys::ROOT_PUBLIC,
        k.root.key_id(),
        keys::ROOT_SECRET
    );
    eprintln!(
        "  {}  release key {}, valid {} days",
        keys::RELEASE_SECRET,
        k.release.key_id(),
        a.valid_days
    );
    eprintln!(
        "  {}  the root's certificate of the release key",
        keys::KEYRING
    );
    eprintln!(
        "point a recipe at them with:  [keys] dir = \"{}\"",
        a.out.display()
    );
    Ok(())
}
