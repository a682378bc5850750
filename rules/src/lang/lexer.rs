//! Source text → tokens. Words are not reserved: the parser gives `plan`, `deny`, `all` ...
//! their meaning from where they stand, so a plan may be called `basic` and an add-on `seats`.
//!
//! The lexer never fails: a bad character or literal is reported and skipped (or stands as a
//! [`Tok::BadInt`] the parser accepts without further complaint), and the stream always ends
//! with [`Tok::Eof`].

use super::diag::{Diags, codes};
use crate::ir::Span;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// `[A-Za-z_][A-Za-z0-9_]*`
    Ident(String),
    /// Decimal digits with optional `_` separators.
    Int(i64),
    /// An integer literal that overflowed (already reported).
    BadInt,
    /// `"..."` with `\"` and `\\` escapes, on one line.
    Str(String),
    LBrace,
    RBrace,
    LParen,
    RParen,
    Comma,
    Colon,
    /// `=`
    Assign,
    /// `==`
    EqEq,
    /// `!=`
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    /// `=>`
    FatArrow,
    Eof,
}

impl Tok {
    /// How the token is named in "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Int(n) => format!("integer `{n}`"),
            Tok::BadInt => "integer".into(),
            Tok::Str(_) => "string".into(),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Assign => "`=`".into(),
            Tok::EqEq => "`==`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::Lt => "`<`".into(),
            Tok::Le => "`<=`".into(),
            Tok::Gt => "`>`".into(),
            Tok::Ge => "`>=`".into(),
            Tok::Plus => "`+`".into(),
            Tok::Minus => "`-`".into(),
            Tok::Star => "`*`".into(),
            Tok::FatArrow => "`=>`".into(),
            Tok::Eof => "end of file".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
    /// First token on its line: the parser resynchronises only at such tokens.
    pub line_start: bool,
}

/// The span of bytes `start..end` of a file that starts at `base` in the program's span
/// space ([`super::Sources`]).
fn span(base: u32, start: usize, end: usize) -> Span {
    // The sources are capped far below 4 GiB before lexing.
    let at = |i: usize| base.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
    Span {
        start: at(start),
        end: at(end),
    }
}

/// [`lex_at`] for a file alone (spans from 0).
#[cfg(test)]
pub fn lex(text: &str, diags: &mut Diags) -> Vec<Token> {
    lex_at(text, 0, diags)
}

/// Splits `text` into tokens, reporting bad characters and literals into `diags`. Spans are
/// offset by `base`, where the file starts in the program's span space.
pub fn lex_at(text: &str, base: u32, diags: &mut Diags) -> Vec<Token> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut line_start = true;
    // Start of a run of unexpected characters, reported once when the run ends.
    let mut bad_run: Option<usize> = None;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        let tok = match b {
            b'\n' => {
                line_start = true;
                i += 1;
                None
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                None
            }
            b'#' => {
                i = skip_line(bytes, i);
                None
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = skip_line(bytes, i);
                None
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                Some(Tok::Ident(text[start..i].to_string()))
            }
            b'0'..=b'9' => {
                let mut value: Option<i64> = Some(0);
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                    if bytes[i] != b'_' {
                        let digit = i64::from(bytes[i] - b'0');
                        value = value
                            .and_then(|v| v.checked_mul(10))
                            .and_then(|v| v.checked_add(digit));
                    }
                    i += 1;
                }
                match value {
                    Some(v) => Some(Tok::Int(v)),
                    None => {
                        diags.error(
                            codes::INT_OVERFLOW,
                            span(base, start, i),
                            format!(
                                "integer literal `{}` does not fit in 64 bits (max {})",
                                &text[start..i],
                                i64::MAX
                            ),
                        );
                        Some(Tok::BadInt)
                    }
                }
            }
            b'"' => {
                i += 1;
                let mut s = String::new();
                let mut closed = false;
                while i < bytes.len() && bytes[i] != b'\n' {
                    match bytes[i] {
                        b'"' => {
                            i += 1;
                            closed = true;
                            break;
                        }
                        b'\\' if matches!(bytes.get(i + 1), Some(b'"' | b'\\')) => {
                            s.push(char::from(bytes[i + 1]));
                            i += 2;
                        }
                        _ => {
                            // Copy one whole character: `i` is always at a char boundary.
                            let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
                            s.push(ch);
                            i += ch.len_utf8().max(1);
                        }
                    }
                }
                if !closed {
                    diags.error(
                        codes::UNTERMINATED_STRING,
                        span(base, start, i),
                        "string is not closed on this line",
                    );
                }
                Some(Tok::Str(s))
            }
            _ => {
                let (tok, len) = match (b, bytes.get(i + 1)) {
                    (b'=', Some(b'=')) => (Some(Tok::EqEq), 2),
                    (b'=', Some(b'>')) => (Some(Tok::FatArrow), 2),
                    (b'!', Some(b'=')) => (Some(Tok::Ne), 2),
                    (b'<', Some(b'=')) => (Some(Tok::Le), 2),
                    (b'>', Some(b'=')) => (Some(Tok::Ge), 2),
                    (b'=', _) => (Some(Tok::Assign), 1),
                    (b'<', _) => (Some(Tok::Lt), 1),
                    (b'>', _) => (Some(Tok::Gt), 1),
                    (b'{', _) => (Some(Tok::LBrace), 1),
                    (b'}', _) => (Some(Tok::RBrace), 1),
                    (b'(', _) => (Some(Tok::LParen), 1),
                    (b')', _) => (Some(Tok::RParen), 1),
                    (b',', _) => (Some(Tok::Comma), 1),
                    (b':', _) => (Some(Tok::Colon), 1),
                    (b'+', _) => (Some(Tok::Plus), 1),
                    (b'-', _) => (Some(Tok::Minus), 1),
                    (b'*', _) => (Some(Tok::Star), 1),
                    _ => {
                        let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
                        (None, ch_len)
                    }
                };
                i += len;
                if tok.is_none() {
                    bad_run.get_or_insert(start);
                    continue;
                }
                tok
            }
        };
        if let Some(run) = bad_run.take() {
            report_bad_run(text, base, run, start, diags);
        }
        if let Some(tok) = tok {
            tokens.push(Token {
                tok,
                span: span(base, start, i),
                line_start,
            });
            line_start = false;
        }
    }
    if let Some(run) = bad_run.take() {
        report_bad_run(text, base, run, bytes.len(), diags);
    }
    tokens.push(Token {
        tok: Tok::Eof,
        span: span(base, bytes.len(), bytes.len()),
        line_start: true,
    });
    tokens
}

