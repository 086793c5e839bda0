//! Static reference tables a continuous query may join: read from their CSV
//! file into memory when created and at server start.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::CsvReadOptions;

use super::new_context;
use crate::error::{Error, Result};
use crate::model::TableDef;

/// A static reference table held in memory.
#[derive(Debug, Clone)]
pub struct RefTable {
    /// Table name.
    pub name: String,
    /// Its schema.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
}

impl RefTable {
    /// Reads the table `def` declares from its CSV file.
    pub async fn load(def: &TableDef) -> Result<Self> {
        let schema = Arc::new(Schema::new(def.fields()));
        let ext = std::path::Path::new(&def.path)
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let options = CsvReadOptions::new()
            .has_header(def.header)
            .delimiter(def.delimiter)
            .schema(&schema)
            .file_extension(&ext);
        let unreadable =
            |e| Error::BadRequest(format!("table {}: cannot read {}: {e}", def.name, def.path));
        let batches = new_context()
            .read_csv(def.path.as_str(), options)
            .await
            .map_err(unreadable)?
            .collect()
            .await
            .map_err(unreadable)?;
        Ok(RefTable {
            name: def.name.clone(),
            schema,
            batches,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// A DataFusion table over the rows.
    pub fn provider(&self) -> Result<Arc<MemTable>> {
        Ok(Arc::new(MemTable::try_new(
            self.schema.clone(),
            vec![self.batches.clone()],
        )?))
    }
}
