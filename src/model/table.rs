//! A declared reference table: a CSV file joined to streams and read by
//! pull queries.

use datafusion::arrow::datatypes::Field;

use super::stream::ColumnDef;

/// A declared reference table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    /// Table name (lower case).
    pub name: String,
    /// Declared columns.
    pub columns: Vec<ColumnDef>,
    /// CSV file path, read when the table is created and at server start.
    pub path: String,
    /// Whether the first line is a header.
    pub header: bool,
    /// Field delimiter.
    pub delimiter: u8,
}

impl TableDef {
    /// The arrow fields of the declared columns.
    pub fn fields(&self) -> Vec<Field> {
        self.columns
            .iter()
            .map(|c| Field::new(&c.name, c.data_type.clone(), true))
            .collect()
    }
}
