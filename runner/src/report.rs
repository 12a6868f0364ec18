//! Script errors, shown like a compiler's:
//!
//! ```text
//! scenarios/x.rhai:7:4: client 10001 is not registered: call c.register(tracker) first
//!    |
//!  7 | b.download("test1.txt");
//!    |    ^
//! ```

use std::fmt::Write as _;
use std::path::Path;

use rhai::{EvalAltResult, Position};

/// Why a script stopped, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptFailure {
    /// Line of the failing call (1-based; 0 when unknown).
    pub line: usize,
    /// Its column (1-based; 0 when unknown).
    pub column: usize,
    /// What went wrong, for the user. May span lines.
    pub message: String,
    /// `SCRIPT:LINE:COLUMN: message`, then the source line with a caret.
    pub report: String,
}

impl ScriptFailure {
    /// Describes `error`, raised by the script at `script`.
    pub fn new(error: &EvalAltResult, script: &Path) -> ScriptFailure {
        let (position, message) = describe(error);
        let line = position.line().unwrap_or(0);
        let column = position.position().unwrap_or(0);
        let source = std::fs::read_to_string(script).unwrap_or_default();
        let report = render(&script.display().to_string(), &source, line, column, &message);
        ScriptFailure {
            line,
            column,
            message,
            report,
        }
    }

    /// The message with every mention of `root` replaced by `$ROOT`, so it
    /// reads the same whichever folder the run used.
    pub fn message_without(&self, root: &Path) -> String {
        let root = root.display().to_string();
        if root.is_empty() {
            return self.message.clone();
        }
        self.message.replace(&root, "$ROOT")
    }
}

/// The innermost position and a message for `error`, without Rhai's
/// "(line 3, position 5)" suffix (the position is shown on its own).
fn describe(error: &EvalAltResult) -> (Position, String) {
    match error {
        EvalAltResult::ErrorInFunctionCall(function, _, inner, call) => {
            let (position, message) = describe(inner);
            if position.is_none() {
                (*call, message)
            } else {
                (
                    position,
                    format!(
                        "{message}\n(in function {function}, called at line {})",
                        call.line().unwrap_or(0)
                    ),
                )
            }
        }
        EvalAltResult::ErrorRuntime(value, position) | EvalAltResult::ErrorTerminated(value, position) => {
            (*position, value.to_string())
        }
        EvalAltResult::ErrorTooManyOperations(position) => (
            *position,
            "the script ran more operations than its limit (a loop that never ends?); \
             raise the limit with --max-operations"
                .to_owned(),
        ),
        EvalAltResult::ErrorStackOverflow(position) => (
            *position,
            "the script called functions 64 deep (a recursion that never ends?)".to_owned(),
        ),
        EvalAltResult::ErrorFunctionNotFound(..) => {
            let position = error.position();
            let message = strip_position(error);
            (
                position,
                format!("{message}; the functions a scenario can call are listed in scenarios/README.md"),
            )
        }
        other => (other.position(), strip_position(other)),
    }
}

/// The error's message without Rhai's " (line 3, position 5)" suffix.
fn strip_position(error: &EvalAltResult) -> String {
    let position = error.position();
    let message = error.to_string();
    message
        .strip_suffix(&format!(" ({position})"))
        .unwrap_or(&message)
        .to_owned()
}

/// `SCRIPT:LINE:COLUMN: message` then a snippet of `source` with a caret.
fn render(script: &str, source: &str, line: usize, column: usize, message: &str) -> String {
    let mut out = format!("{script}:{line}:{column}: {message}\n");
    let Some(text) = line.checked_sub(1).and_then(|i| source.lines().nth(i)) else {
        return out;
    };
    let gutter = " ".repeat(line.to_string().len());
    let caret_pad: String = text
        .chars()
        .take(column.saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    writeln!(out, "{gutter} |").unwrap();
    writeln!(out, "{line} | {text}").unwrap();
    writeln!(out, "{gutter} | {caret_pad}^").unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_position_and_a_caret_under_the_column() {
        let source = "let a = 1;\n    b.download(\"x\");\n";
        assert_eq!(
            render("s.rhai", source, 2, 7, "not registered"),
            "s.rhai:2:7: not registered\n  |\n2 |     b.download(\"x\");\n  |       ^\n"
        );
    }

    #[test]
    fn an_unknown_position_gives_just_the_message_line() {
        assert_eq!(render("s.rhai", "", 0, 0, "boom"), "s.rhai:0:0: boom\n");
    }

    #[test]
    fn the_root_is_hidden_from_logged_messages() {
        let failure = ScriptFailure {
            line: 1,
            column: 1,
            message: "no file in /tmp/xyz/10000".into(),
            report: String::new(),
        };
        assert_eq!(failure.message_without(Path::new("/tmp/xyz")), "no file in $ROOT/10000");
    }
}
