//! A tiny glob matcher for the inbox's ignore patterns: `*` (any run of characters), `?` (one
//! character) and literal characters, compared case-insensitively. No character classes, no
//! path separators: patterns match a single file name.

/// True when `name` matches `pattern` (case-insensitive, Unicode simple lowercase).
pub fn matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let name: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
    // Iterative matcher with one backtrack point (the last `*`): linear in practice and never
    // exponential, whatever the pattern.
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// True when `name` matches any of `patterns`.
pub fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|pattern| matches(pattern, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_patterns_match_temp_names() {
        assert!(matches(".*", ".hidden"));
        assert!(matches(".*", ".feed.xml.a1B2c3.partial"));
        assert!(matches("*.partial", "feed.xml.a1B2c3.partial"));
        assert!(matches("*.filepart", "feed.xml.filepart"));
        assert!(matches("*.FILEPART", "feed.xml.filepart"));
        assert!(matches("*.tmp", "FEED.TMP"));
        assert!(matches("*~", "feed.xml~"));
        assert!(!matches(".*", "feed.xml"));
        assert!(!matches("*.part", "feed.xml"));
        assert!(!matches("*.part", "feed.part.xml"));
        assert!(!matches("*~", "~feed.xml"));
    }

    #[test]
    fn star_and_question_mark() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("f??d.xml", "feed.xml"));
        assert!(!matches("f?d.xml", "feed.xml"));
        assert!(matches("*.xml", "résumé.XML"));
        assert!(matches("**a", "a"));
        assert!(!matches("", "a"));
        assert!(matches("", ""));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let name = "a".repeat(10_000);
        assert!(!matches("*a*a*a*a*a*a*a*b", &name));
    }
}
