//! `env_file`s as Compose reads them (its dotenv parser): `KEY=value` or
//! `KEY: value`, an optional `export `, `#` comment lines, unquoted
//! values cut at ` #` and trimmed, `'single'` quotes literal,
//! `"double"` quotes with escapes, both spanning lines; values
//! interpolated (not single-quoted ones, nor `\$` in double quotes); a
//! line with only `KEY` takes the variable from the environment.

use std::collections::BTreeMap;

use crate::interpolate::{Read, interpolate};

/// The most lines, and bytes, an env file may have.
const MAX_BYTES: usize = 1 << 20;

fn key_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']')
}

/// The variables of one env file, in order. `lookup` answers `${X}` and a
/// bare `KEY`: the project environment, then the service's
/// `environment`; keys defined earlier in the files come after both.
pub fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    earlier: &BTreeMap<String, String>,
    read: &mut Read,
) -> Result<Vec<(String, String)>, String> {
    if text.len() > MAX_BYTES {
        return Err("the env file is over 1 MiB".to_owned());
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut defined: BTreeMap<String, String> = earlier.clone();
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line_no = 1;
    while i < chars.len() {
        // One logical line (quoted values may span several).
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        if chars[i] == '\n' {
            line_no += 1;
            i += 1;
            continue;
        }
        if chars[i] == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        if rest.starts_with("export ") {
            i += 7;
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
        }
        let key_start = i;
        while i < chars.len() && !matches!(chars[i], '=' | ':' | '\n') {
            i += 1;
        }
        let raw_key: String = chars[key_start..i].iter().collect();
        let key = raw_key.trim().to_owned();
        if key.contains(' ') {
            return Err(format!("line {line_no}: key cannot contain a space"));
        }
        if let Some(bad) = key.chars().find(|c| !key_char(*c)) {
            return Err(format!(
                "line {line_no}: unexpected character {bad:?} in variable name {key:?}"
            ));
        }
        if i >= chars.len() || chars[i] == '\n' {
            // `KEY` alone: from the environment, else not set.
            if let Some(v) = lookup(&key) {
                out.push((key.clone(), v.clone()));
                defined.insert(key, v);
            }
            continue;
        }
        i += 1; // the separator
        while i < chars.len() && matches!(chars[i], ' ' | '\t') {
            i += 1;
        }
        let combined = |k: &str| lookup(k).or_else(|| defined.get(k).cloned());
        let value = match chars.get(i) {
            Some('\'') => {
                i += 1;
                let mut v = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err(format!("line {line_no}: unterminated quoted value")),
                        Some('\\') if chars.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            if *c == '\n' {
                                line_no += 1;
                            }
                            v.push(*c);
                            i += 1;
                        }
                    }
                }
                skip_rest(&chars, &mut i);
                v
            }
            Some('"') => {
                i += 1;
                // Escapes first; `\$` stays a literal `$` through the
                // interpolation (written as `$$` for it).
                let mut v = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err(format!("line {line_no}: unterminated quoted value")),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let e = chars.get(i + 1).copied().unwrap_or('\\');
                            i += 2;
                            match e {
                                'n' => v.push('\n'),
                                'r' => v.push('\r'),
                                't' => v.push('\t'),
                                'a' => v.push('\u{7}'),
                                'b' => v.push('\u{8}'),
                                'f' => v.push('\u{c}'),
                                'v' => v.push('\u{b}'),
                                '"' => v.push('"'),
                                '\\' => v.push('\\'),
                                '$' => v.push_str("$$"),
                                other => {
                                    v.push('\\');
                                    v.push(other);
                                }
                            }
                        }
                        Some('$') if chars.get(i + 1) == Some(&'$') => {
                            v.push_str("$$");
                            i += 2;
                        }
                        Some(c) => {
                            if *c == '\n' {
                                line_no += 1;
                            }
                            v.push(*c);
                            i += 1;
                        }
                    }
                }
                skip_rest(&chars, &mut i);
                interpolate(&v, &combined, read).map_err(|e| format!("line {line_no}: {e}"))?
            }
            _ => {
                let start = i;
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                let raw: String = chars[start..i].iter().collect();
                let cut = raw.find(" #").map_or(raw.as_str(), |at| &raw[..at]);
                let trimmed = cut.trim_end();
                interpolate(trimmed, &combined, read).map_err(|e| format!("line {line_no}: {e}"))?
            }
        };
        defined.insert(key.clone(), value.clone());
        out.push((key, value));
    }
    Ok(out)
}

/// After a closing quote: the rest of the line (a comment) is skipped.
fn skip_rest(chars: &[char], i: &mut usize) {
    while *i < chars.len() && chars[*i] != '\n' {
        *i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What docker compose v2.40.3's `config` gives for the same file.
    #[test]
    fn compose_cases() {
        let text = "\u{feff}# comment\nexport A=1\nB=from-file\nC = spaced # comment\nD=x#c\nE=\"line\\nnext \\$HOME ${A}\"\nF='single $A'\nG: colon\nH=${A}-$$x\nX=fromfile\nK\n";
        let env = |k: &str| (k == "K").then(|| "fromenv".to_owned());
        let got = parse(text, &env, &BTreeMap::new(), &mut Read::default()).expect("parses");
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "from-file"),
            ("C", "spaced"),
            ("D", "x#c"),
            ("E", "line\nnext $HOME 1"),
            ("F", "single $A"),
            ("G", "colon"),
            ("H", "1-$x"),
            ("X", "fromfile"),
            ("K", "fromenv"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(got, want);
        let none = |_: &str| None;
        for (bad, err) in [
            ("BAD@KEY=x\n", "unexpected character '@'"),
            ("A B=x\n", "key cannot contain a space"),
            ("A=\"open\n", "unterminated quoted value"),
        ] {
            let e = parse(bad, &none, &BTreeMap::new(), &mut Read::default()).expect_err(bad);
            assert!(e.contains(err), "{err} in {e}");
        }
    }
}
