//! CSV fields as RFC 4180 writes them: quoted where they hold a comma, a quote or a line break,
//! a quote doubled inside. The outputs' text columns (token pieces, labels) go through
//! [`field`]; the readers of those outputs (figures, tests) split lines with [`fields`].

/// One field, quoted where it must be.
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The fields of one line.
pub fn fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_what_field_writes() {
        let texts = ["plain", "a,b", "say \"hi\"", "", "Ġ,\"", "line\nbreak"];
        let line: Vec<String> = texts.iter().map(|t| field(t)).collect();
        assert_eq!(fields(&line.join(",")), texts);
    }
}
