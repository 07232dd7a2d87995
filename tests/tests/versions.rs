//! One version everywhere: the workspace's (which core, the CLI, the Python wheel and the
//! Node addon read) in every file that repeats it, and a CHANGELOG.md section for it.
//! `scripts/set-version.sh X.Y.Z` sets them all.

use std::path::Path;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn json_version(file: &str) -> String {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["version"]
        .as_str()
        .unwrap_or_else(|| panic!("{file} has no version"))
        .to_string()
}

#[test]
fn every_package_has_the_workspace_version() {
    let want = env!("CARGO_PKG_VERSION");
    let wasm_toml = std::fs::read_to_string(repo().join("bindings-wasm/Cargo.toml")).unwrap();
    let wasm = wasm_toml
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .map(|v| v.trim_end_matches('"'));
    assert_eq!(wasm, Some(want), "bindings-wasm/Cargo.toml");
    let mut files = vec![
        "bindings-node/package.json".to_string(),
        "bindings-wasm/package.json".to_string(),
    ];
    for e in std::fs::read_dir(repo().join("bindings-node/npm")).unwrap() {
        files.push(format!(
            "bindings-node/npm/{}/package.json",
            e.unwrap().file_name().to_string_lossy()
        ));
    }
    for f in &files {
        assert_eq!(json_version(f), want, "{f}");
    }
    let pyproject = std::fs::read_to_string(repo().join("bindings-python/pyproject.toml")).unwrap();
    assert!(
        pyproject.contains("dynamic = [\"version\"]"),
        "the wheel takes its version from Cargo.toml"
    );
    let changelog = std::fs::read_to_string(repo().join("CHANGELOG.md")).unwrap();
    assert!(
        changelog.contains(&format!("## {want}")),
        "CHANGELOG.md has no section for {want}"
    );
}
