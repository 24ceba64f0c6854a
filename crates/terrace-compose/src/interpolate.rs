//! Compose's `${VAR}` interpolation, as Docker Compose v2 (compose-go)
//! does it: `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:+r}`,
//! `${VAR+r}`, `${VAR:?e}`, `${VAR?e}`, `$$` for a literal `$`; the word
//! after an operator is itself interpolated (nesting). An unset variable
//! is empty (and noted); a `${` that is not a valid expression is an
//! error. Only string values are interpolated, never mapping keys.

use std::collections::BTreeSet;

/// The longest string interpolated, and how deeply words may nest.
pub const MAX_TEXT: usize = 1 << 20;
pub const MAX_DEPTH: usize = 32;

/// Why interpolation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    #[error("invalid interpolation format: {0:?} (write `$$` for a literal `$`)")]
    Invalid(String),
    #[error("required variable {name} is missing a value{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Required { name: String, message: String },
    #[error("the value is over {MAX_TEXT} bytes, or nests `${{...}}` deeper than {MAX_DEPTH}")]
    Budget,
}

/// What one interpolation read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    /// Variables that had a value.
    pub used: BTreeSet<String>,
    /// Variables that were unset and read as empty (Compose warns).
    pub unset: BTreeSet<String>,
}

fn name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Interpolates `text` with `lookup`.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    read: &mut Read,
) -> Result<String, InterpolationError> {
    if text.len() > MAX_TEXT {
        return Err(InterpolationError::Budget);
    }
    eval(text, lookup, read, 0).map_err(|e| match e {
        InterpolationError::Invalid(_) => InterpolationError::Invalid(text.to_owned()),
        other => other,
    })
}

