//! Content-defined chunking of a byte stream (FastCDC 2020).
//!
//! Cut points depend on the content, not on offsets, so inserting a row near the start of a
//! dump moves only the chunks around the insert; every later chunk keeps its id and is
//! deduplicated. The gear table is XOR-ed with a seed derived from the repository key, so chunk
//! sizes do not fingerprint known inputs. The chunker reads into one reusable buffer of twice
//! the maximum chunk size and hands out slices of it: no allocation per chunk.

use std::borrow::Cow;
use std::io::{self, Read};

use fastcdc::v2020::{cut_gear, get_gear_with_seed, select_masks, Normalization};

use crate::format::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

pub struct Chunker<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    masks: (u64, u64),
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
    min: usize,
    avg: usize,
    max: usize,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, seed: u64) -> Self {
        Self::with_sizes(reader, seed, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
    }

    pub fn with_sizes(reader: R, seed: u64, min: usize, avg: usize, max: usize) -> Self {
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Chunker {
            reader,
            buf: vec![0u8; 2 * max],
            start: 0,
            end: 0,
            eof: false,
            masks: select_masks(avg, Normalization::Level1),
            gear,
            gear_ls,
            min,
            avg,
            max,
        }
    }

    /// The next chunk, or `None` at the end of the input.
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            let available = self.end - self.start;
            if available == 0 && self.eof {
                return Ok(None);
            }
            if available >= self.max || self.eof {
                let (mask_s, mask_l) = self.masks;
                let (_, len) = cut_gear(
                    &self.buf[self.start..self.end],
                    self.min,
                    self.avg,
                    self.max,
                    mask_s,
                    mask_l,
                    mask_s << 1,
                    mask_l << 1,
                    &self.gear,
                    &self.gear_ls,
                );
                let chunk = self.start..self.start + len;
                self.start += len;
                return Ok(Some(&self.buf[chunk]));
            }
            self.fill()?;
        }
    }

    /// Moves the unconsumed tail to the front and reads until at least `max` bytes are
    /// buffered or the input ends.
    fn fill(&mut self) -> io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.max && !self.eof {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn into_inner(self) -> R {
        self.reader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
    fn noise(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn chunks(data: &[u8], seed: u64) -> Vec<Vec<u8>> {
        // Tiny reads exercise the refill path.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(7919);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut c = Chunker::new(Trickle(data), seed);
        let mut out = Vec::new();
        while let Some(chunk) = c.next_chunk().unwrap() {
            out.push(chunk.to_vec());
        }
        out
    }

    #[test]
    fn chunks_reassemble_and_respect_size_limits() {
        let data = noise(20 << 20, 7);
        let parts = chunks(&data, 1);
        assert_eq!(parts.concat(), data);
        let (last, rest) = parts.split_last().unwrap();
        assert!(!last.is_empty());
        for p in rest {
            assert!(
                p.len() >= CHUNK_MIN && p.len() <= CHUNK_MAX,
                "chunk of {}",
                p.len()
            );
        }
        let avg = data.len() / parts.len();
        assert!(avg > CHUNK_AVG / 2 && avg < CHUNK_AVG * 2, "average {avg}");
    }

    #[test]
    fn an_insert_near_the_start_only_changes_nearby_chunks() {
        let data = noise(16 << 20, 3);
        let mut edited = data[..100_000].to_vec();
        edited.extend_from_slice(b"a new row inserted near the start");
        edited.extend_from_slice(&data[100_000..]);
        let a = chunks(&data, 9);
        let b = chunks(&edited, 9);
        let shared = b.iter().filter(|c| a.contains(c)).count();
        assert!(
            shared >= a.len() - 2,
            "{shared} of {} chunks shared",
            a.len()
        );
    }

    #[test]
    fn the_seed_changes_the_boundaries_and_empty_input_has_no_chunks() {
        let data = noise(8 << 20, 5);
        assert_ne!(chunks(&data, 1)[0].len(), chunks(&data, 2)[0].len());
        assert!(chunks(b"", 1).is_empty());
        assert_eq!(chunks(b"tiny", 1), vec![b"tiny".to_vec()]);
    }
}
