//! The accumulators: one sketch, and every group's sketch in one vector
//! (sparse hash codes until they would outgrow the dense registers).

use super::*;

/// Accumulator of [`ApproxDistinctHll`]: one HyperLogLog++ sketch.
///
/// [`Accumulator::state`] and [`Accumulator::merge_batch`] round-trip
/// exactly: merging the states of accumulators that each saw part of the
/// data gives the same estimate as one accumulator that saw all of it.
/// `state()` is canonical: the same set of values always yields the same
/// bytes.
pub struct ApproxDistinctAccumulator {
    sketch: Sketch,
    /// Heap bytes held by the sketch, refreshed after every mutation so
    /// that `size()` (called after each update) stays O(1).
    heap_bytes: usize,
    /// The sketch switched to dense registers. It never switches back and
    /// its size no longer changes, so there is nothing left to measure.
    dense: bool,
}

impl ApproxDistinctAccumulator {
    /// Creates an accumulator holding an empty sketch.
    pub fn new() -> Self {
        Self {
            sketch: empty_sketch(),
            heap_bytes: 0,
            dense: false,
        }
    }

    /// Folds the sketch's pending hashes into its sparse list (which may
    /// make it dense) and returns the estimate.
    fn flush(&mut self) -> f64 {
        let estimate = self.sketch.count();
        self.measure();
        estimate
    }

    fn measure(&mut self) {
        if self.dense {
            return;
        }
        let mut measure = Measure::default();
        // Encoding a sketch cannot fail; on the impossible error keep the old figure.
        if codec::encode(&self.sketch, &mut measure).is_ok() {
            self.heap_bytes = measure.bytes;
            self.dense = measure.saw_some;
        }
    }
}

impl Default for ApproxDistinctAccumulator {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ApproxDistinctAccumulator {
    // The sketch itself is thousands of register words: show only its shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApproxDistinctAccumulator")
            .field("dense", &self.dense)
            .field("heap_bytes", &self.heap_bytes)
            .finish_non_exhaustive()
    }
}

impl Accumulator for ApproxDistinctAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [values] = values else {
            return internal_err!("approx_distinct expects 1 argument, got {}", values.len());
        };
        let sketch = &mut self.sketch;
        hash_array(values, None, &mut |_, hash| sketch.insert_any(&hash))?;
        self.measure();
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        // `count` needs `&mut`: it folds pending hashes in, which leaves the
        // set of hashes, and so every later estimate, unchanged.
        let estimate = self.flush();
        Ok(ScalarValue::UInt64(Some(estimate.round() as u64)))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.heap_bytes
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        // Pending hashes sit in a HashSet whose order varies from run to run;
        // folding them in first makes the bytes canonical and smaller.
        self.flush();
        let mut bytes = Vec::with_capacity(1 + self.heap_bytes);
        bytes.push(FORMAT_VERSION);
        codec::encode(&self.sketch, &mut bytes)
            .map_err(|e| exec_datafusion_err!("cannot serialise approx_distinct sketch: {e}"))?;
        // A sparse sketch is written in the compact layout instead.
        let mut codes = Vec::new();
        if !self.dense && read_library_sparse_state(&bytes, &mut codes).is_some() {
            codes.sort_unstable();
            bytes.clear();
            write_sparse_state(&codes, &mut bytes);
        }
        Ok(vec![ScalarValue::Binary(Some(bytes))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [states] = states else {
            return internal_err!(
                "approx_distinct expects 1 state column, got {}",
                states.len()
            );
        };
        for_each_state(states, |_, bytes| {
            let other = decode_sketch(bytes)?;
            self.sketch
                .merge(&other)
                .map_err(|e| exec_datafusion_err!("cannot merge approx_distinct sketches: {e}"))
        })?;
        self.measure();
        Ok(())
    }
}

/// Calls `f(row, state)` for every non-null state in `states`: a NULL state
/// carries no values.
pub(super) fn for_each_state(
    states: &ArrayRef,
    mut f: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    fn each<'a>(
        states: impl Iterator<Item = Option<&'a [u8]>>,
        f: &mut impl FnMut(usize, &[u8]) -> Result<()>,
    ) -> Result<()> {
        states
            .enumerate()
            .try_for_each(|(row, state)| state.map_or(Ok(()), |bytes| f(row, bytes)))
    }
    // Binary is what `state()` produces; the other binary encodings are
    // accepted in case a checkpoint store hands states back re-encoded.
    match states.data_type() {
        DataType::Binary => each(states.as_binary::<i32>().iter(), &mut f),
        DataType::LargeBinary => each(states.as_binary::<i64>().iter(), &mut f),
        DataType::BinaryView => each(states.as_binary_view().iter(), &mut f),
        other => internal_err!("approx_distinct state must be Binary, got {other}"),
    }
}

