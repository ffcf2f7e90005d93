//! Helpers shared by the tokenizer conformance tests: paths and the framing
//! of llama.cpp's vector files.

#![allow(dead_code)]

use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A file of the repository's test data (`testdata/`, see its README).
pub fn testdata(path: &str) -> PathBuf {
    root().join("testdata").join(path)
}

pub fn vocab_file(name: &str) -> PathBuf {
    testdata("vocab").join(name)
}

/// The cases of `<name>.inp` / `<name>.out`: each text is followed by
/// "\n__ggml_vocab_test__\n"; each `.out` line holds the ids of one case.
pub fn vectors(name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = String::from_utf8(read(vocab_file(&format!("{name}.inp")))).unwrap();
    let out = String::from_utf8(read(vocab_file(&format!("{name}.out")))).unwrap();
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    assert_eq!(texts.pop(), Some(""), "{name}.inp must end with the separator");
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{name}: .inp and .out disagree on the number of cases"
    );
    texts.into_iter().map(String::from).zip(ids).collect()
}
pub mod tiny_hf;
