//! A reader over one TOML table that records every problem instead of stopping at the first.
//!
//! serde stops at the first bad field; an operator fixing a config file wants the whole list
//! at once (the issue and linkerd's config style ask for it). Each accessor removes the key it
//! reads, so whatever is left when [`Section::finish`] runs is an unknown key — usually a typo.

use toml::{Table, Value};

/// Problems found while reading configuration files, in file order.
#[derive(Debug, Default)]
pub struct Problems {
    /// One line per problem, each starting with the file and the key it concerns.
    pub lines: Vec<String>,
}

impl Problems {
    pub fn push(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// One TOML table being read, with the file name and key path used in messages.
pub struct Section {
    /// Label of the file, e.g. `hungryserv.toml`.
    file: String,
    /// Dotted path of this table inside the file, empty for the top level.
    path: String,
    /// Keys not read yet.
    table: Table,
}

impl Section {
    pub fn new(file: impl Into<String>, table: Table) -> Self {
        Self {
            file: file.into(),
            path: String::new(),
            table,
        }
    }

    /// `file: path.key` — where a problem is, for messages.
    pub fn location(&self, key: &str) -> String {
        if self.path.is_empty() {
            format!("{}: {key}", self.file)
        } else {
            format!("{}: {}.{key}", self.file, self.path)
        }
    }

    pub fn problem(&self, problems: &mut Problems, key: &str, message: impl std::fmt::Display) {
        problems.push(format!("{}: {message}", self.location(key)));
    }

    /// A sub-table; a missing one reads as empty so every key in it takes its default.
    pub fn table(&mut self, problems: &mut Problems, key: &str) -> Section {
        let path = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        };
        let table = match self.table.remove(key) {
            None => Table::new(),
            Some(Value::Table(table)) => table,
            Some(other) => {
                self.problem(
                    problems,
                    key,
                    format!("expected a table, found {}", other.type_str()),
                );
                Table::new()
            }
        };
        Section {
            file: self.file.clone(),
            path,
            table,
        }
    }

    /// An array of tables (`[[key]]`).
    pub fn tables(&mut self, problems: &mut Problems, key: &str) -> Vec<Section> {
        let items = match self.table.remove(key) {
            None => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.problem(
                    problems,
                    key,
                    format!("expected an array of tables, found {}", other.type_str()),
                );
                return Vec::new();
            }
        };
        let mut sections = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            let path = format!("{key}[{index}]");
            match item {
                Value::Table(table) => sections.push(Section {
                    file: self.file.clone(),
                    path,
                    table,
                }),
                other => self.problem(
                    problems,
                    &path,
                    format!("expected a table, found {}", other.type_str()),
                ),
            }
        }
        sections
    }

    /// An optional string.
    pub fn string(&mut self, problems: &mut Problems, key: &str) -> Option<String> {
        match self.table.remove(key)? {
            Value::String(value) => Some(value),
            other => {
                self.problem(
                    problems,
                    key,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A string that must be present.
    pub fn required_string(&mut self, problems: &mut Problems, key: &str) -> Option<String> {
        let present = self.table.contains_key(key);
        let value = self.string(problems, key);
        if !present {
            self.problem(problems, key, "is required");
        }
        value
    }

    /// A non-negative integer, `default` when absent.
    pub fn integer(&mut self, problems: &mut Problems, key: &str, default: u64) -> u64 {
        match self.table.remove(key) {
            None => default,
            Some(Value::Integer(value)) => match u64::try_from(value) {
                Ok(value) => value,
                Err(_) => {
                    self.problem(problems, key, format!("must not be negative (got {value})"));
                    default
                }
            },
            Some(other) => {
                self.problem(
                    problems,
                    key,
                    format!("expected an integer, found {}", other.type_str()),
                );
                default
            }
        }
    }

    /// A boolean, `default` when absent.
    pub fn boolean(&mut self, problems: &mut Problems, key: &str, default: bool) -> bool {
        match self.table.remove(key) {
            None => default,
            Some(Value::Boolean(value)) => value,
            Some(other) => {
                self.problem(
                    problems,
                    key,
                    format!("expected true or false, found {}", other.type_str()),
                );
                default
            }
        }
    }

    /// A list of strings, empty when absent.
    pub fn strings(&mut self, problems: &mut Problems, key: &str) -> Vec<String> {
        let items = match self.table.remove(key) {
            None => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.problem(
                    problems,
                    key,
                    format!("expected a list of strings, found {}", other.type_str()),
                );
                return Vec::new();
            }
        };
        let mut strings = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(value) => strings.push(value),
                other => self.problem(
                    problems,
                    key,
                    format!("expected strings only, found {}", other.type_str()),
                ),
            }
        }
        strings
    }

    /// Reports every key nobody asked for.
    pub fn finish(self, problems: &mut Problems) {
        for key in self.table.keys() {
            self.problem(problems, key, "unknown key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Section {
        Section::new("test.toml", text.parse::<Table>().unwrap())
    }

    #[test]
    fn collects_every_problem() {
        let mut problems = Problems::default();
        let mut top = section("a = 1\nb = -3\nc = \"x\"\ntypo = true\n[sub]\nd = 5\n");
        assert_eq!(top.string(&mut problems, "a"), None);
        assert_eq!(top.integer(&mut problems, "b", 7), 7);
        assert_eq!(top.required_string(&mut problems, "missing"), None);
        assert_eq!(top.string(&mut problems, "c").as_deref(), Some("x"));
        let mut sub = top.table(&mut problems, "sub");
        assert!(!sub.boolean(&mut problems, "d", false));
        sub.finish(&mut problems);
        top.finish(&mut problems);
        assert_eq!(
            problems.lines,
            vec![
                "test.toml: a: expected a string, found integer",
                "test.toml: b: must not be negative (got -3)",
                "test.toml: missing: is required",
                "test.toml: sub.d: expected true or false, found integer",
                "test.toml: typo: unknown key",
            ]
        );
    }

    #[test]
    fn array_of_tables_paths() {
        let mut problems = Problems::default();
        let mut top = section("[[class]]\nname = 1\n[[class]]\nname = \"b\"\n");
        let classes = top.tables(&mut problems, "class");
        assert_eq!(classes.len(), 2);
        let mut first = classes.into_iter().next().unwrap();
        first.string(&mut problems, "name");
        assert_eq!(
            problems.lines,
            vec!["test.toml: class[0].name: expected a string, found integer"]
        );
    }
}
