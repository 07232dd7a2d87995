//! Lines of stdin as text, for `tokenize` and `chat`: a line that is not UTF-8, or longer
//! than `MAX_LINE`, is an error for that line alone, never the end of the input.

use std::io::{BufRead, Read};
use yangtuo::{Error, Result};

const MAX_LINE: usize = 16 << 20;

/// The next line (without its `\n` or `\r\n`): `None` at the end of the input; `Some(Err)`
/// when the input cannot be read; `Some(Ok(Err(why)))` for a line that is not text.
pub fn next_line(r: &mut impl BufRead) -> Option<Result<std::result::Result<String, String>>> {
    let mut buf = vec![];
    let read = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf);
    match read {
        Err(e) => return Some(Err(Error::io("stdin", e))),
        Ok(0) => return None,
        Ok(_) => {}
    }
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        // skip the rest of the line, a chunk at a time
        loop {
            let (done, used) = match r.fill_buf() {
                Ok([]) => (true, 0),
                Ok(chunk) => match chunk.iter().position(|b| *b == b'\n') {
                    Some(i) => (true, i + 1),
                    None => (false, chunk.len()),
                },
                Err(e) => return Some(Err(Error::io("stdin", e))),
            };
            r.consume(used);
            if done {
                break;
            }
        }
        return Some(Ok(Err(format!("the line is longer than {MAX_LINE} bytes"))));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Some(Ok(String::from_utf8(buf).map_err(|e| {
        format!(
            "the line is not UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        )
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_does_not_end_the_input() {
        let mut input: &[u8] = b"a\r\n\xff\xfe\nb";
        let lines: Vec<_> = std::iter::from_fn(|| next_line(&mut input))
            .map(|l| l.unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                Ok("a".to_string()),
                Err("the line is not UTF-8 (at byte 0)".to_string()),
                Ok("b".to_string())
            ]
        );
    }
}
