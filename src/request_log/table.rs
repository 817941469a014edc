//! The table `GET /` shows: the latest rows, read once for every request of a batch and
//! rendered once too. Each page then adds only what is its own: which row it wrote. Most rows
//! of a batch's table were in the batch before's as well; their HTML is carried over rather
//! than rendered again.

use std::sync::{Arc, OnceLock};

use askama::Template;

use super::Entry;

/// The latest rows, shared by the requests that show them.
#[derive(Debug)]
pub struct Table {
    rows: Box<[Arc<Entry>]>,
    /// For each row, its cells as an earlier table rendered them, if it had the same row.
    carried: Box<[Option<Arc<str>>]>,
    html: OnceLock<Arc<[RowHtml]>>,
}

/// One row of the table as HTML: its cells, escaped, and its id to mark the reader's own.
#[derive(Debug)]
pub struct RowHtml {
    pub id: i64,
    pub cells: Arc<str>,
}

#[derive(Template)]
#[template(path = "log_row.html")]
struct Cells<'a> {
    row: &'a Entry,
}

impl Table {
    /// A table of `rows` that takes the HTML of the rows it shares with `earlier`, as far as
    /// `earlier` has rendered them. A row is shared when it is equal in every column, not
    /// only in id: ids can come again after a `TRUNCATE ... RESTART IDENTITY`.
    /// An entry [`latest`](super::latest) took from `earlier` is known equal by its address.
    pub fn new(rows: Vec<Arc<Entry>>, earlier: Option<&Table>) -> Self {
        let earlier = earlier.and_then(|t| Some((t, t.html.get()?)));
        let carried = rows
            .iter()
            .map(|row| {
                let (table, html) = earlier?;
                let i = table.index(row.id)?;
                (table.rows[i] == *row).then(|| html[i].cells.clone())
            })
            .collect();
        Self {
            rows: rows.into(),
            carried,
            html: OnceLock::new(),
        }
    }

    pub fn rows(&self) -> &[Arc<Entry>] {
        &self.rows
    }

    /// The row with this id, if the table has it.
    pub(crate) fn find(&self, id: i64) -> Option<&Arc<Entry>> {
        self.index(id).map(|i| &self.rows[i])
    }

    fn index(&self, id: i64) -> Option<usize> {
        // Newest first, as the query orders them.
        self.rows.binary_search_by(|e| id.cmp(&e.id)).ok()
    }

    /// The rows as HTML, rendered by the first request of the batch to ask for them.
    pub fn html(&self) -> Result<Arc<[RowHtml]>, askama::Error> {
        if let Some(html) = self.html.get() {
            return Ok(html.clone());
        }
        let html = self
            .rows
            .iter()
            .zip(&self.carried)
            .map(|(row, carried)| {
                let cells = match carried {
                    Some(cells) => cells.clone(),
                    None => Cells { row }.render()?.into(),
                };
                Ok(RowHtml { id: row.id, cells })
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

    fn row(id: i64, user_agent: &str) -> Arc<Entry> {
        Arc::new(Entry {
            id,
            at: OffsetDateTime::UNIX_EPOCH,
            method: "GET".into(),
            path: "/".into(),
            client_addr: "127.0.0.1".into(),
            user_agent: user_agent.into(),
            instance: "web1".into(),
            session_tag: None,
        })
    }

    #[test]
    fn the_rows_are_rendered_once_for_every_page_that_shows_them() -> Result<(), askama::Error> {
        let table = Table::new(
            vec![row(2, "<script>alert(1)</script>"), row(1, "curl")],
            None,
        );
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

    #[test]
    fn a_later_table_takes_the_html_of_rows_equal_in_every_column_and_renders_the_rest()
    -> Result<(), askama::Error> {
        let earlier = Table::new(vec![row(3, "three"), row(2, "two"), row(1, "one")], None);
        let unrendered = Table::new(vec![row(4, "four"), row(3, "three")], Some(&earlier));
        let before = earlier.html()?;
        // Row 2 is back with other values, as after `TRUNCATE ... RESTART IDENTITY`.
        let rows = vec![row(5, "five"), row(3, "three"), row(2, "changed")];
        let later = Table::new(rows, Some(&earlier)).html()?;

        assert_eq!(later.iter().map(|r| r.id).collect::<Vec<_>>(), [5, 3, 2]);
        assert!(later[0].cells.contains("five"), "{}", later[0].cells);
        assert!(Arc::ptr_eq(&later[1].cells, &before[0].cells));
        assert!(later[2].cells.contains("changed"), "{}", later[2].cells);
        // A table made before the earlier one was rendered had nothing to take, and renders.
        let own = unrendered.html()?;
        assert!(!Arc::ptr_eq(&own[1].cells, &before[0].cells));
        assert_eq!(own[1].cells, before[0].cells);
        Ok(())
    }
}
