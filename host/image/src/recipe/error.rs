//! Recipe errors: one problem, with file, line, column and a hint that says how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A recipe problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeError {
    /// The recipe file.
    pub file: PathBuf,
    /// 1-based line, or 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl std::error::Error for RecipeError {}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

impl RecipeError {
    /// An error at a byte offset of a file.
    pub fn at(
        file: &Path,
        text: &str,
        offset: usize,
        message: impl Into<String>,
        hint: Option<&str>,
    ) -> Self {
        let (line, col) = line_col(text, offset);
        RecipeError {
            file: file.to_path_buf(),
            line,
            col,
            message: message.into(),
            hint: hint.map(str::to_string),
        }
    }

    /// An error about the whole file.
    pub fn whole(file: &Path, message: impl Into<String>, hint: Option<&str>) -> Self {
        RecipeError {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            message: message.into(),
            hint: hint.map(str::to_string),
        }
    }

    /// A required key that no file in the chain sets.
    pub fn missing(file: &Path, key: &str, example: &str) -> Self {
        Self::whole(
            file,
            format!("missing required key `{key}`"),
            Some(&format!("add `{example}`")),
        )
    }

    /// Translate a TOML or serde error (syntax, unknown key, wrong type) with its position.
    pub fn from_toml(file: &Path, text: &str, e: &toml::de::Error) -> Self {
        let message = e.message().trim().to_string();
        let hint = hint_for(&message);
        match e.span() {
            Some(span) => Self::at(file, text, span.start, message, hint.as_deref()),
            None => Self::whole(file, message, hint.as_deref()),
        }
    }
}

/// A hint for serde's messages: the closest known key for a misspelt one.
fn hint_for(message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (bad, rest) = rest.split_once('`')?;
        let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
        let best = known
            .iter()
            .min_by_key(|k| edit_distance(bad, k))
            .filter(|k| edit_distance(bad, k) <= 3);
        return Some(match best {
            Some(k) => format!("did you mean `{k}`? (keys here: {})", known.join(", ")),
            None => format!("keys allowed here: {}", known.join(", ")),
        });
    }
    if message.starts_with("invalid type") {
        return Some(
            "check the value's type: strings are quoted, numbers are not, lists use [ ]".into(),
        );
    }
    if message.starts_with("unknown variant") {
        return Some("use one of the values listed".into());
    }
    None
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
