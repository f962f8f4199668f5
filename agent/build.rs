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
//!
//! Also builds the Java agent (agent/java/: `tokentap-java.jar` and
//! `libtokentap_java.so`, embedded by the agent's java module) with the JDK's
//! javac and jar (`--release 11`: the jar loads into any JVM from 11 on) and
//! the system C compiler (JNI headers from the same JDK; no libc needed).
//! `AYA_BUILD_SKIP=1` skips it too: the agent then attaches to no JVM.
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
        std::fs::write(out_dir.join("tokentap-java.jar"), []).map_err(|e| e.to_string())?;
        std::fs::write(out_dir.join("libtokentap_java.so"), []).map_err(|e| e.to_string())?;
        println!("cargo:rustc-env=TOKENTAP_EBPF_TOOLCHAIN=none (AYA_BUILD_SKIP)");
        return Ok(());
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    build_java(&manifest.join("java"), &out_dir)?;
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
    let rustflags = format!(
        "--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Clink-arg=--export=tokentap_emit"
    );
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

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The Java agent jar and its native library, into `out`.
fn build_java(src: &std::path::Path, out: &std::path::Path) -> Result<(), String> {
    for dir in ["src", "hooks", "native", "MANIFEST.MF"] {
        println!("cargo:rerun-if-changed={}", src.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=JAVA_HOME");
    println!("cargo:rerun-if-env-changed=CC");
    let missing = "building the Java agent needs a JDK 11+ (javac, jar) and a C compiler: \
        run `cargo xtask build`, which installs openjdk-17-jdk-headless";
    // The JDK: $JAVA_HOME, else the one javac on PATH belongs to.
    let home = match env::var_os("JAVA_HOME") {
        Some(h) => PathBuf::from(h),
        None => {
            let which = Command::new("sh").args(["-c", "command -v javac"]).output().map_err(|e| e.to_string())?;
            let javac = String::from_utf8_lossy(&which.stdout).trim().to_owned();
            if javac.is_empty() {
                return Err(missing.into());
            }
            let real = std::fs::canonicalize(&javac).map_err(|e| format!("{javac}: {e}"))?;
            real.parent().and_then(|b| b.parent()).ok_or(missing)?.to_path_buf()
        }
    };
    let (javac, jar) = (home.join("bin/javac"), home.join("bin/jar"));
    if !javac.exists() || !jar.exists() {
        return Err(format!("{missing} (no javac/jar in {})", home.display()));
    }
    let work = out.join("java");
    let _ = std::fs::remove_dir_all(&work);
    let (classes, hooks) = (work.join("classes"), work.join("hooks"));
    std::fs::create_dir_all(classes.join("tokentap/hooks")).map_err(|e| e.to_string())?;
    let sources = |dir: &std::path::Path| -> Vec<PathBuf> {
        let mut v = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "java") {
                    v.push(p);
                }
            }
        }
        v.sort();
        v
    };
    let javac_flags = ["--release", "11", "-XDstringConcat=inline", "-Xlint:all", "-Werror"];
    run(Command::new(&javac).args(javac_flags).arg("-d").arg(&classes).args(sources(&src.join("src"))))?;
    // The hooks belong to java.base's sun.security.ssl (defined there at run
    // time): compiled as part of it, stored as resources the JVM never loads itself.
    run(Command::new(&javac)
        .args(javac_flags)
        .arg("--patch-module")
        .arg(format!("java.base={}", src.join("hooks").display()))
        .arg("-d")
        .arg(&hooks)
        .args(sources(&src.join("hooks"))))?;
    for e in std::fs::read_dir(hooks.join("sun/security/ssl")).map_err(|e| e.to_string())?.flatten() {
        let name = e.file_name().to_string_lossy().replace(".class", ".bin");
        std::fs::copy(e.path(), classes.join("tokentap/hooks").join(name)).map_err(|e| e.to_string())?;
    }
    // A fixed date: the same sources make the same jar (its digest names the
    // directory it is placed in inside each JVM).
    run(Command::new(&jar)
        .args(["--create", "--date=2000-01-01T00:00:02Z", "--file"])
        .arg(out.join("tokentap-java.jar"))
        .arg("--manifest")
        .arg(src.join("MANIFEST.MF"))
        .arg("-C")
        .arg(&classes)
        .arg("."))?;
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut c = Command::new(cc);
    if env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64") {
        // No endbr64 in front of the probed NOP (the functions are assembly anyway).
        c.arg("-fcf-protection=none");
    }
    run(c
        .args(["-O2", "-shared", "-fPIC", "-nostdlib", "-fno-stack-protector"])
        .args(["-Wl,-Bsymbolic", "-Wl,-z,noexecstack", "-Wl,--build-id=none", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{}", home.join("include").display()))
        .arg(format!("-I{}", home.join("include/linux").display()))
        .arg("-o")
        .arg(out.join("libtokentap_java.so"))
        .arg(src.join("native/tokentap_java.c")))?;
    Ok(())
}
