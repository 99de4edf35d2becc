//! Arrow data (pyarrow, polars, arrow-backed pandas columns), imported through the C data
//! interface and hashed by logical content.
//!
//! Each column keeps two running digests: the positions of its missing slots and the bytes of
//! its present values. Chunks are fed one after another into the same digests, so how the data is
//! chunked or sliced never changes the result, and whatever sits in a null slot never counts.
//! Dictionary-encoded columns also count their dictionaries (order, unused entries), which
//! decide pandas' categories, each time a chunk brings a different one.

use arrow_buffer::{bit_util, NullBuffer};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field, IntervalUnit, TimeUnit};

use super::pieces::Pieces;
use super::{Encoder, Tag};
use crate::error::{Error, Result};

/// Gathered value bytes are fed to the column digest in blocks of this size.
const BLOCK: usize = 1 << 20;

/// Writes one logical Arrow array (`field` describes it; `chunks` are its pieces, in order).
pub fn write_arrow(enc: &mut Encoder, field: &Field, chunks: &[ArrayData]) -> Result<()> {
    enc.tag(Tag::Arrow);
    write_field(enc, field)?;
    let mut column = Column::new(field.data_type())?;
    for chunk in chunks {
        column.feed(chunk, chunk.nulls().cloned())?;
    }
    column.finish(enc);
    Ok(())
}

/// Writes an Arrow field, schema or type on its own (no data).
pub fn write_arrow_field(enc: &mut Encoder, field: &Field) -> Result<()> {
    enc.tag(Tag::ArrowField);
    write_field(enc, field)
}

enum Layout {
    /// Fixed-width values (numbers, temporal types, decimals): hashed straight from the buffer.
    Fixed(usize),
    Boolean,
    /// Each field is a column of its own, so a table's columns hash at buffer speed.
    Struct(Vec<Column>),
    /// Everything else is encoded element by element.
    Elements,
}

struct Column {
    layout: Layout,
    len: u64,
    null_count: u64,
    nulls: Encoder,
    values: Values,
    /// For element columns whose type holds a dictionary: the chunks' dictionaries.
    dictionaries: Option<Dictionaries>,
}

/// The dictionaries of a column's chunks, each counted when it differs from the previous
/// chunk's, so slices of one array (which share its dictionary) hash like the whole array.
struct Dictionaries {
    digest: Encoder,
    /// The previous chunk's dictionaries and their digest. All chunks stay alive while they are
    /// hashed, so dictionaries in the same memory are the same and need no second reading.
    last: Option<(Vec<ArrayData>, [u8; 32])>,
}

impl Dictionaries {
    fn feed(&mut self, data: &ArrayData) -> Result<()> {
        let mut found = Vec::new();
        dictionaries_in(data, &mut found);
        if let Some((last, _)) = &self.last {
            if last.len() == found.len() && last.iter().zip(&found).all(|(a, b)| a.ptr_eq(b)) {
                return Ok(());
            }
        }
        let mut entries = Vec::new();
        for values in &found {
            entries.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for i in 0..values.len() {
                encode_present(values, i, &mut entries)?;
            }
        }
        let digest = *blake3::hash(&entries).as_bytes();
        if self.last.as_ref().is_none_or(|(_, last)| *last != digest) {
            self.digest.raw(&digest);
        }
        self.last = Some((found, digest));
        Ok(())
    }
}

/// A column's present values: bulk data, so `H(pieces(values))`.
struct Values {
    enc: Encoder,
    pieces: Pieces,
}

impl Values {
    fn new() -> Self {
        Self { enc: Encoder::member(), pieces: Pieces::new() }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.pieces.write(&mut self.enc, bytes);
    }

    fn digest(&mut self) -> [u8; 32] {
        self.pieces.finish(&mut self.enc);
        self.enc.digest()
    }
}

