//! The results table every benchmark prints: one row per tool and mode, ratios against
//! Aperture's row.

/// One row of a results table.
pub struct Row {
    /// Tool and mode.
    pub name: String,
    /// Values, in the table's column order.
    pub cells: Vec<String>,
}

/// Print a plain table with a header.
pub fn print_table(title: &str, header: &[&str], rows: &[Row]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    widths[0] = widths[0].max(rows.iter().map(|r| r.name.len()).max().unwrap_or(0));
    for r in rows {
        for (i, c) in r.cells.iter().enumerate() {
            widths[i + 1] = widths[i + 1].max(c.len());
        }
    }
    println!("\n{title}");
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[0])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    line(header.to_vec());
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        let mut cells = vec![r.name.as_str()];
        cells.extend(r.cells.iter().map(String::as_str));
        line(cells);
    }
}
