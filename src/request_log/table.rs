//! The table `GET /` shows: the latest rows, read once for every request of a batch and
//! rendered once too. Each page then adds only what is its own: which row it wrote.

use std::sync::{Arc, OnceLock};

use askama::Template;

use super::Entry;

/// The latest rows, shared by the requests that show them.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Entry>,
    html: OnceLock<Arc<[RowHtml]>>,
}

/// One row of the table as HTML: its cells, escaped, and its id to mark the reader's own.
#[derive(Debug)]
pub struct RowHtml {
    pub id: i64,
    pub cells: String,
}

#[derive(Template)]
#[template(path = "log_row.html")]
struct Cells<'a> {
    row: &'a Entry,
}

impl Table {
    pub fn new(rows: Vec<Entry>) -> Self {
        Self {
            rows,
            html: OnceLock::new(),
        }
    }

    pub fn rows(&self) -> &[Entry] {
        &self.rows
    }

    /// The rows as HTML, rendered by the first request of the batch to ask for them.
    pub fn html(&self) -> Result<Arc<[RowHtml]>, askama::Error> {
        if let Some(html) = self.html.get() {
            return Ok(html.clone());
        }
        let html = self
            .rows
            .iter()
            .map(|row| {
                Ok(RowHtml {
                    id: row.id,
                    cells: Cells { row }.render()?,
                })
            })
            .collect::<Result<Arc<[RowHtml]>, askama::Error>>()?;
        // With several worker threads, two requests may both render; either copy will do.
        Ok(self.html.get_or_init(|| html).clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use time::OffsetDateTime;

    use super::{Entry, Table};

    fn row(id: i64, user_agent: &str) -> Entry {
        Entry {
            id,
            at: OffsetDateTime::UNIX_EPOCH,
            method: "GET".into(),
            path: "/".into(),
            client_addr: "127.0.0.1".into(),
            user_agent: user_agent.into(),
            instance: "web1".into(),
            session_tag: None,
        }
    }

    #[test]
    fn the_rows_are_rendered_once_for_every_page_that_shows_them() -> Result<(), askama::Error> {
        let table = Table::new(vec![row(2, "<script>alert(1)</script>"), row(1, "curl")]);
        let first = table.html()?;
        let second = table.html()?;
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 1]);
        assert!(!first[0].cells.contains("<script>"), "{}", first[0].cells);
        assert!(first[0].cells.contains("alert(1)"), "{}", first[0].cells);
        assert!(
            first[1].cells.contains("00:00:00.000"),
            "{}",
            first[1].cells
        );
        Ok(())
    }
}