impl Column {
    fn new(data_type: &DataType) -> Result<Self> {
        let layout = match data_type {
            DataType::Boolean => Layout::Boolean,
            DataType::Struct(fields) => {
                Layout::Struct(fields.iter().map(|f| Column::new(f.data_type())).collect::<Result<_>>()?)
            }
            other => match other.primitive_width() {
                Some(width) => Layout::Fixed(width),
                None => {
                    check_supported(other)?;
                    Layout::Elements
                }
            },
        };
        let dictionaries = (matches!(layout, Layout::Elements) && holds_dictionary(data_type))
            .then(|| Dictionaries { digest: Encoder::member(), last: None });
        Ok(Self { layout, len: 0, null_count: 0, nulls: Encoder::member(), values: Values::new(), dictionaries })
    }

    /// Feeds one chunk. `nulls` are the chunk's missing slots, including those inherited from a
    /// missing parent struct, aligned with the chunk's logical positions.
    fn feed(&mut self, data: &ArrayData, nulls: Option<NullBuffer>) -> Result<()> {
        let len = data.len();
        let nulls = nulls.filter(|n| n.null_count() > 0);
        if let Some(n) = &nulls {
            for i in n.iter().enumerate().filter_map(|(i, valid)| (!valid).then_some(i)) {
                self.nulls.u64(self.len + i as u64);
            }
            self.null_count += n.null_count() as u64;
        }
        let is_null = |i: usize| nulls.as_ref().is_some_and(|n| n.is_null(i));
        match &mut self.layout {
            Layout::Fixed(width) => {
                let w = *width;
                let start = data.offset() * w;
                let bytes = &data.buffers()[0].as_slice()[start..start + len * w];
                if nulls.is_none() {
                    self.values.write(bytes);
                } else {
                    let mut block = Vec::with_capacity(BLOCK.min(bytes.len()));
                    for (i, slot) in bytes.chunks_exact(w).enumerate() {
                        if is_null(i) {
                            block.extend(std::iter::repeat_n(0u8, w));
                        } else {
                            block.extend_from_slice(slot);
                        }
                        flush_if_full(&mut self.values, &mut block);
                    }
                    self.values.write(&block);
                }
            }
            Layout::Boolean => {
                let bits = data.buffers()[0].as_slice();
                let mut block = Vec::with_capacity(BLOCK.min(len));
                for i in 0..len {
                    block.push(u8::from(!is_null(i) && bit_util::get_bit(bits, data.offset() + i)));
                    flush_if_full(&mut self.values, &mut block);
                }
                self.values.write(&block);
            }
            Layout::Struct(children) => {
                for (child, child_data) in children.iter_mut().zip(data.child_data()) {
                    let child_data = child_data.slice(data.offset(), len);
                    let child_nulls = NullBuffer::union(nulls.as_ref(), child_data.nulls());
                    child.feed(&child_data, child_nulls)?;
                }
            }
            Layout::Elements => {
                if let Some(dictionaries) = &mut self.dictionaries {
                    dictionaries.feed(data)?;
                }
                let mut block = Vec::new();
                for i in (0..len).filter(|&i| !is_null(i)) {
                    encode_element(data, i, &mut block)?;
                    flush_if_full(&mut self.values, &mut block);
                }
                self.values.write(&block);
            }
        }
        self.len += len as u64;
        Ok(())
    }

    fn finish(&mut self, enc: &mut Encoder) {
        enc.u64(self.len);
        enc.u64(self.null_count);
        enc.raw(&self.nulls.digest());
        enc.raw(&self.values.digest());
        if let Some(dictionaries) = &mut self.dictionaries {
            enc.raw(&dictionaries.digest.digest());
        }
        if let Layout::Struct(children) = &mut self.layout {
            for child in children {
                child.finish(enc);
            }
        }
    }
}

fn flush_if_full(values: &mut Values, block: &mut Vec<u8>) {
    if block.len() >= BLOCK {
        values.write(block);
        block.clear();
    }
}

