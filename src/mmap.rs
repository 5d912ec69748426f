//! The crate's only `unsafe` for files: memory-mapping a file read-only, and viewing a
//! 64-byte-aligned buffer as bytes.

use std::fs::File;
use std::io::Read;
use std::ops::Deref;

/// File bytes: read into an aligned buffer, memory-mapped, or owned (in-memory files, tests).
pub enum FileBytes {
    Aligned(AlignedBytes),
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// One 64-byte block: the unit of [`AlignedBytes`], so that the buffer starts on a 64-byte
/// boundary like the format's sections do.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

/// Bytes in a 64-byte-aligned heap buffer.
pub struct AlignedBytes {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBytes {
    /// A zeroed buffer of `len` bytes.
    fn zeroed(len: usize) -> Self {
        AlignedBytes { blocks: vec![Block([0; 64]); len.div_ceil(64)], len }
    }

    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Block` is `[u8; 64]` with no padding (size 64, align 64), so the vector's
        // `64·blocks.len() >= len` bytes are initialized, contiguous and live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`, borrowed mutably through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

impl FileBytes {
    /// Reads exactly `len` bytes of `file` (its length when opened) into an aligned buffer;
    /// a file that shrank meanwhile is an `UnexpectedEof` error, one that grew is read only
    /// up to `len` (validation then sees whatever those bytes are).
    pub fn read(file: &mut File, len: u64) -> std::io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| std::io::Error::other("file is too large for memory"))?;
        let mut buf = AlignedBytes::zeroed(len);
        file.read_exact(buf.as_bytes_mut())?;
        Ok(FileBytes::Aligned(buf))
    }

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
            FileBytes::Aligned(a) => a.as_bytes(),
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}