/// [`GroupsAccumulator`] of [`ApproxDistinctHll`]: one sketch per group,
/// all updated in a single pass over each batch.
///
/// States and estimates are those of [`ApproxDistinctAccumulator`], byte
/// for byte, so either accumulator merges the other's states.
///
/// Most groups of a large `GROUP BY` see a handful of values per batch. A
/// group therefore keeps its HyperLogLog++ sparse hash codes in a plain
/// vector, sorted only when needed, and writes its state from them
/// directly. It builds dense registers when its codes outgrow the sparse
/// list, which is exactly when the sketch library would.
#[derive(Default)]
pub struct ApproxDistinctGroupsAccumulator {
    groups: Vec<GroupSketch>,
    /// Heap bytes held by the sketches in `groups`, kept up to date by every
    /// change so that `size()` is O(1).
    heap_bytes: usize,
    /// Hash codes of the state being merged.
    scratch: Vec<u32>,
}

impl ApproxDistinctGroupsAccumulator {
    /// Creates an accumulator with no groups.
    pub fn new() -> Self {
        Self::default()
    }

    fn resize(&mut self, total_num_groups: usize) {
        if self.groups.len() < total_num_groups {
            self.groups
                .resize_with(total_num_groups, GroupSketch::default);
        }
    }

    /// Removes the groups `emit_to` asks for, no longer counting their memory.
    fn take(&mut self, emit_to: EmitTo) -> Vec<GroupSketch> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.heap_bytes -= taken.iter().map(GroupSketch::heap_bytes).sum::<usize>();
        taken
    }
}

impl fmt::Debug for ApproxDistinctGroupsAccumulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApproxDistinctGroupsAccumulator")
            .field("groups", &self.groups.len())
            .field("heap_bytes", &self.heap_bytes)
            .finish_non_exhaustive()
    }
}

impl GroupsAccumulator for ApproxDistinctGroupsAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let [values] = values else {
            return internal_err!("approx_distinct expects 1 argument, got {}", values.len());
        };
        self.resize(total_num_groups);
        let mask = opt_filter.map(filter_mask);
        let Self {
            groups, heap_bytes, ..
        } = self;
        hash_array(values, mask.as_ref(), &mut |row, hash| {
            let group = &mut groups[group_indices[row]];
            let before = group.heap_bytes();
            group.insert(hash);
            *heap_bytes = *heap_bytes + group.heap_bytes() - before;
        })
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let mut groups = self.take(emit_to);
        let estimates = groups.iter_mut().map(GroupSketch::estimate);
        Ok(Arc::new(UInt64Array::from_iter_values(estimates)))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let groups = self.take(emit_to);
        let mut states = StatesBuilder::with_capacity(groups.len());
        for mut group in groups {
            group.write_state(&mut states.values)?;
            states.end_state()?;
        }
        Ok(vec![states.finish()])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let [states] = values else {
            return internal_err!(
                "approx_distinct expects 1 state column, got {}",
                values.len()
            );
        };
        self.resize(total_num_groups);
        let Self {
            groups,
            heap_bytes,
            scratch,
        } = self;
        for_each_state(states, |row, bytes| {
            let group = &mut groups[group_indices[row]];
            let before = group.heap_bytes();
            let merged = group.merge_state(bytes, scratch);
            *heap_bytes = *heap_bytes + group.heap_bytes() - before;
            merged
        })
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let [values] = values else {
            return internal_err!("approx_distinct expects 1 argument, got {}", values.len());
        };
        // Each row on its own: the state of its value, or an empty one.
        let mut codes = vec![None; values.len()];
        let mask = opt_filter.map(filter_mask);
        hash_array(values, mask.as_ref(), &mut |row, hash| {
            codes[row] = Some(sparse_code(hash));
        })?;
        let mut states = StatesBuilder::with_capacity(codes.len());
        for code in codes {
            write_sparse_state(code.as_slice(), &mut states.values);
            states.end_state()?;
        }
        Ok(vec![states.finish()])
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self.groups.capacity() * size_of::<GroupSketch>()
            + self.heap_bytes
            + self.scratch.capacity() * size_of::<u32>()
    }
}

/// The rows a `FILTER (WHERE ...)` clause keeps: true, not NULL.
pub(super) fn filter_mask(filter: &BooleanArray) -> NullBuffer {
    match filter.nulls() {
        Some(nulls) => NullBuffer::new(filter.values() & nulls.inner()),
        None => NullBuffer::new(filter.values().clone()),
    }
}

/// Builds the `Binary` state column without spare capacity: the state
/// batches are what a window holds in memory until it closes.
pub(super) struct StatesBuilder {
    values: Vec<u8>,
    offsets: Vec<i32>,
}

