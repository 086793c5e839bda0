//! Reading results tables as Arrow: pages after a cursor (the results API,
//! SSE, `INTO TOPIC`) and whole tables (pull queries).
//!
//! A backend hands each stored value straight to a `ResultColumns`, which
//! builds one Arrow column per results column in its stored type
//! (`stored_type`): `Timestamp(ms)`, `Int64`, `Float64`, `Boolean`, `Utf8`
//! or `Binary`. Pages are batches of those types; pull queries and
//! `INTO TOPIC` cast them to the query's exact output types.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::backend::Param;
use super::{ColumnKind, ResultFilter, ResultPage, Store, column_kind, quote, stored_ts};
use crate::error::Result;
use crate::model::emission::FINAL;

/// The Arrow type a results column of `kind` is read back as.
pub(crate) fn stored_type(kind: ColumnKind) -> DataType {
    match kind {
        ColumnKind::Bool => DataType::Boolean,
        ColumnKind::Int => DataType::Int64,
        ColumnKind::Real => DataType::Float64,
        ColumnKind::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
        ColumnKind::Blob => DataType::Binary,
        ColumnKind::Text => DataType::Utf8,
    }
}

/// `schema` as its results table stores it: each column in its stored type,
/// nullable.
pub fn stored_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), stored_type(column_kind(f.data_type())), true))
            .collect::<Vec<_>>(),
    ))
}

/// One stored value, as a backend reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    /// Epoch ms.
    Ts(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

enum Builder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Real(Float64Builder),
    Ts(TimestampMillisecondBuilder),
    Text(StringBuilder),
    Blob(BinaryBuilder),
}

/// The rows of a results query being read: each row's cursor and one Arrow
/// builder per column.
pub(crate) struct ResultColumns {
    schema: SchemaRef,
    kinds: Vec<ColumnKind>,
    seqs: Vec<i64>,
    cols: Vec<Builder>,
}

impl ResultColumns {
    /// Columns for the results of a query whose output is `schema`.
    pub(crate) fn new(schema: &Schema) -> Self {
        let schema = stored_schema(schema);
        let kinds: Vec<ColumnKind> = schema
            .fields()
            .iter()
            .map(|f| column_kind(f.data_type()))
            .collect();
        let mut out = ResultColumns {
            schema,
            kinds,
            seqs: Vec::new(),
            cols: Vec::new(),
        };
        out.cols = out.builders();
        out
    }

    fn builders(&self) -> Vec<Builder> {
        self.kinds
            .iter()
            .map(|k| match k {
                ColumnKind::Bool => Builder::Bool(BooleanBuilder::new()),
                ColumnKind::Int => Builder::Int(Int64Builder::new()),
                ColumnKind::Real => Builder::Real(Float64Builder::new()),
                ColumnKind::Timestamp => Builder::Ts(TimestampMillisecondBuilder::new()),
                ColumnKind::Text => Builder::Text(StringBuilder::new()),
                ColumnKind::Blob => Builder::Blob(BinaryBuilder::new()),
            })
            .collect()
    }

    /// How each column is stored, in order.
    pub(crate) fn kinds(&self) -> &[ColumnKind] {
        &self.kinds
    }

    /// Rows read so far.
    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Starts a row with its cursor; one [`push`](Self::push) per column follows.
    pub(crate) fn start_row(&mut self, seq: i64) {
        self.seqs.push(seq);
    }

    /// Appends column `c`'s value of the current row; a value not of the
    /// column's stored type is NULL.
    pub(crate) fn push(&mut self, c: usize, v: Cell<'_>) {
        match (&mut self.cols[c], v) {
            (Builder::Bool(b), Cell::Bool(x)) => b.append_value(x),
            (Builder::Bool(b), Cell::Int(x)) => b.append_value(x != 0),
            (Builder::Int(b), Cell::Int(x)) => b.append_value(x),
            (Builder::Real(b), Cell::Real(x)) => b.append_value(x),
            (Builder::Real(b), Cell::Int(x)) => b.append_value(x as f64),
            (Builder::Ts(b), Cell::Ts(x)) => b.append_value(x),
            (Builder::Text(b), Cell::Text(x)) => b.append_value(x),
            (Builder::Blob(b), Cell::Blob(x)) => b.append_value(x),
            (Builder::Bool(b), _) => b.append_null(),
            (Builder::Int(b), _) => b.append_null(),
            (Builder::Real(b), _) => b.append_null(),
            (Builder::Ts(b), _) => b.append_null(),
            (Builder::Text(b), _) => b.append_null(),
            (Builder::Blob(b), _) => b.append_null(),
        }
    }

    /// The rows read since the last call, as a batch of the stored types,
    /// with each row's cursor.
    pub(crate) fn finish(&mut self) -> Result<(RecordBatch, Vec<i64>)> {
        let cols: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|b| match b {
                Builder::Bool(b) => ArrayBuilder::finish(b),
                Builder::Int(b) => ArrayBuilder::finish(b),
                Builder::Real(b) => ArrayBuilder::finish(b),
                Builder::Ts(b) => ArrayBuilder::finish(b),
                Builder::Text(b) => ArrayBuilder::finish(b),
                Builder::Blob(b) => ArrayBuilder::finish(b),
            })
            .collect();
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(self.len()));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), cols, &options)?;
        Ok((batch, std::mem::take(&mut self.seqs)))
    }
}