/// Appends element `i` (a logical position, known to be present) of `data`. Every element is
/// self-delimiting: variable-length values carry their length, nested values their children's
/// presence.
fn encode_element(data: &ArrayData, i: usize, out: &mut Vec<u8>) -> Result<()> {
    let j = data.offset() + i;
    let buffer = |k: usize| data.buffers()[k].as_slice();
    if let Some(w) = data.data_type().primitive_width() {
        out.extend_from_slice(&buffer(0)[j * w..(j + 1) * w]);
        return Ok(());
    }
    match data.data_type() {
        DataType::Null => {}
        DataType::Boolean => out.push(u8::from(bit_util::get_bit(buffer(0), j))),
        DataType::Utf8 | DataType::Binary => {
            let offsets = data.buffers()[0].typed_data::<i32>();
            put_bytes(out, &buffer(1)[offsets[j] as usize..offsets[j + 1] as usize]);
        }
        DataType::LargeUtf8 | DataType::LargeBinary => {
            let offsets = data.buffers()[0].typed_data::<i64>();
            put_bytes(out, &buffer(1)[offsets[j] as usize..offsets[j + 1] as usize]);
        }
        DataType::Utf8View | DataType::BinaryView => {
            // A view is 16 bytes: length, then either the bytes inline (≤ 12) or a 4-byte
            // prefix, the index of the data buffer and the offset in it.
            let view = &buffer(0)[j * 16..(j + 1) * 16];
            let word = |k: usize| u32::from_le_bytes(view[k..k + 4].try_into().unwrap()) as usize;
            let len = word(0);
            if len <= 12 {
                put_bytes(out, &view[4..4 + len]);
            } else {
                let (index, offset) = (word(8), word(12));
                put_bytes(out, &buffer(1 + index)[offset..offset + len]);
            }
        }
        DataType::FixedSizeBinary(n) => {
            let n = *n as usize;
            out.extend_from_slice(&buffer(0)[j * n..(j + 1) * n]);
        }
        DataType::List(_) | DataType::Map(_, _) => {
            let offsets = data.buffers()[0].typed_data::<i32>();
            encode_children(&data.child_data()[0], offsets[j] as usize..offsets[j + 1] as usize, out)?;
        }
        DataType::LargeList(_) => {
            let offsets = data.buffers()[0].typed_data::<i64>();
            encode_children(&data.child_data()[0], offsets[j] as usize..offsets[j + 1] as usize, out)?;
        }
        DataType::FixedSizeList(_, n) => {
            let n = *n as usize;
            encode_children(&data.child_data()[0], j * n..(j + 1) * n, out)?;
        }
        DataType::Struct(_) => {
            for child in data.child_data() {
                encode_present(child, j, out)?;
            }
        }
        DataType::Dictionary(key_type, _) => {
            let key = dictionary_key(key_type, buffer(0), j)?;
            encode_present(&data.child_data()[0], key, out)?;
        }
        other => return Err(Error::UnsupportedArrowType(other.to_string())),
    }
    Ok(())
}

/// Whether a type is, or nests, a dictionary.
fn holds_dictionary(data_type: &DataType) -> bool {
    use DataType as D;
    match data_type {
        D::Dictionary(..) => true,
        D::List(f) | D::LargeList(f) | D::FixedSizeList(f, _) | D::Map(f, _) => holds_dictionary(f.data_type()),
        D::Struct(fields) => fields.iter().any(|f| holds_dictionary(f.data_type())),
        _ => false,
    }
}

/// Collects the values of every dictionary in `data`, depth first. Slicing never reaches a
/// dictionary: it applies to the keys.
fn dictionaries_in(data: &ArrayData, found: &mut Vec<ArrayData>) {
    if let DataType::Dictionary(..) = data.data_type() {
        let values = &data.child_data()[0];
        found.push(values.clone());
        dictionaries_in(values, found);
    } else {
        for child in data.child_data() {
            dictionaries_in(child, found);
        }
    }
}

fn encode_children(child: &ArrayData, range: std::ops::Range<usize>, out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&(range.len() as u64).to_le_bytes());
    for k in range {
        encode_present(child, k, out)?;
    }
    Ok(())
}

