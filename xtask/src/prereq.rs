//! Check for, and install, what builds and tests need. Each step says what is
//! missing and what it does about it.
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use crate::run;

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn have(tool: &str) -> bool {
    ok(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !ok(Command::new("dpkg").args(["-s", p]))).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!("missing packages {missing:?} and no apt-get to install them: install them by hand");
    }
    if !is_root() {
        bail!("missing packages {missing:?}: run as root (or `sudo apt-get install {}`)", missing.join(" "));
    }
    eprintln!("xtask: installing {missing:?} with apt-get");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends"]).args(&missing))
}

/// The toolchain that builds the eBPF object: nightly when installed, else stable
/// with RUSTC_BOOTSTRAP=1 (agent/build.rs makes the same choice).
pub fn ebpf_toolchain() -> &'static str {
    if ok(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        "nightly"
    } else {
        "stable"
    }
}

/// bpf-linker (built against Debian's LLVM 22) and the rust-src the eBPF build
/// needs; a JDK (javac, jar) and a C compiler for the Java agent (agent/java/).
pub fn build_tools() -> Result<()> {
    if !have("rustup") {
        bail!("rustup is required (the eBPF build uses `rustup run <toolchain>`)");
    }
    if !have("cc") {
        apt_install(&["gcc"])?;
    }
    if !have("javac") || !have("jar") {
        // Debian 12 packages JDK 17; later releases name their own default JDK.
        apt_install(&["openjdk-17-jdk-headless"]).or_else(|_| apt_install(&["default-jdk-headless"]))?;
    }
    let toolchain = ebpf_toolchain();
    let src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false);
    if !src {
        eprintln!("xtask: adding rust-src to the {toolchain} toolchain (needed for -Z build-std=core)");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]))?;
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("0.13"));
    if !linker_ok {
        apt_install(&["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"])?;
        eprintln!("xtask: installing bpf-linker 0.13.0 against LLVM 22 (a few minutes, once)");
        run(crate::cargo()
            .args(["install", "bpf-linker", "--locked", "--version", "0.13.0", "--no-default-features"])
            .args(["--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

/// Tools and client libraries the end-to-end tests and the demo drive.
pub fn test_tools(root: &Path) -> Result<()> {
    let mut pkgs = Vec::new();
    for (tool, pkg) in [
        ("curl", "curl"),
        ("openssl", "openssl"),
        ("unshare", "util-linux"),
        ("python3", "python3"),
        // Builds the Go net/http client (Go's own crypto/tls) of the breadth tests.
        ("go", "golang-go"),
        // Renders report.html headless in the assessment test.
        ("chromium", "chromium"),
        // Lists loaded BPF programs: nothing of the agent stays after exit.
        ("bpftool", "bpftool"),
        // Scrapes the collector and evaluates the shipped alert rules
        // (track_alerts); its promtool checks and unit-tests them.
        ("prometheus", "prometheus"),
        ("promtool", "prometheus"),
        // The reqwest + rustls test client: ring compiles C, and a stripped copy.
        ("cc", "gcc"),
        ("strip", "binutils"),
    ] {
        if !have(tool) {
            pkgs.push(pkg);
        }
    }
    if !have("node") || !have("npm") {
        pkgs.extend(["nodejs", "npm"]);
    }
    if !ok(Command::new("python3").args(["-m", "pip", "--version"])) {
        pkgs.push("python3-pip");
    }
    pkgs.dedup();
    apt_install(&pkgs)?;
    // libssl for the probes to find (the system OpenSSL the clients use).
    apt_install(&["libssl3"]).or_else(|_| apt_install(&["libssl3t64"]))?;

    let req = root.join("tests/clients/requirements.txt");
    let sdks = ok(Command::new("python3").args([
        "-c",
        "import openai, anthropic, h2, google.genai, boto3, chdb, kubernetes_validate, websockets, tlslite, opentelemetry.proto, \
         opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http",
    ]));
    if !sdks {
        eprintln!(
            "xtask: installing the Python SDKs (openai, anthropic, google-genai, boto3, httpx[h2]), chdb-core, opentelemetry-proto and opentelemetry-sdk"
        );
        let base = || {
            let mut c = Command::new("python3");
            c.args(["-m", "pip", "install", "-q", "-r"]).arg(&req);
            c
        };
        if run(&mut base()).is_err() {
            // Debian's system Python refuses pip installs without this flag.
            run(base().arg("--break-system-packages"))?;
        }
    }
    litellm_core(root)?;
    let clients = root.join("tests/clients");
    let pinned = [
        "node_modules/openai",
        "node_modules/@oven/bun-linux-x64/bin/bun",
        "node_modules/@anthropic-ai/claude-code-linux-x64/claude",
        "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex",
    ]
    .iter()
    .all(|p| clients.join(p).exists());
    if !pinned {
        eprintln!("xtask: installing the Node test clients (openai, bun, Claude Code's and Codex CLI's native binaries), pinned");
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&clients))?;
    }
    Ok(())
}

/// litellm's Rust core in its own venv (its openai pin conflicts with the
/// test SDKs'), for the rustls end-to-end test.
fn litellm_core(root: &Path) -> Result<()> {
    let venv = root.join("target/litellm-core-venv");
    let req = root.join("tests/clients/requirements-litellm-core.txt");
    let stamp = venv.join("installed.txt");
    let wanted = std::fs::read_to_string(&req)?;
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    eprintln!("xtask: installing litellm-core (litellm's Rust core) into {}", venv.display());
    if !ok(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv)) {
        apt_install(&["python3-venv"])?;
        run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", "-r"]).arg(&req))?;
    std::fs::write(stamp, wanted)?;
    Ok(())
}

/// wrk, curl and nginx (all OpenSSL), for the overhead and download benchmarks.
pub fn bench_tools(litellm: bool) -> Result<()> {
    let mut pkgs = Vec::new();
    for (tool, pkg) in [("wrk", "wrk"), ("nginx", "nginx"), ("openssl", "openssl"), ("curl", "curl")] {
        if !have(tool) {
            pkgs.push(pkg);
        }
    }
    apt_install(&pkgs)?;
    // The LiteLLM proxy, in its own venv (its pins must not touch the test SDKs).
    let venv = crate::workspace_root().join("target/bench/litellm-venv");
    if litellm && !venv.join("bin/litellm").exists() {
        eprintln!("xtask: installing the LiteLLM proxy into {} (once)", venv.display());
        if !ok(Command::new("python3").args(["-m", "venv"]).arg(&venv)) {
            apt_install(&["python3-venv"])?;
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        run(Command::new(venv.join("bin/pip")).args(["install", "-q", "litellm[proxy]==1.80.0"]))?;
    }
    Ok(())
}

/// cargo-fuzz, for `cargo xtask fuzz`.
pub fn fuzz_tools() -> Result<()> {
    if !ok(crate::cargo().args(["fuzz", "--version"])) {
        eprintln!("xtask: installing cargo-fuzz");
        run(crate::cargo().args(["install", "cargo-fuzz", "--locked", "--version", "0.13.2"]))?;
    }
    Ok(())
}
