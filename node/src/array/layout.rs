//! Where LU bytes live on the member disks: the RAID geometry.
//!
//! Pure arithmetic, no I/O. RAID 5 uses the left-symmetric layout (the
//! Linux md default): parity rotates from the last member backwards and the
//! data chunks of a stripe start right after the parity chunk, so sequential
//! reads touch every member in turn.

use serde::{Deserialize, Serialize};

/// The redundancy scheme of an LU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Raid {
    /// RAID 1: every member holds every byte.
    Mirror,
    /// RAID 5: one rotating parity chunk per stripe.
    Parity,
}

/// The shape of an LU over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub raid: Raid,
    pub members: usize,
    /// Bytes of one chunk (one member's share of a stripe).
    pub unit: u64,
    /// Bytes used on each member, a multiple of `unit`.
    pub per_disk: u64,
}

/// One stripe's share of an LU byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripePiece {
    pub stripe: u64,
    /// Offset of the piece within the stripe's data bytes.
    pub within: u64,
    pub len: u64,
    /// Offset of the piece within the caller's buffer.
    pub buf_at: usize,
}

/// One data chunk's share of a stripe piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPiece {
    /// Member slot holding the chunk.
    pub slot: usize,
    /// Byte range within the chunk.
    pub start: u64,
    pub end: u64,
    /// Offset of the piece within the stripe piece's bytes.
    pub piece_at: usize,
}

impl Geometry {
    pub fn data_members(&self) -> usize {
        match self.raid {
            Raid::Mirror => 1,
            Raid::Parity => self.members - 1,
        }
    }

    /// LU bytes in one stripe.
    pub fn stripe_bytes(&self) -> u64 {
        self.unit * self.data_members() as u64
    }

    pub fn stripes(&self) -> u64 {
        self.per_disk / self.unit
    }

    pub fn capacity(&self) -> u64 {
        self.per_disk * self.data_members() as u64
    }

    /// Member holding stripe `s`'s parity (RAID 5 only).
    pub fn parity_slot(&self, s: u64) -> usize {
        self.members - 1 - (s % self.members as u64) as usize
    }

    /// Member holding data chunk `k` of stripe `s`.
    pub fn data_slot(&self, s: u64, k: usize) -> usize {
        match self.raid {
            Raid::Mirror => 0,
            Raid::Parity => (self.parity_slot(s) + 1 + k) % self.members,
        }
    }

    /// Offset on every member's data area where stripe `s` begins.
    pub fn disk_offset(&self, s: u64) -> u64 {
        s * self.unit
    }

    /// Splits an LU range into per-stripe pieces.
    pub fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = StripePiece> + '_ {
        let sb = self.stripe_bytes();
        let mut at = offset;
        let end = offset + len;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let within = at % sb;
            let take = (sb - within).min(end - at);
            let p = StripePiece {
                stripe: at / sb,
                within,
                len: take,
                buf_at: (at - offset) as usize,
            };
            at += take;
            Some(p)
        })
    }

    /// Splits a stripe piece into its data chunks (RAID 5).
    pub fn chunks(&self, p: &StripePiece) -> Vec<ChunkPiece> {
        let mut out = Vec::new();
        let mut at = p.within;
        let end = p.within + p.len;
        while at < end {
            let k = (at / self.unit) as usize;
            let start = at % self.unit;
            let stop = (self.unit).min(start + (end - at));
            out.push(ChunkPiece {
                slot: self.data_slot(p.stripe, k),
                start,
                end: stop,
                piece_at: (at - p.within) as usize,
            });
            at += stop - start;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raid5(n: usize) -> Geometry {
        Geometry {
            raid: Raid::Parity,
            members: n,
            unit: 4096,
            per_disk: 4096 * 12,
        }
    }

    #[test]
    fn parity_rotates_over_every_member_and_never_collides_with_data() {
        let g = raid5(4);
        let parity: Vec<usize> = (0..4).map(|s| g.parity_slot(s)).collect();
        assert_eq!(parity, vec![3, 2, 1, 0]);
        for s in 0..8 {
            let mut slots: Vec<usize> = (0..3).map(|k| g.data_slot(s, k)).collect();
            slots.push(g.parity_slot(s));
            slots.sort();
            assert_eq!(slots, vec![0, 1, 2, 3], "stripe {s}");
        }
    }

    #[test]
    fn pieces_cover_a_range_exactly() {
        let g = raid5(3);
        let sb = g.stripe_bytes();
        let pieces: Vec<_> = g.pieces(sb - 10, sb + 20).collect();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.iter().map(|p| p.len).sum::<u64>(), sb + 20);
        assert_eq!(
            pieces[1],
            StripePiece {
                stripe: 1,
                within: 0,
                len: sb,
                buf_at: 10
            }
        );
        let chunks = g.chunks(&pieces[1]);
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[1].start, chunks[1].end, chunks[1].piece_at), (0, 4096, 4096));
    }
}
