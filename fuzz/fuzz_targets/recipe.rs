//! Recipe TOML through `Recipe::load` (include chain, merge, validation, error positions): the
//! input is `recipe.toml` in a scratch folder beside copies of our shared bases, so includes
//! resolve only inside that folder (an input naming any other path is skipped). Never panics;
//! loading is deterministic.
#![no_main]

use std::fs;

use aperture_fuzz::scratch_dir;
use aperture_image::recipe::Recipe;

const BASES: [(&str, &str); 2] = [
    ("common.toml", include_str!("../../recipes/common.toml")),
    ("arm64.toml", include_str!("../../recipes/arm64.toml")),
];
/// The overlay folders the bases name (`../overlays/NAME`), so validation gets past them.
const OVERLAYS: [&str; 5] = ["base", "storage", "hardening", "runtime", "units"];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // An include must be a plain file name, so it stays inside the scratch folder.
    if let Ok(table) = text.parse::<toml::Table>() {
        match table.get("include") {
            Some(toml::Value::String(name)) if !name.contains(['/', '\\']) && name != ".." => {}
            Some(_) => return,
            None => {}
        }
    }
    let root = scratch_dir("recipe");
    let dir = root.join("recipes");
    if !dir.exists() {
        fs::create_dir_all(&dir).expect("scratch folder");
        for (name, base) in BASES {
            fs::write(dir.join(name), base).expect("scratch base");
        }
        for o in OVERLAYS {
            fs::create_dir_all(root.join("overlays").join(o)).expect("scratch overlay");
        }
    }
    let path = dir.join("recipe.toml");
    fs::write(&path, text).expect("scratch recipe");
    match Recipe::load(&path) {
        Ok(recipe) => {
            let again = Recipe::load(&path).expect("the same recipe loads again");
            assert_eq!(again.hash(), recipe.hash());
        }
        Err(e) => drop(e.to_string()),
    }
});
