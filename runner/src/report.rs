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

use rhai::{Engine, EvalAltResult, ParseErrorType, Position};

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
    /// Describes `error`, raised by the script at `script`; `functions`
    /// (the scenario's, as [`signatures`] gives them) help with a call
    /// that matched none of them.
    pub fn new(error: &EvalAltResult, script: &Path, functions: &[String]) -> ScriptFailure {
        let (position, message) = describe(error, functions);
        let source = std::fs::read_to_string(script).unwrap_or_default();
        let at = (position.line().unwrap_or(0), position.position().unwrap_or(0));
        let ((line, column), message) = closer_to_the_mistake(error, &source, at, message);
        let report = render(&script.display().to_string(), &source, line, column, &message);
        ScriptFailure {
            line,
            column,
            message,
            report,
        }
    }

    /// The message with every path under `root` starting `$ROOT/`, so it
    /// reads the same whichever folder the run used. Only a path is
    /// replaced (the root, then a `/`, where a word may begin): with a root
    /// of `out` or `.`, "timed out" and "test2.txt" stay as they are.
    pub fn message_without(&self, root: &Path) -> String {
        let root = root.display().to_string();
        let root = root.trim_end_matches('/');
        if root.is_empty() {
            return self.message.clone();
        }
        let prefix = format!("{root}/");
        let mut out = String::with_capacity(self.message.len());
        let mut rest = self.message.as_str();
        while let Some(at) = rest.find(&prefix) {
            let starts_word = rest[..at]
                .chars()
                .next_back()
                .is_none_or(|before| !(before.is_alphanumeric() || "./_-~".contains(before)));
            out.push_str(&rest[..at]);
            out.push_str(if starts_word { "$ROOT/" } else { &prefix });
            rest = &rest[at + prefix.len()..];
        }
        out.push_str(rest);
        out
    }
}