impl StatesBuilder {
    fn with_capacity(states: usize) -> Self {
        let mut offsets = Vec::with_capacity(states + 1);
        offsets.push(0);
        Self {
            values: Vec::new(),
            offsets,
        }
    }

    /// Ends the state appended to `values` since the previous one.
    fn end_state(&mut self) -> Result<()> {
        let end = i32::try_from(self.values.len())
            .map_err(|_| exec_datafusion_err!("approx_distinct states exceed 2 GiB"))?;
        self.offsets.push(end);
        Ok(())
    }

    fn finish(mut self) -> ArrayRef {
        self.values.shrink_to_fit();
        Arc::new(BinaryArray::new(
            OffsetBuffer::new(self.offsets.into()),
            self.values.into(),
            None,
        ))
    }
}

/// One group's sketch.
pub(super) enum GroupSketch {
    /// Sparse: the hash codes the sketch library would keep in its sparse list.
    Sparse(SparseCodes),
    /// Dense: a library sketch that has switched to registers.
    Dense(Box<Sketch>),
}

/// Sparse hash codes: `codes[..sorted]` is sorted and distinct; the codes
/// after it came since, in any order, possibly repeated.
#[derive(Default)]
pub(super) struct SparseCodes {
    codes: Vec<u32>,
    sorted: usize,
}

impl SparseCodes {
    /// Sorts the codes that came since the last sort and merges them into
    /// the sorted head, once each: sorting only the new codes (a merged
    /// state's come sorted) and merging in one pass costs less than sorting
    /// them all again.
    fn sort(&mut self) {
        let head = self.sorted;
        if head == self.codes.len() {
            return;
        }
        self.codes[head..].sort_unstable();
        if head == 0 {
            self.codes.dedup();
            let room = sort_at(self.codes.len()) - self.codes.len();
            self.codes.reserve_exact(room);
        } else {
            let (old, new) = self.codes.split_at(head);
            // Room for the codes until the next sort: none of the pushes
            // before it grows the vector.
            let mut merged = Vec::with_capacity(sort_at(self.codes.len()));
            let (mut i, mut j) = (0, 0);
            while i < old.len() && j < new.len() {
                let next = old[i].min(new[j]);
                i += usize::from(old[i] == next);
                j += usize::from(new[j] == next);
                push_distinct(&mut merged, next);
            }
            for &code in old[i..].iter().chain(&new[j..]) {
                push_distinct(&mut merged, code);
            }
            self.codes = merged;
        }
        self.sorted = self.codes.len();
    }
}

/// Appends `code` to the sorted `codes` unless it is their last.
#[inline]
fn push_distinct(codes: &mut Vec<u32>, code: u32) {
    if codes.last() != Some(&code) {
        codes.push(code);
    }
}

/// Codes a sparse group takes before it first sorts them.
pub(super) const MIN_UNSORTED_CODES: usize = 32;

/// How many codes a sparse group holds when it sorts next, given `sorted`
/// sorted ones: sorting once the unsorted tail is as long as the sorted
/// head keeps the cost at O(log n) per code.
#[inline]
fn sort_at(sorted: usize) -> usize {
    2 * sorted + MIN_UNSORTED_CODES
}

/// Heap bytes of a dense group: the sketch and its registers (its sparse
/// list and pending set are empty and unallocated).
pub(super) const DENSE_HEAP_BYTES: usize =
    size_of::<Sketch>() + size_of::<u32>() * REGISTERS.div_ceil(REGISTERS_PER_WORD);

impl Default for GroupSketch {
    fn default() -> Self {
        Self::Sparse(SparseCodes::default())
    }
}

