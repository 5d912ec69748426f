//! Output paths that cannot destroy anything: an output is never one of the command's inputs
//! (compared by file identity, device and inode, so links and `./x` spellings are caught),
//! pipes and character devices are written directly instead of being replaced by a regular
//! file, other special files are refused, and the temporary file of an atomic write is
//! removed when the process is interrupted (SIGINT, SIGTERM, SIGHUP).

use crate::error::{Error, Result};
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// Fails when `output` is the same file as one of `inputs` (same device and inode).
/// `flag` names the output option in the message.
pub fn check_not_an_input(output: &Path, inputs: &[&Path], flag: &str) -> Result<()> {
    let Ok(out) = std::fs::metadata(output) else { return Ok(()) };
    for input in inputs {
        if let Ok(inp) = std::fs::metadata(input) {
            if out.dev() == inp.dev() && out.ino() == inp.ino() {
                return Err(Error::usage(
                    flag,
                    format!(
                        "{} is the input {}; writing it would destroy the input: choose another output path",
                        output.display(),
                        input.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// How an existing output path is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Absent or a regular file: a temporary file renamed over it.
    Replace,
    /// A pipe or a character device (`/dev/null`, `/dev/stdout`): written in place, since
    /// renaming over it would replace the device node (as root) and a stream has no name a
    /// partial file could carry.
    Stream,
}

/// Decides how `path` is written; directories, block devices and sockets are refused.
pub fn target(path: &Path) -> Result<Target> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Target::Replace),
        Err(e) => return Err(Error::io(path, "reading metadata of output", e)),
    };
    let t = meta.file_type();
    if t.is_file() {
        Ok(Target::Replace)
    } else if t.is_fifo() || t.is_char_device() {
        Ok(Target::Stream)
    } else {
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_block_device() {
            "a block device"
        } else {
            "a socket or other special file"
        };
        Err(Error::usage(
            "--output",
            format!(
                "{} is {what}; nerp writes regular files, pipes and character devices only",
                path.display()
            ),
        ))
    }
}

/// Writes `bytes` to an existing pipe or character device.
pub fn write_stream(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        std::fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, "opening", e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, "writing", e))?;
    f.flush().map_err(|e| Error::io(path, "writing", e))
}

/// Temporary files that exist right now, for the signal handler: C strings, null when free.
/// A fixed array of atomics, because a signal handler may neither lock nor allocate.
static TEMPS: [AtomicPtr<libc::c_char>; 64] = [const { AtomicPtr::new(std::ptr::null_mut()) }; 64];
/// Whether [`install_interrupt_cleanup`] ran (then a released path is leaked, not freed,
/// since a handler on another thread may be reading it).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A registered temporary file; deregistered on drop (the owner removes the file itself).
pub struct TempGuard {
    slot: Option<usize>,
}

impl TempGuard {
    /// Registers `path` for removal if the process is interrupted before the guard drops.
    pub fn register(path: &Path) -> TempGuard {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return TempGuard { slot: None } };
        let ptr = c.into_raw();
        for (i, s) in TEMPS.iter().enumerate() {
            if s.compare_exchange(std::ptr::null_mut(), ptr, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return TempGuard { slot: Some(i) };
            }
        }
        // Every slot taken (64 writes at once): this one goes unguarded.
        // SAFETY: `ptr` came from `CString::into_raw` just above and was never shared.
        drop(unsafe { CString::from_raw(ptr) });
        TempGuard { slot: None }
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        let Some(i) = self.slot else { return };
        let ptr = TEMPS[i].swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !ptr.is_null() && !INSTALLED.load(Ordering::SeqCst) {
            // SAFETY: `ptr` came from `CString::into_raw` in `register`; with no handler
            // installed nothing else can hold it.
            drop(unsafe { CString::from_raw(ptr) });
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    for s in &TEMPS {
        let p = s.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: `p` is a NUL-terminated string that is never freed once a handler is
            // installed; `unlink`, `signal` and `raise` are async-signal-safe.
            unsafe { libc::unlink(p) };
        }
    }
    // SAFETY: restores the default action and re-raises, so the exit status says which signal.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that remove registered temporary files,
/// then die of the signal as before, and restores SIGPIPE's default so that `nerp inspect |
/// head` ends quietly like other Unix tools instead of panicking on a closed stdout. Called
/// once by the CLI; a library leaves signals alone.
pub fn install_interrupt_cleanup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        INSTALLED.store(true, Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: `on_signal` only touches atomics and async-signal-safe calls.
            unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
        }
        // SAFETY: restoring the default disposition of a signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child process (this test binary re-run with an environment variable): registers
    /// a temporary file, installs the handler and interrupts itself. The parent checks the
    /// child died of SIGINT and the file is gone.
    #[test]
    fn interrupt_removes_registered_temporary_files() {
        const VAR: &str = "NERP_TEST_INTERRUPT_TMP";
        if let Ok(path) = std::env::var(VAR) {
            let _guard = TempGuard::register(Path::new(&path));
            install_interrupt_cleanup();
            // SAFETY: raising a signal at ourselves.
            unsafe { libc::raise(libc::SIGINT) };
            unreachable!("SIGINT's default action ends the process");
        }
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(".out.nerp.tmp-1-0");
        std::fs::write(&tmp, b"partial").unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "format::output::tests::interrupt_removes_registered_temporary_files",
                "--nocapture",
            ])
            .env(VAR, &tmp)
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
        assert!(!tmp.exists(), "the handler must remove the temporary file");
    }

    #[test]
    fn targets() {
        assert_eq!(target(Path::new("/dev/null")).unwrap(), Target::Stream);
        assert_eq!(target(Path::new("/nonexistent-dir/x")).unwrap(), Target::Replace);
        assert!(target(Path::new("/tmp")).unwrap_err().to_string().contains("directory"));
    }
}
