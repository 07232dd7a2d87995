//! Stop strings over a stream of text: output never includes a stop string, even one that
//! arrives split across tokens, and text that might begin one is held back until it is
//! known not to.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Add `delta`; returns the text that is now safe to emit, and whether a stop string
    /// was reached (everything from it on is dropped).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        self.pending.push_str(delta);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(i) = first {
            let out = self.pending[..i].to_string();
            self.pending.clear();
            return (out, true);
        }
        // hold back the longest tail that is the start of some stop string
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(|p| p.len())
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The held-back text, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for d in deltas {
            let (t, stop) = m.push(d);
            out += &t;
            if stop {
                return (out, true);
            }
        }
        out += &m.finish();
        (out, false)
    }

    #[test]
    fn stop_split_across_tokens_is_not_emitted() {
        assert_eq!(
            run(&["###"], &["Hello #", "#", "# world"]),
            ("Hello ".into(), true)
        );
        assert_eq!(
            run(&["用户："], &["好的。", "用", "户", "：再见"]),
            ("好的。".into(), true)
        );
    }

    #[test]
    fn held_text_that_is_not_a_stop_comes_out() {
        assert_eq!(run(&["###"], &["a #", "# b"]), ("a ## b".into(), false));
        assert_eq!(run(&["\n\n"], &["x\n"]), ("x\n".into(), false));
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
    }
}
