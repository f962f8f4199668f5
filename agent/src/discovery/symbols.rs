//! The symbol tables' TLS functions, and where their probes go.
use object::{Object, ObjectSection, ObjectSymbol};

use super::{pages, placement, TlsLibrary, TlsSymbols};

/// Address and size of the I/O functions, for [`placement`].
#[derive(Default)]
pub(super) struct IoFuncs {
    read: Option<placement::Func>,
    read_ex: Option<placement::Func>,
    write: Option<placement::Func>,
    write_ex: Option<placement::Func>,
}

/// Move the read and write probes to cheaper points where the code allows.
pub(super) fn place_probes(elf: &object::File<'_>, data: &[u8], io: &IoFuncs, s: &mut TlsSymbols) {
    let dirs = [
        (io.read, io.read_ex, &mut s.ssl_read, &mut s.ssl_read_ex),
        (io.write, io.write_ex, &mut s.ssl_write, &mut s.ssl_write_ex),
    ];
    for (plain, ex, plain_at, ex_at) in dirs {
        if let Some(r) = placement::reroute(elf, data, plain, ex) {
            *ex_at = Some(r.ex_at);
            if r.skip_plain {
                *plain_at = None;
            }
            s.rerouted = true;
        }
    }
}

pub(super) fn read_symbols<'d>(
    elf: &object::File<'d>,
    symbols: impl Iterator<Item = object::Symbol<'d, 'd>>,
    s: &mut TlsSymbols,
    io: &mut IoFuncs,
) {
    for (i, sym) in symbols.enumerate() {
        pages::release_all_every(i);
        let Ok(name) = sym.name() else { continue };
        if name == "BORINGSSL_self_test" {
            s.library = TlsLibrary::BoringSsl;
            continue;
        }
        let func = match name {
            "SSL_write" => Some(&mut io.write),
            "SSL_read" => Some(&mut io.read),
            "SSL_write_ex" => Some(&mut io.write_ex),
            "SSL_read_ex" => Some(&mut io.read_ex),
            _ => None,
        };
        if let Some(f) = func.filter(|f| f.is_none() && sym.is_definition() && sym.address() != 0) {
            *f = Some((sym.address(), sym.size()));
        }
        let slot = match name {
            "SSL_write" => &mut s.ssl_write,
            "SSL_read" => &mut s.ssl_read,
            "SSL_write_ex" => &mut s.ssl_write_ex,
            "SSL_read_ex" => &mut s.ssl_read_ex,
            "SSL_free" => &mut s.ssl_free,
            "SSL_set_fd" => &mut s.ssl_set_fd,
            "_dl_debug_state" => &mut s.dl_debug_state,
            _ => continue,
        };
        if slot.is_some() || !sym.is_definition() || sym.address() == 0 {
            continue;
        }
        let Some(idx) = sym.section_index() else {
            continue;
        };
        let Ok(section) = elf.section_by_index(idx) else {
            continue;
        };
        let Some((file_off, _)) = section.file_range() else {
            continue;
        };
        let Some(rel) = sym.address().checked_sub(section.address()) else {
            continue;
        };
        *slot = Some(rel + file_off);
    }
}