/// The innermost position and a message for `error`, without Rhai's
/// "(line 3, position 5)" suffix (the position is shown on its own).
fn describe(error: &EvalAltResult, functions: &[String]) -> (Position, String) {
    match error {
        EvalAltResult::ErrorInFunctionCall(function, _, inner, call) => {
            let (position, message) = describe(inner, functions);
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
        EvalAltResult::ErrorFunctionNotFound(call, _) => {
            let shown = shown_call(call);
            // `()` is what a map gives for a field it lacks: the likeliest
            // cause of a call that matches nothing.
            let unit = if arguments(call).any(|argument| argument == "()") {
                "; a value is (), as a map's field that is not there is (`r.from` of a download that failed, say)"
            } else {
                ""
            };
            let message = match call_hint(call, functions) {
                Some(hint) => format!("no function {shown}: {hint}{unit} (scenarios/README.md lists every function)"),
                None => format!(
                    "no function {shown}{unit}; the functions a scenario can call are listed in scenarios/README.md"
                ),
            };
            (error.position(), message)
        }
        EvalAltResult::ErrorParsing(ParseErrorType::VariableUndefined(name), position) => (
            *position,
            format!(
                "no variable {name}: declare it with `let {name} = ...;` before its first use (a variable \
                 declared inside {{ ... }} ends there)"
            ),
        ),
        EvalAltResult::ErrorParsing(..) if strip_position(error).ends_with("object map literal") => (
            error.position(),
            format!(
                "{}; a map's keys are names or strings in quotes, as in assert_tree(#{{ \"10000\": [] }})",
                strip_position(error)
            ),
        ),
        other => (other.position(), strip_position(other)),
    }
}

/// The functions a script run by `engine` can call, each as
/// `name(type, ...)` (a method's object first: `set_rate(Client, int,
/// int)`), in Rhai's own type names.
pub fn signatures(engine: &Engine) -> Vec<String> {
    let mut functions: Vec<String> = engine
        .gen_fn_signatures(false)
        .iter()
        .filter_map(|signature| simplify(signature))
        .collect();
    functions.sort();
    functions.dedup();
    functions
}

/// `set_rate(_: &mut Client, _: i64, _: i64) -> ...` as
/// `set_rate(Client, int, int)`.
fn simplify(signature: &str) -> Option<String> {
    let (name, rest) = signature.split_once('(')?;
    let (parameters, _) = rest.split_once(')')?;
    let types: Vec<&str> = parameters
        .split(", ")
        .filter(|parameter| !parameter.is_empty())
        .map(|parameter| simple_type(parameter.rsplit_once(": ").map_or(parameter, |(_, kind)| kind)))
        .collect();
    Some(format!("{name}({})", types.join(", ")))
}

/// A Rust type as a script sees it: `i64` as `int`, `&mut Client` as
/// `Client`, `phile_runner::world::ClientRef` as `Client`.
pub(crate) fn simple_type(kind: &str) -> &str {
    let kind = kind.trim_start_matches("&mut ").rsplit("::").next().unwrap_or(kind);
    match kind {
        "i64" => "int",
        "f64" => "float",
        "ClientRef" => "Client",
        "TrackerRef" => "Tracker",
        "ImmutableString" | "&str" | "String" => "string",
        "Dynamic" => "any",
        other => other,
    }
}

/// Rhai's `write_random (Client, &str | ImmutableString | String, i64)`
/// as `write_random(Client, string, int)`.
fn shown_call(call: &str) -> String {
    let Some((name, _)) = call.split_once(" (") else {
        return call.to_owned();
    };
    let types: Vec<&str> = arguments(call)
        .map(|parameter| {
            let mut kinds: Vec<&str> = parameter.split(" | ").map(simple_type).collect();
            kinds.dedup();
            kinds.first().copied().filter(|_| kinds.len() == 1).unwrap_or(parameter)
        })
        .collect();
    format!("{name}({})", types.join(", "))
}

/// The argument types of Rhai's `name (type, type | type)`, as written.
fn arguments(call: &str) -> impl Iterator<Item = &str> {
    let list = call.split_once(" (").map_or("", |(_, rest)| rest);
    let list = list.strip_suffix(')').unwrap_or(list);
    list.split(", ").filter(|argument| !argument.is_empty())
}

/// What to say of a call `call` (Rhai's `name (types)`) that matched no
/// function: the forms a function of that name takes, or the names that
/// are a typo or two away.
fn call_hint(call: &str, functions: &[String]) -> Option<String> {
    let name = call.split([' ', '(']).next()?;
    let name_of = |function: &String| function.split('(').next().unwrap_or_default().to_owned();
    let forms: Vec<&str> = (functions.iter())
        .filter(|function| name_of(function) == name)
        .filter_map(|function| function.strip_prefix(name))
        .collect();
    if !forms.is_empty() {
        return Some(format!("{name} takes {}", forms.join(" or ")));
    }
    // Two typos in a name of four letters or fewer make another word.
    let typos = if name.chars().count() <= 4 { 1 } else { 2 };
    let mut close: Vec<String> = (functions.iter())
        .map(name_of)
        .filter(|known| strsim::damerau_levenshtein(known, name) <= typos)
        .collect();
    close.dedup();
    match close.as_slice() {
        [] => None,
        names => Some(format!("did you mean {}?", names.join(" or "))),
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

/// Where the mistake behind a parse error most likely is, and what to do,
/// when the parser stopped somewhere else: a missing `;` belongs at the end
/// of the statement before the token the parser stopped at, and a missing
/// `}` closes the last block left open, which the parser only misses at
/// the end of the script. Other errors stay `at`, with their `message`.
fn closer_to_the_mistake(
    error: &EvalAltResult,
    source: &str,
    at: (usize, usize),
    message: String,
) -> ((usize, usize), String) {
    let EvalAltResult::ErrorParsing(ParseErrorType::MissingToken(token, _), _) = error else {
        return (at, message);
    };
    let (line, column) = at;
    let at_the_end = line > source.lines().count();
    match token.as_str() {
        ";" => match end_of_code_before(source, line, column) {
            Some(end) => (end, format!("{message}: add `;` at the end of this line")),
            None => (at, message),
        },
        // Only at the end: a `}` missing mid-script (a map literal's) is
        // where the parser says.
        "}" if at_the_end => match last_unclosed_brace(source) {
            Some(open) => (
                open,
                format!(
                    "{message}: this `{{` is never closed (the parser reached line {line} looking for its `}}`); \
                     add `}}` where its block ends"
                ),
            ),
            None => (at, message),
        },
        _ => (at, message),
    }
}

/// What a character of a script is part of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lexed {
    /// Code outside strings.
    Code,
    /// A string literal, its quotes included.
    Text,
    /// A comment.
    Comment,
}

/// Calls `each` with the line and column (1-based) of every character of
/// `source` and what it is part of: enough of Rhai's lexer to tell code
/// from strings (`"…"`, `'…'`, and template strings in backquotes, which
/// may span lines) and comments (`//` to the end of the line, and `/* */`,
/// which nest).
fn lex(source: &str, mut each: impl FnMut(usize, usize, char, Lexed)) {
    let mut string: Option<char> = None;
    let mut block_comments = 0usize;
    for (number, text) in source.lines().enumerate() {
        let mut line_comment = false;
        let mut chars = text.chars().enumerate().peekable();
        while let Some((at, c)) = chars.next() {
            let next = chars.peek().map(|(_, next)| *next);
            let (line, column) = (number + 1, at + 1);
            if line_comment {
                each(line, column, c, Lexed::Comment);
            } else if block_comments > 0 {
                each(line, column, c, Lexed::Comment);
                let pair = match (c, next) {
                    ('*', Some('/')) => Some(-1),
                    ('/', Some('*')) => Some(1),
                    _ => None,
                };
                if let Some(step) = pair {
                    let (_, second) = chars.next().expect("peeked");
                    each(line, column + 1, second, Lexed::Comment);
                    block_comments = block_comments.saturating_add_signed(step);
                }
            } else if let Some(quote) = string {
                each(line, column, c, Lexed::Text);
                if c == '\\' {
                    if let Some((at, escaped)) = chars.next() {
                        each(line, at + 1, escaped, Lexed::Text);
                    }
                } else if c == quote {
                    string = None;
                }
            } else {
                match (c, next) {
                    ('/', Some('/')) => {
                        line_comment = true;
                        each(line, column, c, Lexed::Comment);
                    }
                    ('/', Some('*')) => {
                        chars.next();
                        block_comments = 1;
                        each(line, column, c, Lexed::Comment);
                        each(line, column + 1, '*', Lexed::Comment);
                    }
                    ('"' | '`' | '\'', _) => {
                        string = Some(c);
                        each(line, column, c, Lexed::Text);
                    }
                    _ => each(line, column, c, Lexed::Code),
                }
            }
        }
        // A string ends with its line, but for a template string.
        if string.is_some_and(|quote| quote != '`') {
            string = None;
        }
    }
}

/// The line and column just after the last code or string before line
/// `line`, column `column` (both 1-based), comments and blanks skipped.
fn end_of_code_before(source: &str, line: usize, column: usize) -> Option<(usize, usize)> {
    let mut end = None;
    lex(source, |at_line, at_column, c, lexed| {
        let before = (at_line, at_column) < (line, column);
        if before && lexed != Lexed::Comment && !c.is_whitespace() {
            end = Some((at_line, at_column + 1));
        }
    });
    end
}

/// The line and column (1-based) of the last `{` of `source` that no `}`
/// closes, outside strings and comments; `None` if every one is closed.
fn last_unclosed_brace(source: &str) -> Option<(usize, usize)> {
    let mut open = Vec::new();
    lex(source, |line, column, c, lexed| match (c, lexed) {
        ('{', Lexed::Code) => open.push((line, column)),
        ('}', Lexed::Code) => drop(open.pop()),
        _ => {}
    });
    open.pop()
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

    fn scenario_functions() -> Vec<String> {
        [
            "upload(Client, string)",
            "set_rate(Client, int, int)",
            "download(Client, string)",
            "download(Client, string, map)",
            "now()",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn signatures_read_as_rhai_types_with_the_object_first() {
        assert_eq!(
            simplify("set_rate(_: &mut Client, _: i64, _: i64) -> core::result::Result<(), Box<EvalAltResult>>"),
            Some("set_rate(Client, int, int)".to_owned())
        );
        assert_eq!(
            simplify("start_download(_: &mut Client, _: string, _: map) -> phile_runner::world::download::Transfer"),
            Some("start_download(Client, string, map)".to_owned())
        );
        assert_eq!(simplify("now() -> f64"), Some("now()".to_owned()));
    }

    #[test]
    fn a_call_with_the_wrong_types_is_shown_the_types_its_function_takes() {
        let hint = call_hint(
            "set_rate (Client, &str | ImmutableString | String, i64)",
            &scenario_functions(),
        );
        assert_eq!(hint.as_deref(), Some("set_rate takes (Client, int, int)"));
        let hint = call_hint("download (Client, i64)", &scenario_functions());
        assert_eq!(
            hint.as_deref(),
            Some("download takes (Client, string) or (Client, string, map)")
        );
    }

    #[test]
    fn a_call_is_shown_in_the_types_a_script_knows() {
        assert_eq!(
            shown_call("write_random (Client, &str | ImmutableString | String, &str | ImmutableString | String)"),
            "write_random(Client, string, string)"
        );
        assert_eq!(shown_call("+ ((), i64)"), "+((), int)");
        assert_eq!(shown_call("now ()"), "now()");
    }

    #[test]
    fn a_misspelt_call_is_offered_the_names_close_to_it() {
        let hint = call_hint(
            "uplaod (Client, &str | ImmutableString | String)",
            &scenario_functions(),
        );
        assert_eq!(hint.as_deref(), Some("did you mean upload?"));
        assert_eq!(call_hint("frobnicate ()", &scenario_functions()), None);
        // Not `now`: two letters of three is another word.
        assert_eq!(call_hint("foo (Client)", &scenario_functions()), None);
        assert_eq!(
            call_hint("noe ()", &scenario_functions()).as_deref(),
            Some("did you mean now?")
        );
    }

    #[test]
    fn a_number_as_a_map_key_is_told_to_quote_it() {
        let error: Box<EvalAltResult> = Engine::new().compile("let tree = #{ 10000: [] };").unwrap_err().into();
        let (_, message) = describe(&error, &[]);
        assert!(message.contains("keys are names or strings in quotes"), "{message}");
    }

    #[test]
    fn a_variable_used_before_it_is_declared_is_told_to_declare_it() {
        let mut engine = Engine::new();
        engine.set_strict_variables(true);
        let error: Box<EvalAltResult> = engine.compile("print(tally);").unwrap_err().into();
        let (_, message) = describe(&error, &[]);
        assert!(
            message.contains("no variable tally: declare it with `let tally"),
            "{message}"
        );
    }

    #[test]
    fn the_engine_of_a_scenario_lists_its_functions() {
        let mut engine = Engine::new();
        engine.register_fn("set_rate", |_: i64, _: i64| ());
        let functions = signatures(&engine);
        assert!(functions.contains(&"set_rate(int, int)".to_owned()), "{functions:?}");
    }

    #[test]
    fn renders_the_position_and_a_caret_under_the_column() {
        let source = "let a = 1;\n    b.download(\"x\");\n";
        assert_eq!(
            render("s.rhai", source, 2, 7, "not registered"),
            "s.rhai:2:7: not registered\n  |\n2 |     b.download(\"x\");\n  |       ^\n"
        );
    }

    /// The failure `source` gives when parsed as a scenario.
    fn parse_failure(source: &str) -> ScriptFailure {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.rhai");
        std::fs::write(&script, source).unwrap();
        let error = Engine::new().compile(source).unwrap_err();
        ScriptFailure::new(&EvalAltResult::ErrorParsing(*error.0, error.1), &script, &[])
    }

    #[test]
    fn a_missing_semicolon_is_shown_where_it_belongs() {
        let failure = parse_failure("let a = 1\n\n// a comment\nlet b = 2;\n");
        assert_eq!((failure.line, failure.column), (1, 10), "{}", failure.report);
        assert!(
            failure.message.contains("add `;` at the end of this line"),
            "{}",
            failure.message
        );
        assert!(
            failure.report.contains("1 | let a = 1\n  |          ^"),
            "{}",
            failure.report
        );
    }

    #[test]
    fn a_block_never_closed_is_shown_where_it_opens() {
        let source = "let m = #{ a: 1 };\nif true {\n    let s = \"{ not a brace\"; // nor {\n    print(`${s} {`);\n";
        let failure = parse_failure(source);
        assert_eq!((failure.line, failure.column), (2, 9), "{}", failure.report);
        assert!(
            failure.message.contains("this `{` is never closed"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_missing_semicolon_is_placed_past_strings_and_comments() {
        let failure = parse_failure("let u = \"http://x\" /* a\n note */\n/* another */\nlet b = 2;\n");
        assert_eq!((failure.line, failure.column), (1, 19), "{}", failure.report);
    }

    #[test]
    fn a_map_literal_left_open_mid_script_is_shown_where_the_parser_stopped() {
        let failure = parse_failure("if true {\n  let m = #{ a: 1, b: 2 ;\n}\n");
        assert_eq!(failure.line, 2, "{}", failure.report);
        assert!(!failure.message.contains("never closed"), "{}", failure.message);
    }

    #[test]
    fn nested_block_comments_hide_their_braces() {
        let failure = parse_failure("/* a /* { */ } */\nif true {\n  let a = 1;\n");
        assert_eq!((failure.line, failure.column), (2, 9), "{}", failure.report);
    }

    #[test]
    fn other_parse_errors_stay_where_the_parser_stopped() {
        let failure = parse_failure("let a = ;\n");
        assert_eq!((failure.line, failure.column), (1, 9), "{}", failure.report);
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
        assert_eq!(
            failure.message_without(Path::new("/tmp/xyz/")),
            "no file in $ROOT/10000"
        );
    }

    #[test]
    fn only_paths_under_the_root_are_hidden_not_words_that_look_like_it() {
        let failure = |message: &str| ScriptFailure {
            line: 1,
            column: 1,
            message: message.into(),
            report: String::new(),
        };
        let timed_out = failure("download of test2.txt failed; timed out? see out/10000/x and 'out/1'");
        assert_eq!(
            timed_out.message_without(Path::new("out")),
            "download of test2.txt failed; timed out? see $ROOT/10000/x and '$ROOT/1'"
        );
        let dotted = failure("no peer has test2.txt in ./10000/a.b");
        assert_eq!(
            dotted.message_without(Path::new(".")),
            "no peer has test2.txt in $ROOT/10000/a.b"
        );
        // A longer path that merely ends the same way is not the root.
        let other = failure("see /var/tmp/xyz/1");
        assert_eq!(other.message_without(Path::new("/tmp/xyz")), "see /var/tmp/xyz/1");
    }
}
