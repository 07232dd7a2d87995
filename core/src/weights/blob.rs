//! A cheaply clonable byte range kept alive by its owner: a memory-mapped file or a vector.

use std::ops::Deref;
use std::sync::Arc;

#[derive(Clone)]
pub struct Blob {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
    /// The owner is a read-only map of a file (its pages can be dropped and read again).
    mapped: bool,
}

impl Blob {
    pub fn from_vec(v: Vec<u8>) -> Blob {
        let len = v.len();
        Blob {
            owner: Arc::new(v),
            start: 0,
            len,
            mapped: false,
        }
    }

    /// A read-only map of a file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_map(map: memmap2::Mmap) -> Blob {
        Blob {
            mapped: true,
            ..Blob::from_owner(Arc::new(map))
        }
    }

    pub fn from_owner(owner: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Blob {
        let len = (*owner).as_ref().len();
        Blob {
            owner,
            start: 0,
            len,
            mapped: false,
        }
    }

    /// A sub-range; the caller has checked `start + len <= self.len()`.
    pub fn slice(&self, start: usize, len: usize) -> Blob {
        assert!(start + len <= self.len, "blob slice out of range");
        Blob {
            owner: self.owner.clone(),
            start: self.start + start,
            len,
            mapped: self.mapped,
        }
    }
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({} bytes)", self.len)
    }
}

/// Bytes in 8-byte-aligned storage, so any ggml block or float type can be viewed in place.
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl AsRef<[u8]> for Aligned {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

impl Blob {
    /// Let go of this range's pages of a mapped file, for a backend that has copied them
    /// into its own layout: they leave the process's resident set (the page cache keeps
    /// them) and a later read maps them again with the same bytes. Other memory is left
    /// alone: on a vector the same advice would zero it.
    pub fn release_pages(&self) {
        #[cfg(target_os = "linux")]
        if self.mapped {
            let page = 4096;
            let (start, end) = (self.as_ptr() as usize, self.as_ptr() as usize + self.len);
            let (first, last) = (start.div_ceil(page) * page, end / page * page);
            if first < last {
                // SAFETY: the range lies inside a read-only file map this blob keeps
                // alive, where MADV_DONTNEED only drops page-table entries; it is advice,
                // so an error is ignored.
                unsafe {
                    libc::madvise(
                        first as *mut libc::c_void,
                        last - first,
                        libc::MADV_DONTNEED,
                    )
                };
            }
        }
    }

    /// This blob if its start is `align`-aligned, else an aligned copy.
    pub fn aligned(&self, align: usize) -> Blob {
        if (self.as_ptr() as usize) % align == 0 {
            return self.clone();
        }
        let mut words = vec![0u64; self.len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..self.len].copy_from_slice(self);
        let len = self.len;
        Blob::from_owner(Arc::new(Aligned { words, len }))
    }
}
