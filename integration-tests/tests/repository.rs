//! The repository stands alone: a clone with nothing beside it builds and
//! tests. No tracked file may point at a folder outside the repository (a
//! sibling `shared` folder, a development machine's absolute paths), and the
//! test data is what its README says it is.
//!
//! The forbidden strings are assembled with `concat!`, so that this file,
//! which the check skips anyway, does not spell them out either.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files git tracks (plus new ones not ignored, so a file that is about
/// to be committed is checked too); without git (an unpacked source
/// archive), every file outside `target/` and `.git/`.
fn repository_files(root: &Path) -> Vec<PathBuf> {
    let git = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(root)
        .output();
    match git {
        Ok(out) if out.status.success() => out
            .stdout
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| root.join(String::from_utf8_lossy(name).as_ref()))
            .filter(|path| path.is_file())
            .collect(),
        _ => walk(root),
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != ".git" && name != "node_modules" {
                files.extend(walk(&path));
            }
        } else {
            files.push(path);
        }
    }
    files
}

/// What a file of this repository may not mention: the sibling folder the
/// developers' notes live in, and absolute paths of development machines.
const FORBIDDEN: [&str; 5] = [
    concat!("..", "/shared"),
    concat!("/wo", "rk/"),
    concat!("/ro", "ot/"),
    concat!("/ho", "me/"),
    concat!("/Us", "ers/"),
];

/// The forbidden strings `text` contains (binary files contain none).
fn forbidden_mentions(text: &[u8]) -> Vec<&'static str> {
    if text.contains(&0) {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(text);
    FORBIDDEN.into_iter().filter(|needle| text.contains(needle)).collect()
}

#[test]
fn the_guard_sees_what_it_forbids() {
    let (sibling, machine) = (FORBIDDEN[0], FORBIDDEN[1]);
    assert_eq!(
        forbidden_mentions(format!("see {sibling}/README.md").as_bytes()),
        vec![sibling]
    );
    assert_eq!(
        forbidden_mentions(format!("cd {machine}main && x").as_bytes()),
        vec![machine]
    );
    assert!(forbidden_mentions(b"models/README.md, /tmp/x.gguf").is_empty());
    assert!(
        forbidden_mentions(format!("\0{sibling}").as_bytes()).is_empty(),
        "binary files are skipped"
    );
}

#[test]
fn no_file_points_outside_the_repository() {
    let root = root().canonicalize().unwrap();
    let guard = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/repository.rs")
        .canonicalize()
        .unwrap();
    let files = repository_files(&root);
    assert!(
        files.len() > 50,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| path.canonicalize().ok().as_ref() != Some(&guard))
        .filter_map(|path| {
            let found = forbidden_mentions(&std::fs::read(path).ok()?);
            (!found.is_empty())
                .then(|| format!("{}: {}", path.strip_prefix(&root).unwrap().display(), found.join(", ")))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "files that point outside the repository (copy what they need into it):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn testdata_matches_its_checksums() {
    let dir = root().join("testdata");
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let mut listed = 0;
    for line in sums.lines() {
        let (hash, name) = line
            .split_once("  ")
            .unwrap_or_else(|| panic!("malformed line {line:?}"));
        let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("testdata/{name}: {e}"));
        let actual: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(actual, hash, "testdata/{name} differs from SHA256SUMS");
        listed += 1;
    }
    let on_disk = walk(&dir)
        .iter()
        .filter(|p| !matches!(p.file_name().and_then(|n| n.to_str()), Some("README.md" | "SHA256SUMS")))
        .count();
    assert_eq!(listed, on_disk, "every test data file is listed in SHA256SUMS");
}
