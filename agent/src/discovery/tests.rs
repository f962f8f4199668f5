//! Discovery's unit tests (file inspection, /proc scans, the analysis cache).
use super::cache::code_key;
use super::*;
use object::ObjectSection;

#[test]
fn parses_maps_lines() {
    let text = "\
7f0000000000-7f0000001000 r--p 00000000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r-xp 00000000 00:00 0 [vdso]
7f0000005000-7f0000006000 r-xp 00000000 08:02 99 /opt/my app/bin/node
7f0000007000-7f0000008000 r-xp 00000000 08:02 100 /tmp/x (deleted)
garbage line
";
    let m = parse_maps(text);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].path, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
    assert_eq!(m[0].dev, libc::makedev(0xfd, 1));
    assert_eq!(m[1].path, "/opt/my app/bin/node");
}

#[test]
fn finds_system_libssl_and_its_symbols() {
    let mut d = Discovery::new("/proc");
    let dirs: Vec<PathBuf> = DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect();
    let t = d.scan_dirs(&dirs);
    let ssl = t.iter().find(|t| t.symbols.is_tls_library());
    let ssl = ssl.unwrap_or_else(|| panic!("no libssl.so* in {DEFAULT_LIB_DIRS:?}; install libssl3"));
    let s = &ssl.symbols;
    // (SSL_read/SSL_write may be left unprobed in favour of the function they
    // wrap: placement.rs.)
    assert!(s.ssl_free.is_some());
    assert!(s.ssl_set_fd.is_some() && s.ssl_write_ex.is_some() && s.ssl_read_ex.is_some());
    assert_eq!(s.library, TlsLibrary::OpenSsl);
    // The loader is found too, for its library-load hook.
    assert!(t.iter().any(|t| t.symbols.dl_debug_state.is_some() && !t.symbols.is_tls_library()));
    // The same file is not inspected twice.
    assert!(d.scan_dirs(&dirs).is_empty());
}

