//! A batch's token layout, built once per batch: the sequences' token ids end to end, each
//! token's position in its sequence, and where each sequence starts. Embeddings,
//! attention and pooling all read it; none recomputes an offset.

/// Where one sequence lies in the packed tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Its first token's row.
    pub start: usize,
    /// Its tokens.
    pub len: usize,
}

impl Span {
    /// Its rows in the packed tokens.
    pub fn rows(self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

/// Sequences laid end to end without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedBatch {
    ids: Vec<u32>,
    positions: Vec<u32>,
    spans: Vec<Span>,
}

impl PackedBatch {
    /// Packs `batch` (token ids per sequence) in order.
    pub fn new(batch: &[&[u32]]) -> Self {
        let tokens = batch.iter().map(|s| s.len()).sum();
        let mut ids = Vec::with_capacity(tokens);
        let mut positions = Vec::with_capacity(tokens);
        let mut spans = Vec::with_capacity(batch.len());
        for seq in batch {
            spans.push(Span {
                start: ids.len(),
                len: seq.len(),
            });
            ids.extend_from_slice(seq);
            // A sequence is at most max_seq_length (≤ 512 positions) long: it fits a u32.
            positions.extend((0..seq.len()).map(|p| p as u32));
        }
        Self {
            ids,
            positions,
            spans,
        }
    }

    /// Every token's id, in packed order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Every token's position inside its sequence, in packed order.
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    /// Each sequence's place, in batch order.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Tokens in all.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// The longest sequence's tokens (0 for an empty batch).
    pub fn longest(&self) -> usize {
        self.spans.iter().map(|s| s.len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lays_sequences_end_to_end() {
        let batch = PackedBatch::new(&[&[7, 8, 9], &[4], &[5, 6]]);
        assert_eq!(batch.ids(), [7, 8, 9, 4, 5, 6]);
        assert_eq!(batch.positions(), [0, 1, 2, 0, 0, 1]);
        let rows: Vec<_> = batch.spans().iter().map(|s| s.rows()).collect();
        assert_eq!(rows, [0..3, 3..4, 4..6]);
        assert_eq!((batch.tokens(), batch.longest()), (6, 3));
    }
}
