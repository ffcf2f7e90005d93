//! What a new user meets in the first hour: `icllm sim` speaking the
//! canister's own candid interface, user errors as one line without a
//! backtrace, and a missing wasm32 target named with the command that adds it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn icllm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_icllm"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("icllm runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn model() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/stories260Ktok512.gguf")
}

#[test]
fn sim_types_arguments_and_names_fields_from_the_wasm_interface() {
    let wasm = icllm::local_canister::build_wasm().expect("the canister wasm builds");
    let out = icllm(
        &[
            "sim",
            "--wasm",
            wasm.to_str().unwrap(),
            "--query",
            "health ()",
            "--call",
            "start_job (record { prompt = \"Hi\"; max_tokens = 4; temperature = opt 0.0 })",
            "--call",
            "no_such_method ()",
        ],
        &[],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    // Field names, not hashes.
    assert!(lines[0].contains("model_state = \""), "{}", lines[0]);
    assert!(lines[0].contains("heap_bytes = "), "{}", lines[0]);
    assert!(!lines[0].contains("_724"), "{}", lines[0]);
    // The request decodes (no type annotations needed); with no model
    // uploaded the canister answers with its named error variant.
    assert!(
        lines[1].starts_with("(variant { Err = variant { ModelNotReady = \""),
        "{}",
        lines[1]
    );
    // A method outside the interface is still sent; the IC's error comes back.
    assert!(lines[2].starts_with("Error from Canister"), "{}", lines[2]);
}

#[test]
fn a_user_error_is_one_line_without_a_backtrace() {
    let out = icllm(
        &["generate", "--model", "/nonexistent.gguf"],
        &[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("/nonexistent.gguf"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");

    // Asked for, the backtrace comes.
    let out = icllm(
        &["generate", "--model", "/nonexistent.gguf"],
        &[("RUST_BACKTRACE", "1"), ("ICLLM_BACKTRACE", "1")],
    );
    assert!(text(&out.stderr).contains("backtrace"), "{}", text(&out.stderr));
}

#[test]
fn a_missing_wasm32_target_is_named_with_its_install_command() {
    // A rustc whose sysroot has no wasm32 standard library.
    let dir = std::env::temp_dir().join(format!("icllm-no-wasm32-{}", std::process::id()));
    let sysroot = dir.join("sysroot");
    std::fs::create_dir_all(sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu")).unwrap();
    let rustc: PathBuf = dir.join("rustc");
    std::fs::write(&rustc, format!("#!/bin/sh\necho {}\n", sysroot.display())).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rustc, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = icllm(
        &["run", "--model", model(), "-n", "1"],
        &[("RUSTC", rustc.to_str().unwrap())],
    );
    let stderr = text(&out.stderr);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rustup target add wasm32-unknown-unknown"), "{stderr}");
    assert!(!stderr.contains("can't find crate"), "{stderr}");
}
