//! Builds the eBPF object (agent-ebpf) for `bpfel-unknown-none` and leaves it in
//! OUT_DIR, where `probes.rs` embeds it.
//!
//! Same recipe as aya-build, but quiet: the child build's output is shown only
//! when it fails, so a normal build prints no warnings.
//! Toolchain: `nightly` when rustup has it, else the current stable with
//! `RUSTC_BOOTSTRAP=1` (same object; `-Z build-std=core` needs it). Which one was
//! used is compiled into the agent and logged at start.
//! `AYA_BUILD_SKIP=1` skips the eBPF build (host-only checks such as clippy); the
//! agent then refuses to load with a clear message.
use std::{env, path::PathBuf, process::Command};

fn main() {
    if let Err(e) = build() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let object = out_dir.join("tokentap-agent-ebpf");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        std::fs::write(&object, []).map_err(|e| e.to_string())?;
        println!("cargo:rustc-env=TOKENTAP_EBPF_TOOLCHAIN=none (AYA_BUILD_SKIP)");
        return Ok(());
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest.join("../agent-ebpf");
    for dir in ["src", "Cargo.toml", "build.rs", "../agent-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let toolchain = if has_nightly { "nightly" } else { "stable" };
    let target_dir = out_dir.join("ebpf-target");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let rustflags = format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, "cargo", "build", "--package", "tokentap-agent-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&root)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR");
    if !has_nightly {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    let out = cmd.output().map_err(|e| format!("cannot run rustup to build the eBPF object: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the eBPF object failed ({toolchain} toolchain). Run `cargo xtask build` to install \
             bpf-linker and rust-src.\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let built = target_dir.join("bpfel-unknown-none/release/tokentap-agent-ebpf");
    std::fs::copy(&built, &object).map_err(|e| format!("copy {}: {e}", built.display()))?;
    let how = if has_nightly { "nightly" } else { "stable with RUSTC_BOOTSTRAP=1" };
    println!("cargo:rustc-env=TOKENTAP_EBPF_TOOLCHAIN={how}");
    Ok(())
}
