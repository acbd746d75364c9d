//! Reads fuzz input front to back; every read succeeds, yielding zeroes once the input is spent,
//! so any byte string decodes to something.

pub struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Up to `n` bytes (fewer when the input ends).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.rest.len());
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.rest.len())
    }

    /// A big-endian number of `n` bytes (missing bytes read as zero).
    fn be(&mut self, n: usize) -> u64 {
        let mut v = 0u64;
        let got = self.take(n);
        for i in 0..n {
            v = (v << 8) | u64::from(got.get(i).copied().unwrap_or(0));
        }
        v
    }

    pub fn u8(&mut self) -> u8 {
        self.be(1) as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.be(2) as u16
    }

    pub fn u24(&mut self) -> u32 {
        self.be(3) as u32
    }

    pub fn u32(&mut self) -> u32 {
        self.be(4) as u32
    }

    pub fn u64(&mut self) -> u64 {
        self.be(8)
    }
}
