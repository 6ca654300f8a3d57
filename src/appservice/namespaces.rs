//! Whether a bridge's namespace lies inside the umbrella's: every ID the bridge's regex
//! covers must be covered by the umbrella's, or the umbrella would carry a bridge acting for
//! users Synapse never let it have.
//!
//! Namespaces match as Synapse matches them (Python `re.match`): anchored at the start, not
//! at the end, so a namespace covers every ID that *begins* with a match. Containment of two
//! such languages is decided exactly by walking both regexes' DFAs side by side (the product
//! automaton) from their anchored start states over every byte: a path on which the bridge's
//! regex has matched while the umbrella's has not is a counterexample; a path on which the
//! umbrella's has matched is covered with every extension. The DFAs are regex-automata's lazy
//! ones, built on demand, so a namespace of ordinary size costs a few hundred states. Look-
//! around assertions (`$`, `\b`) are judged conservatively: a bridge namespace may be refused
//! that a finer check would accept, never the other way round.

use std::collections::{HashSet, VecDeque};

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

/// Product states explored at most before a pair of regexes is called too complex.
const MAX_PAIRS: usize = 20_000;

/// Why a namespace is not known to lie inside another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInside {
    #[error("it covers {0:?}, which the umbrella's namespace does not")]
    Escapes(String),
    #[error("it is too complex to compare with the umbrella's namespace")]
    TooComplex,
    #[error("the regex cannot be compiled: {0}")]
    Invalid(String),
}

fn dfa(pattern: &str) -> Result<DFA, NotInside> {
    DFA::builder()
        .configure(
            DFA::config()
                .match_kind(MatchKind::All)
                .cache_capacity(8 << 20),
        )
        .build(pattern)
        .map_err(|err| NotInside::Invalid(err.to_string()))
}

/// Whether every ID `inner` covers is covered by one of `outer` (regex sources as written in
/// registrations, unanchored). An empty `outer` covers nothing.
pub fn inside(inner: &str, outer: &[&str]) -> Result<(), NotInside> {
    if outer.is_empty() {
        return Err(NotInside::Escapes(String::new()));
    }
    let union = outer
        .iter()
        .map(|regex| format!("(?:{regex})"))
        .collect::<Vec<_>>()
        .join("|");
    let a = dfa(&format!("(?:{inner})"))?;
    let b = dfa(&union)?;
    let mut cache_a = Cache::new(&a);
    let mut cache_b = Cache::new(&b);
    let anchored = start::Config::new().anchored(Anchored::Yes);
    let lazy = |err: &dyn std::fmt::Display| NotInside::Invalid(err.to_string());
    let start_a = a
        .start_state(&mut cache_a, &anchored)
        .map_err(|e| lazy(&e))?;
    let start_b = b
        .start_state(&mut cache_b, &anchored)
        .map_err(|e| lazy(&e))?;
    let mut seen: HashSet<(LazyStateID, LazyStateID)> = HashSet::new();
    // Each pair with the shortest input that leads to it (for the message).
    let mut queue: VecDeque<(LazyStateID, LazyStateID, Vec<u8>)> = VecDeque::new();
    seen.insert((start_a, start_b));
    queue.push_back((start_a, start_b, Vec::new()));
    let example = |bytes: &[u8]| NotInside::Escapes(String::from_utf8_lossy(bytes).into_owned());
    while let Some((sa, sb, input)) = queue.pop_front() {
        if sa.is_dead() {
            continue;
        }
        let end_a = a.next_eoi_state(&mut cache_a, sa).map_err(|e| lazy(&e))?;
        let end_b = b.next_eoi_state(&mut cache_b, sb).map_err(|e| lazy(&e))?;
        if end_a.is_match() && !end_b.is_match() {
            return Err(example(&input));
        }
        for byte in 0..=255u8 {
            let na = a.next_state(&mut cache_a, sa, byte).map_err(|e| lazy(&e))?;
            let nb = b.next_state(&mut cache_b, sb, byte).map_err(|e| lazy(&e))?;
            // Match states come one byte late: `nb` matching means the umbrella matched
            // `input`, so it covers every extension of it.
            if nb.is_match() {
                continue;
            }
            if na.is_match() {
                return Err(example(&input));
            }
            if seen.insert((na, nb)) {
                if seen.len() > MAX_PAIRS {
                    return Err(NotInside::TooComplex);
                }
                let mut longer = input.clone();
                longer.push(byte);
                queue.push_back((na, nb, longer));
            }
        }
    }
    // A cache cleared on the way would have renamed states under our feet.
    if cache_a.clear_count() > 0 || cache_b.clear_count() > 0 {
        return Err(NotInside::TooComplex);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_namespaces_inside_and_outside_the_umbrella() {
        let umbrella = [r"@dyn_.*:example\.org"];
        let cases: &[(&str, bool)] = &[
            (r"@dyn_tg_.*:example\.org", true),
            (r"@dyn_tg_[0-9]+:example\.org", true),
            (r"@dyn_tgbot:example\.org", true),
            // Synapse matches at the start only, so the umbrella covers longer IDs too.
            (r"@dyn_.*", false),
            (r"@dyn_x:example\.org.*", true),
            (r"@dy.*:example\.org", false),
            (r"@telegram_.*:example\.org", false),
            (r"@dyn_tg_.*:example.org", false), // "." also matches "x"
            (r"(@dyn_a_.*|@other_.*):example\.org", false),
        ];
        for (inner, expected) in cases {
            let got = inside(inner, &umbrella);
            assert_eq!(got.is_ok(), *expected, "{inner}: {got:?}");
        }
        assert_eq!(
            inside(r"@dy.*:example\.org", &umbrella),
            Err(NotInside::Escapes("@dy:example.org".into())),
            "the shortest escaping ID is shown"
        );
    }

    #[test]
    fn a_union_of_umbrella_namespaces_covers_their_parts() {
        let umbrella = [r"@a_.*:hs", r"@b_.*:hs"];
        assert!(inside(r"@[ab]_x:hs", &umbrella).is_ok());
        assert!(inside(r"@[abc]_x:hs", &umbrella).is_err());
        assert!(inside(r"@a_x:hs", &[]).is_err());
        assert!(matches!(inside("(", &umbrella), Err(NotInside::Invalid(_))));
    }
}
