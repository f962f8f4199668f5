//! The Java agent's class-file patcher (agent/java/.../ClassPatch.java) on the
//! code shapes a JSSE method may take in any JDK: tests/clients/java/patch/
//! PatchCheck.java patches every method of a sample class (switches, loops
//! to the first instruction, exception handlers, objects created across a
//! branch, long/double arguments, a method with no stack map frames), in
//! both the wrapping and the entry shape, loads the result through a class
//! loader of its own so that the JVM's verifier checks it, and compares every
//! result with the unpatched class's, hook calls counted; then feeds the
//! patcher 20,000 corrupted class files, each of which must be refused with a
//! reason or patched, never crash it. Then the hooks themselves on real
//! JSSE objects (which connections they report, see below). Real JDK, no
//! root needed.
use std::process::Command;

use tokentap_e2e::*;

#[test]
fn the_class_patcher_keeps_every_method_shape_verifiable_and_refuses_garbage() {
    require_tool("javac");
    require_tool("java");
    let dir = scratch("java-patch");
    let root = workspace_root();
    let st = Command::new("javac")
        .args(["-Xlint:all", "-Werror", "-d"])
        .arg(&dir)
        .arg(root.join("agent/java/src/tokentap/agent/ClassPatch.java"))
        .arg(root.join("tests/clients/java/patch/PatchCheck.java"))
        .status()
        .expect("javac");
    assert!(st.success(), "javac");
    // The JVM's own verifier must pass every patched class (custom loaders'
    // classes are verified by default; made explicit here).
    let out = Command::new("java")
        .args(["-XX:+UnlockDiagnosticVMOptions", "-XX:+BytecodeVerificationRemote", "-cp"])
        .arg(&dir)
        .arg("tokentap.agent.PatchCheck")
        .output()
        .expect("java");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // 8 methods in each of the two shapes; every corrupted file handled.
    assert_eq!(stdout.trim(), "ok 16 20000");
}

/// The hooks (agent/java/hooks/.../TokentapHooks.java) in java.base, as the
/// agent defines them, checked by tests/clients/java/hooks/.../HooksCheck.java
/// on real JSSE objects: a TLS 1.3 handshake and data between a client and a
/// server engine, an SSLServerSocket's accepted socket. Only the client side
/// reports (server-mode engines and sockets get no id and make no native
/// call), an engine after closeOutbound gets no new id for its close_notify,
/// and an earlier install is "already installed" only if it completed.
#[test]
fn the_hooks_report_client_connections_only_and_nothing_after_a_close() {
    require_tool("javac");
    require_tool("java");
    require_tool("keytool");
    let dir = scratch("java-hooks");
    let root = workspace_root();
    let (classes, hooks) = (dir.join("classes"), dir.join("hooks"));
    let src = root.join("agent/java/src/tokentap/agent");
    let st = Command::new("javac")
        .args(["-Xlint:all", "-Werror", "-d"])
        .arg(&classes)
        .args(["Installer.java", "ClassPatch.java"].map(|f| src.join(f)))
        .status()
        .expect("javac");
    assert!(st.success(), "javac (installer)");
    let patch = format!(
        "java.base={}:{}",
        root.join("agent/java/hooks").display(),
        root.join("tests/clients/java/hooks").display()
    );
    let st = Command::new("javac")
        // The test reads the hooks' package-private helper classes (auxiliary classes).
        .args(["-Xlint:all,-auxiliaryclass", "-Werror", "--patch-module", &patch, "-d"])
        .arg(&hooks)
        .arg(root.join("agent/java/hooks/sun/security/ssl/TokentapHooks.java"))
        .arg(root.join("tests/clients/java/hooks/sun/security/ssl/HooksCheck.java"))
        .status()
        .expect("javac");
    assert!(st.success(), "javac (hooks)");
    let store = dir.join("key.p12");
    let key = Command::new("keytool")
        .args(["-genkeypair", "-keyalg", "EC", "-alias", "k", "-dname", "CN=localhost", "-storetype", "PKCS12"])
        .args(["-storepass", "secret", "-keystore"])
        .arg(&store)
        .output()
        .expect("keytool");
    assert!(key.status.success(), "keytool: {}", String::from_utf8_lossy(&key.stderr));
    let out = Command::new("java")
        .arg("--patch-module")
        .arg(format!("java.base={}", hooks.display()))
        .arg("-cp")
        .arg(&classes)
        // The check's main class is in java.base; the installer needs java.instrument.
        .args(["--add-modules", "java.instrument", "-m", "java.base/sun.security.ssl.HooksCheck"])
        .arg(&store)
        .arg("secret")
        .output()
        .expect("java");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "ok");
}
