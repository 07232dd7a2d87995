//! Keeping a long chat inside the context: the oldest whole user/assistant turns are left
//! out, the system prompt and the newest user message always stay.

use super::Message;
use crate::Result;

/// `messages` less as few of its oldest user/assistant turns as make `fits` true, and how
/// many turns were left out. When nothing fits, the system prompt and the last user
/// message alone (the caller's length check then reports the sizes).
pub fn drop_oldest_turns(
    messages: &[Message],
    mut fits: impl FnMut(&[Message]) -> Result<bool>,
) -> Result<(Vec<Message>, usize)> {
    let system = messages.first().filter(|m| m.role == "system").cloned();
    let turns = &messages[system.is_some() as usize..];
    // whole (user, assistant) pairs before the last user message
    let pairs = turns.len().saturating_sub(1) / 2;
    let with = |dropped: usize| -> Vec<Message> {
        system
            .iter()
            .cloned()
            .chain(turns[2 * dropped..].iter().cloned())
            .collect()
    };
    for dropped in 0..=pairs {
        let kept = with(dropped);
        if fits(&kept)? {
            return Ok((kept, dropped));
        }
    }
    Ok((with(pairs), pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(turns: usize) -> Vec<Message> {
        let mut m = vec![Message::system("sys")];
        for i in 0..turns {
            m.push(Message::user(format!("q{i}")));
            m.push(Message::assistant(format!("a{i}")));
        }
        m.push(Message::user("last"));
        m
    }

    #[test]
    fn drops_whole_oldest_turns_and_keeps_system_and_last() {
        let m = chat(5);
        let (kept, dropped) = drop_oldest_turns(&m, |k| Ok(k.len() <= 4)).unwrap();
        assert_eq!(dropped, 4);
        let roles: Vec<_> = kept
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        assert_eq!(
            roles,
            [
                ("system", "sys"),
                ("user", "q4"),
                ("assistant", "a4"),
                ("user", "last")
            ]
        );
        // everything fits: nothing dropped
        assert_eq!(drop_oldest_turns(&m, |_| Ok(true)).unwrap(), (m.clone(), 0));
        // nothing fits: the system prompt and the last message
        let (kept, dropped) = drop_oldest_turns(&m, |_| Ok(false)).unwrap();
        assert_eq!((kept.len(), dropped), (2, 5));
        // no system prompt
        let (kept, dropped) = drop_oldest_turns(&m[1..], |k| Ok(k.len() <= 3)).unwrap();
        assert_eq!((kept[0].content.as_str(), dropped), ("q4", 4));
    }
}