/// `batch` (stored types) with its columns cast to the types of `schema`,
/// all nullable.
fn cast_to(batch: &RecordBatch, schema: &Schema) -> Result<RecordBatch> {
    let cols = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let options =
        datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        cols,
        &options,
    )?)
}

/// `SELECT _seq, <columns of schema> FROM query`.
fn select(query: &str, schema: &Schema) -> String {
    let cols: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
    format!("SELECT _seq, {} FROM {}", cols.join(", "), quote(query))
}

impl Store {
    /// Reads a page of the results of `query` (whose output is `schema`),
    /// oldest write first, as a batch of the stored types.
    pub fn read_results(
        &self,
        query: &str,
        schema: &Schema,
        f: &ResultFilter,
    ) -> Result<ResultPage> {
        let mut sql = format!("{} WHERE 1 = 1", select(query, schema));
        let mut params = Vec::new();
        if let Some(from) = &f.from {
            params.push(Param::Ts(stored_ts(from)?));
            sql.push_str(&format!(" AND window_start >= ${}", params.len()));
        }
        if let Some(to) = &f.to {
            params.push(Param::Ts(stored_ts(to)?));
            sql.push_str(&format!(" AND window_start < ${}", params.len()));
        }
        if let Some(after) = f.after {
            params.push(Param::Int(after));
            sql.push_str(&format!(" AND _seq > ${}", params.len()));
        }
        // Only queries that emit early have provisional rows.
        if f.final_only && schema.field_with_name(FINAL).is_ok() {
            sql.push_str(&format!(" AND {}", quote(FINAL)));
        }
        // One row more than asked tells whether the page is the last.
        sql.push_str(&format!(
            " ORDER BY _seq LIMIT {}",
            f.limit.min(i64::MAX as usize - 1) + 1
        ));
        let mut cols = ResultColumns::new(schema);
        self.read(|tx| tx.query_results(&sql, &params, &mut cols, &mut |_| Ok(())))?;
        let (mut batch, mut seqs) = cols.finish()?;
        let has_more = seqs.len() > f.limit;
        if has_more {
            batch = batch.slice(0, f.limit);
            seqs.truncate(f.limit);
        }
        Ok(ResultPage {
            batch,
            cursor: seqs.last().copied().or(f.after),
            seqs,
            has_more,
        })
    }

    /// Loads a whole results table as one batch of `schema`, for pull queries.
    pub fn load_results(&self, query: &str, schema: &SchemaRef) -> Result<RecordBatch> {
        let page = self.read_results(
            query,
            schema,
            &ResultFilter {
                limit: i64::MAX as usize,
                ..Default::default()
            },
        )?;
        cast_to(&page.batch, schema)
    }

    /// Loads a results table as batches of `schema` of at most `page_rows`
    /// rows each, handing each to `admit` first: an error from it stops the
    /// load, so a caller can refuse a table too big to hold before all of it
    /// is read. The rows come from one statement: one consistent view, even
    /// while windows are replaced.
    pub fn load_results_paged(
        &self,
        query: &str,
        schema: &SchemaRef,
        page_rows: usize,
        mut admit: impl FnMut(&RecordBatch) -> Result<()>,
    ) -> Result<Vec<RecordBatch>> {
        let sql = format!("{} ORDER BY _seq", select(query, schema));
        let page_rows = page_rows.max(1);
        let mut out = Vec::new();
        let mut flush = |cols: &mut ResultColumns| -> Result<()> {
            let batch = cast_to(&cols.finish()?.0, schema)?;
            admit(&batch)?;
            out.push(batch);
            Ok(())
        };
        let mut cols = ResultColumns::new(schema);
        self.read(|tx| {
            tx.query_results(&sql, &[], &mut cols, &mut |cols| match cols.len() {
                n if n == page_rows => flush(cols),
                _ => Ok(()),
            })
        })?;
        if cols.len() > 0 {
            flush(&mut cols)?;
        }
        if out.is_empty() {
            out.push(cast_to(&cols.finish()?.0, schema)?);
        }
        Ok(out)
    }

    /// Up to `limit` rows of `query` written after cursor `after` (from the
    /// first row when `None`), oldest write first, as a batch of `schema`,
    /// with each row's cursor: what `INTO TOPIC` publishes.
    pub fn rows_after(
        &self,
        query: &str,
        after: Option<i64>,
        limit: usize,
        schema: &SchemaRef,
    ) -> Result<(RecordBatch, Vec<i64>)> {
        let page = self.read_results(
            query,
            schema,
            &ResultFilter {
                after,
                limit,
                ..Default::default()
            },
        )?;
        Ok((cast_to(&page.batch, schema)?, page.seqs))
    }
}
