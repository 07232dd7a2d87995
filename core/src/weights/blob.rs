//! A cheaply clonable byte range kept alive by its owner: a memory-mapped file or a vector.

use std::ops::Deref;
use std::sync::Arc;

#[derive(Clone)]
pub struct Blob {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl Blob {
    pub fn from_vec(v: Vec<u8>) -> Blob {
        let len = v.len();
        Blob {
            owner: Arc::new(v),
            start: 0,
            len,
        }
    }

    pub fn from_owner(owner: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Blob {
        let len = (*owner).as_ref().len();
        Blob {
            owner,
            start: 0,
            len,
        }
    }

    /// A sub-range; the caller has checked `start + len <= self.len()`.
    pub fn slice(&self, start: usize, len: usize) -> Blob {
        assert!(start + len <= self.len, "blob slice out of range");
        Blob {
            owner: self.owner.clone(),
            start: self.start + start,
            len,
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
