fn main() {
    // bpf-linker must be on PATH; rebuild when it changes.
    if let Ok(p) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
