//! eBPF programs that are run, never attached: loaded for a task at start,
//! run by `BPF_PROG_TEST_RUN` on a few arguments each, and unloaded after.
//!
//! Why programs and not map writes from user space: the maps they fill
//! (the socket programs' tables) are written by the attached programs at the
//! same time, and only a program of theirs can insert an entry on the same
//! terms as they do (agent-ebpf's `adopted.rs`). Used by `open_sockets`
//! (sockets found open) and `blocked_calls` (reads and writes found blocked).
use aya::programs::{ProgramError, RawTracePoint, RawTracePointRunOptions, TestRun};
use aya::Ebpf;

/// The arguments a raw tracepoint program run here can be given.
pub const MAX_ARGS: usize = 12;

/// Raw tracepoint programs of `ebpf` loaded for a task; unloaded when this
/// is dropped, whatever stopped the task.
pub struct RunOnly<'a> {
    ebpf: &'a mut Ebpf,
    loaded: Vec<&'static str>,
}

impl<'a> RunOnly<'a> {
    /// Load the programs `names`; those loaded before one that failed are
    /// unloaded again.
    pub fn load(ebpf: &'a mut Ebpf, names: &[&'static str]) -> Result<Self, ProgramError> {
        let mut this = Self { ebpf, loaded: Vec::with_capacity(names.len()) };
        for &name in names {
            this.program(name)?.load()?;
            this.loaded.push(name);
        }
        Ok(this)
    }

    /// Run the loaded program `name` once on `args` (the raw tracepoint's
    /// arguments, the rest 0): its return value. More than [`MAX_ARGS`]
    /// does not build.
    pub fn run<const N: usize>(&mut self, name: &'static str, args: &[u64; N]) -> Result<u32, ProgramError> {
        const { assert!(N <= MAX_ARGS, "a raw tracepoint program takes at most MAX_ARGS arguments") };
        debug_assert!(self.loaded.contains(&name), "{name} run before it was loaded");
        let mut opts = RawTracePointRunOptions::new();
        opts.args[..N].copy_from_slice(args);
        Ok(self.program(name)?.test_run(opts)?.return_value)
    }

    fn program(&mut self, name: &'static str) -> Result<&mut RawTracePoint, ProgramError> {
        self.ebpf.program_mut(name).ok_or(ProgramError::NotLoaded)?.try_into()
    }
}

impl Drop for RunOnly<'_> {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.loaded) {
            if let Ok(p) = self.program(name) {
                if let Err(e) = p.unload() {
                    tracing::debug!(program = name, error = %e, "a program run at start: not unloaded");
                }
            }
        }
    }
}
