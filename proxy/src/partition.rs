//! Sans-IO partitioned routing (the seeds' SMS server subsets): a cluster's key space (e.g.
//! the digits of a phone number) is cut into partitions by key prefix, each owned by one
//! instance; a request goes to the one instance whose prefix starts its key.
//!
//! ```toml
//! [clusters.sms]
//! partition_key = "phone"          # body field holding the key (str)
//! key_space = "0123456789"         # the characters keys are made of (default: digits)
//! partitions = [
//!   { instance = "sms-1", prefixes = ["0", "1", "2", "3"] },
//!   { instance = "sms-2", prefixes = ["4", "5", "6"] },
//!   { instance = "sms-3", prefixes = ["7", "8", "9"] },
//! ]
//! ```
//!
//! [`validate`] (run by `--check-config`) rejects prefixes with characters outside the key
//! space, overlaps (one prefix equal to or starting another: two owners for some keys) and
//! gaps (keys no prefix covers), naming the prefixes. With neither overlaps nor gaps, every
//! key of at least the longest prefix's length has exactly one owner.

/// A validated prefix table: prefix → owner (an index chosen by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionTable {
    /// (prefix, owner), longest prefixes first.
    entries: Vec<(String, usize)>,
}

/// Most gaps listed in one error message.
const MAX_GAPS_SHOWN: usize = 8;

/// Check a partition layout: `parts` is (owner name, its prefixes) per partition.
///
/// # Errors
/// A message naming the offending prefixes: empty key space, empty prefix, a character
/// outside the key space, an overlap, or the gaps.
pub fn validate(space: &str, parts: &[(&str, &[String])]) -> Result<(), String> {
    let chars: Vec<char> = space.chars().collect();
    if chars.is_empty() {
        return Err("key_space is empty".into());
    }
    if let Some((_, c)) = chars
        .iter()
        .enumerate()
        .find(|(i, c)| chars[..*i].contains(c))
    {
        return Err(format!("key_space repeats {c:?}"));
    }
    let mut all: Vec<(&str, &str)> = Vec::new();
    for (owner, prefixes) in parts {
        if prefixes.is_empty() {
            return Err(format!("partition {owner}: no prefixes"));
        }
        for p in prefixes.iter() {
            if p.is_empty() {
                return Err(format!("partition {owner}: empty prefix"));
            }
            if let Some(c) = p.chars().find(|c| !chars.contains(c)) {
                return Err(format!(
                    "partition {owner}: prefix {p:?} has {c:?}, outside the key space {space:?}"
                ));
            }
            all.push((p.as_str(), owner));
        }
    }
    for (i, (p, po)) in all.iter().enumerate() {
        for (q, qo) in &all[i + 1..] {
            if p == q {
                return Err(format!(
                    "prefix {p:?} is declared twice ({po} and {qo}): partitions overlap"
                ));
            }
            let (short, so, long, lo) = if p.len() <= q.len() {
                (p, po, q, qo)
            } else {
                (q, qo, p, po)
            };
            if long.starts_with(short) {
                return Err(format!(
                    "prefixes {short:?} ({so}) and {long:?} ({lo}) overlap: keys starting \
                     {long:?} would have two owners"
                ));
            }
        }
    }
    let prefixes: Vec<&str> = all.iter().map(|(p, _)| *p).collect();
    let mut gaps = Vec::new();
    find_gaps(String::new(), &prefixes, &chars, &mut gaps);
    if !gaps.is_empty() {
        let n = gaps.len();
        let shown: Vec<String> = gaps
            .iter()
            .take(MAX_GAPS_SHOWN)
            .map(|g| format!("{g:?}"))
            .collect();
        let more = if n > MAX_GAPS_SHOWN {
            format!(" (and {} more)", n - MAX_GAPS_SHOWN)
        } else {
            String::new()
        };
        return Err(format!(
            "partitions leave gaps: no instance owns keys starting with {}{more}",
            shown.join(", ")
        ));
    }
    Ok(())
}

/// Collect the uncovered prefixes under `at`.
fn find_gaps(at: String, prefixes: &[&str], space: &[char], out: &mut Vec<String>) {
    if out.len() > MAX_GAPS_SHOWN * 4 {
        return;
    }
    if prefixes.iter().any(|p| at.starts_with(p)) {
        return;
    }
    if !prefixes.iter().any(|p| p.starts_with(at.as_str())) {
        out.push(at);
        return;
    }
    for c in space {
        let mut next = at.clone();
        next.push(*c);
        find_gaps(next, prefixes, space, out);
    }
}

