//! User names from the host's passwd file, cached. No libc: NSS sources
//! other than the file (LDAP, sssd) are not consulted.

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

/// The most of the passwd file read, and the most names kept.
const MAX_BYTES: u64 = 8 << 20;
const MAX_USERS: usize = 100_000;
/// A uid missing from the file is looked for again after this long (users are added at runtime).
const RELOAD_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Users {
    path: String,
    names: HashMap<u32, String>,
    loaded_at: Option<Instant>,
}

impl Users {
    pub fn new(path: &str) -> Users {
        Users {
            path: path.to_string(),
            names: HashMap::new(),
            loaded_at: None,
        }
    }

    /// The name of `uid`, rereading the file at most once a second on a miss.
    pub fn name(&mut self, uid: u32) -> Option<String> {
        if let Some(name) = self.names.get(&uid) {
            return Some(name.clone());
        }
        if self.loaded_at.is_none_or(|t| t.elapsed() >= RELOAD_AFTER) {
            self.reload();
        }
        self.names.get(&uid).cloned()
    }

    fn reload(&mut self) {
        self.loaded_at = Some(Instant::now());
        let mut text = String::new();
        let read = std::fs::File::open(&self.path)
            .and_then(|f| f.take(MAX_BYTES).read_to_string(&mut text));
        if let Err(error) = read {
            tracing::debug!(event = "passwd_unreadable", path = %self.path, %error);
            return;
        }
        self.names = parse_passwd(&text);
    }
}

/// `name:password:uid:gid:gecos:home:shell` lines; the first name of a uid wins.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        if names.len() >= MAX_USERS {
            break;
        }
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if let Ok(uid) = uid.parse() {
            names.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_skips_bad_lines() {
        let names = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# comment:x:5\nbroken\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\ntoor:x:0:0::/:/bin/sh\nbad:x:uid:0::/:\n",
        );
        assert_eq!(names.get(&0).map(String::as_str), Some("root"));
        assert_eq!(names.get(&65534).map(String::as_str), Some("nobody"));
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn a_missing_file_is_no_names() {
        let mut users = Users::new("/nonexistent/passwd");
        assert_eq!(users.name(0), None);
    }
}
