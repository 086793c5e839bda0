//! Late tables: each query's records dropped as late, one typed table per
//! query named `<query>:late` (`SELECT * FROM "adnetwork:late"` in
//! `sqlite3` or `psql`), created with the query's results table and dropped
//! with it. Its columns are [`crate::window::late_schema`]'s after a `_seq`
//! row cursor: `_partition`, `_offset`, `_event_time`, `_late_ms`,
//! `_watermark`, `_missed`, `_written_at`, then the stream's columns the
//! query decodes.
//!
//! Rows are written by [`Store::commit_with_late`], in the transaction that
//! stores the offsets past them: a replay after a restart or a crash drops
//! the same records again only if that transaction did not commit, so
//! each late record is stored once. They are kept for the server's
//! `late_record_retention` (24 h by default), pruned by write time
//! (`_written_at`): a late record's event time is old by definition, and a
//! replayed backlog's late records would otherwise be pruned as they come.

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;

use super::backend::{self, Param};
use super::statements;
use super::{ResultFilter, ResultPage, Store, quote};
use crate::error::{Error, Result};
use crate::model::Emission;
use crate::window::delta::Saved;

/// The name of query `query`'s late table.
pub fn late_table(query: &str) -> String {
    format!("{query}:late")
}

impl Store {
    /// Creates `query`'s late table for `schema` (the late rows' shape) if
    /// it does not exist.
    pub fn ensure_late_table(&self, query: &str, schema: &Schema) -> Result<()> {
        let ddl = backend::rows_table_ddl(
            self.dialect(),
            &late_table(query),
            schema,
            ("written", "_written_at"),
        );
        self.write(|tx| tx.batch(&ddl))
    }

    /// [`commit`](Store::commit), also writing `late` (rows of the query's
    /// late table) in the same transaction.
    pub fn commit_with_late(
        &self,
        query: &str,
        emissions: &[Emission],
        late: &[RecordBatch],
        offsets: &BTreeMap<i32, i64>,
        saved: &Saved,
    ) -> Result<()> {
        let mut stmts = statements::emission_statements(query, emissions)?;
        let table = quote(&late_table(query));
        for b in late {
            statements::insert_statements(&table, b, &mut stmts)?;
        }
        let offsets =
            serde_json::to_string(offsets).map_err(|e| Error::Execution(e.to_string()))?;
        stmts.extend(statements::piece_statements(query, &saved.ops));
        stmts.push(statements::checkpoint_statement(
            self.dialect(),
            query,
            offsets,
            &saved.header,
        ));
        self.write(|tx| {
            for s in &stmts {
                tx.run(s)?;
            }
            Ok(())
        })
    }

    /// A page of `query`'s late records (shaped `schema`), oldest write
    /// first, after cursor `after`.
    pub fn read_late(
        &self,
        query: &str,
        schema: &Schema,
        after: Option<i64>,
        limit: usize,
    ) -> Result<ResultPage> {
        let filter = ResultFilter {
            after,
            limit,
            ..Default::default()
        };
        self.read_results(&late_table(query), schema, &filter)
    }

    /// Deletes `query`'s late records written before `before` (epoch ms).
    pub fn prune_late(&self, query: &str, before: i64) -> Result<usize> {
        let sql = format!(
            "DELETE FROM {} WHERE _written_at < $1",
            quote(&late_table(query))
        );
        let params = [Param::Ts(before)];
        self.write(|tx| tx.execute(&sql, &params))
            .map(|n| n as usize)
    }

    /// The statements dropping `query`'s late table.
    pub(super) fn drop_late_sql(query: &str) -> String {
        format!("DROP TABLE IF EXISTS {}", quote(&late_table(query)))
    }
}