impl PartitionTable {
    /// Build a table from (prefixes, owner) per partition (validate first).
    pub fn new(parts: &[(&[String], usize)]) -> PartitionTable {
        let mut entries: Vec<(String, usize)> = parts
            .iter()
            .flat_map(|(ps, owner)| ps.iter().map(move |p| (p.clone(), *owner)))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        PartitionTable { entries }
    }

    /// The owner of `key`: the partition whose prefix starts it. `None` when no prefix does
    /// (a key shorter than its prefix, or with characters outside the key space).
    pub fn lookup(&self, key: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(p, _)| key.starts_with(p.as_str()))
            .map(|(_, o)| *o)
    }

    /// The distinct owners, in table order.
    pub fn owners(&self) -> Vec<usize> {
        let mut v: Vec<usize> = Vec::new();
        for (_, o) in &self.entries {
            if !v.contains(o) {
                v.push(*o);
            }
        }
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_string()).collect()
    }

    const DIGITS: &str = "0123456789";

    #[test]
    fn valid_layouts() {
        let a = s(&["0", "1", "2", "3"]);
        let b = s(&["4", "5", "6"]);
        let c = s(&["7", "8", "9"]);
        validate(DIGITS, &[("sms-1", &a), ("sms-2", &b), ("sms-3", &c)]).unwrap();
        // Mixed depths: "1" split further into "10".."19".
        let a = s(&["0", "2", "3", "4", "5", "6", "7", "8", "9"]);
        let b = s(&["10", "11", "12", "13", "14"]);
        let c = s(&["15", "16", "17", "18", "19"]);
        validate(DIGITS, &[("x", &a), ("y", &b), ("z", &c)]).unwrap();
    }

    #[test]
    fn overlaps_are_named() {
        let a = s(&["0", "1", "2", "3", "4"]);
        let b = s(&["4", "5", "6", "7", "8", "9"]);
        let e = validate(DIGITS, &[("sms-1", &a), ("sms-2", &b)]).unwrap_err();
        assert!(e.contains("\"4\"") && e.contains("twice"), "{e}");
        let a = s(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
        let b = s(&["12"]);
        let e = validate(DIGITS, &[("sms-1", &a), ("sms-2", &b)]).unwrap_err();
        assert!(
            e.contains("\"1\" (sms-1) and \"12\" (sms-2) overlap"),
            "{e}"
        );
    }

    #[test]
    fn gaps_are_named() {
        let a = s(&["0", "1", "2", "3"]);
        let b = s(&["5", "6", "7", "8", "9"]);
        let e = validate(DIGITS, &[("sms-1", &a), ("sms-2", &b)]).unwrap_err();
        assert!(e.contains("gaps") && e.contains("\"4\""), "{e}");
        // A split prefix with a hole: "1" covered only for "10".."18".
        let a = s(&["0", "2", "3", "4", "5", "6", "7", "8", "9"]);
        let b = s(&["10", "11", "12", "13", "14", "15", "16", "17", "18"]);
        let e = validate(DIGITS, &[("x", &a), ("y", &b)]).unwrap_err();
        assert!(e.contains("\"19\"") && !e.contains("\"4\""), "{e}");
        let e = validate(DIGITS, &[]).unwrap_err();
        assert!(e.contains("gaps"), "{e}");
    }

    #[test]
    fn bad_prefixes() {
        let a = s(&["1a"]);
        assert!(
            validate(DIGITS, &[("x", &a)])
                .unwrap_err()
                .contains("outside")
        );
        let a = s(&[""]);
        assert!(
            validate(DIGITS, &[("x", &a)])
                .unwrap_err()
                .contains("empty")
        );
        assert!(validate("", &[]).is_err());
        assert!(validate("00", &[]).unwrap_err().contains("repeats"));
    }

    #[test]
    fn routing_picks_the_owner() {
        let a = s(&["0", "2", "3", "4", "5", "6", "7", "8", "9"]);
        let b = s(&["10", "11", "12", "13", "14"]);
        let c = s(&["15", "16", "17", "18", "19"]);
        let t = PartitionTable::new(&[(&a, 0), (&b, 1), (&c, 2)]);
        assert_eq!(t.lookup("0612345678"), Some(0));
        assert_eq!(t.lookup("1234"), Some(1));
        assert_eq!(t.lookup("19"), Some(2));
        assert_eq!(t.lookup("9"), Some(0));
        assert_eq!(t.lookup("1"), None, "shorter than its prefixes");
        assert_eq!(t.lookup(""), None);
        assert_eq!(t.lookup("+33"), None, "outside the key space");
        assert_eq!(t.owners(), vec![0, 1, 2]);
    }
}
