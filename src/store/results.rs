//! Reading results tables: pages after a cursor (the results API, SSE,
//! `INTO TOPIC`) and whole tables as Arrow batches (pull queries).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Schema, SchemaRef};

use super::backend::Param;
use super::{
    ColumnKind, ResultFilter, ResultPage, Store, Value, column_kind, int, quote, stored_ts,
};
use crate::error::Result;

impl Store {
    /// Reads a page of a query's results, oldest write first.
    pub fn read_results(&self, query: &str, f: &ResultFilter) -> Result<ResultPage> {
        let mut sql = format!("SELECT * FROM {} WHERE 1 = 1", quote(query));
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
        // One row more than asked tells whether the page is the last.
        sql.push_str(&format!(
            " ORDER BY _seq LIMIT {}",
            f.limit.min(i64::MAX as usize - 1) + 1
        ));
        let (columns, mut rows) = self.read(|tx| tx.query(&sql, &params))?;
        let has_more = rows.len() > f.limit;
        rows.truncate(f.limit);
        let seqs: Vec<i64> = rows
            .iter_mut()
            .map(|r| int(&r.remove(0)).unwrap_or(0))
            .collect();
        Ok(ResultPage {
            columns: columns[1..].to_vec(),
            rows,
            cursor: seqs.last().copied().or(f.after),
            seqs,
            has_more,
        })
    }

    /// Loads a whole results table as one batch of `schema`, for pull queries.
    pub fn load_results(&self, query: &str, schema: &SchemaRef) -> Result<RecordBatch> {
        let page = self.read_results(
            query,
            &ResultFilter {
                limit: i64::MAX as usize,
                ..Default::default()
            },
        )?;
        page_to_batch(&page, schema)
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
        let sql = format!("SELECT * FROM {} ORDER BY _seq", quote(query));
        let page_rows = page_rows.max(1);
        let mut out = Vec::new();
        let mut page = ResultPage::default();
        let mut flush = |page: &mut ResultPage| -> Result<()> {
            let batch = page_to_batch(page, schema)?;
            admit(&batch)?;
            out.push(batch);
            page.rows.clear();
            Ok(())
        };
        self.read(|tx| {
            tx.query_each(&sql, &[], &mut |_, mut row| {
                row.remove(0);
                page.rows.push(row);
                if page.rows.len() == page_rows {
                    flush(&mut page)?;
                }
                Ok(())
            })
        })?;
        if !page.rows.is_empty() {
            flush(&mut page)?;
        }
        if out.is_empty() {
            out.push(page_to_batch(&ResultPage::default(), schema)?);
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
            &ResultFilter {
                after,
                limit,
                ..Default::default()
            },
        )?;
        Ok((page_to_batch(&page, schema)?, page.seqs))
    }
}

/// The rows of `page` as a batch of `schema` (all columns nullable).
fn page_to_batch(page: &ResultPage, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (c, field) in schema.fields().iter().enumerate() {
        let vals = page.rows.iter().map(|r| &r[c]);
        let raw: ArrayRef = match column_kind(field.data_type()) {
            ColumnKind::Bool | ColumnKind::Int => Arc::new(
                vals.map(|v| match v {
                    Value::Integer(i) => Some(*i),
                    _ => None,
                })
                .collect::<Int64Array>(),
            ),
            ColumnKind::Real => Arc::new(
                vals.map(|v| match v {
                    Value::Real(f) => Some(*f),
                    Value::Integer(i) => Some(*i as f64),
                    _ => None,
                })
                .collect::<Float64Array>(),
            ),
            ColumnKind::Blob => Arc::new(
                vals.map(|v| match v {
                    Value::Blob(b) => Some(b.clone()),
                    _ => None,
                })
                .collect::<BinaryArray>(),
            ),
            ColumnKind::Timestamp | ColumnKind::Text => Arc::new(
                vals.map(|v| match v {
                    Value::Text(s) => Some(s.clone()),
                    _ => None,
                })
                .collect::<StringArray>(),
            ),
        };
        cols.push(cast(&raw, field.data_type())?);
    }
    let schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(schema, cols)?)
}
