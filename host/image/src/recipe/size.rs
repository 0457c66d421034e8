//! Sizes in recipes: `"256MiB"`, `"2GiB"`, `"512M"` (binary units) or a plain number of bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Size(u64);

impl Size {
    /// A size of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Size(bytes)
    }
    /// Bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (u, n) in UNITS {
            if self.0 >= n && self.0.is_multiple_of(n) {
                return write!(f, "{}{u}", self.0 / n);
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

/// A size as written: a string with a unit, or an integer.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// Bytes.
    Bytes(i64),
    /// `"256MiB"`.
    Text(String),
}

impl SizeValue {
    /// Parse into a positive size.
    pub fn parse(&self) -> Result<Size, String> {
        match self {
            SizeValue::Bytes(b) if *b > 0 => Ok(Size(*b as u64)),
            SizeValue::Bytes(b) => Err(format!("{b} is not a positive size")),
            SizeValue::Text(t) => parse_text(t),
        }
    }
}

fn parse_text(t: &str) -> Result<Size, String> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{t}` does not start with a number"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{t}` (use KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{t}` is too large"))?;
    if bytes == 0 {
        return Err(format!("`{t}` is zero"));
    }
    Ok(Size(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_nonsense() {
        assert_eq!(parse_text("256MiB").unwrap().bytes(), 256 << 20);
        assert_eq!(parse_text("2G").unwrap().bytes(), 2 << 30);
        assert_eq!(SizeValue::Bytes(4096).parse().unwrap().bytes(), 4096);
        assert!(parse_text("0MiB").is_err());
        assert!(parse_text("12 parsecs").is_err());
        assert!(parse_text("MiB").is_err());
        assert!(SizeValue::Bytes(-1).parse().is_err());
        assert_eq!(Size::new(3 << 30).to_string(), "3GiB");
    }
}