#[test]
fn libraries_of_another_mount_namespace_are_found_through_its_root() {
    // A fake /proc: process 123 in "another namespace" with its own root.
    let fake = std::env::temp_dir().join(format!("tt-fakeproc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fake);
    let lib = fake.join("123/root/usr/lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(fake.join("123/ns")).unwrap();
    std::fs::write(fake.join("123/ns/mnt"), b"").unwrap();
    let mut host = Discovery::new("/proc");
    let dirs: Vec<PathBuf> = DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect();
    let system = host.scan_dirs(&dirs);
    let ssl = system.iter().find(|t| t.symbols.is_tls_library()).expect("system libssl");
    std::fs::copy(&ssl.path, lib.join("libssl.so.3")).unwrap();

    let mut d = Discovery::new(&fake);
    let t = d.scan_root_libs(123, &[PathBuf::from("/usr/lib")]);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].path, fake.join("123/root/usr/lib/libssl.so.3"));
    assert!(t[0].symbols.is_tls_library());
    // Same file again: nothing new. A new file at the same path: found.
    assert!(d.scan_root_libs(123, &[PathBuf::from("/usr/lib")]).is_empty());
    // (Deleted and copied again: the filesystem may reuse the inode number;
    // the new mtime still tells the files apart.)
    std::fs::remove_file(lib.join("libssl.so.3")).unwrap();
    std::fs::copy(&ssl.path, lib.join("libssl.so.3")).unwrap();
    let f = std::fs::File::options().write(true).open(lib.join("libssl.so.3")).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(d.scan_root_libs(123, &[PathBuf::from("/usr/lib")]).len(), 1);
    // Our own namespace is left to scan_dirs.
    assert!(Discovery::new("/proc").scan_root_libs(std::process::id(), &dirs).is_empty());
}

#[test]
fn excluded_processes_are_not_inspected() {
    // A fake /proc: process 7 "nginx" maps the system libssl.
    let fake = std::env::temp_dir().join(format!("tt-exclude-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fake);
    std::fs::create_dir_all(fake.join("7")).unwrap();
    std::os::unix::fs::symlink("/", fake.join("7/root")).unwrap();
    let dirs: Vec<PathBuf> = DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect();
    let lib = Discovery::new("/proc").scan_dirs(&dirs).into_iter().find(|t| t.symbols.is_tls_library()).unwrap();
    let md = std::fs::metadata(&lib.path).unwrap();
    let maps = format!("7f0000001000-7f0000002000 r-xp 00001000 00:00 {} {}\n", md.ino(), lib.path.display());
    std::fs::write(fake.join("7/maps"), maps).unwrap();
    std::fs::write(fake.join("7/comm"), "nginx\n").unwrap();

    let mut d = Discovery::new(&fake).exclude(&["nginx".to_string()]);
    assert!(d.scan_pid(7).is_empty());
    assert!(d.scan_root_libs(7, &dirs).is_empty());
    assert_eq!(d.processes_excluded, 2);
    let mut d = Discovery::new(&fake).exclude(&["envoy".to_string()]);
    assert_eq!(d.scan_pid(7).len(), 1, "not excluded: its libssl is found");
    assert_eq!(d.processes_excluded, 0);
}

#[test]
fn the_analysis_cache_tells_altered_code_apart() {
    // A copy of /bin/sh with one byte of its code changed keeps its build id
    // but not its key: a cached analysis is never reused for other code.
    let sh = std::fs::read("/bin/sh").unwrap();
    let elf = object::File::parse(&*sh).unwrap();
    let text = elf.section_by_name(".text").unwrap();
    let at = text.file_range().unwrap().0 as usize + 16;
    let mut altered = sh.clone();
    altered[at] ^= 0xff;
    let other = object::File::parse(&*altered).unwrap();
    let (a, b) = (code_key(&elf), code_key(&other));
    assert_eq!(a.0, b.0, "same build id");
    assert_ne!(a, b);
    assert_eq!(a, code_key(&object::File::parse(&*sh).unwrap()));
}

#[test]
fn non_tls_and_non_elf_files_are_not_targets() {
    assert!(!inspect(Path::new("/bin/sh")).unwrap().is_target());
    // This test binary links rustls (through ureq) with its symbols:
    // recognised; probed if its unoptimised code passes the layout check.
    let me = inspect(&std::env::current_exe().unwrap()).unwrap();
    assert_eq!(me.library, TlsLibrary::Rustls);
    assert!(me.rustls.is_some() || me.refused.as_deref().is_some_and(|r| r.contains("unexpected offsets")), "{me:?}");
    let f = std::env::temp_dir().join(format!("tt-not-elf-{}", std::process::id()));
    std::fs::write(&f, b"#!/bin/sh\n").unwrap();
    assert!(matches!(inspect(&f), Err(InspectError::Elf { .. })));
    assert!(matches!(inspect(Path::new("/nonexistent/x")), Err(InspectError::Open { .. })));
}

#[test]
fn processes_refused_to_the_agent_are_named_in_the_warning() {
    let root = std::env::temp_dir().join(format!("tt-unreadable-{}", std::process::id()));
    for (pid, comm) in [(30, "sshd"), (7, "init")] {
        std::fs::create_dir_all(root.join(pid.to_string())).unwrap();
        std::fs::write(root.join(format!("{pid}/comm")), format!("{comm}\n")).unwrap();
    }
    let mut d = Discovery::new(&root);
    let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    for pid in [30, 7, 30, 99] {
        d.refused_process(pid, &denied);
    }
    assert_eq!(d.processes_unreadable, 3, "each once");
    assert_eq!(d.unreadable_examples(2), ["7 (init)", "30 (sshd)"]);
    assert_eq!(d.unreadable_examples(5)[2], "99 ()", "gone since: its pid alone");
    let _ = std::fs::remove_dir_all(&root);
}
