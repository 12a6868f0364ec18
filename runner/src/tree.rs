//! The folder tree of a scenario: every client and the files it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Client id to its sorted file names, in id order.
pub type Tree = BTreeMap<u64, Vec<String>>;

/// Renders `tree` as the seed documents it:
///
/// ```text
/// ├── 10000
/// │   ├── test1.txt
/// │   └── test3.txt
/// ├── 10001
/// ```
pub fn render(tree: &Tree) -> String {
    let mut out = String::new();
    for (id, files) in tree {
        writeln!(out, "├── {id}").unwrap();
        for (i, file) in files.iter().enumerate() {
            let branch = if i + 1 == files.len() { "└──" } else { "├──" };
            writeln!(out, "│   {branch} {file}").unwrap();
        }
    }
    out
}

/// How `actual` differs from `expected`, one line per client that differs;
/// empty when they are the same.
pub fn differences(expected: &BTreeMap<String, Vec<String>>, actual: &Tree) -> Vec<String> {
    let actual: BTreeMap<String, &Vec<String>> = actual.iter().map(|(id, files)| (id.to_string(), files)).collect();
    let clients: BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    let mut lines = Vec::new();
    for client in clients {
        match (expected.get(client), actual.get(client)) {
            (Some(_), None) => lines.push(format!("{client}: expected, but the scenario has no such client")),
            (None, Some(files)) => lines.push(format!(
                "{client}: not in the expected tree (holds {})",
                list(files.iter().collect())
            )),
            (Some(want), Some(have)) => {
                let want: BTreeSet<&String> = want.iter().collect();
                let have: BTreeSet<&String> = have.iter().collect();
                let missing: BTreeSet<&String> = want.difference(&have).copied().collect();
                let unexpected: BTreeSet<&String> = have.difference(&want).copied().collect();
                let mut parts = Vec::new();
                if !missing.is_empty() {
                    parts.push(format!("missing {}", list(missing)));
                }
                if !unexpected.is_empty() {
                    parts.push(format!("unexpected {}", list(unexpected)));
                }
                if !parts.is_empty() {
                    lines.push(format!("{client}: {}", parts.join("; ")));
                }
            }
            (None, None) => unreachable!("the client came from one of the maps"),
        }
    }
    lines
}

fn list(files: BTreeSet<&String>) -> String {
    if files.is_empty() {
        return "nothing".into();
    }
    files.into_iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn renders_the_seed_tree_exactly() {
        let tree: Tree = [
            (10000, files(&["test1.txt", "test3.txt"])),
            (10001, files(&[])),
            (10002, files(&["test1.txt"])),
            (10003, files(&["test3.txt"])),
            (10004, files(&["test1.txt", "test3.txt"])),
        ]
        .into();
        let seed = "\
├── 10000
│   ├── test1.txt
│   └── test3.txt
├── 10001
├── 10002
│   └── test1.txt
├── 10003
│   └── test3.txt
├── 10004
│   ├── test1.txt
│   └── test3.txt
";
        assert_eq!(render(&tree), seed);
    }

    #[test]
    fn differences_name_missing_and_unexpected_files_per_client() {
        let actual: Tree = [(1, files(&["a", "b"])), (2, files(&[])), (3, files(&["c"]))].into();
        let expected = [
            ("1".to_string(), files(&["a", "z"])),
            ("2".to_string(), files(&[])),
            ("4".to_string(), files(&[])),
        ]
        .into();
        assert_eq!(
            differences(&expected, &actual),
            [
                "1: missing z; unexpected b",
                "3: not in the expected tree (holds c)",
                "4: expected, but the scenario has no such client"
            ]
        );
        let same = [("1".to_string(), files(&["b", "a"]))].into();
        assert!(differences(&same, &[(1, files(&["a", "b"]))].into()).is_empty());
    }
}