fn eval(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    read: &mut Read,
    depth: usize,
) -> Result<String, InterpolationError> {
    if depth > MAX_DEPTH {
        return Err(InterpolationError::Budget);
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some(&n) if name_start(n) => {
                let mut j = i + 1;
                while j < chars.len() && name_char(chars[j]) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                out.push_str(&value(&name, lookup, read));
                i = j;
            }
            Some('{') => {
                // The end: braces counted.
                let mut depth_braces = 0usize;
                let mut j = i + 1;
                let mut end = None;
                while j < chars.len() {
                    match chars[j] {
                        '{' => depth_braces += 1,
                        '}' => {
                            depth_braces -= 1;
                            if depth_braces == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                let end = end.ok_or_else(|| InterpolationError::Invalid(String::new()))?;
                let inner: String = chars[i + 2..end].iter().collect();
                out.push_str(&braced(&inner, lookup, read, depth)?);
                i = end + 1;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

fn value(name: &str, lookup: &dyn Fn(&str) -> Option<String>, read: &mut Read) -> String {
    match lookup(name) {
        Some(v) => {
            read.used.insert(name.to_owned());
            v
        }
        None => {
            read.unset.insert(name.to_owned());
            String::new()
        }
    }
}

fn braced(
    inner: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    read: &mut Read,
    depth: usize,
) -> Result<String, InterpolationError> {
    let name_len = inner.chars().take_while(|c| name_char(*c)).count();
    let name = &inner[..name_len];
    if name.is_empty() || !name.starts_with(name_start) {
        return Err(InterpolationError::Invalid(String::new()));
    }
    let rest = &inner[name_len..];
    if rest.is_empty() {
        return Ok(value(name, lookup, read));
    }
    let (op, word) = [":?", ":-", ":+", "?", "-", "+"]
        .iter()
        .find_map(|op| rest.strip_prefix(op).map(|w| (*op, w)))
        .ok_or_else(|| InterpolationError::Invalid(String::new()))?;
    let got = lookup(name);
    let empty_counts = op.starts_with(':');
    let missing = match &got {
        None => true,
        Some(v) => empty_counts && v.is_empty(),
    };
    match op.trim_start_matches(':') {
        "-" => {
            if missing {
                eval(word, lookup, read, depth + 1)
            } else {
                read.used.insert(name.to_owned());
                Ok(got.unwrap_or_default())
            }
        }
        "+" => {
            if missing {
                Ok(String::new())
            } else {
                read.used.insert(name.to_owned());
                eval(word, lookup, read, depth + 1)
            }
        }
        _ => {
            if missing {
                Err(InterpolationError::Required {
                    name: name.to_owned(),
                    message: eval(word, lookup, read, depth + 1)?,
                })
            } else {
                read.used.insert(name.to_owned());
                Ok(got.unwrap_or_default())
            }
        }
    }
}

/// Splits a command string as Compose does (go-shellwords 1.0.12):
/// whitespace separates words; `'...'` is literal; `"..."` with `\`
/// escaping any character; an unquoted `\x` is `x`; quoted empty words
/// are kept; words end at an unquoted `;`, `&`, `|`, `<` or `>`, where
/// the command stops.
pub fn shell_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut have = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                if have {
                    words.push(std::mem::take(&mut word));
                    have = false;
                }
            }
            '\\' => match chars.next() {
                Some(n) => {
                    word.push(n);
                    have = true;
                }
                None => return Err("a trailing `\\`".to_owned()),
            },
            '\'' => {
                have = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => word.push(n),
                        None => return Err("an unterminated `'`".to_owned()),
                    }
                }
            }
            '"' => {
                have = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n) => word.push(n),
                            None => return Err("an unterminated `\"`".to_owned()),
                        },
                        Some(n) => word.push(n),
                        None => return Err("an unterminated `\"`".to_owned()),
                    }
                }
            }
            ';' | '&' | '|' | '<' | '>' => break,
            '(' if !word.ends_with('$') => return Err("a `(` outside quotes".to_owned()),
            other => {
                word.push(other);
                have = true;
            }
        }
    }
    if have {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<String, InterpolationError> {
        let lookup = |n: &str| match n {
            "SET" => Some("v".to_owned()),
            "EMPTY" => Some(String::new()),
            "A_B" => Some("1".to_owned()),
            "W" => Some("ww".to_owned()),
            _ => None,
        };
        interpolate(text, &lookup, &mut Read::default())
    }

    /// What Docker Compose v2.40.3 answers for each.
    #[test]
    fn compose_cases() {
        for (input, want) in [
            ("$SET", "v"),
            ("${SET}", "v"),
            ("$SET_x", ""),
            ("$A_B-B", "1-B"),
            ("$1", "$1"),
            ("$-", "$-"),
            ("a$", "a$"),
            ("$", "$"),
            ("$${X}", "${X}"),
            ("$$$$", "$$"),
            ("${UNSET:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${SET:-d}", "v"),
            ("${UNSET-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${UNSET:+r}", ""),
            ("${EMPTY:+r}", ""),
            ("${SET:+r}", "r"),
            ("${EMPTY+r}", "r"),
            ("${EMPTY?e}", ""),
            ("${A:-${B:-nested}}", "nested"),
            ("${X:-$A_B}", "1"),
            ("${X:-$$}", "$"),
            ("${A:-a}}", "a}"),
            ("${A:-{x}}", "{x}"),
            ("${A-x:-y}", "x:-y"),
            ("${A:-x}${B:-y}", "xy"),
            ("${X:-a:b}", "a:b"),
            ("${X:-}", ""),
        ] {
            assert_eq!(run(input).as_deref(), Ok(want), "{input}");
        }
        for bad in ["${1}", "${}", "${A.B}", "${A B}", "${A:-x"] {
            assert_eq!(
                run(bad),
                Err(InterpolationError::Invalid(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(
            run("${V:?oops ${W}}").expect_err("required").to_string(),
            "required variable V is missing a value: oops ww"
        );
        assert_eq!(
            run("${EMPTY:?}").expect_err("required").to_string(),
            "required variable EMPTY is missing a value"
        );
        let mut read = Read::default();
        let _ = interpolate(
            "${SET} $NOPE",
            &|n| (n == "SET").then(|| "v".to_owned()),
            &mut read,
        );
        assert_eq!(read.used, ["SET".to_owned()].into());
        assert_eq!(read.unset, ["NOPE".to_owned()].into());
    }

    #[test]
    fn commands_split_as_compose_splits_them() {
        assert_eq!(
            shell_words(r#"sh -c 'echo "a b" && ls' "x y" z\ w ''"#).expect("splits"),
            ["sh", "-c", "echo \"a b\" && ls", "x y", "z w", ""]
        );
        assert_eq!(shell_words("echo a;b |c").expect("splits"), ["echo", "a"]);
        assert_eq!(
            shell_words("sh -c x && y").expect("splits"),
            ["sh", "-c", "x"]
        );
        assert_eq!(
            shell_words(r#""c\"d" e\\f"#).expect("splits"),
            ["c\"d", "e\\f"]
        );
        assert_eq!(shell_words("echo   ").expect("splits"), ["echo"]);
        assert!(shell_words("echo 'open").is_err());
        assert!(shell_words("echo \\").is_err());
        assert!(shell_words("a (b)").is_err());
    }

    #[test]
    fn the_budget_holds() {
        let deep = format!(
            "{}x{}",
            "${A:-".repeat(MAX_DEPTH + 2),
            "}".repeat(MAX_DEPTH + 2)
        );
        assert_eq!(run(&deep), Err(InterpolationError::Budget));
    }
}
