//! The crate's only `unsafe`: memory-mapping a file read-only.

use std::fs::File;
use std::ops::Deref;

/// File bytes, either memory-mapped or owned (for in-memory files and tests).
pub enum FileBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Maps `file` read-only.
    ///
    /// # Safety (upheld here, not by callers)
    /// A mapping is only sound while no one truncates or rewrites the file underneath it.
    /// nerp itself never modifies a file in place: every writer goes through
    /// [`crate::format::write_atomic`], which renames a new file over the old one, so an
    /// existing mapping keeps the old inode. Other programs writing the same file in place
    /// are outside what any mmap-based reader can defend against; all bytes are still
    /// validated after mapping, and reads never trust the mapping beyond its length.
    pub fn map(file: &File) -> std::io::Result<Self> {
        // SAFETY: see the function documentation.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(FileBytes::Mapped(map))
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}
