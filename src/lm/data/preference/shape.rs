//! TRL's preference shapes: a row's `prompt` / `chosen` / `rejected` cells into a
//! [`PreferencePair`]. Standard rows hold strings, conversational rows lists of
//! `{role, content}` messages; a row without a prompt has it implicit in both responses and
//! extracted as TRL's `extract_prompt` does.

use super::{Cell, DataError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A prompt or a response: text (standard) or messages (conversational).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Turns {
    Text(String),
    Messages(Vec<Message>),
}

/// One preference pair as read; `row` is its index in the split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreferencePair {
    pub row: usize,
    pub prompt: Turns,
    pub chosen: Turns,
    pub rejected: Turns,
}

impl PreferencePair {
    /// Whether the pair is conversational (rendered through a chat template).
    pub fn is_conversational(&self) -> bool {
        matches!(self.chosen, Turns::Messages(_))
    }
}

/// The pair of row `row` of `file`: with a `prompt` cell, as it is (prompt and responses of one
/// shape); without, the prompt extracted from the responses ([`extract_prompt`]).
/// `names` are the columns read, for errors.
pub fn pair_of(
    (file, row): (&Path, usize),
    prompt: Option<Cell>,
    (chosen, rejected): (Cell, Cell),
    names: [&str; 3],
) -> Result<PreferencePair, DataError> {
    let value = |column: &str, why: String| DataError::Value {
        file: file.to_path_buf(),
        row,
        column: column.to_string(),
        why,
    };
    let (prompt, chosen, rejected) = match (prompt, chosen, rejected) {
        (Some(Cell::Text(p)), Cell::Text(c), Cell::Text(r)) => {
            (Turns::Text(p), Turns::Text(c), Turns::Text(r))
        }
        (Some(Cell::Messages(p)), Cell::Messages(c), Cell::Messages(r)) => {
            (Turns::Messages(p), Turns::Messages(c), Turns::Messages(r))
        }
        (None, Cell::Text(c), Cell::Text(r)) => {
            let (c, r): (Vec<char>, Vec<char>) = (c.chars().collect(), r.chars().collect());
            let (p, c, r) = extract_prompt(&c, &r, |x| *x == ' ')
                .ok_or_else(|| value(names[1], "no implicit prompt: the chosen and rejected texts differ from their first character (give a prompt column)".into()))?;
            let s = |v: &[char]| v.iter().collect::<String>();
            (Turns::Text(s(p)), Turns::Text(s(c)), Turns::Text(s(r)))
        }
        (None, Cell::Messages(c), Cell::Messages(r)) => {
            let (p, c, r) = extract_prompt(&c, &r, |_| false)
                .ok_or_else(|| value(names[1], "no implicit prompt: the chosen and rejected conversations differ from their first message (give a prompt column)".into()))?;
            (
                Turns::Messages(p.to_vec()),
                Turns::Messages(c.to_vec()),
                Turns::Messages(r.to_vec()),
            )
        }
        (p, c, _) => {
            let kind = |x: &Cell| match x {
                Cell::Text(_) => "a string",
                Cell::Messages(_) => "a conversation",
            };
            let (column, what) = match &p {
                Some(p) if kind(p) != kind(&c) => (
                    names[0],
                    format!("is {} while {:?} is {}", kind(p), names[1], kind(&c)),
                ),
                _ => (names[2], format!("is not {} like {:?}", kind(&c), names[1])),
            };
            return Err(value(
                column,
                format!("{what} (TRL: a row is standard or conversational throughout)"),
            ));
        }
    };
    Ok(PreferencePair {
        row,
        prompt,
        chosen,
        rejected,
    })
}

/// TRL's `extract_prompt` on two sequences (characters or messages): the prompt is their common
/// beginning, up to the first position `k` where they differ, backed up by one where the chosen
/// element before it is a space (`is_space`); where neither differs within the shorter length,
/// TRL's loop leaves `k` at the last index of the shorter one (its quirk, kept). `None` when they
/// differ at once or one is empty (TRL would give a prompt cut from the end or fail).
pub fn extract_prompt<'a, T: PartialEq>(
    chosen: &'a [T],
    rejected: &'a [T],
    is_space: impl Fn(&T) -> bool,
) -> Option<(&'a [T], &'a [T], &'a [T])> {
    let n = chosen.len().min(rejected.len());
    let mut k = n.checked_sub(1)?;
    if let Some(d) = (0..n).find(|&i| chosen[i] != rejected[i]) {
        k = d;
        if k == 0 {
            return None;
        }
        if is_space(&chosen[k - 1]) {
            k -= 1;
        }
    }
    (k > 0).then(|| (&chosen[..k], &chosen[k..], &rejected[k..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    /// TRL's documented example and its space rule: "The sky is blue." / "The sky is green."
    /// gives the prompt "The sky is" and the responses " blue." / " green.".
    #[test]
    fn implicit_text_prompt_as_trl() {
        let (c, r) = (chars("The sky is blue."), chars("The sky is green."));
        let (p, c, r) = extract_prompt(&c, &r, |x| *x == ' ').unwrap();
        let s = |v: &[char]| v.iter().collect::<String>();
        assert_eq!(
            (s(p), s(c), s(r)),
            ("The sky is".into(), " blue.".into(), " green.".into())
        );
        // One a prefix of the other: TRL's loop stops at the last shared index.
        let (c, r) = (chars("abc"), chars("abcd"));
        let (p, c, r) = extract_prompt(&c, &r, |x| *x == ' ').unwrap();
        assert_eq!((s(p), s(c), s(r)), ("ab".into(), "c".into(), "cd".into()));
        assert!(extract_prompt(&chars("x"), &chars("y"), |x| *x == ' ').is_none());
        assert!(extract_prompt(&chars(""), &chars("y"), |x| *x == ' ').is_none());
    }

    #[test]
    fn implicit_conversation_prompt_is_the_shared_turns() {
        let m = |role: &str, content: &str| Message {
            role: role.into(),
            content: content.into(),
        };
        let q = m("user", "What color is the sky?");
        let chosen = Cell::Messages(vec![q.clone(), m("assistant", "It is blue.")]);
        let rejected = Cell::Messages(vec![q.clone(), m("assistant", "It is green.")]);
        let p = pair_of(
            (Path::new("f"), 3),
            None,
            (chosen, rejected),
            ["prompt", "chosen", "rejected"],
        )
        .unwrap();
        assert_eq!(p.prompt, Turns::Messages(vec![q]));
        assert_eq!(
            p.chosen,
            Turns::Messages(vec![m("assistant", "It is blue.")])
        );
        assert!(p.is_conversational());
    }

    #[test]
    fn mixed_shapes_are_refused_naming_row_and_column() {
        let e = pair_of(
            (Path::new("data.jsonl"), 7),
            Some(Cell::Text("q".into())),
            (Cell::Messages(vec![]), Cell::Messages(vec![])),
            ["question", "chosen", "rejected"],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("data.jsonl") && text.contains("row 7") && text.contains("\"question\""),
            "{text}"
        );
    }
}