impl GroupSketch {
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Sparse(sparse) => sparse.codes.capacity() * size_of::<u32>(),
            Self::Dense(_) => DENSE_HEAP_BYTES,
        }
    }

    #[inline]
    fn insert(&mut self, hash: u64) {
        match self {
            Self::Sparse(sparse) => {
                sparse.codes.push(sparse_code(hash));
                if sparse.codes.len() < sort_at(sparse.sorted) {
                    return;
                }
            }
            Self::Dense(sketch) => return sketch.insert_any(&hash),
        }
        self.normalize();
    }

    /// Sorts and deduplicates a sparse group's codes, and makes the group
    /// dense if they no longer fit the sparse list.
    fn normalize(&mut self) {
        let Self::Sparse(sparse) = self else { return };
        sparse.sort();
        // Each code takes 1 to 5 bytes of the sparse list.
        if sparse.codes.len() * 5 > SPARSE_LIMIT && sparse_list_len(&sparse.codes) > SPARSE_LIMIT {
            *self = Self::Dense(dense_from_codes(&sparse.codes));
        }
    }

    /// The estimate, rounded as [`ApproxDistinctAccumulator`] rounds it.
    fn estimate(&mut self) -> u64 {
        self.normalize();
        let estimate = match self {
            Self::Sparse(sparse) => sparse_estimate(sparse.codes.len()),
            Self::Dense(sketch) => sketch.count(),
        };
        estimate.round() as u64
    }

    /// Appends the state [`ApproxDistinctAccumulator::state`] would give.
    fn write_state(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.normalize();
        match self {
            Self::Sparse(sparse) => write_sparse_state(&sparse.codes, out),
            Self::Dense(sketch) => {
                out.push(FORMAT_VERSION);
                codec::encode(&**sketch, out).map_err(|e| {
                    exec_datafusion_err!("cannot serialise approx_distinct sketch: {e}")
                })?;
            }
        }
        Ok(())
    }

    /// Merges a serialised state in; `scratch` is working space.
    fn merge_state(&mut self, bytes: &[u8], scratch: &mut Vec<u32>) -> Result<()> {
        scratch.clear();
        if read_sparse_state(bytes, scratch) {
            self.merge_codes(scratch);
            return Ok(());
        }
        // Dense, invalid, or sparse in a form `write_sparse_state` does not
        // produce: let the full decoder sort it out.
        let other = decode_sketch(bytes)?;
        if is_dense(&other) {
            if let Self::Sparse(sparse) = self {
                *self = Self::Dense(dense_from_codes(&sparse.codes));
            }
            let Self::Dense(sketch) = self else {
                unreachable!("made dense above")
            };
            return sketch
                .merge(&other)
                .map_err(|e| exec_datafusion_err!("cannot merge approx_distinct sketches: {e}"));
        }
        let mut canonical = vec![FORMAT_VERSION];
        codec::encode(&other, &mut canonical)
            .map_err(|e| exec_datafusion_err!("cannot serialise approx_distinct sketch: {e}"))?;
        scratch.clear();
        if !read_sparse_state(&canonical, scratch) {
            return internal_err!("approx_distinct cannot re-read a sparse state it wrote");
        }
        self.merge_codes(scratch);
        Ok(())
    }

    fn merge_codes(&mut self, codes: &[u32]) {
        match self {
            Self::Sparse(sparse) => {
                sparse.codes.extend_from_slice(codes);
                if sparse.codes.len() >= sort_at(sparse.sorted) {
                    self.normalize();
                }
            }
            Self::Dense(sketch) => {
                for &code in codes {
                    sketch.insert_any(&register_hash(code));
                }
            }
        }
    }
}

/// Whether a library sketch has switched to dense registers.
pub(super) fn is_dense(sketch: &Sketch) -> bool {
    let mut measure = Measure::default();
    codec::encode(sketch, &mut measure).is_ok() && measure.saw_some
}

/// A dense sketch holding `codes`.
pub(super) fn dense_from_codes(codes: &[u32]) -> Box<Sketch> {
    let mut sketch = Box::new(EMPTY_DENSE.clone());
    for &code in codes {
        sketch.insert_any(&register_hash(code));
    }
    sketch
}

/// A dense sketch with every register zero, decoded from a state so that it
/// is dense from the start (the library has no constructor for that).
pub(super) static EMPTY_DENSE: LazyLock<Sketch> = LazyLock::new(|| {
    let mut bytes = Vec::new();
    write_library_sparse_state(&[], &mut bytes);
    // Swap "no registers" for all-zero registers.
    bytes.pop();
    bytes.push(1);
    let words = vec![0u32; REGISTERS.div_ceil(REGISTERS_PER_WORD)];
    codec::encode(&(words, REGISTERS as u64, REGISTERS as u64), &mut bytes)
        .expect("registers encode");
    decode_sketch(&bytes).expect("empty dense sketch decodes")
});

pub(super) fn empty_sketch() -> Sketch {
    Sketch::new(PRECISION, PreHashed).expect("PRECISION is within HyperLogLog++'s 4..=18")
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::SparseCodes;

    /// A sorted head and new codes (repeats among them and of the head
    /// included) end up as all of them sorted once each.
    #[test]
    fn sorting_merges_new_codes_into_the_sorted_head() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        for _ in 0..5_000 {
            let range = rng.random_range(1..200u32);
            let mut codes: Vec<u32> = (0..rng.random_range(0..60))
                .map(|_| rng.random_range(0..range))
                .collect();
            codes.sort_unstable();
            codes.dedup();
            let sorted = codes.len();
            codes.extend((0..rng.random_range(0..80)).map(|_| rng.random_range(0..range)));
            let mut want = codes.clone();
            want.sort_unstable();
            want.dedup();
            let mut sparse = SparseCodes { codes, sorted };
            sparse.sort();
            assert_eq!(sparse.codes, want);
            assert_eq!(sparse.sorted, want.len());
        }
    }
}
