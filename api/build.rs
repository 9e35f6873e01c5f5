//! Embeds the console's static files (everything under `console/`) in the binary: a table of
//! (path, bytes, content type) and one version, a digest of them all, that is part of every
//! asset's URL. A changed file changes the URL, so browsers may cache assets forever.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut digest = Sha256::new();
    let mut table = String::from("&[\n");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let relative = file
            .strip_prefix(&root)
            .expect("walked under root")
            .to_str()
            .expect("console file names are UTF-8")
            .replace('\\', "/");
        let bytes = std::fs::read(file).expect("console file is readable");
        digest.update((relative.len() as u64).to_le_bytes());
        digest.update(relative.as_bytes());
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(&bytes);
        writeln!(
            table,
            "    ConsoleAsset {{ path: {relative:?}, bytes: include_bytes!({:?}), content_type: {:?} }},",
            file.display().to_string(),
            content_type(&relative)
        )
        .expect("writing to a String");
    }
    table.push(']');
    let version: String = digest.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let code = format!(
        "/// Every file under `api/console/`.\npub(crate) const ASSETS: &[ConsoleAsset] = {table};\n/// A digest of [`ASSETS`], part of every asset URL.\npub(crate) const VERSION: &str = {version:?};\n"
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("console_assets.rs"), code).expect("OUT_DIR is writable");
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("console directory is readable").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// Only the kinds the console ships; anything else is a build error, so nothing is served
/// with a guessed type.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("woff2") => "font/woff2",
        Some("md") => "text/markdown; charset=utf-8",
        _ => panic!("api/console/{path}: no content type for this kind of file"),
    }
}