/// A presence byte, then the element if present.
fn encode_present(data: &ArrayData, i: usize, out: &mut Vec<u8>) -> Result<()> {
    if data.is_null(i) {
        out.push(0);
        Ok(())
    } else {
        out.push(1);
        encode_element(data, i, out)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn dictionary_key(key_type: &DataType, keys: &[u8], j: usize) -> Result<usize> {
    let width = key_type
        .primitive_width()
        .ok_or_else(|| Error::UnsupportedArrowType(format!("dictionary key type {key_type}")))?;
    let mut raw = [0u8; 8];
    raw[..width].copy_from_slice(&keys[j * width..(j + 1) * width]);
    let key = match key_type {
        DataType::Int8 => raw[0] as i8 as i64,
        DataType::Int16 => i16::from_le_bytes([raw[0], raw[1]]) as i64,
        DataType::Int32 => i32::from_le_bytes(raw[..4].try_into().unwrap()) as i64,
        DataType::Int64 => i64::from_le_bytes(raw),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => u64::from_le_bytes(raw) as i64,
        other => return Err(Error::UnsupportedArrowType(format!("dictionary key type {other}"))),
    };
    usize::try_from(key).map_err(|_| Error::UnsupportedArrowType(format!("negative dictionary key {key}")))
}

fn check_supported(data_type: &DataType) -> Result<()> {
    let mut probe = Encoder::member();
    write_type(&mut probe, data_type)
}

fn write_field(enc: &mut Encoder, field: &Field) -> Result<()> {
    enc.str(field.name());
    enc.u8(u8::from(field.is_nullable()));
    write_type(enc, field.data_type())?;
    if let Some(ordered) = field.dict_is_ordered() {
        // The ordered flag decides whether categories compare (pandas' `max()`, sorting).
        enc.u8(u8::from(ordered));
    }
    // Metadata can change what consumers do with the data (pyarrow restores a pandas index from
    // it), so it counts; sorted, because it is a map.
    let mut metadata: Vec<_> = field.metadata().iter().collect();
    metadata.sort();
    enc.len(metadata.len());
    for (k, v) in metadata {
        enc.str(k);
        enc.str(v);
    }
    Ok(())
}

/// The canonical encoding of an Arrow type: a code per type, then its parameters.
fn write_type(enc: &mut Encoder, data_type: &DataType) -> Result<()> {
    use DataType as D;
    let unit = |u: &TimeUnit| match u {
        TimeUnit::Second => 0u8,
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 2,
        TimeUnit::Nanosecond => 3,
    };
    match data_type {
        D::Null => enc.u8(0),
        D::Boolean => enc.u8(1),
        D::Int8 => enc.u8(2),
        D::Int16 => enc.u8(3),
        D::Int32 => enc.u8(4),
        D::Int64 => enc.u8(5),
        D::UInt8 => enc.u8(6),
        D::UInt16 => enc.u8(7),
        D::UInt32 => enc.u8(8),
        D::UInt64 => enc.u8(9),
        D::Float16 => enc.u8(10),
        D::Float32 => enc.u8(11),
        D::Float64 => enc.u8(12),
        D::Timestamp(u, tz) => {
            enc.u8(13);
            enc.u8(unit(u));
            match tz {
                Some(tz) => {
                    enc.u8(1);
                    enc.str(tz);
                }
                None => enc.u8(0),
            }
        }
        D::Date32 => enc.u8(14),
        D::Date64 => enc.u8(15),
        D::Time32(u) => {
            enc.u8(16);
            enc.u8(unit(u));
        }
        D::Time64(u) => {
            enc.u8(17);
            enc.u8(unit(u));
        }
        D::Duration(u) => {
            enc.u8(18);
            enc.u8(unit(u));
        }
        D::Interval(u) => {
            enc.u8(19);
            enc.u8(match u {
                IntervalUnit::YearMonth => 0,
                IntervalUnit::DayTime => 1,
                IntervalUnit::MonthDayNano => 2,
            });
        }
        D::Binary => enc.u8(20),
        D::LargeBinary => enc.u8(21),
        D::BinaryView => enc.u8(22),
        D::FixedSizeBinary(n) => {
            enc.u8(23);
            enc.i64(i64::from(*n));
        }
        D::Utf8 => enc.u8(24),
        D::LargeUtf8 => enc.u8(25),
        D::Utf8View => enc.u8(26),
        D::List(f) => {
            enc.u8(27);
            write_field(enc, f)?;
        }
        D::LargeList(f) => {
            enc.u8(28);
            write_field(enc, f)?;
        }
        D::FixedSizeList(f, n) => {
            enc.u8(29);
            enc.i64(i64::from(*n));
            write_field(enc, f)?;
        }
        D::Struct(fields) => {
            enc.u8(30);
            enc.len(fields.len());
            for f in fields {
                write_field(enc, f)?;
            }
        }
        D::Map(f, sorted) => {
            enc.u8(31);
            enc.u8(u8::from(*sorted));
            write_field(enc, f)?;
        }
        D::Dictionary(k, v) => {
            enc.u8(32);
            write_type(enc, k)?;
            write_type(enc, v)?;
        }
        D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) | D::Decimal256(p, s) => {
            enc.u8(match data_type {
                D::Decimal32(..) => 33,
                D::Decimal64(..) => 34,
                D::Decimal128(..) => 35,
                _ => 36,
            });
            enc.u8(*p);
            enc.i64(i64::from(*s));
        }
        other => return Err(Error::UnsupportedArrowType(other.to_string())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::types::{Int32Type, Int8Type};
    use arrow_array::{
        Array, ArrayRef, BooleanArray, DictionaryArray, Int32Array, Int64Array, ListArray, StringArray,
        StringViewArray, StructArray,
    };
    use arrow_buffer::Buffer;
    use std::sync::Arc;

    fn digest(field: &Field, chunks: &[ArrayRef]) -> String {
        let data: Vec<ArrayData> = chunks.iter().map(|a| a.to_data()).collect();
        let mut enc = Encoder::new();
        write_arrow(&mut enc, field, &data).unwrap();
        enc.hex()
    }

    fn one(field: &Field, array: ArrayRef) -> String {
        digest(field, &[array])
    }

    #[test]
    fn chunking_and_slicing_do_not_count() {
        let field = Field::new("x", DataType::Int64, true);
        let whole: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4), None, Some(6)]));
        let chunks = [whole.slice(0, 2), whole.slice(2, 3), whole.slice(5, 1)];
        assert_eq!(one(&field, whole.clone()), digest(&field, &chunks));
        let fresh: ArrayRef = Arc::new(Int64Array::from(vec![Some(3), Some(4), None]));
        assert_eq!(one(&field, whole.slice(2, 3)), one(&field, fresh));
    }

    #[test]
    fn values_in_null_slots_do_not_count() {
        let field = Field::new("x", DataType::Int32, true);
        let validity = NullBuffer::from(vec![true, false, true]);
        let a = Int32Array::new(vec![1, 2, 3].into(), Some(validity.clone()));
        let b = Int32Array::new(vec![1, 99, 3].into(), Some(validity));
        assert_eq!(one(&field, Arc::new(a)), one(&field, Arc::new(b)));
        let c = Int32Array::from(vec![1, 0, 3]);
        assert_ne!(one(&field, Arc::new(Int32Array::from(vec![Some(1), None, Some(3)]))), one(&field, Arc::new(c)));
    }

    #[test]
    fn booleans_at_odd_offsets_hash_like_fresh_ones() {
        let field = Field::new("b", DataType::Boolean, false);
        let all: ArrayRef =
            Arc::new(BooleanArray::from(vec![true, false, true, true, false, false, true, false, true, true]));
        let fresh: ArrayRef = Arc::new(BooleanArray::from(vec![false, true, true, false, false]));
        assert_eq!(one(&field, all.slice(1, 5)), one(&field, fresh));
    }

    #[test]
    fn strings_and_views_hash_by_content() {
        let field = Field::new("s", DataType::Utf8, true);
        let long = "a string longer than twelve bytes";
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("ab"), None, Some(long)]));
        let chunks = [a.slice(0, 1), a.slice(1, 2)];
        assert_eq!(one(&field, a.clone()), digest(&field, &chunks));
        let view_field = Field::new("s", DataType::Utf8View, true);
        let v: ArrayRef = Arc::new(StringViewArray::from(vec![Some("ab"), None, Some(long)]));
        let w: ArrayRef =
            Arc::new(StringViewArray::from(vec![Some("ab"), None, Some("a string longer than twelve bytez")]));
        assert_ne!(one(&view_field, v.clone()), one(&view_field, w));
        assert_eq!(one(&view_field, v.clone()), digest(&view_field, &[v.slice(0, 2), v.slice(2, 1)]));
    }

    #[test]
    fn dictionaries_count_their_order_and_unused_entries() {
        let dt = DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8));
        let field = Field::new("d", dt, true);
        let dictionary = |keys: Vec<i8>, values: Vec<&str>| -> ArrayRef {
            let values: ArrayRef = Arc::new(StringArray::from(values));
            Arc::new(DictionaryArray::<Int8Type>::try_new(arrow_array::Int8Array::from(keys), values).unwrap())
        };
        let a = dictionary(vec![0, 1, 0], vec!["x", "y"]);
        let reordered = dictionary(vec![1, 0, 1], vec!["y", "x"]);
        let unused = dictionary(vec![0, 1, 0], vec!["x", "y", "z"]);
        assert_ne!(one(&field, a.clone()), one(&field, reordered));
        assert_ne!(one(&field, a.clone()), one(&field, unused));
        // Slices share their array's dictionary, so chunking still does not count.
        assert_eq!(one(&field, a.clone()), digest(&field, &[a.slice(0, 1), a.slice(1, 2)]));
        let ordered = field.clone().with_dict_is_ordered(true);
        assert_ne!(one(&field, a.clone()), one(&ordered, a));
    }

    #[test]
    fn struct_columns_hash_per_field_and_mask_missing_parents() {
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![1, 2, 3]));
        let ints_other: ArrayRef = Arc::new(Int32Array::from(vec![1, 7, 3]));
        let fields = vec![Arc::new(Field::new("i", DataType::Int32, false))];
        let parent_nulls = Some(NullBuffer::from(vec![true, false, true]));
        let a = StructArray::new(fields.clone().into(), vec![ints], parent_nulls.clone());
        let b = StructArray::new(fields.clone().into(), vec![ints_other], parent_nulls);
        let field = Field::new("s", a.data_type().clone(), true);
        assert_eq!(one(&field, Arc::new(a)), one(&field, Arc::new(b)));
    }

    #[test]
    fn lists_count_their_lengths() {
        let field = Field::new("l", DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))), true);
        let a =
            ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1), Some(2)]), Some(vec![Some(3)])]);
        let b =
            ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)]), Some(vec![Some(2), Some(3)])]);
        assert_ne!(one(&field, Arc::new(a)), one(&field, Arc::new(b)));
    }

    #[test]
    fn type_and_name_count() {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![1, 2]));
        assert_ne!(
            one(&Field::new("x", DataType::Int32, false), a.clone()),
            one(&Field::new("y", DataType::Int32, false), a)
        );
        let raw = Buffer::from_slice_ref([1i64, 2]);
        let as_i64: ArrayRef = Arc::new(Int64Array::new(raw.into(), None));
        let as_i32: ArrayRef = Arc::new(Int32Array::from(vec![1, 0, 2, 0]));
        assert_ne!(
            one(&Field::new("x", DataType::Int64, false), as_i64),
            one(&Field::new("x", DataType::Int32, false), as_i32)
        );
    }
}