fn report_bad_run(text: &str, base: u32, start: usize, end: usize, diags: &mut Diags) {
    let first = text
        .get(start..)
        .and_then(|t| t.chars().next())
        .unwrap_or('?');
    diags.error(
        codes::UNEXPECTED_CHAR,
        span(base, start, end),
        format!("unexpected character `{}`", first.escape_debug()),
    );
}

fn skip_line(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i] != b'\n' {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> (Vec<Tok>, Vec<&'static str>) {
        let mut d = Diags::default();
        let t = lex(text, &mut d).into_iter().map(|t| t.tok).collect();
        let f = super::super::SourceFile {
            name: "t".into(),
            text: text.into(),
        };
        (t, d.finish(&f, 100).into_iter().map(|d| d.code).collect())
    }

    #[test]
    fn words_numbers_and_operators() {
        let (t, d) = toks("grant seats = 1_000 # comment\n// another\na>=b=>c!=d==e");
        assert!(d.is_empty());
        assert_eq!(
            t,
            vec![
                Tok::Ident("grant".into()),
                Tok::Ident("seats".into()),
                Tok::Assign,
                Tok::Int(1000),
                Tok::Ident("a".into()),
                Tok::Ge,
                Tok::Ident("b".into()),
                Tok::FatArrow,
                Tok::Ident("c".into()),
                Tok::Ne,
                Tok::Ident("d".into()),
                Tok::EqEq,
                Tok::Ident("e".into()),
                Tok::Eof,
            ]
        );
    }

    #[test]
    fn largest_integer_fits_and_one_more_overflows() {
        assert_eq!(toks("9223372036854775807").0[0], Tok::Int(i64::MAX));
        let (t, d) = toks("9_223_372_036_854_775_808");
        assert_eq!(t[0], Tok::BadInt);
        assert_eq!(d, vec![codes::INT_OVERFLOW]);
    }

    #[test]
    fn strings_escape_and_must_close_on_their_line() {
        assert_eq!(
            toks(r#""a \"b\" \\ é""#).0[0],
            Tok::Str(r#"a "b" \ é"#.into())
        );
        let (t, d) = toks("\"open\nx");
        assert_eq!(t[0], Tok::Str("open".into()));
        assert_eq!(t[1], Tok::Ident("x".into()));
        assert_eq!(d, vec![codes::UNTERMINATED_STRING]);
    }

    #[test]
    fn a_run_of_bad_characters_is_one_error() {
        let (t, d) = toks("a @@é€ b / c !");
        assert_eq!(
            t,
            vec![
                Tok::Ident("a".into()),
                Tok::Ident("b".into()),
                Tok::Ident("c".into()),
                Tok::Eof
            ]
        );
        assert_eq!(
            d,
            vec![
                codes::UNEXPECTED_CHAR,
                codes::UNEXPECTED_CHAR,
                codes::UNEXPECTED_CHAR
            ]
        );
    }

    #[test]
    fn line_start_marks_first_token_of_each_line() {
        let mut d = Diags::default();
        let t = lex("a b\n  c\n\nd", &mut d);
        let starts: Vec<bool> = t.iter().map(|t| t.line_start).collect();
        assert_eq!(starts, vec![true, false, true, true, true]);
    }
}
